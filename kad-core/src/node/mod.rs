//! The sans-IO engine: [`Node`], its inputs, outputs, events and commands.
//!
//! This file holds the node's state, its getters and the driving loop (inputs in, outputs and
//! timeouts out). The rest of `impl Node` is split by concern: `commands` (queries a caller
//! starts), `outbound` (requests, retransmissions, replies), `inbound` (requests answered,
//! responses matched), `timeouts`, `maintenance` (refresh, republish, re-join) and `query`
//! (lookups stepped and finished). `builder` and `events` hold the public types around it.

mod builder;
mod commands;
mod events;
mod inbound;
mod maintenance;
mod outbound;
mod own;
pub(crate) use own::{OwnRecords, local_record, republish_due};
mod query;
mod timeouts;

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::unwrap_used)] // tests pick an arbitrary base instant
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;
use tracing::trace;

use crate::addr::{Contact, PeerAddr};
use crate::codec::{Codec, CodecCx, DecodeError, EncodeError, Identity};
use crate::config::Config;
use crate::id::{Key, NodeId};
use crate::lookup::Lookup;
use crate::message::{Message, Request, RpcError, TxnId};
use crate::plugin::{Plugin, RequestId};
use crate::recent::RecentAddrs;
use crate::record::{Record, RecordStore, RecordValidator};
use crate::routing::{RoutingSnapshot, RoutingTable};
use crate::stats::Stats;

pub use crate::query::{QueryError, QueryId};
pub use builder::NodeBuilder;
pub use events::{
    CommandError, Event, GetOutcome, Input, LookupOutcome, Output, PingOutcome, PutOutcome,
    QueryResult,
};

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
    /// A PING to a new contact that has only sent us requests: its answer lets us hand it out.
    Verify,
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
    /// Whether the current deadline is the early one: the peer's own retransmission timeout,
    /// after which the request is sent once more (not counted against
    /// [`Config::retransmits`]) before the adaptive schedule takes over.
    early: bool,
    /// Sends not counted against the retransmissions (the early one, if it was sent).
    bonus: u8,
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
        /// Set for a put that stores as it searches (its lookup's requests are the STOREs).
        direct: Option<Box<DirectPut>>,
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

/// What a put that stores as it searches has done so far.
#[derive(Default)]
struct DirectPut {
    /// Nodes that answered a STORE with `stored` (a node asked again and answering twice
    /// counts once).
    stored: rustc_hash::FxHashSet<NodeId>,
    /// Nodes that answered a STORE at all, stored or refused.
    answered: rustc_hash::FxHashSet<NodeId>,
    /// Nodes asked to store (the outcome's `tried`).
    asked: rustc_hash::FxHashSet<NodeId>,
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
    /// Records this node published (or adopted), republished before they expire; kept apart
    /// from the records cached for others, so that an eviction cannot stop the republishing.
    own_records: OwnRecords,
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
            // The transport of this kind delivers only to the node it proved.
            proven: msg
                .recipient
                .filter(|_| to.is_some_and(|a| self.config.proven_kinds.contains(&a.kind()))),
        };
        self.codec.encode(msg, &mut cx)
    }

    fn decode(
        &mut self,
        now: Instant,
        from: &PeerAddr,
        proven: Option<NodeId>,
        data: &[u8],
    ) -> Result<Message, DecodeError> {
        let mut cx = CodecCx {
            unix_ms: self.config.wall_clock.unix_ms(now),
            local_id: self.local.id,
            max_skew_ms: self.config.max_clock_skew.as_millis() as u64,
            rng: &mut self.rng,
            peer: Some(from),
            proven,
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
        min(self.own_records.next_due());
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
            Input::Datagram { from, data } => self.datagram(now, from, None, &data),
            Input::ProvenDatagram { from, node, data } => {
                self.datagram(now, from, Some(node), &data);
            }
            Input::Message { from, msg } => self.handle_message(now, from, msg),
            Input::Timeout => self.handle_timeout(now),
        }
    }

    fn datagram(&mut self, now: Instant, from: PeerAddr, proven: Option<NodeId>, data: &[u8]) {
        match self.decode(now, &from, proven, data) {
            Ok(msg) => {
                self.request_len = data.len();
                self.handle_message(now, from, msg);
                self.request_len = 0;
            }
            Err(e) => {
                match e {
                    DecodeError::Auth(_) => self.stats.dropped_auth += 1,
                    DecodeError::BadSignature => self.stats.dropped_bad_signature += 1,
                    DecodeError::BadMac => self.stats.dropped_bad_mac += 1,
                    DecodeError::Unproven => self.stats.dropped_unproven += 1,
                    DecodeError::IdMismatch => self.stats.dropped_id_mismatch += 1,
                    DecodeError::Stale { .. } => self.stats.dropped_stale += 1,
                    DecodeError::Replay => self.stats.dropped_replay += 1,
                    DecodeError::WrongRecipient => self.stats.dropped_wrong_recipient += 1,
                    DecodeError::RateLimited => self.stats.dropped_rate_limited += 1,
                    _ => self.stats.dropped_malformed += 1,
                }
                trace!(peer = %from, error = %e, "dropped undecodable datagram");
            }
        }
    }

    fn advance(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }
}
