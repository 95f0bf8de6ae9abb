//! The native wire protocol: JSON-RPC 2.0 messages authenticated with secp256k1 keys.
//!
//! `PROTOCOL.md` at the repository root is the specification; this module implements it and the
//! test suite checks its test vectors. In short, a datagram is the JSON array
//! `[SIGNED,"AUTH"]`, where `SIGNED` is a JSON-RPC 2.0 object carrying a `kad` member (the
//! sender's key, id, addresses, the recipient's id, a timestamp and a nonce) and `AUTH` is one
//! of:
//!
//! - version 1: the hex of the 64-byte ECDSA signature (RFC 6979 nonces, low-S) over SHA-256 of
//!   exactly the bytes of `SIGNED` as they appear in the datagram. Any node can check it.
//! - version 2: the hex of a 32-byte HMAC-SHA256 of those bytes under the key the two nodes share
//!   ([`pair_key`]: static ECDH, then HKDF bound to both ids), for a recipient whose key the
//!   sender knows. A MAC costs well under a microsecond where a signature and its check cost about
//!   120; only the recipient can check it.
//!
//! A node signs (version 1) its first message to a peer, and MACs (version 2) every later one
//! once it holds the peer's key and knows it speaks version 2: from the peer's own messages, or
//! from the contacts of an answer, which carry their keys. On a link that proves both node keys
//! (QUIC: [`CodecCx::proven`](crate::CodecCx::proven)) a version 2 message carries neither: its
//! `AUTH` is empty.
//!
//! ```
//! use kad_core::{Config, NativeCodec, NativeIdentity, Node};
//! use std::sync::Arc;
//! let identity = Arc::new(NativeIdentity::from_secret(&[7; 32])?);
//! let node = Node::builder(Config::default())
//!     .identity(identity.clone())
//!     .codec(Box::new(NativeCodec::new(identity.clone())))
//!     .build(std::time::Instant::now())?;
//! assert_eq!(node.id(), identity.id());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use k256::ecdsa::signature::{Signer, Verifier};
use k256::ecdsa::{Signature, SigningKey, VerifyingKey};
use ripemd::Ripemd160;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

mod peers;

use peers::{Peers, mac_verify};
pub use peers::{mac_tag, pair_key};

use crate::addr::{Contact, PeerAddr};
use crate::codec::{Codec, CodecCx, DecodeError, EncodeError, Identity};
use crate::id::{Key, NodeId};
use crate::message::{Body, Message, Request, Response, RpcError, TxnId};
use crate::record::Record;

/// Largest datagram the native codec produces or accepts: the IPv4 UDP payload limit.
pub const MAX_DATAGRAM: usize = 65_507;
/// Largest record value that always fits a native datagram, with a full list of contacts beside
/// it in a `FIND_VALUE` answer (base64 grows values by a third).
pub const MAX_NATIVE_VALUE: usize = 45_000;
/// The largest record value a native node takes when its largest message is `max_message_len`
/// bytes: values travel base64-encoded (4/3) inside a signed JSON message beside up to 20
/// contacts (16 KiB kept for them). Never below [`MAX_NATIVE_VALUE`], which fits one datagram:
/// 45,000 bytes on UDP, 774,144 with 1 MiB QUIC or WebSocket messages.
pub fn max_native_value_for(max_message_len: usize) -> usize {
    (max_message_len.saturating_sub(16 * 1024) / 4 * 3).max(MAX_NATIVE_VALUE)
}

/// Most contacts accepted in one answer.
pub const MAX_WIRE_NODES: usize = 64;
/// Most addresses accepted in one contact.
pub const MAX_WIRE_ADDRS: usize = 8;
/// Longest transaction id accepted, in bytes (hex doubles it on the wire).
pub const MAX_TXN_LEN: usize = 32;
/// Longest method name accepted.
pub const MAX_METHOD_LEN: usize = 64;
/// The highest protocol version this codec speaks: 2, messages with a MAC between peers that
/// know each other's keys. Version 1 (a signature on every message) stays understood and is what
/// a node sends before it knows the recipient's key.
pub const VERSION: u32 = 2;

/// Length of the signature trailer: `,"` + 128 hex digits + `"]`.
const TAIL: usize = 2 + 128 + 2;
/// Length of the MAC trailer (version 2): `,"` + 64 hex digits + `"]`.
const MAC_TAIL: usize = 2 + 64 + 2;
/// Length of the empty trailer of a message on a link that proves its sender (version 2): `,""]`.
const PROVEN_TAIL: usize = 4;

/// How a message is authenticated.
enum Auth {
    /// Version 1: an ECDSA signature.
    Sign,
    /// Version 2: a MAC under the pairwise key.
    Mac([u8; 32]),
    /// Version 2 on a link that proves both ends (QUIC): nothing of its own.
    Link,
}

/// The id a public key maps to: RIPEMD-160(SHA-256(compressed SEC1 public key)).
pub fn node_id_from_public_key(public_key: &[u8]) -> NodeId {
    let sha = Sha256::digest(public_key);
    let rip = Ripemd160::digest(sha);
    let mut id = [0u8; 20];
    id.copy_from_slice(&rip);
    NodeId::from_bytes(id)
}

/// The work in a node id (the id cost, S/Kademlia's static puzzle): the number of leading zero
/// bits of SHA-256(id). A random key pair's id has `b` bits of work with probability `2^-b`, so
/// an identity with `b` bits costs about `2^b` key generations
/// ([`NativeIdentity::generate_with_work`]), and verifying one costs one hash. A network whose
/// nodes require `b` bits ([`NativeCodec::min_id_work`]) makes each Sybil identity `2^b` times
/// dearer, and an id chosen near a target (`p` bits of prefix) `2^(b + p)`.
pub fn id_work(id: &NodeId) -> u32 {
    let h = Sha256::digest(id.as_bytes());
    let mut bits = 0;
    for byte in h {
        if byte == 0 {
            bits += 8;
        } else {
            bits += byte.leading_zeros();
            break;
        }
    }
    bits
}

/// Content key of a value on the native network: RIPEMD-160(SHA-256(value)).
pub fn content_key(value: &[u8]) -> Key {
    node_id_from_public_key(value)
}

/// The secret is not a valid secp256k1 scalar (zero, or not below the group order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid secp256k1 secret key: it must be 32 bytes, non-zero and below the group order")]
pub struct InvalidKey;

/// A native identity: a secp256k1 key pair and the node id derived from its public key.
pub struct NativeIdentity {
    key: SigningKey,
    public: [u8; 33],
    id: NodeId,
}

impl NativeIdentity {
    /// The identity of a 32-byte secret key.
    pub fn from_secret(secret: &[u8; 32]) -> Result<Self, InvalidKey> {
        let key = SigningKey::from_bytes(secret.into()).map_err(|_| InvalidKey)?;
        let point = key.verifying_key().to_encoded_point(true);
        let mut public = [0u8; 33];
        public.copy_from_slice(point.as_bytes());
        Ok(Self {
            id: node_id_from_public_key(&public),
            key,
            public,
        })
    }

    /// A fresh identity from `rng` (use a cryptographically secure one, e.g. seeded from the OS).
    pub fn generate<R: rand::Rng + ?Sized>(rng: &mut R) -> Self {
        loop {
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            if let Ok(id) = Self::from_secret(&secret) {
                return id;
            }
        }
    }

    /// A fresh identity whose id carries at least `bits` bits of work ([`id_work`]): about
    /// `2^bits` key generations (each some tens of microseconds; `bits` = 16 takes seconds).
    /// `bits` is capped at 40.
    pub fn generate_with_work<R: rand::Rng + ?Sized>(rng: &mut R, bits: u32) -> Self {
        let bits = bits.min(40);
        loop {
            let id = Self::generate(rng);
            if id_work(&id.id) >= bits {
                return id;
            }
        }
    }

    /// The 32-byte secret key. Keep it private (the CLI stores it in a file of mode 0600).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes().into()
    }

    /// The 33-byte compressed SEC1 public key.
    pub fn public_key_bytes(&self) -> [u8; 33] {
        self.public
    }

    /// The node id: RIPEMD-160(SHA-256(compressed public key)).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Signs `msg`: ECDSA over SHA-256(msg), RFC 6979 nonce, low-S, 64 bytes `r || s`.
    pub fn sign_bytes(&self, msg: &[u8]) -> [u8; 64] {
        let sig: Signature = self.key.sign(msg);
        sig.to_bytes().into()
    }
}

impl fmt::Debug for NativeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Identity for NativeIdentity {
    fn node_id(&self) -> NodeId {
        self.id
    }
    fn public_key(&self) -> Vec<u8> {
        self.public.to_vec()
    }
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.sign_bytes(msg).to_vec()
    }
}

/// Checks a native signature: `public_key` (33 bytes compressed) signed `msg` with `sig` (64
/// bytes `r || s`, low-S).
pub fn verify_signature(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let Ok(vk) = VerifyingKey::from_sec1_bytes(public_key) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(sig) else {
        return false;
    };
    vk.verify(msg, &sig).is_ok()
}

/// Remembers the (timestamp, sender, nonce) triples seen within the timestamp window, so a
/// captured message cannot be replayed (a replay carries the same signed timestamp and nonce).
///
/// Ordered by timestamp, so entries leave in timestamp order: when the window has passed them, or
/// when the cache is full, the oldest go first and every message not newer than the newest
/// entry evicted that way is refused from then on (it might be a replay of it). A peer whose
/// clock runs ahead cannot push that floor past honest messages: its entries are the last to go.
/// No hashing, so no hash-flooding either.
struct ReplayCache {
    seen: BTreeSet<(u64, NodeId, u64)>,
    floor: u64,
    cap: usize,
}

impl ReplayCache {
    fn new(cap: usize) -> Self {
        Self {
            seen: BTreeSet::new(),
            floor: 0,
            cap,
        }
    }

    fn expire(&mut self, now: u64, window: u64) {
        while let Some(&(t, _, _)) = self.seen.first() {
            if t.saturating_add(window) >= now {
                break;
            }
            self.seen.pop_first();
        }
    }

    /// True if this message may be a replay (seen, or not newer than an evicted entry).
    fn is_replay(&self, ts: u64, sender: NodeId, nonce: u64) -> bool {
        ts <= self.floor || self.seen.contains(&(ts, sender, nonce))
    }

    /// Records a verified message; false if it was a replay after all.
    fn insert(&mut self, sender: NodeId, nonce: u64, ts: u64, now: u64, window: u64) -> bool {
        self.expire(now, window);
        if ts <= self.floor || !self.seen.insert((ts, sender, nonce)) {
            return false;
        }
        while self.seen.len() > self.cap {
            if let Some((t, _, _)) = self.seen.pop_first() {
                self.floor = self.floor.max(t);
            }
        }
        true
    }
}

/// Most public keys whose parsed form and id are cached.
const KEY_CACHE: usize = 4096;
/// Most peers whose keys (and pairwise keys) a codec remembers, by default.
pub const DEFAULT_PEER_CAPACITY: usize = 4096;

/// The native codec: authenticated JSON-RPC 2.0 (see `PROTOCOL.md`).
///
/// Encoding signs with the node's [`NativeIdentity`], or MACs for a peer whose key it knows, or
/// leaves the message bare on a link that proved the recipient (dropping contacts from an answer
/// that would not fit one datagram); decoding checks, in this order: size, envelope, JSON and
/// its shape, the id against the key, the timestamp window (`Config::max_clock_skew`), the
/// recipient, the nonce against the replay cache, and the signature, MAC or proving link
/// (PROTOCOL.md section 8). Each failure is a distinct [`DecodeError`] that the engine counts in
/// [`Stats`](crate::Stats). The codec remembers the keys of up to
/// [`DEFAULT_PEER_CAPACITY`] peers, learned from their messages and from the contacts of answers.
pub struct NativeCodec {
    identity: Arc<NativeIdentity>,
    public_hex: String,
    max_len: usize,
    replay: ReplayCache,
    keys: FxHashMap<[u8; 33], (VerifyingKey, NodeId)>,
    min_id_work: u32,
    peers: Peers,
    max_version: u32,
}

impl fmt::Debug for NativeCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeCodec")
            .field("id", &self.identity.id)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl NativeCodec {
    /// Default capacity of the replay cache (messages remembered within the window), about
    /// 55 MB when full. Chosen above what one node can verify in the 120 s an entry can live
    /// (about 11,000 verifications/s on a slow core): to fill it, and so force the floor up, an
    /// attacker has to keep the node verifying at full speed for two minutes, a CPU flood the
    /// runtime's fair inbox already contains. A smaller cache is safe (never accepts a replay)
    /// but easier to fill.
    pub const DEFAULT_REPLAY_CAPACITY: usize = 1_000_000;

    /// A codec signing as `identity`, with the limits of [`MAX_DATAGRAM`] and
    /// [`DEFAULT_REPLAY_CAPACITY`](Self::DEFAULT_REPLAY_CAPACITY).
    pub fn new(identity: Arc<NativeIdentity>) -> Self {
        Self {
            public_hex: hex::encode(identity.public),
            identity,
            max_len: MAX_DATAGRAM,
            replay: ReplayCache::new(Self::DEFAULT_REPLAY_CAPACITY),
            keys: FxHashMap::default(),
            min_id_work: 0,
            peers: Peers::new(DEFAULT_PEER_CAPACITY),
            max_version: VERSION,
        }
    }

    /// Speaks at most protocol version `version` (1 or 2; default [`VERSION`]). At 1 the codec
    /// signs every message and announces nothing more, as a version 1 node does (mixed-network
    /// tests, and the version 1 test vectors); it still understands version 2.
    pub fn max_version(mut self, version: u32) -> Self {
        self.max_version = version.clamp(1, VERSION);
        self
    }

    /// Sets how many peers' keys and pairwise keys are remembered (default
    /// [`DEFAULT_PEER_CAPACITY`], about 130 bytes each). A peer forgotten costs one signature on
    /// the next message to it.
    pub fn peer_capacity(mut self, cap: usize) -> Self {
        self.peers.set_cap(cap);
        self
    }

    /// How many peers' keys are known.
    pub fn known_peers(&self) -> usize {
        self.peers.len()
    }

    /// Whether the next message to `id` would carry a MAC (version 2) rather than a signature.
    pub fn would_mac(&self, id: &NodeId) -> bool {
        self.max_version >= 2 && self.peers.get(id).is_some_and(|p| p.v2)
    }

    /// Requires `bits` bits of work ([`id_work`]) in every peer's id: a message from a weaker
    /// id is dropped before its signature is checked (counted in `Stats::dropped_auth`), and
    /// contacts with weaker ids are removed from the node lists of answers. Every node and
    /// client of such a network needs an identity from
    /// [`NativeIdentity::generate_with_work`] with at least `bits`. Default 0 (no id cost).
    pub fn min_id_work(mut self, bits: u32) -> Self {
        self.min_id_work = bits;
        self
    }

    /// Sets the largest datagram produced or accepted (at most [`MAX_DATAGRAM`] is sensible).
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Sets how many nonces the replay cache remembers (at least 1).
    pub fn replay_capacity(mut self, cap: usize) -> Self {
        self.replay.cap = cap.max(1);
        self
    }

    fn key(&mut self, public: [u8; 33]) -> Option<(VerifyingKey, NodeId)> {
        if let Some(k) = self.keys.get(&public) {
            return Some(*k);
        }
        // Only valid keys are cached, so junk keys cannot flush the cache.
        let parsed = VerifyingKey::from_sec1_bytes(&public)
            .ok()
            .map(|vk| (vk, node_id_from_public_key(&public)))?;
        if self.keys.len() >= KEY_CACHE {
            self.keys.clear();
        }
        self.keys.insert(public, parsed);
        Some(parsed)
    }
}

// ---- wire structs (output) ----

struct Hex<'a>(&'a [u8]);

impl Serialize for Hex<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Keys, nonces and transaction ids fit on the stack; anything longer allocates.
        let mut buf = [0u8; 2 * 33];
        if let Some(out) = buf.get_mut(..2 * self.0.len()) {
            if hex::encode_to_slice(self.0, out).is_ok() {
                return s.serialize_str(std::str::from_utf8(out).unwrap_or_default());
            }
        }
        s.serialize_str(&hex::encode(self.0))
    }
}

#[derive(Serialize)]
struct OutMsg<'a> {
    jsonrpc: &'static str,
    id: Hex<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<OutParams<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<OutResult<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RpcError>,
    kad: OutMeta<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutParams<'a> {
    Empty {},
    FindNode {
        target: NodeId,
    },
    FindValue {
        key: Key,
    },
    Store {
        record: WireRecord,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        nodes: bool,
    },
    Custom(&'a RawValue),
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutResult<'a> {
    Pong {
        pong: bool,
    },
    Nodes {
        nodes: OutNodes<'a>,
    },
    Value {
        record: WireRecord,
        nodes: OutNodes<'a>,
    },
    Stored {
        stored: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        nodes: Option<OutNodes<'a>>,
    },
    Custom {
        data: &'a RawValue,
        nodes: OutNodes<'a>,
    },
}

/// The contacts of an answer, each with its key when this node knows the contact speaks
/// version 2 (so the requester can MAC its first message to it).
struct OutNodes<'a> {
    nodes: &'a [Contact],
    peers: Option<&'a Peers>,
}

#[derive(Serialize)]
struct OutContact<'a> {
    id: NodeId,
    addrs: &'a [PeerAddr],
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<Hex<'a>>,
}

impl Serialize for OutNodes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.nodes.len()))?;
        for c in self.nodes {
            let key = self
                .peers
                .and_then(|p| p.get(&c.id))
                .filter(|p| p.v2)
                .map(|p| Hex(&p.public));
            seq.serialize_element(&OutContact {
                id: c.id,
                addrs: &c.addrs,
                key,
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct OutMeta<'a> {
    v: u32,
    from: OutFrom<'a>,
    to: Option<NodeId>,
    ts: u64,
    nonce: Hex<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    up: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ro: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    seen: Option<&'a PeerAddr>,
}

#[derive(Serialize)]
struct OutFrom<'a> {
    id: NodeId,
    key: &'a str,
    addrs: &'a [PeerAddr],
}

/// A record as the wire carries it (value in standard padded base64; no local bookkeeping).
#[derive(Serialize, Deserialize)]
struct WireRecord {
    key: Key,
    value: String,
    publisher: Option<NodeId>,
    published_at: u64,
    expires_at: u64,
}

impl WireRecord {
    fn from_record(r: &Record) -> Self {
        Self {
            key: r.key,
            value: B64.encode(&r.value),
            publisher: r.publisher,
            published_at: r.published_at_ms,
            expires_at: r.expires_at_ms,
        }
    }
    fn into_record(self) -> Result<Record, DecodeError> {
        let value = B64
            .decode(self.value.as_bytes())
            .map_err(|e| DecodeError::Malformed(format!("record value: {e}")))?;
        Ok(Record {
            key: self.key,
            value: Bytes::from(value),
            publisher: self.publisher,
            published_at_ms: self.published_at,
            expires_at_ms: self.expires_at,
            stored_at_ms: 0,
        })
    }
}

// ---- wire structs (input) ----

#[derive(Deserialize)]
struct InMsg<'a> {
    #[serde(borrow)]
    jsonrpc: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<RpcError>,
    #[serde(borrow)]
    kad: InMeta<'a>,
}

#[derive(Deserialize)]
struct InMeta<'a> {
    v: u32,
    #[serde(borrow)]
    from: InFrom<'a>,
    to: Option<NodeId>,
    ts: u64,
    #[serde(borrow)]
    nonce: Cow<'a, str>,
    #[serde(default)]
    up: Option<u32>,
    #[serde(default)]
    ro: bool,
    #[serde(default)]
    seen: Option<PeerAddr>,
}

#[derive(Deserialize)]
struct InFrom<'a> {
    id: NodeId,
    #[serde(borrow)]
    key: Cow<'a, str>,
    addrs: Vec<PeerAddr>,
}

/// A contact in an answer; `key` (version 2) is the contact's public key.
#[derive(Deserialize)]
struct InContact<'a> {
    id: NodeId,
    addrs: Arc<[PeerAddr]>,
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct InTarget {
    target: NodeId,
}

#[derive(Deserialize)]
struct InKey {
    key: Key,
}

#[derive(Deserialize)]
struct InStore {
    record: WireRecord,
    #[serde(default)]
    nodes: bool,
}

#[derive(Deserialize)]
struct InResult<'a> {
    #[serde(default)]
    pong: Option<bool>,
    #[serde(default)]
    stored: Option<bool>,
    #[serde(default, borrow)]
    nodes: Option<Vec<InContact<'a>>>,
    #[serde(default)]
    record: Option<WireRecord>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

fn is_lower_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn malformed(what: impl fmt::Display) -> DecodeError {
    DecodeError::Malformed(what.to_string())
}

fn check_nodes(nodes: &[InContact<'_>]) -> Result<(), DecodeError> {
    if nodes.len() > MAX_WIRE_NODES {
        return Err(malformed(format_args!(
            "{} contacts, more than {MAX_WIRE_NODES}",
            nodes.len()
        )));
    }
    if nodes.iter().any(|c| c.addrs.len() > MAX_WIRE_ADDRS) {
        return Err(malformed(format_args!(
            "a contact with more than {MAX_WIRE_ADDRS} addresses"
        )));
    }
    Ok(())
}

fn raw(bytes: &[u8]) -> Result<&RawValue, EncodeError> {
    serde_json::from_slice::<&RawValue>(bytes)
        .map_err(|e| EncodeError::Unsupported(format!("plugin payload is not JSON: {e}")))
}

impl NativeCodec {
    fn encode_one(&mut self, msg: &Message, cx: &mut CodecCx<'_>) -> Result<Bytes, EncodeError> {
        if msg.sender.id != self.identity.id {
            return Err(EncodeError::Unsupported(
                "the sender is not this codec's identity".into(),
            ));
        }
        // Version 2 to a peer whose key we hold and that speaks it: nothing more on a link that
        // delivers to that peer alone, else a MAC. A signature otherwise.
        let auth = match msg.recipient {
            Some(to) if self.max_version >= 2 && self.peers.get(&to).is_some_and(|p| p.v2) => {
                if cx.proven == Some(to) {
                    Auth::Link
                } else {
                    self.peers
                        .pair_for_sending(&self.identity, &to)
                        .map_or(Auth::Sign, Auth::Mac)
                }
            }
            _ => Auth::Sign,
        };
        let signs = matches!(auth, Auth::Sign);
        let peers = (self.max_version >= 2).then_some(&self.peers);
        let out_nodes = |nodes| OutNodes { nodes, peers };
        let (method, params, result, error) = match &msg.body {
            Body::Request(req) => {
                let params = match req {
                    Request::Ping => OutParams::Empty {},
                    Request::FindNode { target } => OutParams::FindNode { target: *target },
                    Request::FindValue { key } => OutParams::FindValue { key: *key },
                    Request::Store { record, want_nodes } => OutParams::Store {
                        record: WireRecord::from_record(record),
                        nodes: *want_nodes,
                    },
                    Request::Custom { params, .. } => OutParams::Custom(raw(params)?),
                };
                (Some(req.method()), Some(params), None, None)
            }
            Body::Response(rsp) => {
                let result = match rsp {
                    Response::Pong => OutResult::Pong { pong: true },
                    Response::Nodes { nodes } => OutResult::Nodes {
                        nodes: out_nodes(nodes),
                    },
                    Response::Value { record, nodes } => OutResult::Value {
                        record: WireRecord::from_record(record),
                        nodes: out_nodes(nodes),
                    },
                    Response::Stored { nodes } => OutResult::Stored {
                        stored: true,
                        nodes: (!nodes.is_empty()).then(|| out_nodes(nodes)),
                    },
                    Response::Custom { result, nodes } => OutResult::Custom {
                        data: raw(result)?,
                        nodes: out_nodes(nodes),
                    },
                };
                (None, None, Some(result), None)
            }
            Body::Error(e) => (None, None, None, Some(e)),
        };
        let nonce = cx.rng.next_u64().to_be_bytes();
        let out = OutMsg {
            jsonrpc: "2.0",
            id: Hex(&msg.txn.0),
            method,
            params,
            result,
            error,
            kad: OutMeta {
                v: if signs { 1 } else { 2 },
                from: OutFrom {
                    id: msg.sender.id,
                    key: &self.public_hex,
                    addrs: &msg.sender.addrs,
                },
                to: msg.recipient,
                ts: cx.unix_ms,
                nonce: Hex(&nonce),
                // A signed message from a node that speaks version 2 says so.
                up: (signs && self.max_version >= 2).then_some(self.max_version),
                ro: msg.read_only,
                // Only answers say where they see the requester.
                seen: match msg.body {
                    Body::Request(_) => None,
                    _ => msg.observed.as_ref(),
                },
            },
        };
        // Sized for the message up front: a large value is encoded without the copies a growing
        // buffer makes, and the buffer sent holds no spare half.
        let (payload, nodes) = match &msg.body {
            Body::Request(Request::Store { record, .. }) => (record.value.len().div_ceil(3) * 4, 0),
            Body::Request(Request::Custom { params, .. }) => (params.len(), 0),
            Body::Response(Response::Value { record, nodes }) => {
                (record.value.len().div_ceil(3) * 4, nodes.len())
            }
            Body::Response(Response::Custom { result, nodes }) => (result.len(), nodes.len()),
            Body::Response(Response::Nodes { nodes } | Response::Stored { nodes }) => {
                (0, nodes.len())
            }
            _ => (0, 0),
        };
        let mut buf = Vec::with_capacity(
            (1024 + payload + 256 * nodes).min(self.max_len.saturating_add(256)),
        );
        buf.push(b'[');
        serde_json::to_writer(&mut buf, &out)
            .map_err(|e| EncodeError::Unsupported(e.to_string()))?;
        let tail = match auth {
            Auth::Sign => TAIL,
            Auth::Mac(_) => MAC_TAIL,
            Auth::Link => PROVEN_TAIL,
        };
        if buf.len() + tail > self.max_len {
            return Err(EncodeError::TooLarge {
                len: buf.len() + tail,
                max: self.max_len,
            });
        }
        let mut bytes = [0u8; 64];
        let auth: &[u8] = match (auth, msg.recipient) {
            (Auth::Mac(pair), Some(to)) => {
                bytes[..32].copy_from_slice(&mac_tag(&pair, &msg.sender.id, &to, &buf[1..]));
                &bytes[..32]
            }
            (Auth::Link, _) => &[],
            _ => {
                bytes = self.identity.sign_bytes(&buf[1..]);
                &bytes
            }
        };
        buf.extend_from_slice(b",\"");
        let at = buf.len();
        buf.resize(at + 2 * auth.len(), 0);
        hex::encode_to_slice(auth, &mut buf[at..])
            .map_err(|e| EncodeError::Unsupported(e.to_string()))?;
        buf.extend_from_slice(b"\"]");
        if buf.len() > self.max_len {
            return Err(EncodeError::TooLarge {
                len: buf.len(),
                max: self.max_len,
            });
        }
        Ok(Bytes::from(buf))
    }
}

impl Codec for NativeCodec {
    fn encode(&mut self, msg: &Message, cx: &mut CodecCx<'_>) -> Result<Bytes, EncodeError> {
        match self.encode_one(msg, cx) {
            Err(EncodeError::TooLarge { .. }) => {}
            r => return r,
        }
        // An answer too large for one datagram (a big value, contacts with many or long
        // addresses) goes out with fewer contacts rather than not at all.
        let Body::Response(rsp) = &msg.body else {
            return self.encode_one(msg, cx);
        };
        let mut n = rsp.nodes().len();
        loop {
            n /= 2;
            let mut rsp = rsp.clone();
            match &mut rsp {
                Response::Nodes { nodes }
                | Response::Value { nodes, .. }
                | Response::Custom { nodes, .. } => nodes.truncate(n),
                _ => return self.encode_one(msg, cx),
            }
            let trimmed = Message {
                body: Body::Response(rsp),
                ..msg.clone()
            };
            match self.encode_one(&trimmed, cx) {
                Err(EncodeError::TooLarge { .. }) if n > 0 => {}
                r => return r,
            }
        }
    }

    fn decode(&mut self, bytes: &[u8], cx: &mut CodecCx<'_>) -> Result<Message, DecodeError> {
        let len = bytes.len();
        if len > self.max_len {
            return Err(DecodeError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        if bytes.first() != Some(&b'[') || !bytes.ends_with(b"\"]") {
            return Err(malformed("not a [SIGNED,\"AUTH\"] envelope"));
        }
        // The trailer's length tells the form: none (version 2 on a proving link), a MAC (64 hex
        // digits, version 2) or a signature (128, version 1). Hex digits never contain `,"`, so
        // at most one form matches.
        let tail = if len >= 3 + PROVEN_TAIL && bytes.ends_with(b",\"\"]") {
            PROVEN_TAIL
        } else if len >= 3 + MAC_TAIL && &bytes[len - MAC_TAIL..len - MAC_TAIL + 2] == b",\"" {
            MAC_TAIL
        } else if len >= 3 + TAIL && &bytes[len - TAIL..len - TAIL + 2] == b",\"" {
            TAIL
        } else {
            return Err(malformed("not a [SIGNED,\"AUTH\"] envelope"));
        };
        let signed = &bytes[1..len - tail];
        let auth_hex = &bytes[len - tail + 2..len - 2];
        let mut auth = [0u8; 64];
        let auth = &mut auth[..auth_hex.len() / 2];
        hex::decode_to_slice(auth_hex, auth)
            .map_err(|_| malformed("the signature or MAC is not hex"))?;
        if signed.first() != Some(&b'{') {
            return Err(malformed("the signed message is not a JSON object"));
        }
        if !is_lower_hex(auth_hex) {
            return Err(malformed("the signature or MAC is not lowercase hex"));
        }
        let m: InMsg<'_> = serde_json::from_slice(signed).map_err(malformed)?;
        match (&m.method, &m.result, &m.error) {
            (Some(method), None, None) => {
                if method.is_empty() || method.len() > MAX_METHOD_LEN {
                    return Err(malformed("method name must be 1 to 64 bytes"));
                }
            }
            (None, Some(_), None) | (None, None, Some(_)) => {}
            _ => {
                return Err(malformed(
                    "exactly one of method, result, error is required",
                ));
            }
        }
        if ![
            m.id.as_bytes(),
            m.kad.from.key.as_bytes(),
            m.kad.nonce.as_bytes(),
        ]
        .iter()
        .all(|h| is_lower_hex(h))
        {
            return Err(malformed(
                "id, kad.from.key and kad.nonce must be lowercase hex",
            ));
        }
        if m.jsonrpc != "2.0" {
            return Err(malformed("jsonrpc is not \"2.0\""));
        }
        let mac = tail != TAIL;
        match (m.kad.v, mac) {
            (1, false) | (2, true) => {}
            (1, true) => return Err(malformed("a version 1 message carries a signature")),
            (2, false) => return Err(malformed("a version 2 message carries a signature")),
            (v, _) => return Err(malformed(format_args!("unsupported version {v}"))),
        }
        let mut public = [0u8; 33];
        hex::decode_to_slice(m.kad.from.key.as_bytes(), &mut public)
            .map_err(|_| malformed("kad.from.key is not 66 hex digits"))?;
        let mut nonce = [0u8; 8];
        hex::decode_to_slice(m.kad.nonce.as_bytes(), &mut nonce)
            .map_err(|_| malformed("kad.nonce is not 16 hex digits"))?;
        let nonce = u64::from_be_bytes(nonce);
        if m.id.is_empty() || m.id.len() > 2 * MAX_TXN_LEN {
            return Err(malformed("id must be 1 to 32 bytes of hex"));
        }
        let txn = hex::decode(m.id.as_bytes()).map_err(|_| malformed("id is not hex"))?;
        if m.kad.from.addrs.len() > MAX_WIRE_ADDRS {
            return Err(malformed("kad.from.addrs: too many addresses"));
        }
        let bad_auth = || {
            if mac {
                DecodeError::BadMac
            } else {
                DecodeError::BadSignature
            }
        };
        let Some((vk, id)) = self.key(public) else {
            return Err(bad_auth());
        };
        if id != m.kad.from.id {
            return Err(DecodeError::IdMismatch);
        }
        if self.min_id_work > 0 {
            let work = id_work(&id);
            if work < self.min_id_work {
                return Err(DecodeError::Auth(format!(
                    "sender id has {work} bits of work, {} required",
                    self.min_id_work
                )));
            }
        }
        let skew = m.kad.ts as i128 - cx.unix_ms as i128;
        if skew.unsigned_abs() > u128::from(cx.max_skew_ms) {
            return Err(DecodeError::Stale {
                skew_ms: skew.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            });
        }
        match m.kad.to {
            Some(to) if to != cx.local_id => return Err(DecodeError::WrongRecipient),
            // A MAC binds a recipient: a version 2 message always names one.
            None if mac || m.method.as_deref() != Some("PING") => {
                return Err(DecodeError::WrongRecipient);
            }
            _ => {}
        }
        // A nonce already seen costs no signature or MAC check (replays are a cheap flood
        // otherwise).
        self.replay.expire(cx.unix_ms, cx.max_skew_ms);
        if self.replay.is_replay(m.kad.ts, id, nonce) {
            return Err(DecodeError::Replay);
        }
        // Authenticate: the link's proof of the sender, a MAC, or a signature.
        let verified_pair = if tail == PROVEN_TAIL {
            if cx.proven != Some(id) {
                return Err(DecodeError::Unproven);
            }
            None
        } else if mac {
            let pair = self
                .peers
                .pair_for_receiving(&self.identity, &id, &public, &vk);
            let mut tag = [0u8; 32];
            tag.copy_from_slice(auth);
            if !mac_verify(&pair, &id, &cx.local_id, signed, &tag) {
                return Err(DecodeError::BadMac);
            }
            Some(pair)
        } else {
            // On a link that proved this sender (QUIC) the signature adds nothing: not checked.
            if cx.proven != Some(id) {
                let sig = Signature::from_slice(auth).map_err(|_| DecodeError::BadSignature)?;
                vk.verify(signed, &sig)
                    .map_err(|_| DecodeError::BadSignature)?;
            }
            None
        };
        if !self
            .replay
            .insert(id, nonce, m.kad.ts, cx.unix_ms, cx.max_skew_ms)
        {
            return Err(DecodeError::Replay);
        }
        match verified_pair {
            Some(pair) => self.peers.verified_v2(id, public, pair),
            // A version 2 message, or a signed one announcing version 2.
            None => self
                .peers
                .learn_direct(id, public, mac || m.kad.up.is_some_and(|v| v >= 2)),
        }
        let body = match (m.method, m.result, m.error) {
            (Some(method), None, None) => Body::Request(request(method, m.params)?),
            (None, Some(result), None) => {
                let (mut r, keys) = response(result)?;
                for (contact, key) in keys {
                    if contact == cx.local_id {
                        continue;
                    }
                    // A listed key must hash to the contact's id: no one can substitute a key.
                    if self.peers.get(&contact).is_some_and(|p| p.public == key) {
                        continue;
                    }
                    if node_id_from_public_key(&key) != contact {
                        return Err(DecodeError::IdMismatch);
                    }
                    self.peers.learn_listed(contact, key);
                }
                if self.min_id_work > 0 {
                    let min = self.min_id_work;
                    if let Response::Nodes { nodes }
                    | Response::Value { nodes, .. }
                    | Response::Custom { nodes, .. } = &mut r
                    {
                        nodes.retain(|c| id_work(&c.id) >= min);
                    }
                }
                Body::Response(r)
            }
            (None, None, Some(e)) => Body::Error(e),
            _ => {
                return Err(malformed(
                    "exactly one of method, result, error is required",
                ));
            }
        };
        Ok(Message {
            txn: TxnId::from_bytes(txn),
            sender: Contact::with_addrs(id, m.kad.from.addrs),
            recipient: m.kad.to,
            read_only: m.kad.ro,
            observed: match body {
                Body::Request(_) => None,
                _ => m.kad.seen,
            },
            body,
        })
    }
}

/// A request from its method and params. A core method whose params don't parse becomes a
/// `Custom` request under the core name, which the engine answers with "invalid params".
fn request(method: Cow<'_, str>, params: Option<&RawValue>) -> Result<Request, DecodeError> {
    if method.is_empty() || method.len() > MAX_METHOD_LEN {
        return Err(malformed("method name must be 1 to 64 bytes"));
    }
    let text = params.map_or("{}", RawValue::get);
    let parsed = match &*method {
        "PING" => Some(Request::Ping),
        "FIND_NODE" => serde_json::from_str::<InTarget>(text)
            .ok()
            .map(|p| Request::FindNode { target: p.target }),
        "FIND_VALUE" => serde_json::from_str::<InKey>(text)
            .ok()
            .map(|p| Request::FindValue { key: p.key }),
        "STORE" => serde_json::from_str::<InStore>(text).ok().and_then(|p| {
            let want_nodes = p.nodes;
            p.record
                .into_record()
                .ok()
                .map(|record| Request::Store { record, want_nodes })
        }),
        _ => None,
    };
    Ok(parsed.unwrap_or_else(|| Request::Custom {
        method: method.into_owned(),
        params: Bytes::copy_from_slice(text.as_bytes()),
    }))
}

/// A response, and the keys its contacts carry (version 2), still to be checked against their ids.
#[allow(clippy::type_complexity)]
fn response(result: &RawValue) -> Result<(Response, Vec<(NodeId, [u8; 33])>), DecodeError> {
    let r: InResult<'_> = serde_json::from_str(result.get()).map_err(malformed)?;
    let has_nodes = r.nodes.is_some();
    let wire = r.nodes.unwrap_or_default();
    check_nodes(&wire)?;
    let mut keys = Vec::new();
    let mut nodes = Vec::with_capacity(wire.len());
    for c in wire {
        if let Some(k) = c.key {
            let mut key = [0u8; 33];
            if !is_lower_hex(k.as_bytes()) || hex::decode_to_slice(k.as_bytes(), &mut key).is_err()
            {
                return Err(malformed("a contact's key is not 66 lowercase hex digits"));
            }
            keys.push((c.id, key));
        }
        nodes.push(Contact {
            id: c.id,
            addrs: c.addrs,
        });
    }
    let rsp = if let Some(data) = r.data {
        Response::Custom {
            result: Bytes::copy_from_slice(data.get().as_bytes()),
            nodes,
        }
    } else if let Some(record) = r.record {
        Response::Value {
            record: record.into_record()?,
            nodes,
        }
    } else if r.stored.is_some() {
        Response::Stored { nodes }
    } else if r.pong.is_some() {
        Response::Pong
    } else if has_nodes {
        Response::Nodes { nodes }
    } else {
        return Err(malformed(
            "result is none of pong, nodes, record, stored, data",
        ));
    };
    Ok((rsp, keys))
}
