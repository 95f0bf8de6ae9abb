//! Limits: the plugin's configuration (every bound a peer can push against) and the per-sender rate limit.

use std::time::{Duration, Instant};

use kad_core::NodeId;

use super::{Bucket, MAX_BUCKETS, PubsubPlugin};

/// Limits and timings of the plugin. Every bound a peer can push against is here.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PubsubConfig {
    /// Rendezvous nodes a subscriber asks to push (the others of the k closest hold the
    /// subscription as standbys and are promoted when a pusher fails).
    pub fanout: usize,
    /// How long a subscription asks to last; renewed every third of it.
    pub subscription_ttl: Duration,
    /// Longest subscription a rendezvous node accepts.
    pub max_subscription_ttl: Duration,
    /// Most topics a rendezvous node keeps.
    pub max_topics: usize,
    /// Most subscribers per topic.
    pub max_subscribers_per_topic: usize,
    /// Most topics one subscriber may hold at this node.
    pub max_subscriptions_per_subscriber: usize,
    /// A topic with no subscriber and no new reading or message for this long is forgotten.
    pub topic_idle: Duration,
    /// Requests (SUBSCRIBE, PUBLISH, POST) per second per sender, sustained.
    pub sender_rate: f64,
    /// Burst of requests per sender.
    pub sender_burst: f64,
    /// Recent messages kept per named topic (handed to new subscribers).
    pub max_recent_messages: usize,
    /// Pushes awaiting an answer, over all subscribers: keep it well below the engine's
    /// `max_in_flight` (4,096), whose overflow would read as unanswered pushes.
    pub max_pending_notifies: usize,
    /// Pushes awaiting an answer per subscriber; more are skipped (the subscriber is slow).
    pub max_notifies_in_flight: u16,
    /// Unanswered pushes in a row after which a subscriber is dropped.
    pub drop_after_failures: u8,
    /// How long a publisher reuses the rendezvous nodes it found before looking them up again.
    pub holder_cache: Duration,
    /// Message ids a subscriber remembers per named topic (deduplication).
    pub max_seen_messages: usize,
    /// Readings a rendezvous node keeps per sensor topic, newest last (0: the latest only). A
    /// subscriber that renews its subscription with the seq it last received gets the kept
    /// readings it missed, oldest first, before the latest.
    pub max_history: usize,
    /// Bytes of kept readings over all topics (each counts its value and salt plus 256): past
    /// it, a topic's new reading pushes out that topic's oldest kept ones.
    pub max_history_bytes: usize,
}

impl Default for PubsubConfig {
    fn default() -> Self {
        Self {
            fanout: 3,
            subscription_ttl: Duration::from_secs(60),
            max_subscription_ttl: Duration::from_secs(600),
            max_topics: 10_000,
            max_subscribers_per_topic: 4096,
            max_subscriptions_per_subscriber: 256,
            topic_idle: Duration::from_secs(30 * 60),
            sender_rate: 20.0,
            sender_burst: 100.0,
            max_recent_messages: 16,
            max_pending_notifies: 2048,
            max_notifies_in_flight: 16,
            drop_after_failures: 3,
            holder_cache: Duration::from_secs(30),
            max_seen_messages: 4096,
            max_history: 16,
            max_history_bytes: 16 << 20,
        }
    }
}

impl PubsubPlugin {
    pub(super) fn allow_sender(&mut self, now: Instant, sender: NodeId) -> bool {
        let (rate, burst) = (self.config.sender_rate, self.config.sender_burst);
        if !self.buckets.contains_key(&sender) && self.buckets.len() >= MAX_BUCKETS {
            self.stats.limited += 1;
            return false;
        }
        let b = self.buckets.entry(sender).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            self.stats.limited += 1;
            false
        }
    }
}
