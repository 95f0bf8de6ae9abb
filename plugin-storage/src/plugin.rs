//! The `storage` plugin: `storage.FETCH`, many chunks from one holder in one answer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use kad_core::{Contact, Key, Plugin, PluginCx, Reply, RpcError};
use serde::{Deserialize, Serialize};

/// The plugin's namespace.
pub const NAMESPACE: &str = "storage";
/// The fetch method: `{"keys": ["<40 hex>", ...]}` answered with [`FetchReply`].
pub const FETCH: &str = "storage.FETCH";
/// Most keys one fetch may ask for.
pub const MAX_FETCH_KEYS: usize = 4096;

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
}

impl StoragePlugin {
    /// A plugin answering with at most `max_reply_bytes` of values (before base64) per fetch:
    /// size it to the node's largest message, e.g. three quarters of it minus 16 KiB.
    pub fn new(max_reply_bytes: usize) -> Self {
        Self {
            max_reply_bytes: max_reply_bytes.max(1),
            served: 0,
            served_bytes: 0,
        }
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
        let now = cx.unix_ms();
        let mut reply = FetchReply::default();
        let mut used = 0usize;
        for key in p.keys {
            match cx.store().get(&key) {
                Some(r) if !r.is_expired(now) => {
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
        match serde_json::to_vec(&reply) {
            Ok(v) => Reply::Result(Bytes::from(v)),
            Err(e) => Reply::Error(RpcError::new(RpcError::INTERNAL, e.to_string())),
        }
    }
}

impl Plugin for StoragePlugin {
    fn namespace(&self) -> &'static str {
        NAMESPACE
    }

    fn on_request(
        &mut self,
        cx: &mut PluginCx<'_>,
        _from: &Contact,
        method: &str,
        params: &Bytes,
    ) -> Reply {
        match method {
            FETCH => self.fetch(cx, params),
            other => Reply::Error(RpcError::new(
                RpcError::METHOD_NOT_FOUND,
                format!("method not found: {other}"),
            )),
        }
    }
}
