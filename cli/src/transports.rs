//! Transport flags: address URIs (`udp://IP:PORT`, `quic://IP:PORT`, `ws://IP:PORT/PATH`,
//! `wss://IP:PORT/PATH`), transport preferences, TLS files, and the transports' counters. The
//! `kad` crate's node builder opens the transports.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use kad_core::{PeerAddr, Transport as _, TransportKind};
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

impl TlsArgs {
    /// Reads the TLS files into the node builder.
    pub(crate) fn apply(&self, mut b: kad::NativeNodeBuilder) -> Result<kad::NativeNodeBuilder> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let cert_pem = std::fs::read(cert)
                    .with_context(|| format!("--tls-cert {}", cert.display()))?;
                let key_pem =
                    std::fs::read(key).with_context(|| format!("--tls-key {}", key.display()))?;
                b = b.tls_pem(cert_pem, key_pem);
            }
            (None, None) => {}
            _ => bail!("--tls-cert and --tls-key go together"),
        }
        for p in &self.tls_ca {
            let pem = std::fs::read(p).with_context(|| format!("--tls-ca {}", p.display()))?;
            b = b.trust_pem(pem);
        }
        Ok(b)
    }
}

/// Counters of every transport of a node, as JSON.
pub(crate) fn stats_json(t: &kad::Transports) -> serde_json::Value {
    let mut v = serde_json::Map::new();
    for u in t.udp() {
        let s = u.stats();
        v.insert(
            u.local_addr().to_string(),
            json!({"sent": s.sent, "received": s.received, "queue_full": s.queue_full,
                   "send_errors": s.send_errors, "recv_errors": s.recv_errors, "oversize": s.oversize}),
        );
    }
    for q in t.quic() {
        let s = q.stats();
        v.insert(
            q.local_addr().to_string(),
            json!({"sent": s.sent, "received": s.received, "connections": q.connections(),
                   "dialed": s.dialed, "accepted": s.accepted, "refused_limit": s.refused_limit,
                   "failed": s.failed, "wrong_peer": s.wrong_peer, "queue_full": s.queue_full,
                   "oversize": s.oversize, "stream_errors": s.stream_errors,
                   "dead_peers": s.dead_peers}),
        );
    }
    for w in t.ws() {
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
        assert!(parse_addrs("--listen", &["tcp://1.2.3.4:5".into()]).is_err());
        assert_eq!(
            parse_preference("ws, udp").unwrap(),
            [TransportKind::Ws, TransportKind::Udp]
        );
        assert!(parse_preference("carrier-pigeon").is_err());
    }
}
