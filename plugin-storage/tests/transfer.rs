//! Whole files through real nodes (the tokio runtime over the in-memory transport): put, get,
//! encryption, key shares, resume, forged holders and departed holders.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kad_core::{
    AcceptAll, Dht, MemoryNetwork, Node, NodeId, PeerAddr, Record, RecordValidator, content_key,
};
use kad_plugin_storage::{
    BlobError, ContentValidator, GetOptions, GetReport, Protection, PutOptions, StoragePlugin,
    TransferError, combine_shares, get_file, put_file,
};
use kad_testkit::{memory_network, seeded_config};

const CHUNK: u32 = 4096;
const REPLY: usize = 40_000;

/// `n` storing nodes (the first `forgers` accept any record), plus a read-only client that
/// trusts only content-addressed values.
async fn network(net: &MemoryNetwork, n: usize, forgers: usize) -> (Vec<Dht>, Dht) {
    let nodes = storing_nodes(net, n, |i| -> Arc<dyn RecordValidator> {
        if i < forgers {
            Arc::new(AcceptAll)
        } else {
            Arc::new(ContentValidator)
        }
    })
    .await;
    let seed = nodes[0].contact().addrs[0].clone();
    (nodes, reader(net, 200, seed).await)
}

/// `n` nodes with the storage plugin, node `i` with id `[i + 1; 20]` and the validator
/// `validator(i)`, each having looked up its own id.
async fn storing_nodes(
    net: &MemoryNetwork,
    n: usize,
    validator: impl Fn(usize) -> Arc<dyn RecordValidator>,
) -> Vec<Dht> {
    let nodes = memory_network(net, n, |i| {
        Node::builder(seeded_config(i as u8 + 1))
            .id(NodeId::from_bytes([i as u8 + 1; 20]))
            .validator(validator(i))
            .plugin(Box::new(StoragePlugin::new(REPLY)))
    })
    .await
    .unwrap();
    for d in &nodes {
        let _ = d.find_node(d.id()).await;
    }
    nodes
}

/// A read-only client with id `[n; 20]` that trusts only content-addressed values, joined
/// through `seed`.
async fn reader(net: &MemoryNetwork, n: u8, seed: PeerAddr) -> Dht {
    let mut c = seeded_config(n);
    c.read_only = true;
    let b = Node::builder(c)
        .id(NodeId::from_bytes([n; 20]))
        .validator(Arc::new(ContentValidator));
    let client = Dht::spawn(b, vec![Arc::new(net.transport(4096))]).unwrap();
    client.bootstrap(vec![seed]).await.unwrap();
    client
}

/// `get_file` of `key` into `out`, which must finish within `secs` and succeed.
async fn download_within(
    secs: u64,
    client: &Dht,
    key: NodeId,
    out: &Path,
    opts: &GetOptions,
) -> GetReport {
    tokio::time::timeout(
        Duration::from_secs(secs),
        get_file(client, key, None, out, opts, &quiet),
    )
    .await
    .expect("the download finishes")
    .unwrap()
}

/// A file of `len` pseudo-random bytes (seeded) in a fresh directory.
fn file(dir: &Path, len: usize, seed: u32) -> (PathBuf, Vec<u8>) {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let p = dir.join(format!("in-{seed}.bin"));
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

fn put_opts(protection: Protection) -> PutOptions {
    PutOptions {
        chunk_size: CHUNK,
        max_value_len: 45_000,
        protection,
        ..PutOptions::default()
    }
}

fn get_opts() -> GetOptions {
    GetOptions {
        max_reply_bytes: REPLY,
        ..GetOptions::default()
    }
}

fn quiet(_: u64, _: u64) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_encrypted_and_shared_files_round_trip() {
    let net = MemoryNetwork::new();
    let (_nodes, client) = network(&net, 8, 0).await;
    let dir = tempfile::tempdir().unwrap();
    // 300 KB and a size that is not a multiple of the chunk.
    let (path, data) = file(dir.path(), 300_001, 1);

    let put = put_file(&client, &path, &put_opts(Protection::Plain), &quiet)
        .await
        .unwrap();
    assert_eq!(put.chunks, 300_001u64.div_ceil(u64::from(CHUNK)));
    assert!(put.min_replicas >= 8, "{put:?}");
    let out = dir.path().join("plain.out");
    let got = get_file(&client, put.key, None, &out, &get_opts(), &quiet)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(got.bad_chunks, 0);
    assert_eq!(got.name.as_deref(), Some("in-1.bin"));
    assert!(
        got.holders_used >= 2,
        "chunks come from several holders: {got:?}"
    );

    // Encrypted: the capability reads it; no key, or another file's key, does not.
    let enc = put_file(&client, &path, &put_opts(Protection::Encrypted), &quiet)
        .await
        .unwrap();
    let cap = enc.capability.expect("a capability");
    assert_eq!(cap.manifest, enc.key);
    let parsed: kad_plugin_storage::Capability = cap.to_string().parse().unwrap();
    let out = dir.path().join("enc.out");
    get_file(
        &client,
        enc.key,
        Some(&parsed.key),
        &out,
        &get_opts(),
        &quiet,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let out2 = dir.path().join("enc-nokey.out");
    let e = get_file(&client, enc.key, None, &out2, &get_opts(), &quiet).await;
    assert!(matches!(e, Err(TransferError::KeyNeeded)), "{e:?}");
    let other = kad_plugin_storage::FileKey::generate().unwrap();
    let e = get_file(&client, enc.key, Some(&other), &out2, &get_opts(), &quiet).await;
    assert!(
        matches!(e, Err(TransferError::Blob(BlobError::WrongKey))),
        "{e:?}"
    );
    assert!(!out2.exists(), "nothing written under a wrong key");

    // Shares 2/3: any two decrypt, one is refused, and the key is never printed.
    let shared = put_file(
        &client,
        &path,
        &put_opts(Protection::Shared {
            threshold: 2,
            shares: 3,
        }),
        &quiet,
    )
    .await
    .unwrap();
    assert!(shared.capability.is_none());
    assert_eq!(shared.shares.len(), 3);
    for pair in [[0, 1], [2, 0], [1, 2]] {
        let two = [
            shared.shares[pair[0]].clone(),
            shared.shares[pair[1]].clone(),
        ];
        let key = combine_shares(&two).unwrap();
        let out = dir
            .path()
            .join(format!("shared-{}{}.out", pair[0], pair[1]));
        get_file(&client, shared.key, Some(&key), &out, &get_opts(), &quiet)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }
    assert!(combine_shares(&shared.shares[..1]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_from_the_chunks_that_verify() {
    let net = MemoryNetwork::new();
    let (_nodes, client) = network(&net, 6, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = file(dir.path(), 100 * CHUNK as usize + 17, 2);
    for protection in [Protection::Plain, Protection::Encrypted] {
        let put = put_file(&client, &path, &put_opts(protection), &quiet)
            .await
            .unwrap();
        let key = put.capability.map(|c| c.key);
        // An earlier run left 60 chunks, one of them damaged.
        let out = dir.path().join("resume.out");
        let mut part = data[..60 * CHUNK as usize].to_vec();
        part[10 * CHUNK as usize + 5] ^= 0xFF;
        std::fs::write(dir.path().join("resume.out.part"), &part).unwrap();
        let got = get_file(&client, put.key, key.as_ref(), &out, &get_opts(), &quiet)
            .await
            .unwrap();
        assert_eq!(
            got.resumed, 59,
            "{protection:?}: every intact chunk is kept"
        );
        assert_eq!(std::fs::read(&out).unwrap(), data, "{protection:?}");
        assert!(!dir.path().join("resume.out.part").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_chunks_are_dropped_and_fetched_from_an_honest_holder() {
    let net = MemoryNetwork::new();
    // Seven of eight nodes take anything: they will hold a forged copy of every chunk.
    let (nodes, client) = network(&net, 8, 7).await;
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = file(dir.path(), 40 * CHUNK as usize, 3);
    let put = put_file(&client, &path, &put_opts(Protection::Plain), &quiet)
        .await
        .unwrap();
    // The forgers replace every chunk with garbage under the same key (a later publish time
    // wins with AcceptAll); the honest node refuses the forgery.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for chunk in data.chunks(CHUNK as usize) {
        let forged = Record::new(
            content_key(chunk),
            vec![0xEE; chunk.len()],
            None,
            now + 1,
            600_000,
        );
        let o = nodes[0].put_record(forged).await.unwrap();
        assert_eq!(o.stored, 7, "the honest node refuses a forged chunk");
    }
    let out = dir.path().join("forged.out");
    let got = get_file(&client, put.key, None, &out, &get_opts(), &quiet)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(
        got.bad_chunks > 0,
        "forged answers were seen and dropped: {got:?}"
    );
    // With the honest holder gone, only forgeries are left: an error, never a wrong file.
    net.disconnect(&nodes[7].contact().addrs[0]);
    nodes[7].shutdown().await;
    let out = dir.path().join("forged-only.out");
    let e = get_file(&client, put.key, None, &out, &get_opts(), &quiet).await;
    assert!(matches!(e, Err(TransferError::NotFound { .. })), "{e:?}");
    assert!(!out.exists(), "no output file from forged chunks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_survives_holders_that_left() {
    let net = MemoryNetwork::new();
    let (nodes, client) = network(&net, 8, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = file(dir.path(), 30 * CHUNK as usize, 4);
    let put = put_file(&client, &path, &put_opts(Protection::Plain), &quiet)
        .await
        .unwrap();
    // Five of the eight holders go away without a word.
    for d in &nodes[1..6] {
        net.disconnect(&d.contact().addrs[0]);
        d.shutdown().await;
    }
    let out = dir.path().join("left.out");
    let mut opts = get_opts();
    opts.parallel = 4;
    let got = download_within(120, &client, put.key, &out, &opts).await;
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(
        got.failed_fetches > 0,
        "fetches to departed holders failed: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_a_file_is_said_so() {
    let net = MemoryNetwork::new();
    let (nodes, client) = network(&net, 4, 0).await;
    let v = bytes::Bytes::from_static(b"just a value");
    nodes[1].put(content_key(&v), v.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = get_file(
        &client,
        content_key(&v),
        None,
        &dir.path().join("x"),
        &get_opts(),
        &quiet,
    )
    .await;
    assert!(matches!(e, Err(TransferError::NotAFile(_))), "{e:?}");
    let e = get_file(
        &client,
        NodeId::from_bytes([9; 20]),
        None,
        &dir.path().join("y"),
        &get_opts(),
        &quiet,
    )
    .await;
    assert!(matches!(e, Err(TransferError::NotFound { .. })), "{e:?}");
}

/// A holder that answers every `storage.FETCH` with nothing: no value, nothing missing.
struct EmptyFetch;

impl kad_core::Plugin for EmptyFetch {
    fn namespace(&self) -> &'static str {
        kad_plugin_storage::NAMESPACE
    }
    fn on_request(
        &mut self,
        _cx: &mut kad_core::PluginCx<'_>,
        _from: &kad_core::Contact,
        _method: &str,
        _params: &bytes::Bytes,
    ) -> kad_core::Reply {
        kad_core::Reply::Result(bytes::Bytes::from_static(br#"{"values":[],"missing":[]}"#))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_that_answer_nothing_are_left_for_one_that_serves() {
    let net = MemoryNetwork::new();
    // Five of six holders answer every fetch with an empty answer; one serves.
    let nodes = memory_network(&net, 6, |i| {
        let b = Node::builder(seeded_config(i as u8 + 1))
            .id(NodeId::from_bytes([i as u8 + 1; 20]))
            .validator(Arc::new(ContentValidator));
        if i < 5 {
            b.plugin(Box::new(EmptyFetch))
        } else {
            b.plugin(Box::new(StoragePlugin::new(REPLY)))
        }
    })
    .await
    .unwrap();
    for d in &nodes {
        let _ = d.find_node(d.id()).await;
    }
    let client = reader(&net, 200, nodes[0].contact().addrs[0].clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = file(dir.path(), 20 * CHUNK as usize, 9);
    let put = put_file(&client, &path, &put_opts(Protection::Plain), &quiet)
        .await
        .unwrap();
    let out = dir.path().join("empty-holders.out");
    // An empty answer counts as a failure: before, it sent the keys back to the same holder
    // forever.
    let got = download_within(60, &client, put.key, &out, &get_opts()).await;
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(got.failed_fetches > 0, "{got:?}");
    assert_eq!(got.holders_used, 1, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinning_node_keeps_what_its_user_hands_it_within_its_limit_and_refuses_the_rest() {
    let net = MemoryNetwork::new();
    let client_id = NodeId::from_bytes([200; 20]);
    let nodes = memory_network(&net, 6, |i| {
        let mut plugin = StoragePlugin::new(REPLY);
        if i == 0 {
            plugin = plugin.allow_pins([client_id], 20_000);
        }
        Node::builder(seeded_config(i as u8 + 1))
            .id(NodeId::from_bytes([i as u8 + 1; 20]))
            .validator(Arc::new(ContentValidator))
            .plugin(Box::new(plugin))
    })
    .await
    .unwrap();
    for d in &nodes {
        let _ = d.find_node(d.id()).await;
    }
    let pinner = nodes[0].contact().clone();
    let mut c = seeded_config(200);
    c.read_only = true;
    let b = Node::builder(c)
        .id(client_id)
        .validator(Arc::new(ContentValidator));
    let client = Dht::spawn(b, vec![Arc::new(net.transport(4096))]).unwrap();
    client
        .bootstrap(vec![nodes[1].contact().addrs[0].clone()])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = put_opts(Protection::Plain);
    opts.pin_to = Some(pinner.clone());

    // A small file: every record pinned.
    let (small, _) = file(dir.path(), 2 * CHUNK as usize, 1);
    let r = put_file(&client, &small, &opts, &quiet).await.unwrap();
    assert_eq!(r.pinned, 2 + r.index_blobs + 1, "{r:?}");

    // Its user unpins the manifest: one record; a key it never pinned: none.
    let unpin = |keys: Vec<kad_core::Key>| {
        let c = client.clone();
        let to = pinner.clone();
        async move {
            let params = kad_plugin_storage::UnpinParams { keys };
            let a = c
                .call(
                    to,
                    kad_plugin_storage::UNPIN,
                    serde_json::to_vec(&params).unwrap().into(),
                )
                .await
                .unwrap();
            serde_json::from_slice::<kad_plugin_storage::UnpinReply>(&a)
                .unwrap()
                .unpinned
        }
    };
    assert_eq!(unpin(vec![r.key, r.key]).await, 1);
    assert_eq!(unpin(vec![r.key, content_key(b"never pinned")]).await, 0);

    // One past the limit: refused, with the limit named.
    let (big, _) = file(dir.path(), 8 * CHUNK as usize, 2);
    match put_file(&client, &big, &opts, &quiet).await {
        Err(TransferError::NotPinned { node, reason, .. }) => {
            assert_eq!(node, pinner.id);
            assert!(reason.contains("limit of 20000 bytes"), "{reason}");
        }
        other => panic!("expected NotPinned, got {other:?}"),
    }

    // A forged value (its key is not its hash) is refused too.
    let params = kad_plugin_storage::PinParams {
        values: vec![(content_key(b"honest"), bytes::Bytes::from_static(b"forged"))],
        ttl_ms: 60_000,
    };
    let e = client
        .call(
            pinner.clone(),
            kad_plugin_storage::PIN,
            serde_json::to_vec(&params).unwrap().into(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not content-addressed"), "{e}");

    // Another node may not pin here.
    let stranger = nodes[2].clone();
    let e = stranger
        .call(
            pinner,
            kad_plugin_storage::PIN,
            serde_json::to_vec(&params).unwrap().into(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("keeps records only for"), "{e}");
}

/// Holds content-addressed values under 1 KiB only (a file's manifest, not its chunks).
struct SmallOnly;

impl RecordValidator for SmallOnly {
    fn validate(&self, r: &Record) -> Result<(), kad_core::Rejected> {
        if r.value.len() < 1024 {
            ContentValidator.validate(r)
        } else {
            Err(kad_core::Rejected("holds small values only".into()))
        }
    }
}

/// The holders are far away and the nodes near the getter hold only small values. A getter's
/// lookups stop waiting for the far holders after round trips measured on the near nodes (past
/// a 20 ms soft deadline outside the closest few; past the 250 ms hard one when the round trip
/// is longer), so its table and its lookups' answers name near nodes only. A value and a file's
/// chunks held far away come back all the same: the nodes a lookup named without hearing from
/// are asked with a fetch's patience.
async fn far_holders_are_asked(one_way: Duration) {
    let net = MemoryNetwork::new();
    // Nodes 0-2 are near and hold small values only; nodes 3-5 hold everything.
    let nodes = storing_nodes(&net, 6, |i| -> Arc<dyn RecordValidator> {
        if i < 3 {
            Arc::new(SmallOnly)
        } else {
            Arc::new(ContentValidator)
        }
    })
    .await;
    let near = nodes[0].contact().addrs[0].clone();
    let putter = reader(&net, 200, near.clone()).await;
    let value = bytes::Bytes::from(vec![7u8; 2000]);
    let value_key = content_key(&value);
    let stored = putter.put(value_key, value.clone()).await.unwrap();
    assert_eq!(
        stored.stored, 3,
        "only the far nodes hold the value: {stored:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = file(dir.path(), 12 * CHUNK as usize, 11);
    let put = put_file(&putter, &path, &put_opts(Protection::Plain), &quiet)
        .await
        .unwrap();
    assert_eq!(
        put.min_replicas, 3,
        "only the far nodes hold the chunks: {put:?}"
    );

    for d in &nodes[3..] {
        net.delay(&d.contact().addrs[0], one_way);
    }
    // A value: a `get` finishes without the far holders, then they are asked.
    let getter = reader(&net, 201, near.clone()).await;
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        kad_plugin_storage::fetch_one(&getter, value_key, "the value"),
    )
    .await
    .expect("the fetch finishes")
    .unwrap();
    assert_eq!(got, value);
    // A file: its manifest is near, its chunks far.
    let getter = reader(&net, 202, near).await;
    let out = dir.path().join("far.out");
    let got = download_within(60, &getter, put.key, &out, &get_opts()).await;
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(
        got.lookups > 0,
        "the chunks were looked for beyond the table: {got:?}"
    );
}

/// 600 ms round trips: every request of a lookup to a far node times out before its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_beyond_the_hard_timeout_are_asked_though_lookups_give_up_on_them() {
    far_holders_are_asked(Duration::from_millis(300)).await;
}

/// 200 ms round trips: far nodes answer lookups in time, but those outside the closest few are
/// not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_a_long_round_trip_away_are_asked_though_lookups_do_not_wait_for_them() {
    far_holders_are_asked(Duration::from_millis(100)).await;
}
