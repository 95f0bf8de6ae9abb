//! `kad node`: a node of the native network over UDP, QUIC and WebSocket.
//!
//! This is the reference for running a native node: a k256 identity, the signed JSON-RPC codec
//! and one or more transports, spawned on the tokio runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use kad_core::{Dht, PeerAddr};
use serde_json::json;

use crate::net::{contact_json, emit, flag_error, listening, ms, node_builder};
use crate::transports::{TlsArgs, parse_addrs, parse_preference};

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
    nat: crate::cmd::nat::NatArgs,
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
    let upnp = a.nat.upnp_config()?;
    let mut b = listening(node_builder(), &listen)
        .id_work(a.id_work)
        .advertise(&advertise)
        .configure(|c| {
            c.transport_preference = prefer;
            c.per_ip_rate = a.per_ip_rate;
            c.per_ip_burst = a.per_ip_burst;
            c.amplification_guard = !a.no_amplification_guard;
            c.subnet_limit = a.subnet_limit;
            c.disjoint_paths = a.disjoint_paths;
        })
        // Sends the probes other nodes' checks ask for and, with --upnp, keeps the mappings of
        // the ports the transports listen on (not the --advertise ones).
        .nat(a.nat.plugin_config(), upnp)
        // This command says when it joined through the saved contacts.
        .rejoin_saved(false);
    if let Some(p) = &a.key_file {
        b = b.key_file(p);
    }
    b = a.tls.apply(b)?;
    b = a.store.apply(b)?;
    let mut node = b.build().await.map_err(flag_error)?;
    let nat = node.take_nat();
    if let Some(nat) = &nat {
        crate::cmd::nat::print_changes(nat, a.json);
    }
    let dht = node.dht().clone();
    let mut metrics_url = None;
    if let Some(bind) = a.metrics {
        let sources = crate::server::metrics::Sources {
            dht: dht.clone(),
            nat: nat.as_ref().map(kad_plugin_nat::Nat::watch),
            udp: node.transports().udp().first().cloned(),
        };
        let addr = crate::server::metrics::serve(bind, sources).await?;
        metrics_url = Some(format!("http://{addr}/metrics"));
    }
    let c = dht.contact().clone();
    let bound: Vec<String> = node
        .transports()
        .bound()
        .iter()
        .map(ToString::to_string)
        .collect();
    // A warm restart: the contacts saved last time are back in the table, and the node joins
    // through them when no --bootstrap is given.
    let restored = node.restored_contacts();
    let seeds = if seeds.is_empty() {
        node.warm_seeds().to_vec()
    } else {
        seeds
    };
    emit(
        a.json,
        &json!({"event": "listening", "id": c.id.to_string(), "addrs": contact_json(&c)["addrs"],
                "bound": bound.first(), "bound_all": bound, "key_created": node.key_created(),
                "store": crate::storage::opened_json(&node), "restored_contacts": restored, "records": a.store.records}),
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
    loop {
        let tick = async {
            match every {
                Some(e) => tokio::time::sleep(e).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => break,
            () = tick => print_stats(&dht, node.transports(), a.json, "stats").await,
        }
    }
    // The routing table is saved every minute by the node, and here once more.
    if let Err(e) = node.save_routing().await {
        eprintln!("warning: saving the routing table: {e}");
    }
    if let Some(nat) = nat {
        crate::cmd::nat::stop(nat, a.json).await;
    }
    print_stats(&dht, node.transports(), a.json, "stopped").await;
    node.shutdown().await;
    Ok(())
}

async fn print_stats(dht: &Dht, transports: &kad::Transports, json: bool, event: &str) {
    let Ok(stats) = dht.stats().await else { return };
    let table = dht.snapshot().await.map(|s| s.contacts.len()).unwrap_or(0);
    let rss = crate::peak_rss_mb();
    let udp = transports.udp().first().map(|u| {
        let u = u.stats();
        json!({"sent": u.sent, "received": u.received, "queue_full": u.queue_full,
               "send_errors": u.send_errors, "recv_errors": u.recv_errors, "oversize": u.oversize})
    });
    let pubsub = match kad_plugin_pubsub::Pubsub::attach(dht.clone()).await {
        Ok(p) => p.stats().await.ok(),
        Err(_) => None,
    }
    .and_then(|s| serde_json::to_value(s).ok());
    let nat = kad_plugin_nat::status(dht)
        .await
        .ok()
        .and_then(|s| serde_json::to_value(s).ok());
    emit(
        json,
        &json!({"event": event, "routing_table": table, "stats": stats, "udp": udp,
                "transports": crate::transports::stats_json(transports), "pubsub": pubsub, "nat": nat,
                "peak_rss_mb": rss}),
        || {
            format!(
                "{event}: {table} contacts, {} in / {} out, dropped: {} malformed, {} bad signature, {} bad MAC, {} id mismatch, {} stale, {} replay, {} wrong recipient, {} unknown txn, {} wrong peer; peak RSS {rss} MB",
                stats.messages_in,
                stats.messages_out,
                stats.dropped_malformed,
                stats.dropped_bad_signature,
                stats.dropped_bad_mac,
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
