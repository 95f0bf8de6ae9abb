//! The `kad` binary as a user runs it.

mod common;

use common::kad;

#[test]
fn sim_json_is_one_object_with_every_field_and_is_reproducible() {
    let args = [
        "sim",
        "--nodes",
        "300",
        "--lookups",
        "60",
        "--loss",
        "0.05",
        "--jitter-ms",
        "10",
        "--churn",
        "0.1",
        "--seed",
        "9",
        "--json",
    ];
    let (code, a, _) = kad(&args);
    assert_eq!(code, 0);
    assert_eq!(a.trim().lines().count(), 1, "exactly one JSON line: {a}");
    let mut a: serde_json::Value = serde_json::from_str(&a).unwrap();
    for f in [
        "nodes",
        "lookups",
        "k",
        "alpha",
        "seed",
        "success_rate",
        "hops_p50",
        "hops_p90",
        "hops_max",
        "rpcs_per_lookup_p50",
        "latency_ms_p50",
        "latency_ms_p90",
        "latency_ms_p99",
        "wall_s",
        "peak_rss_mb",
    ] {
        assert!(a.get(f).is_some(), "missing field {f}");
    }
    assert_eq!(a["nodes"], 300);
    assert!(a["success_rate"].as_f64().unwrap() > 0.9);
    let (_, b, _) = kad(&args);
    let mut b: serde_json::Value = serde_json::from_str(&b).unwrap();
    for v in [&mut a, &mut b] {
        let o = v.as_object_mut().unwrap();
        o.remove("wall_s");
        o.remove("peak_rss_mb");
    }
    assert_eq!(a, b, "same arguments, same result");
}

#[test]
fn bad_arguments_name_the_flag_and_the_limit() {
    let (code, out, err) = kad(&["sim", "--loss", "1.5", "--json"]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("--loss = 1.5"));
    assert!(err.contains("between 0 and 0.95"), "{err}");
    let (code, _, err) = kad(&["sim", "--nodes", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("--nodes = 1"), "{err}");
    let (code, _, err) = kad(&["sim", "--nodes", "10", "--log", "info,=="]);
    assert_eq!(code, 2);
    assert!(err.contains("--log \"info,==\" is not a level"), "{err}");
}

#[test]
fn log_flag_shows_node_and_query_spans() {
    let (code, out, err) = kad(&[
        "node",
        "--listen",
        "udp://127.0.0.1:0",
        "--for",
        "0.5",
        "--log",
        "kad_core=debug",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // Each line inside a node names it; each query line names its kind.
    let started = err
        .lines()
        .find(|l| l.contains("node started"))
        .unwrap_or_else(|| panic!("no 'node started' line in {err}"));
    assert!(
        started.contains("node") && started.contains("id"),
        "{started}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("query") && l.contains("kind") && l.contains("query done")),
        "{err}"
    );
}

#[test]
fn sim_table_output_is_readable() {
    let (code, out, _) = kad(&["sim", "--nodes", "200", "--lookups", "20"]);
    assert_eq!(code, 0);
    assert!(out.contains("success rate"), "{out}");
    assert!(out.contains("latency p50 / p90 / p99"), "{out}");
}

#[test]
fn soak_refuses_bad_settings_naming_the_flag_before_building_anything() {
    for (args, needle) in [
        (vec!["--pin-ttl", "5"], "--pin-ttl = 5 is out of range"),
        (vec!["--loss", "20"], "--loss = 20 is out of range"),
        (
            vec!["--nodes-per-site", "1"],
            "--nodes-per-site = 1 is out of range",
        ),
        (
            vec!["--minutes", "2", "--pin-ttl", "90"],
            "half the run (60 s)",
        ),
    ] {
        let mut all = vec!["soak", "--quick", "--json"];
        all.extend(args);
        let (code, out, err) = kad(&all);
        assert_eq!(code, 2, "{out} {err}");
        assert!(
            out.contains(needle) || err.contains(needle),
            "{needle}: {out} {err}"
        );
    }
}
