//! Peer addresses (URIs such as `udp://203.0.113.5:4000`) and contacts.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::NodeId;

/// The kind of transport an address belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TransportKind {
    /// Datagrams over UDP (`udp://`).
    Udp,
    /// Streams and datagrams over QUIC (`quic://`).
    Quic,
    /// Binary frames over WebSocket (`ws://` and `wss://`).
    Ws,
    /// The in-process memory transport used by tests and the simulator (`mem://`).
    Mem,
}

impl TransportKind {
    /// The URI scheme of this kind (`ws` for both `ws://` and `wss://`).
    pub fn scheme(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Quic => "quic",
            Self::Ws => "ws",
            Self::Mem => "mem",
        }
    }

    /// Whether the address a message arrives from can be dialed later by anyone. False for
    /// WebSocket: a connection the peer opened comes from an ephemeral port, so the peer's
    /// advertised `ws://` address is the one to keep.
    pub fn source_is_dialable(self) -> bool {
        !matches!(self, Self::Ws)
    }
}

/// Where a peer can be reached: a transport plus an address, printed and parsed as a URI.
///
/// ```
/// use kad_core::PeerAddr;
/// let a: PeerAddr = "udp://127.0.0.1:4000".parse().unwrap();
/// assert_eq!(a.to_string(), "udp://127.0.0.1:4000");
/// let w: PeerAddr = "wss://example.org:443/kad".parse().unwrap();
/// assert_eq!(w.to_string(), "wss://example.org:443/kad");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PeerAddr {
    /// `udp://IP:PORT`
    Udp(SocketAddr),
    /// `quic://IP:PORT`
    Quic(SocketAddr),
    /// `ws://…` or `wss://…`: the whole URL, kept verbatim (host names are allowed).
    Ws(Arc<str>),
    /// `mem://N`: an endpoint of an in-process memory network.
    Mem(u64),
}

impl PeerAddr {
    /// The transport kind of this address.
    pub fn kind(&self) -> TransportKind {
        match self {
            Self::Udp(_) => TransportKind::Udp,
            Self::Quic(_) => TransportKind::Quic,
            Self::Ws(_) => TransportKind::Ws,
            Self::Mem(_) => TransportKind::Mem,
        }
    }

    /// The socket address for `udp://` and `quic://` addresses.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Udp(a) | Self::Quic(a) => Some(*a),
            _ => None,
        }
    }
}

/// Why a string is not a valid [`PeerAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseAddrError {
    /// The URI has no `scheme://` prefix or an unknown scheme.
    #[error("unknown address scheme in {0:?}: expected udp://, quic://, ws://, wss:// or mem://")]
    Scheme(String),
    /// The URI is longer than [`MAX_URI_LEN`].
    #[error("address of {0} bytes: at most 255 are accepted")]
    TooLong(usize),
    /// The part after the scheme is not a valid address.
    #[error("invalid address {0:?}: expected IP:PORT (IPv6 as [::1]:PORT)")]
    Address(String),
}

/// Longest address URI accepted (peers' contacts included), in bytes.
pub const MAX_URI_LEN: usize = 255;

impl FromStr for PeerAddr {
    type Err = ParseAddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > MAX_URI_LEN {
            return Err(ParseAddrError::TooLong(s.len()));
        }
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| ParseAddrError::Scheme(s.to_owned()))?;
        let sock = |r: &str| {
            r.trim_end_matches('/')
                .parse::<SocketAddr>()
                .map_err(|_| ParseAddrError::Address(s.to_owned()))
        };
        match scheme.to_ascii_lowercase().as_str() {
            "udp" => Ok(Self::Udp(sock(rest)?)),
            "quic" => Ok(Self::Quic(sock(rest)?)),
            "ws" | "wss" => {
                if rest.is_empty() || rest.starts_with('/') {
                    return Err(ParseAddrError::Address(s.to_owned()));
                }
                Ok(Self::Ws(Arc::from(s)))
            }
            "mem" => rest
                .parse::<u64>()
                .map(Self::Mem)
                .map_err(|_| ParseAddrError::Address(s.to_owned())),
            _ => Err(ParseAddrError::Scheme(s.to_owned())),
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Udp(a) => write!(f, "udp://{a}"),
            Self::Quic(a) => write!(f, "quic://{a}"),
            Self::Ws(u) => f.write_str(u),
            Self::Mem(n) => write!(f, "mem://{n}"),
        }
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for PeerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A node as others know it: its id and every address it listens on, in its order of preference.
///
/// The address list is shared (`Arc`), so cloning a contact is cheap.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Contact {
    /// The node's id.
    pub id: NodeId,
    /// Its addresses, as URIs.
    pub addrs: Arc<[PeerAddr]>,
}

impl Contact {
    /// A contact with a single address.
    pub fn new(id: NodeId, addr: PeerAddr) -> Self {
        Self {
            id,
            addrs: Arc::from(vec![addr]),
        }
    }

    /// A contact with several addresses.
    pub fn with_addrs(id: NodeId, addrs: Vec<PeerAddr>) -> Self {
        Self {
            id,
            addrs: Arc::from(addrs),
        }
    }

    /// The first address, if any.
    pub fn primary_addr(&self) -> Option<&PeerAddr> {
        self.addrs.first()
    }

    /// The first address whose transport kind is in `kinds`, trying kinds in the given order.
    pub fn addr_for(&self, kinds: &[TransportKind]) -> Option<&PeerAddr> {
        kinds
            .iter()
            .find_map(|k| self.addrs.iter().find(|a| a.kind() == *k))
    }
}

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Contact({:?} @ {:?})", self.id, self.addrs)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick an arbitrary base instant
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for s in [
            "udp://127.0.0.1:4000",
            "quic://[::1]:4001",
            "ws://localhost:4002/kad",
            "wss://example.org/kad",
            "mem://7",
        ] {
            let a: PeerAddr = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert!(matches!(
            "tcp://1.2.3.4:5".parse::<PeerAddr>(),
            Err(ParseAddrError::Scheme(_))
        ));
        assert!(matches!(
            "udp://nope".parse::<PeerAddr>(),
            Err(ParseAddrError::Address(_))
        ));
        assert!(matches!(
            "1.2.3.4:5".parse::<PeerAddr>(),
            Err(ParseAddrError::Scheme(_))
        ));
    }

    #[test]
    fn addr_preference() {
        let c = Contact::with_addrs(
            NodeId::ZERO,
            vec![
                "ws://h:1/kad".parse().unwrap(),
                "udp://127.0.0.1:2".parse().unwrap(),
            ],
        );
        assert_eq!(
            c.addr_for(&[TransportKind::Udp, TransportKind::Ws])
                .unwrap()
                .kind(),
            TransportKind::Udp
        );
        assert_eq!(c.addr_for(&[TransportKind::Quic]), None);
    }
}
