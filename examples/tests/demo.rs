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
