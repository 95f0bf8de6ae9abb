//! [`Pubsub`]: typed async methods over a running [`Dht`] that has a [`PubsubPlugin`].
//!
//! [`PubsubPlugin`]: crate::PubsubPlugin

use bytes::Bytes;
use kad_core::{Dht, DhtError, Event, Key, PluginData};
use tokio::sync::broadcast;

use crate::plugin::{
    MessageEvent, NAMESPACE, PublishOutcome, PubsubCommand, PubsubStats, ReadingEvent,
    SubscribeOutcome,
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
    /// The node runs no [`PubsubPlugin`](crate::PubsubPlugin).
    #[error("the node runs no pubsub plugin: add kad_plugin_pubsub::PubsubPlugin when building it")]
    NoPlugin,
    /// The plugin answered a value of another type than the command's (a plugin of another
    /// version registered under the same namespace).
    #[error("the pubsub plugin answered a {got}, not a {expected}")]
    UnexpectedAnswer {
        /// The type the command answers.
        expected: &'static str,
        /// The type received.
        got: &'static str,
    },
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
/// Dropping it gives its hold on the topic back: when no other subscription of this node holds
/// the topic, the node unsubscribes (its rendezvous nodes are told). [`Pubsub::unsubscribe`]
/// stops the topic for every holder at once.
#[derive(Debug)]
pub struct Subscription {
    /// What the subscribe reported.
    pub outcome: SubscribeOutcome,
    topic: Key,
    events: broadcast::Receiver<Event>,
    lagged: u64,
    dht: Dht,
    released: bool,
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
                    data,
                    ..
                }) => {
                    if let Some(r) = data.downcast_ref::<ReadingEvent>() {
                        if r.topic == self.topic {
                            return Some(Delivery::Reading(r.clone()));
                        }
                    } else if let Some(m) = data.downcast_ref::<MessageEvent>() {
                        if m.message.topic == self.topic {
                            return Some(Delivery::Message(m.clone()));
                        }
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => self.lagged += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Gives this subscription's hold on the topic back and waits until the node has done so
    /// (dropping it does the same in the background).
    pub async fn close(mut self) -> Result<(), PubsubError> {
        self.released = true;
        let release = PubsubCommand::Release {
            topic: self.topic,
            holder: self.outcome.holder,
        };
        run::<()>(&self.dht, release).await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left: the node is gone with it
        };
        let dht = self.dht.clone();
        let release = PubsubCommand::Release {
            topic: self.topic,
            holder: self.outcome.holder,
        };
        // A node already shut down has nothing to release.
        rt.spawn(async move { drop(run::<()>(&dht, release).await) });
    }
}

async fn run<T: Clone + Send + Sync + 'static>(
    dht: &Dht,
    c: PubsubCommand,
) -> Result<T, PubsubError> {
    let out = dht.command(NAMESPACE, PluginData::new(c)).await;
    let out = match out {
        Err(DhtError::Command(kad_core::CommandError::NoPlugin(_))) => {
            return Err(PubsubError::NoPlugin);
        }
        other => other?,
    };
    out.downcast::<T>()
        .map(|v| T::clone(&v))
        .map_err(|other| PubsubError::UnexpectedAnswer {
            expected: std::any::type_name::<T>(),
            got: other.type_name(),
        })
}

/// Pub/sub on a running node: a cheap `Clone` handle, from [`Pubsub::attach`] (or the `kad`
/// crate's node builder with pub/sub on).
///
/// ```no_run
/// # async fn demo(dht: kad_core::Dht) -> Result<(), Box<dyn std::error::Error>> {
/// use kad_plugin_bep44::item::{MutableItem, bencode_bytes, public_key};
/// use kad_plugin_pubsub::{Delivery, Pubsub};
///
/// let pubsub = Pubsub::attach(dht).await?;
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
    /// The pub/sub handle of a node spawned with a [`PubsubPlugin`](crate::PubsubPlugin);
    /// [`PubsubError::NoPlugin`] when it has none.
    pub async fn attach(dht: Dht) -> Result<Self, PubsubError> {
        run::<PubsubStats>(&dht, PubsubCommand::Stats).await?;
        Ok(Self { dht })
    }

    /// The node.
    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    async fn run<T: Clone + Send + Sync + 'static>(
        &self,
        c: PubsubCommand,
    ) -> Result<T, PubsubError> {
        run(&self.dht, c).await
    }

    /// Subscribes to a topic: registers at the k closest nodes to its key (renewed in the
    /// background until [`unsubscribe`](Self::unsubscribe)) and delivers the latest reading at
    /// once when there is one.
    pub async fn subscribe(&self, kind: TopicKind) -> Result<Subscription, PubsubError> {
        self.subscribe_since(kind, None).await
    }

    /// Like [`subscribe`](Self::subscribe) for a subscriber that already had the readings up to
    /// seq `since` (say, before a restart): the rendezvous nodes first deliver the readings they
    /// kept after it ([`PubsubConfig::max_history`](crate::PubsubConfig::max_history)), oldest
    /// first, each once, then new ones as they come.
    pub async fn subscribe_since(
        &self,
        kind: TopicKind,
        since: Option<i64>,
    ) -> Result<Subscription, PubsubError> {
        let topic = kind.key();
        // Listen before asking, so the latest reading found by the lookup is not missed.
        let events = self.dht.events();
        let outcome = self.run(PubsubCommand::Subscribe { kind, since }).await?;
        Ok(Subscription {
            outcome,
            topic,
            events,
            lagged: 0,
            dht: self.dht.clone(),
            released: false,
        })
    }

    /// Subscribes to a sensor's readings (its ed25519 public key and salt).
    pub async fn subscribe_sensor(
        &self,
        pubkey: [u8; 32],
        salt: &[u8],
    ) -> Result<Subscription, PubsubError> {
        self.subscribe_sensor_since(pubkey, salt, None).await
    }

    /// Subscribes to a sensor's readings after seq `since` (see
    /// [`subscribe_since`](Self::subscribe_since)).
    pub async fn subscribe_sensor_since(
        &self,
        pubkey: [u8; 32],
        salt: &[u8],
        since: Option<i64>,
    ) -> Result<Subscription, PubsubError> {
        self.subscribe_since(
            TopicKind::Sensor {
                k: pubkey,
                salt: Bytes::copy_from_slice(salt),
            },
            since,
        )
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
        self.run(PubsubCommand::Unsubscribe { topic }).await
    }

    /// Publishes a signed reading to its topic's rendezvous nodes, which push it to every
    /// subscriber. Fails when no node accepted it (e.g. its seq is not newer).
    pub async fn publish(&self, item: WireItem) -> Result<PublishOutcome, PubsubError> {
        self.run(PubsubCommand::Publish { item }).await
    }

    /// Posts a message, signed with this node's key, to a named topic; it stays valid for
    /// `ttl` seconds.
    pub async fn post(
        &self,
        name: &str,
        data: &str,
        ttl: u32,
    ) -> Result<PublishOutcome, PubsubError> {
        self.run(PubsubCommand::Post {
            name: name.to_owned(),
            data: data.to_owned(),
            ttl,
        })
        .await
    }

    /// The plugin's counters.
    pub async fn stats(&self) -> Result<PubsubStats, PubsubError> {
        self.run(PubsubCommand::Stats).await
    }
}
