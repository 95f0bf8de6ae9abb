//! [`Pubsub`]: typed async methods over a running [`Dht`] that has a [`PubsubPlugin`].
//!
//! [`PubsubPlugin`]: crate::PubsubPlugin

use bytes::Bytes;
use kad_core::{Dht, DhtError, Event, Key};
use tokio::sync::broadcast;

use crate::plugin::{
    Command, MessageEvent, NAMESPACE, PublishOutcome, PubsubStats, ReadingEvent, SubscribeOutcome,
};
use crate::wire::{TopicKind, WireItem};

/// Why a pub/sub call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PubsubError {
    /// The node refused or the operation failed (the message names the field and the limit for
    /// bad input).
    #[error(transparent)]
    Dht(#[from] DhtError),
    /// The plugin answered something this version cannot read.
    #[error("unreadable answer from the pubsub plugin: {0}")]
    Decode(String),
}

/// One delivery of a [`Subscription`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Delivery {
    /// A verified sensor reading, newer than every one before it.
    Reading(ReadingEvent),
    /// A verified message of a named topic, seen for the first time.
    Message(MessageEvent),
}

/// A live subscription: [`next`](Self::next) yields its deliveries in order.
///
/// Dropping it does not unsubscribe (other handles may share the topic); call
/// [`Pubsub::unsubscribe`].
#[derive(Debug)]
pub struct Subscription {
    /// What the subscribe reported.
    pub outcome: SubscribeOutcome,
    topic: Key,
    events: broadcast::Receiver<Event>,
    lagged: u64,
}

impl Subscription {
    /// The topic key.
    pub fn topic(&self) -> Key {
        self.topic
    }

    /// Events this handle missed because it read too slowly (the node's event channel holds
    /// 1024); the rendezvous nodes still hold the latest reading.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }

    /// The next delivery; `None` once the node has shut down.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            match self.events.recv().await {
                Ok(Event::Plugin {
                    namespace: NAMESPACE,
                    name,
                    data,
                }) => {
                    let d = match name.as_str() {
                        "reading" => serde_json::from_slice::<ReadingEvent>(&data)
                            .ok()
                            .filter(|r| r.topic == self.topic)
                            .map(Delivery::Reading),
                        "message" => serde_json::from_slice::<MessageEvent>(&data)
                            .ok()
                            .filter(|m| m.message.topic == self.topic)
                            .map(Delivery::Message),
                        _ => None,
                    };
                    if let Some(d) = d {
                        return Some(d);
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => self.lagged += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Pub/sub on a running node: a cheap `Clone` handle.
///
/// ```no_run
/// # async fn demo(dht: kad_core::Dht) -> Result<(), Box<dyn std::error::Error>> {
/// use kad_plugin_bep44::item::{MutableItem, bencode_bytes, public_key};
/// use kad_plugin_pubsub::{Delivery, Pubsub};
///
/// let pubsub = Pubsub::new(dht);
/// let seed = [7u8; 32];
/// let mut sub = pubsub.subscribe_sensor(public_key(&seed), b"").await?;
/// pubsub
///     .publish(MutableItem::sign(&seed, b"", 1, &bencode_bytes(b"21.5"))?.into())
///     .await?;
/// if let Some(Delivery::Reading(r)) = sub.next().await {
///     println!("seq {} = {}", r.item.seq, r.item.value_text());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Pubsub {
    dht: Dht,
}

impl Pubsub {
    /// Wraps a node that was spawned with a [`PubsubPlugin`](crate::PubsubPlugin).
    pub fn new(dht: Dht) -> Self {
        Self { dht }
    }

    /// The node.
    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    async fn run<T: serde::de::DeserializeOwned>(&self, c: &Command) -> Result<T, PubsubError> {
        let input =
            Bytes::from(serde_json::to_vec(c).map_err(|e| PubsubError::Decode(e.to_string()))?);
        let out = self.dht.command(NAMESPACE, input).await?;
        serde_json::from_slice(&out).map_err(|e| PubsubError::Decode(e.to_string()))
    }

    /// Subscribes to a topic: registers at the k closest nodes to its key (renewed in the
    /// background until [`unsubscribe`](Self::unsubscribe)) and delivers the latest reading at
    /// once when there is one.
    pub async fn subscribe(&self, kind: TopicKind) -> Result<Subscription, PubsubError> {
        let topic = kind.key();
        // Listen before asking, so the latest reading found by the lookup is not missed.
        let events = self.dht.events();
        let outcome = self.run(&Command::Subscribe { kind }).await?;
        Ok(Subscription {
            outcome,
            topic,
            events,
            lagged: 0,
        })
    }

    /// Subscribes to a sensor's readings (its ed25519 public key and salt).
    pub async fn subscribe_sensor(
        &self,
        pubkey: [u8; 32],
        salt: &[u8],
    ) -> Result<Subscription, PubsubError> {
        self.subscribe(TopicKind::Sensor {
            k: pubkey,
            salt: Bytes::copy_from_slice(salt),
        })
        .await
    }

    /// Subscribes to a named topic's messages.
    pub async fn subscribe_topic(&self, name: &str) -> Result<Subscription, PubsubError> {
        self.subscribe(TopicKind::Named {
            name: name.to_owned(),
        })
        .await
    }

    /// Stops renewing a subscription and tells its rendezvous nodes.
    pub async fn unsubscribe(&self, topic: Key) -> Result<(), PubsubError> {
        self.run::<serde_json::Value>(&Command::Unsubscribe { topic })
            .await
            .map(drop)
    }

    /// Publishes a signed reading to its topic's rendezvous nodes, which push it to every
    /// subscriber. Fails when no node accepted it (e.g. its seq is not newer).
    pub async fn publish(&self, item: WireItem) -> Result<PublishOutcome, PubsubError> {
        self.run(&Command::Publish { item }).await
    }

    /// Posts a message, signed with this node's key, to a named topic; it stays valid for
    /// `ttl` seconds.
    pub async fn post(
        &self,
        name: &str,
        data: &str,
        ttl: u32,
    ) -> Result<PublishOutcome, PubsubError> {
        self.run(&Command::Post {
            name: name.to_owned(),
            data: data.to_owned(),
            ttl,
        })
        .await
    }

    /// The plugin's counters.
    pub async fn stats(&self) -> Result<PubsubStats, PubsubError> {
        self.run(&Command::Stats).await
    }
}
