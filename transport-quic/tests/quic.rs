//! QUIC-specific behaviour: identity checks, large messages, datagrams, dead peers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kad_core::{NativeIdentity, Transport, TransportError};
use kad_transport_quic::{QuicConfig, QuicTransport};

fn identity(b: u8) -> Arc<NativeIdentity> {
    Arc::new(NativeIdentity::from_secret(&[b; 32]).unwrap())
}

fn bind(id: &Arc<NativeIdentity>, config: QuicConfig) -> QuicTransport {
    QuicTransport::bind("127.0.0.1:0".parse().unwrap(), id.clone(), config).unwrap()
}

async fn recv(t: &QuicTransport) -> (kad_core::PeerAddr, Bytes) {
    tokio::time::timeout(Duration::from_secs(10), t.recv())
        .await
        .expect("a message within 10 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_proving_another_id_is_refused() {
    let (ia, ib, ic) = (identity(1), identity(2), identity(3));
    let a = bind(&ia, QuicConfig::default());
    let b = bind(&ib, QuicConfig::default());
    // a expects node c at b's address: the handshake fails, nothing is delivered.
    a.send_to_node(&b.local_addr(), Some(ic.id()), Bytes::from_static(b"for c"))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), b.recv())
            .await
            .is_err(),
        "a message reached a peer that is not the one expected"
    );
    let s = a.stats();
    assert_eq!((s.wrong_peer, s.failed, s.sent), (1, 1, 0), "{s:?}");
    // The right id gets through (after the dial backoff).
    tokio::time::sleep(Duration::from_millis(150)).await;
    a.send_to_node(&b.local_addr(), Some(ib.id()), Bytes::from_static(b"for b"))
        .await
        .unwrap();
    let (from, m) = recv(&b).await;
    assert_eq!((from, &m[..]), (a.local_addr(), &b"for b"[..]));
    // Now that a cached connection proves b's id, expecting c there fails at once.
    match a
        .send_to_node(&b.local_addr(), Some(ic.id()), Bytes::from_static(b"x"))
        .await
    {
        Err(TransportError::WrongPeer {
            expected, found, ..
        }) => assert_eq!((expected, found), (ic.id(), ib.id())),
        other => panic!("expected WrongPeer, got {other:?}"),
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_far_larger_than_a_datagram_arrive_intact() {
    let big = QuicConfig::default().max_message_len(16 * 1024 * 1024);
    let a = bind(&identity(4), big.clone());
    let b = bind(&identity(5), big);
    let msg: Bytes = (0..16 * 1024 * 1024u32)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<_>>()
        .into();
    a.send(&b.local_addr(), msg.clone()).await.unwrap();
    a.send(&b.local_addr(), Bytes::from_static(b"small after big"))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(recv(&b).await.1);
    }
    got.sort_by_key(Bytes::len);
    assert_eq!(&got[0][..], b"small after big");
    assert!(got[1] == msg, "the 16 MiB message arrived altered");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_messages_can_travel_as_datagrams() {
    let a = bind(&identity(6), QuicConfig::default().datagrams(true));
    let b = bind(&identity(7), QuicConfig::default());
    // The first message opens the connection; later small ones go as datagrams.
    a.send(&b.local_addr(), Bytes::from_static(b"first"))
        .await
        .unwrap();
    let mut seen = 0;
    let mut sent = 1;
    while seen < 20 {
        if sent < 200 {
            a.send(&b.local_addr(), Bytes::from(vec![1u8; 300]))
                .await
                .unwrap();
            sent += 1;
        }
        if tokio::time::timeout(Duration::from_secs(5), b.recv())
            .await
            .is_ok()
        {
            seen += 1;
        } else {
            panic!("datagrams stopped arriving");
        }
    }
    assert!(a.stats().datagrams_sent > 0, "{:?}", a.stats());
    // Messages too big for a datagram still go on streams.
    a.send(&b.local_addr(), Bytes::from(vec![2u8; 100_000]))
        .await
        .unwrap();
    loop {
        let (_, m) = recv(&b).await;
        if m.len() == 100_000 {
            break;
        }
    }
    a.close().await;
    b.close().await;
}

/// Every message arrives with the node id its sender proved; a message for a named node never
/// reaches another peer, even when it was queued while a connection with no expectation was
/// still being made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_the_proven_sender_and_reach_only_the_named_node() {
    let (ia, ib, ic) = (identity(1), identity(2), identity(3));
    let a = bind(&ia, QuicConfig::default());
    let b = bind(&ib, QuicConfig::default());
    assert!(a.proves_peer_ids());
    // No expectation (an address whose node is unknown), then one for c, both queued at once.
    a.send_to_node(&b.local_addr(), None, Bytes::from_static(b"anyone"))
        .await
        .unwrap();
    // Refused at once if the handshake already finished, else dropped when it does.
    match a
        .send_to_node(&b.local_addr(), Some(ic.id()), Bytes::from_static(b"for c"))
        .await
    {
        Ok(()) | Err(TransportError::WrongPeer { .. }) => {}
        Err(e) => panic!("unexpected {e}"),
    }
    a.send_to_node(&b.local_addr(), Some(ib.id()), Bytes::from_static(b"for b"))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let (from, node, m) = tokio::time::timeout(Duration::from_secs(10), b.recv_from_node())
            .await
            .expect("a message within 10 s")
            .unwrap();
        assert_eq!((from, node), (a.local_addr(), Some(ia.id())));
        got.push(m);
    }
    // Each message has a stream of its own: their order is not kept.
    got.sort();
    assert_eq!(got, [&b"anyone"[..], &b"for b"[..]]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b.recv())
            .await
            .is_err(),
        "the message for c reached b"
    );
    assert_eq!(a.stats().wrong_peer, 1);
    a.close().await;
    b.close().await;
}

/// A UDP relay on 127.0.0.1 between one client and a server, as the client sees the path: it
/// forwards both ways, drops everything while `pass` is off (the server crashed), and forwards
/// to whichever server `target` names (the server restarted elsewhere). Stops with `stop`.
struct Relay {
    addr: std::net::SocketAddr,
    pass: Arc<std::sync::atomic::AtomicBool>,
    target: Arc<std::sync::Mutex<std::net::SocketAddr>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn to(server: std::net::SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let front = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let pass = Arc::new(AtomicBool::new(true));
        let target = Arc::new(std::sync::Mutex::new(server));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, t, st) = (pass.clone(), target.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut client = None;
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = front.recv_from(&mut buf) {
                    client = Some(from);
                    if p.load(Ordering::Relaxed) {
                        let to = *t.lock().unwrap();
                        let _ = back.send_to(&buf[..n], to);
                    }
                }
                if let Ok((n, from)) = back.recv_from(&mut buf) {
                    let to = *t.lock().unwrap();
                    if let (true, true, Some(c)) = (p.load(Ordering::Relaxed), from == to, client) {
                        let _ = front.send_to(&buf[..n], c);
                    }
                }
            }
        });
        Self {
            addr,
            pass,
            target,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn quic_addr(t: &QuicTransport) -> std::net::SocketAddr {
    match t.local_addr() {
        kad_core::PeerAddr::Quic(a) => a,
        other => panic!("{other}"),
    }
}

/// Waits up to `limit` for `cond`, checking every 50 ms.
async fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_noticed_and_its_restart_is_dialed_again() {
    let (ia, ib) = (identity(1), identity(2));
    let b1 = bind(&ib, QuicConfig::default());
    let relay = Relay::to(quic_addr(&b1));
    let via = kad_core::PeerAddr::Quic(relay.addr);
    // A liveness timeout of 1 s, an idle timeout of 60 s: only liveness can end the connection
    // within the test.
    let cfg = QuicConfig::default()
        .liveness_timeout(Some(Duration::from_secs(1)))
        .idle_timeout(Duration::from_secs(60));
    let a = bind(&ia, cfg);
    // A live peer that acknowledges is never taken for dead: messages for 2.5 s, and a pause.
    for i in 0..25u8 {
        a.send_to_node(&via, Some(ib.id()), Bytes::from(vec![i; 100]))
            .await
            .unwrap();
        assert_eq!(recv(&b1).await.1[0], i);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((a.stats().dead_peers, a.connections()), (0, 1));

    // The peer crashes: nothing comes back. A small message (too small to draw a stateless
    // reset from a restarted peer) goes into the void; the connection is closed as dead.
    relay
        .pass
        .store(false, std::sync::atomic::Ordering::Relaxed);
    b1.close().await;
    a.send_to_node(&via, Some(ib.id()), Bytes::from_static(b"lost"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || a.stats().dead_peers == 1).await,
        "the silent peer was not noticed: {:?}",
        a.stats()
    );
    assert!(eventually(Duration::from_secs(2), || a.connections() == 0).await);

    // It restarts (same identity, behind the same address): the next message dials it again.
    let b2 = bind(&ib, QuicConfig::default());
    *relay.target.lock().unwrap() = quic_addr(&b2);
    relay.pass.store(true, std::sync::atomic::Ordering::Relaxed);
    a.send_to_node(&via, Some(ib.id()), Bytes::from_static(b"back"))
        .await
        .unwrap();
    let (_, m) = recv(&b2).await;
    assert_eq!(&m[..], b"back");
    let s = a.stats();
    assert_eq!((s.dialed, s.dead_peers), (2, 1), "{s:?}");
    a.close().await;
    b2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_liveness_a_silent_peer_keeps_its_connection() {
    let (ia, ib) = (identity(1), identity(2));
    let b = bind(&ib, QuicConfig::default());
    let relay = Relay::to(quic_addr(&b));
    let via = kad_core::PeerAddr::Quic(relay.addr);
    let a = bind(&ia, QuicConfig::default().liveness_timeout(None));
    a.send_to_node(&via, Some(ib.id()), Bytes::from_static(b"hello"))
        .await
        .unwrap();
    recv(&b).await;
    relay
        .pass
        .store(false, std::sync::atomic::Ordering::Relaxed);
    a.send_to_node(&via, Some(ib.id()), Bytes::from_static(b"lost"))
        .await
        .unwrap();
    // What the liveness timeout prevents: the dead connection stays until the idle timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((a.stats().dead_peers, a.connections()), (0, 1));
    a.close().await;
    b.close().await;
}
