//! The `Plugin` hook: namespaced RPC methods, a request filter, response and timer hooks.
//!
//! Plugins never touch sockets or clocks. They act through a [`PluginCx`]: read the time, the RNG,
//! the routing table and the record store; send requests; start lookups; emit events. The engine
//! applies what they asked for once the hook returns.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;

use crate::addr::{Contact, PeerAddr};
use crate::id::{Key, NodeId};
use crate::lookup::LookupStats;
use crate::message::{Request, RpcError};
use crate::node::OwnRecords;
use crate::query::{QueryError, QueryId};
use crate::record::{Record, RecordStore, RecordValidator, Rejected, StoreError};
use crate::routing::RoutingTable;

/// A typed value passed in-process between a plugin and the application: a command's input
/// ([`Plugin::on_command`]), its result ([`PluginCx::complete`]) and an event's data
/// ([`PluginCx::emit`], [`Event::Plugin`](crate::Event::Plugin)). Nothing is serialized: the
/// receiver downcasts to the type the plugin documents. Cloning shares the value.
///
/// ```
/// use kad_core::PluginData;
///
/// let data = PluginData::new(42u32);
/// assert_eq!(data.downcast_ref::<u32>(), Some(&42));
/// assert!(data.downcast_ref::<String>().is_none());
/// assert_eq!(format!("{data:?}"), "PluginData(u32)");
/// ```
#[derive(Clone)]
pub struct PluginData {
    value: Arc<dyn Any + Send + Sync>,
    type_name: &'static str,
}

impl PluginData {
    /// Wraps a value.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self {
            value: Arc::new(value),
            type_name: std::any::type_name::<T>(),
        }
    }

    /// The value, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.value.downcast_ref()
    }

    /// Whether the value is a `T`.
    pub fn is<T: Any>(&self) -> bool {
        self.value.is::<T>()
    }

    /// The shared value, if it is a `T`; otherwise `self` back.
    pub fn downcast<T: Any + Send + Sync>(self) -> Result<Arc<T>, Self> {
        let type_name = self.type_name;
        self.value
            .downcast()
            .map_err(|value| Self { value, type_name })
    }

    /// The name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl fmt::Debug for PluginData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PluginData({})", self.type_name)
    }
}

/// The same shared value (not merely an equal one).
impl PartialEq for PluginData {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.value, &other.value)
    }
}

impl Eq for PluginData {}

/// Identifies a request a plugin sent with [`PluginCx::send_request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A plugin's answer to one of its methods.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// A result, in the codec's format.
    Result(Bytes),
    /// A result plus contacts (for methods used in iterative lookups).
    WithNodes(Bytes, Vec<Contact>),
    /// An error answer.
    Error(RpcError),
    /// No answer at all (the request is dropped silently).
    Drop,
}

/// The outcome of a plugin's own request.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum PluginResponse {
    /// The peer answered with a result (and possibly contacts).
    Ok {
        /// Who answered.
        from: Contact,
        /// The result.
        result: Bytes,
        /// Contacts in the answer.
        nodes: Vec<Contact>,
    },
    /// The peer answered with an error.
    Remote(RpcError),
    /// No answer before the hard timeout.
    Timeout,
}

/// Where a plugin's request goes: a known node, or an address whose node id is not known yet.
pub(crate) enum Dest {
    Contact(Contact),
    Addr(PeerAddr),
}

pub(crate) enum Action {
    Send {
        id: RequestId,
        to: Dest,
        method: String,
        params: Bytes,
    },
    Lookup {
        id: QueryId,
        target: NodeId,
        method: String,
        params: Bytes,
        wait_for_slow: bool,
    },
    Emit {
        name: &'static str,
        data: PluginData,
    },
    SetAddrs(Vec<PeerAddr>),
    SetReadOnly(bool),
    Complete {
        query: QueryId,
        result: Result<PluginData, QueryError>,
    },
}

/// Why [`PluginCx::adopt`] refused a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptError {
    /// It could never be published (no lifetime left, too large).
    #[error("{0}")]
    Invalid(String),
    /// The node's validator refused it.
    #[error("{0}")]
    Rejected(Rejected),
    /// The store failed to keep it.
    #[error(transparent)]
    Store(StoreError),
}

/// What a plugin may see and do while one of its hooks runs.
pub struct PluginCx<'a> {
    pub(crate) now: Instant,
    pub(crate) unix_ms: u64,
    pub(crate) local: &'a Contact,
    pub(crate) read_only: bool,
    pub(crate) sent_to: &'a crate::recent::RecentAddrs,
    pub(crate) rng: &'a mut ChaCha8Rng,
    pub(crate) routing: &'a RoutingTable,
    pub(crate) store: &'a mut dyn RecordStore,
    pub(crate) own: &'a mut OwnRecords,
    pub(crate) validator: &'a dyn RecordValidator,
    pub(crate) republish_interval: Duration,
    pub(crate) record_ttl: Duration,
    pub(crate) max_value_len: usize,
    pub(crate) actions: &'a mut Vec<Action>,
    pub(crate) next_request: &'a mut u64,
    pub(crate) next_query: &'a mut u64,
    pub(crate) k: usize,
}

impl PluginCx<'_> {
    /// The engine's current instant.
    pub fn now(&self) -> Instant {
        self.now
    }
    /// Wall-clock milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> u64 {
        self.unix_ms
    }
    /// This node's contact.
    pub fn local(&self) -> &Contact {
        self.local
    }
    /// Whether the node runs read-only (client mode: others don't add it to their tables).
    pub fn read_only(&self) -> bool {
        self.read_only
    }
    /// Whether this node sent anything to `addr` (IP and port) within the last 5 minutes or so.
    /// A NAT lets packets from such an address in, so they prove nothing about reachability.
    pub fn sent_to_recently(&self, addr: std::net::SocketAddr) -> bool {
        self.sent_to.contains(self.now, addr)
    }
    /// Whether this node sent anything to any port of `ip` within the last 5 minutes or so (an
    /// address-restricted NAT lets packets from every port of such an IP in).
    pub fn sent_to_ip_recently(&self, ip: std::net::IpAddr) -> bool {
        self.sent_to.contains_ip(self.now, ip)
    }
    /// Replaces the addresses this node advertises, once the hook returns
    /// ([`Node::set_addrs`](crate::Node::set_addrs)).
    pub fn set_local_addrs(&mut self, addrs: Vec<PeerAddr>) {
        self.actions.push(Action::SetAddrs(addrs));
    }
    /// Enters or leaves read-only (client) mode, once the hook returns
    /// ([`Node::set_read_only`](crate::Node::set_read_only)).
    pub fn set_read_only(&mut self, read_only: bool) {
        self.actions.push(Action::SetReadOnly(read_only));
    }
    /// The engine's seeded RNG.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        self.rng
    }
    /// The engine's `k`.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Up to `n` contacts from the routing table closest to `target`.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<Contact> {
        self.routing.closest(target, n)
    }
    /// Up to `n` contacts closest to `target` that have answered a request of ours: the ones
    /// to name in an answer to another node (see [`RoutingTable::closest_answered`]).
    pub fn closest_answered(&self, target: &NodeId, n: usize) -> Vec<Contact> {
        self.routing.closest_answered(target, n)
    }
    /// The record store, read-only.
    pub fn store(&self) -> &dyn RecordStore {
        &*self.store
    }
    /// The record under `key` this node holds, for others or as one of its own (see
    /// [`Node::own_keys`](crate::Node::own_keys)), if not expired.
    pub fn record(&self, key: &Key) -> Option<Record> {
        crate::node::local_record(&*self.store, self.own, key, self.unix_ms)
    }
    /// Makes `record` one of this node's own records, as if it had put it: republished before
    /// it expires (with a fresh publish time, the same lifetime and publisher), kept across
    /// restarts by a persistent store, and served to lookups. For a node that keeps records for
    /// its user (pinning). Does not store it at the k closest now: whoever handed it over did.
    ///
    /// # Errors
    /// [`AdoptError::Invalid`] when the record could never be published (already expired, no
    /// lifetime, or a value over `Config::max_value_len`); [`AdoptError::Rejected`] when the
    /// node's validator refuses it; [`AdoptError::Store`] when the store fails to keep it. In
    /// every case nothing changed.
    pub fn adopt(&mut self, record: Record) -> Result<(), AdoptError> {
        if record.expires_at_ms <= record.published_at_ms || record.is_expired(self.unix_ms) {
            return Err(AdoptError::Invalid(format!(
                "record {} has no lifetime left (published at {} ms, expires at {} ms)",
                record.key, record.published_at_ms, record.expires_at_ms
            )));
        }
        if record.value.len() > self.max_value_len {
            return Err(AdoptError::Invalid(format!(
                "record {} is {} bytes, over max_value_len = {}",
                record.key,
                record.value.len(),
                self.max_value_len
            )));
        }
        self.validator
            .validate(&record)
            .map_err(AdoptError::Rejected)?;
        let due = crate::node::republish_due(
            self.now,
            self.unix_ms,
            self.republish_interval,
            self.record_ttl,
            record.published_at_ms,
            record.expires_at_ms,
        );
        self.own
            .keep(&mut *self.store, record, due)
            .map_err(AdoptError::Store)
    }
    /// Stops republishing the own record under `key` (see [`Node::unpublish`](crate::Node::unpublish)).
    pub fn unpublish(&mut self, key: &Key) -> bool {
        self.own.forget(&mut *self.store, key)
    }
    /// Bytes of this node's own records ([`Record::size`] each).
    pub fn own_bytes(&self) -> usize {
        self.own.bytes()
    }
    /// Whether the record under `key` is one of this node's own.
    pub fn is_own(&self, key: &Key) -> bool {
        self.own.contains(key)
    }
    /// Bytes ([`Record::size`]) of the own record under `key`, if it is one.
    pub fn own_size(&self, key: &Key) -> Option<usize> {
        self.own.size_of(key)
    }
    /// Sends `method` with `params` to `to`; the answer arrives in [`Plugin::on_response`].
    pub fn send_request(
        &mut self,
        to: Contact,
        method: impl Into<String>,
        params: Bytes,
    ) -> RequestId {
        let id = RequestId(*self.next_request);
        *self.next_request += 1;
        self.actions.push(Action::Send {
            id,
            to: Dest::Contact(to),
            method: method.into(),
            params,
        });
        id
    }
    /// Sends `method` to an address whose node id is not known yet.
    ///
    /// The message names no recipient, so signing codecs that bind the recipient refuse it:
    /// on the native network only `PING` may go to a bare address (PROTOCOL.md section 4), and
    /// this request will time out. Use [`send_request`](Self::send_request) with a contact there.
    pub fn send_request_to_addr(
        &mut self,
        to: PeerAddr,
        method: impl Into<String>,
        params: Bytes,
    ) -> RequestId {
        let id = RequestId(*self.next_request);
        *self.next_request += 1;
        self.actions.push(Action::Send {
            id,
            to: Dest::Addr(to),
            method: method.into(),
            params,
        });
        id
    }
    /// Starts an iterative lookup towards `target` whose requests are `method` with `params`
    /// (the answers' contacts drive the lookup). Each answer goes to
    /// [`Plugin::on_lookup_response`], the end to [`Plugin::on_lookup_done`].
    pub fn start_lookup(
        &mut self,
        target: NodeId,
        method: impl Into<String>,
        params: Bytes,
    ) -> QueryId {
        self.push_lookup(target, method.into(), params, false)
    }
    /// Like [`start_lookup`](Self::start_lookup), for a lookup that decides where something is
    /// placed (a subscription, a published item, a stored value): a node among the k closest
    /// that is slow to answer holds the lookup open until it answers or fails for good, so the
    /// result is the k closest, busy ones included, not the k quickest. Slower when nodes are
    /// silent (each costs its hard timeouts); the search still widens past them meanwhile.
    pub fn start_placement_lookup(
        &mut self,
        target: NodeId,
        method: impl Into<String>,
        params: Bytes,
    ) -> QueryId {
        self.push_lookup(target, method.into(), params, true)
    }
    fn push_lookup(
        &mut self,
        target: NodeId,
        method: String,
        params: Bytes,
        wait_for_slow: bool,
    ) -> QueryId {
        let id = QueryId(*self.next_query);
        *self.next_query += 1;
        self.actions.push(Action::Lookup {
            id,
            target,
            method,
            params,
            wait_for_slow,
        });
        id
    }
    /// Finishes a command given to [`Plugin::on_command`]: the application's
    /// [`Node::command`](crate::Node::command) (or `Dht::command`) gets `result`. Completing a
    /// query that is not a running command of this plugin does nothing.
    pub fn complete(&mut self, query: QueryId, result: Result<PluginData, QueryError>) {
        self.actions.push(Action::Complete { query, result });
    }
    /// Emits [`Event::Plugin`](crate::Event::Plugin) to the application.
    pub fn emit(&mut self, name: &'static str, data: PluginData) {
        self.actions.push(Action::Emit { name, data });
    }
}

/// A protocol extension. Methods are named `namespace.METHOD`; the engine routes each request
/// whose method starts with `namespace.` to the plugin. Plugins are called in the order they were
/// registered, and that order is the order of the request filters.
pub trait Plugin: Send + 'static {
    /// The method prefix this plugin owns, e.g. `pubsub`.
    fn namespace(&self) -> &'static str;

    /// Filter run on every inbound request (core methods too) before it is handled. Returning
    /// false drops the request silently and counts it in `Stats::dropped_filtered`.
    fn allow(&mut self, _from: &PeerAddr, _sender: &Contact, _request: &Request) -> bool {
        true
    }

    /// Handles one of this plugin's methods.
    fn on_request(
        &mut self,
        cx: &mut PluginCx<'_>,
        from: &Contact,
        method: &str,
        params: &Bytes,
    ) -> Reply;

    /// The outcome of a request sent with [`PluginCx::send_request`].
    fn on_response(&mut self, _cx: &mut PluginCx<'_>, _id: RequestId, _response: PluginResponse) {}

    /// Whether the engine sends this plugin's requests again when their answer does not come
    /// ([`Config::retransmits`](crate::Config::retransmits) times, the timeout doubling each
    /// time) before reporting [`PluginResponse::Timeout`]. Default true. A plugin that resends
    /// or fails over by itself, on a schedule of its own, returns false: it then hears of a
    /// silent peer after one timeout.
    fn retransmit_requests(&self) -> bool {
        true
    }

    /// One answer during a lookup started with [`PluginCx::start_lookup`].
    fn on_lookup_response(
        &mut self,
        _cx: &mut PluginCx<'_>,
        _query: QueryId,
        _from: &Contact,
        _result: &Bytes,
    ) {
    }

    /// A plugin lookup finished with the closest nodes that answered.
    fn on_lookup_done(
        &mut self,
        _cx: &mut PluginCx<'_>,
        _query: QueryId,
        _closest: &[Contact],
        _stats: &LookupStats,
    ) {
    }

    /// A command from the application ([`Node::command`](crate::Node::command)): a value of a
    /// type the plugin documents. The plugin finishes it, now or later, with
    /// [`PluginCx::complete`]. The default refuses every command.
    fn on_command(&mut self, cx: &mut PluginCx<'_>, query: QueryId, _input: PluginData) {
        cx.complete(
            query,
            Err(QueryError::Remote(RpcError::new(
                RpcError::METHOD_NOT_FOUND,
                format!("plugin {} takes no commands", self.namespace()),
            ))),
        );
    }

    /// An answer to one of this node's requests said where the responder sees us: `observed`
    /// is our address outside any NAT, as reported by `responder`, which answered from `from`.
    /// Unauthenticated on unsigned networks: count votes from distinct sources, never trust one.
    fn on_observed(
        &mut self,
        _cx: &mut PluginCx<'_>,
        _responder: &Contact,
        _from: &PeerAddr,
        _observed: &PeerAddr,
    ) {
    }

    /// Called when [`next_timeout`](Self::next_timeout) has passed.
    fn on_timeout(&mut self, _cx: &mut PluginCx<'_>) {}

    /// When this plugin next wants [`on_timeout`](Self::on_timeout).
    fn next_timeout(&self) -> Option<Instant> {
        None
    }
}
