//! `kad sim sybil` as a user runs it: one JSON object per run, reproducible, clear errors.

mod common;

use common::kad;

const TINY: [&str; 16] = [
    "sim",
    "sybil",
    "--nodes",
    "150",
    "--lookups",
    "40",
    "--records",
    "10",
    "--bootstrap-seeds",
    "1",
    "--defences",
    "none,subnet_limit",
    "--seed",
    "3",
    "--json",
    "--adversary-subnets=2",
];

#[test]
fn sim_sybil_json_reports_each_defence_reproducibly() {
    let (code, a, err) = kad(&TINY);
    assert_eq!(code, 0, "{err}");
    assert_eq!(a.trim().lines().count(), 1, "exactly one JSON line: {a}");
    let mut a: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(a["nodes"], 150);
    assert_eq!(a["adversaries"], 30);
    assert_eq!(a["adversary_subnets"], 2);
    let runs = a["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{a}");
    assert_eq!(runs[0]["defence"], "none");
    assert_eq!(runs[1]["defence"], "subnet_limit");
    for r in runs {
        for f in [
            "lookup_success",
            "get_success",
            "put_honest_holders_mean",
            "adversaries_in_tables",
            "honest_unknown",
            "rpcs_per_lookup_p50",
            "latency_ms_p50",
            "digest",
        ] {
            assert!(r.get(f).is_some(), "missing {f}: {r}");
        }
        assert_eq!(r["lookups"], 40);
        assert_eq!(r["gets"], 10);
    }
    // The limit stops Sybils from two /24s.
    assert_eq!(runs[1]["lookup_success"], 1.0, "{a}");
    assert_eq!(runs[1]["get_success"], 1.0, "{a}");
    let (_, b, _) = kad(&TINY);
    let mut b: serde_json::Value = serde_json::from_str(&b).unwrap();
    for v in [&mut a, &mut b] {
        v.as_object_mut().unwrap().remove("wall_s");
    }
    assert_eq!(a, b, "same arguments, same result");
}

#[test]
fn sim_sybil_bad_arguments_name_the_flag_and_the_limit() {
    let (code, out, err) = kad(&["sim", "sybil", "--adversaries", "0.95", "--json"]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("--adversaries = 0.95"),
        "{v}"
    );
    assert!(err.contains("between 0 and 0.9"), "{err}");
    let (code, _, err) = kad(&["sim", "sybil", "--defences", "none,moat"]);
    assert_eq!(code, 2);
    assert!(err.contains("\"moat\""), "{err}");
    assert!(err.contains("disjoint_paths"), "{err}");
    let (code, _, err) = kad(&["sim", "sybil", "--k", "3", "--paths", "4"]);
    assert_eq!(code, 2);
    assert!(err.contains("--paths = 4"), "{err}");
    let (code, _, err) = kad(&["sim", "sybil", "--paths", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("--paths = 1 is out of range"), "{err}");
    // The defences on a real node: the flags are checked before anything binds.
    let (code, _, err) = kad(&["node", "--disjoint-paths", "17"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--disjoint-paths = 17 is out of range: it must be between 1 and 16"),
        "{err}"
    );
    let (code, _, err) = kad(&["node", "--subnet-limit", "300"]);
    assert_eq!(code, 2);
    assert!(err.contains("--subnet-limit = 300"), "{err}");
    let (code, help, _) = kad(&["node", "--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("--subnet-limit") && help.contains("--disjoint-paths"));
    let (code, help, _) = kad(&["sim", "sybil", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--nodes",
        "--adversaries",
        "--adversary-subnets",
        "--bootstrap-seeds",
        "--paths",
        "--subnet-limit",
        "--defences",
        "--seed",
        "--json",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
}
