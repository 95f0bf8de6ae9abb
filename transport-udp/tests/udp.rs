//! The UDP transport over real loopback sockets.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use kad_core::{PeerAddr, Transport, TransportError};
use kad_transport_udp::{MAX_DATAGRAM, UdpConfig, UdpTransport};
use tokio::time::timeout;

async fn bind(addr: &str) -> UdpTransport {
    UdpTransport::bind(addr.parse().unwrap()).await.unwrap()
}

async fn recv(t: &UdpTransport) -> (PeerAddr, Bytes) {
    timeout(Duration::from_secs(5), t.recv())
        .await
        .expect("a datagram within 5 s")
        .unwrap()
}

#[tokio::test]
async fn ipv4_round_trip_and_largest_datagram() {
    let a = bind("127.0.0.1:0").await;
    let b = bind("127.0.0.1:0").await;
    a.send(&b.local_addr(), Bytes::from_static(b"ping"))
        .await
        .unwrap();
    let (from, msg) = recv(&b).await;
    assert_eq!(from, a.local_addr());
    assert_eq!(&msg[..], b"ping");

    // The largest datagram arrives whole.
    let big: Bytes = (0..MAX_DATAGRAM).map(|i| (i % 251) as u8).collect();
    b.send(&from, big.clone()).await.unwrap();
    let (_, got) = recv(&a).await;
    assert_eq!(got, big);

    // One byte more is refused at send, naming the limit.
    let too_big = Bytes::from(vec![0u8; MAX_DATAGRAM + 1]);
    match a.send(&b.local_addr(), too_big).await {
        Err(TransportError::TooLarge { len, max }) => {
            assert_eq!((len, max), (MAX_DATAGRAM + 1, MAX_DATAGRAM));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(a.stats().sent, 1);
    assert_eq!(b.stats().received, 1);
}

#[tokio::test]
async fn ipv6_loopback_and_dual_stack() {
    let a = bind("[::1]:0").await;
    let b = bind("[::1]:0").await;
    a.send(&b.local_addr(), Bytes::from_static(b"v6"))
        .await
        .unwrap();
    let (from, msg) = recv(&b).await;
    assert_eq!((from, &msg[..]), (a.local_addr(), &b"v6"[..]));

    // A socket on [::] talks to an IPv4 peer through a mapped address and reports it as IPv4.
    let any = bind("[::]:0").await;
    let port = any.socket_addr().port();
    let v4 = bind("127.0.0.1:0").await;
    let any_v4 = PeerAddr::Udp(SocketAddr::from(([127, 0, 0, 1], port)));
    v4.send(&any_v4, Bytes::from_static(b"to-dual"))
        .await
        .unwrap();
    let (from, msg) = recv(&any).await;
    assert_eq!(from, v4.local_addr(), "mapped source shown as plain IPv4");
    assert_eq!(&msg[..], b"to-dual");
    any.send(&from, Bytes::from_static(b"back")).await.unwrap();
    let (_, msg) = recv(&v4).await;
    assert_eq!(&msg[..], b"back");
}

#[tokio::test]
async fn oversize_datagrams_are_dropped_and_counted_and_errors_do_not_stop_it() {
    let cfg = UdpConfig::default().max_message_len(1000);
    let small = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let big = bind("127.0.0.1:0").await;
    big.send(&small.local_addr(), Bytes::from(vec![1u8; 5000]))
        .await
        .unwrap();
    // Sending to a port nobody listens on: the OS may answer with ICMP; the transport goes on.
    let dead = bind("127.0.0.1:0").await;
    let dead_addr = dead.local_addr();
    drop(dead);
    for _ in 0..3 {
        let _ = small.send(&dead_addr, Bytes::from_static(b"void")).await;
    }
    big.send(&small.local_addr(), Bytes::from_static(b"fits"))
        .await
        .unwrap();
    let (_, msg) = recv(&small).await;
    assert_eq!(&msg[..], b"fits");
    assert_eq!(small.stats().oversize, 1);
    assert_eq!(small.stats().received, 1);

    // Wrong kind of address: a clear error.
    let err = small
        .send(&PeerAddr::Mem(1), Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::WrongKind(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_2_gb_burst_never_blocks_and_the_transport_stays_usable() {
    let cfg = UdpConfig::default().send_queue(64);
    let a = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let b = bind("127.0.0.1:0").await;
    let msg = Bytes::from(vec![7u8; 60_000]);
    let mut refused = 0;
    // 20,000 x 60 KB = 1.2 GB offered at once: far beyond any socket buffer.
    for _ in 0..20_000 {
        match a.send(&b.local_addr(), msg.clone()).await {
            Ok(()) => {}
            Err(TransportError::QueueFull) => refused += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(a.stats().queue_full, refused);
    // Everything accepted reaches the OS once the writer has drained the queue.
    let accepted = 20_000 - refused;
    let drained = async {
        while a.stats().sent + a.stats().send_errors < accepted {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(Duration::from_secs(30), drained)
        .await
        .expect("queue drained");
    // Still usable afterwards.
    let c = bind("127.0.0.1:0").await;
    c.send(&a.local_addr(), Bytes::from_static(b"alive"))
        .await
        .unwrap();
    let (_, got) = recv(&a).await;
    assert_eq!(&got[..], b"alive");
}
