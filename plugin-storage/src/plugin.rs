//! The `storage` plugin: `storage.FETCH`, many chunks from one holder in one answer;
//! `storage.PIN` and `storage.UNPIN`, records a node keeps and republishes for its user.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use kad_core::{AdoptError, Contact, Key, NodeId, Plugin, PluginCx, Record, Reply, RpcError};
use serde::{Deserialize, Serialize};

/// The plugin's namespace.
pub const NAMESPACE: &str = "storage";
/// The fetch method: `{"keys": ["<40 hex>", ...]}` answered with [`FetchReply`].
pub const FETCH: &str = "storage.FETCH";
/// Most keys one fetch may ask for.
pub const MAX_FETCH_KEYS: usize = 4096;
/// The pin method: `{"values": [["<40 hex>", "<base64>"], ...], "ttl_ms": N}` answered with
/// [`PinReply`]. The node keeps each record as its own and republishes it before it expires,
/// across restarts when its store persists (see [`StoragePlugin::allow_pins`]).
pub const PIN: &str = "storage.PIN";
/// The unpin method: `{"keys": ["<40 hex>", ...]}` answered with [`UnpinReply`].
pub const UNPIN: &str = "storage.UNPIN";
/// Most records one pin (or keys one unpin) may carry.
pub const MAX_PIN_RECORDS: usize = 4096;
/// The longest lifetime of a pinned record's copies, ms (10 years); the shortest is 1 s.
pub const MAX_PIN_TTL_MS: u64 = 10 * 365 * 86_400_000;

/// Parameters of `storage.PIN`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PinParams {
    /// `(key, value)` pairs, values base64 on the wire.
    #[serde(with = "pairs")]
    pub values: Vec<(Key, Bytes)>,
    /// Lifetime of each copy the node publishes, ms; each is republished before it expires.
    pub ttl_ms: u64,
}

/// The answer to `storage.PIN`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PinReply {
    /// Records pinned by this request.
    pub pinned: usize,
    /// Bytes the node now keeps as its own (its pins and its own puts), against its limit.
    pub own_bytes: u64,
    /// The node's limit for them.
    pub max_bytes: u64,
}

/// Parameters of `storage.UNPIN`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UnpinParams {
    /// Keys to stop republishing.
    pub keys: Vec<Key>,
}

/// The answer to `storage.UNPIN`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UnpinReply {
    /// Keys that were pinned and are no longer.
    pub unpinned: usize,
}

/// Parameters of `storage.FETCH`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FetchParams {
    /// Keys wanted, in order of preference.
    pub keys: Vec<Key>,
    /// Most value bytes (before base64) the requester accepts in the answer; 0 means the
    /// holder's own limit.
    #[serde(default)]
    pub max_bytes: usize,
}

/// The answer to `storage.FETCH`: values held, in the order asked, while they fit the answer;
/// keys not held; the rest (held or not) were left out for size and may be asked again.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FetchReply {
    /// `(key, value)` pairs, values base64 on the wire. Unverified: check each value's hash.
    #[serde(with = "pairs")]
    pub values: Vec<(Key, Bytes)>,
    /// Keys this holder does not have (or only expired).
    pub missing: Vec<Key>,
}

mod pairs {
    use super::*;
    use serde::de::Error as _;

    pub(super) fn serialize<S: serde::Serializer>(
        v: &[(Key, Bytes)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let encoded: Vec<(Key, String)> = v.iter().map(|(k, b)| (*k, B64.encode(b))).collect();
        encoded.serialize(s)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(Key, Bytes)>, D::Error> {
        let encoded: Vec<(Key, String)> = Vec::deserialize(d)?;
        encoded
            .into_iter()
            .map(|(k, s)| {
                B64.decode(s.as_bytes())
                    .map(|b| (k, Bytes::from(b)))
                    .map_err(D::Error::custom)
            })
            .collect()
    }
}

/// Serves `storage.FETCH` from the node's record store.
///
/// A holder answers with as many of the asked values as fit `max_reply_bytes` (and the
/// requester's own `max_bytes`), so a reader moves many small chunks per signed message and one
/// large chunk per message on a transport that allows it. Register it on every node that stores
/// blobs:
///
/// ```
/// use kad_core::{Config, Node, NodeId};
/// use kad_plugin_storage::{ContentValidator, StoragePlugin};
///
/// let node = Node::builder(Config::default())
///     .id(NodeId([7; 20]))
///     .validator(std::sync::Arc::new(ContentValidator))
///     .plugin(Box::new(StoragePlugin::new(1 << 20)));
/// # let _ = node;
/// ```
#[derive(Debug)]
pub struct StoragePlugin {
    max_reply_bytes: usize,
    served: u64,
    served_bytes: u64,
    pin_from: Vec<NodeId>,
    max_pin_bytes: usize,
    pinned: u64,
    pins_refused: u64,
}

impl StoragePlugin {
    /// A plugin answering with at most `max_reply_bytes` of values (before base64) per fetch:
    /// size it to the node's largest message, e.g. three quarters of it minus 16 KiB.
    pub fn new(max_reply_bytes: usize) -> Self {
        Self {
            max_reply_bytes: max_reply_bytes.max(1),
            served: 0,
            served_bytes: 0,
            pin_from: Vec::new(),
            max_pin_bytes: 0,
            pinned: 0,
            pins_refused: 0,
        }
    }

    /// Accepts `storage.PIN` and `storage.UNPIN` from the nodes `from` (its user's clients),
    /// up to `max_bytes` of own records in all ([`Record::size`] each: the value plus 64).
    /// Without it, every pin is refused. The sender's id is only proven by an authenticating
    /// codec (the native protocol signs every message): never allow pins on a network whose
    /// messages are not authenticated.
    ///
    /// A pinned record is one of the node's own ([`PluginCx::adopt`]): republished before it
    /// expires, and kept across restarts when the node's store persists (`RedbStore`).
    pub fn allow_pins(mut self, from: impl IntoIterator<Item = NodeId>, max_bytes: usize) -> Self {
        self.pin_from = from.into_iter().collect();
        self.max_pin_bytes = max_bytes;
        self
    }

    /// Records pinned so far, and pin or unpin requests refused.
    pub fn pins(&self) -> (u64, u64) {
        (self.pinned, self.pins_refused)
    }

    fn may_pin(&mut self, from: &Contact, method: &str) -> Result<(), Reply> {
        if self.pin_from.contains(&from.id) {
            return Ok(());
        }
        self.pins_refused += 1;
        Err(Reply::Error(RpcError::new(
            RpcError::REFUSED,
            format!(
                "{method}: this node keeps records only for the nodes it was told to ({} allowed), and {} is not one",
                self.pin_from.len(),
                from.id
            ),
        )))
    }

    fn pin(&mut self, cx: &mut PluginCx<'_>, from: &Contact, params: &Bytes) -> Reply {
        if let Err(r) = self.may_pin(from, PIN) {
            return r;
        }
        let p: PinParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => return invalid(format!("storage.PIN params: {e}")),
        };
        if p.values.len() > MAX_PIN_RECORDS {
            return invalid(format!(
                "storage.PIN values: {} given, limit {MAX_PIN_RECORDS}",
                p.values.len()
            ));
        }
        if !(1_000..=MAX_PIN_TTL_MS).contains(&p.ttl_ms) {
            return invalid(format!(
                "storage.PIN ttl_ms = {} is out of range: 1000 to {MAX_PIN_TTL_MS}",
                p.ttl_ms
            ));
        }
        // What the request adds: each key once (the last value given wins), less the bytes of
        // the own record it replaces.
        let mut sizes: std::collections::BTreeMap<Key, usize> = std::collections::BTreeMap::new();
        for (k, v) in &p.values {
            sizes.insert(*k, v.len() + 64);
        }
        let (mut adding, mut freed) = (0usize, 0usize);
        for (k, size) in &sizes {
            adding += size;
            freed += cx.own_size(k).unwrap_or(0);
        }
        let adding = adding.saturating_sub(freed);
        if cx.own_bytes() + adding > self.max_pin_bytes {
            self.pins_refused += 1;
            return Reply::Error(RpcError::new(
                RpcError::STORE_FULL,
                format!(
                    "storage.PIN: {adding} more bytes would pass this node's limit of {} bytes of own records, pins and its own puts ({} in use)",
                    self.max_pin_bytes,
                    cx.own_bytes()
                ),
            ));
        }
        let now = cx.unix_ms();
        let mut pinned = 0;
        for (key, value) in p.values {
            let record = Record::new(key, value, Some(from.id), now, p.ttl_ms);
            let (code, e) = match cx.adopt(record) {
                Ok(()) => {
                    pinned += 1;
                    self.pinned += 1;
                    continue;
                }
                Err(e @ (AdoptError::Rejected(_) | AdoptError::Invalid(_))) => {
                    (RpcError::REJECTED, e)
                }
                Err(e) => (RpcError::INTERNAL, e),
            };
            self.pins_refused += 1;
            return Reply::Error(RpcError::new(
                code,
                format!("storage.PIN: record {key}: {e} ({pinned} pinned before it)"),
            ));
        }
        to_reply(&PinReply {
            pinned,
            own_bytes: cx.own_bytes() as u64,
            max_bytes: self.max_pin_bytes as u64,
        })
    }

    fn unpin(&mut self, cx: &mut PluginCx<'_>, from: &Contact, params: &Bytes) -> Reply {
        if let Err(r) = self.may_pin(from, UNPIN) {
            return r;
        }
        let p: UnpinParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => return invalid(format!("storage.UNPIN params: {e}")),
        };
        if p.keys.len() > MAX_PIN_RECORDS {
            return invalid(format!(
                "storage.UNPIN keys: {} given, limit {MAX_PIN_RECORDS}",
                p.keys.len()
            ));
        }
        // Only the requester's own pins: not another client's, nor the node's own puts.
        let unpinned = p
            .keys
            .iter()
            .filter(|k| {
                cx.is_own(k)
                    && cx.record(k).is_some_and(|r| r.publisher == Some(from.id))
                    && cx.unpublish(k)
            })
            .count();
        to_reply(&UnpinReply { unpinned })
    }

    /// Values served so far, and their bytes.
    pub fn served(&self) -> (u64, u64) {
        (self.served, self.served_bytes)
    }

    fn fetch(&mut self, cx: &PluginCx<'_>, params: &Bytes) -> Reply {
        let p: FetchParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => {
                return Reply::Error(RpcError::new(
                    RpcError::INVALID_PARAMS,
                    format!("storage.FETCH params: {e}"),
                ));
            }
        };
        if p.keys.len() > MAX_FETCH_KEYS {
            return Reply::Error(RpcError::new(
                RpcError::INVALID_PARAMS,
                format!(
                    "storage.FETCH keys: {} asked, limit {MAX_FETCH_KEYS}",
                    p.keys.len()
                ),
            ));
        }
        let budget = match p.max_bytes {
            0 => self.max_reply_bytes,
            n => n.min(self.max_reply_bytes),
        };
        let mut reply = FetchReply::default();
        let mut used = 0usize;
        for key in p.keys {
            match cx.record(&key) {
                Some(r) => {
                    // The first value always goes (the requester asked for it alone if it is
                    // the size of a whole answer); later ones only while they fit.
                    if used > 0 && used + r.value.len() > budget {
                        continue;
                    }
                    used += r.value.len();
                    reply.values.push((key, r.value));
                }
                _ => reply.missing.push(key),
            }
        }
        self.served += reply.values.len() as u64;
        self.served_bytes += used as u64;
        to_reply(&reply)
    }
}

fn invalid(msg: String) -> Reply {
    Reply::Error(RpcError::new(RpcError::INVALID_PARAMS, msg))
}

fn to_reply<T: Serialize>(v: &T) -> Reply {
    match serde_json::to_vec(v) {
        Ok(v) => Reply::Result(Bytes::from(v)),
        Err(e) => Reply::Error(RpcError::new(RpcError::INTERNAL, e.to_string())),
    }
}

impl Plugin for StoragePlugin {
    fn namespace(&self) -> &'static str {
        NAMESPACE
    }

    fn on_request(
        &mut self,
        cx: &mut PluginCx<'_>,
        from: &Contact,
        method: &str,
        params: &Bytes,
    ) -> Reply {
        match method {
            FETCH => self.fetch(cx, params),
            PIN => self.pin(cx, from, params),
            UNPIN => self.unpin(cx, from, params),
            other => Reply::Error(RpcError::new(
                RpcError::METHOD_NOT_FOUND,
                format!("method not found: {other}"),
            )),
        }
    }
}
