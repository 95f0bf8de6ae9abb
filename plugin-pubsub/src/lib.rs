//! # kad-plugin-pubsub
//!
//! Publish/subscribe over kad-core's native network, for sensor readings and named topics.
//!
//! - **Sensors.** A sensor is an ed25519 key; each reading is a BEP44 mutable item signed by it
//!   with a higher `seq` (at most 1000 bytes). The topic key is the item's BEP44 target,
//!   SHA-1(public key ‖ salt), so the same readings can also live on Mainline.
//! - **Rendezvous.** A subscriber looks up the k closest nodes to the topic key
//!   (`pubsub.FIND`, which also returns the latest reading) and registers at all of them
//!   (`pubsub.SUBSCRIBE`, with an expiry it renews every third of it). The
//!   first [`fanout`](PubsubConfig::fanout) in the subscriber's own ranking of them push (the
//!   ranking differs per subscriber, spreading the load); the others hold the subscription as
//!   standbys and take over from pushers the publisher saw die.
//! - **Publishing.** A publisher sends each reading to the k closest nodes (`pubsub.PUBLISH`),
//!   remembering them between readings, so a reading reaches subscribers in two one-way hops.
//!   Each rendezvous node keeps the latest valid reading and pushes it (`pubsub.NOTIFY`) to its
//!   subscribers.
//! - **Subscribers verify everything**: signature, key, salt and a seq higher than the last one
//!   delivered. Each reading is delivered at most once and in increasing seq order, however
//!   many nodes push it (one overtaken by a newer reading is skipped, not delivered late).
//! - **Named topics** (key = RIPEMD-160(SHA-256("kad-topic:" ‖ name))): messages signed by the
//!   publisher's node key, with a TTL, deduplicated by the subscriber; rendezvous nodes hand the
//!   recent unexpired ones to new subscribers.
//! - **Bounded**: topics per node, subscribers per topic, subscriptions per subscriber, requests
//!   per sender per second, unanswered pushes; idle topics expire ([`PubsubConfig`]).
//! - **On Mainline**, peers know only BEP44: [`mainline::poll_sensor`] polls `get` with `seq`
//!   at an adaptive interval.
//!
//! The wire format is in PROTOCOL.md section 5.2.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kad_core::{Config, Dht, MemoryNetwork, NodeId, native::NativeIdentity};
//! use kad_plugin_bep44::item::{MutableItem, bencode_bytes, public_key};
//! use kad_plugin_pubsub::{Delivery, Pubsub, PubsubConfig, PubsubPlugin};
//!
//! // Three nodes on an in-memory network: two rendezvous nodes and a subscriber.
//! let net = MemoryNetwork::new();
//! let mut nodes = Vec::new();
//! for i in 1..=3u8 {
//!     let id = Arc::new(NativeIdentity::from_secret(&[i; 32])?);
//!     let plugin = PubsubPlugin::new(PubsubConfig::default(), Some(id.clone()));
//!     let builder = kad_core::Node::builder(Config::default())
//!         .id(id.id())
//!         .plugin(Box::new(plugin));
//!     nodes.push(Dht::spawn(builder, vec![Arc::new(net.transport(1024))])?);
//! }
//! for n in &nodes[1..] {
//!     n.bootstrap(vec![nodes[0].contact().addrs[0].clone()]).await?;
//! }
//! let sensor = [42u8; 32];
//! let subscriber = Pubsub::attach(nodes[2].clone()).await?;
//! let mut sub = subscriber.subscribe_sensor(public_key(&sensor), b"kitchen").await?;
//!
//! let publisher = Pubsub::attach(nodes[1].clone()).await?;
//! let reading = MutableItem::sign(&sensor, b"kitchen", 1, &bencode_bytes(b"21.5"))?;
//! let out = publisher.publish(reading.into()).await?;
//! assert!(out.stored_on >= 1);
//!
//! let Some(Delivery::Reading(r)) = sub.next().await else { panic!("no reading") };
//! assert_eq!((r.item.seq, r.item.value_text().as_str()), (1, "21.5"));
//! # Ok(()) }
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod client;
pub mod mainline;
mod plugin;
pub mod wire;

pub use client::{Delivery, Pubsub, PubsubError, Subscription};
pub use plugin::{
    MessageEvent, NAMESPACE, NOT_SUBSCRIBED, PublishOutcome, PubsubCommand, PubsubConfig,
    PubsubPlugin, PubsubStats, RATE_LIMITED, ReadingEvent, SEQ_NOT_NEWER, SubscribeOutcome,
};
pub use wire::{TopicKind, TopicMessage, WireItem, sensor_key, topic_key};
