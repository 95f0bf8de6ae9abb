//! Hourly re-replication over the persistent store, in virtual time: a node that joins later
//! receives the records it is now responsible for with their original publish time, and
//! re-replication never keeps a record alive past its expiry.
#![allow(clippy::disallowed_methods)] // the test picks its base instant

use std::sync::Arc;
use std::time::{Duration, Instant};

use kad_core::{
    Config, Dht, MemoryNetwork, Node, NodeId, Record, RecordStore, StoreLimits, VirtualClock,
    content_key,
};
use kad_plugin_storage::{ContentValidator, RedbStore, StoragePlugin};

const EPOCH_MS: u64 = 1_800_000_000_000;

fn config(seed: u8, base: Instant) -> Config {
    let mut c = Config::default();
    c.set_rng_seed([seed; 32]);
    c.wall_clock = Arc::new(VirtualClock {
        base,
        epoch_ms: EPOCH_MS,
    });
    c.record_ttl = Duration::from_secs(3 * 3600);
    c
}

fn node(net: &MemoryNetwork, dir: &std::path::Path, i: u8, base: Instant) -> Dht {
    let id = NodeId::from_bytes([i; 20]);
    let store = RedbStore::open(
        &dir.join(format!("n{i}.redb")),
        id,
        StoreLimits::default(),
        EPOCH_MS,
    )
    .unwrap();
    let b = Node::builder(config(i, base))
        .id(id)
        .store(Box::new(store))
        .validator(Arc::new(ContentValidator))
        .plugin(Box::new(StoragePlugin::new(40_000)));
    Dht::spawn(b, vec![Arc::new(net.transport(1024))]).unwrap()
}

fn read(dir: &std::path::Path, i: u8, key: &kad_core::Key) -> Option<Record> {
    RedbStore::open(
        &dir.join(format!("n{i}.redb")),
        NodeId::from_bytes([i; 20]),
        StoreLimits::default(),
        0, // read back without dropping anything as expired
    )
    .unwrap()
    .get(key)
}

#[tokio::test(start_paused = true)]
async fn a_late_joiner_gets_records_with_their_publish_time_and_they_still_expire() {
    let base = tokio::time::Instant::now().into_std();
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    // k = 20 > nodes: every node is among the k closest of every key.
    let mut nodes: Vec<Dht> = (1..=3).map(|i| node(&net, dir.path(), i, base)).collect();
    let seed = nodes[0].contact().addrs[0].clone();
    for d in &nodes[1..] {
        d.bootstrap(vec![seed.clone()]).await.unwrap();
    }
    // Published by someone else at EPOCH_MS, to live 3 h.
    let v = &b"kept with its publish time"[..];
    let record = Record::new(
        content_key(v),
        v,
        Some(NodeId::from_bytes([0xEE; 20])),
        EPOCH_MS,
        3 * 3600 * 1000,
    );
    let put = nodes[0].put_record(record.clone()).await.unwrap();
    assert_eq!(put.stored, 3);

    // Half an hour later node 4 joins; nobody has sent it the record yet.
    tokio::time::sleep(Duration::from_secs(1800)).await;
    nodes.push(node(&net, dir.path(), 4, base));
    nodes[3].bootstrap(vec![seed.clone()]).await.unwrap();
    for d in &nodes {
        let _ = d.find_node(d.id()).await;
    }
    // After the hourly re-replication it holds the record, publish time and expiry unchanged.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    for d in &nodes {
        d.shutdown().await;
    }
    let got = read(dir.path(), 4, &record.key).expect("re-replicated to the late joiner");
    assert_eq!(got.published_at_ms, record.published_at_ms);
    assert_eq!(got.expires_at_ms, record.expires_at_ms);
    assert_eq!(got.publisher, record.publisher);
    assert_eq!(got.value, record.value);

    // Restarted on the same files, the nodes keep replicating until the 3 h are up; then the
    // record is gone everywhere.
    let nodes: Vec<Dht> = (1..=4).map(|i| node(&net, dir.path(), i, base)).collect();
    for d in &nodes[1..] {
        d.bootstrap(vec![nodes[0].contact().addrs[0].clone()])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    for d in &nodes {
        d.shutdown().await;
    }
    for i in 1..=4 {
        assert!(
            read(dir.path(), i, &record.key).is_none(),
            "node {i} dropped the expired record"
        );
    }
}
