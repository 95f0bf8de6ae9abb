//! The `Codec` hook (bytes on the wire <-> typed messages) and the identity hook.

use bytes::Bytes;

use crate::addr::PeerAddr;
use crate::id::NodeId;
use crate::message::Message;

/// Why bytes could not be decoded into a [`Message`]. Remote input: dropped and counted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not a well-formed message of this codec.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message is too large for this codec.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A signature or identity check failed (codecs without a more precise reason).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The signature does not verify (or the public key is not a valid point).
    #[error("bad signature")]
    BadSignature,
    /// The MAC of a version 2 message does not verify (or its key is not a valid point).
    #[error("bad MAC")]
    BadMac,
    /// A message without a signature or MAC of its own that did not come over a connection
    /// proving its sender's id.
    #[error("no signature or MAC, and the transport did not prove the sender")]
    Unproven,
    /// The sender's id is not the one its public key maps to.
    #[error("sender id does not match its public key")]
    IdMismatch,
    /// The timestamp is outside the accepted window.
    #[error("timestamp off by {skew_ms} ms, outside the window")]
    Stale {
        /// Message time minus local time, in milliseconds.
        skew_ms: i64,
    },
    /// The (sender, nonce) pair was seen before within the window.
    #[error("replayed nonce")]
    Replay,
    /// The message is addressed to another node.
    #[error("message addressed to another node")]
    WrongRecipient,
    /// The source sent more than its share; dropped before parsing.
    #[error("source over its rate limit")]
    RateLimited,
}

/// Why a message could not be encoded. Local fault: reported to the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded message would exceed the transport's limit.
    #[error("encoded message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// This codec cannot express the message (e.g. a method unknown to the wire format).
    #[error("cannot encode: {0}")]
    Unsupported(String),
}

/// What a codec may need from the engine besides the bytes: the time, who we are, randomness.
pub struct CodecCx<'a> {
    /// Wall-clock time now, Unix milliseconds (the engine's [`WallClock`](crate::WallClock)).
    pub unix_ms: u64,
    /// This node's id (messages must be addressed to it).
    pub local_id: NodeId,
    /// Accepted clock difference with peers, in milliseconds (`Config::max_clock_skew`).
    pub max_skew_ms: u64,
    /// The engine's RNG (seeded from the OS by the runtime, from the seed in simulations).
    pub rng: &'a mut dyn rand::RngCore,
    /// The remote address: where a decoded message came from, where an encoded one goes.
    /// `None` when the engine does not know it ([`Node::encode`](crate::Node::encode)).
    /// Codecs whose wire format carries no sender address (KRPC) build contacts from it.
    pub peer: Option<&'a PeerAddr>,
    /// The node at the other end as the transport proved it
    /// ([`Transport::proves_peer_ids`](crate::Transport::proves_peer_ids), e.g. QUIC): decoding,
    /// the sender's id; encoding, the recipient, to whom alone the transport will deliver.
    /// `None` when the transport proves nothing. The native codec leaves messages on such a
    /// link without a signature or MAC of their own.
    pub proven: Option<NodeId>,
}

impl std::fmt::Debug for CodecCx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodecCx")
            .field("unix_ms", &self.unix_ms)
            .field("local_id", &self.local_id)
            .field("max_skew_ms", &self.max_skew_ms)
            .field("peer", &self.peer)
            .field("proven", &self.proven)
            .finish_non_exhaustive()
    }
}

/// Turns typed messages into bytes and back.
///
/// Contract:
/// - `decode` never panics on any input; anything wrong is a [`DecodeError`], which the engine
///   counts in [`Stats`](crate::Stats) and drops.
/// - `encode` is deterministic for a given message and codec state, so simulations reproduce.
/// - A signing codec signs the exact bytes it returns and checks the exact bytes it is given.
pub trait Codec: Send + 'static {
    /// Encodes `msg`.
    fn encode(&mut self, msg: &Message, cx: &mut CodecCx<'_>) -> Result<Bytes, EncodeError>;
    /// Decodes `bytes`, received from a peer.
    fn decode(&mut self, bytes: &[u8], cx: &mut CodecCx<'_>) -> Result<Message, DecodeError>;
}

/// A plain, unsigned codec: serde_json of the typed [`Message`] (feature `json`).
///
/// For tests and in-process networks only: it authenticates nothing. Real networks use the
/// signed JSON-RPC codec (native network) or KRPC (Mainline).
#[cfg(feature = "json")]
#[derive(Debug, Default, Clone)]
pub struct PlainCodec {
    /// Largest message accepted or produced, in bytes (default 64 KiB).
    pub max_len: usize,
}

#[cfg(feature = "json")]
impl PlainCodec {
    /// A codec with the default limit of 64 KiB.
    pub fn new() -> Self {
        Self { max_len: 64 * 1024 }
    }
}

#[cfg(feature = "json")]
impl Codec for PlainCodec {
    fn encode(&mut self, msg: &Message, _cx: &mut CodecCx<'_>) -> Result<Bytes, EncodeError> {
        let v = serde_json::to_vec(msg).map_err(|e| EncodeError::Unsupported(e.to_string()))?;
        if v.len() > self.max_len {
            return Err(EncodeError::TooLarge {
                len: v.len(),
                max: self.max_len,
            });
        }
        Ok(Bytes::from(v))
    }

    fn decode(&mut self, bytes: &[u8], _cx: &mut CodecCx<'_>) -> Result<Message, DecodeError> {
        if bytes.len() > self.max_len {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: self.max_len,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

/// A node's identity: its id and, for signing networks, its key.
///
/// The native network derives the id from a secp256k1 public key and signs every message (the
/// signing codec holds the identity); Mainline ids are random or BEP42-derived and unsigned.
pub trait Identity: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> NodeId;
    /// The public key bytes, empty for unsigned identities.
    fn public_key(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Signs `msg`; unsigned identities return an empty signature.
    fn sign(&self, _msg: &[u8]) -> Vec<u8> {
        Vec::new()
    }
}

/// An unsigned identity with a fixed id (Mainline-style nodes, simulations, tests).
#[derive(Debug, Clone, Copy)]
pub struct StaticIdentity(pub NodeId);

impl Identity for StaticIdentity {
    fn node_id(&self) -> NodeId {
        self.0
    }
}
