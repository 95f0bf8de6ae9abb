//! The live web page of `kad sensor subscribe --web`, checked in a headless Chromium.
//!
//! These tests need a Chromium (Debian's `chromium` package): without one they fail.

mod common;

use std::time::{Duration, Instant};

use common::chromium::{Browser, STEP};

/// Opens the live page at `url` (served by a subscriber's `--web`, with a publisher sending
/// numeric readings) in a headless Chromium and asserts that it goes live: it plots a first
/// reading within [`STEP`] (from `/readings` or `/events`), then within 10 s receives at least
/// 3 more through `/events`, plots more points, and its last sequence number increases.
///
/// It reads what the page exposes for tests on `document.body.dataset`: `points` (numeric
/// readings plotted since load), `live` (readings received through `/events` since load) and
/// `lastSeq` (the `seq` of the last reading).
fn assert_page_goes_live(url: &str) {
    let started = Instant::now();
    let browser = Browser::launch();
    let page = browser.open(url);
    let number = |name: &str| -> i64 {
        let v = page.body_data(name);
        v.as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("document.body.dataset.{name} is {v:?}, not a number"))
    };
    page.wait_for(
        "a first plotted reading",
        "Number(document.body.dataset.points) >= 1",
        STEP,
    );
    let (points, live, seq) = (number("points"), number("live"), number("lastSeq"));
    page.wait_for(
        "3 more readings through /events, plotted",
        &format!(
            "Number(document.body.dataset.live) >= {} && Number(document.body.dataset.points) > {}",
            live + 3,
            points
        ),
        Duration::from_secs(10),
    );
    let last = number("lastSeq");
    assert!(
        last > seq,
        "lastSeq did not increase: {seq} then {last} (points {points} then {}, live {live} then {})",
        number("points"),
        number("live")
    );
    eprintln!(
        "the page at {url} went live: points {points} -> {}, live {live} -> {}, lastSeq {seq} -> {last} \
         ({:.1} s with the browser launch)",
        number("points"),
        number("live"),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_live_chart_shows_readings_as_they_arrive() {
    let nodes = common::network(4);
    let boot = nodes[0].addr.clone();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sensor.key");
    let seed = [0x77u8; 32];
    std::fs::write(&key, hex::encode(seed)).unwrap();
    let pubkey = hex::encode(kad_plugin_bep44::item::public_key(&seed));
    let sub = common::Proc::spawn(&[
        "sensor",
        "subscribe",
        "--pubkey",
        &pubkey,
        "--bootstrap",
        &boot,
        "--web",
        "127.0.0.1:0",
        "--for",
        "90",
    ]);
    let web = sub.next_where(Duration::from_secs(30), |v| v["event"] == "web");
    let url = web["url"].as_str().unwrap().to_owned();
    sub.next_where(Duration::from_secs(30), |v| v["event"] == "subscribed");
    let _publisher = common::Proc::spawn(&[
        "sensor",
        "publish",
        "--key-file",
        key.to_str().unwrap(),
        "--every",
        "300ms",
        "--count",
        "200",
        "--bootstrap",
        &boot,
    ]);
    // The subscriber prints readings too: the page and the terminal see the same stream.
    sub.next_where(Duration::from_secs(30), |v| v["seq"].is_i64());
    assert_page_goes_live(&url);
}
