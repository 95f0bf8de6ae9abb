//! A sensor publishing readings through `kad-plugin-pubsub`.
//!
//! A sensor is an ed25519 key. Each reading is a BEP44 mutable item signed by it, with a `seq`
//! higher than the last; its value here is `{"t": SENT_UNIX_MS, "v": "21.37"}`, so subscribers
//! can measure the latency. The publisher sends each reading to the rendezvous nodes of the
//! topic (the k closest nodes to SHA-1(public key + salt)), which push it to subscribers.
//!
//! Run it with:
//!
//! ```sh
//! # alone: starts a small local network in this process (4 nodes on 127.0.0.1)
//! cargo run -p kad-examples --example sensor_publisher
//! # into a running network, e.g. the bootstrap_node example, and a subscriber on another shell
//! cargo run -p kad-examples --example sensor_publisher -- --bootstrap udp://127.0.0.1:4000 --readings 20
//! cargo run -p kad-examples --example sensor_subscriber -- --bootstrap udp://127.0.0.1:4000 --pubkey PUBKEY
//! ```
//!
//! Flags: `--bootstrap ADDR`, `--readings N` (default 5), `--every-ms MS` (default 300),
//! `--salt TEXT` (default `temperature`). The first line is `sensor PUBKEY salt=SALT` (the
//! public key in hex, what a subscriber needs), then one line per reading
//! (`published seq=1 value=21.00 stored_on=N`), then `ok: sensor_publisher published N readings`.

use std::time::Duration;

use anyhow::{Result, ensure};
use clap::Parser;
use kad::item::{MutableItem, bencode_bytes, public_key};
use kad::{NativeNode, PeerAddr, core::SystemClock};

#[derive(Parser)]
struct Args {
    /// A node of the network to join (default: start a local network here).
    #[arg(long, value_name = "ADDR")]
    bootstrap: Option<PeerAddr>,
    /// Readings to publish before exiting.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..))]
    readings: i64,
    /// Milliseconds between readings.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    every_ms: u64,
    /// The salt: one key can publish several channels.
    #[arg(long, default_value = "temperature")]
    salt: String,
}

/// A native node on 127.0.0.1 with pub/sub, joined through `seed` when given. A client asks,
/// but others do not add it to their tables or make it a rendezvous node.
async fn spawn_node(client: bool, seed: Option<PeerAddr>) -> Result<NativeNode> {
    let mut b = NativeNode::builder().udp("127.0.0.1:0").pubsub();
    if client {
        b = b.client();
    }
    Ok(b.bootstrap(seed).build().await?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();

    // Without --bootstrap, four full nodes in this process serve as the network.
    let mut local: Vec<NativeNode> = Vec::new();
    let seed = match args.bootstrap {
        Some(addr) => addr,
        None => {
            for _ in 0..4 {
                let first = local.first().map(NativeNode::addr);
                local.push(spawn_node(false, first).await?);
            }
            local[0].addr()
        }
    };
    let node = spawn_node(true, Some(seed)).await?;
    let pubsub = node.pubsub()?;

    // The sensor's key: fresh each run here; a real sensor keeps its seed in a file.
    let sensor: [u8; 32] = rand::random();
    println!(
        "sensor {} salt={}",
        hex::encode(public_key(&sensor)),
        args.salt
    );

    let mut ticker = tokio::time::interval(Duration::from_millis(args.every_ms));
    for seq in 1..=args.readings {
        ticker.tick().await;
        // A made-up temperature, and the send time for the subscriber's latency.
        let value = format!("{:.2}", 21.0 + 2.0 * (seq as f64 / 4.0).sin());
        let body = serde_json::json!({ "t": SystemClock::now_ms(), "v": value }).to_string();
        let reading = MutableItem::sign(
            &sensor,
            args.salt.as_bytes(),
            seq,
            &bencode_bytes(body.as_bytes()),
        )?;
        let out = pubsub.publish(reading.into()).await?;
        ensure!(out.stored_on > 0, "reading {seq} was stored nowhere");
        println!(
            "published seq={seq} value={value} stored_on={}",
            out.stored_on
        );
    }

    node.shutdown().await;
    for n in local {
        n.shutdown().await;
    }
    println!("ok: sensor_publisher published {} readings", args.readings);
    Ok(())
}
