//! The sans-IO engine: [`Node`], its inputs, outputs, events and commands.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;
use tracing::{debug, trace};

use crate::addr::{Contact, PeerAddr};
use crate::codec::{Codec, CodecCx, DecodeError, EncodeError, Identity, StaticIdentity};
use crate::config::{Config, ConfigError};
use crate::id::{Key, NodeId};
use crate::lookup::{Lookup, LookupStats};
use crate::message::{Body, Message, Request, Response, RpcError, TxnId};
use crate::plugin::{Action, Dest, Plugin, PluginCx, PluginResponse, Reply, RequestId};
use crate::record::{AcceptAll, MemoryStore, Record, RecordStore, RecordValidator, StoreError};
use crate::routing::{InsertOutcome, RoutingParams, RoutingSnapshot, RoutingTable};
use crate::stats::Stats;

/// Identifies a query (lookup, get, put, ping, call) started by a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct QueryId(pub u64);

/// An input to the engine.
#[derive(Debug)]
#[non_exhaustive]
// Inputs are handed over once and consumed at once: boxing the typed message would cost an
// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// Bytes received from a peer; the engine decodes them with its codec.
    Datagram {
        /// Where they came from.
        from: PeerAddr,
        /// The bytes.
        data: Bytes,
    },
    /// An already decoded message (simulator and in-process transports).
    Message {
        /// Where it came from.
        from: PeerAddr,
        /// The message.
        msg: Message,
    },
    /// The time returned by [`Node::poll_timeout`] has been reached.
    Timeout,
}

/// An output of the engine.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// A message to send. Encode it with [`Node::encode`] for a byte transport.
    Send {
        /// Destination.
        to: PeerAddr,
        /// The message.
        msg: Message,
    },
    /// Something happened.
    Event(Event),
}

/// Events for the application.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A query finished.
    QueryDone {
        /// Which.
        id: QueryId,
        /// Its result.
        result: QueryResult,
    },
    /// A `get` received a verified value (more may follow until the query is done).
    GetProgress {
        /// Which query.
        id: QueryId,
        /// The value.
        record: Record,
        /// Who held it.
        from: NodeId,
    },
    /// A peer stored a record here.
    RecordStored {
        /// Its key.
        key: Key,
        /// Who sent it.
        from: NodeId,
    },
    /// A plugin emitted an event.
    Plugin {
        /// The plugin's namespace.
        namespace: &'static str,
        /// The event's name.
        name: String,
        /// Its data.
        data: Bytes,
    },
}

/// Why a query failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// No peer answered: the routing table was empty and no seed answered, or every node a
    /// lookup asked stayed silent.
    #[error("no peers to ask")]
    NoPeers,
    /// No valid value was found under the key.
    #[error("no value found under the key")]
    NotFound,
    /// The peer did not answer in time.
    #[error("request timed out")]
    Timeout,
    /// The peer answered with an error.
    #[error(transparent)]
    Remote(#[from] RpcError),
    /// Nobody accepted the record.
    #[error("no node stored the record")]
    NotStored,
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LookupOutcome {
    /// The target.
    pub target: NodeId,
    /// The k closest nodes that answered, closest first.
    pub closest: Vec<Contact>,
    /// Counters.
    pub stats: LookupStats,
    /// Time from start to finish.
    pub elapsed: Duration,
}

/// The outcome of a successful `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GetOutcome {
    /// The best valid record found.
    pub record: Record,
    /// How many valid answers were received.
    pub answers: usize,
    /// Counters.
    pub stats: LookupStats,
    /// Time from start to finish.
    pub elapsed: Duration,
}

/// The outcome of a `put`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutOutcome {
    /// The key.
    pub key: Key,
    /// How many nodes acknowledged the record (this node included, if it is among the k closest).
    pub stored: usize,
    /// How many nodes were asked.
    pub tried: usize,
    /// Counters of the lookup phase.
    pub stats: LookupStats,
    /// Time from start to finish.
    pub elapsed: Duration,
}

/// The outcome of a ping.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PingOutcome {
    /// Who answered.
    pub contact: Contact,
    /// Round-trip time.
    pub rtt: Duration,
}

/// Results of finished queries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryResult {
    /// `find_node`.
    FindNode(Result<LookupOutcome, QueryError>),
    /// `bootstrap`.
    Bootstrap(Result<LookupOutcome, QueryError>),
    /// A bucket refresh started by the engine.
    Refresh(LookupOutcome),
    /// `get`.
    Get(Result<GetOutcome, QueryError>),
    /// `put` (also re-replication and republish started by the engine).
    Put(Result<PutOutcome, QueryError>),
    /// `ping`.
    Ping(Result<PingOutcome, QueryError>),
    /// `call`.
    Call(Result<Bytes, QueryError>),
    /// A plugin's lookup.
    PluginLookup(LookupOutcome),
    /// A plugin command ([`Node::command`]), as the plugin completed it.
    Command(Result<Bytes, QueryError>),
}

impl QueryResult {
    /// Whether the query succeeded (refreshes and plugin lookups always do).
    pub fn is_ok(&self) -> bool {
        match self {
            Self::FindNode(r) | Self::Bootstrap(r) => r.is_ok(),
            Self::Get(r) => r.is_ok(),
            Self::Put(r) => r.is_ok(),
            Self::Ping(r) => r.is_ok(),
            Self::Call(r) | Self::Command(r) => r.is_ok(),
            Self::Refresh(_) | Self::PluginLookup(_) => true,
        }
    }
}

/// A user command that could not start. The message names the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Too many queries are running.
    #[error("too many queries running: max_queries = {limit}")]
    TooManyQueries {
        /// The limit.
        limit: usize,
    },
    /// The value is larger than allowed.
    #[error("value is {len} bytes, larger than max_value_len = {limit}")]
    ValueTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The record has already expired.
    #[error("record expired at {expires_at_ms} ms, before now ({now_ms} ms)")]
    Expired {
        /// Its expiry.
        expires_at_ms: u64,
        /// Now.
        now_ms: u64,
    },
    /// No address of the contact uses a transport this node has.
    #[error("no address of the peer uses a transport in transport_preference")]
    NoAddress,
    /// The method name has no `namespace.` prefix.
    #[error("method {0:?} must be namespaced as namespace.METHOD")]
    BadMethod(String),
    /// A seed list was empty.
    #[error("bootstrap needs at least one seed address")]
    NoSeeds,
    /// No plugin has this namespace.
    #[error("no plugin with namespace {0:?}")]
    NoPlugin(String),
}

enum PendingKind {
    Lookup {
        query: QueryId,
        peer: NodeId,
    },
    Store {
        query: QueryId,
    },
    Ping {
        query: QueryId,
    },
    BootstrapPing {
        query: QueryId,
    },
    EvictPing {
        peer: NodeId,
    },
    Call {
        query: QueryId,
    },
    Plugin {
        plugin: usize,
        id: RequestId,
    },
    /// A PING proving `addr` before deferred replies go to it.
    Prove {
        addr: PeerAddr,
    },
}

struct Pending {
    kind: PendingKind,
    sent_at: Instant,
    deadline: (Instant, u64),
    expected: Option<NodeId>,
    /// What to send again when the answer does not come in time (kept only while retransmits
    /// remain).
    resend: Option<Request>,
    /// How many times it was sent.
    sends: u8,
}

impl PendingKind {
    /// Requests sent once and given up at their deadline: lookup requests (the lookup asks again
    /// or asks another node itself), eviction pings (a silent stalest contact is what they
    /// detect) and address proofs (a forged source gets one small PING, never more; the
    /// requester's own retry asks for another). Every other request is retransmitted, so that
    /// one lost datagram never fails a join, a store, a ping, a call or a plugin's request.
    fn retransmitted(&self) -> bool {
        !matches!(
            self,
            Self::Lookup { .. } | Self::EvictPing { .. } | Self::Prove { .. }
        )
    }
}

enum QueryKind {
    FindNode,
    Bootstrap {
        pings: usize,
        refresh_left: usize,
    },
    Refresh,
    Get {
        key: Key,
        quorum: usize,
        found: Vec<Record>,
    },
    Put {
        record: Record,
        storing: Option<(usize, usize, usize)>,
        /// The first error a storing node answered with, reported when nobody stored.
        refused: Option<RpcError>,
        /// Finish once this many stored (0: once all answered).
        quorum: usize,
    },
    Ping,
    Call,
    PluginLookup {
        plugin: usize,
        method: String,
        params: Bytes,
    },
    Command {
        plugin: usize,
    },
}

impl QueryKind {
    /// The name latencies are kept under in [`Stats::query_latency`].
    fn name(&self) -> &'static str {
        match self {
            Self::FindNode => "find_node",
            Self::Bootstrap { .. } => "bootstrap",
            Self::Refresh => "refresh",
            Self::Get { .. } => "get",
            Self::Put { .. } => "put",
            Self::Ping => "ping",
            Self::Call => "call",
            Self::PluginLookup { .. } => "plugin_lookup",
            Self::Command { .. } => "command",
        }
    }
}

struct Query {
    kind: QueryKind,
    started: Instant,
    lookup: Option<Lookup>,
}

/// Round-trip estimator (Jacobson/Karels), in microseconds. The first sample replaces the
/// configured guess (RFC 6298), so a fresh node adapts with its first answer.
#[derive(Debug, Clone)]
struct Rtt {
    srtt: u64,
    rttvar: u64,
    sampled: bool,
}

impl Rtt {
    fn sample(&mut self, rtt: Duration) {
        let r = rtt.as_micros().min(u128::from(u32::MAX)) as u64;
        if !self.sampled {
            self.sampled = true;
            self.srtt = r;
            self.rttvar = r / 2;
            return;
        }
        let err = self.srtt.abs_diff(r);
        self.rttvar = (self.rttvar * 3 + err) / 4;
        self.srtt = (self.srtt * 7 + r) / 8;
    }
    fn rto(&self) -> Duration {
        Duration::from_micros(self.srtt + (4 * self.rttvar).max(self.srtt / 4))
    }
}

/// Builds a [`Node`] from its parts.
pub struct NodeBuilder {
    config: Config,
    identity: Option<Arc<dyn Identity>>,
    addrs: Vec<PeerAddr>,
    codec: Option<Box<dyn Codec>>,
    store: Option<Box<dyn RecordStore>>,
    validator: Option<Arc<dyn RecordValidator>>,
    plugins: Vec<Box<dyn Plugin>>,
}

impl NodeBuilder {
    /// The node's identity (its id, and its key for signing codecs).
    pub fn identity(mut self, identity: Arc<dyn Identity>) -> Self {
        self.identity = Some(identity);
        self
    }
    /// A fixed id with an unsigned identity.
    pub fn id(self, id: NodeId) -> Self {
        self.identity(Arc::new(StaticIdentity(id)))
    }
    /// The addresses this node listens on, advertised in its contact.
    pub fn addrs(mut self, addrs: Vec<PeerAddr>) -> Self {
        self.addrs = addrs;
        self
    }
    /// The wire codec. Default: `PlainCodec` (feature `json`); without that feature a codec
    /// must be given, or [`build`](Self::build) fails with [`ConfigError::NoCodec`].
    pub fn codec(mut self, codec: Box<dyn Codec>) -> Self {
        self.codec = Some(codec);
        self
    }
    /// The record store. Default a [`MemoryStore`] with `Config::store_limits`.
    pub fn store(mut self, store: Box<dyn RecordStore>) -> Self {
        self.store = Some(store);
        self
    }
    /// The record validator. Default [`AcceptAll`].
    pub fn validator(mut self, validator: Arc<dyn RecordValidator>) -> Self {
        self.validator = Some(validator);
        self
    }
    /// Adds a plugin. Plugins are consulted in the order they are added.
    pub fn plugin(mut self, plugin: Box<dyn Plugin>) -> Self {
        self.plugins.push(plugin);
        self
    }
    #[cfg(feature = "tokio")]
    pub(crate) fn addrs_is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
    #[cfg(feature = "tokio")]
    pub(crate) fn has_identity(&self) -> bool {
        self.identity.is_some()
    }
    /// The configuration, to adjust before building.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }
    /// Builds the node at time `now`. Without an identity, the id is drawn from the RNG seed.
    pub fn build(self, now: Instant) -> Result<Node, ConfigError> {
        self.config.validate()?;
        let seed = self.config.rng_seed.unwrap_or_else(|| {
            let mut s = [0u8; 32];
            if let Some(id) = &self.identity {
                s[..20].copy_from_slice(id.node_id().as_bytes());
            }
            s
        });
        let mut rng = ChaCha8Rng::from_seed(seed);
        let identity = self
            .identity
            .unwrap_or_else(|| Arc::new(StaticIdentity(NodeId::random(&mut rng))));
        let id = identity.node_id();
        let params = RoutingParams {
            k: self.config.k,
            replacement_cache: self.config.replacement_cache,
            liveness_window: self.config.liveness_window,
            max_failures: self.config.max_failures,
            subnet_limit: self.config.subnet_limit,
        };
        let store = self
            .store
            .unwrap_or_else(|| Box::new(MemoryStore::new(id, self.config.store_limits.clone())));
        let init = self.config.initial_rtt.as_micros() as u64;
        let codec = match self.codec {
            Some(c) => c,
            None => default_codec()?,
        };
        Ok(Node {
            local: Contact::with_addrs(id, self.addrs),
            identity,
            codec,
            routing: RoutingTable::new(id, params),
            store,
            validator: self.validator.unwrap_or_else(|| Arc::new(AcceptAll)),
            plugins: self.plugins,
            rng,
            in_flight: FxHashMap::default(),
            deadlines: BTreeMap::new(),
            seq: 0,
            queries: BTreeMap::new(),
            next_query: 0,
            next_request: 0,
            starved: VecDeque::new(),
            outputs: VecDeque::new(),
            rtt: Rtt {
                srtt: init,
                rttvar: init / 2,
                sampled: false,
            },
            stats: Stats::default(),
            now,
            next_maintenance: now + self.config.maintenance_interval,
            next_replicate: now + self.config.replicate_interval,
            own_records: BTreeMap::new(),
            replicate_queue: VecDeque::new(),
            sent_to: RecentAddrs::new(now),
            guard: Default::default(),
            request_len: 0,
            encoded: None,
            join_addrs: Vec::new(),
            last_known: Vec::new(),
            rejoin_at: None,
            rejoin_wait: self.config.rejoin_min,
            config: self.config,
        })
    }
}

/// The codec of a builder that is given none.
#[cfg(feature = "json")]
fn default_codec() -> Result<Box<dyn Codec>, ConfigError> {
    Ok(Box::new(crate::codec::PlainCodec::new()))
}

/// Without the `json` feature there is no default codec.
#[cfg(not(feature = "json"))]
fn default_codec() -> Result<Box<dyn Codec>, ConfigError> {
    Err(ConfigError::NoCodec)
}

/// The Kademlia engine: a state machine with no I/O, no OS clock and no OS randomness.
///
/// # Driving it
///
/// 1. Feed it inputs with [`handle_input`](Self::handle_input) (received bytes or messages, and
///    [`Input::Timeout`] when the time from [`poll_timeout`](Self::poll_timeout) has come) and
///    commands ([`find_node`](Self::find_node), [`get`](Self::get), [`put`](Self::put), ...).
/// 2. After each, drain [`poll_output`](Self::poll_output) until it returns `None`: send every
///    [`Output::Send`], deliver every [`Output::Event`].
/// 3. Ask [`poll_timeout`](Self::poll_timeout) when to wake it next.
///
/// Every entry point takes `now`; time never goes backwards (an earlier `now` is treated as the
/// latest one seen). Remote misbehaviour never returns an error and never panics: it is dropped
/// and counted in [`Stats`].
pub struct Node {
    config: Config,
    local: Contact,
    identity: Arc<dyn Identity>,
    codec: Box<dyn Codec>,
    rng: ChaCha8Rng,
    routing: RoutingTable,
    store: Box<dyn RecordStore>,
    validator: Arc<dyn RecordValidator>,
    plugins: Vec<Box<dyn Plugin>>,
    in_flight: FxHashMap<(TxnId, PeerAddr), Pending>,
    deadlines: BTreeMap<(Instant, u64), (TxnId, PeerAddr)>,
    seq: u64,
    queries: BTreeMap<QueryId, Query>,
    next_query: u64,
    next_request: u64,
    starved: VecDeque<QueryId>,
    outputs: VecDeque<Output>,
    rtt: Rtt,
    stats: Stats,
    now: Instant,
    next_maintenance: Instant,
    next_replicate: Instant,
    /// Records this node published, with when it last (re)published them; kept here, not only
    /// in the store, so that an eviction cannot stop the republishing.
    own_records: BTreeMap<Key, (Instant, Record)>,
    /// Keys waiting for re-replication, drained a few per maintenance tick.
    replicate_queue: VecDeque<Key>,
    /// Addresses this node sent to lately (a NAT lets their packets in: reachability checks
    /// ignore them).
    sent_to: RecentAddrs,
    /// Anti-amplification: proven addresses and deferred replies.
    guard: crate::amplify::Guard,
    /// Length of the datagram being handled (0 outside datagram input): the size a reply to an
    /// unproven address may reach.
    request_len: usize,
    /// A reply already encoded to measure it, handed out by `encode_to` instead of signing twice.
    encoded: Option<(Message, PeerAddr, Bytes)>,
    /// Where to join again when the routing table is empty: the bootstrap addresses given,
    /// then the addresses of the contacts last known (see [`Node::rejoin`]).
    join_addrs: Vec<PeerAddr>,
    last_known: Vec<PeerAddr>,
    /// When the next join of a lonely node starts, and the wait after that one.
    rejoin_at: Option<Instant>,
    rejoin_wait: Duration,
}

/// Most bootstrap addresses, and most last-known contact addresses, a node keeps to join again.
const REJOIN_ADDRS: usize = 16;

/// The socket addresses a node sent to within the last 5 to 10 minutes, in two generations of
/// at most [`RecentAddrs::CAP`] each (a full generation rotates early, so memory stays bounded).
#[derive(Debug)]
pub(crate) struct RecentAddrs {
    // Keyed by addresses peers choose: std's randomly keyed hasher, not Fx.
    current: std::collections::HashSet<std::net::SocketAddr>,
    previous: std::collections::HashSet<std::net::SocketAddr>,
    current_ips: std::collections::HashSet<std::net::IpAddr>,
    previous_ips: std::collections::HashSet<std::net::IpAddr>,
    rotated: Instant,
}

impl RecentAddrs {
    const CAP: usize = 1 << 14;
    /// Longer than the UDP timeouts of common NATs (Linux conntrack: 30 s, 120 s once replied).
    const WINDOW: Duration = Duration::from_secs(300);

    fn new(now: Instant) -> Self {
        Self {
            current: Default::default(),
            previous: Default::default(),
            current_ips: Default::default(),
            previous_ips: Default::default(),
            rotated: now,
        }
    }

    fn note(&mut self, now: Instant, to: &PeerAddr) {
        let Some(sa) = to.socket_addr() else { return };
        if now.saturating_duration_since(self.rotated) >= Self::WINDOW
            || self.current.len() >= Self::CAP
        {
            self.previous = std::mem::take(&mut self.current);
            self.previous_ips = std::mem::take(&mut self.current_ips);
            self.rotated = now;
        }
        self.current.insert(sa);
        self.current_ips.insert(sa.ip());
    }

    pub(crate) fn contains_ip(&self, now: Instant, ip: std::net::IpAddr) -> bool {
        let age = now.saturating_duration_since(self.rotated);
        self.current_ips.contains(&ip) || (age < Self::WINDOW && self.previous_ips.contains(&ip))
    }

    pub(crate) fn contains(&self, now: Instant, addr: std::net::SocketAddr) -> bool {
        let age = now.saturating_duration_since(self.rotated);
        self.current.contains(&addr) || (age < Self::WINDOW && self.previous.contains(&addr))
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.local.id)
            .field("routing", &self.routing.len())
            .field("in_flight", &self.in_flight.len())
            .field("queries", &self.queries.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts building a node with `config`.
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder {
            config,
            identity: None,
            addrs: Vec::new(),
            codec: None,
            store: None,
            validator: None,
            plugins: Vec::new(),
        }
    }

    // ---- getters ----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.local.id
    }
    /// This node's contact (id and advertised addresses).
    pub fn contact(&self) -> &Contact {
        &self.local
    }

    /// Replaces the addresses this node advertises in its contact (every message carries them):
    /// a NAT plugin sets the mapped or observed external addresses here. Addresses already
    /// advertised keep their place; an unchanged list does nothing. A node that already has
    /// contacts runs a self-lookup so that its neighbours hear the new addresses.
    pub fn set_addrs(&mut self, now: Instant, addrs: Vec<PeerAddr>) {
        let now = self.advance(now);
        if *addrs == *self.local.addrs {
            return;
        }
        self.local = Contact::with_addrs(self.local.id, addrs);
        self.announce(now);
    }

    /// Switches read-only (client) mode at run time ([`Config::read_only`]): a read-only node
    /// marks its messages so that others don't add it to their tables. Leaving read-only mode
    /// runs a self-lookup so that the closest nodes add this node at once.
    pub fn set_read_only(&mut self, now: Instant, read_only: bool) {
        let now = self.advance(now);
        if read_only == self.config.read_only {
            return;
        }
        self.config.read_only = read_only;
        if !read_only {
            self.announce(now);
        }
    }

    fn announce(&mut self, now: Instant) {
        if self.routing.is_empty() || self.config.read_only {
            return;
        }
        let me = self.local.id;
        let lookup = self.make_lookup(now, me);
        if let Ok(qid) = self.new_query(now, QueryKind::Refresh, Some(lookup)) {
            self.step_query(now, qid);
        }
    }
    /// The identity.
    pub fn identity(&self) -> &Arc<dyn Identity> {
        &self.identity
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The routing table.
    pub fn routing_table(&self) -> &RoutingTable {
        &self.routing
    }
    /// The record store.
    pub fn store(&self) -> &dyn RecordStore {
        &*self.store
    }
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
    /// Queries running.
    pub fn queries_running(&self) -> usize {
        self.queries.len()
    }
    /// A snapshot of the routing table for a warm restart.
    pub fn snapshot(&self) -> RoutingSnapshot {
        self.routing.snapshot()
    }
    /// Wall-clock ms at `now`, as the configured wall clock says.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        self.config.wall_clock.unix_ms(now)
    }

    // ---- the driving loop ----

    /// Encodes a message for the wire with the node's codec.
    ///
    /// Signing codecs stamp the message with the wall-clock time of the latest `now` the node
    /// was given, so encode right after [`poll_output`](Self::poll_output).
    pub fn encode(&mut self, msg: &Message) -> Result<Bytes, EncodeError> {
        self.encode_for(None, msg)
    }

    /// Like [`encode`](Self::encode), telling the codec where the message goes (KRPC writes the
    /// requester's address into responses, BEP42 `ip`). The runtime uses this.
    pub fn encode_to(&mut self, to: &PeerAddr, msg: &Message) -> Result<Bytes, EncodeError> {
        self.encode_for(Some(to), msg)
    }

    fn encode_for(&mut self, to: Option<&PeerAddr>, msg: &Message) -> Result<Bytes, EncodeError> {
        if let Some((m, a, _)) = &self.encoded {
            if Some(a) == to && m == msg {
                if let Some((_, _, b)) = self.encoded.take() {
                    return Ok(b);
                }
            }
        }
        let mut cx = CodecCx {
            unix_ms: self.config.wall_clock.unix_ms(self.now),
            local_id: self.local.id,
            max_skew_ms: self.config.max_clock_skew.as_millis() as u64,
            rng: &mut self.rng,
            peer: to,
        };
        self.codec.encode(msg, &mut cx)
    }

    fn decode(
        &mut self,
        now: Instant,
        from: &PeerAddr,
        data: &[u8],
    ) -> Result<Message, DecodeError> {
        let mut cx = CodecCx {
            unix_ms: self.config.wall_clock.unix_ms(now),
            local_id: self.local.id,
            max_skew_ms: self.config.max_clock_skew.as_millis() as u64,
            rng: &mut self.rng,
            peer: Some(from),
        };
        self.codec.decode(data, &mut cx)
    }

    /// Next output, or `None` when drained.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front();
        if out.is_none() {
            // Give back what a burst grew, so that idle nodes stay small (matters at 100k nodes).
            if self.outputs.capacity() > 16 {
                self.outputs.shrink_to(16);
            }
            if self.in_flight.is_empty() && self.in_flight.capacity() > 32 {
                self.in_flight.shrink_to_fit();
            }
        }
        out
    }

    /// When the engine next needs [`Input::Timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = Some(self.next_maintenance);
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        min(self.deadlines.keys().next().map(|k| k.0));
        min(self.rejoin_at);
        for q in self.queries.values() {
            if let Some(l) = &q.lookup {
                min(l.next_deadline(self.now));
            }
        }
        for p in &self.plugins {
            min(p.next_timeout());
        }
        t
    }

    /// Feeds one input.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        let now = self.advance(now);
        match input {
            Input::Datagram { from, data } => match self.decode(now, &from, &data) {
                Ok(msg) => {
                    self.request_len = data.len();
                    self.handle_message(now, from, msg);
                    self.request_len = 0;
                }
                Err(e) => {
                    match e {
                        DecodeError::Auth(_) => self.stats.dropped_auth += 1,
                        DecodeError::BadSignature => self.stats.dropped_bad_signature += 1,
                        DecodeError::IdMismatch => self.stats.dropped_id_mismatch += 1,
                        DecodeError::Stale { .. } => self.stats.dropped_stale += 1,
                        DecodeError::Replay => self.stats.dropped_replay += 1,
                        DecodeError::WrongRecipient => self.stats.dropped_wrong_recipient += 1,
                        DecodeError::RateLimited => self.stats.dropped_rate_limited += 1,
                        _ => self.stats.dropped_malformed += 1,
                    }
                    trace!(peer = %from, error = %e, "dropped undecodable datagram");
                }
            },
            Input::Message { from, msg } => self.handle_message(now, from, msg),
            Input::Timeout => self.handle_timeout(now),
        }
    }

    fn advance(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    // ---- commands ----

    fn new_query(
        &mut self,
        now: Instant,
        kind: QueryKind,
        lookup: Option<Lookup>,
    ) -> Result<QueryId, CommandError> {
        if self.queries.len() >= self.config.max_queries {
            self.stats.queries_refused += 1;
            return Err(CommandError::TooManyQueries {
                limit: self.config.max_queries,
            });
        }
        let id = QueryId(self.next_query);
        self.next_query += 1;
        self.stats.queries_started += 1;
        self.queries.insert(
            id,
            Query {
                kind,
                started: now,
                lookup,
            },
        );
        Ok(id)
    }

    fn make_lookup(&mut self, now: Instant, target: NodeId) -> Lookup {
        self.routing.touch(now, &target);
        let mut seeds = self.routing.closest(&target, self.config.k);
        if seeds.len() < self.config.alpha {
            // Few good contacts left: give the failing ones another chance.
            seeds.extend(
                self.routing
                    .closest_bad(&target, self.config.k - seeds.len()),
            );
        }
        Lookup::new(
            self.local.id,
            target,
            self.config.k,
            self.config.alpha,
            self.config.max_attempts,
            seeds,
        )
        .with_patience(self.config.lookup_patience)
        .with_skip_silent_head(self.config.lookup_skip_silent_head)
        .with_subnet_limit(self.config.subnet_limit)
        .with_disjoint_paths(self.config.disjoint_paths)
    }

    /// Adds a contact to the routing table as unverified (it becomes good once it answers).
    pub fn add_contact(&mut self, now: Instant, contact: Contact) {
        let now = self.advance(now);
        self.routing.insert(now, contact, false);
    }

    /// Restores a routing-table snapshot (contacts start as questionable). Returns how many were added.
    pub fn restore(&mut self, now: Instant, snapshot: &RoutingSnapshot) -> usize {
        let now = self.advance(now);
        self.routing.restore(now, snapshot)
    }

    /// Joins the network through seed addresses whose ids are unknown: pings them, then looks up
    /// our own id. Finishes with [`QueryResult::Bootstrap`].
    pub fn bootstrap(&mut self, now: Instant, seeds: &[PeerAddr]) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        if seeds.is_empty() && self.routing.is_empty() {
            return Err(CommandError::NoSeeds);
        }
        for a in seeds {
            if !self.join_addrs.contains(a) && self.join_addrs.len() < REJOIN_ADDRS {
                self.join_addrs.push(a.clone());
            }
        }
        self.start_bootstrap(now, seeds)
    }

    /// Pings `seeds`, then looks up our own id (the lookup starts at the first answer, or once
    /// every ping failed after its retransmissions).
    fn start_bootstrap(
        &mut self,
        now: Instant,
        seeds: &[PeerAddr],
    ) -> Result<QueryId, CommandError> {
        let qid = self.new_query(
            now,
            QueryKind::Bootstrap {
                pings: 0,
                refresh_left: self.config.bootstrap_refresh,
            },
            None,
        )?;
        let mut sent = 0;
        for addr in seeds {
            if self.send_request(
                now,
                addr.clone(),
                None,
                Request::Ping,
                PendingKind::BootstrapPing { query: qid },
            ) {
                sent += 1;
            }
        }
        if let Some(Query {
            kind: QueryKind::Bootstrap { pings, .. },
            ..
        }) = self.queries.get_mut(&qid)
        {
            *pings = sent;
        }
        if sent == 0 {
            self.start_bootstrap_lookup(now, qid);
        }
        Ok(qid)
    }

    /// Joins the network through known contacts: adds them, then looks up our own id.
    pub fn bootstrap_with(
        &mut self,
        now: Instant,
        seeds: Vec<Contact>,
    ) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        for c in seeds {
            if let Some(a) = c.addr_for(&self.config.transport_preference) {
                if !self.join_addrs.contains(a) && self.join_addrs.len() < REJOIN_ADDRS {
                    self.join_addrs.push(a.clone());
                }
            }
            self.routing.insert(now, c, false);
        }
        let qid = self.new_query(
            now,
            QueryKind::Bootstrap {
                pings: 0,
                refresh_left: self.config.bootstrap_refresh,
            },
            None,
        )?;
        self.start_bootstrap_lookup(now, qid);
        Ok(qid)
    }

    fn start_bootstrap_lookup(&mut self, now: Instant, qid: QueryId) {
        let lookup = self.make_lookup(now, self.local.id);
        if let Some(q) = self.queries.get_mut(&qid) {
            q.lookup = Some(lookup);
        }
        self.step_query(now, qid);
    }

    /// Finds the k closest nodes to `target`. Finishes with [`QueryResult::FindNode`].
    pub fn find_node(&mut self, now: Instant, target: NodeId) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        let lookup = self.make_lookup(now, target);
        let qid = self.new_query(now, QueryKind::FindNode, Some(lookup))?;
        self.step_query(now, qid);
        Ok(qid)
    }

    /// Looks up the record under `key`. Finishes with [`QueryResult::Get`] as soon as `quorum`
    /// valid values arrived (the best by the validator), or when the lookup converges. A `quorum`
    /// of 0 means: run the lookup to the end and return the best value seen. A locally held value
    /// counts as one answer.
    pub fn get(&mut self, now: Instant, key: Key, quorum: usize) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        let mut found = Vec::new();
        let unix = self.unix_ms(now);
        if let Some(r) = self.store.get(&key) {
            if !r.is_expired(unix) && self.validator.validate(&r).is_ok() {
                found.push(r);
            }
        }
        let lookup = self.make_lookup(now, key);
        let qid = self.new_query(now, QueryKind::Get { key, quorum, found }, Some(lookup))?;
        self.step_query(now, qid);
        Ok(qid)
    }

    /// Publishes `value` under `key` as this node's record (republished before it expires).
    /// Finishes with [`QueryResult::Put`], saying how many nodes stored it.
    pub fn put(&mut self, now: Instant, key: Key, value: Bytes) -> Result<QueryId, CommandError> {
        self.put_quorum(now, key, value, 0)
    }

    /// Like [`put`](Self::put), finishing as soon as `quorum` nodes have stored the record
    /// (0: when every one of the k closest has answered). The other STOREs still go out; their
    /// answers are not waited for. The outcome's `stored` is the count at that moment.
    pub fn put_quorum(
        &mut self,
        now: Instant,
        key: Key,
        value: Bytes,
        quorum: usize,
    ) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        let unix = self.unix_ms(now);
        let record = Record::new(
            key,
            value,
            Some(self.local.id),
            unix,
            self.config.record_ttl.as_millis() as u64,
        );
        let qid = self.put_record_quorum(now, record.clone(), quorum)?;
        self.own_records.insert(key, (now, record));
        Ok(qid)
    }

    /// Stores `record` as given at the k closest nodes to its key (no republish bookkeeping).
    pub fn put_record(&mut self, now: Instant, record: Record) -> Result<QueryId, CommandError> {
        self.put_record_quorum(now, record, 0)
    }

    /// Like [`put_record`](Self::put_record), finishing once `quorum` nodes stored it (see
    /// [`put_quorum`](Self::put_quorum)).
    pub fn put_record_quorum(
        &mut self,
        now: Instant,
        record: Record,
        quorum: usize,
    ) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        if record.value.len() > self.config.max_value_len {
            return Err(CommandError::ValueTooLarge {
                len: record.value.len(),
                limit: self.config.max_value_len,
            });
        }
        let unix = self.unix_ms(now);
        if record.is_expired(unix) {
            return Err(CommandError::Expired {
                expires_at_ms: record.expires_at_ms,
                now_ms: unix,
            });
        }
        // Stored at the k closest that answer, slow ones included.
        let lookup = self.make_lookup(now, record.key).with_wait_for_slow(true);
        let qid = self.new_query(
            now,
            QueryKind::Put {
                record,
                storing: None,
                refused: None,
                quorum,
            },
            Some(lookup),
        )?;
        self.step_query(now, qid);
        Ok(qid)
    }

    /// Pings an address. Finishes with [`QueryResult::Ping`].
    pub fn ping(&mut self, now: Instant, addr: PeerAddr) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        let qid = self.new_query(now, QueryKind::Ping, None)?;
        if !self.send_request(
            now,
            addr,
            None,
            Request::Ping,
            PendingKind::Ping { query: qid },
        ) {
            self.finish(now, qid, QueryResult::Ping(Err(QueryError::NoPeers)));
        }
        Ok(qid)
    }

    /// Calls a plugin method (`namespace.METHOD`) on a peer. Finishes with [`QueryResult::Call`].
    pub fn call(
        &mut self,
        now: Instant,
        to: &Contact,
        method: &str,
        params: Bytes,
    ) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        if !method.contains('.') {
            return Err(CommandError::BadMethod(method.to_owned()));
        }
        let addr = to
            .addr_for(&self.config.transport_preference)
            .cloned()
            .ok_or(CommandError::NoAddress)?;
        let qid = self.new_query(now, QueryKind::Call, None)?;
        let req = Request::Custom {
            method: method.to_owned(),
            params,
        };
        if !self.send_request(
            now,
            addr,
            Some(to.id),
            req,
            PendingKind::Call { query: qid },
        ) {
            self.finish(now, qid, QueryResult::Call(Err(QueryError::NoPeers)));
        }
        Ok(qid)
    }

    /// Gives a command to the plugin with this namespace ([`Plugin::on_command`]). Finishes with
    /// [`QueryResult::Command`] when the plugin completes it.
    pub fn command(
        &mut self,
        now: Instant,
        namespace: &str,
        input: Bytes,
    ) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        let idx = self
            .plugins
            .iter()
            .position(|p| p.namespace() == namespace)
            .ok_or_else(|| CommandError::NoPlugin(namespace.to_owned()))?;
        let qid = self.new_query(now, QueryKind::Command { plugin: idx }, None)?;
        self.with_plugin(now, idx, |p, cx| p.on_command(cx, qid, input));
        Ok(qid)
    }

    // ---- sending ----

    fn hard_timeout(&self) -> Duration {
        (self.rtt.rto() * 3).clamp(self.config.min_request_timeout, self.config.request_timeout)
    }

    /// Extra time for a request that carries or may bring back a value larger than a datagram:
    /// 1 ms per KiB beyond 64 KiB (a 750 KB chunk over QUIC gets about 0.7 s more), so a busy
    /// peer storing or serving a large value is not taken for a dead one: an RTT measured on
    /// small messages says nothing about the time to decode, verify and commit a megabyte.
    fn size_allowance(&self, req: &Request) -> Duration {
        let bytes = match req {
            Request::Store { record } => record.value.len(),
            Request::FindValue { .. } | Request::Custom { .. } => self.config.max_value_len,
            Request::Ping | Request::FindNode { .. } => 0,
        };
        Duration::from_millis((bytes.saturating_sub(64 * 1024) / 1024) as u64)
    }

    fn soft_timeout(&self) -> Duration {
        self.rtt
            .rto()
            .clamp(self.config.min_soft_timeout, self.config.request_timeout)
    }

    fn send_request(
        &mut self,
        now: Instant,
        to: PeerAddr,
        expected: Option<NodeId>,
        req: Request,
        kind: PendingKind,
    ) -> bool {
        if self.in_flight.len() >= self.config.max_in_flight {
            self.stats.in_flight_full += 1;
            return false;
        }
        let mut txn;
        loop {
            txn = TxnId(Bytes::copy_from_slice(
                &self.rng.random::<u32>().to_be_bytes(),
            ));
            if !self.in_flight.contains_key(&(txn.clone(), to.clone())) {
                break;
            }
        }
        let plugin_resends = match &kind {
            PendingKind::Plugin { plugin, .. } => self
                .plugins
                .get(*plugin)
                .is_some_and(|p| p.retransmit_requests()),
            _ => true,
        };
        let resend = (kind.retransmitted() && plugin_resends && self.config.retransmits > 0)
            .then(|| req.clone());
        let deadline = self.request_deadline(now, &req, 0);
        self.in_flight.insert(
            (txn.clone(), to.clone()),
            Pending {
                kind,
                sent_at: now,
                deadline,
                expected,
                resend,
                sends: 1,
            },
        );
        crate::stats::count_method(&mut self.stats.rpc_out, req.method());
        self.stats.requests_out += 1;
        self.transmit_request(now, to, txn, expected, req);
        true
    }

    /// The hard deadline of a request's `attempt`-th retransmission (0: the first send): the
    /// adaptive timeout doubled per retransmission, at most [`Config::request_timeout`], plus
    /// the size allowance. Registers it in `deadlines` against the request's key later.
    fn request_deadline(&mut self, now: Instant, req: &Request, attempt: u8) -> (Instant, u64) {
        let base = self.hard_timeout();
        let backoff = (base * (1u32 << attempt.min(8))).min(self.config.request_timeout.max(base));
        let deadline = (now + backoff + self.size_allowance(req), self.seq);
        self.seq += 1;
        deadline
    }

    /// Hands one request datagram out (first send or retransmission), registering its deadline.
    fn transmit_request(
        &mut self,
        now: Instant,
        to: PeerAddr,
        txn: TxnId,
        expected: Option<NodeId>,
        req: Request,
    ) {
        let proving = matches!(
            self.in_flight.get(&(txn.clone(), to.clone())),
            Some(Pending {
                kind: PendingKind::Prove { .. },
                ..
            })
        );
        if let Some(p) = self.in_flight.get(&(txn.clone(), to.clone())) {
            self.deadlines.insert(p.deadline, (txn.clone(), to.clone()));
        }
        if !proving {
            let patience = self.hard_timeout() * 2;
            self.guard.asked(now, &to, patience);
        }
        let msg = Message {
            txn,
            sender: self.local.clone(),
            recipient: expected,
            read_only: self.config.read_only,
            observed: None,
            body: Body::Request(req),
        };
        self.stats.messages_out += 1;
        self.sent_to.note(now, &to);
        self.outputs.push_back(Output::Send { to, msg });
    }

    /// A request's deadline passed: sends it again with a doubled timeout while retransmits
    /// remain (same transaction id, so a late answer to an earlier copy still counts). Returns
    /// the pending entry when it is given up.
    fn retransmit(
        &mut self,
        now: Instant,
        key: (TxnId, PeerAddr),
        mut p: Pending,
    ) -> Option<Pending> {
        let Some(req) = p.resend.take() else {
            return Some(p);
        };
        p.deadline = self.request_deadline(now, &req, p.sends);
        p.sent_at = now;
        p.sends += 1;
        if p.sends <= self.config.retransmits {
            p.resend = Some(req.clone());
        }
        let expected = p.expected;
        trace!(peer = %key.1, sends = p.sends, "retransmitting a request");
        self.in_flight.insert(key.clone(), p);
        self.stats.retransmits += 1;
        self.transmit_request(now, key.1, key.0, expected, req);
        None
    }

    fn send_to_contact(
        &mut self,
        now: Instant,
        to: &Contact,
        req: Request,
        kind: PendingKind,
    ) -> bool {
        let Some(addr) = to.addr_for(&self.config.transport_preference).cloned() else {
            return false;
        };
        self.send_request(now, addr, Some(to.id), req, kind)
    }

    fn reply(&mut self, to: PeerAddr, txn: TxnId, recipient: NodeId, body: Body) {
        let msg = Message {
            txn,
            sender: self.local.clone(),
            recipient: Some(recipient),
            read_only: self.config.read_only,
            // Tell the requester where we see it (its address outside its NAT).
            observed: matches!(to, PeerAddr::Udp(_) | PeerAddr::Quic(_)).then(|| to.clone()),
            body,
        };
        let now = self.now;
        if self.config.amplification_guard
            && self.request_len > 0
            && crate::amplify::guarded(&to)
            && !self.guard.trusted(now, &to, self.hard_timeout() * 2)
        {
            // Measure it: the codec decides the size. The bytes are kept for `encode_to`.
            if let Ok(bytes) = self.encode_to(&to, &msg) {
                if bytes.len() > self.request_len {
                    self.defer_reply(now, to, msg);
                    return;
                }
                self.encoded = Some((msg.clone(), to.clone(), bytes));
            }
        }
        self.send_reply(now, to, msg);
    }

    fn send_reply(&mut self, now: Instant, to: PeerAddr, msg: Message) {
        self.stats.messages_out += 1;
        self.sent_to.note(now, &to);
        self.outputs.push_back(Output::Send { to, msg });
    }

    /// Holds a reply too large for an unproven address, and PINGs the address (once).
    fn defer_reply(&mut self, now: Instant, to: PeerAddr, msg: Message) {
        self.stats.replies_deferred += 1;
        match self.guard.defer(&to, msg) {
            crate::amplify::Defer::Ping => {
                let kind = PendingKind::Prove { addr: to.clone() };
                if self.send_request(now, to.clone(), None, Request::Ping, kind) {
                    self.stats.proving_pings += 1;
                    self.guard.proof_sent(&to);
                } else if !self.guard.proving(&to) {
                    let n = self.guard.take(&to).len() as u64;
                    self.stats.replies_deferred_dropped += n;
                }
            }
            crate::amplify::Defer::Full => self.stats.replies_deferred_dropped += 1,
        }
    }

    /// `from` answered one of our requests: it receives what is sent to it.
    fn address_proven(&mut self, now: Instant, from: &PeerAddr) {
        if !crate::amplify::guarded(from) {
            return;
        }
        self.guard.proven(from);
        for mut msg in self.guard.take(from) {
            // Re-stamped when encoded; still answers the requester's transaction.
            msg.read_only = self.config.read_only;
            self.send_reply(now, from.clone(), msg);
        }
    }

    fn emit(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }

    // ---- inbound ----

    fn handle_message(&mut self, now: Instant, from: PeerAddr, msg: Message) {
        self.stats.messages_in += 1;
        if msg.sender.id == self.local.id {
            self.stats.dropped_self += 1;
            return;
        }
        if let Some(r) = msg.recipient {
            if r != self.local.id {
                // Bootstrap pings carry no recipient; anything else must be for us.
                self.stats.dropped_wrong_recipient += 1;
                return;
            }
        }
        match msg.body {
            Body::Request(req) => {
                // A request without a recipient (a PING to a bare address) can be replayed to
                // other nodes by anyone who saw it: answer it, but learn nothing from it.
                let learn = !msg.read_only && msg.recipient.is_some();
                self.handle_request(now, from, msg.txn, msg.sender, learn, req)
            }
            Body::Response(rsp) => {
                let seen = msg.observed;
                self.handle_response(now, from, msg.txn, msg.sender, msg.read_only, seen, Ok(rsp))
            }
            Body::Error(err) => {
                let seen = msg.observed;
                self.handle_response(
                    now,
                    from,
                    msg.txn,
                    msg.sender,
                    msg.read_only,
                    seen,
                    Err(err),
                )
            }
        }
    }

    fn observe_sender(&mut self, now: Instant, from: &PeerAddr, sender: Contact) {
        let advertised_instead = !from.kind().source_is_dialable()
            && sender.addrs.iter().any(|a| a.kind() == from.kind());
        let contact = if advertised_instead || sender.addrs.contains(from) {
            sender
        } else {
            // The address we actually heard it from comes first.
            let mut addrs = vec![from.clone()];
            addrs.extend(sender.addrs.iter().filter(|a| *a != from).cloned());
            Contact::with_addrs(sender.id, addrs)
        };
        if let InsertOutcome::Pending { ping: Some(p) } = self.routing.insert(now, contact, true) {
            let peer = p.id;
            if !self.send_to_contact(now, &p, Request::Ping, PendingKind::EvictPing { peer }) {
                self.routing.on_ping_ok(&peer);
            }
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        from: PeerAddr,
        txn: TxnId,
        sender: Contact,
        learn: bool,
        req: Request,
    ) {
        if !self.config.answer_requests {
            self.stats.ignored_read_only += 1;
            return;
        }
        for p in &mut self.plugins {
            if !p.allow(&from, &sender, &req) {
                self.stats.dropped_filtered += 1;
                return;
            }
        }
        self.stats.requests_in += 1;
        let method = match &req {
            Request::Custom { method, .. }
                if !self.plugins.iter().any(|p| {
                    method
                        .strip_prefix(p.namespace())
                        .is_some_and(|m| m.starts_with('.'))
                }) =>
            {
                "unknown"
            }
            r => r.method(),
        };
        crate::stats::count_method(&mut self.stats.rpc_in, method);
        let sender_id = sender.id;
        let k = self.config.k;
        let body = match req {
            Request::Ping => Some(Body::Response(Response::Pong)),
            Request::FindNode { target } => Some(Body::Response(Response::Nodes {
                nodes: self.closest_for(&target, &sender_id, k),
            })),
            Request::FindValue { key } => {
                let unix = self.unix_ms(now);
                let nodes = self.closest_for(&key, &sender_id, k);
                match self.store.get(&key) {
                    Some(record) if !record.is_expired(unix) => {
                        let mut record = record;
                        record.stored_at_ms = 0;
                        Some(Body::Response(Response::Value { record, nodes }))
                    }
                    _ => Some(Body::Response(Response::Nodes { nodes })),
                }
            }
            Request::Store { record } => Some(match self.store_inbound(now, sender_id, record) {
                Ok(()) => Body::Response(Response::Stored),
                Err(e) => {
                    self.stats.records_rejected += 1;
                    Body::Error(e)
                }
            }),
            Request::Custom { method, params } => {
                self.plugin_request(now, &sender, &method, &params)
            }
        };
        if let Some(body) = body {
            self.reply(from.clone(), txn, sender_id, body);
        }
        if self.config.accept_requesters && learn {
            self.observe_sender(now, &from, sender);
        }
    }

    fn closest_for(&self, target: &NodeId, requester: &NodeId, k: usize) -> Vec<Contact> {
        // Ask for k first (usually one bucket's walk); k + 1 only if the requester is among them.
        let mut v = self.routing.closest(target, k);
        if v.iter().any(|c| c.id == *requester) {
            v = self.routing.closest(target, k + 1);
            v.retain(|c| c.id != *requester);
            v.truncate(k);
        }
        v
    }

    fn store_inbound(
        &mut self,
        now: Instant,
        from: NodeId,
        mut record: Record,
    ) -> Result<(), RpcError> {
        let unix = self.unix_ms(now);
        if record.value.len() > self.config.max_value_len {
            return Err(RpcError::new(
                RpcError::INVALID_PARAMS,
                format!(
                    "value is {} bytes, limit {}",
                    record.value.len(),
                    self.config.max_value_len
                ),
            ));
        }
        if record.is_expired(unix) {
            return Err(RpcError::new(RpcError::REJECTED, "record expired"));
        }
        if record.published_at_ms > unix + self.config.max_clock_skew.as_millis() as u64 {
            return Err(RpcError::new(
                RpcError::REJECTED,
                "record published in the future",
            ));
        }
        self.validator
            .validate(&record)
            .map_err(|e| RpcError::new(RpcError::REJECTED, e.0))?;
        let max_expiry = record
            .published_at_ms
            .saturating_add(self.config.record_ttl.as_millis() as u64);
        record.expires_at_ms = record.expires_at_ms.min(max_expiry);
        record.stored_at_ms = unix;
        // A record naming no publisher is accounted to the node that sent it.
        record.publisher.get_or_insert(from);
        if let Some(existing) = self.store.get(&record.key) {
            if existing.value == record.value && existing.published_at_ms > record.published_at_ms {
                // The same value with an older publish time: keep ours, refresh when we saw it.
                record.published_at_ms = existing.published_at_ms;
                record.expires_at_ms = existing.expires_at_ms;
            } else if !existing.is_expired(unix) && existing.value != record.value {
                let pick = self
                    .validator
                    .select(&record.key, &[existing, record.clone()]);
                if pick == 0 {
                    return Err(RpcError::new(
                        RpcError::REJECTED,
                        "a better record is already stored",
                    ));
                }
            }
        }
        let key = record.key;
        match self.store.put(record) {
            Ok(_) => {
                self.stats.records_stored += 1;
                self.emit(Event::RecordStored { key, from });
                Ok(())
            }
            Err(e @ StoreError::Full { .. }) => {
                Err(RpcError::new(RpcError::STORE_FULL, e.to_string()))
            }
            Err(e) => Err(RpcError::new(RpcError::REJECTED, e.to_string())),
        }
    }

    fn plugin_request(
        &mut self,
        now: Instant,
        sender: &Contact,
        method: &str,
        params: &Bytes,
    ) -> Option<Body> {
        if matches!(method, "PING" | "FIND_NODE" | "FIND_VALUE" | "STORE") {
            // A codec hands core methods whose params did not parse over as `Custom`.
            return Some(Body::Error(RpcError::new(
                RpcError::INVALID_PARAMS,
                format!("invalid params for {method}"),
            )));
        }
        let ns = method.split_once('.').map(|(ns, _)| ns);
        let Some(idx) = ns.and_then(|ns| self.plugins.iter().position(|p| p.namespace() == ns))
        else {
            return Some(Body::Error(RpcError::new(
                RpcError::METHOD_NOT_FOUND,
                format!("method not found: {method}"),
            )));
        };
        let reply = self.with_plugin(now, idx, |p, cx| p.on_request(cx, sender, method, params));
        match reply {
            Reply::Result(result) => Some(Body::Response(Response::Custom {
                result,
                nodes: Vec::new(),
            })),
            Reply::WithNodes(result, nodes) => {
                Some(Body::Response(Response::Custom { result, nodes }))
            }
            Reply::Error(e) => Some(Body::Error(e)),
            Reply::Drop => None,
        }
    }

    fn with_plugin<R>(
        &mut self,
        now: Instant,
        idx: usize,
        f: impl FnOnce(&mut dyn Plugin, &mut PluginCx<'_>) -> R,
    ) -> R {
        let mut plugins = std::mem::take(&mut self.plugins);
        let mut actions = Vec::new();
        let unix_ms = self.unix_ms(now);
        let r = {
            let mut cx = PluginCx {
                now,
                unix_ms,
                local: &self.local,
                read_only: self.config.read_only,
                sent_to: &self.sent_to,
                rng: &mut self.rng,
                routing: &self.routing,
                store: &*self.store,
                actions: &mut actions,
                next_request: &mut self.next_request,
                next_query: &mut self.next_query,
                k: self.config.k,
            };
            f(&mut *plugins[idx], &mut cx)
        };
        self.plugins = plugins;
        self.apply_plugin_actions(now, idx, actions);
        r
    }

    fn apply_plugin_actions(&mut self, now: Instant, idx: usize, actions: Vec<Action>) {
        let namespace = self.plugins[idx].namespace();
        for a in actions {
            match a {
                Action::Send {
                    id,
                    to,
                    method,
                    params,
                } => {
                    let (addr, expected) = match to {
                        Dest::Contact(c) => (
                            c.addr_for(&self.config.transport_preference).cloned(),
                            Some(c.id),
                        ),
                        Dest::Addr(a) => (Some(a), None),
                    };
                    let req = Request::Custom { method, params };
                    let kind = PendingKind::Plugin { plugin: idx, id };
                    let sent = match addr {
                        Some(a) => self.send_request(now, a, expected, req, kind),
                        None => false,
                    };
                    if !sent {
                        self.with_plugin(now, idx, |p, cx| {
                            p.on_response(cx, id, PluginResponse::Timeout)
                        });
                    }
                }
                Action::Lookup {
                    id,
                    target,
                    method,
                    params,
                } => {
                    let lookup = self.make_lookup(now, target);
                    self.stats.queries_started += 1;
                    self.queries.insert(
                        id,
                        Query {
                            kind: QueryKind::PluginLookup {
                                plugin: idx,
                                method,
                                params,
                            },
                            started: now,
                            lookup: Some(lookup),
                        },
                    );
                    self.step_query(now, id);
                }
                Action::Complete { query, result } => {
                    let mine = matches!(
                        self.queries.get(&query),
                        Some(Query { kind: QueryKind::Command { plugin }, .. }) if *plugin == idx
                    );
                    if mine {
                        self.finish(now, query, QueryResult::Command(result));
                    }
                }
                Action::Emit { name, data } => self.emit(Event::Plugin {
                    namespace,
                    name,
                    data,
                }),
                Action::SetAddrs(addrs) => self.set_addrs(now, addrs),
                Action::SetReadOnly(ro) => self.set_read_only(now, ro),
            }
        }
    }

    fn handle_response(
        &mut self,
        now: Instant,
        from: PeerAddr,
        txn: TxnId,
        sender: Contact,
        read_only: bool,
        observed: Option<PeerAddr>,
        rsp: Result<Response, RpcError>,
    ) {
        let key = (txn, from);
        let Some(pending) = self.in_flight.get(&key) else {
            self.stats.dropped_unknown_txn += 1;
            trace!(peer = %key.1, "response to no request of ours");
            return;
        };
        if let Some(expected) = pending.expected.filter(|id| *id != sender.id) {
            if !self.config.accept_id_change || read_only {
                self.stats.dropped_wrong_peer += 1;
                return;
            }
            // Unsigned networks (Mainline): the node at that address now has another id
            // (implementations regenerate ids, e.g. for BEP42). Forget the old one.
            self.routing.remove(&expected);
            self.stats.id_changes += 1;
        }
        let Some(pending) = self.in_flight.remove(&key) else {
            return;
        };
        self.deadlines.remove(&pending.deadline);
        self.stats.responses_in += 1;
        let rtt = now.saturating_duration_since(pending.sent_at);
        // Karn: an answer to a retransmitted request may answer any copy; it says nothing of the RTT.
        if pending.sends == 1 {
            self.rtt.sample(rtt);
        }
        let from = key.1;
        self.address_proven(now, &from);
        if !read_only {
            self.observe_sender(now, &from, sender.clone());
            self.routing.record_rtt(&sender.id, rtt);
        }
        if let Some(seen) = observed {
            // Only answers to our own requests count: an unsolicited "you are at X" is noise.
            for idx in 0..self.plugins.len() {
                self.with_plugin(now, idx, |p, cx| p.on_observed(cx, &sender, &from, &seen));
            }
        }
        match pending.kind {
            PendingKind::Lookup { query, peer } => {
                self.lookup_response(now, query, peer, &sender, rsp)
            }
            PendingKind::Store { query } => self.store_result(now, query, rsp.err()),
            PendingKind::Ping { query } => {
                let r = match rsp {
                    Ok(_) => Ok(PingOutcome {
                        contact: sender,
                        rtt,
                    }),
                    Err(e) => Err(QueryError::Remote(e)),
                };
                self.finish(now, query, QueryResult::Ping(r));
            }
            PendingKind::BootstrapPing { query } => {
                let start = match self.queries.get_mut(&query) {
                    Some(Query {
                        kind: QueryKind::Bootstrap { pings, .. },
                        lookup,
                        ..
                    }) => {
                        *pings = pings.saturating_sub(1);
                        lookup.is_none()
                    }
                    _ => false,
                };
                if read_only {
                    // Still usable as a seed for our own lookup, though not kept in the table.
                    self.routing.insert(now, sender, false);
                }
                if start {
                    self.start_bootstrap_lookup(now, query);
                }
            }
            PendingKind::EvictPing { peer } => self.routing.on_ping_ok(&peer),
            // The deferred replies went out when the answer proved the address.
            PendingKind::Prove { addr } => self.guard.proof_answered(&addr),
            PendingKind::Call { query } => {
                let r = match rsp {
                    Ok(Response::Custom { result, .. }) => Ok(result),
                    Ok(_) => Err(QueryError::Remote(RpcError::new(
                        RpcError::INTERNAL,
                        "unexpected response type",
                    ))),
                    Err(e) => Err(QueryError::Remote(e)),
                };
                self.finish(now, query, QueryResult::Call(r));
            }
            PendingKind::Plugin { plugin, id } => {
                let r = match rsp {
                    Ok(Response::Custom { result, nodes }) => PluginResponse::Ok {
                        from: sender,
                        result,
                        nodes,
                    },
                    Ok(other) => PluginResponse::Ok {
                        from: sender,
                        result: Bytes::new(),
                        nodes: other.nodes().to_vec(),
                    },
                    Err(e) => PluginResponse::Remote(e),
                };
                self.with_plugin(now, plugin, |p, cx| p.on_response(cx, id, r));
            }
        }
        self.feed_starved(now);
    }

    fn lookup_response(
        &mut self,
        now: Instant,
        qid: QueryId,
        peer: NodeId,
        sender: &Contact,
        rsp: Result<Response, RpcError>,
    ) {
        let unix = self.unix_ms(now);
        let validator = self.validator.clone();
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        let Some(lookup) = q.lookup.as_mut() else {
            return;
        };
        let mut progress = None;
        let mut plugin_cb = None;
        match &rsp {
            Ok(r) => {
                // An answer under another id than the one asked (accepted with
                // `accept_id_change`) is that node's, at its own distance: the id asked for must
                // not count among the closest (Mainline tables list nodes under ids they never
                // answered with, e.g. the random ids of the mainline crate's pings).
                let peer = if sender.id == peer {
                    peer
                } else {
                    lookup.on_id_change(&peer, sender);
                    sender.id
                };
                lookup.on_success(&peer, r.nodes());
                match (&mut q.kind, r) {
                    (QueryKind::Get { key, found, .. }, Response::Value { record, .. }) => {
                        if record.key == *key
                            && !record.is_expired(unix)
                            && validator.validate(record).is_ok()
                        {
                            found.push(record.clone());
                            progress = Some(record.clone());
                        } else {
                            self.stats.values_rejected += 1;
                        }
                    }
                    (QueryKind::PluginLookup { plugin, .. }, Response::Custom { result, .. }) => {
                        plugin_cb = Some((*plugin, result.clone()));
                    }
                    _ => {}
                }
            }
            // An error answer: the peer is alive but told us nothing.
            Err(_) => lookup.on_success(&peer, &[]),
        }
        if let Some(record) = progress {
            self.emit(Event::GetProgress {
                id: qid,
                record,
                from: peer,
            });
        }
        if let Some((plugin, result)) = plugin_cb {
            self.with_plugin(now, plugin, |p, cx| {
                p.on_lookup_response(cx, qid, sender, &result)
            });
        }
        self.step_query(now, qid);
    }

    /// One storing node answered (`None`: stored) or failed.
    fn store_result(&mut self, now: Instant, qid: QueryId, err: Option<RpcError>) {
        let done = match self.queries.get_mut(&qid) {
            Some(Query {
                kind:
                    QueryKind::Put {
                        storing: Some((outstanding, stored, _)),
                        refused,
                        quorum,
                        ..
                    },
                ..
            }) => {
                *outstanding = outstanding.saturating_sub(1);
                match err {
                    None => *stored += 1,
                    // A node's own answer says more than a timeout.
                    Some(e)
                        if refused
                            .as_ref()
                            .is_none_or(|r| r.code == RpcError::INTERNAL) =>
                    {
                        *refused = Some(e);
                    }
                    Some(_) => {}
                }
                *outstanding == 0 || (*quorum > 0 && *stored >= *quorum)
            }
            _ => false,
        };
        if done {
            self.finish_put(now, qid);
        }
    }

    // ---- timeouts ----

    fn handle_timeout(&mut self, now: Instant) {
        // Requests past their hard deadline.
        while let Some((&dk, _)) = self.deadlines.iter().next() {
            if dk.0 > now {
                break;
            }
            let Some((_, key)) = self.deadlines.pop_first() else {
                break;
            };
            let Some(p) = self.in_flight.remove(&key) else {
                continue;
            };
            let Some(p) = self.retransmit(now, key, p) else {
                continue;
            };
            self.stats.timeouts += 1;
            if let Some(id) = p.expected {
                self.routing.on_failure(&id);
            }
            self.request_failed(now, p.kind);
        }
        // Lookups whose soft deadlines passed widen.
        let due: Vec<QueryId> = self
            .queries
            .iter()
            .filter(|(_, q)| q.lookup.as_ref().is_some_and(|l| l.has_waiting()))
            .map(|(id, _)| *id)
            .collect();
        for qid in due {
            self.step_query(now, qid);
        }
        // Plugin timers.
        for idx in 0..self.plugins.len() {
            if self.plugins[idx].next_timeout().is_some_and(|t| t <= now) {
                self.with_plugin(now, idx, |p, cx| p.on_timeout(cx));
            }
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now + self.config.maintenance_interval;
            self.maintenance(now);
        }
        if self.rejoin_at.is_some_and(|t| t <= now) {
            self.rejoin_at = None;
            self.rejoin(now);
        }
        self.watch_alone(now);
        self.feed_starved(now);
    }

    /// Schedules a join when the routing table is empty and there is somewhere to join through,
    /// or a lookup of our own id when it holds fewer than k contacts (a join cut short by loss,
    /// or made through a seed that had not joined yet, leaves a node on an island). The wait
    /// doubles from [`Config::rejoin_min`] to [`Config::rejoin_max`] while the table stays thin.
    fn watch_alone(&mut self, now: Instant) {
        if self.routing.len() >= self.config.k {
            self.rejoin_wait = self.config.rejoin_min;
            self.rejoin_at = None;
            return;
        }
        let somewhere =
            !(self.routing.is_empty() && self.join_addrs.is_empty() && self.last_known.is_empty());
        if self.rejoin_at.is_none() && somewhere {
            self.rejoin_at = Some(now + self.rejoin_wait);
        }
    }

    /// Joins again through the bootstrap addresses and the contacts last known when the table
    /// is empty, or looks up our own id when it is thin; nothing while a join runs.
    fn rejoin(&mut self, now: Instant) {
        if self.routing.len() >= self.config.k {
            return;
        }
        let joining = self.queries.values().any(|q| {
            matches!(q.kind, QueryKind::Bootstrap { .. })
                || (matches!(q.kind, QueryKind::Refresh)
                    && q.lookup
                        .as_ref()
                        .is_some_and(|l| l.target() == self.local.id))
        });
        if joining {
            return;
        }
        self.rejoin_wait = (self.rejoin_wait * 2).min(self.config.rejoin_max);
        if !self.routing.is_empty() {
            let me = self.local.id;
            let lookup = self.make_lookup(now, me);
            if let Ok(qid) = self.new_query(now, QueryKind::Refresh, Some(lookup)) {
                self.step_query(now, qid);
            }
            return;
        }
        let mut addrs = self.join_addrs.clone();
        for a in &self.last_known {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        if addrs.is_empty() {
            return;
        }
        self.stats.rejoins += 1;
        debug!(addrs = addrs.len(), "routing table empty: joining again");
        let _ = self.start_bootstrap(now, &addrs);
    }

    /// Keeps the addresses of a few of the closest contacts, to join again through them should
    /// the table ever empty.
    fn remember_contacts(&mut self) {
        let me = self.local.id;
        let closest = self.routing.closest(&me, REJOIN_ADDRS);
        if closest.is_empty() {
            return;
        }
        self.last_known = closest
            .iter()
            .filter_map(|c| c.addr_for(&self.config.transport_preference).cloned())
            .collect();
    }

    fn request_failed(&mut self, now: Instant, kind: PendingKind) {
        match kind {
            PendingKind::Lookup { query, peer } => {
                if let Some(l) = self.queries.get_mut(&query).and_then(|q| q.lookup.as_mut()) {
                    l.on_failure(&peer);
                }
                self.step_query(now, query);
            }
            PendingKind::Store { query } => self.store_result(
                now,
                query,
                Some(RpcError::new(RpcError::INTERNAL, "timed out")),
            ),
            PendingKind::Ping { query } => {
                self.finish(now, query, QueryResult::Ping(Err(QueryError::Timeout)))
            }
            PendingKind::BootstrapPing { query } => {
                let start = match self.queries.get_mut(&query) {
                    Some(Query {
                        kind: QueryKind::Bootstrap { pings, .. },
                        lookup,
                        ..
                    }) => {
                        *pings = pings.saturating_sub(1);
                        *pings == 0 && lookup.is_none()
                    }
                    _ => false,
                };
                if start {
                    self.start_bootstrap_lookup(now, query);
                }
            }
            PendingKind::EvictPing { .. } => {}
            PendingKind::Prove { addr } => {
                if self.guard.proof_failed(&addr) {
                    let n = self.guard.take(&addr).len() as u64;
                    self.stats.replies_deferred_dropped += n;
                }
            }
            PendingKind::Call { query } => {
                self.finish(now, query, QueryResult::Call(Err(QueryError::Timeout)))
            }
            PendingKind::Plugin { plugin, id } => {
                self.with_plugin(now, plugin, |p, cx| {
                    p.on_response(cx, id, PluginResponse::Timeout)
                });
            }
        }
    }

    fn feed_starved(&mut self, now: Instant) {
        let mut turns = self.starved.len();
        while self.in_flight.len() < self.config.max_in_flight && turns > 0 {
            let Some(qid) = self.starved.pop_front() else {
                break;
            };
            turns -= 1;
            self.step_query_inner(now, qid, true);
        }
    }

    fn maintenance(&mut self, now: Instant) {
        let unix = self.unix_ms(now);
        let expired = self.store.remove_expired(unix);
        self.stats.records_expired += expired as u64;
        self.remember_contacts();
        // A thin table (fewer than k contacts) looks for more with a self-lookup.
        if self.routing.len() < self.config.k && !self.routing.is_empty() {
            let me = self.local.id;
            let lookup = self.make_lookup(now, me);
            if let Ok(qid) = self.new_query(now, QueryKind::Refresh, Some(lookup)) {
                self.step_query(now, qid);
            }
        }
        // Bucket refresh.
        for idx in self
            .routing
            .stale_buckets(now, self.config.refresh_interval)
        {
            let target = self.local.id.random_in_bucket(idx, &mut self.rng);
            let lookup = self.make_lookup(now, target);
            if let Ok(qid) = self.new_query(now, QueryKind::Refresh, Some(lookup)) {
                self.step_query(now, qid);
            }
        }
        // Republish our own records before they expire, with a fresh publish time.
        let due: Vec<Key> = self
            .own_records
            .iter()
            .filter(|(_, (t, _))| {
                now.saturating_duration_since(*t) >= self.config.republish_interval
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some((_, mut r)) = self.own_records.remove(&key) else {
                continue;
            };
            r.published_at_ms = unix;
            r.expires_at_ms = unix + self.config.record_ttl.as_millis() as u64;
            // If the query table is full, try again at the next tick.
            let t = if self.put_record(now, r.clone()).is_ok() {
                now
            } else {
                now - self.config.republish_interval
            };
            self.own_records.insert(key, (t, r));
        }
        // Re-replicate what we hold to the current k closest, keeping the original publish time.
        // A record some other holder re-stored here within the interval is skipped: that holder
        // is replicating it (so in a stable network one holder per record does the work).
        if now >= self.next_replicate && self.replicate_queue.is_empty() {
            self.next_replicate = now + self.config.replicate_interval;
            let fresh = unix.saturating_sub(self.config.replicate_interval.as_millis() as u64);
            self.replicate_queue = self
                .store
                .keys()
                .into_iter()
                .filter(|k| {
                    self.store
                        .get(k)
                        .is_some_and(|r| r.stored_at_ms <= fresh && !r.is_expired(unix))
                })
                .collect();
        }
        // A quarter of the free query slots per tick.
        let room = self.config.max_queries.saturating_sub(self.queries.len()) / 4;
        for _ in 0..room.max(1) {
            let Some(key) = self.replicate_queue.pop_front() else {
                break;
            };
            if let Some(mut r) = self.store.get(&key) {
                if !r.is_expired(unix) {
                    r.stored_at_ms = 0;
                    if self.put_record(now, r).is_err() {
                        self.replicate_queue.push_front(key);
                        break;
                    }
                }
            }
        }
    }

    // ---- query progress ----

    fn step_query(&mut self, now: Instant, qid: QueryId) {
        self.step_query_inner(now, qid, false);
    }

    /// Advances a query. While queries wait for in-flight room (`starved`), others queue behind
    /// them instead of taking freed slots, so no query starves; `from_queue` marks the query
    /// being served from the front of that queue.
    fn step_query_inner(&mut self, now: Instant, qid: QueryId, from_queue: bool) {
        let soft = self.soft_timeout();
        let mut room = self
            .config
            .max_in_flight
            .saturating_sub(self.in_flight.len());
        if !from_queue && !self.starved.is_empty() {
            room = 0;
        }
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        // Early return of a get that has its quorum.
        if let QueryKind::Get { quorum, found, .. } = &q.kind {
            if *quorum > 0 && found.len() >= *quorum {
                self.finish_get(now, qid);
                return;
            }
        }
        if let QueryKind::Put {
            storing: Some(_), ..
        } = &q.kind
        {
            return;
        }
        let Some(lookup) = q.lookup.as_mut() else {
            return;
        };
        if lookup.is_finished(now) {
            return self.lookup_finished(now, qid);
        }
        // A peer whose own RTT is known gets a soft deadline from it (twice its smoothed RTT),
        // never longer than the network-wide one; others get the network-wide one.
        let routing = &self.routing;
        let min_soft = self.config.min_soft_timeout;
        let soft_for = |c: &Contact| match routing.get(&c.id) {
            Some(e) if e.srtt_us > 0 => (Duration::from_micros(u64::from(e.srtt_us)) * 2)
                .clamp(min_soft, soft.max(min_soft)),
            _ => soft,
        };
        let asks = lookup.next_with(now, soft_for, room);
        let target = lookup.target();
        if room == 0 && !self.starved.contains(&qid) {
            self.starved.push_back(qid);
        }
        let req = match &q.kind {
            QueryKind::Get { key, .. } => Request::FindValue { key: *key },
            QueryKind::PluginLookup { method, params, .. } => Request::Custom {
                method: method.clone(),
                params: params.clone(),
            },
            _ => Request::FindNode { target },
        };
        let mut gave_up = false;
        for c in asks {
            let peer = c.id;
            if !self.send_to_contact(
                now,
                &c,
                req.clone(),
                PendingKind::Lookup { query: qid, peer },
            ) {
                // No transport of ours reaches it (or no room to send).
                gave_up = true;
                if let Some(l) = self.queries.get_mut(&qid).and_then(|q| q.lookup.as_mut()) {
                    l.give_up(&peer);
                }
            }
        }
        if self
            .queries
            .get(&qid)
            .and_then(|q| q.lookup.as_ref())
            .is_some_and(|l| l.is_finished(now))
        {
            self.lookup_finished(now, qid);
        } else if gave_up {
            // Candidates given up on free their slots: ask the next ones now, or a lookup whose
            // every ask failed would wait forever (nothing in flight to answer or time out).
            // Each round gives up at least one candidate, so this ends.
            self.step_query_inner(now, qid, from_queue);
        }
    }

    fn lookup_finished(&mut self, now: Instant, qid: QueryId) {
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        let Some(lookup) = q.lookup.as_ref() else {
            return;
        };
        let outcome = LookupOutcome {
            target: lookup.target(),
            closest: lookup.closest_succeeded(),
            stats: lookup.finish_stats(),
            elapsed: now.saturating_duration_since(q.started),
        };
        match &mut q.kind {
            QueryKind::FindNode => self.finish(now, qid, QueryResult::FindNode(Ok(outcome))),
            QueryKind::Refresh => self.finish(now, qid, QueryResult::Refresh(outcome)),
            QueryKind::Bootstrap { refresh_left, .. } => {
                if outcome.closest.is_empty() && self.routing.is_empty() {
                    self.finish(now, qid, QueryResult::Bootstrap(Err(QueryError::NoPeers)));
                    return self.watch_alone(now);
                }
                // Optionally refresh the farthest non-full buckets, each with its own lookup.
                let mut n = *refresh_left;
                *refresh_left = 0;
                let sizes = self.routing.bucket_sizes();
                let k = self.config.k;
                let mut targets = Vec::new();
                for idx in (0..crate::id::ID_BITS).rev() {
                    if n == 0 {
                        break;
                    }
                    let full = sizes.iter().any(|(i, e, _)| *i == idx && *e >= k);
                    if !full {
                        targets.push(self.local.id.random_in_bucket(idx, &mut self.rng));
                        n -= 1;
                    }
                }
                for t in targets {
                    let lookup = self.make_lookup(now, t);
                    if let Ok(r) = self.new_query(now, QueryKind::Refresh, Some(lookup)) {
                        self.step_query(now, r);
                    }
                }
                self.remember_contacts();
                self.finish(now, qid, QueryResult::Bootstrap(Ok(outcome)));
                self.watch_alone(now);
            }
            QueryKind::Get { .. } => self.finish_get(now, qid),
            QueryKind::PluginLookup { plugin, .. } => {
                let plugin = *plugin;
                let closest = outcome.closest.clone();
                let stats = outcome.stats.clone();
                self.with_plugin(now, plugin, |p, cx| {
                    p.on_lookup_done(cx, qid, &closest, &stats)
                });
                self.finish(now, qid, QueryResult::PluginLookup(outcome));
            }
            QueryKind::Put {
                record, storing, ..
            } => {
                let targets = outcome.closest.clone();
                let record = record.clone();
                // Store locally too if we are among the k closest.
                let me = self.local.id.distance(&record.key);
                // A read-only node keeps nothing for others: it may leave at any time.
                let local = !self.config.read_only
                    && (targets.len() < self.config.k
                        || targets
                            .last()
                            .is_some_and(|c| me < c.id.distance(&record.key)));
                *storing = Some((targets.len(), 0, targets.len() + usize::from(local)));
                let mut local_ok = false;
                if local {
                    let id = self.local.id;
                    local_ok = self.store_local(now, id, record.clone());
                }
                if let Some(Query {
                    kind:
                        QueryKind::Put {
                            storing: Some((_, stored, _)),
                            ..
                        },
                    ..
                }) = self.queries.get_mut(&qid)
                {
                    *stored += usize::from(local_ok);
                }
                let mut sent = 0;
                let total = targets.len();
                for c in &targets {
                    if self.send_to_contact(
                        now,
                        c,
                        Request::Store {
                            record: record.clone(),
                        },
                        PendingKind::Store { query: qid },
                    ) {
                        sent += 1;
                    }
                }
                if let Some(Query {
                    kind:
                        QueryKind::Put {
                            storing: Some((outstanding, _, _)),
                            ..
                        },
                    ..
                }) = self.queries.get_mut(&qid)
                {
                    *outstanding = sent;
                }
                debug!(key = %record.key, targets = total, "put: storing at the closest nodes");
                let quorum_met = matches!(
                    self.queries.get(&qid),
                    Some(Query {
                        kind: QueryKind::Put {
                            storing: Some((_, stored, _)),
                            quorum,
                            ..
                        },
                        ..
                    }) if *quorum > 0 && stored >= quorum
                );
                if sent == 0 || quorum_met {
                    self.finish_put(now, qid);
                }
            }
            QueryKind::Ping | QueryKind::Call | QueryKind::Command { .. } => {}
        }
    }

    fn store_local(&mut self, now: Instant, from: NodeId, record: Record) -> bool {
        self.store_inbound(now, from, record).is_ok()
    }

    fn finish_get(&mut self, now: Instant, qid: QueryId) {
        let Some(q) = self.queries.get(&qid) else {
            return;
        };
        let QueryKind::Get { key, found, .. } = &q.kind else {
            return;
        };
        let stats = q
            .lookup
            .as_ref()
            .map(Lookup::finish_stats)
            .unwrap_or_default();
        let elapsed = now.saturating_duration_since(q.started);
        let alone = || {
            q.lookup
                .as_ref()
                .is_none_or(|l| l.closest_succeeded().is_empty())
        };
        let r = if found.is_empty() && alone() {
            // Nobody answered: "not found" would claim more than is known.
            Err(QueryError::NoPeers)
        } else if found.is_empty() {
            Err(QueryError::NotFound)
        } else {
            let best = self.validator.select(key, found);
            Ok(GetOutcome {
                record: found[best.min(found.len() - 1)].clone(),
                answers: found.len(),
                stats,
                elapsed,
            })
        };
        self.finish(now, qid, QueryResult::Get(r));
    }

    fn finish_put(&mut self, now: Instant, qid: QueryId) {
        let Some(q) = self.queries.get(&qid) else {
            return;
        };
        let QueryKind::Put {
            record,
            storing,
            refused,
            ..
        } = &q.kind
        else {
            return;
        };
        let (_, stored, tried) = storing.unwrap_or((0, 0, 0));
        let stats = q
            .lookup
            .as_ref()
            .map(Lookup::finish_stats)
            .unwrap_or_default();
        let r = if stored == 0 {
            // Say why when a node said why (store full, record rejected).
            Err(match refused {
                Some(e) if e.code != RpcError::INTERNAL => QueryError::Remote(e.clone()),
                _ => QueryError::NotStored,
            })
        } else {
            Ok(PutOutcome {
                key: record.key,
                stored,
                tried,
                stats,
                elapsed: now.saturating_duration_since(q.started),
            })
        };
        self.finish(now, qid, QueryResult::Put(r));
    }

    fn finish(&mut self, now: Instant, qid: QueryId, result: QueryResult) {
        if let Some(q) = self.queries.remove(&qid) {
            self.stats.queries_done += 1;
            self.stats
                .query_latency
                .entry(q.kind.name())
                .or_default()
                .record(now.saturating_duration_since(q.started));
            self.starved.retain(|q| *q != qid);
            self.emit(Event::QueryDone { id: qid, result });
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::unwrap_used)] // tests pick an arbitrary base instant
mod tests {
    use super::*;
    use crate::record::Rejected;

    /// The default config with a wall clock that reads `epoch_ms` at `base`.
    fn virtual_config(base: Instant, epoch_ms: u64) -> Config {
        Config {
            wall_clock: Arc::new(crate::config::VirtualClock { base, epoch_ms }),
            ..Config::default()
        }
    }

    fn node(b: u8, cfg: Config) -> Node {
        Node::builder(cfg)
            .id(NodeId([b; 20]))
            .addrs(vec![PeerAddr::Mem(u64::from(b))])
            .build(Instant::now())
            .unwrap()
    }

    fn sends(n: &mut Node) -> Vec<(PeerAddr, Message)> {
        let mut v = Vec::new();
        while let Some(o) = n.poll_output() {
            if let Output::Send { to, msg } = o {
                v.push((to, msg));
            }
        }
        v
    }

    /// Delivers a STORE of `rec` from `peer` (at `mem://2`) to `a` and returns the answer.
    fn store_from(a: &mut Node, now: Instant, peer: &Contact, rec: Record) -> Result<(), RpcError> {
        let body = Body::Request(Request::Store { record: rec });
        let msg = Message {
            txn: TxnId::from_bytes(vec![7]),
            sender: peer.clone(),
            recipient: None,
            read_only: false,
            observed: None,
            body,
        };
        a.handle_input(
            now,
            Input::Message {
                from: PeerAddr::Mem(2),
                msg,
            },
        );
        match sends(a).pop().map(|(_, m)| m.body) {
            Some(Body::Response(Response::Stored)) => Ok(()),
            Some(Body::Error(e)) => Err(e),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn deliver(a: &mut Node, now: Instant, from: u64, msg: Message) {
        a.handle_input(
            now,
            Input::Message {
                from: PeerAddr::Mem(from),
                msg,
            },
        );
    }

    fn answer(msg: &Message, from: &Contact, body: Body) -> Message {
        Message {
            txn: msg.txn.clone(),
            sender: from.clone(),
            recipient: Some(msg.sender.id),
            read_only: false,
            observed: None,
            body,
        }
    }

    #[test]
    fn a_lookup_skips_contacts_no_transport_reaches_and_asks_the_next() {
        // This node speaks only mem://; its closest contacts to the target speak only ws://.
        let now = Instant::now();
        let cfg = Config {
            transport_preference: vec![crate::addr::TransportKind::Mem],
            ..Config::default()
        };
        let mut a = node(1, cfg);
        for b in 10..17u8 {
            let ws = format!("ws://127.0.0.1:{}/kad", 4000 + u16::from(b));
            a.add_contact(now, Contact::new(NodeId([b; 20]), ws.parse().unwrap()));
        }
        a.add_contact(now, Contact::new(NodeId([40; 20]), PeerAddr::Mem(40)));
        let _ = sends(&mut a);
        a.find_node(now, NodeId([10; 20])).unwrap();
        let asked: Vec<PeerAddr> = sends(&mut a).into_iter().map(|(to, _)| to).collect();
        assert_eq!(
            asked,
            vec![PeerAddr::Mem(40)],
            "the reachable contact is asked at once"
        );
    }

    #[test]
    fn a_changed_id_is_accepted_from_the_address_asked_only_when_configured() {
        let now = Instant::now();
        let cfg = Config {
            accept_id_change: true,
            ..Config::default()
        };
        let mut a = node(1, cfg);
        let old = Contact::new(NodeId([2; 20]), PeerAddr::Mem(2));
        a.add_contact(now, old.clone());
        let q = a.call(now, &old, "x.Y", Bytes::new()).unwrap();
        let (_, req) = sends(&mut a).pop().unwrap();
        let renamed = Contact::new(NodeId([3; 20]), PeerAddr::Mem(2));
        let empty = Body::Response(Response::Custom {
            result: Bytes::new(),
            nodes: vec![],
        });
        deliver(&mut a, now, 2, answer(&req, &renamed, empty));
        let done = std::iter::from_fn(|| a.poll_output()).any(|o| matches!(o, Output::Event(Event::QueryDone { id, result: QueryResult::Call(Ok(_)) }) if id == q));
        assert!(done, "the answer completes the call");
        assert_eq!((a.stats().id_changes, a.stats().dropped_wrong_peer), (1, 0));
        assert!(
            a.routing_table().get(&old.id).is_none(),
            "the old id is forgotten"
        );
        assert!(
            a.routing_table().get(&renamed.id).is_some(),
            "the new one is learned"
        );
    }

    #[test]
    fn responses_must_come_from_the_peer_asked() {
        let now = Instant::now();
        let mut a = node(1, Config::default());
        let b = Contact::new(NodeId([2; 20]), PeerAddr::Mem(2));
        let q = a.call(now, &b, "x.Y", Bytes::new()).unwrap();
        let (to, req) = sends(&mut a).pop().unwrap();
        assert_eq!(to, PeerAddr::Mem(2));
        // From the right address but claiming another id.
        let impostor = Contact::new(NodeId([3; 20]), PeerAddr::Mem(2));
        let empty = Body::Response(Response::Custom {
            result: Bytes::new(),
            nodes: vec![],
        });
        let rsp = answer(&req, &impostor, empty.clone());
        deliver(&mut a, now, 2, rsp);
        assert_eq!(a.stats().dropped_wrong_peer, 1);
        // The right id from another address.
        let rsp = answer(&req, &b, empty);
        deliver(&mut a, now, 9, rsp.clone());
        assert_eq!(a.stats().dropped_unknown_txn, 1);
        // The real answer still completes the call; a replay of it is then unknown.
        deliver(&mut a, now, 2, rsp.clone());
        let done = std::iter::from_fn(|| a.poll_output()).any(|o| matches!(o, Output::Event(Event::QueryDone { id, result: QueryResult::Call(Ok(_)) }) if id == q));
        assert!(done);
        deliver(&mut a, now, 2, rsp);
        assert_eq!(a.stats().dropped_unknown_txn, 2);
        // Undecodable bytes are counted too.
        a.handle_input(
            now,
            Input::Datagram {
                from: PeerAddr::Mem(2),
                data: Bytes::from_static(b"\xff\x00garbage"),
            },
        );
        assert_eq!(a.stats().dropped_malformed, 1);
    }

    struct NoBad;
    impl RecordValidator for NoBad {
        fn validate(&self, r: &Record) -> Result<(), Rejected> {
            if r.value.starts_with(b"bad") {
                Err(Rejected("value starts with bad".into()))
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn inbound_store_is_validated() {
        let now = Instant::now();
        let cfg = Config {
            max_value_len: 16,
            ..virtual_config(now, 1_000_000)
        };
        let mut a = Node::builder(cfg)
            .id(NodeId([1; 20]))
            .addrs(vec![PeerAddr::Mem(1)])
            .validator(Arc::new(NoBad))
            .build(now)
            .unwrap();
        let peer = Contact::new(NodeId([2; 20]), PeerAddr::Mem(2));
        let key = NodeId([7; 20]);
        let store = |a: &mut Node, rec: Record| store_from(a, now, &peer, rec);
        let day = 86_400_000;
        assert_eq!(
            store(
                &mut a,
                Record::new(key, "x".repeat(17), None, 1_000_000, day)
            )
            .unwrap_err()
            .code,
            RpcError::INVALID_PARAMS
        );
        assert_eq!(
            store(&mut a, Record::new(key, "bad value", None, 1_000_000, day))
                .unwrap_err()
                .code,
            RpcError::REJECTED
        );
        assert!(
            store(&mut a, Record::new(key, "old", None, 0, 10))
                .unwrap_err()
                .message
                .contains("expired")
        );
        assert!(
            store(
                &mut a,
                Record::new(key, "future", None, 1_000_000 + 3_600_000, day)
            )
            .unwrap_err()
            .message
            .contains("future")
        );
        // A record that asks to live longer than our TTL is clipped to it.
        store(&mut a, Record::new(key, "v2", None, 1_000_000, 10 * day)).unwrap();
        assert_eq!(a.store().get(&key).unwrap().expires_at_ms, 1_000_000 + day);
        // The default validator keeps the most recently published value.
        assert!(store(&mut a, Record::new(key, "v1", None, 999_000, day)).is_err());
        store(&mut a, Record::new(key, "v3", None, 1_000_500, day)).unwrap();
        assert_eq!(&a.store().get(&key).unwrap().value[..], b"v3");
        assert_eq!(a.stats().records_stored, 2);
        assert_eq!(a.stats().records_rejected, 5);
        // User errors name the field and the limit.
        let e = a.put(now, key, Bytes::from(vec![0; 17])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "value is 17 bytes, larger than max_value_len = 16"
        );
    }

    #[test]
    fn query_and_in_flight_limits_hold() {
        let now = Instant::now();
        let cfg = Config {
            max_queries: 2,
            max_in_flight: 3,
            ..Config::default()
        };
        let mut a = node(1, cfg);
        for i in 2..40u8 {
            a.add_contact(
                now,
                Contact::new(NodeId([i; 20]), PeerAddr::Mem(u64::from(i))),
            );
        }
        let q1 = a.find_node(now, NodeId([9; 20])).unwrap();
        let q2 = a.find_node(now, NodeId([19; 20])).unwrap();
        assert_eq!(
            a.find_node(now, NodeId([29; 20])).unwrap_err(),
            CommandError::TooManyQueries { limit: 2 }
        );
        assert!(a.in_flight() <= 3);
        // Time passes with no answers: both lookups end (sharing 3 in-flight slots), and the
        // in-flight table never exceeds its limit.
        let mut t = now;
        let mut done = Vec::new();
        for _ in 0..20_000 {
            t += Duration::from_millis(50);
            a.handle_input(t, Input::Timeout);
            while let Some(o) = a.poll_output() {
                if let Output::Event(Event::QueryDone {
                    id,
                    result: QueryResult::FindNode(Ok(r)),
                }) = o
                {
                    assert!(r.closest.is_empty());
                    done.push(id);
                }
            }
            assert!(a.in_flight() <= 3);
            if done.len() == 2 {
                break;
            }
        }
        assert_eq!(done.len(), 2);
        assert!(done.contains(&q1) && done.contains(&q2));
        assert!(a.stats().timeouts > 0);
    }

    #[test]
    fn held_records_are_replicated_hourly_unless_recently_restored() {
        let t0 = Instant::now();
        let mut a = node(1, virtual_config(t0, 1_000_000_000));
        for i in 2..10u8 {
            a.add_contact(
                t0,
                Contact::new(NodeId([i; 20]), PeerAddr::Mem(u64::from(i))),
            );
        }
        let peer = Contact::new(NodeId([2; 20]), PeerAddr::Mem(2));
        let store = |a: &mut Node, now: Instant, key: NodeId| {
            let rec = Record::new(key, "v", Some(peer.id), a.unix_ms(now), 86_400_000);
            store_from(a, now, &peer, rec).unwrap();
        };
        let (k1, k2) = (NodeId([0x71; 20]), NodeId([0x72; 20]));
        store(&mut a, t0, k1);
        store(&mut a, t0, k2);
        // k2 is stored again half an hour later by another holder replicating it.
        store(&mut a, t0 + Duration::from_secs(1800), k2);
        // Drive maintenance past the hour; watch which keys our puts look up.
        let mut looked_up = std::collections::BTreeSet::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(3600 + 180) {
            t += Duration::from_secs(30);
            a.handle_input(t, Input::Timeout);
            for (_, m) in sends(&mut a) {
                if let Body::Request(Request::FindNode { target }) = m.body {
                    looked_up.insert(target);
                }
            }
        }
        assert!(
            looked_up.contains(&k1),
            "k1, stored an hour ago, is re-replicated"
        );
        assert!(
            !looked_up.contains(&k2),
            "k2 was re-stored within the hour: another holder replicates it"
        );
    }

    #[test]
    fn a_ping_without_recipient_is_answered_but_teaches_nothing() {
        let t0 = Instant::now();
        let mut a = node(1, Config::default());
        let peer = Contact::new(NodeId([0x42; 20]), PeerAddr::Mem(42));
        for (recipient, learned) in [(None, false), (Some(a.id()), true)] {
            let msg = Message {
                txn: TxnId::from_bytes(vec![1]),
                sender: peer.clone(),
                recipient,
                read_only: false,
                observed: None,
                body: Body::Request(Request::Ping),
            };
            deliver(&mut a, t0, 42, msg);
            let out = sends(&mut a);
            assert!(matches!(
                out[..],
                [(
                    _,
                    Message {
                        body: Body::Response(Response::Pong),
                        ..
                    }
                )]
            ));
            // A null-recipient PING may be a third party's replay: no routing-table change.
            assert_eq!(a.routing_table().get(&peer.id).is_some(), learned);
        }
    }

    #[test]
    fn a_full_bucket_pings_its_stalest_contact_before_evicting_it() {
        let t0 = Instant::now();
        let mut a = node(
            1,
            Config {
                k: 1,
                ..Config::default()
            },
        );
        // 0x81.. and 0x82.. fall in the same bucket (159) of 0x01..: with k = 1 it holds one.
        let old = Contact::new(NodeId([0x81; 20]), PeerAddr::Mem(81));
        let new = Contact::new(NodeId([0x82; 20]), PeerAddr::Mem(82));
        let ping_from = |a: &mut Node, now: Instant, c: &Contact| {
            let PeerAddr::Mem(from) = c.addrs[0] else {
                unreachable!()
            };
            let body = Body::Request(Request::Ping);
            let msg = Message {
                txn: TxnId::from_bytes(vec![5]),
                sender: c.clone(),
                recipient: Some(a.id()),
                read_only: false,
                observed: None,
                body,
            };
            deliver(a, now, from, msg);
            sends(a)
        };
        ping_from(&mut a, t0, &old);
        assert!(a.routing_table().get(&old.id).is_some());
        // Twenty minutes later `old` is questionable; a newcomer makes the node ping it.
        let t1 = t0 + Duration::from_secs(20 * 60);
        let out = ping_from(&mut a, t1, &new);
        let pings: Vec<_> = out
            .iter()
            .filter(|(_, m)| matches!(m.body, Body::Request(Request::Ping)))
            .collect();
        assert_eq!(pings.len(), 1);
        assert_eq!(pings[0].0, PeerAddr::Mem(81));
        assert!(
            a.routing_table().get(&new.id).is_none(),
            "the newcomer waits in the replacement cache"
        );
        // `old` answers: it stays, the newcomer stays a replacement.
        let pong = answer(&pings[0].1, &old, Body::Response(Response::Pong));
        deliver(&mut a, t1, 81, pong);
        assert!(
            a.routing_table().get(&old.id).is_some() && a.routing_table().get(&new.id).is_none()
        );
        // Later it goes silent: the next newcomer's ping times out twice (max_failures), and the
        // freshest replacement takes its place.
        let t2 = t1 + Duration::from_secs(20 * 60);
        let out = ping_from(&mut a, t2, &new);
        assert!(
            out.iter().any(|(to, m)| *to == PeerAddr::Mem(81)
                && matches!(m.body, Body::Request(Request::Ping)))
        );
        let mut t = t2;
        for _ in 0..200 {
            t += Duration::from_millis(100);
            a.handle_input(t, Input::Timeout);
            // Each further request from `new` re-offers it, which pings `old` again if needed.
            ping_from(&mut a, t, &new);
            if a.routing_table().get(&new.id).is_some() {
                break;
            }
        }
        assert!(a.routing_table().get(&old.id).is_none());
        assert!(a.routing_table().get(&new.id).is_some());
        assert!(a.stats().timeouts >= 2);
    }

    #[test]
    fn bootstrap_refresh_looks_up_the_farthest_non_full_buckets() {
        let t0 = Instant::now();
        let mut a = node(
            1,
            Config {
                bootstrap_refresh: 3,
                ..Config::default()
            },
        );
        let seed = Contact::new(NodeId([0x80; 20]), PeerAddr::Mem(80));
        a.bootstrap_with(t0, vec![seed.clone()]).unwrap();
        let (_, req) = sends(&mut a).pop().unwrap();
        deliver(
            &mut a,
            t0,
            80,
            answer(
                &req,
                &seed,
                Body::Response(Response::Nodes { nodes: vec![] }),
            ),
        );
        // The self-lookup is done; three refresh lookups start, for random ids in buckets 159,
        // 158 and 157 (none of them full), and they ask the only contact there is.
        // The seed answers every lookup request, naming nobody.
        let mut done = Vec::new();
        let mut targets = Vec::new();
        let mut t = t0;
        for _ in 0..20 {
            while let Some(o) = a.poll_output() {
                match o {
                    Output::Event(Event::QueryDone { result, .. }) => done.push(result),
                    Output::Send { msg, .. } => {
                        if let Body::Request(Request::FindNode { target }) = msg.body {
                            if target != a.id() {
                                targets.push(target);
                            }
                            let empty = Body::Response(Response::Nodes { nodes: vec![] });
                            deliver(&mut a, t, 80, answer(&msg, &seed, empty));
                        }
                    }
                    _ => {}
                }
            }
            t += Duration::from_millis(100);
            a.handle_input(t, Input::Timeout);
        }
        assert!(matches!(done[0], QueryResult::Bootstrap(Ok(_))), "{done:?}");
        // (A table this thin also gets lookups of the node's own id, with backoff: not counted.)
        let me = a.id();
        let refreshes: Vec<_> = done
            .iter()
            .filter_map(|r| match r {
                QueryResult::Refresh(o) if o.target != me => Some(o.target),
                _ => None,
            })
            .collect();
        assert_eq!(refreshes.len(), 3, "{done:?}");
        let mut buckets: Vec<_> = refreshes
            .iter()
            .map(|t| a.id().bucket_index(t).unwrap())
            .collect();
        buckets.sort_unstable();
        assert_eq!(buckets, vec![157, 158, 159]);
        assert_eq!(targets.len(), 3, "one request per refresh");
    }
}
