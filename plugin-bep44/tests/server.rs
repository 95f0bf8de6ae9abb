//! The server side of a Mainline node, driven over real UDP sockets on 127.0.0.1 by a raw KRPC
//! client: the storing node's checks and error codes (BEP44), tokens, announce/get_peers with
//! implied_port (BEP5), sample_infohashes (BEP51), read-only mode (BEP43), `want`/`nodes6`
//! (BEP32), the `ip` field (BEP42), and silence on malformed input.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use kad_core::NodeId;
use kad_plugin_bep44::bencode::{self, Dict, Val};
use kad_plugin_bep44::{Mainline, MainlineConfig, MutableItem, item};

/// A raw KRPC client on its own socket.
struct Raw {
    sock: UdpSocket,
    id: NodeId,
    to: SocketAddr,
    txn: u32,
}

impl Raw {
    fn new(to: SocketAddr, bind: &str) -> Self {
        let sock = UdpSocket::bind(bind).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let id = NodeId::from_bytes(item::sha1(format!("raw {bind} {to}").as_bytes()));
        Self {
            sock,
            id,
            to,
            txn: 0,
        }
    }

    /// Sends `q` with arguments `a` (plus our id); returns the whole answer, if any.
    fn ask(&mut self, q: &str, a: Dict, ro: bool) -> Option<Vec<u8>> {
        let mut a = a;
        a.bytes(b"id", self.id.as_bytes());
        self.txn += 1;
        let mut top = Dict::new();
        top.raw(b"a", &a.finish())
            .bytes(b"q", q.as_bytes())
            .bytes(b"t", &self.txn.to_be_bytes())
            .bytes(b"y", b"q");
        if ro {
            top.int(b"ro", 1);
        }
        self.send_raw(&top.finish())
    }

    /// Sends `bytes`; returns the first answer (response or error). Queries the node sends us
    /// meanwhile (it PINGs a new contact before handing it out to others) go unanswered.
    fn send_raw(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.sock.send_to(bytes, self.to).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.sock.recv_from(&mut buf).ok()?.0;
            let is_query = bencode::parse(&buf[..n])
                .ok()
                .and_then(|v| v.get(b"y").and_then(Val::bytes).map(|y| y == b"q"))
                .unwrap_or(false);
            if !is_query {
                return Some(buf[..n].to_vec());
            }
        }
    }
}

/// The error code of an answer, or 0 for a response.
fn code(answer: &[u8]) -> i64 {
    let v = bencode::parse(answer).unwrap();
    match v.get(b"y").and_then(Val::bytes) {
        Some(b"e") => v.get(b"e").and_then(Val::list).unwrap()[0].int().unwrap(),
        _ => 0,
    }
}

fn r_bytes(answer: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    let v = bencode::parse(answer).unwrap();
    v.get(b"r")?.get(key)?.bytes().map(<[u8]>::to_vec)
}

async fn node(f: impl FnOnce(&mut MainlineConfig)) -> Mainline {
    let mut cfg = MainlineConfig::default();
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    f(&mut cfg);
    Mainline::spawn(cfg).await.unwrap()
}

/// Runs blocking raw-socket code off the runtime thread that drives the node.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn token_for(c: &mut Raw, target: &NodeId) -> Vec<u8> {
    let mut a = Dict::new();
    a.bytes(b"target", target.as_bytes());
    let ans = c.ask("get", a, false).expect("get answered");
    r_bytes(&ans, b"token").expect("a token")
}

fn put_args(it: &MutableItem, token: &[u8]) -> Dict {
    let mut a = Dict::new();
    a.bytes(b"k", &it.pubkey)
        .int(b"seq", it.seq)
        .bytes(b"sig", &it.sig)
        .raw(b"v", &it.v)
        .bytes(b"token", token);
    if !it.salt.is_empty() {
        a.bytes(b"salt", &it.salt);
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storing_node_checks_puts_in_order_with_the_bep44_error_codes() {
    let n = node(|_| {}).await;
    let to = n.local_addr();
    blocking(move || {
        let mut c = Raw::new(to, "127.0.0.1:0");
        let seed = [9u8; 32];
        let v1 = item::bencode_bytes(b"one");
        let it = MutableItem::sign(&seed, b"salt", 5, &v1).unwrap();
        let token = token_for(&mut c, &it.target());

        // A bad token: 203.
        assert_eq!(
            code(&c.ask("put", put_args(&it, b"nope"), false).unwrap()),
            203
        );
        // A bad signature: 206.
        let mut forged = it.clone();
        forged.sig[0] ^= 1;
        assert_eq!(
            code(&c.ask("put", put_args(&forged, &token), false).unwrap()),
            206
        );
        // Salt over 64 bytes: 207 (before anything else is looked at).
        let mut a = put_args(&it, &token);
        a.bytes(b"salt", &[b's'; 65]);
        assert_eq!(code(&c.ask("put", a, false).unwrap()), 207);
        // v over 1000 bytes: 205.
        let mut a = put_args(&it, &token);
        a.raw(b"v", &item::bencode_bytes(&[b'x'; 1000]));
        assert_eq!(code(&c.ask("put", a, false).unwrap()), 205);
        // A target argument that does not match: 203.
        let mut a = put_args(&it, &token);
        a.bytes(b"target", &[0; 20]);
        assert_eq!(code(&c.ask("put", a, false).unwrap()), 203);
        // Missing sig on a mutable put: 203, never a crash.
        let mut a = Dict::new();
        a.bytes(b"k", &it.pubkey)
            .raw(b"v", &it.v)
            .bytes(b"token", &token);
        assert_eq!(code(&c.ask("put", a, false).unwrap()), 203);

        // Stored.
        assert_eq!(
            code(&c.ask("put", put_args(&it, &token), false).unwrap()),
            0
        );
        // The same item again refreshes it: success.
        assert_eq!(
            code(&c.ask("put", put_args(&it, &token), false).unwrap()),
            0
        );
        // Equal seq, another value: 302. Lower seq: 302.
        let same_seq =
            MutableItem::sign(&seed, b"salt", 5, &item::bencode_bytes(b"other")).unwrap();
        assert_eq!(
            code(&c.ask("put", put_args(&same_seq, &token), false).unwrap()),
            302
        );
        let lower = MutableItem::sign(&seed, b"salt", 4, &v1).unwrap();
        assert_eq!(
            code(&c.ask("put", put_args(&lower, &token), false).unwrap()),
            302
        );
        // cas that does not match the stored seq: 301; the right cas: stored.
        let next = MutableItem::sign(&seed, b"salt", 6, &item::bencode_bytes(b"two")).unwrap();
        let mut a = put_args(&next, &token);
        a.int(b"cas", 4);
        assert_eq!(code(&c.ask("put", a, false).unwrap()), 301);
        let mut a = put_args(&next, &token);
        a.int(b"cas", 5);
        assert_eq!(code(&c.ask("put", a, false).unwrap()), 0);

        // get returns the item; with seq >= stored, only seq.
        let mut a = Dict::new();
        a.bytes(b"target", it.target().as_bytes());
        let ans = c.ask("get", a, false).unwrap();
        assert_eq!(r_bytes(&ans, b"v").unwrap(), b"two"); // the bencoded string 3:two
        assert_eq!(r_bytes(&ans, b"k").unwrap(), it.pubkey);
        let mut a = Dict::new();
        a.bytes(b"target", it.target().as_bytes()).int(b"seq", 6);
        let ans = c.ask("get", a, false).unwrap();
        assert!(r_bytes(&ans, b"v").is_none() && r_bytes(&ans, b"sig").is_none());
        let v = bencode::parse(&ans).unwrap();
        assert_eq!(v.get(b"r").unwrap().get(b"seq").unwrap().int(), Some(6));

        // Immutable: the target is derived from v; a token from another IP is refused.
        let imm = item::bencode_bytes(b"Hello World!");
        let t = item::immutable_target(&imm);
        let token = token_for(&mut c, &t);
        let mut other = Raw::new(to, "127.0.0.2:0");
        let mut a = Dict::new();
        a.raw(b"v", &imm).bytes(b"token", &token);
        assert_eq!(
            code(&other.ask("put", a, false).unwrap()),
            203,
            "tokens are bound to the IP"
        );
        let mut a = Dict::new();
        a.raw(b"v", &imm).bytes(b"token", &token);
        assert_eq!(code(&c.ask("put", a, false).unwrap()), 0);
        let mut a = Dict::new();
        a.bytes(b"target", t.as_bytes());
        let ans = other.ask("get", a, false).unwrap();
        assert_eq!(r_bytes(&ans, b"v").unwrap(), b"Hello World!");
    })
    .await;
    let s = n.stats().await.unwrap();
    assert_eq!((s.puts_stored, s.puts_refused), (4, 10), "{s:?}");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_get_peers_and_sample_infohashes() {
    let n = node(|_| {}).await;
    let to = n.local_addr();
    blocking(move || {
        let mut c = Raw::new(to, "127.0.0.3:0");
        let ih = NodeId::from_bytes(item::sha1(b"a torrent"));
        let mut a = Dict::new();
        a.bytes(b"info_hash", ih.as_bytes());
        let ans = c.ask("get_peers", a, false).unwrap();
        let token = r_bytes(&ans, b"token").unwrap();
        // implied_port: the UDP source port is stored, not `port`.
        let mut a = Dict::new();
        a.bytes(b"info_hash", ih.as_bytes())
            .int(b"port", 1)
            .int(b"implied_port", 1)
            .bytes(b"token", &token);
        assert_eq!(code(&c.ask("announce_peer", a, false).unwrap()), 0);
        let mut a = Dict::new();
        a.bytes(b"info_hash", ih.as_bytes())
            .int(b"port", 6881)
            .bytes(b"token", b"bad");
        assert_eq!(code(&c.ask("announce_peer", a, false).unwrap()), 203);
        let mut a = Dict::new();
        a.bytes(b"info_hash", ih.as_bytes());
        let ans = c.ask("get_peers", a, false).unwrap();
        let v = bencode::parse(&ans).unwrap();
        let values = v
            .get(b"r")
            .unwrap()
            .get(b"values")
            .unwrap()
            .list()
            .unwrap()
            .to_vec();
        let port = c.sock.local_addr().unwrap().port();
        let want = kad_plugin_bep44::krpc::compact_peer(SocketAddr::from(([127, 0, 0, 3], port)));
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].bytes().unwrap(), &want[..]);
        // BEP51: the sample holds the info-hash, `samples` is always present.
        let mut a = Dict::new();
        a.bytes(b"target", ih.as_bytes());
        let ans = c.ask("sample_infohashes", a, false).unwrap();
        assert_eq!(r_bytes(&ans, b"samples").unwrap(), ih.as_bytes());
        let v = bencode::parse(&ans).unwrap();
        assert_eq!(v.get(b"r").unwrap().get(b"num").unwrap().int(), Some(1));
        // BEP42: `ip` at the top level of responses, the requester's address.
        let ip = v.get(b"ip").unwrap().bytes().unwrap();
        assert_eq!(ip, &want[..]);
        // Unknown methods: answered like find_node with a target, else 204.
        let mut a = Dict::new();
        a.bytes(b"target", ih.as_bytes());
        assert_eq!(code(&c.ask("future_method", a, false).unwrap()), 0);
        assert_eq!(
            code(&c.ask("future_method", Dict::new(), false).unwrap()),
            204
        );
        // Malformed: no answer at all.
        assert!(
            c.send_raw(b"d1:ad2:id20:abcdefghij0123456789e1:q4:pinge")
                .is_none()
        );
        assert!(c.send_raw(b"this is not bencode at all").is_none());
        // A ping still works afterwards.
        assert_eq!(code(&c.ask("ping", Dict::new(), false).unwrap()), 0);
    })
    .await;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_nodes_ask_with_ro_answer_nothing_and_are_not_learned() {
    let server = node(|_| {}).await;
    let ro = node(|c| {
        c.read_only = true;
    })
    .await;
    let (sto, rto) = (server.local_addr(), ro.local_addr());
    // The read-only node answers nothing.
    let silent =
        blocking(move || Raw::new(rto, "127.0.0.1:0").ask("ping", Dict::new(), false)).await;
    assert!(silent.is_none());
    // Queries with ro=1 are answered, but the sender is not added to the table...
    blocking(move || {
        let mut c = Raw::new(sto, "127.0.0.4:0");
        assert_eq!(code(&c.ask("ping", Dict::new(), true).unwrap()), 0);
    })
    .await;
    assert_eq!(server.stats().await.unwrap().routing, 0);
    // ...while a normal requester is.
    blocking(move || {
        let mut c = Raw::new(sto, "127.0.0.5:0");
        assert_eq!(code(&c.ask("ping", Dict::new(), false).unwrap()), 0);
    })
    .await;
    assert_eq!(server.stats().await.unwrap().routing, 1);
    // The read-only node's own queries carry ro=1: the server does not learn it either.
    let ro2 = node(|c| {
        c.read_only = true;
        c.bootstrap = vec![sto];
    })
    .await;
    ro2.bootstrap().await.unwrap();
    assert_eq!(server.stats().await.unwrap().routing, 1);
    assert!(ro.stats().await.unwrap().engine.ignored_read_only >= 1);
    for n in [server, ro, ro2] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn want_n6_returns_ipv6_nodes_and_a_full_put_get_round_trip_works() {
    // A dual-stack node knows an IPv6 neighbour and an IPv4 one.
    let server = node(|c| c.bind = "[::]:0".parse().unwrap()).await;
    let port = server.local_addr().port();
    let v6_peer = node(|c| {
        c.bind = "[::1]:0".parse().unwrap();
        c.bootstrap = vec![SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))];
    })
    .await;
    v6_peer.bootstrap().await.unwrap();
    let v4_peer = node(|c| c.bootstrap = vec![SocketAddr::from(([127, 0, 0, 1], port))]).await;
    v4_peer.bootstrap().await.unwrap();
    blocking(move || {
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let mut c = Raw::new(to, "127.0.0.6:0");
        let target = NodeId::from_bytes([0x55; 20]);
        let mut a = Dict::new();
        a.bytes(b"target", target.as_bytes());
        let ans = c.ask("find_node", a, true).unwrap();
        assert!(
            r_bytes(&ans, b"nodes").is_some_and(|n| n.len() == 26),
            "IPv4 by default"
        );
        assert!(r_bytes(&ans, b"nodes6").is_none());
        let mut a = Dict::new();
        a.bytes(b"target", target.as_bytes())
            .bytes_list(b"want", [&b"n6"[..], b"n4"]);
        let ans = c.ask("find_node", a, true).unwrap();
        assert_eq!(
            r_bytes(&ans, b"nodes6").map(|n| n.len()),
            Some(38),
            "IPv6 when wanted"
        );
        assert_eq!(r_bytes(&ans, b"nodes").map(|n| n.len()), Some(26));
    })
    .await;
    // Our own client stores and reads through the IPv4 node.
    let it = MutableItem::sign(&[3; 32], b"", 1, &item::bencode_bytes(b"v")).unwrap();
    let put = v4_peer.put_mutable(&it, None).await.unwrap();
    assert!(put.stored_on >= 1);
    let got = v4_peer.get_mutable(it.pubkey, b"", None).await.unwrap();
    assert_eq!((got.seq, &got.v[..]), (1, &it.v[..]));
    for n in [server, v6_peer, v4_peer] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_api_announces_finds_peers_and_samples() {
    let server = node(|_| {}).await;
    let boot = vec![server.local_addr()];
    let a = node(|c| c.bootstrap = boot.clone()).await;
    let b = node(|c| c.bootstrap = boot.clone()).await;
    a.bootstrap().await.unwrap();
    b.bootstrap().await.unwrap();
    let ih = NodeId::from_bytes(item::sha1(b"some torrent"));
    // implied_port: the storing nodes record a's UDP port.
    let out = a.announce_peer(ih, None).await.unwrap();
    assert!(out.stored_on >= 1, "{out:?}");
    let peers = b.get_peers(ih).await.unwrap();
    assert!(peers.contains(&a.local_addr()), "{peers:?}");
    // An explicit port.
    b.announce_peer(ih, Some(6881)).await.unwrap();
    let peers = a.get_peers(ih).await.unwrap();
    assert!(
        peers.contains(&SocketAddr::from(([127, 0, 0, 1], 6881))),
        "{peers:?}"
    );
    // BEP51 from the client side: the server holds the info-hash.
    let contact = kad_core::Contact::new(server.id(), kad_core::PeerAddr::Udp(server.local_addr()));
    let s = a.sample_infohashes(contact, ih).await.unwrap();
    assert_eq!((s.num, s.samples.as_slice()), (1, &[ih][..]));
    for n in [server, a, b] {
        n.shutdown().await;
    }
}

/// An honest peer on `bind`: it asks `to` a find_node, then answers every query it gets (the
/// server's verifying ping) for `secs` seconds. Returns its id.
fn honest_peer(
    to: SocketAddr,
    bind: &'static str,
    secs: u64,
) -> (NodeId, std::thread::JoinHandle<()>) {
    let c = Raw::new(to, bind);
    let id = c.id;
    let h = std::thread::spawn(move || {
        let mut a = Dict::new();
        a.bytes(b"target", c.id.as_bytes());
        a.bytes(b"id", c.id.as_bytes());
        let mut top = Dict::new();
        top.raw(b"a", &a.finish())
            .bytes(b"q", b"find_node")
            .bytes(b"t", b"hp")
            .bytes(b"y", b"q");
        c.sock.send_to(&top.finish(), c.to).unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < end {
            let Ok((n, from)) = c.sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(v) = bencode::parse(&buf[..n]) else {
                continue;
            };
            if v.get(b"y").and_then(Val::bytes) != Some(b"q") {
                continue;
            }
            let t = v
                .get(b"t")
                .and_then(Val::bytes)
                .unwrap_or_default()
                .to_vec();
            let mut r = Dict::new();
            r.bytes(b"id", c.id.as_bytes());
            let mut top = Dict::new();
            top.raw(b"r", &r.finish()).bytes(b"t", &t).bytes(b"y", b"r");
            let _ = c.sock.send_to(&top.finish(), from);
        }
    });
    (id, h)
}

/// The (id, address) entries of an answer's compact `nodes`.
fn compact_nodes(answer: &[u8]) -> Vec<(NodeId, SocketAddr)> {
    r_bytes(answer, b"nodes")
        .unwrap_or_default()
        .chunks_exact(26)
        .map(|e| {
            let id = NodeId::from_bytes(e[..20].try_into().unwrap());
            let ip = std::net::Ipv4Addr::new(e[20], e[21], e[22], e[23]);
            (
                id,
                SocketAddr::from((ip, u16::from_be_bytes([e[24], e[25]]))),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_requesters_are_never_handed_out_and_honest_ones_are() {
    let server = node(|_| {}).await;
    let to = server.local_addr();
    // An honest peer: it asks, answers the server's ping, and is handed out from then on.
    let (first, h1) = blocking(move || honest_peer(to, "127.5.0.1:0", 20)).await;
    // 1,500 requesters from as many addresses of 127.4.0.0/16 that never answer anything (their
    // source addresses could be forged): find_node, get_peers and ping, as Mainline clients send.
    let forged: Vec<NodeId> = blocking(move || {
        let mut ids = Vec::new();
        for i in 0..1500u32 {
            let ip = std::net::Ipv4Addr::from(0x7f04_0000u32 + 1 + i);
            let mut c = Raw::new(to, &format!("{ip}:0"));
            c.sock.set_nonblocking(true).unwrap();
            ids.push(c.id);
            let mut a = Dict::new();
            a.bytes(b"target", &item::sha1(format!("target {i}").as_bytes()));
            let _ = c.ask("find_node", a, false);
            let mut a = Dict::new();
            a.bytes(b"info_hash", c.id.as_bytes());
            let _ = c.ask("get_peers", a, false);
            let _ = c.ask("ping", Dict::new(), false);
        }
        ids
    })
    .await;
    assert!(
        server.stats().await.unwrap().routing > 8,
        "the forged requesters were not even learned"
    );
    // After the flood, a second honest peer joins the same way.
    let (second, h2) = blocking(move || honest_peer(to, "127.5.0.2:0", 20)).await;
    // What the server hands out, asked (read-only, so the asker is not learned) for the forged
    // ids, for both honest ids and for random targets, until the second honest peer shows up.
    let (forged_out, seen_first, seen_second) = blocking(move || {
        let mut asker = Raw::new(to, "127.0.0.1:0");
        let (mut forged_out, mut seen) = (0usize, (false, false));
        // For 4 s at least, while the forged requesters' verifying pings time out and answered
        // contacts take their slots; at most 15 s.
        let t0 = std::time::Instant::now();
        let targets: Vec<NodeId> = forged.iter().step_by(15).copied().collect();
        while t0.elapsed() < Duration::from_secs(4)
            || (t0.elapsed() < Duration::from_secs(15) && !(seen.0 && seen.1))
        {
            for t in targets.iter().chain([&first, &second]) {
                let mut a = Dict::new();
                a.bytes(b"target", t.as_bytes());
                let Some(ans) = asker.ask("find_node", a, true) else {
                    continue;
                };
                for (id, addr) in compact_nodes(&ans) {
                    if addr.ip().to_string().starts_with("127.4.") {
                        forged_out += 1;
                    }
                    seen.0 |= id == first;
                    seen.1 |= id == second;
                }
            }
        }
        (forged_out, seen.0, seen.1)
    })
    .await;
    assert_eq!(forged_out, 0, "forged requesters were handed out");
    assert!(
        seen_first,
        "the honest peer that joined first was never handed out"
    );
    assert!(
        seen_second,
        "the honest peer that joined after the flood was never handed out"
    );
    server.shutdown().await;
    let _ = (h1, h2);
}
