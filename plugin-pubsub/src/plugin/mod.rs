//! [`PubsubPlugin`]: the rendezvous, subscriber and publisher roles of `pubsub.*`.

mod limits;
mod publisher;
mod rendezvous;
mod subscriber;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kad_core::{
    Contact, Key, LookupStats, NodeId, Plugin, PluginCx, PluginData, PluginResponse, QueryError,
    QueryId, Reply, RequestId, RpcError, native::NativeIdentity,
};
use serde::{Deserialize, Serialize};

use crate::wire::{self, FindResult, PostParams, PublishParams, TopicKind, TopicMessage, WireItem};

pub use limits::PubsubConfig;

/// The plugin's namespace.
pub const NAMESPACE: &str = "pubsub";
/// Error code of a `NOTIFY` for a topic the receiver is not subscribed to (the rendezvous node
/// then forgets the subscription).
pub const NOT_SUBSCRIBED: i64 = -32010;
/// Error code of a request refused by the per-sender rate limit.
pub const RATE_LIMITED: i64 = -32011;
/// Error code of a reading whose seq is not newer than the one held.
pub const SEQ_NOT_NEWER: i64 = -32012;

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
    /// Pushed readings that came after a gap (the pusher held readings newer than our last):
    /// each made us ask that node for the readings it kept, to deliver them in order first.
    pub gaps: u64,
    /// Pushed readings and messages that failed verification, dropped.
    pub rejected: u64,
    /// Subscriptions this node holds at rendezvous nodes.
    pub my_subscriptions: usize,
}

/// A command for [`PubsubPlugin`], given through `Dht::command("pubsub", PluginData::new(command))`.
/// The [`Pubsub`](crate::Pubsub) handle builds these; each answers a [`PluginData`] holding the
/// type its variant names.
///
/// [`PluginData`]: kad_core::PluginData
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PubsubCommand {
    /// Subscribe to a sensor or a named topic; answers [`SubscribeOutcome`].
    Subscribe {
        /// What to subscribe to.
        kind: TopicKind,
        /// The seq of the last reading already had (a subscriber back after a restart): the
        /// rendezvous nodes first hand over the kept readings after it, oldest first. `None`:
        /// the latest reading only. Ignored when the subscription is already running.
        #[serde(default)]
        since: Option<i64>,
    },
    /// Forget a subscription, whoever holds it: its rendezvous nodes are told (`SUBSCRIBE`
    /// with ttl 0); one that misses it drops the subscription at its next push (answered
    /// -32010) or when it expires. Answers `()`.
    Unsubscribe {
        /// The topic key.
        topic: Key,
    },
    /// Give back one holder of a subscription (what dropping a
    /// [`Subscription`](crate::Subscription) does); the last holder out unsubscribes. Answers `()`.
    Release {
        /// The topic key.
        topic: Key,
        /// The holder, from [`SubscribeOutcome::holder`].
        holder: u64,
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

/// The answer to [`PubsubCommand::Subscribe`].
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
    /// Nodes asked to register it: the closest nodes to the topic that the lookup found.
    #[serde(default)]
    pub asked: usize,
    /// Of those, how many refused or did not answer.
    #[serde(default)]
    pub failed: usize,
    /// This subscriber's holder number: give it back with [`PubsubCommand::Release`].
    #[serde(default)]
    pub holder: u64,
}

/// The answer to [`PubsubCommand::Publish`] and [`PubsubCommand::Post`].
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
    /// The seq of the reading before `latest`, as its publisher said.
    latest_prev: Option<i64>,
    /// Readings before `latest`, oldest first, at most `max_history - 1` (seqs increasing).
    history: VecDeque<WireItem>,
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
            latest_prev: None,
            history: VecDeque::new(),
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
    /// The application's handles on this subscription (`PubsubCommand::Release` gives one back; the
    /// last one out unsubscribes).
    holders: BTreeSet<u64>,
    /// The holder of the running subscribe command (`cmd`).
    cmd_holder: u64,
    /// A request for missed readings is out (one at a time).
    catching_up: bool,
    /// While a subscribe given a seq to start after runs: the readings its answers (and pushes)
    /// bring, by seq, delivered together in order when the last answer is in. Rendezvous nodes
    /// can each lack readings another kept (one was down, or a store was lost), so no single
    /// answer is the whole history.
    gathering: Option<BTreeMap<i64, (WireItem, NodeId)>>,
}

/// What one reading kept in a topic's history counts against
/// [`PubsubConfig::max_history_bytes`]: its value and salt plus the fixed fields and overhead.
fn history_size(item: &WireItem) -> usize {
    item.v.len() + item.salt.len() + 256
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
    /// A renewal asking for the readings missed before a pushed one (see `receive_item`).
    CatchUp {
        topic: Key,
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
    /// A reading, and the seq of the one this node published before it.
    Item(WireItem, Option<i64>),
    Message(TopicMessage),
}

impl Payload {
    fn method(&self) -> &'static str {
        match self {
            Self::Item(..) => wire::PUBLISH,
            Self::Message(_) => wire::POST,
        }
    }

    fn params(&self, live: Option<Vec<NodeId>>) -> Bytes {
        match self {
            Self::Item(item, prev) => json(&PublishParams {
                item: item.clone(),
                live,
                prev: *prev,
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
    next_holder: u64,
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
    /// The seq of the last reading this node published, per topic (at most `max_topics`).
    published: BTreeMap<Key, i64>,
    /// Bytes of the readings kept in the topics' histories (see [`history_size`]).
    history_bytes: usize,
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
            next_holder: 1,
            pending: BTreeMap::new(),
            lookups: BTreeMap::new(),
            ops: BTreeMap::new(),
            next_op: 0,
            holders: BTreeMap::new(),
            published: BTreeMap::new(),
            history_bytes: 0,
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
            Some(Pending::CatchUp { topic }) => self.on_catch_up_response(cx, topic, response),
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
                    self.receive_item(cx, topic, item, r.prev, Some(from));
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

    fn on_command(&mut self, cx: &mut PluginCx<'_>, query: QueryId, input: PluginData) {
        match input.downcast_ref::<PubsubCommand>() {
            Some(c) => self.command(cx, query, c.clone()),
            None => cx.complete(
                query,
                Err(QueryError::Remote(RpcError::new(
                    RpcError::INVALID_PARAMS,
                    format!(
                        "pubsub command: expected a kad_plugin_pubsub::PubsubCommand, got {}",
                        input.type_name()
                    ),
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
