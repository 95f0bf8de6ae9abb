//! The `pubsub.*` messages (PROTOCOL.md section 5.2): JSON parameters and results, ids in hex.

use bytes::Bytes;
use kad_core::{Key, NodeId, content_key, native};
use kad_plugin_bep44::item;
use serde::{Deserialize, Serialize};

/// `pubsub.FIND`: the closest nodes to a topic, and what the answering node holds for it.
pub const FIND: &str = "pubsub.FIND";
/// `pubsub.SUBSCRIBE`: registers (or renews) the sender as a subscriber of a topic.
pub const SUBSCRIBE: &str = "pubsub.SUBSCRIBE";
/// `pubsub.PUBLISH`: a new sensor reading (a signed BEP44 mutable item) for its topic.
pub const PUBLISH: &str = "pubsub.PUBLISH";
/// `pubsub.POST`: a signed message for a named topic.
pub const POST: &str = "pubsub.POST";
/// `pubsub.NOTIFY`: a rendezvous node pushes a reading or a message to a subscriber.
pub const NOTIFY: &str = "pubsub.NOTIFY";

/// Largest `data` of a topic message, in bytes.
pub const MAX_MESSAGE_DATA: usize = 4096;
/// Largest topic name, in bytes.
pub const MAX_TOPIC_NAME: usize = 256;
/// Longest message TTL, in seconds (one day).
pub const MAX_MESSAGE_TTL_S: u32 = 86_400;
/// How far in the future a message's timestamp may be (clock skew), in milliseconds.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// The key of a named topic: RIPEMD-160(SHA-256("kad-topic:" ‖ name)).
pub fn topic_key(name: &str) -> Key {
    let mut buf = Vec::with_capacity(name.len() + 10);
    buf.extend_from_slice(b"kad-topic:");
    buf.extend_from_slice(name.as_bytes());
    content_key(&buf)
}

/// The key of a sensor: its BEP44 target, SHA-1(public key ‖ salt).
pub fn sensor_key(pubkey: &[u8; 32], salt: &[u8]) -> Key {
    item::mutable_target(pubkey, salt)
}

/// A sensor reading on the wire: a BEP44 mutable item, binary fields in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireItem {
    /// ed25519 public key.
    #[serde(with = "hex_array")]
    pub k: [u8; 32],
    /// Salt (may be empty).
    #[serde(with = "hex_bytes", default, skip_serializing_if = "Bytes::is_empty")]
    pub salt: Bytes,
    /// Sequence number.
    pub seq: i64,
    /// The bencoded value.
    #[serde(with = "hex_bytes")]
    pub v: Bytes,
    /// ed25519 signature over the BEP44 signing buffer.
    #[serde(with = "hex_array")]
    pub sig: [u8; 64],
}

impl WireItem {
    /// The item's topic key.
    pub fn topic(&self) -> Key {
        sensor_key(&self.k, &self.salt)
    }

    /// Checks sizes and the signature.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.salt.len() > item::MAX_SALT {
            return Err("salt longer than 64 bytes");
        }
        if self.seq < 0 {
            return Err("negative seq");
        }
        if item::check_value(&self.v).is_err() {
            return Err("v is not one bencoded value of at most 1000 bytes");
        }
        if !item::verify(&self.k, &self.salt, self.seq, &self.v, &self.sig) {
            return Err("bad signature");
        }
        Ok(())
    }

    /// The value as text when it is a bencoded UTF-8 byte string (how readings are published),
    /// else the bencoded bytes in hex.
    pub fn value_text(&self) -> String {
        decode_bstr(&self.v)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map_or_else(|| hex::encode(&self.v), str::to_owned)
    }
}

impl From<item::MutableItem> for WireItem {
    fn from(it: item::MutableItem) -> Self {
        Self {
            k: it.pubkey,
            salt: it.salt,
            seq: it.seq,
            v: it.v,
            sig: it.sig,
        }
    }
}

/// The bytes of a bencoded byte string `<len>:<bytes>`, if `v` is exactly one.
fn decode_bstr(v: &[u8]) -> Option<&[u8]> {
    let colon = v.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&v[..colon]).ok()?.parse().ok()?;
    let body = &v[colon + 1..];
    (body.len() == len).then_some(body)
}

/// A message of a named topic, signed by its publisher's node key (secp256k1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMessage {
    /// The topic key: [`topic_key`] of `name`.
    pub topic: Key,
    /// The topic's name (signed: a message cannot be posted under another topic's key).
    pub name: String,
    /// The publisher's compressed secp256k1 public key, 33 bytes (its node id is the hash of
    /// it).
    #[serde(with = "hex_bytes")]
    pub from: Bytes,
    /// Publisher's wall clock at sending, ms since the Unix epoch.
    pub ts: u64,
    /// Seconds the message stays valid after `ts`.
    pub ttl: u32,
    /// Publisher-chosen number making the message unique.
    pub nonce: u64,
    /// The payload (UTF-8 text).
    pub data: String,
    /// ECDSA signature over [`TopicMessage::signing_bytes`].
    #[serde(with = "hex_bytes")]
    pub sig: Bytes,
}

impl TopicMessage {
    /// `"kad-pubsub-msg/2" ‖ topic ‖ ts (8, BE) ‖ ttl (4, BE) ‖ nonce (8, BE) ‖ name length
    /// (2, BE) ‖ name ‖ data`.
    pub fn signing_bytes(
        topic: &Key,
        name: &str,
        ts: u64,
        ttl: u32,
        nonce: u64,
        data: &str,
    ) -> Vec<u8> {
        let mut b = Vec::with_capacity(58 + name.len() + data.len());
        b.extend_from_slice(b"kad-pubsub-msg/2");
        b.extend_from_slice(&topic.0);
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&ttl.to_be_bytes());
        b.extend_from_slice(&nonce.to_be_bytes());
        b.extend_from_slice(&(name.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(data.as_bytes());
        b
    }

    fn own_signing_bytes(&self) -> Vec<u8> {
        Self::signing_bytes(
            &self.topic,
            &self.name,
            self.ts,
            self.ttl,
            self.nonce,
            &self.data,
        )
    }

    /// Signs a message for the topic `name` with a node identity.
    pub fn sign(
        identity: &native::NativeIdentity,
        name: &str,
        ts: u64,
        ttl: u32,
        nonce: u64,
        data: String,
    ) -> Self {
        let topic = topic_key(name);
        let sig = identity.sign_bytes(&Self::signing_bytes(&topic, name, ts, ttl, nonce, &data));
        Self {
            topic,
            name: name.to_owned(),
            from: Bytes::copy_from_slice(&identity.public_key_bytes()),
            ts,
            ttl,
            nonce,
            data,
            sig: Bytes::copy_from_slice(&sig),
        }
    }

    /// The message id used for deduplication: SHA-1 of the signed bytes, the key and the
    /// signature (the signature alone does not identify a message: with key recovery, one
    /// signature verifies other messages under other keys).
    pub fn id(&self) -> [u8; 20] {
        let mut b = self.own_signing_bytes();
        b.extend_from_slice(&self.from);
        b.extend_from_slice(&self.sig);
        item::sha1(&b)
    }

    /// The publisher's node id.
    pub fn publisher(&self) -> NodeId {
        native::node_id_from_public_key(&self.from)
    }

    /// When the message expires, ms since the Unix epoch.
    pub fn expires_ms(&self) -> u64 {
        self.ts.saturating_add(u64::from(self.ttl) * 1000)
    }

    /// Checks sizes, topic, time and signature against the wall clock `now_ms`.
    pub fn check(&self, now_ms: u64) -> Result<(), &'static str> {
        if self.data.len() > MAX_MESSAGE_DATA {
            return Err("data longer than 4096 bytes");
        }
        if self.name.is_empty() || self.name.len() > MAX_TOPIC_NAME {
            return Err("topic name must be 1..=256 bytes");
        }
        if topic_key(&self.name) != self.topic {
            return Err("topic is not the key of name");
        }
        if self.from.len() != 33 {
            return Err("from must be a 33-byte compressed key");
        }
        if self.ttl == 0 || self.ttl > MAX_MESSAGE_TTL_S {
            return Err("ttl must be 1..=86400 s");
        }
        if self.ts > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err("timestamp in the future");
        }
        if self.expires_ms() <= now_ms {
            return Err("expired");
        }
        if !native::verify_signature(&self.from, &self.own_signing_bytes(), &self.sig) {
            return Err("bad signature");
        }
        Ok(())
    }
}

/// What a subscription is to: a sensor (public key and salt) or a named topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicKind {
    /// A sensor: readings are BEP44 mutable items of this key and salt.
    Sensor {
        /// ed25519 public key.
        #[serde(with = "hex_array")]
        k: [u8; 32],
        /// Salt (may be empty).
        #[serde(with = "hex_bytes", default)]
        salt: Bytes,
    },
    /// A named topic: signed messages.
    Named {
        /// The topic's name.
        name: String,
    },
}

impl TopicKind {
    /// The topic key.
    pub fn key(&self) -> Key {
        match self {
            Self::Sensor { k, salt } => sensor_key(k, salt),
            Self::Named { name } => topic_key(name),
        }
    }

    /// Checks sizes.
    pub fn check(&self) -> Result<(), &'static str> {
        match self {
            Self::Sensor { salt, .. } if salt.len() > item::MAX_SALT => {
                Err("salt longer than 64 bytes")
            }
            Self::Named { name } if name.is_empty() || name.len() > MAX_TOPIC_NAME => {
                Err("topic name must be 1..=256 bytes")
            }
            _ => Ok(()),
        }
    }
}

/// Parameters of [`FIND`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FindParams {
    /// The topic key.
    pub topic: Key,
}

/// Result of [`FIND`] (the closest nodes travel beside it).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FindResult {
    /// The latest reading this node holds for the topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<WireItem>,
    /// The seq of the reading before `latest` (see [`NotifyParams::prev`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<i64>,
    /// Subscribers this node holds for the topic.
    #[serde(default)]
    pub subscribers: usize,
}

/// Parameters of [`SUBSCRIBE`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubscribeParams {
    /// The topic key (must match `kind`).
    pub topic: Key,
    /// What the topic is.
    pub kind: TopicKind,
    /// Seconds the subscription lasts unless renewed.
    pub ttl: u32,
    /// Whether this node should push new readings (false: hold the subscription as a standby).
    pub push: bool,
    /// The subscriber's latest seq, so the answer carries the latest item only if newer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// The rendezvous nodes the subscriber registers at, in its own order (by XOR distance to
    /// SHA-1(topic ‖ subscriber id): each subscriber is pushed to by other nodes). A node
    /// pushes while fewer than its fanout of the nodes ranked above it are live (as the
    /// publisher last saw them), so a standby takes over from dead pushers without waiting for
    /// a renewal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranked: Vec<NodeId>,
}

/// Result of [`SUBSCRIBE`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// Seconds the subscription lasts (the node may shorten what was asked).
    pub ttl: u32,
    /// The latest reading, when newer than the subscriber's `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<WireItem>,
    /// Readings kept before the latest that are newer than the subscriber's `seq`, oldest
    /// first (only when `seq` was given: a subscriber coming back gets what it missed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missed: Vec<WireItem>,
    /// Recent unexpired messages of a named topic (oldest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<TopicMessage>,
}

/// Parameters of [`PUBLISH`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishParams {
    /// The reading.
    pub item: WireItem,
    /// The rendezvous nodes that accepted the publisher's previous reading (its view of who is
    /// live). Sent again with the same reading after some nodes did not answer, so standbys
    /// push it to the subscribers of the dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Vec<NodeId>>,
    /// The seq of the publisher's reading before this one, so that rendezvous nodes and
    /// subscribers that missed readings know it (see [`NotifyParams::prev`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<i64>,
}

/// Result of [`PUBLISH`] and [`POST`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishResult {
    /// Subscribers the node pushes to.
    pub pushed: usize,
}

/// Parameters of [`POST`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PostParams {
    /// The message.
    pub message: TopicMessage,
    /// As [`PublishParams::live`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Vec<NodeId>>,
}

/// Parameters of [`NOTIFY`]: one reading or one message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotifyParams {
    /// The topic key.
    pub topic: Key,
    /// A reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<WireItem>,
    /// A message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<TopicMessage>,
    /// The seq of the reading before `item` (as its publisher said, else as the pushing node
    /// holds it): a subscriber whose last reading is older missed some, and asks that node for
    /// the readings it kept (a renewal with its seq) before delivering this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<i64>,
}

pub(crate) mod hex_bytes {
    use bytes::Bytes;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(s.as_bytes())
            .map(Bytes::from)
            .map_err(D::Error::custom)
    }
}

pub(crate) mod hex_array {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_round_trips_and_verifies() {
        let seed = [7u8; 32];
        let it = item::MutableItem::sign(&seed, b"s", 3, &item::bencode_bytes(b"21.5")).unwrap();
        let w = WireItem::from(it.clone());
        let json = serde_json::to_string(&w).unwrap();
        let back: WireItem = serde_json::from_str(&json).unwrap();
        assert_eq!(back, w);
        assert!(back.check().is_ok());
        assert_eq!(back.topic(), it.target());
        assert_eq!(back.value_text(), "21.5");
        let mut forged = back.clone();
        forged.seq = 4;
        assert_eq!(forged.check(), Err("bad signature"));
    }

    #[test]
    fn messages_verify_and_expire() {
        let id = native::NativeIdentity::from_secret(&[9; 32]).unwrap();
        let m = TopicMessage::sign(&id, "weather", 1_000_000, 10, 1, "hi".into());
        assert!(m.check(1_000_500).is_ok());
        assert_eq!(m.publisher(), id.id());
        assert_eq!(m.check(1_011_000), Err("expired"));
        assert_eq!(m.check(1_000_000 - 61_000), Err("timestamp in the future"));
        let mut t = m.clone();
        t.data = "ho".into();
        assert_eq!(t.check(1_000_500), Err("bad signature"));
        // Posted under another topic's key (a sensor's, say): refused before the signature.
        let mut other = m.clone();
        other.topic = sensor_key(&[1; 32], b"");
        assert_eq!(other.check(1_000_500), Err("topic is not the key of name"));
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<TopicMessage>(&json).unwrap(), m);
    }

    #[test]
    fn topic_kinds_have_their_keys() {
        let k = [1u8; 32];
        let s = TopicKind::Sensor {
            k,
            salt: Bytes::from_static(b"x"),
        };
        assert_eq!(s.key(), item::mutable_target(&k, b"x"));
        let n = TopicKind::Named { name: "a".into() };
        assert_eq!(n.key(), topic_key("a"));
        assert!(
            TopicKind::Named {
                name: String::new()
            }
            .check()
            .is_err()
        );
    }
}
