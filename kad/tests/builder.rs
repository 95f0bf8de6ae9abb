//! The builders on 127.0.0.1: what they set up, and the errors that name a bad setting.

use std::time::Duration;

use kad::{BuildError, Mainline, MainlineError, NativeNode, NotEnabled};

/// A UDP port of 127.0.0.1 where nothing listens (bound, then released).
fn dead_udp() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn field_of(e: &BuildError) -> &'static str {
    match e {
        BuildError::Field { field, .. } => field,
        other => panic!("expected a Field error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_settings_are_errors_that_name_them() {
    let e = NativeNode::builder()
        .udp("localhost:x")
        .build()
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), "udp", "{e}");
    assert!(e.to_string().contains("localhost:x"), "{e}");

    let e = NativeNode::builder()
        .udp("127.0.0.1:0")
        .id_work(40)
        .build()
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), "id_work");
    assert!(e.to_string().contains("0 to 32"), "{e}");

    let e = NativeNode::builder()
        .udp("127.0.0.1:0")
        .bootstrap(["tcp://127.0.0.1:1"])
        .build()
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), "bootstrap", "{e}");

    let e = NativeNode::builder().build().await.unwrap_err();
    assert!(matches!(e, BuildError::NoTransport), "{e}");

    let e = NativeNode::builder()
        .udp("127.0.0.1:0")
        .join_timeout(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), "join_timeout");
}

#[tokio::test]
async fn a_key_file_keeps_the_id_and_a_bad_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let a = NativeNode::builder()
        .udp("127.0.0.1:0")
        .key_file(&path)
        .build()
        .await
        .unwrap();
    assert!(a.key_created());
    let id = a.id();
    a.shutdown().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let b = NativeNode::builder()
        .udp("127.0.0.1:0")
        .key_file(&path)
        .build()
        .await
        .unwrap();
    assert!(!b.key_created());
    assert_eq!(b.id(), id);
    b.shutdown().await;

    std::fs::write(&path, "not hex").unwrap();
    let e = NativeNode::builder()
        .udp("127.0.0.1:0")
        .key_file(&path)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            BuildError::KeyFile(kad::keys::KeyFileError::NotHex { .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("64 hex digits"), "{e}");
}

#[tokio::test]
async fn a_join_nobody_answers_fails_within_the_timeout() {
    let t0 = std::time::Instant::now();
    let e = NativeNode::builder()
        .udp("127.0.0.1:0")
        .bootstrap([format!("udp://{}", dead_udp())])
        .join_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(e, BuildError::Join { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn parts_not_enabled_say_how_to_enable_them() {
    let node = NativeNode::builder()
        .udp("127.0.0.1:0")
        .build()
        .await
        .unwrap();
    let e: NotEnabled = node.pubsub().unwrap_err();
    assert!(e.to_string().contains("pubsub()"), "{e}");
    // The value limit follows the transport: one datagram on UDP.
    assert_eq!(node.max_value_len(), kad::core::MAX_NATIVE_VALUE);
    node.shutdown().await;

    let quic = NativeNode::builder()
        .quic("127.0.0.1:0")
        .build()
        .await
        .unwrap();
    assert!(quic.max_value_len() > 500_000, "{}", quic.max_value_len());
    quic.shutdown().await;
}

#[tokio::test]
async fn clients_and_servers_over_udp_and_quic_put_and_get() {
    let a = NativeNode::builder()
        .udp("127.0.0.1:0")
        .quic("127.0.0.1:0")
        .build()
        .await
        .unwrap();
    let quic_addr = a.dht().contact().addrs[1].clone();
    // A client with no listen address opens what it needs to reach its bootstrap node.
    let c = NativeNode::builder()
        .client()
        .bootstrap([quic_addr])
        .build()
        .await
        .unwrap();
    assert_eq!(c.transports().quic().len(), 1);
    assert!(c.transports().udp().is_empty());
    let value = kad::Bytes::from(vec![7u8; 100_000]); // more than a datagram: QUIC only
    let key = kad::content_key(&value);
    let put = c
        .put_quorum(key, value.clone(), kad::Quorum::All)
        .await
        .unwrap();
    assert_eq!(put.stored, 1, "{put:?}");
    let got = a.get_quorum(key, kad::Quorum::One).await.unwrap();
    assert_eq!(got.record.value, value);
    // A client is no rendezvous node and is not in a server's table.
    let snap = a.snapshot().await.unwrap();
    assert!(snap.contacts.iter().all(|x| x.id != c.id()));
    c.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_storage_node_restarts_with_its_id_records_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let seed = NativeNode::builder()
        .udp("127.0.0.1:0")
        .build()
        .await
        .unwrap();
    let node = NativeNode::builder()
        .udp("127.0.0.1:0")
        .storage(dir.path())
        .bootstrap([seed.addr()])
        .build()
        .await
        .unwrap();
    let (id, value) = (node.id(), kad::Bytes::from_static(b"kept"));
    node.put(kad::content_key(&value), value.clone())
        .await
        .unwrap();
    node.shutdown().await; // saves the routing table

    let again = NativeNode::builder()
        .udp("127.0.0.1:0")
        .storage(dir.path())
        .build()
        .await
        .unwrap();
    assert_eq!(again.id(), id);
    assert_eq!(again.store_opened().map(|(_, s)| s.loaded), Some(1));
    assert_eq!(again.restored_contacts(), 1);
    assert_eq!(again.warm_seeds(), [seed.addr()]);
    // Content addressing by default: the storage node refuses a forged record (the seed, which
    // accepts anything, may keep it).
    let _ = again.put(kad::content_key(b"other"), value.clone()).await;
    assert_eq!(again.stats().await.unwrap().records_held, 1);
    again.shutdown().await;
    seed.shutdown().await;
}

#[tokio::test]
async fn a_mainline_node_nobody_answers_is_no_bootstrap() {
    let e = Mainline::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .bootstrap([dead_udp()])
        .read_only()
        .build()
        .await
        .unwrap_err();
    assert!(matches!(e, MainlineError::NoBootstrap { .. }), "{e}");
    let e = Mainline::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .bootstrap_names(["no-port-here"])
        .build()
        .await
        .unwrap_err();
    assert!(matches!(e, MainlineError::NoBootstrap { .. }), "{e}");
}

#[tokio::test]
async fn store_limits_bound_the_in_memory_store() {
    let node = NativeNode::builder()
        .udp("127.0.0.1:0")
        .store_limits(kad::StoreLimits::new(2, 1 << 20))
        .build()
        .await
        .unwrap();
    // Alone in its network, the node keeps what it puts, up to its 2 records.
    for v in ["one", "two", "three"] {
        let _ = node.put(kad::content_key(v.as_bytes()), v.into()).await;
    }
    assert_eq!(node.stats().await.unwrap().records_held, 2);
    node.shutdown().await;
}

/// A node that joins refreshes its farthest non-full buckets (Kademlia's join); a client that
/// joins the same way only looks itself up. Both are counted in the engine's query latencies.
#[tokio::test]
async fn a_node_refreshes_its_buckets_when_it_joins_and_a_client_does_not() {
    let first = NativeNode::builder()
        .udp("127.0.0.1:0")
        .build()
        .await
        .unwrap();
    let seed = first.dht().contact().addrs[0].clone();
    let mut nodes = vec![first];
    for _ in 0..11 {
        let n = NativeNode::builder()
            .udp("127.0.0.1:0")
            .bootstrap([seed.clone()])
            .build()
            .await
            .unwrap();
        nodes.push(n);
    }
    let node = NativeNode::builder()
        .udp("127.0.0.1:0")
        .bootstrap([seed.clone()])
        .build()
        .await
        .unwrap();
    let client = NativeNode::builder()
        .client()
        .bootstrap([seed])
        .build()
        .await
        .unwrap();
    // Refreshes start when the join's self-lookup ends; on loopback they end within
    // milliseconds. Wait (at most 10 s) until neither has a query running.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (node_stats, client_stats) = loop {
        let (n, c) = (
            node.dht().stats().await.unwrap(),
            client.dht().stats().await.unwrap(),
        );
        let idle = |s: &kad::core::Stats| s.queries_done >= s.queries_started;
        if (idle(&n) && idle(&c)) || std::time::Instant::now() > deadline {
            break (n, c);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refreshes = |s: &kad::core::Stats| s.query_latency.get("refresh").map_or(0, |h| h.count);
    // With 12 nodes no bucket is full: at least the farthest one (159) is refreshed.
    assert!(refreshes(&node_stats) >= 1, "{node_stats:?}");
    assert_eq!(refreshes(&client_stats), 0, "{client_stats:?}");
    client.shutdown().await;
    node.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
}
