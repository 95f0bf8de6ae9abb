//! What the native-network commands share: output, identities and key files, the node
//! configuration, spawning a node on its transports, and joining as a client.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use kad_core::{
    Config, Contact, Dht, DhtError, MAX_NATIVE_VALUE, NativeCodec, NativeIdentity, Node, NodeId,
    PeerAddr, Transport,
};
use serde_json::json;

use crate::transports::{self, TlsArgs, parse_addrs, parse_preference};

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

/// A fresh secret from the OS.
pub(crate) fn fresh_identity() -> Result<NativeIdentity> {
    loop {
        let mut s = [0u8; 32];
        getrandom::fill(&mut s).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
        if let Ok(id) = NativeIdentity::from_secret(&s) {
            return Ok(id);
        }
    }
}

/// A fresh identity whose id carries at least `bits` of work (`kad_core::native::id_work`):
/// about `2^bits` key generations from an OS-seeded generator.
pub(crate) fn fresh_identity_with_work(bits: u32) -> Result<NativeIdentity> {
    if bits == 0 {
        return fresh_identity();
    }
    // The thread RNG: a CSPRNG seeded from the OS.
    Ok(NativeIdentity::generate_with_work(&mut rand::rng(), bits))
}

/// Loads the key at `path`, or creates it (mode 0600) when the file does not exist. A created
/// key has `bits` of work; a loaded key with less is an error naming the file and both numbers.
pub(crate) fn load_or_create_key_with_work(
    path: &Path,
    bits: u32,
) -> Result<(NativeIdentity, bool)> {
    let (secret, created) = load_or_create_secret(path, "a secp256k1 secret key", || {
        Ok(fresh_identity_with_work(bits)?.secret_bytes())
    })?;
    let id = NativeIdentity::from_secret(&secret)
        .with_context(|| format!("--key-file {}", path.display()))?;
    let work = kad_core::native::id_work(&id.id());
    if work < bits {
        anyhow::bail!(
            "--key-file {}: its id has {work} bits of work, less than --id-work = {bits}; use a new key file",
            path.display()
        );
    }
    Ok((id, created))
}

/// Reads the 32-byte secret (64 hex digits) in the key file at `path`, warning when others may
/// read it; when the file does not exist, writes `fresh()` there with mode 0600. `what` names
/// the kind of key in errors. Returns the secret and whether it was created.
pub(crate) fn load_or_create_secret(
    path: &Path,
    what: &str,
    fresh: impl FnOnce() -> Result<[u8; 32]>,
) -> Result<([u8; 32], bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut secret = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut secret).with_context(|| {
                format!(
                    "--key-file {}: expected 64 hex digits ({what})",
                    path.display()
                )
            })?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                if let Ok(m) = std::fs::metadata(path) {
                    if m.permissions().mode() & 0o077 != 0 {
                        eprintln!(
                            "warning: --key-file {} is readable by others (mode {:o}); chmod 600 it",
                            path.display(),
                            m.permissions().mode() & 0o777
                        );
                    }
                }
            }
            Ok((secret, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = fresh()?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(path)
                .with_context(|| format!("--key-file {}: cannot create it", path.display()))?;
            writeln!(f, "{}", hex::encode(secret))
                .with_context(|| format!("--key-file {}: cannot write it", path.display()))?;
            Ok((secret, true))
        }
        Err(e) => Err(e).with_context(|| format!("--key-file {}: cannot read it", path.display())),
    }
}

pub(crate) fn parse_id(field: &str, s: &str) -> Result<NodeId> {
    s.parse::<NodeId>()
        .map_err(|_| anyhow::anyhow!("{field} {s:?}: expected 40 hex digits (a 160-bit id)"))
}

/// The configuration of a native node: record values limited to what fits one datagram.
pub(crate) fn native_config() -> Config {
    let mut c = Config::default();
    c.max_value_len = MAX_NATIVE_VALUE;
    c
}

/// What a node keeps and accepts: its record store, its validator and whether it serves
/// `storage.FETCH`. The default is an in-memory store that accepts any record, no plugin.
#[derive(Default)]
pub(crate) struct Setup {
    pub(crate) store: Option<Box<dyn kad_core::RecordStore>>,
    pub(crate) validator: Option<Arc<dyn kad_core::RecordValidator>>,
    pub(crate) storage_plugin: bool,
    /// The pub/sub plugin's settings (default: `PubsubConfig::default()`).
    pub(crate) pubsub: Option<kad_plugin_pubsub::PubsubConfig>,
    /// The NAT plugin's settings (default: `NatConfig::default()`, which sends no probes for
    /// others: only nodes that run `kad_plugin_nat::Nat` beside them turn `serve_probes` on).
    pub(crate) nat: Option<kad_plugin_nat::NatConfig>,
    /// Bits of work required in peers' ids (`NativeCodec::min_id_work`); 0: none.
    pub(crate) id_work: u32,
}

/// The largest record value a node takes when its largest message is `max_message_len` bytes.
pub(crate) use kad_core::max_native_value_for as value_limit;

/// Spawns a native node on `transports` (any mix of UDP, QUIC and WebSocket), advertising
/// `advertise` (when not empty) instead of the transports' listen addresses.
///
/// The codec and the value limit follow the largest message any of the transports carries: a
/// node on QUIC or WebSocket takes values of about 750 KB (1 MiB messages), a UDP-only node
/// 45,000 bytes.
pub(crate) fn spawn_on(
    transports: Vec<Arc<dyn Transport>>,
    advertise: Vec<PeerAddr>,
    identity: Arc<NativeIdentity>,
    mut config: Config,
    setup: Setup,
) -> Result<Dht> {
    let max_message = transports
        .iter()
        .map(|t| t.max_message_len())
        .max()
        .unwrap_or(kad_core::MAX_DATAGRAM);
    config.max_value_len = value_limit(max_message);
    let identity_for_posts = identity.clone();
    let mut builder = Node::builder(config)
        .identity(identity.clone())
        .codec(Box::new(
            NativeCodec::new(identity)
                .max_len(max_message)
                .min_id_work(setup.id_work),
        ));
    if !advertise.is_empty() {
        builder = builder.addrs(advertise);
    }
    if let Some(store) = setup.store {
        builder = builder.store(store);
    }
    if let Some(v) = setup.validator {
        builder = builder.validator(v);
    }
    // Every native node is a pub/sub rendezvous node and can subscribe and publish.
    builder = builder.plugin(Box::new(kad_plugin_pubsub::PubsubPlugin::new(
        setup.pubsub.unwrap_or_default(),
        Some(identity_for_posts),
    )));
    // Every native node votes on its external address and can check its reachability.
    builder = builder.plugin(Box::new(kad_plugin_nat::NatPlugin::new(
        setup.nat.unwrap_or_default(),
    )));
    if setup.storage_plugin {
        builder = builder.plugin(Box::new(kad_plugin_storage::StoragePlugin::new(
            value_limit(max_message),
        )));
    }
    Ok(Dht::spawn(builder, transports)?)
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
    #[arg(long, default_value = "udp,quic,ws", value_name = "KINDS")]
    pub prefer: String,
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
/// ports of the right address family; WebSocket dial-only). `validator` checks the values its
/// lookups receive (none: any value).
pub(crate) async fn client(
    a: &ClientArgs,
    targets: &[PeerAddr],
    validator: Option<Arc<dyn kad_core::RecordValidator>>,
) -> Result<(Dht, usize)> {
    crate::check_range("id-work", a.id_work, 0, 32)?;
    let identity = Arc::new(match &a.key_file {
        Some(p) => load_or_create_key_with_work(p, a.id_work)?.0,
        None => fresh_identity_with_work(a.id_work)?,
    });
    let mut config = native_config();
    config.read_only = true;
    config.transport_preference = parse_preference(&a.prefer)?;
    let t = transports::dialers(targets, &identity, &a.tls).await?;
    // Answers may come back through any of the client's transports: size to the smallest.
    let max_message = t
        .all
        .iter()
        .map(|t| t.max_message_len())
        .min()
        .unwrap_or(kad_core::MAX_DATAGRAM);
    let setup = Setup {
        validator,
        id_work: a.id_work,
        ..Setup::default()
    };
    Ok((
        spawn_on(t.all, Vec::new(), identity, config, setup)?,
        max_message,
    ))
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
) -> Result<(Dht, Duration, usize)> {
    let seeds = parse_addrs("--bootstrap", &a.bootstrap)?;
    if seeds.is_empty() {
        bail!(
            "--bootstrap: at least one address (udp://, quic://, ws:// or wss://) is needed to reach the network"
        );
    }
    let (dht, max_message) = client(a, &seeds, validator).await?;
    let t0 = Instant::now();
    let limit = timeout(a)?;
    // Every seed is pinged (each PING sent up to four times); a join that still found nobody is
    // tried again, 1 s, 2 s, 4 s... later, until --timeout.
    let mut wait = Duration::from_secs(1);
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, dht.bootstrap(seeds.clone())).await {
            Ok(Ok(_)) => return Ok((dht, t0.elapsed(), max_message)),
            Ok(Err(e)) if t0.elapsed() + wait >= limit => {
                bail!(
                    "bootstrap failed: {e} (tried for {:.1} s)",
                    t0.elapsed().as_secs_f64()
                )
            }
            Ok(Err(_)) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(8));
            }
            Err(_) => bail!("bootstrap timed out after {} s", a.timeout),
        }
    }
}

pub(crate) async fn joined(a: &ClientArgs) -> Result<(Dht, Duration)> {
    let (dht, join, _) = joined_with(a, None).await?;
    Ok((dht, join))
}

/// The largest message every transport a client opens for `seeds` carries, known before
/// opening them (so a value too large is refused before joining).
pub(crate) fn client_max_message(a: &ClientArgs) -> Result<usize> {
    let seeds = parse_addrs("--bootstrap", &a.bootstrap)?;
    Ok(seeds
        .iter()
        .map(|s| match s.kind() {
            kad_core::TransportKind::Quic => {
                kad_transport_quic::QuicConfig::default().max_message_len
            }
            kad_core::TransportKind::Ws => kad_transport_ws::WsConfig::default().max_message_len,
            _ => kad_core::MAX_DATAGRAM,
        })
        .min()
        .unwrap_or(kad_core::MAX_DATAGRAM))
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
