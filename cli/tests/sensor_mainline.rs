//! `kad sensor --mainline` on a loopback Mainline network of our `kad mainline server` processes
//! and `mainline` crate nodes, which know only BEP44: the publisher `put`s readings, the
//! subscriber polls `get` with `seq` at an adaptive interval.
#![allow(deprecated)] // the `mainline` crate's blocking API is marked deprecated in favour of async

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::Proc;
use kad_plugin_bep44::item;

fn our_server(bootstrap: Option<u16>) -> (Proc, u16) {
    let boot = bootstrap.map_or("none".into(), |p| format!("127.0.0.1:{p}"));
    let p = Proc::spawn(&[
        "mainline",
        "server",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--duration",
        "120",
        "--rate-limit",
        "0",
        "--bootstrap",
        &boot,
    ]);
    let v = p.next_where(Duration::from_secs(30), |v| v["event"] == "started");
    let port = v["port"].as_u64().unwrap() as u16;
    (p, port)
}

#[test]
fn a_subscriber_polls_every_reading_in_order_from_bep44_nodes() {
    let (first, boot) = our_server(None);
    let mut servers = vec![first];
    for _ in 0..5 {
        servers.push(our_server(Some(boot)).0);
    }
    // Nodes of another implementation store readings too.
    let crate_nodes: Vec<mainline::Dht> = (0..4)
        .map(|_| {
            mainline::Dht::builder()
                .server_mode()
                .bind_address(Ipv4Addr::LOCALHOST)
                .bootstrap(&[format!("127.0.0.1:{boot}")])
                .build()
                .unwrap()
        })
        .collect();
    for n in &crate_nodes {
        n.bootstrapped();
    }
    let boot = format!("127.0.0.1:{boot}");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sensor.key");
    let seed = [0x42u8; 32];
    std::fs::write(&key, hex::encode(seed)).unwrap();
    let pubkey = hex::encode(item::public_key(&seed));

    let sub = Proc::spawn(&[
        "sensor",
        "subscribe",
        "--mainline",
        "--bind",
        "127.0.0.1",
        "--bootstrap",
        &boot,
        "--pubkey",
        &pubkey,
        "--salt",
        "garden",
        "--count",
        "4",
        "--for",
        "90",
    ]);
    sub.next_where(Duration::from_secs(30), |v| v["event"] == "subscribed");
    // Readings 3 s apart: the subscriber's interval is back to 1 s after each change.
    let publisher = Proc::spawn(&[
        "sensor",
        "publish",
        "--mainline",
        "--bind",
        "127.0.0.1",
        "--bootstrap",
        &boot,
        "--key-file",
        key.to_str().unwrap(),
        "--salt",
        "garden",
        "--every",
        "3s",
        "--count",
        "4",
    ]);
    let mut published = Vec::new();
    for _ in 0..4 {
        let v = publisher.next_where(Duration::from_secs(30), |v| v["seq"].is_i64());
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["network"], "mainline");
        assert!(v["n"].as_u64().unwrap() >= 4, "{v}");
        published.push(v["seq"].as_i64().unwrap());
    }
    let lines = sub.rest(Duration::from_secs(30));
    let got: Vec<i64> = lines.iter().filter_map(|v| v["seq"].as_i64()).collect();
    assert_eq!(got, published, "{lines:?}");
    // Adaptive polling: far fewer polls than a fixed 1 s interval would make while quiet, and
    // never more than one a second.
    let polls: Vec<u64> = lines.iter().filter_map(|v| v["polls"].as_u64()).collect();
    let last = *polls.last().unwrap();
    assert!(last >= 4, "{polls:?}");
    assert!(
        last <= 20,
        "at most about one poll a second over ~12 s: {polls:?}"
    );
    for v in &lines {
        assert!(v["latency_ms"].as_f64().is_some(), "{v}");
    }
    drop(crate_nodes);
}
