//! What the native-network commands share: output, identities and key files, the node
//! configuration, spawning a node on its transports, and joining as a client.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use kad_core::{Config, Contact, DhtError, NativeIdentity, NodeId, PeerAddr};
use serde_json::json;

use crate::transports::{TlsArgs, parse_addrs, parse_preference};

/// Prints one JSON line (with --json) or a human line.
pub(crate) fn emit(json: bool, v: &serde_json::Value, human: impl FnOnce() -> String) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{v}");
    } else {
        let _ = writeln!(out, "{}", human());
    }
    let _ = out.flush();
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub(crate) fn contact_json(c: &Contact) -> serde_json::Value {
    json!({ "id": c.id.to_string(), "addrs": c.addrs.iter().map(ToString::to_string).collect::<Vec<_>>() })
}

/// Turns an error of the node builder into one naming the `kad` flag at fault.
pub(crate) fn flag_error(e: kad::BuildError) -> anyhow::Error {
    use kad::keys::KeyFileError;
    match e {
        kad::BuildError::KeyFile(KeyFileError::TooLittleWork { path, has, wanted }) => {
            anyhow::anyhow!(
                "--key-file {}: its id has {has} bits of work, less than --id-work = {wanted}; use a new key file",
                path.display()
            )
        }
        kad::BuildError::KeyFile(KeyFileError::NotHex { path, what }) => {
            anyhow::anyhow!(
                "--key-file {}: expected 64 hex digits ({what})",
                path.display()
            )
        }
        kad::BuildError::KeyFile(k) => anyhow::anyhow!("--{k}"),
        kad::BuildError::Field {
            field,
            value,
            reason,
        } => anyhow::anyhow!("--{} {value}: {reason}", field.replace('_', "-")),
        kad::BuildError::Store { dir, source } => {
            anyhow::anyhow!("--data-dir {}: {source}", dir.display())
        }
        other => anyhow::Error::new(other),
    }
}

/// Reads a key file, or creates it (see [`kad::keys::load_or_create_secret`]); errors name
/// `--key-file`.
pub(crate) fn load_or_create_secret(
    path: &Path,
    what: &'static str,
    fresh: impl FnOnce() -> Result<[u8; 32], kad::keys::KeyFileError>,
) -> Result<([u8; 32], bool)> {
    kad::keys::load_or_create_secret(path, what, fresh)
        .map_err(|e| flag_error(kad::BuildError::KeyFile(e)))
}

/// A fresh identity from the OS random source.
pub(crate) fn fresh_identity() -> Result<NativeIdentity> {
    Ok(kad::keys::fresh_identity()?)
}

pub(crate) fn parse_id(field: &str, s: &str) -> Result<NodeId> {
    s.parse::<NodeId>()
        .map_err(|_| anyhow::anyhow!("{field} {s:?}: expected 40 hex digits (a 160-bit id)"))
}

/// The configuration of a native node before its transports set the value limit.
pub(crate) fn native_config() -> Config {
    Config::default()
}

/// The largest record value a node takes when its largest message is `max_message_len` bytes.
pub(crate) use kad_core::max_native_value_for as value_limit;

/// A native node builder with what every node of the CLI runs: the pub/sub plugin (every
/// native node is a rendezvous node and can subscribe and publish) and the NAT plugin (every
/// native node votes on its external address and can check its reachability; the default
/// settings send no probes for others).
pub(crate) fn node_builder() -> kad::NativeNodeBuilder {
    kad::NativeNode::builder()
        .pubsub()
        .nat(kad_plugin_nat::NatConfig::default(), None)
}

/// A builder listening on `addrs` (URIs, already parsed).
pub(crate) fn listening(
    mut b: kad::NativeNodeBuilder,
    addrs: &[PeerAddr],
) -> kad::NativeNodeBuilder {
    for a in addrs {
        b = b.listen(a);
    }
    b
}

/// Options shared by the client commands (ping, lookup, put, get).
#[derive(Args, Debug, Clone)]
pub(crate) struct ClientArgs {
    /// Nodes to join through, comma-separated or repeated: udp://IP:PORT, quic://IP:PORT,
    /// ws://HOST:PORT/PATH or wss://HOST:PORT/PATH. The client opens a transport of each kind
    /// given.
    #[arg(long, value_name = "ADDRS")]
    pub bootstrap: Vec<String>,
    /// Transports to prefer when a peer has several addresses, in order (e.g. quic,udp,ws).
    /// Default udp,quic,ws; for a file put or get, quic,ws,udp: a file client opens QUIC beside
    /// the transports of --bootstrap, so that chunks travel on QUIC to every node that has a
    /// quic:// address (a large datagram lost in part is lost whole; QUIC resends only what was
    /// lost).
    #[arg(long, value_name = "KINDS")]
    pub prefer: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Key file of the client's identity (created with mode 0600 if missing); a fresh key by default.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// For networks whose nodes run with --id-work BITS: the client's identity gets that much
    /// work (about 2^BITS key generations) and it ignores contacts with less. 0 to 32.
    #[arg(long, default_value_t = 0, value_name = "BITS")]
    pub id_work: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Print one JSON object per result line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A read-only client node with a transport for each kind of address in `targets` (ephemeral
/// ports of the right address family; WebSocket dial-only), not yet joined. `validator` checks
/// the values its lookups receive (none: any value).
pub(crate) async fn client(
    a: &ClientArgs,
    targets: &[PeerAddr],
    validator: Option<Arc<dyn kad_core::RecordValidator>>,
) -> Result<kad::NativeNode> {
    client_preferring(a, targets, validator, DEFAULT_PREFER).await
}

/// The transports a client prefers when `--prefer` is not given.
pub(crate) const DEFAULT_PREFER: &str = "udp,quic,ws";
/// The same for a file put or get.
pub(crate) const FILE_PREFER: &str = "quic,ws,udp";

/// [`client`], preferring `default_prefer` unless `--prefer` is given.
async fn client_preferring(
    a: &ClientArgs,
    targets: &[PeerAddr],
    validator: Option<Arc<dyn kad_core::RecordValidator>>,
    default_prefer: &str,
) -> Result<kad::NativeNode> {
    crate::check_range("id-work", a.id_work, 0, 32)?;
    let prefer = parse_preference(a.prefer.as_deref().unwrap_or(default_prefer))?;
    let mut b = node_builder()
        .client()
        .id_work(a.id_work)
        .configure(|c| c.transport_preference = prefer);
    if let Some(p) = &a.key_file {
        b = b.key_file(p);
    }
    if let Some(v) = validator {
        b = b.validator(v);
    }
    for p in &a.tls.tls_ca {
        let pem = std::fs::read(p).with_context(|| format!("--tls-ca {}", p.display()))?;
        b = b.trust_pem(pem);
    }
    // The dialers of a client reach the targets; joining is the caller's.
    let node = b.dial(targets).build().await.map_err(flag_error)?;
    Ok(node)
}

pub(crate) fn timeout(a: &ClientArgs) -> Result<Duration> {
    if !(a.timeout > 0.0 && a.timeout <= 3600.0) {
        bail!(
            "--timeout = {} is out of range: it must be between 0 and 3600 seconds",
            a.timeout
        );
    }
    Ok(Duration::from_secs_f64(a.timeout))
}

/// A client joined to the network: the node, the time joining took, and the largest message
/// its transports all carry.
pub(crate) async fn joined_with(
    a: &ClientArgs,
    validator: Option<Arc<dyn kad_core::RecordValidator>>,
) -> Result<(kad::NativeNode, Duration, usize)> {
    join(a, validator, false).await
}

/// [`joined_with`] for a file put or get: the client also opens QUIC (beside UDP seeds) and
/// prefers it ([`FILE_PREFER`]) unless `--prefer` is given.
pub(crate) async fn joined_for_files(
    a: &ClientArgs,
    validator: Option<Arc<dyn kad_core::RecordValidator>>,
) -> Result<(kad::NativeNode, Duration, usize)> {
    join(a, validator, true).await
}

async fn join(
    a: &ClientArgs,
    validator: Option<Arc<dyn kad_core::RecordValidator>>,
    files: bool,
) -> Result<(kad::NativeNode, Duration, usize)> {
    let seeds = parse_addrs("--bootstrap", &a.bootstrap)?;
    if seeds.is_empty() {
        bail!(
            "--bootstrap: at least one address (udp://, quic://, ws:// or wss://) is needed to reach the network"
        );
    }
    let node = if files {
        // The QUIC endpoint takes the address family of the UDP seeds; nothing is sent to
        // these addresses unless a node answers with them.
        let mut targets = seeds.clone();
        if !seeds.iter().any(|s| matches!(s, PeerAddr::Quic(_))) {
            targets.extend(seeds.iter().filter_map(|s| match s {
                PeerAddr::Udp(a) => Some(PeerAddr::Quic(*a)),
                _ => None,
            }));
        }
        client_preferring(a, &targets, validator, FILE_PREFER).await?
    } else {
        client(a, &seeds, validator).await?
    };
    let max_message = node.transports().min_message_len();
    let t0 = Instant::now();
    match node.join(&seeds, timeout(a)?).await {
        Ok(_) => Ok((node, t0.elapsed(), max_message)),
        Err(kad::BuildError::Join { tried_for, source }) => {
            if tried_for >= timeout(a)? {
                bail!("bootstrap timed out after {} s", a.timeout)
            }
            bail!(
                "bootstrap failed: {source} (tried for {:.1} s)",
                tried_for.as_secs_f64()
            )
        }
        Err(e) => Err(flag_error(e)),
    }
}

pub(crate) async fn joined(a: &ClientArgs) -> Result<(kad::NativeNode, Duration)> {
    let (node, join, _) = joined_with(a, None).await?;
    Ok((node, join))
}

/// The largest message every transport a client opens for `seeds` carries, known before
/// opening them (so a value too large is refused before joining).
pub(crate) fn client_max_message(a: &ClientArgs) -> Result<usize> {
    let seeds = parse_addrs("--bootstrap", &a.bootstrap)?;
    Ok(kad::transports::client_max_message_len(&seeds))
}

pub(crate) async fn within<T>(
    a: &ClientArgs,
    f: impl Future<Output = Result<T, DhtError>>,
) -> Result<T> {
    match tokio::time::timeout(timeout(a)?, f).await {
        Ok(r) => Ok(r?),
        Err(_) => bail!("timed out after {} s", a.timeout),
    }
}

/// Exit status of `kad get` when the network holds no value under the key.
pub(crate) const NOT_FOUND: u8 = 1;
