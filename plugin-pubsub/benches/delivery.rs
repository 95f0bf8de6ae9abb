//! What a reading costs between the plugin and its `Subscription`, per subscription: a typed
//! `PluginData` (wrapped once, downcast and cloned by the handle) against the JSON it replaced
//! (encoded by the plugin, decoded by the handle). Run with `cargo bench -p kad-plugin-pubsub`.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use kad_core::PluginData;
use kad_plugin_bep44::item::{MutableItem, bencode_bytes};
use kad_plugin_pubsub::{ReadingEvent, WireItem};

fn reading() -> ReadingEvent {
    // A reading as `kad sensor publish` sends it: {"t": SENT_MS, "v": VALUE}.
    let item: WireItem = MutableItem::sign(
        &[7; 32],
        b"temperature",
        42,
        &bencode_bytes(br#"{"t":1765000000000,"v":"21.53"}"#),
    )
    .unwrap()
    .into();
    let topic = item.topic();
    // ReadingEvent is built by the plugin only: make one from its JSON form.
    serde_json::from_value(serde_json::json!({
        "topic": topic,
        "item": item,
        "from": kad_core::NodeId::from_bytes([9; 20]),
    }))
    .unwrap()
}

fn delivery(c: &mut Criterion) {
    let ev = reading();
    let mut g = c.benchmark_group("pubsub delivery, plugin to handle");
    g.bench_function("typed PluginData", |b| {
        b.iter(|| {
            let data = PluginData::new(std::hint::black_box(&ev).clone());
            data.downcast_ref::<ReadingEvent>().cloned().unwrap()
        });
    });
    g.bench_function("JSON (before)", |b| {
        b.iter(|| {
            let bytes = serde_json::to_vec(std::hint::black_box(&ev)).unwrap();
            serde_json::from_slice::<ReadingEvent>(&bytes).unwrap()
        });
    });
    g.finish();
}

criterion_group!(benches, delivery);
criterion_main!(benches);
