//! The tokio runtime: one actor task owns the [`Node`]; [`Dht`] is a cheap `Clone` handle.
//!
//! Time is read through tokio (`tokio::time::Instant`), so tests with paused time work.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tracing::{Instrument as _, Span, debug, debug_span, info, info_span, trace};

use crate::addr::{Contact, PeerAddr, TransportKind};
use crate::config::ConfigError;
use crate::id::{Key, NodeId};
use crate::node::{
    CommandError, Event, GetOutcome, Input, LookupOutcome, NodeBuilder, Output, PingOutcome,
    PutOutcome, QueryError, QueryId, QueryResult,
};
use crate::plugin::PluginData;
use crate::quorum::Quorum;
use crate::record::Record;
use crate::routing::RoutingSnapshot;
use crate::stats::Stats;
use crate::transport::Transport;

/// Why a [`Dht`] operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    /// The command was refused before anything was sent (the message names the field and limit).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The query ran and failed.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The node has shut down.
    #[error("the node has shut down")]
    Shutdown,
}

/// Why a [`Dht`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No transport was given.
    #[error("at least one transport is needed")]
    NoTransport,
    /// The OS random source failed while seeding the engine.
    #[error("could not seed the RNG: {0}")]
    Seed(String),
}

enum Command {
    Bootstrap(
        Vec<PeerAddr>,
        oneshot::Sender<Result<QueryResult, CommandError>>,
    ),
    FindNode(NodeId, oneshot::Sender<Result<QueryResult, CommandError>>),
    Get(
        Key,
        usize,
        oneshot::Sender<Result<QueryResult, CommandError>>,
    ),
    Put(
        Key,
        Bytes,
        usize,
        oneshot::Sender<Result<QueryResult, CommandError>>,
    ),
    PutRecord(Record, oneshot::Sender<Result<QueryResult, CommandError>>),
    Ping(PeerAddr, oneshot::Sender<Result<QueryResult, CommandError>>),
    Call(
        Contact,
        String,
        Bytes,
        oneshot::Sender<Result<QueryResult, CommandError>>,
    ),
    ToPlugin(
        String,
        PluginData,
        oneshot::Sender<Result<QueryResult, CommandError>>,
    ),
    AddContact(Contact),
    Stats(oneshot::Sender<Stats>),
    Snapshot(oneshot::Sender<RoutingSnapshot>),
    Shutdown(oneshot::Sender<()>),
}

/// A running node: a cheap, `Clone` handle to the actor task that owns the engine.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use kad_core::{Config, Dht, MemoryNetwork, Node};
/// use std::sync::{Arc, Mutex};
/// let net = MemoryNetwork::new();
/// let a = Dht::spawn(Node::builder(Config::default()), vec![Arc::new(net.transport(1024))])?;
/// let b = Dht::spawn(Node::builder(Config::default()), vec![Arc::new(net.transport(1024))])?;
/// b.bootstrap(vec![a.contact().addrs[0].clone()]).await?;
/// let key = kad_core::NodeId::from_bytes([7; 20]);
/// b.put(key, bytes::Bytes::from_static(b"hello")).await?;
/// assert_eq!(&a.get(key).await?.record.value[..], b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dht {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    contact: Contact,
    /// The bucket size (a quorum's k).
    k: usize,
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht")
            .field("contact", &self.contact)
            .finish()
    }
}

#[allow(clippy::disallowed_methods)] // the runtime's one reading of the clock, through tokio
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Dht {
    /// Builds the node and spawns its actor task on the current tokio runtime (call it from
    /// within one). The node's contact advertises the transports' listen addresses unless the
    /// builder set addresses. Without `Config::rng_seed`, the engine is seeded from the OS.
    ///
    /// Several transports may run at once (say UDP, QUIC and WebSocket). Each is read by its own
    /// task; answers leave through the transport the peer last wrote to, other messages through
    /// the first transport of the address's kind. `Config::transport_preference` is narrowed to
    /// the kinds given here (an empty result is a configuration error), and a peer's address is
    /// picked by it.
    pub fn spawn(
        mut builder: NodeBuilder,
        transports: Vec<Arc<dyn Transport>>,
    ) -> Result<Self, SpawnError> {
        if transports.is_empty() {
            return Err(SpawnError::NoTransport);
        }
        if builder.addrs_is_empty() {
            builder = builder.addrs(transports.iter().filter_map(|t| t.listen_addr()).collect());
        }
        // Only kinds this node has a transport for: a contact reachable only through another
        // kind is skipped at once instead of timing out.
        builder
            .config_mut()
            .transport_preference
            .retain(|k| transports.iter().any(|t| t.kind() == *k));
        // Kinds whose every transport proves the peer's node id: the codec may leave messages
        // on them unauthenticated (see `Config::proven_kinds`).
        let mut proven: Vec<TransportKind> = transports
            .iter()
            .filter(|t| t.proves_peer_ids())
            .map(|t| t.kind())
            .collect();
        proven.retain(|k| {
            transports
                .iter()
                .filter(|t| t.kind() == *k)
                .all(|t| t.proves_peer_ids())
        });
        proven.dedup();
        builder.config_mut().proven_kinds = proven;
        if builder.config_mut().rng_seed.is_none() {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| SpawnError::Seed(e.to_string()))?;
            builder.config_mut().rng_seed = Some(seed);
            if !builder.has_identity() {
                let mut id = [0u8; 20];
                getrandom::fill(&mut id).map_err(|e| SpawnError::Seed(e.to_string()))?;
                builder = builder.id(NodeId(id));
            }
        }
        let node = builder.build(now())?;
        let contact = node.contact().clone();
        let k = node.config().k;
        // Everything this node logs (its readers, its actor, its queries) is inside this span.
        let span = info_span!("node", id = %contact.id);
        let (tx, rx) = mpsc::channel(1024);
        let (events, _) = broadcast::channel(1024);
        let limit = (node.config().per_ip_rate, node.config().per_ip_burst);
        let inbox = Arc::new(Shared {
            inbox: Mutex::new(Inbox::new(limit.0, limit.1)),
            notify: Notify::new(),
        });
        let mut readers = Vec::new();
        for (via, t) in transports.iter().enumerate() {
            let t = t.clone();
            let shared = inbox.clone();
            readers.push(tokio::spawn(
                async move {
                    loop {
                        match t.recv_from_node().await {
                            Ok((from, node, data)) => {
                                // A full inbox drops (and counts), like a socket buffer: the engine
                                // never blocks a reader.
                                if shared.lock().push(from, (data, node), via, now()) {
                                    shared.notify.notify_one();
                                }
                            }
                            Err(crate::transport::TransportError::Closed) => break,
                            Err(e) => trace!(error = %e, "transport receive error"),
                        }
                    }
                }
                .instrument(span.clone()),
            ));
        }
        let actor = Actor {
            node,
            transports,
            rx,
            inbox,
            events: events.clone(),
            waiting: HashMap::new(),
            via: HashMap::new(),
        };
        tokio::spawn(
            async move {
                actor.run().await;
                for r in readers {
                    r.abort();
                }
            }
            .instrument(span.clone()),
        );
        span.in_scope(|| info!(addrs = ?contact.addrs, "node started"));
        Ok(Self {
            tx,
            events,
            contact,
            k,
        })
    }

    /// This node's contact as it was at spawn (a NAT plugin may advertise other addresses
    /// since: see the plugin's status).
    pub fn contact(&self) -> &Contact {
        &self.contact
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.contact.id
    }

    /// A stream of the node's events (a lagging receiver loses the oldest ones).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn query(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<QueryResult, CommandError>>) -> Command,
    ) -> Result<QueryResult, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        Ok(rx.await.map_err(|_| DhtError::Shutdown)??)
    }

    /// Joins through seed addresses: pings them, then looks up our own id.
    pub async fn bootstrap(&self, seeds: Vec<PeerAddr>) -> Result<LookupOutcome, DhtError> {
        match self.query(|tx| Command::Bootstrap(seeds, tx)).await? {
            QueryResult::Bootstrap(r) => Ok(r?),
            _ => Err(DhtError::Shutdown),
        }
    }

    /// The k closest nodes to `target`.
    pub async fn find_node(&self, target: NodeId) -> Result<LookupOutcome, DhtError> {
        match self.query(|tx| Command::FindNode(target, tx)).await? {
            QueryResult::FindNode(r) => Ok(r?),
            _ => Err(DhtError::Shutdown),
        }
    }

    /// The record under `key`, returned as soon as one valid value arrives.
    pub async fn get(&self, key: Key) -> Result<GetOutcome, DhtError> {
        self.get_quorum(key, Quorum::One).await
    }

    /// The best record under `key` once `quorum` valid values arrived ([`Quorum::All`]: after
    /// the whole lookup).
    pub async fn get_quorum(&self, key: Key, quorum: Quorum) -> Result<GetOutcome, DhtError> {
        let quorum = quorum.engine(self.k);
        match self.query(|tx| Command::Get(key, quorum, tx)).await? {
            QueryResult::Get(r) => Ok(r?),
            _ => Err(DhtError::Shutdown),
        }
    }

    /// Publishes `value` under `key` at the k closest nodes (and republishes it before expiry).
    pub async fn put(&self, key: Key, value: Bytes) -> Result<PutOutcome, DhtError> {
        self.put_quorum(key, value, Quorum::All).await
    }

    /// Like [`put`](Self::put), returning as soon as `quorum` nodes stored the value
    /// ([`Quorum::All`]: once all of the k closest answered); the other STOREs still go out.
    pub async fn put_quorum(
        &self,
        key: Key,
        value: Bytes,
        quorum: Quorum,
    ) -> Result<PutOutcome, DhtError> {
        let quorum = quorum.engine(self.k);
        match self
            .query(|tx| Command::Put(key, value, quorum, tx))
            .await?
        {
            QueryResult::Put(r) => Ok(r?),
            _ => Err(DhtError::Shutdown),
        }
    }

    /// Stores a record exactly as given at the k closest nodes.
    pub async fn put_record(&self, record: Record) -> Result<PutOutcome, DhtError> {
        match self.query(|tx| Command::PutRecord(record, tx)).await? {
            QueryResult::Put(r) => Ok(r?),
            _ => Err(DhtError::Shutdown),
        }
    }

    /// Pings an address.
    pub async fn ping(&self, addr: PeerAddr) -> Result<PingOutcome, DhtError> {
        match self.query(|tx| Command::Ping(addr, tx)).await? {
            QueryResult::Ping(r) => Ok(r?),
            _ => Err(DhtError::Shutdown),
        }
    }

    /// Calls a plugin method (`namespace.METHOD`) on a peer.
    pub async fn call(&self, to: Contact, method: &str, params: Bytes) -> Result<Bytes, DhtError> {
        let method = method.to_owned();
        match self
            .query(|tx| Command::Call(to, method, params, tx))
            .await?
        {
            QueryResult::Call(r) => Ok(r?),
            _ => Err(DhtError::Shutdown),
        }
    }

    /// Gives a command to the local plugin with this namespace (see `Plugin::on_command`) and
    /// waits until the plugin completes it. Plugins wrap this in typed methods.
    pub async fn command(
        &self,
        namespace: &str,
        input: PluginData,
    ) -> Result<PluginData, DhtError> {
        let ns = namespace.to_owned();
        match self.query(|tx| Command::ToPlugin(ns, input, tx)).await? {
            QueryResult::Command(r) => Ok(r?),
            _ => Err(DhtError::Shutdown),
        }
    }

    /// Adds a contact to the routing table (unverified).
    pub async fn add_contact(&self, contact: Contact) -> Result<(), DhtError> {
        self.tx
            .send(Command::AddContact(contact))
            .await
            .map_err(|_| DhtError::Shutdown)
    }

    /// The engine's counters.
    pub async fn stats(&self) -> Result<Stats, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Stats(tx))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        rx.await.map_err(|_| DhtError::Shutdown)
    }

    /// A routing-table snapshot for a warm restart.
    pub async fn snapshot(&self) -> Result<RoutingSnapshot, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Snapshot(tx))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        rx.await.map_err(|_| DhtError::Shutdown)
    }

    /// Stops the node: pending queries fail with [`DhtError::Shutdown`], and its transports are
    /// closed (`Transport::close`: connections end cleanly). Waits until the actor has stopped.
    /// Calling it again is harmless.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// A caller waiting for its query: where to answer, the query's span, when it started.
type Waiting = (
    oneshot::Sender<Result<QueryResult, CommandError>>,
    Span,
    Instant,
);

struct Actor {
    node: crate::node::Node,
    transports: Vec<Arc<dyn Transport>>,
    rx: mpsc::Receiver<Command>,
    inbox: Arc<Shared>,
    events: broadcast::Sender<Event>,
    /// Callers waiting for their query, with the query's tracing span and start time.
    waiting: HashMap<QueryId, Waiting>,
    /// Which transport each peer last reached us through, so answers leave from the address
    /// the peer wrote to (bounded: cleared when it reaches `VIA_CAP`).
    via: HashMap<PeerAddr, usize>,
}

/// Datagrams received but not yet handled (half for answers to our requests, half for the rest);
/// beyond this, new ones are dropped and counted. The maps keyed by (spoofable) source address
/// use std's randomly seeded hasher against hash flooding.
const INBOX: usize = 4096;
/// Datagrams queued per source address; beyond this that address's new ones are dropped.
const PER_SOURCE: usize = 32;
/// Bytes queued in the strangers' lane and in the known peers' lane: a flood of near-64 KiB
/// datagrams (or of large STOREs) is bounded in memory as well as in count.
const LANE_BYTES: [usize; 2] = [64 << 20, 32 << 20];
/// Most addresses remembered as "talked to recently" (their datagrams are served first).
const KNOWN_CAP: usize = 65_536;
/// Most received datagrams the actor handles before it looks at commands and timers again.
const BATCH: usize = 64;
/// Longest the actor works through received datagrams before it yields to other tasks.
const BATCH_TIME: std::time::Duration = std::time::Duration::from_millis(2);
/// Most peers whose inbound transport is remembered.
const VIA_CAP: usize = 65_536;

struct Shared {
    inbox: Mutex<Inbox>,
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Received datagrams waiting for the engine, scheduled fairly.
///
/// Datagrams from addresses this node sent requests to recently (answers to its lookups, peers
/// in its table it pinged) go first. Everyone else shares the rest round-robin by source
/// address, at most [`PER_SOURCE`] queued each, so a flood from a few addresses cannot starve
/// the others, and memory stays bounded ([`INBOX`] datagrams in all).
///
/// Before queueing, a datagram from a stranger passes its source IP's token bucket
/// (`Config::per_ip_rate`): a flood is dropped before anything parses or verifies it.
/// A datagram and the node id its transport proved for the sender, if it proves any.
type Packet = (Bytes, Option<NodeId>);

#[derive(Default)]
struct Inbox {
    lanes: [Lane; 2],
    total: usize,
    known: HashSet<PeerAddr>,
    dropped: u64,
    pops: u64,
    rate: f64,
    burst: f64,
    buckets: HashMap<std::net::IpAddr, (f64, Instant)>,
    rate_limited: u64,
}

/// Most source IPs with a token bucket; when full, idle ones are forgotten (a forgotten bucket
/// is a full one, which is what an idle source has anyway).
const BUCKETS_CAP: usize = 65_536;

/// The key a stranger's datagrams are queued (and shared fairly) under: its IP, whatever the
/// port, so one host cannot take many shares by using many ports.
fn share_key(from: &PeerAddr) -> PeerAddr {
    match from {
        PeerAddr::Udp(sa) => PeerAddr::Udp(std::net::SocketAddr::new(sa.ip(), 0)),
        PeerAddr::Quic(sa) => PeerAddr::Quic(std::net::SocketAddr::new(sa.ip(), 0)),
        other => other.clone(),
    }
}

#[derive(Default)]
struct Lane {
    queues: HashMap<PeerAddr, VecDeque<(PeerAddr, Packet, usize)>>,
    ring: VecDeque<PeerAddr>,
    total: usize,
    bytes: usize,
}

impl Inbox {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            ..Self::default()
        }
    }

    /// Takes a token from `ip`'s bucket; false when it is empty.
    fn admit(&mut self, ip: std::net::IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        if self.buckets.len() >= BUCKETS_CAP && !self.buckets.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, t)| {
                *tokens + now.saturating_duration_since(*t).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= BUCKETS_CAP {
                self.buckets.clear();
            }
        }
        let (tokens, t) = self.buckets.entry(ip).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.saturating_duration_since(*t).as_secs_f64() * self.rate).min(self.burst);
        *t = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// Queues a datagram; false (and counted) when dropped.
    fn push(&mut self, from: PeerAddr, data: Packet, via: usize, now: Instant) -> bool {
        let stranger = !self.known.contains(&from);
        if stranger {
            if let Some(sa) = from.socket_addr() {
                if !self.admit(sa.ip(), now) {
                    self.rate_limited += 1;
                    return false;
                }
            }
        }
        // Each lane has half the room, so a flood of strangers cannot crowd out the answers
        // to our own requests.
        let key = if stranger {
            share_key(&from)
        } else {
            from.clone()
        };
        let lane = &mut self.lanes[usize::from(stranger)];
        if lane.total >= INBOX / 2 || lane.bytes + data.0.len() > LANE_BYTES[usize::from(stranger)]
        {
            self.dropped += 1;
            return false;
        }
        let q = match lane.queues.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                lane.ring.push_back(e.key().clone());
                e.insert(VecDeque::new())
            }
        };
        if q.len() >= PER_SOURCE {
            self.dropped += 1;
            return false;
        }
        lane.bytes += data.0.len();
        q.push_back((from, data, via));
        lane.total += 1;
        self.total += 1;
        true
    }

    /// The next datagram and whether it came from a stranger: known peers first (but
    /// strangers get every fourth turn, so joining nodes are never starved), each lane
    /// round-robin by source address.
    fn pop(&mut self) -> Option<(PeerAddr, Packet, usize, bool)> {
        self.pops += 1;
        let order = if self.pops % 4 == 0 { [1, 0] } else { [0, 1] };
        for i in order {
            let lane = &mut self.lanes[i];
            while let Some(key) = lane.ring.pop_front() {
                let Some(q) = lane.queues.get_mut(&key) else {
                    continue;
                };
                let Some((from, data, via)) = q.pop_front() else {
                    lane.queues.remove(&key);
                    continue;
                };
                if q.is_empty() {
                    lane.queues.remove(&key);
                } else {
                    lane.ring.push_back(key);
                }
                lane.total -= 1;
                lane.bytes -= data.0.len();
                self.total -= 1;
                return Some((from, data, via, i == 1));
            }
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn talked_to(&mut self, to: &PeerAddr) {
        if !self.known.contains(to) {
            if self.known.len() >= KNOWN_CAP {
                self.known.clear();
            }
            self.known.insert(to.clone());
        }
    }
}

impl Actor {
    async fn run(mut self) {
        let mut done: Option<oneshot::Sender<()>> = None;
        loop {
            let deadline = self.node.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            let mut timer = false;
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown(tx)) => { done = Some(tx); break; }
                    Some(cmd) => self.command(cmd),
                },
                () = self.inbox.notify.notified() => {}
                () = sleep => timer = true,
            }
            self.drain().await;
            let mut handled = 0;
            let started = now();
            while handled < BATCH && now().duration_since(started) < BATCH_TIME {
                let Some((from, (data, node), via, stranger)) = self.inbox.lock().pop() else {
                    break;
                };
                let from_stranger = stranger.then(|| from.clone());
                if self.transports.len() > 1 {
                    if self.via.len() >= VIA_CAP {
                        self.via.clear();
                    }
                    self.via.insert(from.clone(), via);
                }
                let input = match node {
                    Some(node) => Input::ProvenDatagram { from, node, data },
                    None => Input::Datagram { from, data },
                };
                self.node.handle_input(now(), input);
                // A stranger that has answered a request of ours (a proving PING, say) is no
                // forged source: from its next datagram on it is served with the peers we
                // asked, so a flood of strangers cannot crowd out the honest peers that query
                // us. (Once per address: it is no stranger afterwards.)
                if let Some(a) = from_stranger.filter(|a| self.node.answered_us(a)) {
                    self.inbox.lock().talked_to(&a);
                }
                self.drain().await;
                handled += 1;
            }
            // Deadlines are handled after what already arrived: an answer that came in time
            // while the engine was busy (say, encoding megabyte values) is not a timeout.
            if timer {
                self.node.handle_input(now(), Input::Timeout);
                self.drain().await;
            }
            if handled > 0 && !self.inbox.lock().is_empty() {
                // More is waiting: come back without sleeping, but let the readers (and commands,
                // timers) run first, so the sockets are drained while the engine is busy.
                self.inbox.notify.notify_one();
                tokio::task::yield_now().await;
            }
        }
        for t in &self.transports {
            t.close().await;
        }
        debug!(id = %self.node.id(), "node stopped");
        // Everything the node holds (its record store's files, say) is released before
        // `shutdown` returns, so a store can be reopened at once.
        drop(self);
        if let Some(tx) = done {
            let _ = tx.send(());
        }
    }

    fn command(&mut self, cmd: Command) {
        let t = now();
        let n = &mut self.node;
        let (r, tx, span) = match cmd {
            Command::Bootstrap(seeds, tx) => (
                n.bootstrap(t, &seeds),
                tx,
                debug_span!("query", kind = "bootstrap", seeds = seeds.len()),
            ),
            Command::FindNode(target, tx) => (
                n.find_node(t, target),
                tx,
                debug_span!("query", kind = "find_node", %target),
            ),
            Command::Get(key, quorum, tx) => (
                n.get(t, key, quorum),
                tx,
                debug_span!("query", kind = "get", %key, quorum),
            ),
            Command::Put(key, value, quorum, tx) => (
                n.put_quorum(t, key, value, quorum),
                tx,
                debug_span!("query", kind = "put", %key, quorum),
            ),
            Command::PutRecord(record, tx) => {
                let span = debug_span!("query", kind = "put", key = %record.key);
                (n.put_record(t, record), tx, span)
            }
            Command::Ping(addr, tx) => {
                let span = debug_span!("query", kind = "ping", peer = %addr);
                (n.ping(t, addr), tx, span)
            }
            Command::Call(to, method, params, tx) => {
                let span = debug_span!("query", kind = "call", peer = %to.id, %method);
                (n.call(t, &to, &method, params), tx, span)
            }
            Command::ToPlugin(ns, input, tx) => {
                let span = debug_span!("query", kind = "command", plugin = %ns);
                (n.command(t, &ns, input), tx, span)
            }
            Command::AddContact(c) => return n.add_contact(t, c),
            Command::Stats(tx) => {
                let mut stats = n.stats().clone();
                let inbox = self.inbox.lock();
                stats.dropped_overload = inbox.dropped;
                stats.dropped_rate_limited += inbox.rate_limited;
                drop(inbox);
                stats.routing_table_size = n.routing_table().len() as u64;
                stats.records_held = n.store().len() as u64;
                stats.store_bytes = n.store().size_bytes() as u64;
                return drop(tx.send(stats));
            }
            Command::Snapshot(tx) => return drop(tx.send(n.snapshot())),
            Command::Shutdown(_) => return,
        };
        match r {
            Ok(id) => {
                span.in_scope(|| debug!(query = id.0, "query started"));
                self.waiting.insert(id, (tx, span, t));
            }
            Err(e) => {
                span.in_scope(|| debug!(error = %e, "query refused"));
                let _ = tx.send(Err(e));
            }
        }
    }

    async fn drain(&mut self) {
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Send { to, msg } => {
                    if matches!(msg.body, crate::message::Body::Request(_))
                        && msg.recipient.is_some()
                    {
                        // We asked: its answers go first. (Answering a stranger's request does
                        // not make it a known peer, or a flood of valid requests would; nor does
                        // a PING without recipient, which is what proves a stranger's address
                        // before a large answer, see `Config::amplification_guard`.)
                        self.inbox.lock().talked_to(&to);
                    }
                    let kind = to.kind();
                    let known = self.via.get(&to).and_then(|i| self.transports.get(*i));
                    let Some(t) =
                        known.or_else(|| self.transports.iter().find(|t| t.kind() == kind))
                    else {
                        trace!(peer = %to, "no transport for this address");
                        continue;
                    };
                    let max = t.max_message_len();
                    let bytes = match self.node.encode_to(&to, &msg) {
                        Ok(b) if b.len() <= max => b,
                        Ok(b) => match too_large_answer(&msg, b.len(), max, Some(kind)) {
                            // An answer the transport it goes back on cannot carry: the
                            // requester is told why instead of waiting for a timeout.
                            Some(err) => match self.node.encode_to(&to, &err) {
                                Ok(b) if b.len() <= max => b,
                                _ => continue,
                            },
                            None => b, // a request: the transport refuses it and counts it
                        },
                        Err(e) => {
                            let answer = match e {
                                crate::codec::EncodeError::TooLarge { len, max } => {
                                    too_large_answer(&msg, len, max, None)
                                }
                                crate::codec::EncodeError::Unsupported(_) => None,
                            };
                            match answer.map(|m| self.node.encode_to(&to, &m)) {
                                Some(Ok(b)) if b.len() <= max => b,
                                _ => {
                                    debug!(peer = %to, error = %e, "could not encode a message");
                                    continue;
                                }
                            }
                        }
                    };
                    if let Err(e) = t.send_to_node(&to, msg.recipient, bytes).await {
                        trace!(peer = %to, error = %e, "send failed");
                    }
                }
                Output::Event(ev) => {
                    if let Event::QueryDone { id, result } = &ev {
                        if let Some((tx, span, started)) = self.waiting.remove(id) {
                            span.in_scope(|| {
                                debug!(
                                    query = id.0,
                                    ms = now().duration_since(started).as_secs_f64() * 1e3,
                                    ok = result.is_ok(),
                                    "query done"
                                );
                            });
                            let _ = tx.send(Ok(result.clone()));
                        }
                    }
                    let _ = self.events.send(ev);
                }
            }
        }
    }
}

/// The error answer that replaces an answer of `len` bytes, over the `max` bytes that one
/// message of the transport `kind` it goes back on carries (`None`: of the codec, on any
/// transport); `None` for anything but a successful answer.
fn too_large_answer(
    msg: &crate::message::Message,
    len: usize,
    max: usize,
    kind: Option<TransportKind>,
) -> Option<crate::message::Message> {
    use crate::message::{Body, Message, RpcError};
    if !matches!(msg.body, Body::Response(_)) {
        return None;
    }
    let message = match kind {
        Some(kind) => format!(
            "the answer is {len} bytes, over the {max}-byte limit of a message on {}: ask over a transport with larger messages",
            kind.scheme()
        ),
        None => format!("the answer is {len} bytes, over this node's {max}-byte message limit"),
    };
    Some(Message {
        txn: msg.txn.clone(),
        sender: msg.sender.clone(),
        recipient: msg.recipient,
        read_only: msg.read_only,
        observed: msg.observed.clone(),
        body: Body::Error(RpcError::new(RpcError::TOO_LARGE, message)),
    })
}
