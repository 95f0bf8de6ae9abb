//! # kad-core
//!
//! A transport-agnostic Kademlia engine, in three layers:
//!
//! - **The engine** ([`Node`]): a sans-IO state machine holding the routing table, lookups, the
//!   in-flight request table, the record store and the plugins. It never opens a socket, never
//!   reads the OS clock and never draws OS randomness: every entry point takes `now`, and the RNG
//!   is seeded from [`Config::rng_seed`].
//! - **The runtime** (feature `tokio`, default): [`Dht`], a cheap `Clone` handle to one actor task
//!   that owns the engine and drives it over any number of [`Transport`]s.
//!
//! The deterministic simulator that drives thousands of these engines on one thread lives in the
//! `kad-sim` crate; the transport conformance suite in `kad-testkit`.
//!
//! ## Hooks
//!
//! | hook | decides |
//! |---|---|
//! | [`Transport`] | moves whole messages to and from [`PeerAddr`]s |
//! | [`Codec`] | bytes on the wire <-> typed [`Message`]s |
//! | [`Identity`] | the node id, and signing for signed codecs |
//! | [`Plugin`] | namespaced RPC methods, request filtering, response and timer hooks |
//! | [`RecordStore`] | keeps records with expiry, quota and eviction |
//! | [`RecordValidator`] | accepts or rejects records on put and get; picks the best of several |
//!
//! ## The run loop
//!
//! After every input ([`Node::handle_input`]) or command ([`Node::find_node`], [`Node::get`],
//! [`Node::put`], ...), drain [`Node::poll_output`] until it returns `None`, then sleep until
//! [`Node::poll_timeout`] and feed [`Input::Timeout`]. Here two engines are driven by hand:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use kad_core::{Config, Event, Input, Node, NodeId, Output, PeerAddr, QueryResult};
//!
//! /// Hands every message `node` wants to send to `peer`; returns `node`'s events.
//! fn pump(node: &mut Node, from: &PeerAddr, peer: &mut Node, now: Instant) -> Vec<Event> {
//!     let mut events = Vec::new();
//!     while let Some(out) = node.poll_output() {
//!         match out {
//!             Output::Send { msg, .. } => peer.handle_input(now, Input::Message { from: from.clone(), msg }),
//!             Output::Event(e) => events.push(e),
//!             _ => {}
//!         }
//!     }
//!     events
//! }
//!
//! let start = Instant::now();
//! let (addr_a, addr_b) = (PeerAddr::Mem(1), PeerAddr::Mem(2));
//! let mut a = Node::builder(Config::default()).id(NodeId::from_bytes([1; 20]))
//!     .addrs(vec![addr_a.clone()]).build(start).unwrap();
//! let mut b = Node::builder(Config::default()).id(NodeId::from_bytes([2; 20]))
//!     .addrs(vec![addr_b.clone()]).build(start).unwrap();
//!
//! // b joins through a's address; once joined, it stores a value.
//! b.bootstrap(start, &[addr_a.clone()]).unwrap();
//! let key = NodeId::from_bytes([9; 20]);
//! let mut stored_on = None;
//! for step in 0..10 {
//!     let now = start + Duration::from_millis(step);
//!     pump(&mut a, &addr_a, &mut b, now);
//!     for event in pump(&mut b, &addr_b, &mut a, now) {
//!         match event {
//!             Event::QueryDone { result: QueryResult::Bootstrap(Ok(_)), .. } => {
//!                 b.put(now, key, "hello".into()).unwrap();
//!             }
//!             Event::QueryDone { result: QueryResult::Put(Ok(put)), .. } => stored_on = Some(put.stored),
//!             _ => {}
//!         }
//!     }
//! }
//! // In a two-node network both nodes are among the k closest: both stored it.
//! assert_eq!(stored_on, Some(2));
//! assert_eq!(&a.store().get(&key).unwrap().value[..], b"hello");
//! ```
//!
//! Remote misbehaviour (bytes that do not decode, responses to no request of ours, responses from
//! the wrong node, messages for another node) is never an error: it is dropped and counted in
//! [`Stats`].
//!
//! ## Feature flags
//!
//! - `tokio` (default): the async runtime ([`Dht`]) and the in-memory transport.
//! - `native` (default): the native protocol, [`NativeCodec`] (signed JSON-RPC 2.0) and
//!   [`NativeIdentity`] (secp256k1 keys); pulls in k256, sha2, ripemd, base64 and hex.
//!   Implies `json`.
//! - `json`: [`PlainCodec`], unsigned serde_json messages, the codec of a builder given none.
//!
//! With `default-features = false` the engine needs only bytes, rand, serde and tracing: a
//! user who brings a codec of their own (KRPC does) builds no secp256k1 or JSON code.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod addr;
mod amplify;
mod codec;
mod config;
mod id;
mod lookup;
mod message;
#[cfg(feature = "native")]
pub mod native;
mod node;
mod plugin;
mod query;
mod quorum;
mod recent;
mod record;
mod routing;
mod stats;
mod transport;

#[cfg(feature = "tokio")]
mod runtime;

pub use addr::{Contact, MAX_URI_LEN, ParseAddrError, PeerAddr, Subnet, TransportKind};
#[cfg(feature = "json")]
pub use codec::PlainCodec;
pub use codec::{Codec, CodecCx, DecodeError, EncodeError, Identity, StaticIdentity};
pub use config::{Config, ConfigError, SystemClock, VirtualClock, WallClock};
pub use id::{Distance, ID_BITS, ID_LEN, Key, NodeId, ParseIdError};
pub use lookup::{Lookup, LookupStats};
pub use message::{Body, Message, Request, Response, RpcError, TxnId};
#[cfg(feature = "native")]
pub use native::{
    InvalidKey, MAX_DATAGRAM, MAX_NATIVE_VALUE, NativeCodec, NativeIdentity, content_key, id_work,
    max_native_value_for, node_id_from_public_key, verify_signature,
};
pub use node::{
    CommandError, Event, GetOutcome, Input, LookupOutcome, Node, NodeBuilder, Output, PingOutcome,
    PutOutcome, QueryError, QueryId, QueryResult,
};
pub use plugin::{AdoptError, Plugin, PluginCx, PluginData, PluginResponse, Reply, RequestId};
pub use quorum::Quorum;
pub use record::{
    AcceptAll, Eviction, IndexEntry, MemoryStore, OwnEntry, QuotaIndex, Record, RecordStore,
    RecordValidator, Rejected, StoreError, StoreLimits,
};
pub use routing::{Entry, InsertOutcome, Liveness, RoutingParams, RoutingSnapshot, RoutingTable};
pub use stats::{Histogram, LATENCY_BUCKETS_US, MAX_METHODS, Stats};
pub use transport::{Transport, TransportError};

#[cfg(feature = "tokio")]
pub use runtime::{Dht, DhtError, SpawnError};
#[cfg(feature = "tokio")]
pub use transport::{MemoryNetwork, MemoryTransport};

/// Re-exported so users can name the types in hook signatures.
pub use bytes::Bytes;
