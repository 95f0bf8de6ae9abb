//! Opening transports from URIs: `udp://IP:PORT`, `quic://IP:PORT`, `ws://IP:PORT/PATH` and
//! `wss://IP:PORT/PATH`. The reference for running one node on several transports at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use kad_core::{NativeIdentity, PeerAddr, Transport, TransportKind};
use kad_transport_quic::{QuicConfig, QuicTransport};
use kad_transport_udp::UdpTransport;
use kad_transport_ws::{WsConfig, WsTransport};
use serde_json::json;

/// TLS files for `wss://`.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct TlsArgs {
    /// PEM certificate chain served on wss:// listen addresses (with --tls-key).
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Extra PEM certificates trusted when dialing wss:// (e.g. a self-signed server's own
    /// certificate), on top of the public web roots. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_ca: Vec<PathBuf>,
}

/// Parses a comma-separated (or repeated) list of address URIs; `field` names the flag in errors.
pub(crate) fn parse_addrs(field: &str, list: &[String]) -> Result<Vec<PeerAddr>> {
    let mut out = Vec::new();
    for s in list.iter().flat_map(|s| s.split(',')) {
        let s = s.trim();
        if s.is_empty() {
            continue;
        }
        let a: PeerAddr = s
            .parse()
            .map_err(|e| anyhow::anyhow!("{field} {s:?}: {e}"))?;
        if a.kind() == TransportKind::Mem {
            bail!("{field} {s}: mem:// addresses exist only inside one process");
        }
        out.push(a);
    }
    Ok(out)
}

/// Parses `--prefer udp,quic,ws`.
pub(crate) fn parse_preference(s: &str) -> Result<Vec<TransportKind>> {
    let mut v = Vec::new();
    for k in s.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let kind = match k.to_ascii_lowercase().as_str() {
            "udp" => TransportKind::Udp,
            "quic" => TransportKind::Quic,
            "ws" | "wss" => TransportKind::Ws,
            _ => bail!("--prefer {k:?}: expected a comma-separated list of udp, quic and ws"),
        };
        if !v.contains(&kind) {
            v.push(kind);
        }
    }
    if v.is_empty() {
        bail!("--prefer: name at least one of udp, quic, ws");
    }
    Ok(v)
}

/// The listening socket address and path of a `ws://` or `wss://` URI.
fn ws_listen(uri: &str) -> Result<(SocketAddr, String, bool)> {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let tls = scheme.eq_ignore_ascii_case("wss");
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let sock: SocketAddr = hostport.parse().with_context(|| {
        format!("--listen {uri}: a listen address needs an IP and a port (ws://IP:PORT/PATH)")
    })?;
    Ok((sock, path, tls))
}

/// The transports of one node, kept typed for their counters.
#[derive(Default)]
pub(crate) struct Transports {
    pub(crate) all: Vec<Arc<dyn Transport>>,
    udp: Vec<Arc<UdpTransport>>,
    quic: Vec<Arc<QuicTransport>>,
    ws: Vec<Arc<WsTransport>>,
}

impl Transports {
    fn push_udp(&mut self, t: UdpTransport) {
        let t = Arc::new(t);
        self.all.push(t.clone());
        self.udp.push(t);
    }
    fn push_quic(&mut self, t: QuicTransport) {
        let t = Arc::new(t);
        self.all.push(t.clone());
        self.quic.push(t);
    }
    fn push_ws(&mut self, t: WsTransport) {
        let t = Arc::new(t);
        self.all.push(t.clone());
        self.ws.push(t);
    }

    /// The addresses actually bound (port 0 resolved).
    pub(crate) fn bound(&self) -> Vec<String> {
        self.all
            .iter()
            .filter_map(|t| t.listen_addr())
            .map(|a| a.to_string())
            .collect()
    }

    /// The first UDP transport, if any.
    pub(crate) fn udp(&self) -> Option<&Arc<UdpTransport>> {
        self.udp.first()
    }

    /// Counters of every transport, as JSON.
    pub(crate) fn stats_json(&self) -> serde_json::Value {
        let mut v = serde_json::Map::new();
        for u in &self.udp {
            let s = u.stats();
            v.insert(
                u.local_addr().to_string(),
                json!({"sent": s.sent, "received": s.received, "queue_full": s.queue_full,
                       "send_errors": s.send_errors, "recv_errors": s.recv_errors, "oversize": s.oversize}),
            );
        }
        for q in &self.quic {
            let s = q.stats();
            v.insert(
                q.local_addr().to_string(),
                json!({"sent": s.sent, "received": s.received, "connections": q.connections(),
                       "dialed": s.dialed, "accepted": s.accepted, "refused_limit": s.refused_limit,
                       "failed": s.failed, "wrong_peer": s.wrong_peer, "queue_full": s.queue_full,
                       "oversize": s.oversize, "stream_errors": s.stream_errors}),
            );
        }
        for w in &self.ws {
            let s = w.stats();
            let name = w
                .listen_addr()
                .map_or_else(|| "ws (client)".to_owned(), |a| a.to_string());
            v.insert(
                name,
                json!({"sent": s.sent, "received": s.received, "connections": w.connections(),
                       "dialed": s.dialed, "accepted": s.accepted, "refused_limit": s.refused_limit,
                       "failed": s.failed, "handshake_failures": s.handshake_failures,
                       "oversize": s.oversize, "non_binary": s.non_binary, "queue_full": s.queue_full,
                       "timeouts": s.timeouts}),
            );
        }
        serde_json::Value::Object(v)
    }
}

fn ws_client_config(tls: &TlsArgs) -> Result<WsConfig> {
    let mut roots = Vec::new();
    for p in &tls.tls_ca {
        let pem = std::fs::read(p).with_context(|| format!("--tls-ca {}", p.display()))?;
        roots.extend(
            kad_transport_ws::tls::certs_from_pem(&pem)
                .with_context(|| format!("--tls-ca {}", p.display()))?,
        );
    }
    Ok(WsConfig::default().tls_client(kad_transport_ws::tls::client_config(&roots)))
}

/// Binds a transport for each listen address.
pub(crate) async fn listen(
    addrs: &[PeerAddr],
    identity: &Arc<NativeIdentity>,
    tls: &TlsArgs,
) -> Result<Transports> {
    if addrs.is_empty() {
        bail!("--listen: at least one address is needed");
    }
    let mut out = Transports::default();
    for a in addrs {
        match a {
            PeerAddr::Udp(s) => out.push_udp(
                UdpTransport::bind(*s)
                    .await
                    .with_context(|| format!("cannot listen on {a}"))?,
            ),
            PeerAddr::Quic(s) => out.push_quic(
                QuicTransport::bind(*s, identity.clone(), QuicConfig::default())
                    .with_context(|| format!("cannot listen on {a}"))?,
            ),
            PeerAddr::Ws(uri) => {
                let (sock, path, secure) = ws_listen(uri)?;
                let mut config = ws_client_config(tls)?.path(path);
                if secure {
                    let (Some(cert), Some(key)) = (&tls.tls_cert, &tls.tls_key) else {
                        bail!("--listen {uri}: wss:// needs --tls-cert and --tls-key");
                    };
                    let cert_pem = std::fs::read(cert)
                        .with_context(|| format!("--tls-cert {}", cert.display()))?;
                    let key_pem = std::fs::read(key)
                        .with_context(|| format!("--tls-key {}", key.display()))?;
                    let server = kad_transport_ws::tls::server_config_from_pem(&cert_pem, &key_pem)
                        .context("--tls-cert/--tls-key")?;
                    config = config.tls_server(server);
                }
                out.push_ws(
                    WsTransport::bind(sock, config)
                        .await
                        .with_context(|| format!("cannot listen on {a}"))?,
                );
            }
            other => bail!("--listen {other}: not a listenable address"),
        }
    }
    Ok(out)
}

/// Transports a client needs to reach `targets`: an ephemeral UDP socket and QUIC endpoint of
/// the right address family, and a dial-only WebSocket transport, for the kinds present.
pub(crate) async fn dialers(
    targets: &[PeerAddr],
    identity: &Arc<NativeIdentity>,
    tls: &TlsArgs,
) -> Result<Transports> {
    let mut out = Transports::default();
    let local_for = |kind: TransportKind| -> SocketAddr {
        let first = targets
            .iter()
            .filter(|a| a.kind() == kind)
            .find_map(PeerAddr::socket_addr);
        match first {
            Some(t) if t.ip().is_loopback() && t.is_ipv6() => "[::1]:0",
            Some(t) if t.is_ipv6() => "[::]:0",
            Some(t) if !t.ip().is_loopback() => "0.0.0.0:0",
            _ => "127.0.0.1:0",
        }
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let has = |k: TransportKind| targets.iter().any(|a| a.kind() == k);
    if has(TransportKind::Udp) {
        out.push_udp(
            UdpTransport::bind(local_for(TransportKind::Udp))
                .await
                .context("cannot open a UDP socket")?,
        );
    }
    if has(TransportKind::Quic) {
        out.push_quic(
            QuicTransport::bind(
                local_for(TransportKind::Quic),
                identity.clone(),
                QuicConfig::default(),
            )
            .context("cannot open a QUIC endpoint")?,
        );
    }
    if has(TransportKind::Ws) {
        out.push_ws(WsTransport::client(ws_client_config(tls)?));
    }
    if out.all.is_empty() {
        bail!("no address to reach: give udp://, quic://, ws:// or wss:// addresses");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_uris_and_preferences_parse() {
        let v = parse_addrs(
            "--listen",
            &[
                "udp://127.0.0.1:4000,quic://127.0.0.1:4001".into(),
                "ws://127.0.0.1:4002/kad".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            v.iter().map(PeerAddr::kind).collect::<Vec<_>>(),
            [TransportKind::Udp, TransportKind::Quic, TransportKind::Ws]
        );
        let (sock, path, tls) = ws_listen("wss://127.0.0.1:4002/a/b").unwrap();
        assert_eq!((sock.port(), path.as_str(), tls), (4002, "/a/b", true));
        assert!(ws_listen("ws://example.org:80/kad").is_err());
        assert!(parse_addrs("--listen", &["tcp://1.2.3.4:5".into()]).is_err());
        assert_eq!(
            parse_preference("ws, udp").unwrap(),
            [TransportKind::Ws, TransportKind::Udp]
        );
        assert!(parse_preference("carrier-pigeon").is_err());
    }
}
