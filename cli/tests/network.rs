//! Many `kad node` processes on 127.0.0.1 forming a signed native network; `kad put`, `kad get`
//! and `kad lookup` run against it as separate processes, as a user would.

use std::process::Command;

use serde_json::Value;

mod common;
use common::{KAD, NodeProc, kad_json};

fn xor_hex(a: &str, b: &str) -> Vec<u8> {
    let a = hex::decode(a).unwrap();
    let b = hex::decode(b).unwrap();
    a.iter().zip(&b).map(|(x, y)| x ^ y).collect()
}

#[test]
fn twenty_four_node_processes_put_get_and_lookup() {
    const N: usize = 24;
    let mut nodes: Vec<NodeProc> = Vec::new();
    nodes.push(NodeProc::start(&[]));
    for i in 1..N {
        // Each joins through up to three earlier nodes.
        let seeds: Vec<&str> = [0, i / 2, i - 1]
            .iter()
            .map(|&j| nodes[j].addr.as_str())
            .collect();
        let list = seeds.join(",");
        let mut p = NodeProc::start(&["--bootstrap", &list]);
        p.next_event("bootstrapped");
        nodes.push(p);
    }

    // A put through node 3, a get through node 17: separate client processes. The key is the
    // value's content hash.
    let (code, put) = kad_json(&["put", "--bootstrap", &nodes[3].addr, "signed and stored"]);
    assert_eq!(code, 0, "{put}");
    let key = put["key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 40, "{put}");
    assert_eq!(put["content_addressed"], true);
    assert!(
        put["stored"].as_u64().unwrap() >= 18,
        "stored at (nearly) all k = 20 closest: {put}"
    );
    let key = key.as_str();
    let (code, got) = kad_json(&["get", "--bootstrap", &nodes[17].addr, key]);
    assert_eq!(code, 0, "{got}");
    assert_eq!(got["value"], "signed and stored");

    // The nodes take only content-addressed records: a named one is refused by every node.
    let (code, named) = kad_json(&[
        "put",
        "--bootstrap",
        &nodes[3].addr,
        "--key",
        "00112233445566778899aabbccddeeff00112233",
        "not its hash",
    ]);
    assert_eq!((code, &named["ok"]), (2, &Value::Bool(false)), "{named}");

    // A key nobody stored: not found, exit status 1.
    let (code, missing) = kad_json(&["get", "--bootstrap", &nodes[5].addr, &"ab".repeat(20)]);
    assert_eq!((code, &missing["ok"]), (1, &Value::Bool(false)));

    // A lookup through node 9 for node 12's id finds node 12 first, and exactly the 20 node
    // processes closest to it.
    let target = nodes[12].id.clone();
    let (code, found) = kad_json(&["lookup", "--bootstrap", &nodes[9].addr, &target]);
    assert_eq!(code, 0, "{found}");
    let got: Vec<String> = found["closest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got[0], target);
    let mut truth: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    truth.sort_by_key(|id| xor_hex(id, &target));
    truth.truncate(20);
    assert_eq!(got, truth, "the 20 closest, in order");

    // Ping one node by address.
    let (code, pong) = kad_json(&["ping", &nodes[20].addr]);
    assert_eq!(code, 0);
    assert_eq!(pong["id"].as_str(), Some(nodes[20].id.as_str()));
}

/// Leading zero bits of SHA-256(id): the work in an id (`kad_core::native::id_work`).
fn id_work(id_hex: &str) -> u32 {
    let id = kad_core::NodeId::from_bytes(hex::decode(id_hex).unwrap().try_into().unwrap());
    kad_core::native::id_work(&id)
}

/// The id cost on real processes: nodes with --id-work 8 get keys with 8 bits of work and find
/// each other; a client with the same --id-work looks them up, a client without it is ignored,
/// and a key file with too little work is refused, naming both numbers.
#[test]
fn id_work_admits_only_identities_with_enough_work() {
    let mut nodes: Vec<NodeProc> = vec![NodeProc::start(&["--id-work", "8"])];
    for i in 1..6 {
        let seed = nodes[i - 1].addr.clone();
        let mut p = NodeProc::start(&["--id-work", "8", "--bootstrap", &seed]);
        p.next_event("bootstrapped");
        nodes.push(p);
    }
    for n in &nodes {
        assert!(id_work(&n.id) >= 8, "node id {} has too little work", n.id);
    }
    let target = nodes[4].id.clone();
    let (code, found) = kad_json(&[
        "lookup",
        "--id-work",
        "8",
        "--bootstrap",
        &nodes[0].addr,
        &target,
    ]);
    assert_eq!(code, 0, "{found}");
    assert_eq!(found["closest"][0]["id"].as_str(), Some(target.as_str()));
    assert_eq!(
        found["closest"].as_array().unwrap().len(),
        6,
        "all six nodes: {found}"
    );
    // A key file whose id has less work than asked (a fresh key has 8 bits or more once in 256).
    let dir = std::env::temp_dir().join(format!("kad-idwork-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("weak.key");
    let weak = loop {
        let mut s = [0u8; 32];
        getrandom::fill(&mut s).unwrap();
        if let Ok(id) = kad_core::NativeIdentity::from_secret(&s) {
            if kad_core::native::id_work(&id.id()) < 8 {
                break s;
            }
        }
    };
    std::fs::write(&path, format!("{}\n", hex::encode(weak))).unwrap();
    // Without work the client's requests are dropped: nobody answers it.
    let key_file = path.to_str().unwrap();
    let (code, lost) = kad_json(&[
        "lookup",
        "--timeout",
        "3",
        "--key-file",
        key_file,
        "--bootstrap",
        &nodes[0].addr,
        &target,
    ]);
    assert_ne!(code, 0, "{lost}");
    assert_eq!(lost["ok"], false, "{lost}");
    let out = Command::new(KAD)
        .args([
            "node",
            "--listen",
            "udp://127.0.0.1:0",
            "--for",
            "1",
            "--id-work",
            "8",
        ])
        .arg("--key-file")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bits of work, less than --id-work = 8"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn key_file_is_created_private_and_reused() {
    let dir = std::env::temp_dir().join(format!("kad-key-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.key");
    let _ = std::fs::remove_file(&path);
    let p = path.to_str().unwrap();
    let id1 = NodeProc::start(&["--key-file", p]).id.clone();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let again = NodeProc::start(&["--key-file", p, "--advertise", "udp://127.0.0.1:1"]);
    let id2 = again.id.clone();
    // --advertise replaces the bound address in the node's contact.
    assert_eq!(again.addr, "udp://127.0.0.1:1");
    assert_eq!(id1, id2, "the same key gives the same id");
    // A corrupt key file is a clear error naming the flag.
    std::fs::write(&path, "not a key\n").unwrap();
    let out = Command::new(KAD)
        .args([
            "node",
            "--listen",
            "udp://127.0.0.1:0",
            "--key-file",
            p,
            "--for",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--key-file") && err.contains("64 hex digits"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_user_input_names_the_field_and_limit() {
    let big = "x".repeat(45_001);
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "put",
                "--bootstrap",
                "udp://127.0.0.1:9",
                "--key",
                "12",
                "v",
            ],
            "--key",
        ),
        (
            &[
                "put",
                "--bootstrap",
                "udp://127.0.0.1:9",
                "--key",
                &"ab".repeat(20),
                &big,
            ],
            "45000",
        ),
        (
            &["get", "--bootstrap", "tcp://127.0.0.1:9", &"ab".repeat(20)],
            "--bootstrap",
        ),
        (&["lookup", &"ab".repeat(20)], "--bootstrap"),
    ];
    for (args, needle) in cases {
        let (code, v) = kad_json(args);
        assert_eq!(code, 2, "{args:?}");
        assert_eq!(v["ok"], false);
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{args:?}: {v}"
        );
    }
}

/// Runs the Python peer (`native_peer.py`, written from PROTOCOL.md alone) with `args`.
fn python_peer(args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/native_peer.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 is needed for this test (and `pip install ecdsa`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python peer failed {args:?} (needs python3 with the ecdsa package and RIPEMD-160 \
         in hashlib; scripts/test installs them):\n{stdout}\n{stderr}"
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    v
}

/// An independent implementation of PROTOCOL.md (Python, `ecdsa` package) talks to a node, in
/// version 1 (every message signed) and in version 2 (signed first contact, then MACs both
/// ways), and reproduces the document's test vectors.
#[test]
fn a_python_peer_written_from_protocol_md_interoperates() {
    let node = NodeProc::start(&[]);
    let hostport = node.addr.trim_start_matches("udp://");
    let v1 = python_peer(&[hostport]);
    assert_eq!(v1["node_id"].as_str(), Some(node.id.as_str()));
    assert_eq!(v1["value_round_trip"], true);
    assert_eq!(v1["tampered_and_replay_unanswered"], true);
    // Two version 2 peers in a row: the second finds the first among the node's contacts, with
    // its key (the Python peer checks the key against the id).
    for round in 0..2 {
        let v2 = python_peer(&["--version", "2", hostport]);
        assert_eq!(v2["version"], 2);
        assert_eq!(v2["node_id"].as_str(), Some(node.id.as_str()));
        assert_eq!(v2["value_round_trip"], true);
        assert_eq!(v2["tampered_and_replay_unanswered"], true);
        assert_eq!(v2["answers_signed"], 0, "every answer MAC'd: {v2}");
        assert!(v2["answers_mac"].as_u64() >= Some(6), "{v2}");
        assert!(v2["requests_mac"].as_u64() >= Some(5), "{v2}");
        if round == 1 {
            assert!(v2["contacts_with_keys"].as_u64() >= Some(1), "{v2}");
            // A STORE asking for contacts names the first peer too.
            assert!(v2["store_named"].as_u64() >= Some(1), "{v2}");
        }
    }
    let vectors = concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md");
    let v = python_peer(&["--vectors", vectors]);
    assert!(v["vectors_checked"].as_u64() >= Some(7), "{v}");
}

/// A network of nodes speaking different transports: some UDP, QUIC and WebSocket at once,
/// some only one of them. Clients that speak only WebSocket, only UDP or only QUIC put and get
/// through it, reaching each other's values through the nodes that speak several.
#[test]
fn mixed_transport_network_bridges_websocket_udp_and_quic_only_peers() {
    let all = "udp://127.0.0.1:0,quic://127.0.0.1:0,ws://127.0.0.1:0/kad";
    // (listen, the scheme it joins through)
    let plan: [(&str, &str); 12] = [
        (all, ""),
        (all, "udp"),
        (all, "quic"),
        (all, "ws"),
        ("udp://127.0.0.1:0", "udp"),
        ("udp://127.0.0.1:0", "udp"),
        ("ws://127.0.0.1:0/kad", "ws"),
        ("ws://127.0.0.1:0/kad", "ws"),
        ("quic://127.0.0.1:0", "quic"),
        ("quic://127.0.0.1:0", "quic"),
        ("udp://127.0.0.1:0,ws://127.0.0.1:0/kad", "ws"),
        ("udp://127.0.0.1:0,ws://127.0.0.1:0/kad", "udp"),
    ];
    let mut nodes: Vec<NodeProc> = Vec::new();
    for (i, (listen, via)) in plan.iter().enumerate() {
        if i == 0 {
            nodes.push(NodeProc::start_on(listen, &[]));
            continue;
        }
        // Join through node 0 and node 1 (both speak everything), by the given transport.
        let seeds = format!(
            "{},{}",
            nodes[0].addr_of(via),
            nodes[(i > 1) as usize].addr_of(via)
        );
        eprintln!("node {i}: {listen} via {seeds}");
        let mut p = NodeProc::start_on(listen, &["--bootstrap", &seeds]);
        p.next_event("bootstrapped");
        nodes.push(p);
    }
    assert_eq!(nodes[6].addrs.len(), 1, "node 6 speaks only WebSocket");

    // A WebSocket-only client puts through a WebSocket-only node; the value lands on every node
    // it can reach (k = 20 > 12): the 4 that speak everything, the 2 WebSocket-only, the 2 UDP+WS.
    let (code, put) = kad_json(&[
        "put",
        "--bootstrap",
        nodes[6].addr_of("ws"),
        "from a websocket-only client",
    ]);
    assert_eq!(code, 0, "{put}");
    let key_ws = put["key"].as_str().unwrap().to_owned();
    let key_ws = key_ws.as_str();
    assert!(put["stored"].as_u64().unwrap() >= 7, "{put}");
    // A UDP-only client and a QUIC-only client get it through single-transport nodes.
    for (node, scheme) in [(4, "udp"), (9, "quic")] {
        let (code, got) = kad_json(&["get", "--bootstrap", nodes[node].addr_of(scheme), key_ws]);
        assert_eq!(code, 0, "{scheme}: {got}");
        assert_eq!(got["value"], "from a websocket-only client", "{scheme}");
    }

    // And back: a UDP-only client puts, a WebSocket-only client gets.
    let (code, put) = kad_json(&[
        "put",
        "--bootstrap",
        nodes[5].addr_of("udp"),
        "from a udp-only client",
    ]);
    assert_eq!(code, 0, "{put}");
    let key_udp = put["key"].as_str().unwrap().to_owned();
    let key_udp = key_udp.as_str();
    let (code, got) = kad_json(&["get", "--bootstrap", nodes[7].addr_of("ws"), key_udp]);
    assert_eq!(code, 0, "{got}");
    assert_eq!(got["value"], "from a udp-only client");

    // A client told to prefer QUIC pings a node that speaks everything over QUIC.
    let (code, pong) = kad_json(&["ping", nodes[2].addr_of("quic"), "--prefer", "quic,udp"]);
    assert_eq!((code, pong["id"].as_str()), (0, Some(nodes[2].id.as_str())));
}

/// A QUIC peer killed with -9 and restarted on its port with its key is reached again within
/// seconds, by a node whose connection to the old process went silent: the liveness timeout (3 s)
/// closes that connection and the next request dials the new process. The restarted node
/// contacts nobody itself, and the pings are too small to draw a stateless reset, so without
/// liveness the stale connection lasts until the 30 s idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_peer_killed_and_restarted_on_its_port_is_reached_again() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("b.key");
    let key = key.to_str().unwrap();
    let mut b = NodeProc::start_on("quic://127.0.0.1:0", &["--key-file", key]);
    let b_addr = b.addr.clone();
    let a = kad::NativeNode::builder()
        .quic("127.0.0.1:0")
        .bootstrap([b_addr.as_str()])
        .build()
        .await
        .unwrap();
    let at: kad::PeerAddr = b_addr.parse().unwrap();
    let first = a.dht().ping(at.clone()).await.unwrap();
    assert_eq!(first.contact.id.to_string(), b.id);

    // kill -9 (the process closes nothing), then the same key on the same port, no bootstrap.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let again = NodeProc::start_on(&b_addr, &["--key-file", key]);
    assert_eq!(again.id, b.id);
    let t0 = Instant::now();
    let mut reached = None;
    while t0.elapsed() < Duration::from_secs(25) {
        if let Ok(p) = a.dht().ping(at.clone()).await {
            reached = Some((t0.elapsed(), p));
            break;
        }
        // A ping refused at once (a dial backing off) must not spin.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quic = a.transports().quic()[0].stats();
    let (after, p) = reached.unwrap_or_else(|| panic!("not reached within 25 s: {quic:?}"));
    assert_eq!(p.contact.id.to_string(), again.id);
    assert!(quic.dead_peers >= 1, "{quic:?}");
    assert!(
        after < Duration::from_secs(15),
        "reached after {after:?}, as if only the idle timeout ended the connection: {quic:?}"
    );
    a.shutdown().await;
}
