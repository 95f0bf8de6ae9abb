//! Lossy links with real processes: `kad bench loss` at 10% loss builds two network namespaces
//! joined by a veth pair, drops a tenth of the datagrams entering each (nftables, input hook),
//! runs 5 `kad node` processes (UDP and QUIC) in each, puts through the first namespace and gets
//! through the second. Every node must join, every put must reach most of the network and every
//! get must find its value.
//!
//! Needs root and iproute2 and nftables (`scripts/test` installs them); without them it fails.

mod common;

use common::kad;
use serde_json::Value;

#[test]
fn netns_at_10_percent_loss_every_node_joins_and_every_get_finds_its_value() {
    let (code, text, stderr) = kad(&[
        "bench",
        "loss",
        "--rates",
        "10",
        "--nodes-per-ns",
        "5",
        "--ops",
        "10",
        "--json",
    ]);
    assert!(
        code == 0,
        "kad bench loss failed (it needs root, iproute2 and nftables): {text}{stderr}"
    );
    let v: Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("bad output {text:?}: {e}"));
    let r = &v["runs"][0];
    assert_eq!(r["loss_pct"], 10, "{r}");
    assert_eq!(r["joined"], 10, "every node joins: {r}");
    assert_eq!(r["puts_ok"], 10, "{r}");
    assert!(
        r["stored_min"].as_u64().unwrap() >= 8,
        "each put reaches most nodes: {r}"
    );
    assert_eq!(r["found"], 10, "every get finds its value: {r}");
}
