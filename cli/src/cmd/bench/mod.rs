//! `kad bench native`: what signing costs, and how a signed network performs on loopback UDP.
//!
//! Everything is measured in one run, side by side, and printed as one JSON object (or a table):
//! 1. the raw k256 sign and verify rates of this machine (one thread);
//! 2. the rate at which a `kad node` process answers signed PINGs sent by this process, with
//!    the node's CPU time per PING, against the sign+verify bound from (1);
//! 3. a 100-node network on 127.0.0.1 (every message signed): put and get latency, CPU per
//!    operation, and fresh `kad get` processes joining and getting;
//! 4. a flood of garbage, forged and replayed datagrams from thousands of source addresses in
//!    127.0.0.0/8 at a `kad node` process: its memory before and after, and its drop counters.

pub(crate) mod all;
pub(crate) mod loss;
pub(crate) mod mainline;
pub(crate) mod pubsub;
pub(crate) mod storage;
pub(crate) mod transports;
pub(crate) mod wan;

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use k256::ecdsa::signature::{Signer as _, Verifier as _};
use kad_core::{
    Body, Codec, CodecCx, Contact, Message, NativeCodec, NativeIdentity, NodeId, PeerAddr, Request,
    TxnId,
};
use serde_json::json;

use crate::net::{emit, fresh_identity, ms};

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Signing cost, PING rate of a node process, a 100-node signed UDP network, and a flood.
    ///
    /// Prints one JSON object with --json. Takes about a minute with the defaults.
    Native(NativeArgs),
    /// Mainline: latency in a 50-node network of ours and of the `mainline` crate (long-running
    /// node and fresh processes), and queries served per second against the crate and a UDP echo.
    ///
    /// Prints one JSON object with --json. Takes a few minutes with the defaults.
    Mainline(mainline::MainlineBenchArgs),
    /// (Helper of `bench mainline`) a network of nodes in one process.
    #[command(hide = true)]
    MainlineNet(mainline::NetArgs),
    /// (Helper of `bench mainline`) one operation with the `mainline` crate.
    #[command(hide = true)]
    MainlineCrateClient(mainline::CrateClientArgs),
    /// (Helper of `bench mainline`) a UDP echo responder.
    #[command(hide = true)]
    UdpEcho,
    /// Every transport on loopback, side by side: round-trip latency, round trips per second,
    /// MB/s of 64 KiB messages, connection setup time, memory per idle connection, and one
    /// server holding 5,000 WebSocket clients.
    ///
    /// Prints one JSON object with --json. Takes a couple of minutes with the defaults.
    Transports(transports::TransportsArgs),
    /// Storage: 1 KiB records through the redb store beside the in-memory one, then a file put
    /// and got back through 20-node loopback networks (QUIC: 100 MB plain and encrypted; UDP:
    /// 20 MB in datagram-sized chunks and 2 MB in 1 KiB chunks), every chunk verified.
    ///
    /// Prints one JSON object with --json. Takes a few minutes with the defaults.
    Storage(storage::StorageArgs),
    /// Pub/sub on loopback: rendezvous nodes, one sensor and --subscribers subscriber nodes
    /// over real UDP sockets: every reading delivered?, end-to-end latency, publish time.
    ///
    /// Prints one JSON object with --json. Takes under a minute with the defaults.
    Pubsub(pubsub::BenchPubsubArgs),
    /// (Helper of `bench transports`) an echo server on one transport.
    #[command(hide = true)]
    TransportServer(transports::ServerArgs),
    /// Every benchmark above in one run, each figure beside its alternative as a ratio with
    /// its target and the command that reproduces it: raw crypto and loopback UDP, 100-node
    /// networks of ours (UDP, QUIC) and of libp2p-kad over QUIC (--libp2p), the mainline
    /// crate, transports, storage, pub/sub, and simulated lookups at 10 to 100,000 nodes.
    ///
    /// Prints one JSON object with --json; --plot FILE.svg draws the latency distributions
    /// and hops against network size. About half an hour with the defaults; --quick takes a
    /// few minutes.
    All(all::AllArgs),
    /// Lossy links with real processes: `kad node` processes in two network namespaces (UDP and
    /// QUIC), each namespace dropping that share of the datagrams it receives (nftables), puts
    /// through one namespace and gets through the other, at each rate of --rates: nodes
    /// joined, put `stored`, gets found and their latency, and the simulator's lookup success
    /// at the same loss and size. Needs root (it creates and removes the namespaces).
    ///
    /// Prints one JSON object with --json. About a minute per rate with the defaults.
    Loss(loss::LossBenchArgs),
    /// Two sites a real round trip apart: `kad node` processes in two network namespaces
    /// joined through a router namespace whose userspace link emulator delays (--rtt-ms,
    /// --jitter-ms) and drops (--loss) the frames between them; puts at one site and gets at the
    /// other, through fresh `kad put` / `kad get` processes, then through a long-running node at
    /// each site: latency in milliseconds and in round trips beside the targets (put p50 <= 3,
    /// get p50 <= 2), the nodes' counters and the link's frame counts. Needs root, iproute2 and
    /// ethtool (it creates and removes the namespaces).
    ///
    /// Prints one JSON object with --json. One to two minutes with the defaults.
    Wan(wan::WanBenchArgs),
}

impl BenchCommand {
    pub(crate) fn json(&self) -> bool {
        match self {
            Self::Native(a) => a.json,
            Self::Mainline(a) => a.json(),
            Self::Transports(a) => a.json,
            Self::Storage(a) => a.json,
            Self::Pubsub(a) => a.json,
            Self::All(a) => a.json,
            Self::Loss(a) => a.json,
            Self::Wan(a) => a.json,
            Self::MainlineNet(_)
            | Self::MainlineCrateClient(_)
            | Self::UdpEcho
            | Self::TransportServer(_) => true,
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct NativeArgs {
    /// Nodes in the loopback network.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Puts (and as many gets) timed in the network, one at a time.
    #[arg(long, default_value_t = 200)]
    ops: usize,
    /// Seconds spent on each rate measurement (raw crypto, PING rate).
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Fresh `kad get` processes that join the network and get one record.
    #[arg(long, default_value_t = 10)]
    joins: usize,
    /// Source addresses in 127.0.0.0/8 used by the flood (0 skips the flood).
    #[arg(long, default_value_t = 20_000)]
    flood_sources: u32,
    /// The network's transport: udp or quic (every node listens on that one only).
    #[arg(long, default_value = "udp", value_name = "KIND")]
    transport: String,
    /// Stores a put waits for: 0 every one of the k closest, 1 the first (libp2p-kad's
    /// Quorum::One), and so on.
    #[arg(long, default_value_t = 0, value_name = "N")]
    quorum: usize,
    /// Only the network part (3): no raw crypto, PING rate or flood. Adds every latency sample.
    #[arg(long)]
    network_only: bool,
    /// Print exactly one JSON object.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Native(a) => native(a),
        BenchCommand::Mainline(a) => mainline::run(a),
        BenchCommand::Storage(a) => storage::run(a),
        BenchCommand::Pubsub(a) => pubsub::run(a),
        BenchCommand::MainlineNet(a) => mainline::net(a),
        BenchCommand::MainlineCrateClient(a) => mainline::crate_client(a),
        BenchCommand::UdpEcho => mainline::echo(),
        BenchCommand::Transports(a) => transports::run(a),
        BenchCommand::All(a) => all::run(a),
        BenchCommand::Loss(a) => loss::run(a),
        BenchCommand::Wan(a) => wan::run(a),
        BenchCommand::TransportServer(a) => transports::server(a),
    }
}

pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    (v[i] * 1000.0).round() / 1000.0
}

pub(crate) fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// CPU time (user + system) of a process in seconds, from /proc (Linux).
pub(crate) fn cpu_s(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime), counted from 1 with pid and comm: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mb(pid: &str) -> f64 {
    crate::proc_status_mb(pid, "VmRSS:")
}

fn native(a: NativeArgs) -> Result<()> {
    if !(2..=2000).contains(&a.nodes) {
        bail!("--nodes = {} is out of range: 2 to 2000", a.nodes);
    }
    if !(1..=100_000).contains(&a.ops) {
        bail!("--ops = {} is out of range: 1 to 100000", a.ops);
    }
    if !(a.secs > 0.0 && a.secs <= 600.0) {
        bail!("--secs = {} is out of range: 0 to 600", a.secs);
    }
    if a.joins > 1000 {
        bail!("--joins = {} is out of range: 0 to 1000", a.joins);
    }
    if a.flood_sources > 1_000_000 {
        bail!(
            "--flood-sources = {} is out of range: 0 to 1000000",
            a.flood_sources
        );
    }
    if !matches!(a.transport.as_str(), "udp" | "quic") {
        bail!("--transport = {:?}: it must be udp or quic", a.transport);
    }
    if a.quorum > 20 {
        bail!("--quorum = {} is out of range: 0 to 20 (k)", a.quorum);
    }
    let t0 = Instant::now();
    let params = NetParams {
        nodes: a.nodes,
        ops: a.ops,
        joins: a.joins,
        transport: a.transport.clone(),
        quorum: a.quorum,
        samples: a.network_only,
    };
    if a.network_only {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let network = rt.block_on(network(params))?;
        let report = json!({"bench": "native", "network": network,
                            "wall_s": round(t0.elapsed().as_secs_f64(), 1)});
        emit(a.json, &report, || {
            serde_json::to_string_pretty(&report).unwrap_or_default()
        });
        return Ok(());
    }
    let crypto = raw_crypto(a.secs);
    let pair_rate = crypto["sign_verify_pairs_per_s"].as_f64().unwrap_or(0.0);
    let ping = ping_rate(a.secs, pair_rate)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let network = rt.block_on(network(params))?;
    drop(rt);
    let flood = if a.flood_sources > 0 {
        flood(a.flood_sources)?
    } else {
        json!(null)
    };
    let report = json!({
        "bench": "native",
        "crypto": crypto,
        "ping": ping,
        "network": network,
        "flood": flood,
        "wall_s": round(t0.elapsed().as_secs_f64(), 1),
    });
    emit(a.json, &report, || {
        serde_json::to_string_pretty(&report).unwrap_or_default()
    });
    Ok(())
}

/// Raw k256 rates on one thread: sign, verify, and sign+verify pairs (what a node does per PING).
pub(crate) fn raw_crypto(secs: f64) -> serde_json::Value {
    let key = k256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).expect("valid key");
    let vk = *key.verifying_key();
    // A message the size of a signed PING.
    let mut msg = vec![b'x'; 330];
    let budget = Duration::from_secs_f64(secs / 2.0);
    let (mut n_sign, t) = (0u64, Instant::now());
    let mut sigs = Vec::new();
    while t.elapsed() < budget {
        msg[..8].copy_from_slice(&n_sign.to_be_bytes());
        let s: k256::ecdsa::Signature = key.sign(&msg);
        sigs.push((msg.clone(), s));
        n_sign += 1;
    }
    let sign_s = t.elapsed().as_secs_f64() / n_sign as f64;
    let t = Instant::now();
    let mut n_verify = 0u64;
    while t.elapsed() < budget {
        let (m, s) = &sigs[n_verify as usize % sigs.len()];
        let ok = vk.verify(m, s).is_ok();
        assert!(ok, "k256 verified its own signature");
        n_verify += 1;
    }
    let verify_s = t.elapsed().as_secs_f64() / n_verify as f64;
    // Protocol version 2: the pairwise key (ECDH + HKDF, once per peer) and a MAC per message.
    let a = NativeIdentity::from_secret(&[7u8; 32]).expect("valid key");
    let peer = NativeIdentity::from_secret(&[8u8; 32]).expect("valid key");
    let (mut n_pair, t) = (0u64, Instant::now());
    let mut pair = [0u8; 32];
    while t.elapsed() < budget / 4 {
        pair = kad_core::native::pair_key(&a, &peer.public_key_bytes()).expect("valid key");
        n_pair += 1;
    }
    let pair_s = t.elapsed().as_secs_f64() / n_pair as f64;
    let (mut n_mac, t) = (0u64, Instant::now());
    while t.elapsed() < budget / 4 {
        msg[..8].copy_from_slice(&n_mac.to_be_bytes());
        std::hint::black_box(kad_core::native::mac_tag(&pair, &a.id(), &peer.id(), &msg));
        n_mac += 1;
    }
    let mac_s = t.elapsed().as_secs_f64() / n_mac as f64;
    json!({
        "sign_us": round(sign_s * 1e6, 1),
        "verify_us": round(verify_s * 1e6, 1),
        "pair_key_us": round(pair_s * 1e6, 1),
        "mac_us": round(mac_s * 1e6, 2),
        "mac_per_sign_verify_pair": round(2.0 * mac_s / (sign_s + verify_s), 4),
        "sign_per_s": round(1.0 / sign_s, 0),
        "verify_per_s": round(1.0 / verify_s, 0),
        "sign_verify_pairs_per_s": round(1.0 / (sign_s + verify_s), 0),
    })
}

/// A `kad node` child process, killed (by PID) when dropped.
struct NodeProc {
    child: Child,
    addr: SocketAddr,
    id: NodeId,
    last: Arc<std::sync::Mutex<String>>,
}

impl NodeProc {
    fn start(extra: &[&str]) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the kad executable")?;
        let mut child = Command::new(exe)
            .args([
                "node",
                "--listen",
                "udp://127.0.0.1:0",
                "--json",
                "--for",
                "600",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a kad node process")?;
        let out = child.stdout.take().context("node stdout")?;
        let mut out = BufReader::new(out);
        let mut line = String::new();
        out.read_line(&mut line)
            .context("reading the node's contact")?;
        // Keep the latest line the node prints (its stats with --stats-every).
        let last = Arc::new(std::sync::Mutex::new(String::new()));
        let keep = last.clone();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if let Ok(mut k) = keep.lock() {
                    *k = l;
                }
            }
        });
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("the node printed {line:?}"))?;
        let addr = v["addrs"][0]
            .as_str()
            .and_then(|s| s.parse::<PeerAddr>().ok())
            .and_then(|p| match p {
                PeerAddr::Udp(a) => Some(a),
                _ => None,
            })
            .context("node address")?;
        let id = v["id"].as_str().context("node id")?.parse()?;
        Ok(Self {
            child,
            addr,
            id,
            last,
        })
    }
    fn pid(&self) -> String {
        self.child.id().to_string()
    }
    /// The stats object of the latest stats line.
    fn stats(&self) -> serde_json::Value {
        let line = self.last.lock().map(|l| l.clone()).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&line).map_or(json!(null), |v| v["stats"].clone())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signs `n` PINGs from `identity` to `to` (one fresh nonce and transaction id each).
fn signed_pings(
    identity: &Arc<NativeIdentity>,
    from: SocketAddr,
    to: NodeId,
    n: usize,
) -> Vec<Vec<u8>> {
    pings(
        &mut NativeCodec::new(identity.clone()),
        identity,
        from,
        to,
        n,
    )
}

/// `n` PINGs from `codec`'s identity to `to` (one fresh nonce and transaction id each): signed,
/// or MAC'd once the codec knows the node (protocol version 2).
fn pings(
    codec: &mut NativeCodec,
    identity: &Arc<NativeIdentity>,
    from: SocketAddr,
    to: NodeId,
    n: usize,
) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::ThreadRng::default();
    let contact = Contact::new(identity.id(), PeerAddr::Udp(from));
    (0..n)
        .map(|i| {
            let m = Message {
                txn: TxnId::from_bytes((i as u32).to_be_bytes().to_vec()),
                sender: contact.clone(),
                recipient: Some(to),
                read_only: true,
                observed: None,
                body: Body::Request(Request::Ping),
            };
            codec
                .encode(&m, &mut client_cx(identity, &mut rng))
                .map(|b| b.to_vec())
                .unwrap_or_default()
        })
        .collect()
}

/// The codec context of a raw client on UDP, now.
fn client_cx<'a>(identity: &NativeIdentity, rng: &'a mut dyn rand::RngCore) -> CodecCx<'a> {
    CodecCx {
        unix_ms: kad_core::SystemClock::now_ms(),
        local_id: identity.id(),
        max_skew_ms: 60_000,
        rng,
        peer: None,
        proven: None,
    }
}

fn decode_answer(codec: &mut NativeCodec, identity: &NativeIdentity, bytes: &[u8]) -> bool {
    let mut rng = rand::rngs::ThreadRng::default();
    codec
        .decode(bytes, &mut client_cx(identity, &mut rng))
        .is_ok()
}

/// PINGs answered per second by a `kad node` process, closed loop, in two forms: signed
/// (protocol version 1, what a peer the node does not know sends; the node answers signed), with
/// a window of 64 requests; and from a known peer (version 2: MAC'd both ways), with a window of
/// 64 and one at a time (comparable with raw loopback UDP round trips).
pub(crate) fn ping_rate(secs: f64, pair_rate: f64) -> Result<serde_json::Value> {
    // One client address sends everything: the per-IP limit would measure itself, not the node.
    // Its raw client does not answer the proving PING of the anti-amplification guard either.
    let node = NodeProc::start(&["--per-ip-rate", "0", "--no-amplification-guard"])?;
    // Signed: a client speaking version 1 only, so the node signs its answers too.
    let identity = Arc::new(fresh_identity()?);
    let mut codec = NativeCodec::new(identity.clone()).max_version(1);
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    // Pre-sign more than the node can answer in `secs`, so this process only sends and counts.
    let n = ((pair_rate * secs * 1.3) as usize).clamp(1000, 2_000_000);
    let signed = pings(&mut codec, &identity, sock.local_addr()?, node.id, n);
    let mut signed_r = ping_load(&node, &sock, 64, secs, &mut codec, &identity, |i| {
        signed.get(i).cloned()
    })?;
    signed_r["ratio_to_sign_verify_bound"] = json!(round(
        signed_r["pings_per_s"].as_f64().unwrap_or(0.0) / pair_rate,
        3
    ));
    signed_r["target_ratio"] = json!(0.7);
    // Version 2: one signed PING introduces the client, its answer the node; then MACs, made as
    // they are sent (a MAC and its JSON cost this process a few microseconds).
    let identity = Arc::new(fresh_identity()?);
    let mut codec = NativeCodec::new(identity.clone());
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let from = sock.local_addr()?;
    let hello = pings(&mut codec, &identity, from, node.id, 1);
    sock.send_to(&hello[0], node.addr)?;
    let mut buf = vec![0u8; 65_536];
    let (len, _) = sock
        .recv_from(&mut buf)
        .map_err(|e| anyhow::anyhow!("the node did not answer the first PING: {e}"))?;
    if !decode_answer(&mut codec, &identity, &buf[..len]) || !codec.would_mac(&node.id) {
        bail!("the node's answer did not introduce it as a version 2 peer");
    }
    let mut sender = NativeCodec::new(identity.clone());
    // The sender learns the node from the same answer (a fresh codec has no replay history).
    let hello2 = pings(&mut sender, &identity, from, node.id, 1);
    sock.send_to(&hello2[0], node.addr)?;
    let (len, _) = sock.recv_from(&mut buf)?;
    decode_answer(&mut sender, &identity, &buf[..len]);
    let mut next = |_: usize| pings(&mut sender, &identity, from, node.id, 1).pop();
    let windowed = ping_load(&node, &sock, 64, secs, &mut codec, &identity, &mut next)?;
    let serial = ping_load(&node, &sock, 1, secs, &mut codec, &identity, &mut next)?;
    Ok(json!({
        "answered": windowed["answered"],
        "answers_verified_sample": windowed["answers_verified_sample"],
        "pings_per_s": windowed["pings_per_s"],
        "node_cpu_us_per_ping": windowed["node_cpu_us_per_ping"],
        "round_trips_per_s": serial["pings_per_s"],
        "known_peer_v2": windowed,
        "known_peer_v2_one_at_a_time": serial,
        "signed_v1": signed_r,
    }))
}

/// Sends PINGs (`ping(i)`, until it gives none) to the node with `window` in flight for `secs`,
/// counting answers and checking a sample of them in full (signature or MAC, id, recipient,
/// window).
fn ping_load(
    node: &NodeProc,
    sock: &UdpSocket,
    window: usize,
    secs: f64,
    verifier: &mut NativeCodec,
    identity: &NativeIdentity,
    mut ping: impl FnMut(usize) -> Option<Vec<u8>>,
) -> Result<serde_json::Value> {
    let mut next = 0;
    let mut send = |next: &mut usize| -> Result<bool> {
        let Some(p) = ping(*next) else {
            return Ok(false);
        };
        sock.send_to(&p, node.addr)?;
        *next += 1;
        Ok(true)
    };
    for _ in 0..window {
        send(&mut next)?;
    }
    let cpu0 = cpu_s(&node.pid());
    let t = Instant::now();
    let (mut answered, mut verified, mut lost) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 65_536];
    while t.elapsed().as_secs_f64() < secs {
        match sock.recv_from(&mut buf) {
            Ok((len, _)) => {
                answered += 1;
                if answered % 64 == 0 && decode_answer(verifier, identity, &buf[..len]) {
                    verified += 1;
                }
            }
            Err(_) => {
                // A whole window lost (socket buffer overflow): refill it.
                lost += window as u64;
                for _ in 0..window {
                    send(&mut next)?;
                }
                continue;
            }
        }
        if !send(&mut next)? {
            break;
        }
    }
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = cpu_s(&node.pid()) - cpu0;
    let rate = answered as f64 / elapsed;
    // Let the last window's answers arrive before the next measurement.
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    while sock.recv_from(&mut buf).is_ok() {}
    let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
    Ok(json!({
        "window": window,
        "answered": answered,
        "answers_verified_sample": verified,
        "windows_lost": lost / window as u64,
        "pings_per_s": round(rate, 0),
        "node_cpu_us_per_ping": round(cpu / answered.max(1) as f64 * 1e6, 1),
    }))
}

/// Process CPU seconds (user + system) of this process.
fn self_cpu() -> f64 {
    cpu_s("self")
}

/// What the network part of `bench native` builds and does.
pub(crate) struct NetParams {
    pub(crate) nodes: usize,
    pub(crate) ops: usize,
    pub(crate) joins: usize,
    /// `udp` or `quic`.
    pub(crate) transport: String,
    /// Stores a put waits for (0: all).
    pub(crate) quorum: usize,
    /// Whether to add every latency sample to the report.
    pub(crate) samples: bool,
}

async fn network(p: NetParams) -> Result<serde_json::Value> {
    let NetParams {
        nodes, ops, joins, ..
    } = p;
    let rss_baseline = rss_mb("self");
    let mut dhts = Vec::with_capacity(nodes);
    let mut quics = Vec::new();
    let t_build = Instant::now();
    for _ in 0..nodes {
        let listen = [format!("{}://127.0.0.1:0", p.transport).parse::<PeerAddr>()?];
        let node = crate::net::listening(crate::net::node_builder(), &listen)
            .build()
            .await
            .map_err(crate::net::flag_error)?;
        dhts.push(node.dht().clone());
        quics.extend(node.transports().quic().iter().cloned());
    }
    let seed = dhts[0].contact().addrs[0].clone();
    // Join in waves of 10 through the first node.
    for chunk in dhts[1..].chunks(10) {
        let mut set = tokio::task::JoinSet::new();
        for d in chunk {
            let (d, s) = (d.clone(), seed.clone());
            set.spawn(async move { d.bootstrap(vec![s]).await });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
    }
    // One refresh round so that the tables reflect the whole network, as after a few minutes.
    for d in &dhts {
        d.find_node(d.contact().id).await?;
    }
    let formed_s = t_build.elapsed().as_secs_f64();
    let rss_formed = rss_mb("self");
    let mut table = Vec::new();
    for d in &dhts {
        table.push(d.snapshot().await?.contacts.len() as f64);
    }
    let mut rng = rand::rngs::ThreadRng::default();
    use rand::Rng as _;
    // Content-addressed records, as `kad get` (used by the fresh processes below) expects.
    let run: u64 = rng.random();
    let values: Vec<String> = (0..ops)
        .map(|i| format!("value {i} of run {run:x}"))
        .collect();
    let keys: Vec<NodeId> = values
        .iter()
        .map(|v| kad_core::content_key(v.as_bytes()))
        .collect();
    // Puts, one at a time, from random nodes.
    let (mut put_ms, mut stored, mut put_rpcs) = (Vec::new(), Vec::new(), Vec::new());
    let cpu0 = self_cpu();
    let t = Instant::now();
    let quorum = match p.quorum {
        0 => kad_core::Quorum::All,
        n => kad_core::Quorum::n(n),
    };
    for (i, k) in keys.iter().enumerate() {
        let d = &dhts[rng.random_range(0..nodes)];
        let t1 = Instant::now();
        let o = d
            .put_quorum(*k, values[i].clone().into_bytes().into(), quorum)
            .await?;
        put_ms.push(ms(t1.elapsed()));
        stored.push(o.stored as f64);
        put_rpcs.push(f64::from(o.stats.rpcs) + o.tried as f64);
    }
    let put_cpu = (self_cpu() - cpu0) / ops as f64;
    let put_wall = t.elapsed().as_secs_f64();
    // Gets, one at a time, from random nodes (other than none in particular).
    let (mut get_ms, mut get_rpcs) = (Vec::new(), Vec::new());
    let mut found = 0;
    let cpu0 = self_cpu();
    for (i, k) in keys.iter().enumerate() {
        let d = &dhts[rng.random_range(0..nodes)];
        let t1 = Instant::now();
        if let Ok(o) = d.get(*k).await {
            get_rpcs.push(f64::from(o.stats.rpcs));
            if o.record.value == values[i].as_bytes() {
                found += 1;
            }
        }
        get_ms.push(ms(t1.elapsed()));
    }
    let get_cpu = (self_cpu() - cpu0) / ops as f64;
    let rss_after = rss_mb("self");
    // QUIC: connection ends open, and connections closed because a peer fell silent (none
    // should be: every node is alive).
    let quic_connections: usize = quics.iter().map(|q| q.connections()).sum();
    let quic_dead_peers: u64 = quics.iter().map(|q| q.stats().dead_peers).sum();
    // Let the STOREs a quorum put did not wait for finish before the fresh processes start.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let samples = p
        .samples
        .then(|| json!({"put_ms": put_ms.clone(), "get_ms": get_ms.clone()}));
    // Fresh processes: start, join through one node, get one record, exit.
    let exe = std::env::current_exe()?;
    let (mut join_get_ms, mut process_ms) = (Vec::new(), Vec::new());
    let mut join_found = 0;
    for j in 0..joins {
        let k = keys[j % keys.len()];
        let t1 = Instant::now();
        let out = tokio::process::Command::new(&exe)
            .args([
                "get",
                "--json",
                "--bootstrap",
                &seed.to_string(),
                &k.to_string(),
            ])
            .output()
            .await?;
        process_ms.push(ms(t1.elapsed()));
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or(json!({}));
        if v["value"].as_str() == Some(values[j % keys.len()].as_str()) {
            join_found += 1;
        }
        let jm = v["join_ms"].as_f64().unwrap_or(f64::NAN);
        let gm = v["elapsed_ms"].as_f64().unwrap_or(f64::NAN);
        join_get_ms.push(jm + gm);
    }
    for d in &dhts {
        d.shutdown().await;
    }
    Ok(json!({
        "nodes": nodes,
        "transport": p.transport,
        "quorum": p.quorum,
        "rss_baseline_mb": round(rss_baseline, 1),
        "rss_formed_mb": round(rss_formed, 1),
        "rss_mb": round(rss_after, 1),
        "rss_mb_per_node": round(rss_after / nodes as f64, 2),
        "quic_connections_per_node": (p.transport == "quic")
            .then(|| round(quic_connections as f64 / nodes as f64, 1)),
        "quic_dead_peers": (p.transport == "quic").then_some(quic_dead_peers),
        "samples": samples,
        "formed_s": round(formed_s, 2),
        "routing_table_mean": round(table.iter().sum::<f64>() / nodes as f64, 1),
        "puts": ops,
        "put_ms_p50": pct(&mut put_ms, 0.5),
        "put_ms_p90": pct(&mut put_ms, 0.9),
        "put_stored_p50": pct(&mut stored, 0.5),
        "put_rpcs_p50": pct(&mut put_rpcs, 0.5),
        "get_rpcs_p50": pct(&mut get_rpcs, 0.5),
        "put_cpu_ms_per_op": round(put_cpu * 1e3, 2),
        "put_wall_s": round(put_wall, 2),
        "gets": ops,
        "gets_found": found,
        "get_ms_p50": pct(&mut get_ms, 0.5),
        "get_ms_p90": pct(&mut get_ms, 0.9),
        "get_cpu_ms_per_op": round(get_cpu * 1e3, 2),
        "fresh_process_gets": joins,
        "fresh_process_found": join_found,
        "fresh_join_plus_get_ms_p50": pct(&mut join_get_ms, 0.5),
        "fresh_process_total_ms_p50": pct(&mut process_ms, 0.5),
        "cpu_note": "CPU per op is this process's CPU (all nodes, both ends of every RPC) divided by the operations",
    }))
}

/// Floods a `kad node` process from many source addresses, then checks it still answers.
fn flood(sources: u32) -> Result<serde_json::Value> {
    // The honest raw ping at the end does not answer the guard's proving PING (the guard and the
    // per-IP limits have their own flood test: cli/tests/flood.rs).
    let node = NodeProc::start(&["--stats-every", "0.25", "--no-amplification-guard"])?;
    let pid = node.pid();
    std::thread::sleep(Duration::from_millis(200));
    let rss0 = rss_mb(&pid);
    let forger = Arc::new(fresh_identity()?);
    let other = fresh_identity()?.id();
    let replayed = signed_pings(&forger, "127.0.0.1:9".parse()?, node.id, 1);
    let t = Instant::now();
    let mut sent = 0u64;
    for i in 0..sources {
        // 127.1.0.0 + i: a distinct source address each time.
        let ip = std::net::Ipv4Addr::from(0x7f01_0000u32 + i);
        let Ok(sock) = UdpSocket::bind((ip, 0)) else {
            continue;
        };
        let src: SocketAddr = sock.local_addr()?;
        // Garbage, a forged signature, a ping for another node, a replay.
        let _ = sock.send_to(&(i.to_be_bytes().repeat(50)), node.addr);
        let mut forged = signed_pings(&forger, src, node.id, 1)
            .pop()
            .unwrap_or_default();
        if forged.len() > 10 {
            let at = forged.len() - 4;
            forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
        }
        let _ = sock.send_to(&forged, node.addr);
        if i % 8 == 0 {
            // A valid PING from a fresh key: the node answers it and may remember the peer.
            let fresh = Arc::new(fresh_identity()?);
            let ok = signed_pings(&fresh, src, node.id, 1)
                .pop()
                .unwrap_or_default();
            let _ = sock.send_to(&ok, node.addr);
            let wrong = signed_pings(&fresh, src, other, 1)
                .pop()
                .unwrap_or_default();
            let _ = sock.send_to(&wrong, node.addr);
        }
        let _ = sock.send_to(&replayed[0], node.addr);
        sent += 4;
    }
    let flood_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = rss_mb(&pid);
    // Still answering an honest peer?
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let honest = Arc::new(fresh_identity()?);
    let ping = signed_pings(&honest, sock.local_addr()?, node.id, 1);
    let t1 = Instant::now();
    sock.send_to(&ping[0], node.addr)?;
    let mut buf = vec![0u8; 65_536];
    let answered = sock.recv_from(&mut buf).is_ok();
    let rtt = ms(t1.elapsed());
    std::thread::sleep(Duration::from_millis(400));
    let st = node.stats();
    let drops = json!({
        "malformed": st["dropped_malformed"], "bad_signature": st["dropped_bad_signature"], "bad_mac": st["dropped_bad_mac"],
        "wrong_recipient": st["dropped_wrong_recipient"], "replay": st["dropped_replay"],
        "overload": st["dropped_overload"], "stale": st["dropped_stale"],
        "requests_answered": st["requests_in"],
    });
    Ok(json!({
        "node_counters": drops,
        "source_addresses": sources,
        "datagrams": sent,
        "flood_s": round(flood_s, 2),
        "rss_mb_before": rss0,
        "rss_mb_after": rss1,
        "honest_ping_answered": answered,
        "honest_ping_rtt_ms": rtt,
    }))
}
