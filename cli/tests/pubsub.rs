//! Sensor pub/sub between `kad` processes over UDP on 127.0.0.1: one publisher, 20 subscriber
//! processes, rendezvous nodes killed with SIGKILL mid-stream, a late subscriber, named topics.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{KAD, Proc};
use kad_plugin_bep44::item;
use serde_json::Value;

fn distance(a: &str, b: &str) -> Vec<u8> {
    let a = hex::decode(a).unwrap();
    let b = hex::decode(b).unwrap();
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

#[test]
fn twenty_subscribers_get_every_reading_in_order_while_rendezvous_nodes_die() {
    let mut nodes = common::network(10);
    let boot = nodes[0].addr.clone();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("sensor.key");
    let seed = [0x5eu8; 32];
    std::fs::write(&key_file, hex::encode(seed)).unwrap();
    let pubkey = hex::encode(item::public_key(&seed));
    let target = item::mutable_target(&item::public_key(&seed), b"meter").to_hex();
    const N: usize = 30;
    let n = N.to_string();

    let subs: Vec<Proc> = (0..20)
        .map(|_| {
            Proc::spawn(&[
                "sensor",
                "subscribe",
                "--pubkey",
                &pubkey,
                "--salt",
                "meter",
                "--bootstrap",
                &boot,
                "--count",
                &n,
                "--for",
                "90",
            ])
        })
        .collect();
    for s in &subs {
        let v = s.next_where(Duration::from_secs(30), |v| v["event"] == "subscribed");
        assert!(v["rendezvous"].as_u64().unwrap() >= 5, "{v}");
        assert!(v["pushers"].as_u64().unwrap() >= 1, "{v}");
    }
    let publisher = Proc::spawn(&[
        "sensor",
        "publish",
        "--key-file",
        key_file.to_str().unwrap(),
        "--salt",
        "meter",
        "--every",
        "200ms",
        "--count",
        &n,
        "--bootstrap",
        &boot,
    ]);
    let mut published = Vec::new();
    for i in 0..N {
        let v = publisher.next_where(Duration::from_secs(30), |v| v["seq"].is_i64());
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["pubkey"], pubkey.as_str());
        assert_eq!(v["target"], target.as_str());
        assert_eq!(
            bs58::decode(v["pubkey_base58"].as_str().unwrap())
                .into_vec()
                .unwrap(),
            item::public_key(&seed)
        );
        assert!(v["n"].as_u64().unwrap() >= 5, "{v}");
        assert!(v["diff"].as_f64().unwrap() > 0.0, "{v}");
        published.push(v["seq"].as_i64().unwrap());
        if i == 8 {
            // Kill -9 the three nodes closest to the sensor's key: the pushers of everyone.
            let mut order: Vec<usize> = (0..nodes.len()).collect();
            order.sort_by_key(|&j| distance(&nodes[j].id, &target));
            let mut victims: Vec<usize> = order.into_iter().take(3).collect();
            victims.sort_unstable_by(|a, b| b.cmp(a));
            for j in victims {
                let mut dead = nodes.remove(j);
                dead.child.kill().unwrap();
                dead.child.wait().unwrap();
            }
        }
    }
    assert!(published.windows(2).all(|w| w[0] < w[1]));
    for (i, s) in subs.iter().enumerate() {
        let lines = s.rest(Duration::from_secs(30));
        let got: Vec<i64> = lines.iter().filter_map(|v| v["seq"].as_i64()).collect();
        assert_eq!(got, published, "subscriber {i}: {lines:?}");
        for v in &lines {
            assert!(v["latency_ms"].as_f64().is_some(), "{v}");
            assert!(v["value"].as_str().unwrap().parse::<f64>().is_ok(), "{v}");
        }
    }
    // A late subscriber gets the latest reading at once.
    let t0 = Instant::now();
    let late = Proc::spawn(&[
        "sensor",
        "subscribe",
        "--pubkey",
        &pubkey,
        "--salt",
        "meter",
        "--bootstrap",
        nodes[0].addr.as_str(),
        "--count",
        "1",
        "--for",
        "30",
    ]);
    let v = late.next_where(Duration::from_secs(30), |v| v["seq"].is_i64());
    assert_eq!(v["seq"].as_i64(), published.last().copied(), "{v}");
    assert!(t0.elapsed() < Duration::from_secs(15));
}

#[test]
fn named_topic_messages_reach_every_subscriber_once() {
    let nodes = common::network(5);
    let boot = nodes[0].addr.clone();
    let subs: Vec<Proc> = (0..3)
        .map(|_| {
            Proc::spawn(&[
                "pubsub",
                "subscribe",
                "alerts",
                "--bootstrap",
                &boot,
                "--count",
                "2",
                "--for",
                "60",
            ])
        })
        .collect();
    for s in &subs {
        s.next_where(Duration::from_secs(30), |v| v["event"] == "subscribed");
    }
    for msg in ["door open", "door closed"] {
        let out = Command::new(KAD)
            .args([
                "pubsub",
                "publish",
                "alerts",
                msg,
                "--bootstrap",
                &boot,
                "--json",
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        // Every rendezvous node the publisher found took it (a fresh client may find fewer
        // than all five).
        assert!(v["n"].as_u64().unwrap() >= 2, "{v}");
        assert_eq!(v["n"], v["asked"], "{v}");
    }
    for s in &subs {
        let lines = s.rest(Duration::from_secs(30));
        let mut got: Vec<&str> = lines.iter().filter_map(|v| v["data"].as_str()).collect();
        got.sort_unstable();
        assert_eq!(got, ["door closed", "door open"], "{lines:?}");
    }
}

#[test]
fn bad_sensor_input_names_the_field() {
    for (args, want) in [
        (
            vec![
                "sensor",
                "subscribe",
                "--pubkey",
                "xyz",
                "--bootstrap",
                "udp://127.0.0.1:9",
            ],
            "--pubkey",
        ),
        (
            vec![
                "sensor",
                "publish",
                "--key-file",
                "/nonexistent-dir/k",
                "--every",
                "0s",
                "--bootstrap",
                "udp://127.0.0.1:9",
            ],
            "--every",
        ),
        (
            vec![
                "sensor",
                "subscribe",
                "--pubkey",
                &"ab".repeat(32),
                "--salt",
                &"s".repeat(65),
                "--bootstrap",
                "udp://127.0.0.1:9",
            ],
            "--salt is 65 bytes, the limit is 64",
        ),
    ] {
        let (code, v) = common::kad_json(&args);
        assert_eq!(code, 2, "{args:?}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{args:?}: {v}");
    }
}
