//! `kad sim churn` as a user runs it: one JSON object, reproducible, clear errors.

mod common;

use common::kad;

const TINY: [&str; 15] = [
    "sim",
    "churn",
    "--nodes",
    "60",
    "--records",
    "10",
    "--owners",
    "3",
    "--hours",
    "2",
    "--sample-keys",
    "5",
    "--seed",
    "5",
    "--json",
];

#[test]
fn sim_churn_json_is_one_reproducible_object() {
    let (code, a, err) = kad(&TINY);
    assert_eq!(code, 0, "{err}");
    assert_eq!(a.trim().lines().count(), 1, "exactly one JSON line: {a}");
    let mut a: serde_json::Value = serde_json::from_str(&a).unwrap();
    for f in [
        "nodes",
        "records",
        "hours",
        "churn_per_hour",
        "replaced",
        "owners",
        "final_check",
        "retrievable_ok",
        "hourly",
        "growth_vs_hour1",
        "growth_second_half",
        "flat",
        "rss",
        "rss_end_over_hour1",
        "digest",
        "wall_s",
    ] {
        assert!(a.get(f).is_some(), "missing field {f}: {a}");
    }
    assert_eq!(a["replaced"], 2 * 18, "{a}");
    assert_eq!(a["final_check"]["gets"], 3 * 10, "{a}");
    assert_eq!(a["final_check"]["found"], 3 * 10, "{a}");
    assert_eq!(a["retrievable_ok"], true, "{a}");
    assert_eq!(
        a["hourly"].as_array().unwrap().len(),
        3,
        "hours 0, 1, 2: {a}"
    );
    assert_eq!(a["rss"].as_array().unwrap().len(), 3, "{a}");
    let (_, b, _) = kad(&TINY);
    let mut b: serde_json::Value = serde_json::from_str(&b).unwrap();
    for v in [&mut a, &mut b] {
        let o = v.as_object_mut().unwrap();
        for f in [
            "wall_s",
            "peak_rss_mb",
            "rss",
            "rss_end_over_hour1",
            "rss_per_live_node_end_over_hour1",
            "rss_per_live_node_end_over_mid",
        ] {
            o.remove(f);
        }
    }
    assert_eq!(a, b, "same arguments, same result");
}

#[test]
fn sim_churn_bad_arguments_name_the_flag_and_the_limit() {
    let (code, out, err) = kad(&["sim", "churn", "--churn-per-hour", "1.5", "--json"]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("--churn-per-hour = 1.5"),
        "{v}"
    );
    assert!(err.contains("between 0 and 1"), "{err}");
    let (code, _, err) = kad(&["sim", "churn", "--nodes", "100", "--owners", "95"]);
    assert_eq!(code, 2);
    assert!(err.contains("--owners = 95"), "{err}");
    assert!(err.contains("--nodes - 10 = 90"), "{err}");
    let (code, _, err) = kad(&["sim", "churn", "--records", "5", "--sample-keys", "6"]);
    assert_eq!(code, 2);
    assert!(err.contains("--sample-keys = 6"), "{err}");
    let (code, _, err) = kad(&["sim", "churn", "--hours", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--hours = 0 is out of range"), "{err}");
    let (code, help, _) = kad(&["sim", "churn", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--nodes",
        "--records",
        "--hours",
        "--churn-per-hour",
        "--owners",
        "--seed",
        "--json",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
}
