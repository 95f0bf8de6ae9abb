//! The tokio runtime over the in-memory transport, with paused time: real actor tasks, real
#![allow(clippy::disallowed_methods)] // tests pick an arbitrary base instant
//! channels, virtual clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kad_core::{
    Body, Contact, Dht, DhtError, MemoryNetwork, Message, Node, NodeId, Plugin, PluginCx,
    QueryError, Reply, Request, Response, Transport, TxnId,
};
use kad_testkit::{memory_network, seeded_config};

/// A plugin with one method, `echo.ECHO`, that answers with its parameters.
struct Echo;

impl Plugin for Echo {
    fn namespace(&self) -> &'static str {
        "echo"
    }
    fn on_request(
        &mut self,
        _cx: &mut PluginCx<'_>,
        _from: &Contact,
        method: &str,
        params: &Bytes,
    ) -> Reply {
        match method {
            "echo.ECHO" => Reply::Result(params.clone()),
            _ => Reply::Error(kad_core::RpcError::new(
                kad_core::RpcError::METHOD_NOT_FOUND,
                method,
            )),
        }
    }
}

async fn network(net: &MemoryNetwork, n: usize) -> Vec<Dht> {
    memory_network(net, n, |i| {
        Node::builder(seeded_config(i as u8 + 1))
            .id(NodeId::from_bytes([i as u8 + 1; 20]))
            .plugin(Box::new(Echo))
    })
    .await
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn put_get_find_ping_call() {
    let net = MemoryNetwork::new();
    let nodes = network(&net, 12).await;
    // A second bootstrap round lets early nodes learn about later ones.
    for d in &nodes {
        let _ = d.find_node(d.id()).await;
    }

    let key = NodeId::from_bytes([0xAB; 20]);
    let put = nodes[3]
        .put(key, Bytes::from_static(b"sensor 21.5C"))
        .await
        .unwrap();
    assert!(put.stored >= 10, "stored on {} of 12", put.stored);
    for d in &nodes {
        let got = d.get(key).await.unwrap();
        assert_eq!(&got.record.value[..], b"sensor 21.5C");
        assert_eq!(got.record.publisher, Some(nodes[3].id()));
    }

    let missing = nodes[5].get(NodeId::from_bytes([0xCD; 20])).await;
    assert!(
        matches!(missing, Err(DhtError::Query(QueryError::NotFound))),
        "{missing:?}"
    );

    let found = nodes[7].find_node(nodes[9].id()).await.unwrap();
    assert_eq!(found.closest[0].id, nodes[9].id());
    assert!(found.closest.len() >= 10);

    let pong = nodes[1]
        .ping(nodes[2].contact().addrs[0].clone())
        .await
        .unwrap();
    assert_eq!(pong.contact.id, nodes[2].id());

    let echoed = nodes[4]
        .call(
            nodes[8].contact().clone(),
            "echo.ECHO",
            Bytes::from_static(b"{\"x\":1}"),
        )
        .await
        .unwrap();
    assert_eq!(&echoed[..], b"{\"x\":1}");
    let unknown = nodes[4]
        .call(nodes[8].contact().clone(), "nope.X", Bytes::new())
        .await;
    match unknown {
        Err(DhtError::Query(QueryError::Remote(e))) => {
            assert_eq!(e.code, kad_core::RpcError::METHOD_NOT_FOUND)
        }
        other => panic!("expected method not found, got {other:?}"),
    }

    // A user error names the field and the limit.
    let big = nodes[0]
        .put(key, Bytes::from(vec![0u8; 70_000]))
        .await
        .unwrap_err();
    assert!(big.to_string().contains("max_value_len = 65536"), "{big}");

    let stats = nodes[3].stats().await.unwrap();
    assert!(stats.requests_in > 0 && stats.responses_in > 0);
    assert_eq!(stats.dropped_malformed, 0);

    // Warm restart: the snapshot restores a table that works.
    let snap = nodes[3].snapshot().await.unwrap();
    assert!(snap.contacts.len() >= 10);

    for d in &nodes {
        d.shutdown().await;
    }
    assert!(matches!(
        nodes[0].ping(nodes[1].contact().addrs[0].clone()).await,
        Err(DhtError::Shutdown)
    ));
}

#[tokio::test(start_paused = true)]
async fn dead_peer_times_out_and_lookups_route_around_it() {
    let net = MemoryNetwork::new();
    let nodes = network(&net, 8).await;
    let dead = nodes[5].clone();
    let dead_addr = dead.contact().addrs[0].clone();
    dead.shutdown().await;
    net.disconnect(&dead_addr);
    let started = tokio::time::Instant::now();
    let r = nodes[1].ping(dead_addr).await;
    assert!(
        matches!(r, Err(DhtError::Query(QueryError::Timeout))),
        "{r:?}"
    );
    // The adaptive timeout is bounded by Config::request_timeout (5 s).
    assert!(started.elapsed() <= Duration::from_secs(5));
    let found = nodes[2].find_node(dead.id()).await.unwrap();
    assert!(found.closest.iter().all(|c| c.id != dead.id()));
    assert!(!found.closest.is_empty());
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_dropped_and_counted() {
    let net = MemoryNetwork::new();
    let nodes = network(&net, 3).await;
    let target = nodes[0].contact().addrs[0].clone();
    let attacker = net.transport(16);

    // Garbage bytes, in a flood (paced so the 16-message attacker-side view of the inbox never
    // overflows: every datagram must reach the decoder and be counted).
    for i in 0..5_000u32 {
        attacker
            .send(&target, Bytes::from(i.to_be_bytes().repeat(7)))
            .await
            .unwrap();
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    // A well-formed response to no request of ours.
    let forged = Message {
        txn: TxnId::from_bytes(vec![1, 2, 3, 4]),
        sender: Contact::new(NodeId::from_bytes([0xEE; 20]), attacker.local_addr()),
        recipient: Some(nodes[0].id()),
        read_only: false,
        observed: None,
        body: Body::Response(Response::Nodes { nodes: vec![] }),
    };
    attacker
        .send(&target, Bytes::from(serde_json::to_vec(&forged).unwrap()))
        .await
        .unwrap();
    // A request addressed to another node id.
    let misdirected = Message {
        txn: TxnId::from_bytes(vec![9]),
        sender: Contact::new(NodeId::from_bytes([0xEE; 20]), attacker.local_addr()),
        recipient: Some(NodeId::from_bytes([0x99; 20])),
        read_only: false,
        observed: None,
        body: Body::Request(Request::Ping),
    };
    attacker
        .send(
            &target,
            Bytes::from(serde_json::to_vec(&misdirected).unwrap()),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let s = nodes[0].stats().await.unwrap();
    // Every garbage datagram is counted: decoded and dropped, or shed by the fair inbox when one
    // source sends faster than its share.
    assert_eq!(s.dropped_malformed + s.dropped_overload, 5_000, "{s:?}");
    assert!(s.dropped_malformed >= 32, "{s:?}");
    assert_eq!(s.dropped_unknown_txn, 1, "{s:?}");
    assert_eq!(s.dropped_wrong_recipient, 1, "{s:?}");
    // The node still answers honest peers.
    let pong = nodes[1].ping(target).await.unwrap();
    assert_eq!(pong.contact.id, nodes[0].id());
}

#[tokio::test(start_paused = true)]
async fn a_node_listens_on_several_transports_and_answers_on_the_one_asked() {
    let net = MemoryNetwork::new();
    let t1 = Arc::new(net.transport(64));
    let t2 = Arc::new(net.transport(64));
    let (a1, a2) = (t1.local_addr(), t2.local_addr());
    let a = Dht::spawn(Node::builder(seeded_config(1)), vec![t1, t2]).unwrap();
    assert_eq!(a.contact().addrs.to_vec(), vec![a1.clone(), a2.clone()]);
    let b = Dht::spawn(
        Node::builder(seeded_config(2)),
        vec![Arc::new(net.transport(64))],
    )
    .unwrap();
    let mut events = a.events();
    for addr in [a1, a2] {
        let pong = b.ping(addr).await.unwrap();
        assert_eq!(pong.contact.id, a.id());
    }
    // The event stream carries what the node does: here, b stores a record on a.
    b.bootstrap(vec![a.contact().addrs[1].clone()])
        .await
        .unwrap();
    b.put(NodeId::from_bytes([3; 20]), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let stored = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if let Ok(kad_core::Event::RecordStored { key, from }) = events.recv().await {
                return (key, from);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(stored, (NodeId::from_bytes([3; 20]), b.id()));
}

#[tokio::test(start_paused = true)]
async fn put_quorum_returns_at_the_first_stores_and_the_rest_still_go_out() {
    let net = MemoryNetwork::new();
    let nodes = network(&net, 30).await;
    let held = |nodes: &[Dht]| {
        let nodes = nodes.to_vec();
        async move {
            let mut n = 0;
            for d in &nodes {
                n += d.stats().await.unwrap().records_held;
            }
            n
        }
    };
    // Quorum 0 waits for every one of the k = 20 closest.
    let all = nodes[3]
        .put(NodeId::from_bytes([0x55; 20]), Bytes::from_static(b"all"))
        .await
        .unwrap();
    assert!(all.stored >= 20 && all.stored == all.tried, "{all:?}");
    // Quorum 1 returns once one stored; the other STOREs are still sent and kept.
    let one = nodes[4]
        .put_quorum(
            NodeId::from_bytes([0xaa; 20]),
            Bytes::from_static(b"one"),
            kad_core::Quorum::One,
        )
        .await
        .unwrap();
    // It finished at the first store (its own, or the first answer): the other 19 or 20 STOREs
    // were still in flight.
    assert_eq!(one.stored, 1, "{one:?}");
    assert!(one.tried >= 20, "{one:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(held(&nodes).await >= all.stored as u64 + 20);
    let got = nodes[29].get(NodeId::from_bytes([0xaa; 20])).await.unwrap();
    assert_eq!(&got.record.value[..], b"one");
    // The latency histogram has both puts.
    let h = &nodes[4].stats().await.unwrap().query_latency["put"];
    assert_eq!(h.count, 1);
    assert_eq!(
        nodes[3].stats().await.unwrap().query_latency["put"].count,
        1
    );
}

/// A plugin whose `big.GET` answers with 100 KB.
struct Big;

impl Plugin for Big {
    fn namespace(&self) -> &'static str {
        "big"
    }
    fn on_request(
        &mut self,
        _cx: &mut PluginCx<'_>,
        _from: &Contact,
        _method: &str,
        _params: &Bytes,
    ) -> Reply {
        Reply::Result(Bytes::from(vec![b'x'; 100_000]))
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_too_large_for_its_transport_becomes_an_error_answer_that_says_so() {
    let net = MemoryNetwork::new();
    // The holder's transport carries 64 KiB: its 100 KB answer cannot go back on it.
    let a = Dht::spawn(
        Node::builder(seeded_config(1)).plugin(Box::new(Big)),
        vec![Arc::new(net.transport(64))],
    )
    .unwrap();
    let b = Dht::spawn(
        Node::builder(seeded_config(2)),
        vec![Arc::new(net.transport(64).with_max_len(1 << 20))],
    )
    .unwrap();
    let t = tokio::time::Instant::now();
    let r = b.call(a.contact().clone(), "big.GET", Bytes::new()).await;
    match r {
        Err(DhtError::Query(QueryError::Remote(e))) => {
            assert_eq!(e.code, kad_core::RpcError::TOO_LARGE, "{e}");
            assert!(
                e.message.contains("bytes, over") && e.message.contains("65536-byte"),
                "{e}"
            );
        }
        other => panic!("expected a TOO_LARGE error answer, got {other:?}"),
    }
    // At once, not at a request deadline.
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    // Nothing else broke: small calls and pings still work both ways.
    assert!(a.ping(b.contact().addrs[0].clone()).await.is_ok());
}
