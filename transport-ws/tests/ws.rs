//! Behaviours of the WebSocket transport beyond the conformance suite.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use kad_core::{PeerAddr, Transport, TransportError, TransportKind};
use kad_transport_ws::{WsConfig, WsTransport, tls};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const STEP: Duration = Duration::from_secs(10);

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn server(config: WsConfig) -> WsTransport {
    WsTransport::bind(local(), config).await.unwrap()
}

/// The socket address of a `ws://IP:PORT/...` address.
fn sock(addr: &PeerAddr) -> SocketAddr {
    let s = addr.to_string();
    let rest = s.split_once("://").unwrap().1;
    rest.split('/').next().unwrap().parse().unwrap()
}

/// Waits (up to 10 s) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn recv(t: &WsTransport) -> (PeerAddr, Bytes) {
    timeout(STEP, t.recv())
        .await
        .expect("a message within 10 s")
        .expect("recv")
}

/// A raw WebSocket client (tokio-tungstenite) connected to `url`.
async fn raw_client(url: &str) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let addr: PeerAddr = url.parse().unwrap();
    let tcp = TcpStream::connect(sock(&addr)).await.unwrap();
    tokio_tungstenite::client_async(url, tcp).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_path_is_refused_with_404() {
    let s = server(WsConfig::default().path("/dht")).await;
    let url = s.local_addr().to_string();
    assert!(url.ends_with("/dht"), "{url}");
    let wrong = url.replace("/dht", "/kad");
    let tcp = TcpStream::connect(sock(&s.local_addr())).await.unwrap();
    match tokio_tungstenite::client_async(wrong.as_str(), tcp).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!("expected HTTP 404, got {other:?}"),
    }
    eventually("the refusal is counted", || {
        s.stats().handshake_failures == 1
    })
    .await;
    assert_eq!(s.connections(), 0);
    // The right path still works.
    let mut c = raw_client(&url).await;
    c.send(Message::Binary(Bytes::from_static(b"ok")))
        .await
        .unwrap();
    assert_eq!(&recv(&s).await.1[..], b"ok");
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_frames_are_dropped_and_binary_flows() {
    let s = server(WsConfig::default()).await;
    let mut c = raw_client(&s.local_addr().to_string()).await;
    c.send(Message::Text("hello".into())).await.unwrap();
    c.send(Message::Binary(Bytes::from_static(b"bin")))
        .await
        .unwrap();
    c.send(Message::Text("again".into())).await.unwrap();
    c.send(Message::Binary(Bytes::from_static(b"bin2")))
        .await
        .unwrap();
    let (from, m) = recv(&s).await;
    assert_eq!(&m[..], b"bin");
    assert!(from.to_string().starts_with("ws://127.0.0.1:"), "{from}");
    assert_eq!(&recv(&s).await.1[..], b"bin2");
    assert_eq!(s.stats().non_binary, 2);
    assert_eq!(s.stats().received, 2);
    // The answer goes back on the same connection, as a binary message.
    s.send(&from, Bytes::from_static(b"answer")).await.unwrap();
    let got = timeout(STEP, async {
        loop {
            match c.next().await {
                Some(Ok(Message::Binary(b))) => break b,
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&got[..], b"answer");
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_only_transport_talks_to_a_server() {
    let s = server(WsConfig::default()).await;
    let c = WsTransport::client(WsConfig::default());
    assert_eq!(c.kind(), TransportKind::Ws);
    assert_eq!(c.listen_addr(), None);
    assert_eq!(c.local_addr().to_string(), "ws://0.0.0.0:0");
    for i in 0..3u8 {
        c.send(&s.local_addr(), Bytes::from(vec![i; 100]))
            .await
            .unwrap();
        let (from, m) = recv(&s).await;
        assert_eq!(m, Bytes::from(vec![i; 100]));
        s.send(&from, Bytes::from(vec![i + 10; 50])).await.unwrap();
        let (back, m) = recv(&c).await;
        assert_eq!(back, s.local_addr());
        assert_eq!(m, Bytes::from(vec![i + 10; 50]));
    }
    // One connection carried everything.
    assert_eq!(c.stats().dialed, 1);
    assert_eq!(s.stats().accepted, 1);
    assert_eq!(c.connections(), 1);
    c.close().await;
    eventually("the server sees the connection close", || {
        s.connections() == 0
    })
    .await;
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_after_ping_and_pong_timeouts() {
    let cfg = WsConfig::default()
        .ping_interval(Duration::from_millis(200))
        .pong_timeout(Duration::from_millis(200));
    let s = server(cfg.clone()).await;
    // A raw client that never reads, so never answers pings.
    let c = raw_client(&s.local_addr().to_string()).await;
    eventually("the connection is accepted", || s.connections() == 1).await;
    let started = Instant::now();
    eventually("the silent connection is closed", || s.connections() == 0).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed too early: {:?}",
        started.elapsed()
    );
    let st = s.stats();
    assert_eq!(st.timeouts, 1);
    assert!(st.pings_sent >= 1, "{st:?}");
    drop(c);

    // A transport peer answers pings: its idle connection lives on. (A longer pong timeout, so
    // that a loaded machine cannot delay a pong past it.)
    let cfg = cfg.pong_timeout(Duration::from_secs(3));
    let a = server(cfg.clone()).await;
    let b = server(cfg).await;
    a.send(&b.local_addr(), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let (from, _) = recv(&b).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.stats().timeouts + b.stats().timeouts, 0);
    assert!(a.stats().pings_sent >= 2 && b.stats().pings_sent >= 2);
    assert_eq!((a.connections(), b.connections()), (1, 1));
    b.send(&from, Bytes::from_static(b"y")).await.unwrap();
    assert_eq!(&recv(&a).await.1[..], b"y");
    assert_eq!(a.stats().dialed, 1);
    a.close().await;
    b.close().await;
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed() {
    let cfg = WsConfig::default()
        .ping_interval(Duration::from_millis(100))
        .idle_timeout(Duration::from_millis(400));
    let a = server(cfg.clone()).await;
    let b = server(cfg).await;
    a.send(&b.local_addr(), Bytes::from_static(b"x"))
        .await
        .unwrap();
    recv(&b).await;
    eventually("both ends close the idle connection", || {
        a.connections() == 0 && b.connections() == 0
    })
    .await;
    assert!(a.stats().timeouts + b.stats().timeouts >= 1);
    // A new message opens a new connection.
    a.send(&b.local_addr(), Bytes::from_static(b"z"))
        .await
        .unwrap();
    assert_eq!(&recv(&b).await.1[..], b"z");
    assert_eq!(a.stats().dialed, 2);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_url_is_the_local_address() {
    let t = server(WsConfig::default().public_url("wss://example.org/kad")).await;
    assert_eq!(t.local_addr().to_string(), "wss://example.org/kad");
    assert_eq!(t.listen_addr(), Some(t.local_addr()));
    t.close().await;
    let bad = WsTransport::bind(local(), WsConfig::default().public_url("udp://1.2.3.4:5")).await;
    assert!(bad.is_err());
    // TLS on the listener makes the bound address wss://.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls_server = tls::server_config_from_pem(
        ck.cert.pem().as_bytes(),
        ck.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let t = server(WsConfig::default().tls_server(tls_server)).await;
    assert!(t.local_addr().to_string().starts_with("wss://127.0.0.1:"));
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_host_name() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let server_tls = tls::server_config_from_pem(
        ck.cert.pem().as_bytes(),
        ck.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let s = server(WsConfig::default().tls_server(server_tls)).await;
    let port = sock(&s.local_addr()).port();
    let url: PeerAddr = format!("wss://localhost:{port}/kad").parse().unwrap();
    // Untrusted certificate: the dial fails.
    let untrusting = WsTransport::client(WsConfig::default());
    untrusting
        .send(&url, Bytes::from_static(b"no"))
        .await
        .unwrap();
    eventually("the dial fails", || untrusting.stats().failed == 1).await;
    assert_eq!(untrusting.stats().dropped, 1);
    // Trusted as an extra root: the dial succeeds, with SNI "localhost".
    let c = WsTransport::client(
        WsConfig::default().tls_client(tls::client_config(&[ck.cert.der().clone()])),
    );
    c.send(&url, Bytes::from_static(b"yes")).await.unwrap();
    let (from, m) = recv(&s).await;
    assert_eq!(&m[..], b"yes");
    assert!(from.to_string().starts_with("wss://"), "{from}");
    s.send(&from, Bytes::from_static(b"back")).await.unwrap();
    assert_eq!(recv(&c).await, (url, Bytes::from_static(b"back")));
    c.close().await;
    untrusting.close().await;
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_closes_with_1009() {
    let s = server(WsConfig::default().max_message_len(1000)).await;
    let mut c = raw_client(&s.local_addr().to_string()).await;
    c.send(Message::Binary(vec![1u8; 1000].into()))
        .await
        .unwrap();
    assert_eq!(recv(&s).await.1.len(), 1000);
    c.send(Message::Binary(vec![2u8; 1001].into()))
        .await
        .unwrap();
    let code = timeout(STEP, async {
        loop {
            match c.next().await {
                Some(Ok(Message::Close(Some(f)))) => break Some(f.code),
                Some(Ok(_)) => {}
                _ => break None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(CloseCode::Size));
    assert_eq!(s.stats().oversize, 1);
    assert_eq!(s.stats().received, 1);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_errors() {
    let t = server(WsConfig::default().max_message_len(100).max_connections(1)).await;
    let udp: PeerAddr = "udp://127.0.0.1:1".parse().unwrap();
    assert!(matches!(
        t.send(&udp, Bytes::from_static(b"x")).await,
        Err(TransportError::WrongKind(_))
    ));
    assert!(matches!(
        t.send(&t.local_addr(), Bytes::from(vec![0; 101])).await,
        Err(TransportError::TooLarge { len: 101, max: 100 })
    ));
    // One connection at most: a second address is refused at once.
    let other = server(WsConfig::default()).await;
    let third = server(WsConfig::default()).await;
    t.send(&other.local_addr(), Bytes::from_static(b"1"))
        .await
        .unwrap();
    assert!(matches!(
        t.send(&third.local_addr(), Bytes::from_static(b"2")).await,
        Err(TransportError::ConnectionLimit(1))
    ));
    assert_eq!(&recv(&other).await.1[..], b"1");
    // An address that is not a usable URL.
    let bogus: PeerAddr = "ws://bad host:1/kad".parse().unwrap();
    let c = WsTransport::client(WsConfig::default());
    assert!(matches!(
        c.send(&bogus, Bytes::from_static(b"x")).await,
        Err(TransportError::Unreachable(_))
    ));
    t.close().await;
    assert!(matches!(
        t.send(&other.local_addr(), Bytes::from_static(b"3")).await,
        Err(TransportError::Closed)
    ));
    assert!(matches!(t.recv().await, Err(TransportError::Closed)));
    other.close().await;
    third.close().await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_queue_fills_while_dialing() {
    // A listener nobody accepts from: the dial hangs in the WebSocket handshake.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to: PeerAddr = format!("ws://{}/kad", l.local_addr().unwrap())
        .parse()
        .unwrap();
    let c = WsTransport::client(
        WsConfig::default()
            .send_queue(4)
            .connect_timeout(Duration::from_millis(300)),
    );
    for _ in 0..4 {
        c.send(&to, Bytes::from_static(b"q")).await.unwrap();
    }
    assert!(matches!(
        c.send(&to, Bytes::from_static(b"q")).await,
        Err(TransportError::QueueFull)
    ));
    assert_eq!(c.stats().queue_full, 1);
    eventually("the dial times out", || c.stats().failed == 1).await;
    assert_eq!(c.stats().dropped, 4);
    assert_eq!(c.connections(), 0);
    c.close().await;
    drop(l);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_restart_and_backs_off_from_dead_ports() {
    let cfg = WsConfig::default()
        .reconnect_backoff_min(Duration::from_millis(400))
        .reconnect_backoff_max(Duration::from_secs(5));
    let a = server(cfg.clone()).await;
    let b = server(cfg.clone()).await;
    let addr = b.local_addr();
    a.send(&addr, Bytes::from_static(b"1")).await.unwrap();
    assert_eq!(&recv(&b).await.1[..], b"1");
    b.close().await;
    drop(b);
    eventually("a sees the connection close", || a.connections() == 0).await;
    let b = WsTransport::bind(sock(&addr), cfg.clone()).await.unwrap();
    assert_eq!(b.local_addr(), addr);
    a.send(&addr, Bytes::from_static(b"2")).await.unwrap();
    assert_eq!(&recv(&b).await.1[..], b"2");
    assert_eq!(a.stats().dialed, 2);
    b.close().await;
    drop(b);

    // A dead port: the first send queues and the dial fails; the next ones fail fast.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        addr
    };
    let dead: PeerAddr = format!("ws://{dead}/kad").parse().unwrap();
    a.send(&dead, Bytes::from_static(b"x")).await.unwrap();
    eventually("the first dial fails", || a.stats().failed == 1).await;
    let t0 = Instant::now();
    assert!(matches!(
        a.send(&dead, Bytes::from_static(b"x")).await,
        Err(TransportError::Unreachable(_))
    ));
    assert!(t0.elapsed() < Duration::from_millis(100));
    // Once the backoff (400 ms) has passed, a send dials again; failing again doubles it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.send(&dead, Bytes::from_static(b"x")).await.unwrap();
    eventually("the second dial fails", || a.stats().failed == 2).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        matches!(
            a.send(&dead, Bytes::from_static(b"x")).await,
            Err(TransportError::Unreachable(_))
        ),
        "the backoff doubled to 800 ms"
    );
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_idempotent_and_frees_the_port() {
    let t = server(WsConfig::default()).await;
    let c = WsTransport::client(WsConfig::default());
    c.send(&t.local_addr(), Bytes::from_static(b"x"))
        .await
        .unwrap();
    recv(&t).await;
    let pending = {
        let started = Instant::now();
        let close = async {
            t.close().await;
            t.close().await;
        };
        let (r, ()) = tokio::join!(t.recv(), close);
        assert!(started.elapsed() < Duration::from_secs(3));
        r
    };
    assert!(matches!(pending, Err(TransportError::Closed)));
    eventually("the client sees the close", || c.connections() == 0).await;
    let addr = sock(&t.local_addr());
    drop(t);
    // The port is free right away: close waited for the listener to stop.
    let again = WsTransport::bind(addr, WsConfig::default()).await.unwrap();
    again.close().await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered() {
    let s = server(WsConfig::default()).await;
    let mut c = raw_client(&s.local_addr().to_string()).await;
    c.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    let pong = timeout(STEP, async {
        loop {
            match c.next().await {
                Some(Ok(Message::Pong(p))) => break p,
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], b"are you there");
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_past_the_limit_gets_503() {
    let s = server(WsConfig::default().max_connections(1)).await;
    let url = s.local_addr().to_string();
    let mut first = raw_client(&url).await;
    first
        .send(Message::Binary(Bytes::from_static(b"1")))
        .await
        .unwrap();
    recv(&s).await;
    let tcp = TcpStream::connect(sock(&s.local_addr())).await.unwrap();
    match tokio_tungstenite::client_async(url.as_str(), tcp).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    assert_eq!(s.stats().refused_limit, 1);
    // Once the first closes, a new one is accepted.
    first.close(None).await.unwrap();
    drop(first);
    eventually("the slot is free again", || s.connections() == 0).await;
    let mut second = raw_client(&url).await;
    second
        .send(Message::Binary(Bytes::from_static(b"2")))
        .await
        .unwrap();
    assert_eq!(&recv(&s).await.1[..], b"2");
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood_is_dropped_at_the_door() {
    let s = server(
        WsConfig::default()
            .max_connections(1)
            .handshake_timeout(Duration::from_secs(30)),
    )
    .await;
    // 1 slot + 64 handshakes in flight are let in; the 15 beyond are dropped unanswered.
    let mut stalls = Vec::new();
    for _ in 0..80 {
        stalls.push(TcpStream::connect(sock(&s.local_addr())).await.unwrap());
    }
    eventually("15 connections are dropped", || {
        s.stats().refused_limit == 15
    })
    .await;
    // Once the stalled clients go away, service resumes.
    drop(stalls);
    let c = WsTransport::client(WsConfig::default());
    let deadline = Instant::now() + STEP;
    loop {
        assert!(Instant::now() < deadline, "service did not resume");
        let _ = c.send(&s.local_addr(), Bytes::from_static(b"hi")).await;
        if let Ok(Ok((_, m))) = timeout(Duration::from_millis(300), s.recv()).await {
            assert_eq!(&m[..], b"hi");
            break;
        }
    }
    c.close().await;
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_transport_frees_the_port() {
    let t = server(WsConfig::default()).await;
    let c = WsTransport::client(WsConfig::default());
    c.send(&t.local_addr(), Bytes::from_static(b"x"))
        .await
        .unwrap();
    recv(&t).await;
    let addr = sock(&t.local_addr());
    drop(t); // no close
    eventually("the client sees the connection close", || {
        c.connections() == 0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let again = loop {
        match WsTransport::bind(addr, WsConfig::default()).await {
            Ok(t) => break t,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("port still busy 2 s after drop: {e}"),
        }
    };
    again.close().await;
    c.close().await;
}

/// Resident memory of this process, in KiB (Linux).
#[cfg(target_os = "linux")]
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Raises this process's soft limit on open files to what `need` requires (at most the hard
/// limit), so the 5,000-connection tests run under a default `ulimit -n`.
#[cfg(target_os = "linux")]
fn raise_fd_limit(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < need {
            assert!(
                lim.rlim_max >= need,
                "this test needs {need} open files but the hard limit is {}; raise it (ulimit -Hn)",
                lim.rlim_max
            );
            lim.rlim_cur = need;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

/// 5,000 connections (both ends in this process, so 10,000 sockets) stay well under 500 MB.
/// The test raises its own file limit to about 11,000 (the hard limit must allow it).
#[cfg(target_os = "linux")]
async fn many_connections(tls: bool) {
    const N: usize = 5000;
    // One of the two at a time: each holds 10,000 sockets.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    // Room for them, plus the other tests of this file running alongside.
    raise_fd_limit(2 * N as u64 + 1024);
    let (mut server_cfg, mut client_cfg) = (WsConfig::default(), WsConfig::default());
    if tls {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let server_tls = tls::server_config_from_pem(
            ck.cert.pem().as_bytes(),
            ck.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        server_cfg = server_cfg.tls_server(server_tls);
        client_cfg = client_cfg.tls_client(tls::client_config(&[ck.cert.der().clone()]));
    }
    let s = server(server_cfg).await;
    let c = WsTransport::client(client_cfg);
    let before = rss_kib();
    // Distinct URLs (by query string) to the same endpoint: one connection each.
    for i in 0..N {
        let to: PeerAddr = format!("{}?c={i}", s.local_addr()).parse().unwrap();
        c.send(&to, Bytes::from(vec![1u8; 200])).await.unwrap();
        if i % 500 == 499 {
            // Let the dials complete in batches, as a real node's would.
            eventually("dials complete", || c.stats().dialed as usize > i - 100).await;
        }
    }
    let mut froms = Vec::with_capacity(N);
    for _ in 0..N {
        froms.push(recv(&s).await.0);
    }
    for from in &froms {
        s.send(from, Bytes::from(vec![2u8; 200])).await.unwrap();
    }
    for _ in 0..N {
        recv(&c).await;
    }
    assert_eq!((s.connections(), c.connections()), (N, N));
    let after = rss_kib();
    let per_pair = (after.saturating_sub(before)) as f64 / N as f64;
    eprintln!(
        "tls={tls}: RSS {before} KiB -> {after} KiB: {per_pair:.1} KiB per connection (both ends)"
    );
    assert!(after < 500 * 1024, "RSS {after} KiB");
    c.close().await;
    s.close().await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_use_little_memory() {
    many_connections(false).await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tls_connections_use_little_memory() {
    many_connections(true).await;
}
