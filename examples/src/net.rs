//! `kad node`, `kad ping`, `kad lookup`, `kad put`, `kad get`: the native network over UDP,
//! QUIC and WebSocket.
//!
//! This is the reference for running a native node: a k256 identity, the signed JSON-RPC codec
//! and one or more transports, spawned on the tokio runtime.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::Args;
use kad_core::{
    Config, Contact, Dht, DhtError, MAX_NATIVE_VALUE, NativeCodec, NativeIdentity, Node, NodeId,
    PeerAddr, QueryError, Transport,
};
use kad_transport_udp::UdpTransport;
use serde_json::json;

use crate::transports::{self, TlsArgs, Transports, parse_addrs, parse_preference};

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

/// Loads the key at `path`, or creates it (mode 0600) when the file does not exist.
pub(crate) fn load_or_create_key(path: &Path) -> Result<(NativeIdentity, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut secret = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut secret).with_context(|| {
                format!(
                    "--key-file {}: expected 64 hex digits (a secp256k1 secret key)",
                    path.display()
                )
            })?;
            let id = NativeIdentity::from_secret(&secret)
                .with_context(|| format!("--key-file {}", path.display()))?;
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
            Ok((id, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = fresh_identity()?;
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
            writeln!(f, "{}", hex::encode(id.secret_bytes()))
                .with_context(|| format!("--key-file {}: cannot write it", path.display()))?;
            Ok((id, true))
        }
        Err(e) => Err(e).with_context(|| format!("--key-file {}: cannot read it", path.display())),
    }
}

fn parse_id(field: &str, s: &str) -> Result<NodeId> {
    s.parse::<NodeId>()
        .map_err(|_| anyhow::anyhow!("{field} {s:?}: expected 40 hex digits (a 160-bit id)"))
}

/// The configuration of a native node: record values limited to what fits one datagram.
pub(crate) fn native_config() -> Config {
    let mut c = Config::default();
    c.max_value_len = MAX_NATIVE_VALUE;
    c
}

/// Spawns a native node (signed JSON-RPC over UDP) on `listen`.
pub(crate) async fn spawn_native(
    listen: SocketAddr,
    identity: Arc<NativeIdentity>,
    config: Config,
) -> Result<(Dht, Arc<UdpTransport>)> {
    spawn_native_advertising(listen, Vec::new(), identity, config).await
}

/// Like [`spawn_native`], advertising `advertise` (when not empty) instead of the bound address.
pub(crate) async fn spawn_native_advertising(
    listen: SocketAddr,
    advertise: Vec<PeerAddr>,
    identity: Arc<NativeIdentity>,
    config: Config,
) -> Result<(Dht, Arc<UdpTransport>)> {
    let udp = Arc::new(
        UdpTransport::bind(listen)
            .await
            .with_context(|| format!("cannot listen on udp://{listen}"))?,
    );
    let transports: Vec<Arc<dyn Transport>> = vec![udp.clone()];
    let dht = spawn_on(transports, advertise, identity, config)?;
    Ok((dht, udp))
}

/// Spawns a native node on `transports` (any mix of UDP, QUIC and WebSocket), advertising
/// `advertise` (when not empty) instead of the transports' listen addresses.
pub(crate) fn spawn_on(
    transports: Vec<Arc<dyn Transport>>,
    advertise: Vec<PeerAddr>,
    identity: Arc<NativeIdentity>,
    config: Config,
) -> Result<Dht> {
    let mut builder = Node::builder(config)
        .identity(identity.clone())
        .codec(Box::new(NativeCodec::new(identity)));
    if !advertise.is_empty() {
        builder = builder.addrs(advertise);
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
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Print one JSON object per result line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A read-only client node with a transport for each kind of address in `targets` (ephemeral
/// ports of the right address family; WebSocket dial-only).
async fn client(a: &ClientArgs, targets: &[PeerAddr]) -> Result<Dht> {
    let identity = Arc::new(match &a.key_file {
        Some(p) => load_or_create_key(p)?.0,
        None => fresh_identity()?,
    });
    let mut config = native_config();
    config.read_only = true;
    config.transport_preference = parse_preference(&a.prefer)?;
    let t = transports::dialers(targets, &identity, &a.tls).await?;
    spawn_on(t.all, Vec::new(), identity, config)
}

fn timeout(a: &ClientArgs) -> Result<Duration> {
    if !(a.timeout > 0.0 && a.timeout <= 3600.0) {
        bail!(
            "--timeout = {} is out of range: it must be between 0 and 3600 seconds",
            a.timeout
        );
    }
    Ok(Duration::from_secs_f64(a.timeout))
}

async fn joined(a: &ClientArgs) -> Result<(Dht, Duration)> {
    let seeds = parse_addrs("--bootstrap", &a.bootstrap)?;
    if seeds.is_empty() {
        bail!(
            "--bootstrap: at least one address (udp://, quic://, ws:// or wss://) is needed to reach the network"
        );
    }
    let dht = client(a, &seeds).await?;
    let t0 = Instant::now();
    let r = tokio::time::timeout(timeout(a)?, dht.bootstrap(seeds)).await;
    match r {
        Ok(Ok(_)) => Ok((dht, t0.elapsed())),
        Ok(Err(e)) => bail!("bootstrap failed: {e}"),
        Err(_) => bail!("bootstrap timed out after {} s", a.timeout),
    }
}

async fn within<T>(a: &ClientArgs, f: impl Future<Output = Result<T, DhtError>>) -> Result<T> {
    match tokio::time::timeout(timeout(a)?, f).await {
        Ok(r) => Ok(r?),
        Err(_) => bail!("timed out after {} s", a.timeout),
    }
}

// ---- kad node ----

/// `kad node` flags.
#[derive(Args, Debug)]
pub(crate) struct NodeArgs {
    /// Addresses to listen on, comma-separated or repeated, one transport each (port 0 picks a
    /// free one): udp://IP:PORT, quic://IP:PORT, ws://IP:PORT/PATH, wss://IP:PORT/PATH (with
    /// --tls-cert and --tls-key). The node's contact lists them all, in this order.
    #[arg(long, default_value = "udp://127.0.0.1:4000", value_name = "ADDRS")]
    listen: Vec<String>,
    /// Nodes to join through, comma-separated or repeated, as any of the URIs above. Without it
    /// the node waits for others to join through it.
    #[arg(long, value_name = "ADDRS")]
    bootstrap: Vec<String>,
    /// Addresses to tell peers instead of --listen (e.g. the public address when listening on
    /// udp://0.0.0.0:PORT, or wss://example.org/kad behind a reverse proxy), comma-separated or
    /// repeated.
    #[arg(long, value_name = "ADDRS")]
    advertise: Vec<String>,
    /// Transports to prefer when a peer has several addresses, in order (e.g. quic,udp,ws).
    /// Kinds this node does not listen on are skipped.
    #[arg(long, default_value = "udp,quic,ws", value_name = "KINDS")]
    prefer: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// File holding the node's secret key (64 hex digits). Created with mode 0600 if missing;
    /// without it the node gets a fresh identity each run.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long = "for", value_name = "SECONDS")]
    for_secs: Option<f64>,
    /// Print a stats line every this many seconds (0: only when stopping).
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    stats_every: f64,
    /// Print one JSON object per line (events: listening, bootstrapped, stats, stopped).
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn node(a: NodeArgs) -> Result<()> {
    let listen = parse_addrs("--listen", &a.listen)?;
    let seeds = parse_addrs("--bootstrap", &a.bootstrap)?;
    let advertise = parse_addrs("--advertise", &a.advertise)?;
    let prefer = parse_preference(&a.prefer)?;
    for l in &listen {
        let unspecified = match l {
            PeerAddr::Ws(u) => u.contains("0.0.0.0") || u.contains("[::]"),
            other => other.socket_addr().is_some_and(|s| s.ip().is_unspecified()),
        };
        if unspecified && advertise.is_empty() {
            eprintln!(
                "warning: listening on {l} without --advertise: peers will learn this node's address from the packets they receive"
            );
        }
    }
    if let Some(s) = a.for_secs {
        if !(s > 0.0 && s <= 1e7) {
            bail!("--for = {s} is out of range: it must be a positive number of seconds");
        }
    }
    if !(0.0..=1e6).contains(&a.stats_every) {
        bail!(
            "--stats-every = {} is out of range: 0 to 1000000 seconds",
            a.stats_every
        );
    }
    let (identity, created) = match &a.key_file {
        Some(p) => load_or_create_key(p)?,
        None => (fresh_identity()?, false),
    };
    let identity = Arc::new(identity);
    let transports = transports::listen(&listen, &identity, &a.tls).await?;
    let mut config = native_config();
    config.transport_preference = prefer;
    let dht = spawn_on(transports.all.clone(), advertise, identity, config)?;
    let c = dht.contact().clone();
    let bound = transports.bound();
    emit(
        a.json,
        &json!({"event": "listening", "id": c.id.to_string(), "addrs": contact_json(&c)["addrs"],
                "bound": bound.first(), "bound_all": bound, "key_created": created}),
        || format!("listening: id {} at {}", c.id, bound.join(", ")),
    );
    if !seeds.is_empty() {
        let d = dht.clone();
        let json = a.json;
        tokio::spawn(async move {
            let t0 = Instant::now();
            match d.bootstrap(seeds).await {
                Ok(o) => emit(
                    json,
                    &json!({"event": "bootstrapped", "closest": o.closest.len(), "rpcs": o.stats.rpcs, "elapsed_ms": ms(t0.elapsed())}),
                    || {
                        format!(
                            "bootstrapped: {} closest found in {:.1} ms",
                            o.closest.len(),
                            ms(t0.elapsed())
                        )
                    },
                ),
                Err(e) => emit(
                    json,
                    &json!({"event": "bootstrap_failed", "error": e.to_string()}),
                    || format!("bootstrap failed: {e} (still listening)"),
                ),
            }
        });
    }
    let stop = async {
        match a.for_secs {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    let every = (a.stats_every > 0.0).then(|| Duration::from_secs_f64(a.stats_every));
    loop {
        let tick = async {
            match every {
                Some(e) => tokio::time::sleep(e).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => break,
            () = tick => print_stats(&dht, &transports, a.json, "stats").await,
        }
    }
    print_stats(&dht, &transports, a.json, "stopped").await;
    dht.shutdown().await;
    Ok(())
}

async fn print_stats(dht: &Dht, transports: &Transports, json: bool, event: &str) {
    let Ok(stats) = dht.stats().await else { return };
    let table = dht.snapshot().await.map(|s| s.contacts.len()).unwrap_or(0);
    let rss = crate::peak_rss_mb();
    let udp = transports.udp().map(|u| {
        let u = u.stats();
        json!({"sent": u.sent, "received": u.received, "queue_full": u.queue_full,
               "send_errors": u.send_errors, "recv_errors": u.recv_errors, "oversize": u.oversize})
    });
    emit(
        json,
        &json!({"event": event, "routing_table": table, "stats": stats, "udp": udp,
                "transports": transports.stats_json(), "peak_rss_mb": rss}),
        || {
            format!(
                "{event}: {table} contacts, {} in / {} out, dropped: {} malformed, {} bad signature, {} id mismatch, {} stale, {} replay, {} wrong recipient, {} unknown txn, {} wrong peer; peak RSS {rss} MB",
                stats.messages_in,
                stats.messages_out,
                stats.dropped_malformed,
                stats.dropped_bad_signature,
                stats.dropped_id_mismatch,
                stats.dropped_stale,
                stats.dropped_replay,
                stats.dropped_wrong_recipient,
                stats.dropped_unknown_txn,
                stats.dropped_wrong_peer
            )
        },
    );
}

// ---- client commands ----

/// `kad ping` flags.
#[derive(Args, Debug)]
pub(crate) struct PingArgs {
    /// The node to ping: udp://IP:PORT, quic://IP:PORT, ws://HOST:PORT/PATH or wss://....
    addr: String,
    /// How many pings to send, one after the other.
    #[arg(long, default_value_t = 1)]
    count: u32,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

pub(crate) async fn ping(a: PingArgs) -> Result<()> {
    let target = parse_addrs("ADDR", std::slice::from_ref(&a.addr))?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("ADDR: an address is needed"))?;
    if !(1..=100_000).contains(&a.count) {
        bail!("--count = {} is out of range: 1 to 100000", a.count);
    }
    let dht = client(&a.client, std::slice::from_ref(&target)).await?;
    for seq in 0..a.count {
        let o = within(&a.client, dht.ping(target.clone())).await?;
        emit(
            a.client.json,
            &json!({"seq": seq, "id": o.contact.id.to_string(), "addrs": contact_json(&o.contact)["addrs"], "rtt_ms": ms(o.rtt)}),
            || {
                format!(
                    "pong from {} ({}): rtt {:.3} ms",
                    target,
                    o.contact.id,
                    ms(o.rtt)
                )
            },
        );
    }
    dht.shutdown().await;
    Ok(())
}

/// `kad lookup` flags.
#[derive(Args, Debug)]
pub(crate) struct LookupArgs {
    /// The id to look for, 40 hex digits.
    id: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

pub(crate) async fn lookup(a: LookupArgs) -> Result<()> {
    let target = parse_id("ID", &a.id)?;
    let (dht, join) = joined(&a.client).await?;
    let o = within(&a.client, dht.find_node(target)).await?;
    emit(
        a.client.json,
        &json!({"target": target.to_string(), "closest": o.closest.iter().map(|c| {
                    let mut v = contact_json(c);
                    v["distance"] = hex::encode(c.id.distance(&target).0).into();
                    v
                }).collect::<Vec<_>>(),
                "hops": o.stats.hops, "rpcs": o.stats.rpcs, "failures": o.stats.failures,
                "elapsed_ms": ms(o.elapsed), "join_ms": ms(join)}),
        || {
            let mut s = format!(
                "{} closest to {target} ({} hops, {} RPCs, {:.1} ms; joined in {:.1} ms):",
                o.closest.len(),
                o.stats.hops,
                o.stats.rpcs,
                ms(o.elapsed),
                ms(join)
            );
            for c in &o.closest {
                s.push_str(&format!("\n  {}  {}", c.id, c.addrs[0]));
            }
            s
        },
    );
    dht.shutdown().await;
    Ok(())
}

/// `kad put` flags.
#[derive(Args, Debug)]
pub(crate) struct PutArgs {
    /// The record key, 40 hex digits.
    #[arg(long)]
    key: String,
    /// The value (UTF-8 text as given; at most 45000 bytes).
    value: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

pub(crate) async fn put(a: PutArgs) -> Result<()> {
    let key = parse_id("--key", &a.key)?;
    if a.value.len() > MAX_NATIVE_VALUE {
        bail!(
            "VALUE is {} bytes: the limit is {MAX_NATIVE_VALUE} bytes (one datagram)",
            a.value.len()
        );
    }
    let (dht, join) = joined(&a.client).await?;
    let o = within(&a.client, dht.put(key, a.value.clone().into())).await?;
    emit(
        a.client.json,
        &json!({"key": key.to_string(), "stored": o.stored, "tried": o.tried, "rpcs": o.stats.rpcs,
                "elapsed_ms": ms(o.elapsed), "join_ms": ms(join)}),
        || {
            format!(
                "stored at {} of {} nodes in {:.1} ms",
                o.stored,
                o.tried,
                ms(o.elapsed)
            )
        },
    );
    dht.shutdown().await;
    if o.stored == 0 {
        bail!("no node stored the record");
    }
    Ok(())
}

/// `kad get` flags.
#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// The record key, 40 hex digits.
    key: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Exit status of `kad get` when the network holds no value under the key.
pub(crate) const NOT_FOUND: u8 = 1;

pub(crate) async fn get(a: GetArgs) -> Result<Option<u8>> {
    let key = parse_id("KEY", &a.key)?;
    let (dht, join) = joined(&a.client).await?;
    let r = tokio::time::timeout(timeout(&a.client)?, dht.get(key)).await;
    dht.shutdown().await;
    let o = match r {
        Err(_) => bail!("timed out after {} s", a.client.timeout),
        Ok(Err(DhtError::Query(QueryError::NotFound))) => {
            emit(
                a.client.json,
                &json!({"ok": false, "key": key.to_string(), "error": "not found"}),
                || format!("{key}: not found"),
            );
            return Ok(Some(NOT_FOUND));
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(o)) => o,
    };
    let text = std::str::from_utf8(&o.record.value).ok();
    emit(
        a.client.json,
        &json!({"key": key.to_string(), "value": text,
                "value_base64": base64::engine::general_purpose::STANDARD.encode(&o.record.value),
                "publisher": o.record.publisher.map(|p| p.to_string()),
                "expires_at_ms": o.record.expires_at_ms, "hops": o.stats.hops, "rpcs": o.stats.rpcs,
                "elapsed_ms": ms(o.elapsed), "join_ms": ms(join)}),
        || match text {
            Some(t) => t.to_owned(),
            None => format!(
                "(binary, base64) {}",
                base64::engine::general_purpose::STANDARD.encode(&o.record.value)
            ),
        },
    );
    Ok(None)
}
