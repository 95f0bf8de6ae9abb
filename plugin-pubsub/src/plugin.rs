//! [`PubsubPlugin`]: the rendezvous, subscriber and publisher roles of `pubsub.*`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kad_core::{
    Contact, Key, LookupStats, NodeId, Plugin, PluginCx, PluginResponse, QueryError, QueryId,
    Reply, RequestId, RpcError, native::NativeIdentity,
};
use kad_plugin_bep44::item;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

use crate::wire::{
    self, FindParams, FindResult, NotifyParams, PostParams, PublishParams, PublishResult,
    SubscribeParams, SubscribeResult, TopicKind, TopicMessage, WireItem,
};

/// The plugin's namespace.
pub const NAMESPACE: &str = "pubsub";
/// Error code of a `NOTIFY` for a topic the receiver is not subscribed to (the rendezvous node
/// then forgets the subscription).
pub const NOT_SUBSCRIBED: i64 = -32010;
/// Error code of a request refused by the per-sender rate limit.
pub const RATE_LIMITED: i64 = -32011;
/// Error code of a reading whose seq is not newer than the one held.
pub const SEQ_NOT_NEWER: i64 = -32012;

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
        }
    }
}

/// Counters of one node, in every role.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PubsubStats {
    /// Topics held as a rendezvous node.
    pub topics: usize,
    /// Subscriptions held as a rendezvous node.
    pub subscriptions_held: usize,
    /// Readings and messages accepted as a rendezvous node.
    pub accepted: u64,
    /// Readings and messages refused (bad signature, stale seq, expired, wrong topic).
    pub refused: u64,
    /// Requests refused by a limit (rate, topics, subscribers).
    pub limited: u64,
    /// Requests whose params did not parse or break a size rule, answered with an error.
    pub malformed: u64,
    /// Pushes sent.
    pub notifies_sent: u64,
    /// Pushes that got no answer.
    pub notifies_failed: u64,
    /// Pushes skipped because the subscriber or the node had too many unanswered.
    pub notifies_skipped: u64,
    /// Subscribers dropped after unanswered pushes or on their request.
    pub subscribers_dropped: u64,
    /// Readings and messages delivered to this node's application.
    pub delivered: u64,
    /// Copies of already delivered readings and messages (from other pushers), dropped.
    pub duplicates: u64,
    /// Pushed readings and messages that failed verification, dropped.
    pub rejected: u64,
    /// Subscriptions this node holds at rendezvous nodes.
    pub my_subscriptions: usize,
}

/// A command for [`PubsubPlugin`], given through `Dht::command("pubsub", json)`. The
/// [`Pubsub`](crate::Pubsub) handle builds these.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Command {
    /// Subscribe to a sensor or a named topic; answers [`SubscribeOutcome`].
    Subscribe {
        /// What to subscribe to.
        kind: TopicKind,
    },
    /// Forget a subscription: its rendezvous nodes are told (`SUBSCRIBE` with ttl 0); one that
    /// misses it drops the subscription at its next push (answered -32010) or when it expires.
    Unsubscribe {
        /// The topic key.
        topic: Key,
    },
    /// Publish a signed reading; answers [`PublishOutcome`].
    Publish {
        /// The reading.
        item: WireItem,
    },
    /// Post a message to a named topic, signed with this node's key; answers [`PublishOutcome`].
    Post {
        /// The topic's name.
        name: String,
        /// The payload.
        data: String,
        /// Seconds the message stays valid.
        ttl: u32,
    },
    /// Answers [`PubsubStats`].
    Stats,
}

/// The answer to [`Command::Subscribe`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SubscribeOutcome {
    /// The topic key.
    pub topic: Key,
    /// Rendezvous nodes that registered the subscription.
    pub rendezvous: usize,
    /// Of those, how many push.
    pub pushers: usize,
    /// The latest reading's seq when one was found.
    pub latest_seq: Option<i64>,
}

/// The answer to [`Command::Publish`] and [`Command::Post`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PublishOutcome {
    /// The topic key.
    pub topic: Key,
    /// Rendezvous nodes that accepted it.
    pub stored_on: usize,
    /// Rendezvous nodes it was sent to.
    pub asked: usize,
    /// Nodes that did not answer.
    pub timeouts: usize,
    /// Subscribers the accepting nodes push to (summed over them).
    pub pushed: usize,
    /// Refusals, as `code message`.
    pub errors: Vec<String>,
    /// Whether the rendezvous nodes were looked up (false: reused from an earlier publish).
    pub lookup: bool,
}

/// Data of the `reading` event: a verified reading newer than every one delivered before.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReadingEvent {
    /// The topic key.
    pub topic: Key,
    /// The reading, verified.
    pub item: WireItem,
    /// Who delivered it (a rendezvous node).
    pub from: NodeId,
}

/// Data of the `message` event: a verified, unexpired message not delivered before.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MessageEvent {
    /// The topic's name.
    pub name: String,
    /// The message, verified.
    pub message: TopicMessage,
    /// The publisher's node id.
    pub publisher: NodeId,
}

struct Sub {
    contact: Contact,
    expires: Instant,
    push: bool,
    ranked: Vec<NodeId>,
    /// The newest reading pushed to it (a repair round never pushes it again).
    last_seq: Option<i64>,
    /// The last message pushed to it.
    last_message: Option<[u8; 20]>,
    failures: u8,
    in_flight: u16,
}

struct Topic {
    sensor: Option<([u8; 32], Bytes)>,
    latest: Option<WireItem>,
    recent: VecDeque<TopicMessage>,
    subs: BTreeMap<NodeId, Sub>,
    touched: Instant,
    /// The publisher's last view of the live rendezvous nodes.
    live: Option<BTreeSet<NodeId>>,
}

impl Topic {
    fn new(now: Instant) -> Self {
        Self {
            sensor: None,
            latest: None,
            recent: VecDeque::new(),
            subs: BTreeMap::new(),
            touched: now,
            live: None,
        }
    }
}

struct MySub {
    kind: TopicKind,
    last_seq: Option<i64>,
    seen: BTreeSet<[u8; 20]>,
    seen_order: VecDeque<([u8; 20], u64)>,
    candidates: Vec<Contact>,
    pushers: BTreeSet<NodeId>,
    registered: BTreeSet<NodeId>,
    failed: BTreeSet<NodeId>,
    outstanding: usize,
    cmd: Option<QueryId>,
    lookup: Option<QueryId>,
    renew_at: Instant,
}

/// What a push carries, to push it to each subscriber once.
#[derive(Clone, Copy)]
enum Pushed {
    Seq(i64),
    Message([u8; 20]),
}

enum Pending {
    /// A push; `again` holds the params for one resend after a timeout.
    Notify {
        topic: Key,
        sub: NodeId,
        again: Option<Bytes>,
    },
    Subscribe {
        topic: Key,
        holder: NodeId,
        push: bool,
    },
    Op {
        op: u64,
        holder: NodeId,
    },
    Ignore,
}

enum LookupFor {
    Subscribe(Key),
    Op(u64),
    Refresh(Key),
}

#[derive(Clone)]
enum Payload {
    Item(WireItem),
    Message(TopicMessage),
}

impl Payload {
    fn method(&self) -> &'static str {
        match self {
            Self::Item(_) => wire::PUBLISH,
            Self::Message(_) => wire::POST,
        }
    }

    fn params(&self, live: Option<Vec<NodeId>>) -> Bytes {
        match self {
            Self::Item(item) => json(&PublishParams {
                item: item.clone(),
                live,
            }),
            Self::Message(message) => json(&PostParams {
                message: message.clone(),
                live,
            }),
        }
    }
}

struct Op {
    cmd: QueryId,
    topic: Key,
    payload: Payload,
    outcome: PublishOutcome,
    outstanding: usize,
    first_error: Option<RpcError>,
    acked: Vec<Contact>,
    dead: Vec<NodeId>,
}

struct Holders {
    contacts: Vec<Contact>,
    at: Instant,
    /// Who accepted the last publish (sent with the next one).
    live: Option<Vec<NodeId>>,
    /// A background lookup should refresh `contacts`.
    refresh: bool,
    refreshing: bool,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The pub/sub plugin: register it on every node of the native network (rendezvous nodes and
/// subscribers alike); drive it with [`Pubsub`](crate::Pubsub) or `Dht::command`.
///
/// ```
/// use kad_core::{Config, Node, NodeId};
/// use kad_plugin_pubsub::{PubsubConfig, PubsubPlugin};
///
/// let node = Node::builder(Config::default())
///     .id(NodeId([7; 20]))
///     .plugin(Box::new(PubsubPlugin::new(PubsubConfig::default(), None)));
/// # let _ = node;
/// ```
pub struct PubsubPlugin {
    config: PubsubConfig,
    identity: Option<Arc<NativeIdentity>>,
    topics: BTreeMap<Key, Topic>,
    per_subscriber: BTreeMap<NodeId, usize>,
    mine: BTreeMap<Key, MySub>,
    pending: BTreeMap<RequestId, Pending>,
    lookups: BTreeMap<QueryId, LookupFor>,
    ops: BTreeMap<u64, Op>,
    next_op: u64,
    holders: BTreeMap<Key, Holders>,
    buckets: BTreeMap<NodeId, Bucket>,
    next_sweep: Option<Instant>,
    /// The address the request being handled came from (set by the request filter).
    observed: Option<(NodeId, kad_core::PeerAddr)>,
    /// Pushes awaiting an answer.
    notifies_pending: usize,
    stats: PubsubStats,
}

const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Bytes of recent messages (JSON, at worst) in one `SUBSCRIBE` answer.
const MAX_RECENT_BYTES: usize = 32 * 1024;
/// Longest `live` list a node takes (a rendezvous set with its extras is at most 1.5 k).
const MAX_LIVE: usize = 256;
const MAX_BUCKETS: usize = 100_000;
const MAX_HOLDER_CACHE: usize = 1024;
/// Retry delay of a subscription whose lookup found nobody.
const RETRY_EMPTY: Duration = Duration::from_secs(2);

/// Where to push to a subscriber: its advertised addresses on the host its request came from,
/// or that observed address itself when it advertises none there.
fn push_contact(from: &Contact, observed: Option<&(NodeId, kad_core::PeerAddr)>) -> Contact {
    let Some((id, seen)) = observed.filter(|(id, _)| *id == from.id) else {
        return from.clone();
    };
    let seen_ip = seen.socket_addr().map(|a| a.ip());
    let same_host: Vec<kad_core::PeerAddr> = from
        .addrs
        .iter()
        .filter(|a| a.socket_addr().map(|a| a.ip()) == seen_ip && seen_ip.is_some())
        .cloned()
        .collect();
    if same_host.is_empty() {
        Contact::new(*id, seen.clone())
    } else {
        Contact {
            id: *id,
            addrs: same_host.into(),
        }
    }
}

fn rpc_err(code: i64, msg: impl Into<String>) -> Reply {
    Reply::Error(RpcError::new(code, msg))
}

fn json<T: Serialize>(v: &T) -> Bytes {
    // Serializing our own plain structs cannot fail.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

impl PubsubPlugin {
    /// A plugin with `config`; `identity` signs the messages this node posts to named topics
    /// (without it, posting is refused; everything else works).
    pub fn new(config: PubsubConfig, identity: Option<Arc<NativeIdentity>>) -> Self {
        Self {
            config,
            identity,
            topics: BTreeMap::new(),
            per_subscriber: BTreeMap::new(),
            mine: BTreeMap::new(),
            pending: BTreeMap::new(),
            lookups: BTreeMap::new(),
            ops: BTreeMap::new(),
            next_op: 0,
            holders: BTreeMap::new(),
            buckets: BTreeMap::new(),
            next_sweep: None,
            observed: None,
            notifies_pending: 0,
            stats: PubsubStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> PubsubStats {
        let mut s = self.stats.clone();
        s.topics = self.topics.len();
        s.subscriptions_held = self.topics.values().map(|t| t.subs.len()).sum();
        s.my_subscriptions = self.mine.len();
        s
    }

    fn schedule_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_EVERY);
        }
    }

    // ---- rate limit ----

    fn allow_sender(&mut self, now: Instant, sender: NodeId) -> bool {
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

    // ---- rendezvous role ----

    /// The topic entry for `key`, created if there is room.
    fn topic_entry(&mut self, now: Instant, key: Key) -> Result<&mut Topic, Reply> {
        if !self.topics.contains_key(&key) && self.topics.len() >= self.config.max_topics {
            // Make room from an idle topic (no subscriber), the least recently touched.
            let victim = self
                .topics
                .iter()
                .filter(|(_, t)| t.subs.is_empty())
                .min_by_key(|(_, t)| t.touched)
                .map(|(k, _)| *k);
            match victim {
                Some(v) => {
                    self.topics.remove(&v);
                }
                None => {
                    self.stats.limited += 1;
                    return Err(rpc_err(
                        RpcError::STORE_FULL,
                        format!(
                            "this node holds {} topics, the limit is {}",
                            self.topics.len(),
                            self.config.max_topics
                        ),
                    ));
                }
            }
        }
        self.schedule_sweep(now);
        Ok(self.topics.entry(key).or_insert_with(|| Topic::new(now)))
    }

    fn on_find(&mut self, cx: &PluginCx<'_>, params: &Bytes) -> Reply {
        let p: FindParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.FIND: {e}")),
        };
        let mut r = FindResult::default();
        if let Some(t) = self.topics.get(&p.topic) {
            r.latest = t.latest.clone();
            r.subscribers = t.subs.len();
        }
        Reply::WithNodes(json(&r), cx.closest(&p.topic, cx.k()))
    }

    fn on_subscribe(&mut self, cx: &PluginCx<'_>, from: &Contact, params: &Bytes) -> Reply {
        let now = cx.now();
        let p: SubscribeParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => {
                return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.SUBSCRIBE: {e}"));
            }
        };
        if let Err(e) = p.kind.check() {
            return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.SUBSCRIBE: {e}"));
        }
        if p.kind.key() != p.topic {
            return rpc_err(
                RpcError::INVALID_PARAMS,
                "pubsub.SUBSCRIBE: topic is not the key of kind",
            );
        }
        if p.ranked.len() > 4 * cx.k().max(16) {
            return rpc_err(
                RpcError::INVALID_PARAMS,
                format!(
                    "pubsub.SUBSCRIBE: ranked has {} nodes, the limit is {}",
                    p.ranked.len(),
                    4 * cx.k().max(16)
                ),
            );
        }
        if p.ttl == 0 {
            self.remove_sub(&p.topic, &from.id);
            return Reply::Result(json(&SubscribeResult::default()));
        }
        let known = self
            .topics
            .get(&p.topic)
            .is_some_and(|t| t.subs.contains_key(&from.id));
        if !known {
            let held = self.per_subscriber.get(&from.id).copied().unwrap_or(0);
            if held >= self.config.max_subscriptions_per_subscriber {
                self.stats.limited += 1;
                return rpc_err(
                    RpcError::STORE_FULL,
                    format!(
                        "you hold {held} subscriptions here, the limit is {}",
                        self.config.max_subscriptions_per_subscriber
                    ),
                );
            }
        }
        let max_subs = self.config.max_subscribers_per_topic;
        let ttl = Duration::from_secs(u64::from(p.ttl)).min(self.config.max_subscription_ttl);
        let max_recent = self.config.max_recent_messages;
        let now_ms = cx.unix_ms();
        let contact = push_contact(from, self.observed.as_ref());
        let topic = match self.topic_entry(now, p.topic) {
            Ok(t) => t,
            Err(r) => return r,
        };
        match (&p.kind, &topic.sensor) {
            (TopicKind::Sensor { k, salt }, None) if topic.recent.is_empty() => {
                topic.sensor = Some((*k, salt.clone()));
            }
            (TopicKind::Sensor { .. }, Some(_)) => {}
            (TopicKind::Named { .. }, None) => {}
            _ => {
                return rpc_err(
                    RpcError::REJECTED,
                    "pubsub.SUBSCRIBE: the topic is of the other kind",
                );
            }
        }
        if !known && topic.subs.len() >= max_subs {
            self.stats.limited += 1;
            return rpc_err(
                RpcError::STORE_FULL,
                format!("the topic has {max_subs} subscribers, the limit"),
            );
        }
        let sub = topic.subs.entry(from.id).or_insert(Sub {
            contact: contact.clone(),
            expires: now,
            push: p.push,
            ranked: Vec::new(),
            failures: 0,
            in_flight: 0,
            last_seq: None,
            last_message: None,
        });
        // `failures` stays: only an answered push clears it, so a renewal cannot keep pushes
        // flowing to a host that never answers.
        sub.contact = contact;
        sub.expires = now + ttl;
        sub.push = p.push;
        sub.ranked = p.ranked;
        topic.touched = now;
        let mut r = SubscribeResult {
            ttl: ttl.as_secs() as u32,
            ..Default::default()
        };
        if let Some(l) = &topic.latest {
            if p.seq.is_none_or(|s| l.seq > s) {
                r.latest = Some(l.clone());
            }
        }
        let live: Vec<&TopicMessage> = topic
            .recent
            .iter()
            .filter(|m| m.expires_ms() > now_ms)
            .collect();
        // Newest first while the answer stays well inside one datagram.
        let mut budget = MAX_RECENT_BYTES;
        let mut recent: Vec<TopicMessage> = Vec::new();
        for m in live.into_iter().rev().take(max_recent) {
            let size = m.data.len() * 6 + 512; // JSON escaping at worst, plus the fields
            if size > budget {
                break;
            }
            budget -= size;
            recent.push(m.clone());
        }
        recent.reverse();
        r.recent = recent;
        if !known {
            *self.per_subscriber.entry(from.id).or_insert(0) += 1;
        }
        Reply::Result(json(&r))
    }

    fn remove_sub(&mut self, topic: &Key, sub: &NodeId) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        if t.subs.remove(sub).is_some() {
            self.stats.subscribers_dropped += 1;
            if let Some(n) = self.per_subscriber.get_mut(sub) {
                *n -= 1;
                if *n == 0 {
                    self.per_subscriber.remove(sub);
                }
            }
        }
    }

    fn on_publish(&mut self, cx: &mut PluginCx<'_>, params: &Bytes) -> Reply {
        let now = cx.now();
        let p: PublishParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => {
                return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.PUBLISH: {e}"));
            }
        };
        if let Err(e) = p.item.check() {
            self.stats.refused += 1;
            return rpc_err(RpcError::REJECTED, format!("pubsub.PUBLISH: {e}"));
        }
        let key = p.item.topic();
        if let Some(topic) = self.topics.get(&key) {
            if !topic.recent.is_empty() {
                self.stats.refused += 1;
                return rpc_err(RpcError::REJECTED, "pubsub.PUBLISH: a named topic");
            }
            if let Some(l) = &topic.latest {
                if l.seq == p.item.seq && l.sig == p.item.sig {
                    // The same reading again: a repair round with a new view of who is live.
                    let pushed = match p.live {
                        Some(live) => {
                            let seq = p.item.seq;
                            let notify = json(&NotifyParams {
                                topic: key,
                                item: Some(p.item),
                                message: None,
                            });
                            self.repair(cx, key, live, notify, Pushed::Seq(seq))
                        }
                        None => 0,
                    };
                    return Reply::Result(json(&PublishResult { pushed }));
                }
                if l.seq >= p.item.seq {
                    self.stats.refused += 1;
                    return rpc_err(
                        SEQ_NOT_NEWER,
                        format!("seq {} is not newer than {}", p.item.seq, l.seq),
                    );
                }
            }
        }
        let topic = match self.topic_entry(now, key) {
            Ok(t) => t,
            Err(r) => return r,
        };
        topic.sensor = Some((p.item.k, p.item.salt.clone()));
        topic.latest = Some(p.item.clone());
        topic.touched = now;
        if let Some(live) = p.live.filter(|l| l.len() <= MAX_LIVE) {
            topic.live = Some(live.into_iter().collect());
        }
        self.stats.accepted += 1;
        let seq = p.item.seq;
        let notify = json(&NotifyParams {
            topic: key,
            item: Some(p.item),
            message: None,
        });
        let pushed = self.push_all(cx, key, notify, Pushed::Seq(seq));
        Reply::Result(json(&PublishResult { pushed }))
    }

    fn on_post(&mut self, cx: &mut PluginCx<'_>, params: &Bytes) -> Reply {
        let now = cx.now();
        let now_ms = cx.unix_ms();
        let p: PostParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.POST: {e}")),
        };
        if let Err(e) = p.message.check(now_ms) {
            self.stats.refused += 1;
            return rpc_err(RpcError::REJECTED, format!("pubsub.POST: {e}"));
        }
        let max_recent = self.config.max_recent_messages;
        let key = p.message.topic;
        let id = p.message.id();
        if let Some(topic) = self.topics.get(&key) {
            if topic.sensor.is_some() {
                self.stats.refused += 1;
                return rpc_err(RpcError::REJECTED, "pubsub.POST: a sensor topic");
            }
            if topic.recent.iter().any(|m| m.id() == id) {
                let pushed = match p.live {
                    Some(live) => {
                        let notify = json(&NotifyParams {
                            topic: key,
                            item: None,
                            message: Some(p.message),
                        });
                        self.repair(cx, key, live, notify, Pushed::Message(id))
                    }
                    None => 0,
                };
                return Reply::Result(json(&PublishResult { pushed }));
            }
        }
        let topic = match self.topic_entry(now, key) {
            Ok(t) => t,
            Err(r) => return r,
        };
        topic.recent.retain(|m| m.expires_ms() > now_ms);
        topic.recent.push_back(p.message.clone());
        if let Some(live) = p.live.filter(|l| l.len() <= MAX_LIVE) {
            topic.live = Some(live.into_iter().collect());
        }
        while topic.recent.len() > max_recent {
            topic.recent.pop_front();
        }
        topic.touched = now;
        self.stats.accepted += 1;
        let notify = json(&NotifyParams {
            topic: key,
            item: None,
            message: Some(p.message),
        });
        let pushed = self.push_all(cx, key, notify, Pushed::Message(id));
        Reply::Result(json(&PublishResult { pushed }))
    }

    /// Whether this node (`me`) pushes to `sub` when `live` are the live rendezvous nodes: while
    /// fewer than `fanout` of the nodes the subscriber ranked above it are live.
    fn on_duty(sub: &Sub, me: &NodeId, live: Option<&BTreeSet<NodeId>>, fanout: usize) -> bool {
        match sub.ranked.iter().position(|id| id == me) {
            None => sub.push,
            Some(pos) => {
                let above = match live {
                    None => pos,
                    Some(l) => sub.ranked[..pos].iter().filter(|id| l.contains(id)).count(),
                };
                above < fanout
            }
        }
    }

    /// A repair round: with the publisher's new view `live`, pushes `notify` to the subscribers
    /// this node is now on duty for and has not pushed it to.
    fn repair(
        &mut self,
        cx: &mut PluginCx<'_>,
        key: Key,
        live: Vec<NodeId>,
        notify: Bytes,
        what: Pushed,
    ) -> usize {
        if live.len() > MAX_LIVE {
            return 0;
        }
        if let Some(topic) = self.topics.get_mut(&key) {
            topic.live = Some(live.into_iter().collect());
        }
        self.push_all(cx, key, notify, what)
    }

    /// Pushes `notify` to every live subscriber of `key` this node is on duty for.
    fn push_all(&mut self, cx: &mut PluginCx<'_>, key: Key, notify: Bytes, what: Pushed) -> usize {
        let me = cx.local().id;
        let fanout = self.config.fanout;
        let live = self.topics.get(&key).and_then(|t| t.live.clone());
        self.push_to(cx, key, notify, what, |_, s| {
            Self::on_duty(s, &me, live.as_ref(), fanout)
        })
    }

    fn push_to(
        &mut self,
        cx: &mut PluginCx<'_>,
        key: Key,
        notify: Bytes,
        what: Pushed,
        pick: impl Fn(&NodeId, &Sub) -> bool,
    ) -> usize {
        let now = cx.now();
        let max_in_flight = self.config.max_notifies_in_flight;
        let Some(topic) = self.topics.get_mut(&key) else {
            return 0;
        };
        let mut pushed = 0;
        for (id, sub) in topic.subs.iter_mut() {
            if sub.expires <= now || !pick(id, sub) {
                continue;
            }
            // Each reading or message goes to a subscriber once from this node, however many
            // repair rounds (which anyone can send) ask for it.
            let sent = match what {
                Pushed::Seq(seq) => sub.last_seq.is_some_and(|l| l >= seq),
                Pushed::Message(m) => sub.last_message == Some(m),
            };
            if sent {
                continue;
            }
            if sub.in_flight >= max_in_flight
                || self.notifies_pending >= self.config.max_pending_notifies
            {
                self.stats.notifies_skipped += 1;
                continue;
            }
            match what {
                Pushed::Seq(seq) => sub.last_seq = Some(seq),
                Pushed::Message(m) => sub.last_message = Some(m),
            }
            sub.in_flight += 1;
            self.notifies_pending += 1;
            let rid = cx.send_request(sub.contact.clone(), wire::NOTIFY, notify.clone());
            self.pending.insert(
                rid,
                Pending::Notify {
                    topic: key,
                    sub: *id,
                    again: Some(notify.clone()),
                },
            );
            self.stats.notifies_sent += 1;
            pushed += 1;
        }
        pushed
    }

    fn on_notify_response(
        &mut self,
        cx: &mut PluginCx<'_>,
        topic: Key,
        sub: NodeId,
        again: Option<Bytes>,
        r: &PluginResponse,
    ) {
        let drop_after = self.config.drop_after_failures;
        let s = self
            .topics
            .get_mut(&topic)
            .and_then(|t| t.subs.get_mut(&sub));
        let resend = matches!(r, PluginResponse::Timeout) && again.is_some() && s.is_some();
        if !resend {
            self.notifies_pending = self.notifies_pending.saturating_sub(1);
        }
        let Some(s) = s else {
            return;
        };
        if let (true, Some(params)) = (resend, again) {
            // One resend: a lost datagram should not cost a reading (the engine does not
            // retry plugin requests). Still in flight, so `in_flight` stays.
            let rid = cx.send_request(s.contact.clone(), wire::NOTIFY, params);
            self.pending.insert(
                rid,
                Pending::Notify {
                    topic,
                    sub,
                    again: None,
                },
            );
            self.stats.notifies_sent += 1;
            return;
        }
        s.in_flight = s.in_flight.saturating_sub(1);
        let remove = match r {
            PluginResponse::Ok { .. } => {
                s.failures = 0;
                false
            }
            PluginResponse::Remote(e) if e.code == NOT_SUBSCRIBED => true,
            _ => {
                self.stats.notifies_failed += 1;
                s.failures = s.failures.saturating_add(1);
                s.failures >= drop_after
            }
        };
        if remove {
            self.remove_sub(&topic, &sub);
        }
    }

    // ---- subscriber role ----

    fn on_notify(&mut self, cx: &mut PluginCx<'_>, from: &Contact, params: &Bytes) -> Reply {
        let p: NotifyParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.NOTIFY: {e}")),
        };
        if !self.mine.contains_key(&p.topic) {
            return rpc_err(NOT_SUBSCRIBED, "not subscribed");
        }
        if let Some(item) = p.item {
            self.deliver_item(cx, p.topic, item, from.id);
        }
        if let Some(m) = p.message {
            self.deliver_message(cx, p.topic, m);
        }
        Reply::Result(Bytes::from_static(b"{}"))
    }

    fn deliver_item(&mut self, cx: &mut PluginCx<'_>, topic: Key, item: WireItem, from: NodeId) {
        let Some(sub) = self.mine.get_mut(&topic) else {
            return;
        };
        let TopicKind::Sensor { k, salt } = &sub.kind else {
            self.stats.rejected += 1;
            return;
        };
        if item.k != *k || item.salt != *salt {
            self.stats.rejected += 1;
            return;
        }
        // A copy of what was delivered (other pushers) or older: dropped before the costlier
        // signature check; it could not be delivered either way.
        if sub.last_seq.is_some_and(|s| item.seq <= s) {
            self.stats.duplicates += 1;
            return;
        }
        if item.check().is_err() {
            self.stats.rejected += 1;
            return;
        }
        sub.last_seq = Some(item.seq);
        self.stats.delivered += 1;
        cx.emit("reading", json(&ReadingEvent { topic, item, from }));
    }

    fn deliver_message(&mut self, cx: &mut PluginCx<'_>, topic: Key, m: TopicMessage) {
        let now_ms = cx.unix_ms();
        let max_seen = self.config.max_seen_messages;
        let Some(sub) = self.mine.get_mut(&topic) else {
            return;
        };
        let TopicKind::Named { name } = &sub.kind else {
            self.stats.rejected += 1;
            return;
        };
        if m.topic != topic || m.check(now_ms).is_err() {
            self.stats.rejected += 1;
            return;
        }
        let id = m.id();
        if !sub.seen.insert(id) {
            self.stats.duplicates += 1;
            return;
        }
        sub.seen_order.push_back((id, m.expires_ms()));
        while sub.seen_order.len() > max_seen {
            if let Some((old, _)) = sub.seen_order.pop_front() {
                sub.seen.remove(&old);
            }
        }
        self.stats.delivered += 1;
        let ev = MessageEvent {
            name: name.clone(),
            publisher: m.publisher(),
            message: m,
        };
        cx.emit("message", json(&ev));
    }

    fn start_subscription_lookup(&mut self, cx: &mut PluginCx<'_>, topic: Key) {
        let q = cx.start_lookup(topic, wire::FIND, json(&FindParams { topic }));
        self.lookups.insert(q, LookupFor::Subscribe(topic));
        if let Some(s) = self.mine.get_mut(&topic) {
            s.lookup = Some(q);
            // No second renewal while this one runs.
            s.renew_at = cx.now() + self.config.subscription_ttl / 3;
        }
    }

    fn send_subscribe(&mut self, cx: &mut PluginCx<'_>, topic: Key, to: Contact, push: bool) {
        let ttl = self.config.subscription_ttl.as_secs().max(1) as u32;
        let Some(s) = self.mine.get_mut(&topic) else {
            return;
        };
        let params = SubscribeParams {
            topic,
            kind: s.kind.clone(),
            ttl,
            push,
            seq: s.last_seq,
            ranked: s.candidates.iter().map(|c| c.id).collect(),
        };
        s.outstanding += 1;
        if push {
            s.pushers.insert(to.id);
        }
        let holder = to.id;
        let rid = cx.send_request(to, wire::SUBSCRIBE, json(&params));
        self.pending.insert(
            rid,
            Pending::Subscribe {
                topic,
                holder,
                push,
            },
        );
    }

    fn subscription_found(&mut self, cx: &mut PluginCx<'_>, topic: Key, closest: &[Contact]) {
        let fanout = self.config.fanout;
        let Some(s) = self.mine.get_mut(&topic) else {
            return;
        };
        s.lookup = None;
        if closest.is_empty() {
            s.renew_at = cx.now() + RETRY_EMPTY;
            if let Some(cmd) = s.cmd.take() {
                // The subscribe failed: nothing is left running behind the caller's back
                // (a renewal that finds nobody keeps the subscription and tries again).
                if s.registered.is_empty() {
                    self.mine.remove(&topic);
                }
                cx.complete(cmd, Err(QueryError::NoPeers));
            }
            return;
        }
        // Renewals spread over 80-100% of a third of the ttl: subscribers that started together
        // do not all renew in the same instant (and trip the nodes' rate limits together).
        let jitter = 0.8 + 0.2 * (cx.rng().next_u32() as f64 / f64::from(u32::MAX));
        s.renew_at = cx.now() + (self.config.subscription_ttl / 3).mul_f64(jitter);
        // The subscriber's own order of the rendezvous nodes: by distance to a hash of the topic
        // and its id. The same for every renewal while the set holds (stable pushers), but
        // different for each subscriber, so the pushing is spread over the whole rendezvous set
        // instead of falling on its `fanout` closest nodes.
        let mix = NodeId(item::sha1(&[topic.0, cx.local().id.0].concat()));
        let mut ranked = closest.to_vec();
        ranked.sort_by_key(|c| c.id.distance(&mix));
        let old_pushers = std::mem::take(&mut s.pushers);
        // Old pushers no longer in the set stop pushing.
        let demoted: Vec<NodeId> = old_pushers
            .iter()
            .filter(|id| !ranked.iter().any(|c| c.id == **id))
            .copied()
            .collect();
        let old_candidates = std::mem::replace(&mut s.candidates, ranked.clone());
        s.registered.clear();
        s.failed.clear();
        for id in demoted {
            if let Some(c) = old_candidates.iter().find(|c| c.id == id) {
                self.send_subscribe(cx, topic, c.clone(), false);
            }
        }
        for (i, c) in ranked.into_iter().enumerate() {
            self.send_subscribe(cx, topic, c, i < fanout);
        }
    }

    fn on_subscribe_response(
        &mut self,
        cx: &mut PluginCx<'_>,
        topic: Key,
        holder: NodeId,
        push: bool,
        r: PluginResponse,
    ) {
        let Some(s) = self.mine.get_mut(&topic) else {
            return;
        };
        s.outstanding = s.outstanding.saturating_sub(1);
        let mut promote = false;
        match r {
            PluginResponse::Ok { result, from, .. } => {
                s.registered.insert(holder);
                if let Ok(res) = serde_json::from_slice::<SubscribeResult>(&result) {
                    // A node may grant less than asked: renew before its grant runs out.
                    if res.ttl > 0 {
                        let due = cx.now() + Duration::from_secs(u64::from(res.ttl)) / 3;
                        s.renew_at = s.renew_at.min(due);
                    }
                    if let Some(item) = res.latest {
                        self.deliver_item(cx, topic, item, from.id);
                    }
                    for m in res.recent {
                        self.deliver_message(cx, topic, m);
                    }
                }
            }
            _ => {
                s.failed.insert(holder);
                if push && s.pushers.remove(&holder) {
                    promote = true;
                }
            }
        }
        if promote {
            let Some(s) = self.mine.get(&topic) else {
                return;
            };
            let next = s
                .candidates
                .iter()
                .find(|c| !s.pushers.contains(&c.id) && !s.failed.contains(&c.id))
                .cloned();
            if let Some(c) = next {
                self.send_subscribe(cx, topic, c, true);
            }
        }
        let Some(s) = self.mine.get_mut(&topic) else {
            return;
        };
        if s.outstanding == 0 {
            if let Some(cmd) = s.cmd.take() {
                let out = SubscribeOutcome {
                    topic,
                    rendezvous: s.registered.len(),
                    pushers: s.pushers.intersection(&s.registered).count(),
                    latest_seq: s.last_seq,
                };
                if out.rendezvous == 0 {
                    self.mine.remove(&topic);
                    cx.complete(
                        cmd,
                        Err(QueryError::Remote(RpcError::new(
                            RpcError::REFUSED,
                            "no rendezvous node accepted the subscription",
                        ))),
                    );
                } else {
                    cx.complete(cmd, Ok(json(&out)));
                }
            }
        }
    }

    // ---- publisher role ----

    fn start_op(&mut self, cx: &mut PluginCx<'_>, cmd: QueryId, topic: Key, payload: Payload) {
        let op = self.next_op;
        self.next_op += 1;
        let mut o = Op {
            cmd,
            topic,
            payload,
            outcome: PublishOutcome {
                topic,
                ..Default::default()
            },
            outstanding: 0,
            first_error: None,
            acked: Vec::new(),
            dead: Vec::new(),
        };
        let now = cx.now();
        let cache = self.config.holder_cache;
        let cached = self.holders.get_mut(&topic).and_then(|h| {
            // An old or damaged set is still used (no reading waits for a lookup), and
            // refreshed in the background.
            if now >= h.at + cache {
                h.refresh = true;
            }
            let refresh = h.refresh && !h.refreshing;
            if refresh {
                h.refreshing = true;
            }
            (!h.contacts.is_empty()).then(|| (h.contacts.clone(), h.live.clone(), refresh))
        });
        match cached {
            Some((contacts, live, refresh)) => {
                // Only nodes this reading goes to count as live: a node left out (by a
                // refreshed lookup) does not push it, so standbys must.
                let live = live.map(|l| {
                    l.into_iter()
                        .filter(|id| contacts.iter().any(|c| c.id == *id))
                        .collect()
                });
                let params = o.payload.params(live);
                for c in contacts {
                    let holder = c.id;
                    let rid = cx.send_request(c, o.payload.method(), params.clone());
                    self.pending.insert(rid, Pending::Op { op, holder });
                    o.outstanding += 1;
                    o.outcome.asked += 1;
                }
                self.ops.insert(op, o);
                if refresh {
                    let q = cx.start_lookup(topic, wire::FIND, json(&FindParams { topic }));
                    self.lookups.insert(q, LookupFor::Refresh(topic));
                }
            }
            None => {
                o.outcome.lookup = true;
                let q = cx.start_lookup(topic, wire::FIND, json(&FindParams { topic }));
                self.lookups.insert(q, LookupFor::Op(op));
                self.ops.insert(op, o);
            }
        }
    }

    fn cache_holders(&mut self, now: Instant, topic: Key, closest: &[Contact]) {
        if self.holders.len() >= MAX_HOLDER_CACHE && !self.holders.contains_key(&topic) {
            let oldest = self
                .holders
                .iter()
                .min_by_key(|(_, h)| h.at)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.holders.remove(&k);
            }
        }
        let h = self.holders.entry(topic).or_insert(Holders {
            contacts: Vec::new(),
            at: now,
            live: None,
            refresh: false,
            refreshing: false,
        });
        // Nodes that accepted the last reading stay (up to k/2 of them beyond the lookup's
        // result): a lookup that missed a live rendezvous node, say for a lost answer, must not
        // silence it; the pushers it serves would otherwise wait for a repair.
        let keep: Vec<Contact> = h
            .contacts
            .iter()
            .filter(|c| !closest.iter().any(|n| n.id == c.id))
            .filter(|c| h.live.as_ref().is_some_and(|l| l.contains(&c.id)))
            .take(closest.len().div_ceil(2))
            .cloned()
            .collect();
        h.contacts = closest.to_vec();
        h.contacts.extend(keep);
        h.at = now;
        h.refresh = false;
        h.refreshing = false;
    }

    fn op_found(&mut self, cx: &mut PluginCx<'_>, op: u64, closest: &[Contact]) {
        let Some(topic) = self.ops.get(&op).map(|o| o.topic) else {
            return;
        };
        if closest.is_empty() {
            if let Some(o) = self.ops.remove(&op) {
                cx.complete(o.cmd, Err(QueryError::NoPeers));
            }
            return;
        }
        self.cache_holders(cx.now(), topic, closest);
        let Some(o) = self.ops.get_mut(&op) else {
            return;
        };
        let params = o.payload.params(None);
        for c in closest {
            let rid = cx.send_request(c.clone(), o.payload.method(), params.clone());
            self.pending.insert(rid, Pending::Op { op, holder: c.id });
            o.outstanding += 1;
            o.outcome.asked += 1;
        }
    }

    fn on_op_response(
        &mut self,
        cx: &mut PluginCx<'_>,
        op: u64,
        holder: NodeId,
        r: PluginResponse,
    ) {
        let Some(o) = self.ops.get_mut(&op) else {
            return;
        };
        o.outstanding -= 1;
        match r {
            PluginResponse::Ok { result, from, .. } => {
                o.outcome.stored_on += 1;
                o.acked.push(from);
                if let Ok(p) = serde_json::from_slice::<PublishResult>(&result) {
                    o.outcome.pushed += p.pushed;
                }
            }
            PluginResponse::Remote(e) => {
                o.outcome.errors.push(format!("{} {}", e.code, e.message));
                o.first_error.get_or_insert(e);
            }
            _ => {
                o.outcome.timeouts += 1;
                o.dead.push(holder);
            }
        }
        if o.outstanding > 0 {
            return;
        }
        let Some(o) = self.ops.remove(&op) else {
            return;
        };
        let live: Vec<NodeId> = o.acked.iter().map(|c| c.id).collect();
        if let Some(h) = self.holders.get_mut(&o.topic) {
            if !o.acked.is_empty() {
                h.live = Some(live.clone());
            }
            if !o.dead.is_empty() {
                // Forget the dead; look for their replacements in the background.
                h.contacts.retain(|c| !o.dead.contains(&c.id));
                h.refresh = true;
            }
        }
        if (o.acked.len() < o.outcome.asked || o.outcome.lookup) && !o.acked.is_empty() {
            // Repair round: the same reading, with who is live now, so standbys push it to
            // the subscribers of the dead pushers (and, after a lookup, of pushers the lookup
            // did not reach).
            let params = o.payload.params(Some(live));
            for c in &o.acked {
                let rid = cx.send_request(c.clone(), o.payload.method(), params.clone());
                self.pending.insert(rid, Pending::Ignore);
            }
        }
        let result = match (o.outcome.stored_on, o.first_error) {
            (0, Some(e)) => Err(QueryError::Remote(e)),
            (0, None) => Err(QueryError::Timeout),
            _ => Ok(json(&o.outcome)),
        };
        cx.complete(o.cmd, result);
    }

    fn command(&mut self, cx: &mut PluginCx<'_>, query: QueryId, c: Command) {
        let bad = |msg: String| {
            Err(QueryError::Remote(RpcError::new(
                RpcError::INVALID_PARAMS,
                msg,
            )))
        };
        match c {
            Command::Subscribe { kind } => {
                if let Err(e) = kind.check() {
                    return cx.complete(query, bad(e.to_owned()));
                }
                let topic = kind.key();
                let now = cx.now();
                let s = self.mine.entry(topic).or_insert_with(|| MySub {
                    kind,
                    last_seq: None,
                    seen: BTreeSet::new(),
                    seen_order: VecDeque::new(),
                    candidates: Vec::new(),
                    pushers: BTreeSet::new(),
                    registered: BTreeSet::new(),
                    failed: BTreeSet::new(),
                    outstanding: 0,
                    cmd: None,
                    lookup: None,
                    renew_at: now,
                });
                if let Some(old) = s.cmd.replace(query) {
                    cx.complete(
                        old,
                        Err(QueryError::Remote(RpcError::new(
                            RpcError::REFUSED,
                            "superseded by a new subscribe",
                        ))),
                    );
                }
                self.schedule_sweep(now);
                self.start_subscription_lookup(cx, topic);
            }
            Command::Unsubscribe { topic } => {
                if let Some(s) = self.mine.remove(&topic) {
                    if let Some(cmd) = s.cmd {
                        cx.complete(cmd, Err(QueryError::NotFound));
                    }
                    let params = json(&SubscribeParams {
                        topic,
                        kind: s.kind,
                        ttl: 0,
                        push: false,
                        seq: None,
                        ranked: Vec::new(),
                    });
                    for c in s.candidates {
                        // Fire and forget: holders that miss it drop us at the next push.
                        cx.send_request(c, wire::SUBSCRIBE, params.clone());
                    }
                }
                cx.complete(query, Ok(Bytes::from_static(b"{}")));
            }
            Command::Publish { item } => {
                if let Err(e) = item.check() {
                    return cx.complete(query, bad(format!("item: {e}")));
                }
                let topic = item.topic();
                self.start_op(cx, query, topic, Payload::Item(item));
            }
            Command::Post { name, data, ttl } => {
                let Some(identity) = self.identity.clone() else {
                    return cx.complete(
                        query,
                        bad("this node has no signing identity for posts".into()),
                    );
                };
                let kind = TopicKind::Named { name: name.clone() };
                if let Err(e) = kind.check() {
                    return cx.complete(query, bad(e.to_owned()));
                }
                if data.len() > wire::MAX_MESSAGE_DATA {
                    return cx.complete(
                        query,
                        bad(format!(
                            "data is {} bytes, the limit is {}",
                            data.len(),
                            wire::MAX_MESSAGE_DATA
                        )),
                    );
                }
                if ttl == 0 || ttl > wire::MAX_MESSAGE_TTL_S {
                    return cx.complete(
                        query,
                        bad(format!(
                            "ttl is {ttl} s, it must be 1..={}",
                            wire::MAX_MESSAGE_TTL_S
                        )),
                    );
                }
                let topic = kind.key();
                let nonce = cx.rng().next_u64();
                let m = TopicMessage::sign(&identity, &name, cx.unix_ms(), ttl, nonce, data);
                self.start_op(cx, query, topic, Payload::Message(m));
            }
            Command::Stats => cx.complete(query, Ok(json(&self.stats()))),
        }
    }

    fn sweep(&mut self, cx: &mut PluginCx<'_>) {
        let now = cx.now();
        let now_ms = cx.unix_ms();
        let idle = self.config.topic_idle;
        let mut dropped = Vec::new();
        for (key, t) in self.topics.iter_mut() {
            for (id, s) in &t.subs {
                if s.expires <= now {
                    dropped.push((*key, *id));
                }
            }
            t.recent.retain(|m| m.expires_ms() > now_ms);
        }
        for (key, id) in dropped {
            self.remove_sub(&key, &id);
        }
        self.topics
            .retain(|_, t| !t.subs.is_empty() || now < t.touched + idle);
        let burst = self.config.sender_burst;
        let rate = self.config.sender_rate.max(f64::MIN_POSITIVE);
        let full_after = Duration::from_secs_f64((burst / rate).min(3600.0));
        self.buckets.retain(|_, b| now < b.at + full_after);
        let cache = self.config.holder_cache;
        self.holders.retain(|_, h| now < h.at + cache * 4);
        for s in self.mine.values_mut() {
            while let Some((id, exp)) = s.seen_order.front().copied() {
                if exp > now_ms {
                    break;
                }
                s.seen_order.pop_front();
                s.seen.remove(&id);
            }
        }
        let busy = !self.topics.is_empty() || !self.mine.is_empty() || !self.buckets.is_empty();
        self.next_sweep = busy.then(|| now + SWEEP_EVERY);
    }
}

impl Plugin for PubsubPlugin {
    fn namespace(&self) -> &'static str {
        NAMESPACE
    }

    fn allow(
        &mut self,
        from: &kad_core::PeerAddr,
        sender: &Contact,
        _request: &kad_core::Request,
    ) -> bool {
        // Remembered for `on_subscribe`: pushes go to the host a subscription came from, never
        // to an address a subscriber merely claims (no reflection onto a third party).
        self.observed = Some((sender.id, from.clone()));
        true
    }

    fn on_request(
        &mut self,
        cx: &mut PluginCx<'_>,
        from: &Contact,
        method: &str,
        params: &Bytes,
    ) -> Reply {
        let limited = matches!(method, wire::SUBSCRIBE | wire::PUBLISH | wire::POST);
        if limited && !self.allow_sender(cx.now(), from.id) {
            self.schedule_sweep(cx.now());
            return rpc_err(RATE_LIMITED, "too many pubsub requests, slow down");
        }
        if limited {
            self.schedule_sweep(cx.now());
        }
        let reply = match method {
            wire::FIND => self.on_find(cx, params),
            wire::SUBSCRIBE => self.on_subscribe(cx, from, params),
            wire::PUBLISH => self.on_publish(cx, params),
            wire::POST => self.on_post(cx, params),
            wire::NOTIFY => self.on_notify(cx, from, params),
            other => rpc_err(
                RpcError::METHOD_NOT_FOUND,
                format!("method not found: {other}"),
            ),
        };
        if matches!(&reply, Reply::Error(e) if e.code == RpcError::INVALID_PARAMS) {
            self.stats.malformed += 1;
        }
        reply
    }

    fn on_response(&mut self, cx: &mut PluginCx<'_>, id: RequestId, response: PluginResponse) {
        match self.pending.remove(&id) {
            Some(Pending::Notify { topic, sub, again }) => {
                self.on_notify_response(cx, topic, sub, again, &response)
            }
            Some(Pending::Subscribe {
                topic,
                holder,
                push,
            }) => self.on_subscribe_response(cx, topic, holder, push, response),
            Some(Pending::Op { op, holder }) => self.on_op_response(cx, op, holder, response),
            Some(Pending::Ignore) | None => {}
        }
    }

    fn on_lookup_response(
        &mut self,
        cx: &mut PluginCx<'_>,
        query: QueryId,
        from: &Contact,
        result: &Bytes,
    ) {
        // A subscriber takes the latest reading from the lookup's answers at once.
        if let Some(LookupFor::Subscribe(topic)) = self.lookups.get(&query) {
            let topic = *topic;
            if let Ok(r) = serde_json::from_slice::<FindResult>(result) {
                if let Some(item) = r.latest {
                    self.deliver_item(cx, topic, item, from.id);
                }
            }
        }
    }

    fn on_lookup_done(
        &mut self,
        cx: &mut PluginCx<'_>,
        query: QueryId,
        closest: &[Contact],
        _stats: &LookupStats,
    ) {
        match self.lookups.remove(&query) {
            Some(LookupFor::Subscribe(topic)) => self.subscription_found(cx, topic, closest),
            Some(LookupFor::Op(op)) => self.op_found(cx, op, closest),
            Some(LookupFor::Refresh(topic)) => {
                if closest.is_empty() {
                    if let Some(h) = self.holders.get_mut(&topic) {
                        h.refreshing = false;
                    }
                } else {
                    self.cache_holders(cx.now(), topic, closest);
                }
            }
            None => {}
        }
    }

    fn on_command(&mut self, cx: &mut PluginCx<'_>, query: QueryId, input: Bytes) {
        match serde_json::from_slice::<Command>(&input) {
            Ok(c) => self.command(cx, query, c),
            Err(e) => cx.complete(
                query,
                Err(QueryError::Remote(RpcError::new(
                    RpcError::INVALID_PARAMS,
                    format!("pubsub command: {e}"),
                ))),
            ),
        }
    }

    fn on_timeout(&mut self, cx: &mut PluginCx<'_>) {
        let now = cx.now();
        if self.next_sweep.is_some_and(|t| t <= now) {
            self.sweep(cx);
        }
        let due: Vec<Key> = self
            .mine
            .iter()
            .filter(|(_, s)| s.renew_at <= now && s.lookup.is_none())
            .map(|(k, _)| *k)
            .collect();
        for topic in due {
            self.start_subscription_lookup(cx, topic);
        }
    }

    /// Pushes are sent again once by the plugin itself and a silent rendezvous is failed over to
    /// a standby at once: engine retransmissions would only delay both.
    fn retransmit_requests(&self) -> bool {
        false
    }

    fn next_timeout(&self) -> Option<Instant> {
        let renew = self
            .mine
            .values()
            .filter(|s| s.lookup.is_none())
            .map(|s| s.renew_at)
            .min();
        match (self.next_sweep, renew) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl std::fmt::Debug for PubsubPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubsubPlugin")
            .field("topics", &self.topics.len())
            .field("mine", &self.mine.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}
