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

    /// A `mem://` address inside simulated subnet `subnet` (1 or more): `mem://N` where the high
    /// 32 bits of N are the subnet and the low 32 bits the endpoint. The simulator uses it to
    /// place Sybil nodes in a few shared subnets.
    pub fn mem_in_subnet(subnet: u32, endpoint: u32) -> Self {
        Self::Mem(u64::from(subnet) << 32 | u64::from(endpoint))
    }

    /// The network this address belongs to, for the per-subnet limits of buckets and lookups
    /// ([`Config::subnet_limit`](crate::Config::subnet_limit)): the /24 of a public IPv4 address,
    /// the /64 of a public IPv6 address (IPv4-mapped IPv6 counts as IPv4), or the simulated subnet
    /// of a `mem://` address made by [`mem_in_subnet`](Self::mem_in_subnet).
    ///
    /// `None`, never limited: loopback, private (RFC 1918, unique local), shared (RFC 6598),
    /// link-local and unspecified addresses (a LAN or a test on 127.0.0.0/8 may hold any number
    /// of nodes), WebSocket URLs (host names say nothing about the network) and plain `mem://N`
    /// with N below 2^32.
    pub fn subnet(&self) -> Option<Subnet> {
        match self {
            Self::Udp(a) | Self::Quic(a) => ip_subnet(a.ip()),
            Self::Ws(_) => None,
            Self::Mem(n) => {
                let s = (n >> 32) as u32;
                (s != 0).then_some(Subnet::Sim(s))
            }
        }
    }
}

/// A network prefix that per-subnet limits count by: see [`PeerAddr::subnet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Subnet {
    /// An IPv4 /24: the first three bytes.
    V4([u8; 3]),
    /// An IPv6 /64: the first eight bytes.
    V6([u8; 8]),
    /// A simulated subnet (`mem://` addresses).
    Sim(u32),
}

fn ip_subnet(ip: std::net::IpAddr) -> Option<Subnet> {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            let shared = o[0] == 100 && (o[1] & 0xC0) == 64; // 100.64.0.0/10, RFC 6598
            if v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || shared
            {
                return None;
            }
            Some(Subnet::V4([o[0], o[1], o[2]]))
        }
        std::net::IpAddr::V6(v6) => {
            let o = v6.octets();
            let unique_local = (o[0] & 0xFE) == 0xFC; // fc00::/7
            let link_local = o[0] == 0xFE && (o[1] & 0xC0) == 0x80; // fe80::/10
            if v6.is_loopback() || v6.is_unspecified() || unique_local || link_local {
                return None;
            }
            let mut p = [0u8; 8];
            p.copy_from_slice(&o[..8]);
            Some(Subnet::V6(p))
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

    #[test]
    fn subnets() {
        let sub = |s: &str| s.parse::<PeerAddr>().unwrap().subnet();
        assert_eq!(sub("udp://1.2.3.4:5"), Some(Subnet::V4([1, 2, 3])));
        assert_eq!(sub("quic://1.2.3.250:6"), sub("udp://1.2.3.4:5"));
        assert_ne!(sub("udp://1.2.4.4:5"), sub("udp://1.2.3.4:5"));
        assert_eq!(sub("udp://[::ffff:1.2.3.9]:5"), Some(Subnet::V4([1, 2, 3])));
        assert_eq!(
            sub("udp://[2001:db8:1:2:3::1]:5"),
            sub("udp://[2001:db8:1:2:ffff::9]:7")
        );
        assert_ne!(
            sub("udp://[2001:db8:1:2::1]:5"),
            sub("udp://[2001:db8:1:3::1]:5")
        );
        for exempt in [
            "udp://127.0.0.1:1",
            "udp://127.2.3.4:1",
            "udp://10.1.2.3:1",
            "udp://192.168.1.1:1",
            "udp://172.16.0.1:1",
            "udp://100.64.0.1:1",
            "udp://169.254.0.1:1",
            "udp://0.0.0.0:1",
            "udp://[::1]:1",
            "udp://[fd00::1]:1",
            "udp://[fe80::1]:1",
            "ws://1.2.3.4:5/kad",
            "mem://7",
        ] {
            assert_eq!(sub(exempt), None, "{exempt}");
        }
        assert_eq!(PeerAddr::mem_in_subnet(9, 3).subnet(), Some(Subnet::Sim(9)));
        assert_eq!(
            PeerAddr::mem_in_subnet(9, 3).to_string(),
            "mem://38654705667"
        );
    }
}
