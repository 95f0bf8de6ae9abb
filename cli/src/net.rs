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

async fn joined(a: &ClientArgs) -> Result<(Dht, Duration)> {
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
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0 picks a
    /// free one, printed in the `metrics` line): requests in and out by method, drops by reason,
    /// query latency histograms, routing-table and store size, pub/sub subscriptions, NAT
    /// mappings and reachability, memory. Bind to 127.0.0.1 unless the scraper is elsewhere:
    /// the endpoint has no authentication.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Datagrams per second accepted from one source IP this node has not sent to, counted
    /// before anything is parsed or verified; over it they are dropped and counted
    /// (`dropped_rate_limited`). 0: no limit (for benchmarks from one address). See
    /// docs/limits.md.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    per_ip_rate: u32,
    /// Burst allowed above --per-ip-rate, in datagrams.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    per_ip_burst: u32,
    /// Answer unproven UDP addresses at once even when the answer is larger than the request
    /// (turns off the anti-amplification guard, PROTOCOL.md section 9). Only for benchmarks
    /// from raw clients that do not answer the proving PING; never on a public address.
    #[arg(long)]
    no_amplification_guard: bool,
    /// Sybil defence: most contacts of one public /24 (IPv4) or /64 (IPv6) per bucket and per
    /// lookup; loopback and private addresses are never limited. 2 is a good value on an open
    /// network; leave it at 0 (no limit) when many of the network's nodes share a public /24.
    /// 0 to 256.
    #[arg(long, default_value_t = 0, value_name = "N")]
    subnet_limit: usize,
    /// Sybil and eclipse defence (S/Kademlia): disjoint paths per lookup, each asking --alpha
    /// at a time; 1 is an ordinary lookup. About 2 to 4 times the requests (see `kad sim sybil`).
    /// 1 to 16.
    #[arg(long, default_value_t = 1, value_name = "N")]
    disjoint_paths: usize,
    /// Sybil defence (id cost, S/Kademlia's static puzzle): require BITS leading zero bits in
    /// SHA-256 of every peer's id, dropping messages from weaker ids and contacts with weaker
    /// ids; this node's own key is created with that much work (about 2^BITS key generations:
    /// 16 bits takes seconds, each extra bit doubles it). Every node and client of the network
    /// must use the same value. 0 (off) to 32.
    #[arg(long, default_value_t = 0, value_name = "BITS")]
    id_work: u32,
    #[command(flatten)]
    store: crate::storage::StoreArgs,
    #[command(flatten)]
    nat: crate::nat::NatArgs,
    /// Print one JSON object per line (events: listening, metrics, bootstrapped, or
    /// bootstrap_failed then joined once a later join succeeds, nat, stats, nat_stopped,
    /// stopped).
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn node(a: NodeArgs) -> Result<()> {
    crate::check_range("subnet-limit", a.subnet_limit, 0, 256)?;
    crate::check_range("disjoint-paths", a.disjoint_paths, 1, 16)?;
    crate::check_range("id-work", a.id_work, 0, 32)?;
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
    if let Some(d) = &a.store.data_dir {
        std::fs::create_dir_all(d)
            .with_context(|| format!("--data-dir {}: cannot create it", d.display()))?;
    }
    let (identity, created) = match a.store.key_file(a.key_file.clone()) {
        Some(p) => load_or_create_key_with_work(&p, a.id_work)?,
        None => (fresh_identity_with_work(a.id_work)?, false),
    };
    let identity = Arc::new(identity);
    let upnp = a.nat.upnp_config()?;
    let mut store = a.store.open(identity.id())?;
    let transports = transports::listen(&listen, &identity, &a.tls).await?;
    // Map the ports the transports listen on (not the --advertise ones).
    let upnp = upnp.map(|mut c| {
        c.listen = transports
            .all
            .iter()
            .filter_map(|t| t.listen_addr())
            .collect();
        c
    });
    let mut config = native_config();
    config.transport_preference = prefer;
    config.per_ip_rate = a.per_ip_rate;
    config.per_ip_burst = a.per_ip_burst;
    config.amplification_guard = !a.no_amplification_guard;
    config.subnet_limit = a.subnet_limit;
    config.disjoint_paths = a.disjoint_paths;
    let mut setup = std::mem::take(&mut store.setup);
    setup.id_work = a.id_work;
    let dht = spawn_on(
        transports.all.clone(),
        advertise,
        identity.clone(),
        config,
        Setup {
            nat: Some(a.nat.plugin_config()),
            ..setup
        },
    )?;
    // Sends the probes other nodes' checks ask for and, with --upnp, keeps the mappings.
    let nat = kad_plugin_nat::Nat::spawn(dht.clone(), identity, upnp);
    crate::nat::print_changes(&nat, a.json);
    let mut metrics_url = None;
    if let Some(bind) = a.metrics {
        let sources = crate::metrics::Sources {
            dht: dht.clone(),
            nat: Some(nat.watch()),
            udp: transports.udp().cloned(),
        };
        let addr = crate::metrics::serve(bind, sources).await?;
        metrics_url = Some(format!("http://{addr}/metrics"));
    }
    let c = dht.contact().clone();
    let bound = transports.bound();
    // A warm restart: the contacts saved last time go back into the table, and join the
    // network when no --bootstrap is given.
    let mut seeds = seeds;
    let mut restored = 0;
    if let Some(routing) = &store.routing {
        let saved = routing.load()?;
        restored = saved.len();
        if seeds.is_empty() {
            seeds = saved
                .iter()
                .take(16)
                .flat_map(|c| c.addrs.first().cloned())
                .collect();
        }
        for contact in saved {
            let _ = dht.add_contact(contact).await;
        }
    }
    emit(
        a.json,
        &json!({"event": "listening", "id": c.id.to_string(), "addrs": contact_json(&c)["addrs"],
                "bound": bound.first(), "bound_all": bound, "key_created": created,
                "store": store.opened, "restored_contacts": restored, "records": a.store.records}),
        || format!("listening: id {} at {}", c.id, bound.join(", ")),
    );
    if let Some(url) = metrics_url {
        emit(a.json, &json!({"event": "metrics", "url": url}), || {
            format!("metrics: {url}")
        });
    }
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
                Err(e) => {
                    emit(
                        json,
                        &json!({"event": "bootstrap_failed", "error": e.to_string()}),
                        || format!("bootstrap failed: {e} (still listening, joining again)"),
                    );
                    // The engine joins again by itself (Config::rejoin_min): say when it did.
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let Ok(s) = d.snapshot().await else { return };
                        if !s.contacts.is_empty() {
                            emit(
                                json,
                                &json!({"event": "joined", "routing_table": s.contacts.len(), "elapsed_ms": ms(t0.elapsed())}),
                                || {
                                    format!(
                                        "joined: {} contacts after {:.1} ms",
                                        s.contacts.len(),
                                        ms(t0.elapsed())
                                    )
                                },
                            );
                            return;
                        }
                    }
                }
            }
        });
    }
    // Ctrl-C (SIGINT) stops cleanly, --for or not: mappings removed, table saved, counters out.
    let stop = async {
        let limit = async {
            match a.for_secs {
                Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = limit => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tokio::pin!(stop);
    let every = (a.stats_every > 0.0).then(|| Duration::from_secs_f64(a.stats_every));
    let mut save = tokio::time::interval(Duration::from_secs(60));
    save.tick().await;
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
            _ = save.tick(), if store.routing.is_some() => {
                if let Some(r) = &store.routing {
                    if let Err(e) = crate::storage::save_routing(&dht, r).await {
                        eprintln!("warning: saving the routing table: {e:#}");
                    }
                }
            }
        }
    }
    if let Some(r) = &store.routing {
        if let Err(e) = crate::storage::save_routing(&dht, r).await {
            eprintln!("warning: saving the routing table: {e:#}");
        }
    }
    crate::nat::stop(nat, a.json).await;
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
    let pubsub = kad_plugin_pubsub::Pubsub::new(dht.clone())
        .stats()
        .await
        .ok()
        .and_then(|s| serde_json::to_value(s).ok());
    let nat = dht
        .command("nat", bytes::Bytes::from_static(b"{\"op\":\"status\"}"))
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    emit(
        json,
        &json!({"event": event, "routing_table": table, "stats": stats, "udp": udp,
                "transports": transports.stats_json(), "pubsub": pubsub, "nat": nat,
                "peak_rss_mb": rss}),
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
    let (dht, _) = client(&a.client, std::slice::from_ref(&target), None).await?;
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
    /// The value: UTF-8 text as given (at most 45000 bytes over UDP, about 750 KB over QUIC or
    /// WebSocket). Its key is RIPEMD-160(SHA-256(value)) unless --key names one. Give VALUE or
    /// --file.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    value: Option<String>,
    /// Store under this key (40 hex digits) instead of the value's content hash: a named
    /// record, which only nodes running with --records any accept.
    #[arg(long, conflicts_with = "file")]
    key: Option<String>,
    /// Store a whole file: split into chunks sized to the transport's message limit, each
    /// stored content-addressed, then an index and a manifest; prints one key for the file.
    /// --timeout then bounds joining only; the transfer runs until done.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Encrypt the file (XChaCha20-Poly1305, a fresh key) and print a capability
    /// kad:KEY#SECRET: whoever holds it can read the file; nobody else can.
    #[arg(long, requires = "file")]
    encrypt: bool,
    /// Encrypt the file and split its key into N Shamir shares of which any T decrypt
    /// (`T/N`, e.g. 3/5); prints the file's key and the shares, never the key itself.
    #[arg(
        long,
        requires = "file",
        conflicts_with = "encrypt",
        value_name = "T/N"
    )]
    shares: Option<String>,
    /// Plaintext bytes per chunk (default: the largest that fits one message of the transport:
    /// 35 KiB over UDP, 756 KiB over QUIC or WebSocket).
    #[arg(long, requires = "file", value_name = "BYTES")]
    chunk_size: Option<u32>,
    /// Chunks stored at once (default: about 2 MiB of chunks in flight, at most 16; more
    /// overloads the storing nodes, each of which receives every chunk).
    #[arg(long, value_name = "N")]
    parallel: Option<usize>,
    /// Lifetime of the records in seconds (storing nodes cap it at their own maximum, 24 h by
    /// default).
    #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
    ttl: u64,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

pub(crate) async fn put(a: PutArgs) -> Result<()> {
    if !(1..=10 * 365 * 86_400).contains(&a.ttl) {
        bail!("--ttl = {} is out of range: 1 second to 10 years", a.ttl);
    }
    let ttl = Duration::from_secs(a.ttl);
    if let Some(file) = &a.file {
        return crate::storage::put_file(
            &a.client,
            file,
            a.encrypt,
            a.shares.as_deref(),
            a.chunk_size,
            a.parallel,
            ttl,
        )
        .await;
    }
    let value = a.value.clone().unwrap_or_default();
    let (key, named) = match &a.key {
        Some(k) => (parse_id("--key", k)?, true),
        None => (kad_core::content_key(value.as_bytes()), false),
    };
    let limit = value_limit(client_max_message(&a.client)?);
    if value.len() > limit {
        bail!(
            "VALUE is {} bytes: the limit is {limit} bytes on this transport (use --file for more)",
            value.len()
        );
    }
    let (dht, join, _) = joined_with(&a.client, None).await?;
    let record = kad_core::Record::new(
        key,
        value.clone().into_bytes(),
        Some(dht.id()),
        kad_core::SystemClock::now_ms(),
        ttl.as_millis() as u64,
    );
    let r = within(&a.client, dht.put_record(record)).await;
    dht.shutdown().await;
    let o = r?;
    // A record on one or two nodes is lost with them: say so (the node the client joined
    // through may not have joined the network itself).
    let warning = (o.stored > 0 && o.stored < FEW_REPLICAS).then(|| {
        format!(
            "stored at {} node(s) only (k = {}): the network reached was that small",
            o.stored,
            native_config().k
        )
    });
    emit(
        a.client.json,
        &json!({"key": key.to_string(), "content_addressed": !named, "stored": o.stored,
                "tried": o.tried, "rpcs": o.stats.rpcs, "elapsed_ms": ms(o.elapsed),
                "join_ms": ms(join), "warning": warning}),
        || {
            format!(
                "stored at {} of {} nodes in {:.1} ms{}\nkey: {key}",
                o.stored,
                o.tried,
                ms(o.elapsed),
                warning
                    .as_deref()
                    .map(|w| format!("\nwarning: {w}"))
                    .unwrap_or_default()
            )
        },
    );
    if o.stored == 0 {
        bail!("no node stored the record");
    }
    Ok(())
}

/// Below this many storing nodes, `kad put` warns.
const FEW_REPLICAS: usize = 3;

/// `kad get` flags.
#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// The key (40 hex digits), or a capability kad:KEY#SECRET printed by `kad put --encrypt`.
    key: String,
    /// Write the file stored under KEY to this path, fetching chunks in parallel from any
    /// holder and verifying each; data lands in OUT.part first, and a rerun after an
    /// interruption keeps the chunks already there. --timeout then bounds joining only.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// A key share printed by `kad put --shares` (repeat it: at least the threshold of them).
    #[arg(long = "share", value_name = "SHARE", requires = "out")]
    shares: Vec<String>,
    /// Chunk fetches in flight at once (with --out).
    #[arg(long, default_value_t = 16, value_name = "N")]
    parallel: usize,
    /// Which values to trust: `content` (only a value whose RIPEMD-160(SHA-256) is the key;
    /// a forged answer is dropped and the next holder asked) or `any` (named records, as
    /// stored with `kad put --key`).
    #[arg(long, default_value = "content", value_parser = ["content", "any"])]
    records: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Exit status of `kad get` when the network holds no value under the key.
pub(crate) const NOT_FOUND: u8 = 1;

pub(crate) async fn get(a: GetArgs) -> Result<Option<u8>> {
    if let Some(out) = &a.out {
        return crate::storage::get_file(&a.client, &a.key, out, &a.shares, a.parallel).await;
    }
    if a.key.starts_with("kad:") {
        bail!("KEY is a capability: a file's; give --out FILE to fetch and decrypt it");
    }
    let key = parse_id("KEY", &a.key)?;
    let validator = crate::storage::validator(&a.records);
    let (dht, join, _) = joined_with(&a.client, Some(validator)).await?;
    let r = tokio::time::timeout(timeout(&a.client)?, dht.get(key)).await;
    let rejected = dht.stats().await.map(|s| s.values_rejected).unwrap_or(0);
    dht.shutdown().await;
    let o = match r {
        Err(_) => bail!("timed out after {} s", a.client.timeout),
        Ok(Err(DhtError::Query(QueryError::NotFound))) => {
            let hint = if rejected > 0 && a.records == "content" {
                format!(
                    " ({rejected} answers were dropped: their values do not hash to the key; a named record needs --records any)"
                )
            } else {
                String::new()
            };
            emit(
                a.client.json,
                &json!({"ok": false, "key": key.to_string(), "error": "not found", "rejected": rejected}),
                || format!("{key}: not found{hint}"),
            );
            return Ok(Some(NOT_FOUND));
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(o)) => o,
    };
    let is_file = kad_plugin_storage::Manifest::from_bytes(&o.record.value).is_ok();
    let text = std::str::from_utf8(&o.record.value).ok();
    emit(
        a.client.json,
        &json!({"key": key.to_string(), "value": text,
                "value_base64": base64::engine::general_purpose::STANDARD.encode(&o.record.value),
                "file_manifest": is_file,
                "publisher": o.record.publisher.map(|p| p.to_string()),
                "expires_at_ms": o.record.expires_at_ms, "hops": o.stats.hops, "rpcs": o.stats.rpcs,
                "elapsed_ms": ms(o.elapsed), "join_ms": ms(join)}),
        || match text {
            Some(t) if is_file => {
                format!("{t}\n(this is a file's manifest: add --out FILE to fetch the file)")
            }
            Some(t) => t.to_owned(),
            None => format!(
                "(binary, base64) {}",
                base64::engine::general_purpose::STANDARD.encode(&o.record.value)
            ),
        },
    );
    Ok(None)
}
