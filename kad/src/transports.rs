//! Opening a native node's transports from addresses: `udp://IP:PORT`, `quic://IP:PORT`,
//! `ws://IP:PORT/PATH` and `wss://IP:PORT/PATH`, each listening or, for a client, dialing only.

use std::net::SocketAddr;
use std::sync::Arc;

use kad_core::{NativeIdentity, PeerAddr, Transport, TransportKind};

use crate::error::BuildError;

/// A node's transports, kept typed so their counters can be read.
#[derive(Default, Clone)]
pub struct Transports {
    all: Vec<Arc<dyn Transport>>,
    #[cfg(feature = "udp")]
    udp: Vec<Arc<kad_transport_udp::UdpTransport>>,
    #[cfg(feature = "quic")]
    quic: Vec<Arc<kad_transport_quic::QuicTransport>>,
    #[cfg(feature = "ws")]
    ws: Vec<Arc<kad_transport_ws::WsTransport>>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports")
            .field("bound", &self.bound())
            .finish()
    }
}

impl Transports {
    /// Every transport, in the order they were given.
    pub fn all(&self) -> &[Arc<dyn Transport>] {
        &self.all
    }

    /// The UDP transports.
    #[cfg(feature = "udp")]
    pub fn udp(&self) -> &[Arc<kad_transport_udp::UdpTransport>] {
        &self.udp
    }

    /// The QUIC transports.
    #[cfg(feature = "quic")]
    pub fn quic(&self) -> &[Arc<kad_transport_quic::QuicTransport>] {
        &self.quic
    }

    /// The WebSocket transports.
    #[cfg(feature = "ws")]
    pub fn ws(&self) -> &[Arc<kad_transport_ws::WsTransport>] {
        &self.ws
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn bound(&self) -> Vec<PeerAddr> {
        self.all.iter().filter_map(|t| t.listen_addr()).collect()
    }

    /// The largest message any of them carries (what a server accepts).
    pub fn max_message_len(&self) -> usize {
        self.all
            .iter()
            .map(|t| t.max_message_len())
            .max()
            .unwrap_or(kad_core::MAX_DATAGRAM)
    }

    /// The largest message every one of them carries (what a client can count on receiving,
    /// answers coming back through any of them).
    pub fn min_message_len(&self) -> usize {
        self.all
            .iter()
            .map(|t| t.max_message_len())
            .min()
            .unwrap_or(kad_core::MAX_DATAGRAM)
    }

    /// Adds a transport of another kind (e.g. one written for this application).
    pub fn push(&mut self, t: Arc<dyn Transport>) {
        self.all.push(t);
    }
}

/// TLS material for WebSocket transports, as PEM.
#[derive(Clone, Debug, Default)]
pub(crate) struct WsTls {
    /// Certificate chain and private key served on `wss://` listen addresses.
    pub(crate) server: Option<(Vec<u8>, Vec<u8>)>,
    /// Extra certificates trusted when dialing `wss://`, on top of the public web roots.
    pub(crate) trusted: Vec<Vec<u8>>,
}

/// The listening socket address and path of a `ws://` or `wss://` URI.
#[cfg(feature = "ws")]
pub(crate) fn ws_listen(uri: &str) -> Result<(SocketAddr, String, bool), BuildError> {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let tls = scheme.eq_ignore_ascii_case("wss");
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let sock: SocketAddr = hostport.parse().map_err(|_| BuildError::Field {
        field: "listen",
        value: uri.to_owned(),
        reason: "a listen address needs an IP and a port (ws://IP:PORT/PATH)".into(),
    })?;
    Ok((sock, path, tls))
}

#[cfg(feature = "ws")]
fn ws_config(tls: &WsTls) -> Result<kad_transport_ws::WsConfig, BuildError> {
    let mut roots = Vec::new();
    for pem in &tls.trusted {
        roots.extend(kad_transport_ws::tls::certs_from_pem(pem).map_err(|e| {
            BuildError::Field {
                field: "trust_pem",
                value: format!("{} bytes", pem.len()),
                reason: e.to_string(),
            }
        })?);
    }
    Ok(kad_transport_ws::WsConfig::default()
        .tls_client(kad_transport_ws::tls::client_config(&roots)))
}

fn listen_error(
    addr: &PeerAddr,
    source: impl std::error::Error + Send + Sync + 'static,
) -> BuildError {
    BuildError::Listen {
        addr: addr.to_string(),
        source: Box::new(source),
    }
}

#[cfg(not(all(feature = "udp", feature = "quic", feature = "ws")))]
fn not_built(field: &'static str, addr: &PeerAddr, feature: &'static str) -> BuildError {
    BuildError::Field {
        field,
        value: addr.to_string(),
        reason: format!("this build of the kad crate has no `{feature}` feature"),
    }
}

/// Binds a transport for each listen address.
pub(crate) async fn listen(
    addrs: &[PeerAddr],
    identity: &Arc<NativeIdentity>,
    tls: &WsTls,
) -> Result<Transports, BuildError> {
    let mut out = Transports::default();
    let _ = (identity, tls);
    for a in addrs {
        match a {
            #[cfg(feature = "udp")]
            PeerAddr::Udp(s) => {
                let t = Arc::new(
                    kad_transport_udp::UdpTransport::bind(*s)
                        .await
                        .map_err(|e| listen_error(a, e))?,
                );
                out.all.push(t.clone());
                out.udp.push(t);
            }
            #[cfg(feature = "quic")]
            PeerAddr::Quic(s) => {
                let t = Arc::new(
                    kad_transport_quic::QuicTransport::bind(
                        *s,
                        identity.clone(),
                        kad_transport_quic::QuicConfig::default(),
                    )
                    .map_err(|e| listen_error(a, e))?,
                );
                out.all.push(t.clone());
                out.quic.push(t);
            }
            #[cfg(feature = "ws")]
            PeerAddr::Ws(uri) => {
                let (sock, path, secure) = ws_listen(uri)?;
                let mut config = ws_config(tls)?.path(path);
                if secure {
                    let Some((cert, key)) = &tls.server else {
                        return Err(BuildError::Field {
                            field: "listen",
                            value: uri.to_string(),
                            reason: "wss:// needs a certificate and its key (NativeNodeBuilder::tls_pem; kad node: --tls-cert and --tls-key)".into(),
                        });
                    };
                    let server =
                        kad_transport_ws::tls::server_config_from_pem(cert, key).map_err(|e| {
                            BuildError::Field {
                                field: "tls_cert",
                                value: format!("{} + {} bytes", cert.len(), key.len()),
                                reason: e.to_string(),
                            }
                        })?;
                    config = config.tls_server(server);
                }
                let t = Arc::new(
                    kad_transport_ws::WsTransport::bind(sock, config)
                        .await
                        .map_err(|e| listen_error(a, e))?,
                );
                out.all.push(t.clone());
                out.ws.push(t);
            }
            #[cfg(not(feature = "udp"))]
            PeerAddr::Udp(_) => return Err(not_built("udp", a, "udp")),
            #[cfg(not(feature = "quic"))]
            PeerAddr::Quic(_) => return Err(not_built("quic", a, "quic")),
            #[cfg(not(feature = "ws"))]
            PeerAddr::Ws(_) => return Err(not_built("ws", a, "ws")),
            other => {
                return Err(BuildError::Field {
                    field: "listen",
                    value: other.to_string(),
                    reason: "not an address a transport listens on".into(),
                });
            }
        }
    }
    Ok(out)
}

/// Transports a client needs to reach `targets`: an ephemeral UDP socket and QUIC endpoint of
/// the right address family, and a dial-only WebSocket transport, for the kinds present.
pub(crate) async fn dialers(
    targets: &[PeerAddr],
    identity: &Arc<NativeIdentity>,
    tls: &WsTls,
) -> Result<Transports, BuildError> {
    let _ = (identity, tls);
    let mut out = Transports::default();
    let has = |k: TransportKind| targets.iter().any(|a| a.kind() == k);
    #[cfg(any(feature = "udp", feature = "quic"))]
    let local_for = |kind: TransportKind| -> SocketAddr {
        let first = targets
            .iter()
            .filter(|a| a.kind() == kind)
            .find_map(PeerAddr::socket_addr);
        let ip: std::net::IpAddr = match first {
            Some(t) if t.ip().is_loopback() && t.is_ipv6() => std::net::Ipv6Addr::LOCALHOST.into(),
            Some(t) if t.is_ipv6() => std::net::Ipv6Addr::UNSPECIFIED.into(),
            Some(t) if !t.ip().is_loopback() => std::net::Ipv4Addr::UNSPECIFIED.into(),
            _ => std::net::Ipv4Addr::LOCALHOST.into(),
        };
        SocketAddr::new(ip, 0)
    };
    if has(TransportKind::Udp) {
        #[cfg(feature = "udp")]
        {
            let local = local_for(TransportKind::Udp);
            let t = Arc::new(
                kad_transport_udp::UdpTransport::bind(local)
                    .await
                    .map_err(|e| listen_error(&PeerAddr::Udp(local), e))?,
            );
            out.all.push(t.clone());
            out.udp.push(t);
        }
    }
    if has(TransportKind::Quic) {
        #[cfg(feature = "quic")]
        {
            let local = local_for(TransportKind::Quic);
            let t = Arc::new(
                kad_transport_quic::QuicTransport::bind(
                    local,
                    identity.clone(),
                    kad_transport_quic::QuicConfig::default(),
                )
                .map_err(|e| listen_error(&PeerAddr::Quic(local), e))?,
            );
            out.all.push(t.clone());
            out.quic.push(t);
        }
    }
    if has(TransportKind::Ws) {
        #[cfg(feature = "ws")]
        {
            let t = Arc::new(kad_transport_ws::WsTransport::client(ws_config(tls)?));
            out.all.push(t.clone());
            out.ws.push(t);
        }
    }
    if out.all.is_empty() {
        return Err(BuildError::Field {
            field: "bootstrap",
            value: targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            reason: "no address this build can reach: give udp://, quic://, ws:// or wss:// addresses (features udp, quic, ws)".into(),
        });
    }
    Ok(out)
}

/// The largest message every transport a client opens for `seeds` carries, known before
/// opening them.
pub fn client_max_message_len(seeds: &[PeerAddr]) -> usize {
    seeds
        .iter()
        .map(|s| match s.kind() {
            #[cfg(feature = "quic")]
            TransportKind::Quic => kad_transport_quic::QuicConfig::default().max_message_len,
            #[cfg(feature = "ws")]
            TransportKind::Ws => kad_transport_ws::WsConfig::default().max_message_len,
            _ => kad_core::MAX_DATAGRAM,
        })
        .min()
        .unwrap_or(kad_core::MAX_DATAGRAM)
}
