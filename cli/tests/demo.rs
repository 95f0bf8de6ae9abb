//! `kad demo` (smaller than its defaults): every step runs for real on 127.0.0.1 and reports ok,
//! the readings all arrive, the file comes back identical, the BEP44 item is found.

mod common;

use std::process::Command;

use serde_json::Value;

#[test]
fn the_demo_runs_every_step_and_says_so() {
    let out = Command::new(common::KAD)
        .args([
            "demo",
            "--nodes",
            "12",
            "--mainline-nodes",
            "4",
            "--readings",
            "3",
        ])
        .args(["--subscribers", "3", "--file-mb", "0.3", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kad demo failed:\n{text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let summary = lines.last().unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    let steps: Vec<&str> = summary["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["ok"], true, "{s}");
            s["step"].as_str().unwrap()
        })
        .collect();
    assert_eq!(steps, ["network", "sensor", "file", "mainline"]);
    let readings: Vec<&Value> = lines.iter().filter(|l| l["step"] == "sensor").collect();
    assert_eq!(readings.len(), 3);
    assert!(readings.iter().all(|r| r["delivered"] == 3), "{readings:?}");
    let get = lines.iter().find(|l| l["step"] == "file_get").unwrap();
    assert_eq!(get["verified"], true);
    let ml = lines.iter().find(|l| l["step"] == "mainline").unwrap();
    assert_eq!(ml["found"], true);
    // Bad input: a clear error naming the flag and the limit.
    let out = Command::new(common::KAD)
        .args(["demo", "--nodes", "1", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--nodes = 1 is out of range"));
}

/// `kad demo --web`: while the sensor step runs, the live page's data endpoint holds the
/// readings the first subscriber received, with their latencies.
#[test]
fn the_demo_serves_the_live_sensor_page() {
    use std::io::{Read as _, Write as _};
    use std::time::Duration;

    let proc = common::Proc::spawn(&[
        "demo",
        "--nodes",
        "9",
        "--mainline-nodes",
        "3",
        "--subscribers",
        "2",
        "--file-mb",
        "0.1",
        "--readings",
        "6",
        "--interval-ms",
        "400",
        "--web",
        "127.0.0.1:0",
    ]);
    let web = proc.next_where(Duration::from_secs(60), |l| l["step"] == "web");
    let url = web["url"].as_str().unwrap().to_owned();
    // Wait for the second reading to be reported, then read the page's data.
    for _ in 0..2 {
        proc.next_where(Duration::from_secs(30), |l| l["step"] == "sensor");
    }
    let host = url
        .strip_prefix("http://")
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(&host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let page = get("/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("kad demo: temperature sensor"));
    let data = get("/readings");
    let body = data.split_once("\r\n\r\n").unwrap().1;
    let readings: Vec<Value> = serde_json::from_str(body).unwrap();
    assert!(readings.len() >= 2, "{body}");
    for r in &readings {
        let c: f64 = r["value"].as_str().unwrap().parse().unwrap();
        assert!((20.0..=22.0).contains(&c), "{r}");
        assert!(r["latency_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    let summary = proc.next_where(Duration::from_secs(60), |l| l.get("summary").is_some());
    assert_eq!(summary["ok"], true, "{summary}");
}
