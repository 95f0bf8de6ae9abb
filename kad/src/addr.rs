//! What the builders take as addresses: text (`"127.0.0.1:4000"`, `"udp://127.0.0.1:4000"`) or
//! typed values, a bad one reported by `build` with the setting that received it.

use std::net::SocketAddr;

use kad_core::PeerAddr;

use crate::error::BuildError;

mod sealed {
    pub trait Sealed {}
    impl Sealed for &str {}
    impl Sealed for String {}
    impl Sealed for &String {}
    impl Sealed for std::net::SocketAddr {}
    impl Sealed for kad_core::PeerAddr {}
    impl Sealed for &kad_core::PeerAddr {}
}

/// A socket address for a listening transport: `"IP:PORT"` or a [`SocketAddr`].
pub trait SocketArg: sealed::Sealed {
    /// The address; `field` names the setting in the error.
    fn socket(&self, field: &'static str) -> Result<SocketAddr, BuildError>;
}

/// A node address: a URI (`udp://IP:PORT`, `quic://IP:PORT`, `ws://HOST:PORT/PATH`,
/// `wss://...`) or a [`PeerAddr`].
pub trait AddrArg: sealed::Sealed {
    /// The address; `field` names the setting in the error.
    fn addr(&self, field: &'static str) -> Result<PeerAddr, BuildError>;
}

fn parse_socket(field: &'static str, s: &str) -> Result<SocketAddr, BuildError> {
    s.trim().parse().map_err(|_| BuildError::Field {
        field,
        value: s.to_owned(),
        reason: "expected IP:PORT, e.g. 127.0.0.1:4000 or [::1]:4000 (port 0 picks a free one)"
            .into(),
    })
}

fn parse_addr(field: &'static str, s: &str) -> Result<PeerAddr, BuildError> {
    s.trim().parse().map_err(|e| BuildError::Field {
        field,
        value: s.to_owned(),
        reason: format!("{e}"),
    })
}

// Text parses; typed values are taken as they are.
macro_rules! from_text {
    ($($t:ty),*) => {$(
        impl SocketArg for $t {
            fn socket(&self, field: &'static str) -> Result<SocketAddr, BuildError> {
                parse_socket(field, self)
            }
        }
        impl AddrArg for $t {
            fn addr(&self, field: &'static str) -> Result<PeerAddr, BuildError> {
                parse_addr(field, self)
            }
        }
    )*};
}
from_text!(&str, String, &String);

impl SocketArg for SocketAddr {
    fn socket(&self, _: &'static str) -> Result<SocketAddr, BuildError> {
        Ok(*self)
    }
}

impl AddrArg for PeerAddr {
    fn addr(&self, _: &'static str) -> Result<PeerAddr, BuildError> {
        Ok(self.clone())
    }
}

impl AddrArg for &PeerAddr {
    fn addr(&self, _: &'static str) -> Result<PeerAddr, BuildError> {
        Ok((*self).clone())
    }
}
