//! `kad node --data-dir` and `kad put --file` / `kad get --out` as a user runs them: node
//! processes on 127.0.0.1, killed with SIGKILL and restarted on the same directory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kad_core::{
    Config, Contact, Dht, MAX_NATIVE_VALUE, NativeCodec, NativeIdentity, Node, PeerAddr, Record,
    content_key,
};
use kad_plugin_storage::{FETCH, FetchParams, FetchReply};
use kad_transport_udp::UdpTransport;
use serde_json::Value;

mod common;
use common::{NodeProc, kad_json};

/// A read-only native client over UDP, joined through `seed`.
async fn client(seed: &str, secret: u8) -> Dht {
    let id = Arc::new(NativeIdentity::from_secret(&[secret; 32]).unwrap());
    let udp = Arc::new(
        UdpTransport::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap(),
    );
    let mut c = Config::default();
    c.read_only = true;
    c.max_value_len = MAX_NATIVE_VALUE;
    let b = Node::builder(c)
        .identity(id.clone())
        .codec(Box::new(NativeCodec::new(id)));
    let dht = Dht::spawn(b, vec![udp]).unwrap();
    dht.bootstrap(vec![seed.parse::<PeerAddr>().unwrap()])
        .await
        .unwrap();
    dht
}

/// The values `node` holds among `keys`, asked with `storage.FETCH` in batches.
async fn held(
    dht: &Dht,
    node: &Contact,
    keys: &[kad_core::Key],
) -> Vec<(kad_core::Key, bytes::Bytes)> {
    let mut out = Vec::new();
    for batch in keys.chunks(200) {
        let params = FetchParams {
            keys: batch.to_vec(),
            max_bytes: 40_000,
        };
        let mut asked = batch.to_vec();
        while !asked.is_empty() {
            let p = FetchParams {
                keys: asked.clone(),
                ..params.clone()
            };
            let r = dht
                .call(node.clone(), FETCH, serde_json::to_vec(&p).unwrap().into())
                .await
                .unwrap();
            let r: FetchReply = serde_json::from_slice(&r).unwrap();
            let answered: Vec<_> = r
                .values
                .iter()
                .map(|(k, _)| *k)
                .chain(r.missing.iter().copied())
                .collect();
            assert!(!answered.is_empty(), "a fetch answers at least one key");
            asked.retain(|k| !answered.contains(k));
            out.extend(r.values);
        }
    }
    out
}

/// `kad get --bootstrap BOOT KEY --out OUT [--share S]...`.
fn get_out(boot: &str, key: &str, out: &std::path::Path, shares: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "get",
        "--bootstrap",
        boot,
        key,
        "--out",
        out.to_str().unwrap(),
    ];
    for s in shares {
        args.extend(["--share", s]);
    }
    kad_json(&args)
}

fn contact_of(p: &NodeProc) -> Contact {
    Contact::new(p.id.parse().unwrap(), p.addr.parse::<PeerAddr>().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_stores_survive_kill_9_and_expiry_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut node = NodeProc::start(&["--data-dir", d]);
    assert_eq!(node.listening["store"]["loaded"], 0);
    let c = client(&node.addr, 7).await;

    // A record that expires in 2 s and one that lives an hour, stored before the crash.
    let short = Record::new(
        content_key(b"short-lived"),
        &b"short-lived"[..],
        Some(c.id()),
        kad_core::SystemClock::now_ms(),
        2_000,
    );
    let long = Record::new(
        content_key(b"long-lived"),
        &b"long-lived"[..],
        Some(c.id()),
        kad_core::SystemClock::now_ms(),
        3_600_000,
    );
    assert_eq!(c.put_record(short.clone()).await.unwrap().stored, 1);
    assert_eq!(c.put_record(long.clone()).await.unwrap().stored, 1);

    // Four writers stream records; the node is killed (SIGKILL) while they write. Every record
    // a STORE answer acknowledged is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let (c, stop) = (c.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let v = format!(
                    "writer {w} record {i} {}",
                    "x".repeat((i % 7 * 150) as usize)
                );
                i += 1;
                let r = Record::new(
                    content_key(v.as_bytes()),
                    v.into_bytes(),
                    Some(c.id()),
                    kad_core::SystemClock::now_ms(),
                    3_600_000,
                );
                let key = r.key;
                match tokio::time::timeout(Duration::from_secs(2), c.put_record(r)).await {
                    Ok(Ok(o)) if o.stored >= 1 => acked.push(key),
                    _ => {}
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    node.child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() >= 50,
        "the writers got going before the kill: {}",
        acked.len()
    );
    c.shutdown().await;

    // Past the short record's expiry, restart on the same directory (same key, same id).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let again = NodeProc::start(&["--data-dir", d]);
    assert_eq!(again.id, node.id, "the key lives in the data directory");
    let opened = &again.listening["store"];
    assert!(
        opened["loaded"].as_u64().unwrap() as usize > acked.len(),
        "{opened}"
    );
    assert_eq!(
        opened["expired"], 1,
        "the 2 s record expired while the node was down: {opened}"
    );
    assert_eq!(opened["corrupt"], 0, "{opened}");

    let c = client(&again.addr, 8).await;
    let got = held(&c, &contact_of(&again), &acked).await;
    let lost: Vec<_> = acked
        .iter()
        .filter(|k| !got.iter().any(|(g, _)| g == *k))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    for (k, v) in &got {
        assert_eq!(content_key(v), *k, "values are intact");
    }
    // The long record kept its wall-clock expiry; the short one is gone.
    let l = c.get(long.key).await.unwrap();
    assert_eq!(l.record.expires_at_ms, long.expires_at_ms);
    assert_eq!(l.record.published_at_ms, long.published_at_ms);
    assert!(c.get(short.key).await.is_err());
    c.shutdown().await;
}

#[test]
fn a_restarted_node_rejoins_through_the_contacts_it_saved() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut first = NodeProc::start(&["--data-dir", d, "--for", "4"]);
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut p = NodeProc::start(&["--bootstrap", &first.addr]);
        p.next_event("bootstrapped");
        others.push(p);
    }
    // Stopping at the end of --for, it saves its routing table.
    first.next_event("stopped");
    drop(first);
    // Restarted without --bootstrap, it rejoins through the saved contacts.
    let mut again = NodeProc::start(&["--data-dir", d]);
    let restored = again.listening["restored_contacts"].as_u64().unwrap();
    assert!(restored >= 3, "{}", again.listening);
    let b = again.next_event("bootstrapped");
    assert!(b["closest"].as_u64().unwrap() >= 3, "{b}");
}

#[test]
fn files_round_trip_through_node_processes_with_encryption_and_shares() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = vec![NodeProc::start_on(
        "udp://127.0.0.1:0,quic://127.0.0.1:0",
        &[],
    )];
    for _ in 0..5 {
        let mut p = NodeProc::start_on(
            "udp://127.0.0.1:0,quic://127.0.0.1:0",
            &["--bootstrap", nodes[0].addr_of("udp")],
        );
        p.next_event("bootstrapped");
        nodes.push(p);
    }
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let input = dir.path().join("input.bin");
    std::fs::write(&input, &data).unwrap();
    let inp = input.to_str().unwrap();
    let mut quic_key = String::new();
    for scheme in ["udp", "quic"] {
        let boot = nodes[1].addr_of(scheme);
        // Plain.
        let (code, put) = kad_json(&["put", "--bootstrap", boot, "--file", inp]);
        assert_eq!(code, 0, "{put}");
        let key = put["key"].as_str().unwrap();
        quic_key = key.to_owned();
        let expect_chunk = if scheme == "udp" {
            35 * 1024
        } else {
            756 * 1024
        };
        assert_eq!(put["chunk_size"], expect_chunk, "{scheme}: {put}");
        let out = dir.path().join(format!("plain-{scheme}.bin"));
        let (code, got) = get_out(nodes[4].addr_of(scheme), key, &out, &[]);
        assert_eq!(code, 0, "{got}");
        assert_eq!(std::fs::read(&out).unwrap(), data, "{scheme}");
        // The manifest is a record too: a plain get says it is a file.
        let (code, m) = kad_json(&["get", "--bootstrap", boot, key]);
        assert_eq!((code, &m["file_manifest"]), (0, &Value::Bool(true)), "{m}");

        // Encrypted: the capability decrypts.
        let (code, put) = kad_json(&["put", "--bootstrap", boot, "--file", inp, "--encrypt"]);
        assert_eq!(code, 0, "{put}");
        let cap = put["capability"].as_str().unwrap();
        assert!(cap.starts_with("kad:"), "{put}");
        let out = dir.path().join(format!("enc-{scheme}.bin"));
        let (code, got) = get_out(nodes[2].addr_of(scheme), cap, &out, &[]);
        assert_eq!(code, 0, "{got}");
        assert_eq!(std::fs::read(&out).unwrap(), data);
        // Without the secret: a clear error, nothing written.
        let key_only = &cap[4..44];
        let out = dir.path().join(format!("nokey-{scheme}.bin"));
        let (code, e) = get_out(boot, key_only, &out, &[]);
        assert_eq!(code, 2, "{e}");
        assert!(e["error"].as_str().unwrap().contains("encrypted"), "{e}");
        assert!(!out.exists());
    }

    // A reader joined over UDP gets the QUIC-sized chunks over QUIC: a file client opens QUIC
    // beside UDP and prefers it.
    let out = dir.path().join("udp-reader.bin");
    let (code, got) = get_out(nodes[4].addr_of("udp"), &quic_key, &out, &[]);
    assert_eq!(code, 0, "{got}");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // Made to ask over UDP, it is told the chunks are too large for it, not that they are
    // missing.
    let out = dir.path().join("udp-only-reader.bin");
    let (code, e) = kad_json(&[
        "get",
        "--bootstrap",
        nodes[4].addr_of("udp"),
        &quic_key,
        "--out",
        out.to_str().unwrap(),
        "--prefer",
        "udp",
    ]);
    assert_eq!(code, 2, "{e}");
    let why = e["error"].as_str().unwrap();
    assert!(
        why.contains("too large for the transport") && why.contains("message on udp"),
        "{e}"
    );
    // A holder asked over UDP for one such chunk answers that it is too large for UDP.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let dht = client(nodes[0].addr_of("udp"), 9).await;
        let key: kad_core::Key = quic_key.parse().unwrap();
        let manifest = kad_plugin_storage::get_manifest(&dht, key).await.unwrap();
        let index = kad_plugin_storage::fetch_one(&dht, manifest.index[0], "index")
            .await
            .unwrap();
        let chunk = kad_plugin_storage::parse_index_blob(&index).unwrap()[0];
        let p = FetchParams {
            keys: vec![chunk],
            max_bytes: 0,
        };
        let r = dht
            .call(
                contact_of(&nodes[4]),
                FETCH,
                serde_json::to_vec(&p).unwrap().into(),
            )
            .await;
        match r {
            Err(kad_core::DhtError::Query(kad_core::QueryError::Remote(e))) => {
                assert_eq!(e.code, kad_core::RpcError::TOO_LARGE, "{e}");
                assert!(e.message.contains("udp"), "{e}");
            }
            other => panic!("expected a TOO_LARGE answer, got {other:?}"),
        }
        // A library reader on UDP alone that says what its transport carries is told at once.
        let out = dir.path().join("udp-library-reader.bin");
        let opts = kad_plugin_storage::GetOptions {
            max_value_len: kad_core::max_native_value_for(kad_core::MAX_DATAGRAM),
            ..Default::default()
        };
        let r = kad_plugin_storage::get_file(&dht, key, None, &out, &opts, &|_, _| ()).await;
        match r {
            Err(e @ kad_plugin_storage::TransferError::ChunkTooLarge { .. }) => {
                let e = e.to_string();
                assert!(
                    e.contains("chunks are 774144 bytes") && e.contains("quic://"),
                    "{e}"
                );
            }
            other => panic!("expected ChunkTooLarge, got {other:?}"),
        }
        // One that does not say learns it from the holders' answers: the error names the
        // cause, not a missing holder.
        let opts = kad_plugin_storage::GetOptions::default();
        let r = kad_plugin_storage::get_file(&dht, key, None, &out, &opts, &|_, _| ()).await;
        match r {
            Err(e @ kad_plugin_storage::TransferError::AnswerTooLarge { .. }) => {
                assert!(e.to_string().contains("too large for the transport"), "{e}");
            }
            other => panic!("expected AnswerTooLarge, got {other:?}"),
        }
        dht.shutdown().await;
    });

    // Shares 2/3 over QUIC: two shares decrypt, one does not, a mistyped share is named.
    let boot = nodes[3].addr_of("quic");
    let (code, put) = kad_json(&["put", "--bootstrap", boot, "--file", inp, "--shares", "2/3"]);
    assert_eq!(code, 0, "{put}");
    assert!(put["capability"].is_null());
    let key = put["key"].as_str().unwrap();
    let shares: Vec<&str> = put["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(shares.len(), 3);
    let out = dir.path().join("shared.bin");
    let (code, got) = get_out(boot, key, &out, &[shares[2], shares[0]]);
    assert_eq!(code, 0, "{got}");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let (code, e) = get_out(boot, key, &out, &[shares[1]]);
    assert_eq!(code, 2, "{e}");
    assert!(e["error"].as_str().unwrap().contains("need 2"), "{e}");
    // A mistyped share fails its checksum, named by position.
    let mut typo = shares[1].to_owned();
    typo.replace_range(20..21, if &typo[20..21] == "a" { "b" } else { "a" });
    let (code, e) = get_out(boot, key, &out, &[shares[0], &typo]);
    assert_eq!(code, 2, "{e}");
    assert!(e["error"].as_str().unwrap().contains("--share #2"), "{e}");
    // A well-formed share of another file rebuilds a key that fails the file's key check.
    let (code, other) = kad_json(&["put", "--bootstrap", boot, "--file", inp, "--shares", "2/2"]);
    assert_eq!(code, 0, "{other}");
    let foreign = other["shares"][1].as_str().unwrap(); // x = 2, beside our x = 1
    let (code, e) = get_out(boot, key, &out, &[shares[0], foreign]);
    assert_eq!(code, 2, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("do not match this file"),
        "{e}"
    );
}

#[test]
fn a_full_node_and_a_forged_record_are_refused_with_the_reason() {
    let node = NodeProc::start(&["--max-records", "1"]);
    let id: kad_core::NodeId = node.id.parse().unwrap();
    let (code, put) = kad_json(&["put", "--bootstrap", &node.addr, "first"]);
    assert_eq!((code, put["stored"].as_u64()), (0, Some(1)), "{put}");
    // A record farther from the node's id than the one it holds cannot evict it.
    let held = content_key(b"first").distance(&id);
    let farther = (0..)
        .map(|i| format!("second {i}"))
        .find(|v| content_key(v.as_bytes()).distance(&id) > held)
        .unwrap();
    let (code, e) = kad_json(&["put", "--bootstrap", &node.addr, &farther]);
    assert_eq!(code, 2, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("store full: records limit of 1 reached"),
        "{e}"
    );
    // A value under a key that is not its hash.
    let (code, e) = kad_json(&[
        "put",
        "--bootstrap",
        &node.addr,
        "--key",
        &"ab".repeat(20),
        "forged",
    ]);
    assert_eq!(code, 2, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("not content-addressed"),
        "{e}"
    );
}

/// `kad get --bootstrap BOOT KEY --out OUT`, and whether it came back as `data`.
fn file_intact(boot: &str, key: &str, out: &std::path::Path, data: &[u8]) -> Result<(), Value> {
    let _ = std::fs::remove_file(out);
    let (code, got) = get_out(boot, key, out, &[]);
    match std::fs::read(out) {
        Ok(b) if code == 0 && b == data => Ok(()),
        _ => Err(got),
    }
}

#[test]
fn a_pinned_file_outlives_its_ttl_the_client_and_a_restart_of_the_pinning_node() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("pin-node");
    let d = data_dir.to_str().unwrap();
    let key_file = dir.path().join("client.key");
    let kf = key_file.to_str().unwrap();
    let (code, id) = kad_json(&["id", "--key-file", kf]);
    assert_eq!(code, 0, "{id}");
    let client_id = id["id"].as_str().unwrap().to_owned();
    assert_eq!(id["created"], true, "{id}");
    // The pinning node republishes every 2 s; the records live 10 s.
    let pin_args = [
        "--data-dir",
        d,
        "--pin-from",
        &client_id,
        "--republish-every",
        "2",
    ];
    let mut pin = NodeProc::start(&pin_args);
    let mut nodes = Vec::new();
    for _ in 0..4 {
        let mut p = NodeProc::start(&["--bootstrap", &pin.addr]);
        p.next_event("bootstrapped");
        nodes.push(p);
    }
    let files: Vec<Vec<u8>> = (0..2u32)
        .map(|f| {
            (0..300_000u32)
                .map(|i| (i.wrapping_add(f).wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect()
        })
        .collect();
    let paths: Vec<_> = (0..2)
        .map(|f| dir.path().join(format!("in{f}.bin")))
        .collect();
    for (p, data) in paths.iter().zip(&files) {
        std::fs::write(p, data).unwrap();
    }
    let boot = nodes[0].addr.clone();
    let ttl = "10";

    // One file pinned, one not; both live 10 s.
    let (code, put) = kad_json(&[
        "put",
        "--bootstrap",
        &boot,
        "--file",
        paths[0].to_str().unwrap(),
        "--ttl",
        ttl,
        "--pin-to",
        &pin.addr,
        "--key-file",
        kf,
    ]);
    assert_eq!(code, 0, "{put}");
    let records = put["chunks"].as_u64().unwrap() + put["index_blobs"].as_u64().unwrap() + 1;
    assert_eq!(put["pinned"].as_u64().unwrap(), records, "{put}");
    assert_eq!(put["pinned_by"].as_str().unwrap(), pin.id, "{put}");
    let pinned_key = put["key"].as_str().unwrap().to_owned();
    let (code, put) = kad_json(&[
        "put",
        "--bootstrap",
        &boot,
        "--file",
        paths[1].to_str().unwrap(),
        "--ttl",
        ttl,
    ]);
    assert_eq!(code, 0, "{put}");
    let unpinned_key = put["key"].as_str().unwrap().to_owned();
    // Another client's pin is refused, with the reason.
    let other = dir.path().join("other.key");
    let (code, e) = kad_json(&[
        "put",
        "--bootstrap",
        &boot,
        "not yours to pin",
        "--pin-to",
        &pin.addr,
        "--key-file",
        other.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("did not pin") && msg.contains("keeps records only for"),
        "{e}"
    );

    // Past the TTL: the pinned file is intact, the other is gone.
    std::thread::sleep(Duration::from_secs(12));
    let out = dir.path().join("out.bin");
    file_intact(nodes[1].addr.as_str(), &pinned_key, &out, &files[0])
        .unwrap_or_else(|e| panic!("the pinned file after its TTL: {e}"));
    let (code, e) = get_out(nodes[1].addr.as_str(), &unpinned_key, &out, &[]);
    assert_ne!(code, 0, "the file nobody pinned expired: {e}");

    // The pinning node is killed (SIGKILL) and restarted on its directory: it finds its pins.
    pin.child.kill().unwrap();
    pin.child.wait().unwrap();
    let mut args = pin_args.to_vec();
    args.extend(["--bootstrap", nodes[2].addr.as_str()]);
    let mut again = NodeProc::start(&args);
    assert_eq!(again.id, pin.id);
    assert_eq!(
        again.listening["store"]["own"].as_u64().unwrap(),
        records,
        "{}",
        again.listening
    );
    again.next_event("bootstrapped");
    // Longer than the copies republished before the kill live: what the others hold now, the
    // restarted node republished.
    std::thread::sleep(Duration::from_secs(11));
    again.child.kill().unwrap();
    again.child.wait().unwrap();
    file_intact(nodes[3].addr.as_str(), &pinned_key, &out, &files[0])
        .unwrap_or_else(|e| panic!("the pinned file, republished after the restart: {e}"));
}
