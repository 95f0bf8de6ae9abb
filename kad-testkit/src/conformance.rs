//! The transport conformance suite: one set of cases every [`Transport`] must pass.
//!
//! A transport crate implements [`Harness`] (how to bind its transport, restart it, limit it,
//! and misbehave at the socket level) and expands [`conformance_tests!`](crate::conformance_tests)
//! in a test file, which generates one `#[tokio::test]` per case:
//!
//! ```text
//! // tests/conformance.rs of a transport crate (needs tokio with `rt-multi-thread` and `macros`)
//! kad_testkit::conformance_tests!(my_transport_tests, MyHarness::new());
//! ```
//!
//! The cases, each bounded in time:
//!
//! | case | what must hold |
//! |---|---|
//! | `send_and_receive` | messages of 1 byte to the limit arrive intact, with a source address that an answer reaches |
//! | `size_limit` | `send` past the limit fails with `TooLarge`; a peer's oversize message is dropped (never delivered in part), and a message at the limit sent after it arrives |
//! | `concurrent_requests` | 1,000 requests in flight at once are all answered (unreliable transports may retry) |
//! | `peer_restart` | a peer that restarts on the same address is reached again within seconds |
//! | `garbage_and_stalls` | junk on the socket and peers that connect and stall do not stop service to others; sends to a stalled peer never block |
//! | `connection_limit` | past the limit new connections are refused, and accepted again once one closes (connectionless transports: many sources are all served) |
//! | `clean_shutdown` | after `close`, `recv` returns `Closed`, `send` fails, and peers are unaffected |

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use kad_core::PeerAddr;
use kad_core::{Transport, TransportError};

/// How the suite drives one kind of transport.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// A short name for failure messages.
    fn name(&self) -> &'static str;
    /// Whether every message sent to a live peer arrives (streams); false for datagrams.
    fn reliable(&self) -> bool;
    /// A new transport on a fresh loopback address.
    async fn bind(&self) -> Arc<dyn Transport>;
    /// A new transport with `max_message_len` lowered to `max`.
    async fn bind_with_max_len(&self, max: usize) -> Arc<dyn Transport>;
    /// A new transport at `addr`, the address of a transport that was closed and dropped (a
    /// peer restarting with the same identity).
    async fn rebind(&self, addr: &PeerAddr) -> Arc<dyn Transport>;
    /// A new transport accepting at most `n` connections; `None` for connectionless transports.
    async fn bind_with_connection_limit(&self, n: usize) -> Option<Arc<dyn Transport>>;
    /// Sends junk to `to` below the transport's framing (random datagrams, bytes on a raw TCP
    /// connection, a handshake broken halfway).
    async fn send_garbage(&self, to: &PeerAddr);
    /// Opens a connection (or whatever the transport has) to `to` and then goes silent; the
    /// returned guard keeps it open.
    async fn stall_towards(&self, to: &PeerAddr) -> Box<dyn Any + Send>;
    /// A peer that accepts whatever it is sent at the socket level and never reads or answers:
    /// its address, and a guard that keeps it alive.
    async fn stalled_peer(&self) -> (PeerAddr, Box<dyn Any + Send>);
}

/// Longest any single step of a case may take.
const STEP: Duration = Duration::from_secs(10);

async fn send_ok(t: &Arc<dyn Transport>, to: &PeerAddr, m: Bytes, what: &str) {
    match tokio::time::timeout(STEP, t.send(to, m)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{what}: send to {to} failed: {e}"),
        Err(_) => panic!("{what}: send to {to} blocked for {STEP:?}"),
    }
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// Sends `msg` from `a` to `b` until `b` receives it (once for reliable transports), returning
/// the source address `b` saw. Other messages `b` receives meanwhile are skipped.
async fn deliver(
    h: &dyn Harness,
    a: &Arc<dyn Transport>,
    b: &Arc<dyn Transport>,
    to: &PeerAddr,
    msg: Bytes,
    what: &str,
) -> PeerAddr {
    let tries = if h.reliable() { 1 } else { 20 };
    for _ in 0..tries {
        send_ok(a, to, msg.clone(), what).await;
        let wait = if h.reliable() {
            STEP
        } else {
            Duration::from_millis(500)
        };
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok((from, got))) = tokio::time::timeout_at(deadline, b.recv()).await {
            if got == msg {
                return from;
            }
        }
    }
    panic!("{}: {what}: the message never arrived", h.name());
}

/// Messages of 1 byte, 1,000 bytes and the limit arrive intact; the source address reported
/// with them reaches the sender with an answer.
pub async fn send_and_receive(h: &dyn Harness) {
    let a = h.bind().await;
    let b = h.bind().await;
    let max = a.max_message_len().min(b.max_message_len());
    for (i, len) in [1, 1000, max].into_iter().enumerate() {
        let m = pattern(len, i as u8);
        let from = deliver(h, &a, &b, &b.local_addr(), m, "a to b").await;
        let answer = pattern(len.min(2000), 100 + i as u8);
        let back = deliver(h, &b, &a, &from, answer, "b answers a").await;
        assert_eq!(
            back,
            b.local_addr(),
            "{}: an answer to a message b received must come from b's address",
            h.name()
        );
    }
    a.close().await;
    b.close().await;
}

/// `send` refuses a message past the limit with `TooLarge`; a peer whose limit is lower drops
/// an oversize message (never delivers part of it) and still receives the next one.
pub async fn size_limit(h: &dyn Harness) {
    let a = h.bind().await;
    let max = a.max_message_len();
    let over = Bytes::from(vec![7u8; max + 1]);
    match a.send(&a.local_addr(), over).await {
        Err(TransportError::TooLarge { len, max: m }) => {
            assert_eq!((len, m), (max + 1, max), "{}: TooLarge fields", h.name());
        }
        other => panic!(
            "{}: a message of max + 1 bytes must fail with TooLarge, got {other:?}",
            h.name()
        ),
    }
    let small = 1000;
    let b = h.bind_with_max_len(small).await;
    assert_eq!(b.max_message_len(), small, "{}: lowered limit", h.name());
    let to = b.local_addr();
    let tries = if h.reliable() { 1 } else { 5 };
    for _ in 0..tries {
        send_ok(&a, &to, Bytes::from(vec![1u8; small + 1]), "oversize").await;
    }
    let ok = pattern(small, 9);
    // The oversize message must never surface; the limit-sized one must.
    let deadline = tokio::time::Instant::now() + STEP;
    let mut attempts = 0;
    loop {
        if attempts < 20 {
            send_ok(&a, &to, ok.clone(), "at the limit").await;
            attempts += 1;
        }
        match tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(500)),
            b.recv(),
        )
        .await
        {
            Ok(Ok((_, got))) => {
                assert!(
                    got.len() <= small,
                    "{}: a message of {} bytes was delivered past a limit of {small}",
                    h.name(),
                    got.len()
                );
                if got == ok {
                    break;
                }
            }
            Ok(Err(e)) => panic!("{}: recv failed: {e}", h.name()),
            // Datagrams may be lost; a stream transport may have closed the connection that
            // carried the oversize message (WebSocket: close code 1009), and the next message
            // then travels on a new one.
            Err(_) if tokio::time::Instant::now() < deadline => {}
            Err(_) => panic!(
                "{}: after an oversize message, a message at the limit never arrived",
                h.name()
            ),
        }
    }
    a.close().await;
    b.close().await;
}

/// 1,000 requests in flight at once from one peer, each answered by an echo server; all
/// answers arrive (datagram transports may resend the missing ones, as the engine does).
pub async fn concurrent_requests(h: &dyn Harness) {
    const N: usize = 1000;
    let server = h.bind().await;
    let client = h.bind().await;
    let srv = server.clone();
    let echo = tokio::spawn(async move {
        while let Ok((from, m)) = srv.recv().await {
            let _ = srv.send(&from, m).await;
        }
    });
    let to = server.local_addr();
    let mut missing: HashSet<u32> = (0..N as u32).collect();
    let rounds = if h.reliable() { 1 } else { 5 };
    for round in 0..rounds {
        let mut sends = tokio::task::JoinSet::new();
        for i in missing.iter().copied() {
            let c = client.clone();
            let to = to.clone();
            sends.spawn(async move {
                let mut m = vec![0u8; 64];
                m[..4].copy_from_slice(&i.to_be_bytes());
                tokio::time::timeout(STEP, c.send(&to, m.into())).await
            });
        }
        while let Some(r) = sends.join_next().await {
            match r {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) if !h.reliable() => {
                    // A full queue loses the datagram; it is sent again next round.
                    let _ = e;
                }
                Ok(Ok(Err(e))) => panic!("{}: concurrent send failed: {e}", h.name()),
                Ok(Err(_)) => panic!("{}: a send blocked for {STEP:?}", h.name()),
                Err(e) => panic!("{}: send task failed: {e}", h.name()),
            }
        }
        let wait = if h.reliable() {
            Duration::from_secs(20)
        } else {
            Duration::from_secs(2)
        };
        let deadline = tokio::time::Instant::now() + wait;
        while !missing.is_empty() {
            match tokio::time::timeout_at(deadline, client.recv()).await {
                Ok(Ok((_, m))) if m.len() == 64 => {
                    missing.remove(&u32::from_be_bytes([m[0], m[1], m[2], m[3]]));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("{}: recv failed: {e}", h.name()),
                Err(_) => break,
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            round + 1 < rounds,
            "{}: {} of {N} concurrent requests were never answered",
            h.name(),
            missing.len()
        );
    }
    assert!(missing.is_empty());
    echo.abort();
    client.close().await;
    server.close().await;
}

/// A peer closes, goes away and comes back on the same address: messages reach the new
/// instance within seconds, and its answers reach us.
pub async fn peer_restart(h: &dyn Harness) {
    let a = h.bind().await;
    let b = h.bind().await;
    let addr = b.local_addr();
    let from = deliver(h, &a, &b, &addr, pattern(100, 1), "before the restart").await;
    deliver(
        h,
        &b,
        &a,
        &from,
        pattern(100, 2),
        "answer before the restart",
    )
    .await;
    b.close().await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b2 = h.rebind(&addr).await;
    assert_eq!(
        b2.local_addr(),
        addr,
        "{}: rebind must reuse the address",
        h.name()
    );
    // The first messages may be lost on a connection to the old instance; keep sending.
    let msg = pattern(100, 3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let from = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: the restarted peer was not reached within 15 s",
            h.name()
        );
        let _ = tokio::time::timeout(STEP, a.send(&addr, msg.clone())).await;
        if let Ok(Ok((from, m))) = tokio::time::timeout(Duration::from_millis(300), b2.recv()).await
        {
            if m == msg {
                break from;
            }
        }
    };
    deliver(
        h,
        &b2,
        &a,
        &from,
        pattern(100, 4),
        "answer after the restart",
    )
    .await;
    a.close().await;
    b2.close().await;
}

/// Junk below the framing and peers that connect and go silent do not stop a transport from
/// serving others; sends to a peer that never reads return promptly (accepted or refused,
/// never blocking), and the sender still serves others afterwards.
pub async fn garbage_and_stalls(h: &dyn Harness) {
    let a = h.bind().await;
    let b = h.bind().await;
    let addr = b.local_addr();
    for _ in 0..50 {
        h.send_garbage(&addr).await;
    }
    let mut guards = Vec::new();
    for _ in 0..10 {
        guards.push(h.stall_towards(&addr).await);
    }
    let from = deliver(
        h,
        &a,
        &b,
        &addr,
        pattern(500, 5),
        "after garbage and stalls",
    )
    .await;
    deliver(h, &b, &a, &from, pattern(500, 6), "answer after garbage").await;

    let (stalled, guard) = h.stalled_peer().await;
    let big = Bytes::from(vec![3u8; a.max_message_len().min(16 * 1024)]);
    let started = tokio::time::Instant::now();
    let mut refused = 0usize;
    for _ in 0..2000 {
        match tokio::time::timeout(Duration::from_secs(2), a.send(&stalled, big.clone())).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!("{}: a send to a stalled peer blocked for 2 s", h.name()),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{}: 2,000 sends to a stalled peer took {:?}",
        h.name(),
        started.elapsed()
    );
    let _ = refused;
    deliver(h, &a, &b, &addr, pattern(500, 7), "while a peer is stalled").await;
    drop(guard);
    drop(guards);
    a.close().await;
    b.close().await;
}

/// A transport limited to 2 connections accepts 2 peers and refuses a third; once one of the
/// two closes, the third gets through. Connectionless transports keep no per-peer state, so
/// instead 50 distinct sources must all be served.
pub async fn connection_limit(h: &dyn Harness) {
    let Some(server) = h.bind_with_connection_limit(2).await else {
        let b = h.bind().await;
        let mut seen = HashSet::new();
        // All kept open until the end: a closed socket's port can be handed to the next bind,
        // and two sources on one address would look like one.
        let mut clients = Vec::new();
        for i in 0..50u8 {
            let c = h.bind().await;
            let from = deliver(h, &c, &b, &b.local_addr(), pattern(50, i), "source").await;
            seen.insert(from);
            clients.push(c);
        }
        assert_eq!(seen.len(), 50, "{}: 50 distinct sources", h.name());
        for c in clients {
            c.close().await;
        }
        b.close().await;
        return;
    };
    let to = server.local_addr();
    let c1 = h.bind().await;
    let c2 = h.bind().await;
    let c3 = h.bind().await;
    deliver(h, &c1, &server, &to, pattern(50, 1), "first connection").await;
    deliver(h, &c2, &server, &to, pattern(50, 2), "second connection").await;
    // The third is refused: nothing from it arrives.
    let third = pattern(50, 3);
    let _ = tokio::time::timeout(STEP, c3.send(&to, third.clone())).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Ok((_, m))) = tokio::time::timeout_at(deadline, server.recv()).await {
        assert_ne!(
            m,
            third,
            "{}: a third connection got past a limit of 2",
            h.name()
        );
    }
    c1.close().await;
    drop(c1);
    // Once one closes, the third gets through (it may need a new attempt).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    'outer: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: a third connection was still refused 15 s after one of two closed",
            h.name()
        );
        let _ = tokio::time::timeout(STEP, c3.send(&to, third.clone())).await;
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok((_, m))) = tokio::time::timeout_at(until, server.recv()).await {
            if m == third {
                break 'outer;
            }
        }
    }
    c2.close().await;
    c3.close().await;
    server.close().await;
}

/// After `close`: a pending `recv` returns `Closed` promptly, `send` fails, and the peers of
/// the closed transport carry on with each other.
pub async fn clean_shutdown(h: &dyn Harness) {
    let a = h.bind().await;
    let b = h.bind().await;
    let c = h.bind().await;
    let from = deliver(h, &a, &b, &b.local_addr(), pattern(10, 1), "before close").await;
    let pending = {
        let a = a.clone();
        tokio::spawn(async move { a.recv().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::time::timeout(STEP, a.close())
        .await
        .unwrap_or_else(|_| panic!("{}: close took longer than {STEP:?}", h.name()));
    match tokio::time::timeout(Duration::from_secs(2), pending).await {
        Ok(Ok(Err(TransportError::Closed))) => {}
        other => panic!(
            "{}: a recv pending across close must return Closed, got {other:?}",
            h.name()
        ),
    }
    assert!(
        matches!(a.recv().await, Err(TransportError::Closed)),
        "{}: recv after close must return Closed",
        h.name()
    );
    assert!(
        a.send(&b.local_addr(), pattern(10, 2)).await.is_err(),
        "{}: send after close must fail",
        h.name()
    );
    a.close().await; // twice is harmless
    // b's send to the closed peer returns promptly, and b still talks to c.
    let _ = tokio::time::timeout(Duration::from_secs(2), b.send(&from, pattern(10, 3)))
        .await
        .unwrap_or_else(|_| panic!("{}: a send to a closed peer blocked", h.name()));
    let from_c = deliver(h, &c, &b, &b.local_addr(), pattern(10, 4), "c to b").await;
    deliver(h, &b, &c, &from_c, pattern(10, 5), "b answers c").await;
    b.close().await;
    c.close().await;
}

/// Generates one `#[tokio::test]` per conformance case in a module named `$module`, each
/// driving `$harness` (an expression that builds the harness). The test crate needs tokio
/// with the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! conformance_tests {
    ($module:ident, $harness:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(@case $harness;
                send_and_receive, size_limit, concurrent_requests, peer_restart,
                garbage_and_stalls, connection_limit, clean_shutdown);
        }
    };
    (@case $harness:expr; $($case:ident),*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let h = $harness;
                let run = $crate::conformance::$case(&h);
                ::tokio::time::timeout(::std::time::Duration::from_secs(120), run)
                    .await
                    .expect(concat!(stringify!($case), " did not finish within 120 s"));
            }
        )*
    };
}

/// Keeps a value alive as a guard (for [`Harness::stall_towards`] implementations).
pub fn guard<T: Send + 'static>(v: T) -> Box<dyn Any + Send> {
    Box::new(v)
}
