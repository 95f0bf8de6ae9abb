//! The engine's public inputs, outputs, events, query results and errors.

use std::time::Duration;

use bytes::Bytes;

use crate::addr::{Contact, PeerAddr};
use crate::id::{Key, NodeId};
use crate::lookup::LookupStats;
use crate::message::Message;
use crate::plugin::PluginData;
use crate::query::{QueryError, QueryId};
use crate::record::Record;

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
    /// Bytes received over a connection whose transport proved the sender is node `node`
    /// ([`Transport::proves_peer_ids`](crate::Transport::proves_peer_ids)); the codec may accept
    /// them without a signature or MAC of their own.
    ProvenDatagram {
        /// Where they came from.
        from: PeerAddr,
        /// The node id the transport proved for the sender.
        node: NodeId,
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
    /// The time returned by [`Node::poll_timeout`](crate::Node::poll_timeout) has been reached.
    Timeout,
}

/// An output of the engine.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// A message to send. Encode it with [`Node::encode`](crate::Node::encode) for a byte transport.
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
        name: &'static str,
        /// Its data, of a type the plugin documents.
        data: PluginData,
    },
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LookupOutcome {
    /// The target.
    pub target: NodeId,
    /// The k closest nodes that answered, closest first.
    pub closest: Vec<Contact>,
    /// Nodes named near the target that had not answered when the lookup finished (it does
    /// not wait for silent candidates outside the closest few), closest first, at most k:
    /// slow peers as well as departed ones. A caller that needs every node near the target,
    /// such as a download looking for more holders, can ask them itself.
    pub unanswered: Vec<Contact>,
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
    /// A plugin command ([`Node::command`](crate::Node::command)), as the plugin completed it.
    Command(Result<PluginData, QueryError>),
}

impl QueryResult {
    /// Whether the query succeeded (refreshes and plugin lookups always do).
    pub fn is_ok(&self) -> bool {
        match self {
            Self::FindNode(r) | Self::Bootstrap(r) => r.is_ok(),
            Self::Get(r) => r.is_ok(),
            Self::Put(r) => r.is_ok(),
            Self::Ping(r) => r.is_ok(),
            Self::Call(r) => r.is_ok(),
            Self::Command(r) => r.is_ok(),
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
