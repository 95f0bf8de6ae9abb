//! Typed messages exchanged by nodes. Codecs turn these into bytes and back.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::addr::{Contact, PeerAddr};
use crate::id::{Key, NodeId};
use crate::record::Record;

/// A transaction id: chosen by the requester, echoed verbatim by the responder.
///
/// The engine picks 4 random bytes for its own requests; inbound ids of any length are echoed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize)]
pub struct TxnId(pub Bytes);

impl TxnId {
    /// A transaction id from raw bytes.
    pub fn from_bytes(b: impl Into<Bytes>) -> Self {
        Self(b.into())
    }
}

/// One message on the wire, in typed form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The transaction this message belongs to.
    pub txn: TxnId,
    /// Who sent it: its id and the addresses it listens on.
    pub sender: Contact,
    /// The node this message is addressed to, when the sender knows it (signed codecs bind it).
    pub recipient: Option<NodeId>,
    /// Set by a node that only asks and must not be added to routing tables (read-only mode).
    #[serde(default)]
    pub read_only: bool,
    /// In responses and errors: the address the responder saw the request come from (the
    /// requester's address as the network outside its NAT sees it). Native `kad.seen`, Mainline
    /// `ip` (BEP42). The engine fills it in its answers and reports it to plugins
    /// ([`Plugin::on_observed`](crate::Plugin::on_observed)).
    #[serde(default)]
    pub observed: Option<PeerAddr>,
    /// What the message says.
    pub body: Body,
}

/// A request, a response, or an error answering a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Body {
    /// A request that expects one answer.
    Request(Request),
    /// A successful answer.
    Response(Response),
    /// An error answer.
    Error(RpcError),
}

/// The requests the engine knows, plus plugin methods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Liveness check.
    Ping,
    /// Asks for the contacts closest to `target`.
    FindNode {
        /// The id to look near.
        target: NodeId,
    },
    /// Asks for the record under `key`, or else the contacts closest to it.
    FindValue {
        /// The record key.
        key: Key,
    },
    /// Asks the recipient to keep a record.
    Store {
        /// The record to keep.
        record: Record,
        /// Asks the recipient to name, in its answer, the contacts it knows closest to the
        /// record's key: a put that stores as it searches (no lookup first) learns from each
        /// STORE where the record belongs.
        want_nodes: bool,
    },
    /// A plugin method, named `namespace.METHOD`.
    Custom {
        /// Full method name, e.g. `pubsub.SUBSCRIBE`.
        method: String,
        /// Parameters in the codec's own format (JSON text for the native codec, bencode for KRPC).
        params: Bytes,
    },
}

impl Request {
    /// The method name as the native protocol spells it (`PING`, `FIND_NODE`, ...).
    pub fn method(&self) -> &str {
        match self {
            Self::Ping => "PING",
            Self::FindNode { .. } => "FIND_NODE",
            Self::FindValue { .. } => "FIND_VALUE",
            Self::Store { .. } => "STORE",
            Self::Custom { method, .. } => method,
        }
    }
}

/// Successful answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Answer to `Ping`.
    Pong,
    /// Answer to `FindNode`, or to `FindValue` when the value is not held.
    Nodes {
        /// The closest contacts the responder knows.
        nodes: Vec<Contact>,
    },
    /// Answer to `FindValue` when the responder holds the record.
    Value {
        /// The record.
        record: Record,
        /// Closest contacts, so the lookup can continue if the value is rejected.
        nodes: Vec<Contact>,
    },
    /// Answer to `Store`: the record was kept.
    Stored {
        /// The closest contacts the responder knows to the record's key, when the request asked
        /// for them (`want_nodes`); else empty.
        nodes: Vec<Contact>,
    },
    /// Answer to a plugin method.
    Custom {
        /// The result in the codec's format.
        result: Bytes,
        /// Contacts, for plugin methods that are used in iterative lookups (BEP44 `get`).
        nodes: Vec<Contact>,
    },
}

impl Response {
    /// The contacts carried by this response, if any.
    pub fn nodes(&self) -> &[Contact] {
        match self {
            Self::Nodes { nodes }
            | Self::Value { nodes, .. }
            | Self::Custom { nodes, .. }
            | Self::Stored { nodes } => nodes,
            _ => &[],
        }
    }
}

/// An error answer, with JSON-RPC style codes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("remote error {code}: {message}")]
pub struct RpcError {
    /// The code (see the associated constants).
    pub code: i64,
    /// A human-readable message.
    pub message: String,
}

impl RpcError {
    /// JSON-RPC: the method does not exist.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// JSON-RPC: invalid parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// JSON-RPC: internal error.
    pub const INTERNAL: i64 = -32603;
    /// Ours: the record was rejected by the validator.
    pub const REJECTED: i64 = -32001;
    /// Ours: the store is full and this record may not evict anything.
    pub const STORE_FULL: i64 = -32002;
    /// Ours: the request was refused by a filter (rate limit, policy).
    pub const REFUSED: i64 = -32003;
    /// Ours: the answer is larger than the largest message of the transport it would go back
    /// on (a value asked for over UDP that only fits a QUIC or WebSocket message).
    pub const TOO_LARGE: i64 = -32004;

    /// Builds an error.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
