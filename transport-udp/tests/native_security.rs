//! A native node on a real UDP socket under attack: every rejection case of the signed protocol
//! is sent over loopback and shown to be dropped and counted, and the node keeps answering an
//! honest peer through a flood of garbage and forged datagrams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kad_core::{
    Body, Codec, CodecCx, Config, Contact, Dht, Message, NativeCodec, NativeIdentity, Node, NodeId,
    PeerAddr, Request, Response, Stats, Transport, TxnId,
};
use kad_transport_udp::UdpTransport;
use tokio::net::UdpSocket;
use tokio::time::timeout;

struct CountRng(u64);

impl rand::RngCore for CountRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for b in dst {
            *b = self.next_u64() as u8;
        }
    }
}

#[allow(clippy::disallowed_methods)]
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn identity(n: u8) -> Arc<NativeIdentity> {
    Arc::new(NativeIdentity::from_secret(&[n; 32]).unwrap())
}

async fn native_node(id: Arc<NativeIdentity>) -> (Dht, SocketAddr) {
    let udp = Arc::new(
        UdpTransport::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap(),
    );
    let addr = udp.socket_addr();
    let mut config = Config::default();
    // The raw sockets here never answer a PING, so answers larger than their requests would be
    // held by the anti-amplification guard: it has tests of its own (kad-core/tests/
    // amplification.rs, cli/tests/flood.rs); these check rejections and counting.
    config.amplification_guard = false;
    let builder = Node::builder(config)
        .identity(id.clone())
        .codec(Box::new(NativeCodec::new(id)));
    let transports: Vec<Arc<dyn Transport>> = vec![udp];
    (Dht::spawn(builder, transports).unwrap(), addr)
}

/// An attacker (or a scripted peer): a raw socket and a codec signing with its own key.
struct Raw {
    sock: UdpSocket,
    id: Arc<NativeIdentity>,
    codec: NativeCodec,
    rng: CountRng,
}

impl Raw {
    async fn new(n: u8) -> Self {
        Self::new_at(n, "127.0.0.1").await
    }
    /// A raw peer speaking at most protocol `version`.
    async fn with_version(n: u8, version: u32) -> Self {
        let mut raw = Self::new(n).await;
        raw.codec = NativeCodec::new(raw.id.clone()).max_version(version);
        raw
    }
    /// A raw peer on its own loopback address (each IP has its own rate limit at the victim).
    async fn new_at(n: u8, ip: &str) -> Self {
        let id = identity(n);
        Self {
            sock: UdpSocket::bind(format!("{ip}:0")).await.unwrap(),
            codec: NativeCodec::new(id.clone()),
            id,
            rng: CountRng(u64::from(n) << 32 | 7),
        }
    }
    fn contact(&self) -> Contact {
        Contact::new(self.id.id(), PeerAddr::Udp(self.sock.local_addr().unwrap()))
    }
    /// Signs `body` to `to` with the wall clock shifted by `shift_ms`.
    fn encode(&mut self, to: Option<NodeId>, txn: &[u8], body: Body, shift_ms: i64) -> Vec<u8> {
        let m = Message {
            txn: TxnId::from_bytes(txn.to_vec()),
            sender: self.contact(),
            recipient: to,
            read_only: false,
            observed: None,
            body,
        };
        let mut cx = CodecCx {
            unix_ms: (unix_ms() as i64 + shift_ms) as u64,
            local_id: self.id.id(),
            max_skew_ms: 60_000,
            rng: &mut self.rng,
            peer: None,
            proven: None,
        };
        self.codec.encode(&m, &mut cx).unwrap().to_vec()
    }
    fn decode(&mut self, bytes: &[u8]) -> Message {
        let mut cx = CodecCx {
            unix_ms: unix_ms(),
            local_id: self.id.id(),
            max_skew_ms: 60_000,
            rng: &mut self.rng,
            peer: None,
            proven: None,
        };
        self.codec
            .decode(bytes, &mut cx)
            .expect("a valid signed message")
    }
    async fn send(&self, to: SocketAddr, bytes: &[u8]) {
        self.sock.send_to(bytes, to).await.unwrap();
    }
    /// The next datagram within `wait`, if any.
    async fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        let (n, _) = timeout(wait, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(n);
        Some(buf)
    }
}

/// Waits until `f(stats)` holds (the node handles datagrams asynchronously).
async fn until(dht: &Dht, what: &str, f: impl Fn(&Stats) -> bool) -> Stats {
    for _ in 0..500 {
        let s = dht.stats().await.unwrap();
        if f(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "timed out waiting for {what}: {:?}",
        dht.stats().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_dropped_and_counted_over_udp() {
    rejections(1).await;
}

/// The same cases between peers speaking version 2: after the first exchange every message
/// carries a MAC, and each rejection is counted under its version 2 reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_2_rejection_is_dropped_and_counted_over_udp() {
    rejections(2).await;
}

async fn rejections(version: u32) {
    let victim_id = identity(1);
    let (victim, vaddr) = native_node(victim_id.clone()).await;
    let v = victim_id.id();
    let mut mallory = Raw::with_version(2, version).await;
    let eve = Raw::with_version(3, version).await;
    let tail = if version == 2 { 68 } else { 132 };
    let short = Duration::from_millis(300);

    // An honest PING is answered with a PONG signed by the victim.
    let ping = mallory.encode(Some(v), b"p1", Body::Request(Request::Ping), 0);
    mallory.send(vaddr, &ping).await;
    let pong = mallory.recv(Duration::from_secs(5)).await.expect("pong");
    let m = mallory.decode(&pong);
    assert_eq!((m.sender.id, m.body), (v, Body::Response(Response::Pong)));
    // Mallory is new to the victim, which PINGs it before it hands it out to others.
    let verify = mallory.recv(Duration::from_secs(5)).await.expect("a PING");
    let m = mallory.decode(&verify);
    assert_eq!((m.sender.id, m.body), (v, Body::Request(Request::Ping)));

    // From here on, a version 2 peer MACs its messages (it heard the victim speaks version 2).
    let probe = mallory.encode(Some(v), b"p0", Body::Request(Request::Ping), 0);
    assert_eq!(
        String::from_utf8_lossy(&probe).contains(r#""kad":{"v":2,"#),
        version == 2
    );

    // Replay: the very same datagram again. Dropped, counted, unanswered.
    mallory.send(vaddr, &ping).await;
    until(&victim, "replay", |s| s.dropped_replay == 1).await;
    assert!(
        mallory.recv(short).await.is_none(),
        "a replay gets no answer"
    );

    // Bad signature: one hex digit of the signature changed.
    let mut bad = mallory.encode(Some(v), b"p2", Body::Request(Request::Ping), 0);
    let at = bad.len() - 6;
    bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
    mallory.send(vaddr, &bad).await;
    if version == 2 {
        until(&victim, "bad MAC", |s| s.dropped_bad_mac == 1).await;
    } else {
        until(&victim, "bad signature", |s| s.dropped_bad_signature == 1).await;
    }

    // Id not matching the key: Mallory claims Eve's id, signs (or MACs) with her own key.
    let good = mallory.encode(Some(v), b"p3", Body::Request(Request::Ping), 0);
    let text = String::from_utf8(good).unwrap();
    let signed = &text[1..text.len() - tail];
    let forged = signed.replace(&mallory.id.id().to_string(), &eve.id.id().to_string());
    let auth = if version == 2 {
        let pair = kad_core::native::pair_key(&mallory.id, &victim_id.public_key_bytes()).unwrap();
        hex::encode(kad_core::native::mac_tag(
            &pair,
            &eve.id.id(),
            &v,
            forged.as_bytes(),
        ))
    } else {
        hex::encode(mallory.id.sign_bytes(forged.as_bytes()))
    };
    let datagram = format!("[{forged},\"{auth}\"]");
    mallory.send(vaddr, datagram.as_bytes()).await;
    until(&victim, "id mismatch", |s| s.dropped_id_mismatch == 1).await;

    // Timestamps outside the +-60 s window, in the past and in the future.
    let old = mallory.encode(Some(v), b"p4", Body::Request(Request::Ping), -61_000);
    let future = mallory.encode(Some(v), b"p5", Body::Request(Request::Ping), 61_000);
    mallory.send(vaddr, &old).await;
    mallory.send(vaddr, &future).await;
    until(&victim, "stale", |s| s.dropped_stale == 2).await;

    // Addressed to another node id, and a non-PING without a recipient.
    let elsewhere = mallory.encode(Some(eve.id.id()), b"p6", Body::Request(Request::Ping), 0);
    mallory.send(vaddr, &elsewhere).await;
    let anon = mallory.encode(
        None,
        b"p7",
        Body::Request(Request::FindNode { target: v }),
        0,
    );
    mallory.send(vaddr, &anon).await;
    until(&victim, "wrong recipient", |s| {
        s.dropped_wrong_recipient == 2
    })
    .await;
    assert!(
        mallory.recv(short).await.is_none(),
        "no rejected message was answered"
    );

    // A response from a peer other than the one asked. The victim asks Mallory (whose id it
    // knows); Eve answers from Mallory's socket with her own valid signature, then Mallory
    // answers from another socket: both dropped. Then Mallory answers properly: accepted.
    victim.add_contact(mallory.contact()).await.unwrap();
    let v2 = victim.clone();
    let lookup = tokio::spawn(async move { v2.find_node(NodeId::from_bytes([0x55; 20])).await });
    let req = mallory
        .recv(Duration::from_secs(5))
        .await
        .expect("the victim's FIND_NODE");
    let req = mallory.decode(&req);
    assert_eq!(
        req.recipient,
        Some(mallory.id.id()),
        "requests name their recipient"
    );
    let mut eve = eve;
    let nodes = Body::Response(Response::Nodes { nodes: vec![] });
    // Eve signs as herself but sends from Mallory's address.
    let from_eve = eve.encode(Some(v), &req.txn.0, nodes.clone(), 0);
    mallory.send(vaddr, &from_eve).await;
    until(&victim, "wrong peer", |s| s.dropped_wrong_peer == 1).await;
    let from_mallory = mallory.encode(Some(v), &req.txn.0, nodes.clone(), 0);
    eve.send(vaddr, &from_mallory).await;
    until(&victim, "unknown txn", |s| s.dropped_unknown_txn == 1).await;
    let proper = mallory.encode(Some(v), &req.txn.0, nodes, 0);
    let before = victim.stats().await.unwrap().responses_in;
    mallory.send(vaddr, &proper).await;
    until(&victim, "the proper answer", |s| s.responses_in > before).await;
    timeout(Duration::from_secs(10), lookup)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Garbage: counted as malformed.
    for junk in [&b"garbage"[..], b"[{}, \"00\"]", &[0xff; 300][..]] {
        mallory.send(vaddr, junk).await;
    }
    let s = until(&victim, "malformed", |s| s.dropped_malformed == 3).await;
    // Each case was counted exactly once, under its own reason.
    let (sig, mac) = if version == 2 { (0, 1) } else { (1, 0) };
    assert_eq!(
        (
            s.dropped_replay,
            s.dropped_bad_signature,
            s.dropped_bad_mac,
            s.dropped_id_mismatch,
            s.dropped_stale
        ),
        (1, sig, mac, 1, 2)
    );
    assert_eq!(
        (
            s.dropped_wrong_recipient,
            s.dropped_wrong_peer,
            s.dropped_unknown_txn
        ),
        (2, 1, 1)
    );
    victim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_answering_an_honest_peer_through_a_flood() {
    let (victim, vaddr) = native_node(identity(10)).await;
    let v = identity(10).id();
    let (alice, _) = native_node(identity(11)).await;
    let target = PeerAddr::Udp(vaddr);

    // Attackers: 8 sockets on their own OS threads, together about 24,000 datagrams a second of
    // garbage, forged signatures (each costs the victim a full verification, more than it can
    // do in a second) and replays. Datagrams are built beforehand so the flood is cheap to send.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for n in 0..8u8 {
        // From addresses of their own: all of 127.0.0.1 would share the honest peer's per-IP
        // rate limit (one host flooding its own traffic away).
        let mut raw = Raw::new_at(100 + n, &format!("127.0.1.{}", n + 1)).await;
        let replay = raw.encode(Some(v), b"r", Body::Request(Request::Ping), 0);
        let mut flood: Vec<Vec<u8>> = Vec::new();
        for i in 0..200usize {
            let mut forged = raw.encode(Some(v), b"f", Body::Request(Request::Ping), 0);
            let at = forged.len() - 3;
            forged[at] ^= 0x01;
            flood.push(forged);
            flood.push(vec![n; 64 + i * 5]);
            flood.push(replay.clone());
        }
        let sock = raw.sock.into_std().unwrap();
        sock.set_nonblocking(false).unwrap();
        let stop = stop.clone();
        attackers.push(std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // 30 datagrams every 10 ms: 3,000 a second from each attacker.
                for _ in 0..30 {
                    let _ = sock.send_to(&flood[sent as usize % flood.len()], vaddr);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            sent
        }));
    }
    // Meanwhile the honest peer pings 50 times; every ping must be answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut answered = 0;
    let mut rtts = Vec::new();
    for _ in 0..50 {
        match timeout(Duration::from_secs(10), alice.ping(target.clone())).await {
            Ok(Ok(p)) => {
                answered += 1;
                rtts.push(p.rtt);
            }
            other => eprintln!(
                "ping {} failed: {other:?}; alice {:?}; victim {:?}",
                rtts.len(),
                alice.stats().await.unwrap(),
                victim.stats().await.unwrap()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut flood = 0;
    for a in attackers {
        flood += a.join().unwrap();
    }
    let s = victim.stats().await.unwrap();
    rtts.sort();
    eprintln!(
        "flood of {flood} datagrams; honest rtt p50 {:?}; victim stats {s:?}",
        rtts.get(rtts.len() / 2)
    );
    assert_eq!(answered, 50, "every honest ping answered during the flood");
    assert!(s.dropped_malformed > 0 && s.dropped_bad_signature > 0 && s.dropped_replay > 0);
    assert!(flood > 10_000, "the flood was real: {flood} datagrams");
    victim.shutdown().await;
    alice.shutdown().await;
}
