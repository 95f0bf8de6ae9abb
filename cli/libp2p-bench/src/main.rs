//! `libp2p-bench`: the same loopback network measurement as `kad bench`, run on libp2p-kad.
//!
//! Everything happens in one process, on 127.0.0.1, over QUIC v1 only (no TCP):
//! 1. `--nodes` swarms start, each a `kad::Behaviour` (MemoryStore, `Mode::Server`, default
//!    configuration: k = 20, alpha = 3) plus libp2p-identify, which is how a libp2p node learns
//!    the listen addresses of peers that dialled it (kad itself only records addresses it dialled);
//! 2. every node adds node 0's address and bootstraps, in waves of ten, then every node looks up
//!    its own id once, so that the tables reflect the whole network (`formed_s`, mean table size);
//! 3. `--ops` puts, one at a time, each from a random node, with `Quorum::One`: the time from the
//!    `put_record` call to the final `PutRecord(Ok)` progress event;
//! 4. `--ops` gets of those keys from random nodes: the time to the first `FoundRecord` (the query
//!    is then finished, as an application that needs one value would do);
//! 5. the CPU time of the whole process (all nodes, both ends of every request) per operation;
//! 6. the resident memory of the process before any swarm, once formed, and after the operations;
//! 7. `--joins` fresh swarms (new identities, `Mode::Client` like the read-only `kad get`, so
//!    they leave no dead entries behind) that add node 0, bootstrap up to the first step (the
//!    lookup of their own id) and get one stored key: the time from creating the swarm to
//!    `FoundRecord`.
//!
//! Every swarm runs in its own tokio task, polling the swarm and a command channel; commands are
//! answered over oneshot channels and timed inside the swarm's task.
//!
//! This package is detached from the root workspace (it has its own `[workspace]` table and the
//! root lists it under `exclude`), so ordinary builds and CI never compile libp2p.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser;
use libp2p::futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::kad::store::MemoryStore;
use libp2p::kad::{
    self, BootstrapOk, GetRecordOk, Mode, QueryId, QueryResult, Quorum, Record, RecordKey,
};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, identify};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The libp2p-kad version that Cargo.lock resolved; keep in sync with Cargo.lock.
const LIBP2P_KAD_VERSION: &str = "0.49.0";
/// The libp2p facade version that Cargo.lock resolved; keep in sync with Cargo.lock.
const LIBP2P_VERSION: &str = "0.57.1";
/// Nodes that bootstrap at the same time while the network forms.
const JOIN_WAVE: usize = 10;
/// How long the formed network is left alone to measure its background CPU.
const IDLE_PROBE: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(
    name = "libp2p-bench",
    about = "Measure a libp2p-kad network over QUIC on 127.0.0.1 (put/get latency, CPU per \
             operation, memory, join plus get), for comparison with `kad bench`"
)]
struct Args {
    /// Number of libp2p-kad swarms in the network (all in this process).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Number of puts, and then of gets of the same keys, each from a random node.
    #[arg(long, default_value_t = 200)]
    ops: usize,
    /// Number of fresh swarms that join through node 0 and get one stored record.
    #[arg(long, default_value_t = 10)]
    joins: usize,
    /// Print exactly one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Tokio worker threads driving all the swarms.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Kademlia query timeout, in seconds.
    #[arg(long, default_value_t = 10)]
    query_timeout_s: u64,
    /// Idle connection timeout of every swarm, in seconds (connections should outlive the run).
    #[arg(long, default_value_t = 60)]
    idle_timeout_s: u64,
    /// Seed of the generator that picks nodes and keys (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Per-swarm settings shared by every node of a run.
#[derive(Clone, Copy, Debug)]
struct Settings {
    query_timeout: Duration,
    idle_timeout: Duration,
}

#[derive(NetworkBehaviour)]
struct Node {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

/// What a finished command reports: its duration, measured inside the swarm's task, and for a
/// get the value found, if any.
#[derive(Debug)]
struct Outcome {
    elapsed: Duration,
    value: Option<Vec<u8>>,
}

type Reply = oneshot::Sender<Result<Outcome, String>>;

enum Cmd {
    /// Add the seed's address and bootstrap; answer after the last step if `full`, otherwise
    /// after the first one (the lookup of the node's own id).
    Bootstrap {
        seed: (PeerId, Multiaddr),
        full: bool,
        reply: Reply,
    },
    /// Look up the node's own id.
    Closest {
        reply: Reply,
    },
    Put {
        record: Record,
        reply: Reply,
    },
    Get {
        key: RecordKey,
        reply: Reply,
    },
    /// Entries in the routing table, and peers with an open connection.
    Sizes {
        reply: oneshot::Sender<(usize, usize)>,
    },
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    BootstrapFirst,
    BootstrapFull,
    Closest,
    Put,
    Get,
}

struct Pending {
    kind: Kind,
    started: Instant,
    reply: Reply,
}

/// A running swarm: its identity, listen address and command channel.
struct Handle {
    peer: PeerId,
    addr: Multiaddr,
    tx: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<()>,
}

impl Handle {
    async fn ask(&self, make: impl FnOnce(Reply) -> Cmd) -> Result<Outcome> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| anyhow!("the swarm task of {} has stopped", self.peer))?;
        rx.await
            .map_err(|_| anyhow!("the swarm task of {} dropped a command", self.peer))?
            .map_err(|e| anyhow!(e))
    }

    async fn sizes(&self) -> Result<(usize, usize)> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Sizes { reply })
            .map_err(|_| anyhow!("the swarm task of {} has stopped", self.peer))?;
        Ok(rx.await?)
    }

    /// Stop the swarm's task and wait until the swarm is dropped.
    async fn shutdown(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// Build a swarm with a new identity, listen on a fresh UDP port of 127.0.0.1 and start its task.
/// A client (`Mode::Client`) does not offer the kad protocol, so no one adds it to a routing table.
async fn start_node(s: Settings, mode: Mode) -> Result<Handle> {
    let keypair = Keypair::generate_ed25519();
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut cfg = kad::Config::new(kad::PROTOCOL_NAME);
            cfg.set_query_timeout(s.query_timeout);
            let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), cfg);
            // Without a confirmed external address kad would pick client mode on its own.
            kad.set_mode(Some(mode));
            let identify = identify::Behaviour::new(identify::Config::new(
                "/kad-libp2p-bench/0.1.0".to_string(),
                key.public(),
            ));
            Node { kad, identify }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(s.idle_timeout))
        .build();
    let peer = *swarm.local_peer_id();
    swarm.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse()?)?;
    let addr = loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => break address,
            SwarmEvent::ListenerError { error, .. } => bail!("listener error: {error}"),
            SwarmEvent::ListenerClosed { reason, .. } => bail!("listener closed: {reason:?}"),
            _ => {}
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(drive(swarm, rx));
    Ok(Handle {
        peer,
        addr,
        tx,
        task,
    })
}

/// The task of one swarm: poll it and the command channel until the channel closes.
async fn drive(mut swarm: Swarm<Node>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut pending: HashMap<QueryId, Pending> = HashMap::new();
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => command(&mut swarm, &mut pending, cmd),
                None => break,
            },
            ev = swarm.select_next_some() => event(&mut swarm, &mut pending, ev),
        }
    }
}

fn command(swarm: &mut Swarm<Node>, pending: &mut HashMap<QueryId, Pending>, cmd: Cmd) {
    let started = Instant::now();
    let own = *swarm.local_peer_id();
    let kad = &mut swarm.behaviour_mut().kad;
    let (id, kind, reply) = match cmd {
        Cmd::Bootstrap { seed, full, reply } => {
            kad.add_address(&seed.0, seed.1);
            match kad.bootstrap() {
                Ok(id) => {
                    let kind = if full {
                        Kind::BootstrapFull
                    } else {
                        Kind::BootstrapFirst
                    };
                    (id, kind, reply)
                }
                Err(e) => {
                    let _ = reply.send(Err(format!("bootstrap: {e}")));
                    return;
                }
            }
        }
        Cmd::Closest { reply } => (kad.get_closest_peers(own), Kind::Closest, reply),
        Cmd::Put { record, reply } => match kad.put_record(record, Quorum::One) {
            Ok(id) => (id, Kind::Put, reply),
            Err(e) => {
                let _ = reply.send(Err(format!("put_record: {e}")));
                return;
            }
        },
        Cmd::Get { key, reply } => (kad.get_record(key), Kind::Get, reply),
        Cmd::Sizes { reply } => {
            let connected = swarm.network_info().num_peers();
            let table = swarm
                .behaviour_mut()
                .kad
                .kbuckets()
                .map(|b| b.num_entries())
                .sum();
            let _ = reply.send((table, connected));
            return;
        }
    };
    pending.insert(
        id,
        Pending {
            kind,
            started,
            reply,
        },
    );
}

fn event(
    swarm: &mut Swarm<Node>,
    pending: &mut HashMap<QueryId, Pending>,
    ev: SwarmEvent<NodeEvent>,
) {
    match ev {
        SwarmEvent::Behaviour(NodeEvent::Kad(kad::Event::OutboundQueryProgressed {
            id,
            result,
            step,
            ..
        })) => progress(swarm, pending, id, result, step.last),
        // The usual libp2p wiring: peers that speak kad become routable at the addresses they
        // listen on.
        SwarmEvent::Behaviour(NodeEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) if info.protocols.contains(&kad::PROTOCOL_NAME) => {
            for a in info.listen_addrs {
                swarm.behaviour_mut().kad.add_address(&peer_id, a);
            }
        }
        _ => {}
    }
}

fn progress(
    swarm: &mut Swarm<Node>,
    pending: &mut HashMap<QueryId, Pending>,
    id: QueryId,
    result: QueryResult,
    last: bool,
) {
    let Some(p) = pending.get(&id) else {
        // Automatic bootstraps, or a query we stopped waiting for.
        return;
    };
    let answer: Option<Result<Option<Vec<u8>>, String>> = match (p.kind, result) {
        (Kind::BootstrapFirst, QueryResult::Bootstrap(r)) => Some(bootstrap_answer(r)),
        (Kind::BootstrapFull, QueryResult::Bootstrap(r)) => match r {
            Ok(_) if !last => None,
            r => Some(bootstrap_answer(r)),
        },
        (Kind::Closest, QueryResult::GetClosestPeers(r)) if last => Some(
            r.map(|_| None)
                .map_err(|e| format!("get_closest_peers: {e}")),
        ),
        (Kind::Put, QueryResult::PutRecord(r)) if last => {
            Some(r.map(|_| None).map_err(|e| format!("put_record: {e}")))
        }
        (Kind::Get, QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(found)))) => {
            // One value is all we need: stop the lookup, as an application would.
            if let Some(mut q) = swarm.behaviour_mut().kad.query_mut(&id) {
                q.finish();
            }
            Some(Ok(Some(found.record.value)))
        }
        (
            Kind::Get,
            QueryResult::GetRecord(Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. })),
        ) => Some(Err("get_record: finished without a record".to_string())),
        (Kind::Get, QueryResult::GetRecord(Err(e))) => Some(Err(format!("get_record: {e}"))),
        _ if last => Some(Err("query ended without an answer".to_string())),
        _ => None,
    };
    if let Some(a) = answer
        && let Some(p) = pending.remove(&id)
    {
        let elapsed = p.started.elapsed();
        let _ = p.reply.send(a.map(|value| Outcome { elapsed, value }));
    }
}

fn bootstrap_answer(
    r: Result<BootstrapOk, kad::BootstrapError>,
) -> Result<Option<Vec<u8>>, String> {
    r.map(|_| None).map_err(|e| format!("bootstrap: {e}"))
}

/// A small deterministic generator (splitmix64): enough to pick nodes and make keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for c in b.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        b
    }
}

/// Ticks per second of the CPU times in /proc (`getconf CLK_TCK`, else the usual 100).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// CPU time (user + system) of this process, in seconds.
fn cpu_s(ticks: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // After the command name in parentheses: state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / ticks
}

/// Resident memory of this process, in MB (VmRSS).
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| round(kb / 1024.0, 1))
}

/// The `p` quantile (nearest rank) of `v`, rounded to 3 decimals.
fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    round(v[i], 3)
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The node's address with its peer id, as one would hand it to someone else.
fn seed_of(h: &Handle) -> (PeerId, Multiaddr) {
    (h.peer, h.addr.clone())
}

async fn run(a: &Args) -> Result<serde_json::Value> {
    let log = |m: String| {
        if !a.quiet {
            eprintln!("libp2p-bench: {m}");
        }
    };
    let s = Settings {
        query_timeout: Duration::from_secs(a.query_timeout_s),
        idle_timeout: Duration::from_secs(a.idle_timeout_s),
    };
    let ticks = clock_ticks();
    let seed = a.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng(seed);
    let rss_baseline = rss_mb();

    // 1. Start the swarms.
    let t_form = Instant::now();
    let mut nodes = Vec::with_capacity(a.nodes);
    for _ in 0..a.nodes {
        nodes.push(start_node(s, Mode::Server).await?);
    }
    log(format!(
        "{} swarms listening after {:.2} s",
        a.nodes,
        t_form.elapsed().as_secs_f64()
    ));

    // 2. Join through node 0, in waves, then one lookup of the own id per node.
    let seed0 = seed_of(&nodes[0]);
    let mut join_failed = 0usize;
    for wave in nodes[1..].chunks(JOIN_WAVE) {
        let joins = wave.iter().map(|n| {
            n.ask(|reply| Cmd::Bootstrap {
                seed: seed0.clone(),
                full: true,
                reply,
            })
        });
        for r in libp2p::futures::future::join_all(joins).await {
            if let Err(e) = r {
                join_failed += 1;
                log(format!("join failed: {e}"));
            }
        }
    }
    let mut refresh_failed = 0usize;
    for n in &nodes {
        if let Err(e) = n.ask(|reply| Cmd::Closest { reply }).await {
            refresh_failed += 1;
            log(format!("refresh failed: {e}"));
        }
    }
    let formed_s = t_form.elapsed().as_secs_f64();
    let (mut table_total, mut connected_total) = (0usize, 0usize);
    for n in &nodes {
        let (t, c) = n.sizes().await?;
        table_total += t;
        connected_total += c;
    }
    let table_mean = table_total as f64 / a.nodes as f64;
    let connected_mean = connected_total as f64 / a.nodes as f64;
    let rss_formed = rss_mb();
    // What the formed network costs when nobody asks anything (QUIC keep-alives, timers).
    let cpu0 = cpu_s(ticks);
    tokio::time::sleep(IDLE_PROBE).await;
    let idle_cpu_pct = (cpu_s(ticks) - cpu0) / IDLE_PROBE.as_secs_f64() * 100.0;
    log(format!(
        "formed in {formed_s:.2} s, mean routing table {table_mean:.1}, mean connected peers \
         {connected_mean:.1}, RSS {rss_formed} MB, idle CPU {idle_cpu_pct:.0} % of a core"
    ));

    // 3. Puts, one at a time, from random nodes.
    let run_id = rng.next();
    let values: Vec<Vec<u8>> = (0..a.ops)
        .map(|i| format!("value {i} of run {run_id:016x}").into_bytes())
        .collect();
    let keys: Vec<RecordKey> = (0..a.ops).map(|_| RecordKey::new(&rng.bytes32())).collect();
    let (mut put_ms, mut put_failed) = (Vec::with_capacity(a.ops), 0usize);
    let cpu0 = cpu_s(ticks);
    let t_put = Instant::now();
    for (k, v) in keys.iter().zip(&values) {
        let n = &nodes[rng.below(a.nodes)];
        let record = Record::new(k.clone(), v.clone());
        match n.ask(|reply| Cmd::Put { record, reply }).await {
            Ok(o) => put_ms.push(ms(o.elapsed)),
            Err(e) => {
                put_failed += 1;
                log(format!("put failed: {e}"));
            }
        }
    }
    let put_cpu = (cpu_s(ticks) - cpu0) / a.ops as f64;
    let put_wall_s = t_put.elapsed().as_secs_f64();

    // 4. Gets of the same keys, one at a time, from random nodes.
    let (mut get_ms, mut found) = (Vec::with_capacity(a.ops), 0usize);
    let cpu0 = cpu_s(ticks);
    let t_get = Instant::now();
    for (k, v) in keys.iter().zip(&values) {
        let n = &nodes[rng.below(a.nodes)];
        let t = Instant::now();
        match n
            .ask(|reply| Cmd::Get {
                key: k.clone(),
                reply,
            })
            .await
        {
            Ok(o) => {
                get_ms.push(ms(o.elapsed));
                if o.value.as_deref() == Some(v.as_slice()) {
                    found += 1;
                }
            }
            Err(e) => {
                get_ms.push(ms(t.elapsed()));
                log(format!("get failed: {e}"));
            }
        }
    }
    let get_cpu = (cpu_s(ticks) - cpu0) / a.ops as f64;
    let get_wall_s = t_get.elapsed().as_secs_f64();
    let rss_after = rss_mb();
    log(format!(
        "puts {:.2} s ({put_failed} failed), gets {:.2} s ({found} found), RSS {rss_after} MB",
        put_wall_s, get_wall_s
    ));

    // 7. Fresh swarms: new identity, join through node 0, get one stored record, go away.
    let (mut join_get_ms, mut joins_found) = (Vec::with_capacity(a.joins), 0usize);
    for j in 0..a.joins {
        let i = j % keys.len();
        let t = Instant::now();
        let fresh = start_node(s, Mode::Client).await?;
        let got = async {
            fresh
                .ask(|reply| Cmd::Bootstrap {
                    seed: seed0.clone(),
                    full: false,
                    reply,
                })
                .await?;
            fresh
                .ask(|reply| Cmd::Get {
                    key: keys[i].clone(),
                    reply,
                })
                .await
        }
        .await;
        join_get_ms.push(ms(t.elapsed()));
        match got {
            Ok(o) if o.value.as_deref() == Some(values[i].as_slice()) => joins_found += 1,
            Ok(_) => log("join plus get: wrong value".to_string()),
            Err(e) => log(format!("join plus get failed: {e}")),
        }
        fresh.shutdown().await;
    }

    let report = json!({
        "impl": "libp2p-kad",
        "libp2p_kad_version": LIBP2P_KAD_VERSION,
        "libp2p_version": LIBP2P_VERSION,
        "transport": "quic",
        "worker_threads": a.threads,
        "nodes": a.nodes,
        "ops": a.ops,
        "formed_s": round(formed_s, 2),
        "join_failed": join_failed,
        "refresh_failed": refresh_failed,
        "routing_table_mean": round(table_mean, 1),
        "connected_peers_mean": round(connected_mean, 1),
        "idle_cpu_pct": round(idle_cpu_pct, 1),
        "put_ms_p50": pct(&mut put_ms, 0.5),
        "put_ms_p90": pct(&mut put_ms, 0.9),
        "put_failed": put_failed,
        "put_wall_s": round(put_wall_s, 2),
        "get_ms_p50": pct(&mut get_ms, 0.5),
        "get_ms_p90": pct(&mut get_ms, 0.9),
        "gets_found": found,
        "get_wall_s": round(get_wall_s, 2),
        "put_cpu_ms_per_op": round(put_cpu * 1e3, 2),
        "get_cpu_ms_per_op": round(get_cpu * 1e3, 2),
        "rss_baseline_mb": rss_baseline,
        "rss_formed_mb": rss_formed,
        "rss_mb": rss_after,
        "rss_mb_per_node": round(rss_after / a.nodes as f64, 2),
        "joins": a.joins,
        "join_plus_get_ms_p50": pct(&mut join_get_ms, 0.5),
        "joins_found": joins_found,
        "quorum": "one",
        "seed": seed,
    });
    for n in nodes {
        n.shutdown().await;
    }
    Ok(report)
}

fn table(r: &serde_json::Value) -> String {
    let rows: [(&str, &str, &str); 21] = [
        ("implementation", "impl", ""),
        ("libp2p-kad", "libp2p_kad_version", ""),
        ("nodes", "nodes", ""),
        ("network formed", "formed_s", "s"),
        ("routing table (mean)", "routing_table_mean", "peers"),
        ("connected peers (mean)", "connected_peers_mean", "peers"),
        ("idle CPU, formed", "idle_cpu_pct", "% of a core"),
        ("put p50 (Quorum::One)", "put_ms_p50", "ms"),
        ("put p90", "put_ms_p90", "ms"),
        ("puts failed", "put_failed", ""),
        ("get p50 (first record)", "get_ms_p50", "ms"),
        ("get p90", "get_ms_p90", "ms"),
        ("gets found", "gets_found", ""),
        ("CPU per put", "put_cpu_ms_per_op", "ms"),
        ("CPU per get", "get_cpu_ms_per_op", "ms"),
        ("RSS before any swarm", "rss_baseline_mb", "MB"),
        ("RSS once formed", "rss_formed_mb", "MB"),
        ("RSS after the ops", "rss_mb", "MB"),
        ("RSS per node", "rss_mb_per_node", "MB"),
        ("join plus get p50", "join_plus_get_ms_p50", "ms"),
        ("joins found", "joins_found", ""),
    ];
    let mut out = String::new();
    for (label, key, unit) in rows {
        let v = match &r[key] {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let _ = writeln!(out, "{label:<24} {v:>10} {unit}");
    }
    let _ = write!(
        out,
        "({} ops, {} joins, transport {}, seed {})",
        r["ops"], r["joins"], r["transport"], r["seed"]
    );
    out
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if a.ops < 1 {
        bail!("--ops must be at least 1");
    }
    if a.threads < 1 {
        bail!("--threads must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let report = rt.block_on(run(&a))?;
    rt.shutdown_timeout(Duration::from_secs(2));
    if a.json {
        println!("{report}");
    } else {
        println!("{}", table(&report));
    }
    Ok(())
}
