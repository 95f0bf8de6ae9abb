//! A subscriber printing a sensor's readings as they arrive, with their latency.
//!
//! It subscribes to the sensor's topic (its public key and salt) through `kad-plugin-pubsub`:
//! the rendezvous nodes of the topic push every new reading, and the subscriber verifies each
//! (signature, key, salt, a higher `seq`) before it is delivered, once and in order.
//!
//! Run it with:
//!
//! ```sh
//! # alone: a local network of 4 nodes and a sensor publishing into it, all in this process
//! cargo run -p kad-examples --example sensor_subscriber
//! # a sensor in a running network (see sensor_publisher, which prints its PUBKEY)
//! cargo run -p kad-examples --example sensor_subscriber -- --bootstrap udp://127.0.0.1:4000 --pubkey PUBKEY --count 3
//! ```
//!
//! Flags: `--bootstrap ADDR`, `--pubkey HEX` (needed with `--bootstrap`), `--salt TEXT` (default
//! `temperature`), `--count N` (readings to print before exiting, default 5). It prints
//! `subscribed at N rendezvous node(s)`, one line per reading (`seq=3 value=21.99 latency=4ms`),
//! then `ok: sensor_subscriber received N readings`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use kad::item::{MutableItem, bencode_bytes, public_key};
use kad::{Delivery, NativeNode, PeerAddr, core::SystemClock};

#[derive(Parser)]
struct Args {
    /// A node of the network to join (default: start a local network and a sensor here).
    #[arg(long, value_name = "ADDR")]
    bootstrap: Option<PeerAddr>,
    /// The sensor's public key, 64 hex digits.
    #[arg(long, value_name = "HEX")]
    pubkey: Option<String>,
    /// The salt the sensor publishes under.
    #[arg(long, default_value = "temperature")]
    salt: String,
    /// Readings to print before exiting.
    #[arg(long, default_value_t = 5)]
    count: usize,
}

/// A native node on 127.0.0.1 with pub/sub, joined through `seed` when given (a client: never a
/// rendezvous node).
async fn spawn_node(client: bool, seed: Option<PeerAddr>) -> Result<NativeNode> {
    let mut b = NativeNode::builder().udp("127.0.0.1:0").pubsub();
    if client {
        b = b.client();
    }
    Ok(b.bootstrap(seed).build().await?)
}

/// The demo sensor of a standalone run: a reading every 200 ms from a client of the network.
async fn demo_sensor(seed: PeerAddr, sensor: [u8; 32], salt: String) -> Result<()> {
    let node = spawn_node(true, Some(seed)).await?;
    let pubsub = node.pubsub()?;
    for seq in 1.. {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let value = format!("{:.2}", 21.0 + 2.0 * (seq as f64 / 4.0).sin());
        let body = serde_json::json!({ "t": SystemClock::now_ms(), "v": value }).to_string();
        let item = MutableItem::sign(
            &sensor,
            salt.as_bytes(),
            seq,
            &bencode_bytes(body.as_bytes()),
        )?;
        pubsub.publish(item.into()).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut local: Vec<NativeNode> = Vec::new();
    let (seed, pubkey) = match (args.bootstrap, &args.pubkey) {
        (Some(addr), Some(hex_key)) => {
            let mut key = [0u8; 32];
            hex::decode_to_slice(hex_key, &mut key).context("--pubkey: expected 64 hex digits")?;
            (addr, key)
        }
        (Some(_), None) => bail!("--bootstrap needs --pubkey (sensor_publisher prints it)"),
        (None, Some(_)) => bail!("--pubkey needs --bootstrap: alone, it follows its own sensor"),
        (None, None) => {
            // Standalone: four full nodes, and a sensor of our own publishing into them.
            for _ in 0..4 {
                let first = local.first().map(NativeNode::addr);
                local.push(spawn_node(false, first).await?);
            }
            let seed = local[0].addr();
            let sensor: [u8; 32] = rand::random();
            let (to, salt) = (seed.clone(), args.salt.clone());
            tokio::spawn(async move {
                if let Err(e) = demo_sensor(to, sensor, salt).await {
                    eprintln!("demo sensor stopped: {e:#}");
                }
            });
            (seed, public_key(&sensor))
        }
    };

    let node = spawn_node(true, Some(seed)).await?;
    let mut sub = node
        .pubsub()?
        .subscribe_sensor(pubkey, args.salt.as_bytes())
        .await?;
    println!(
        "subscribed at {} rendezvous node(s)",
        sub.outcome.rendezvous
    );

    let mut received = 0;
    while received < args.count {
        // Deliveries come in seq order, each once; None means the node stopped.
        let Some(delivery) = sub.next().await else {
            bail!("the node stopped");
        };
        let Delivery::Reading(reading) = delivery else {
            continue; // named-topic messages: not ours
        };
        // sensor_publisher (like `kad sensor publish`) sends {"t": SENT_UNIX_MS, "v": VALUE};
        // a value in another format is printed as it is.
        let text = reading.item.value_text();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let value = json["v"].as_str().unwrap_or(&text);
        let latency = json["t"].as_u64().map_or("?".to_owned(), |sent| {
            format!("{}ms", SystemClock::now_ms().saturating_sub(sent))
        });
        println!("seq={} value={value} latency={latency}", reading.item.seq);
        received += 1;
    }

    // Closing the subscription tells the rendezvous nodes (dropping it does too).
    sub.close().await?;
    node.shutdown().await;
    for n in local {
        n.shutdown().await;
    }
    println!("ok: sensor_subscriber received {received} readings");
    Ok(())
}
