//! `kad bench mainline`: our Mainline node against the `mainline` crate, side by side in one run.
//!
//! 1. Latency: two 50-node networks on 127.0.0.1, ours and the `mainline` crate's (each in its
//!    own process). In each: immutable put, mutable put and get, timed for a long-running client
//!    node and for fresh client processes (process start, join and operation included).
//! 2. Throughput: ping, find_node and get answered per second by one server process whose
//!    routing table holds a few hundred entries, fed by a load generator in this process; ours,
//!    the `mainline` crate's, and a trivial UDP echo responder (the loopback limit). The servers'
//!    CPU time is read from /proc, so rates are also given per CPU-second.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use kad_core::NodeId;
use kad_plugin_bep44::{Mainline, MainlineConfig, MutableItem, bencode::Dict, item};
use serde_json::{Value, json};

use crate::net::emit;

#[derive(Args, Debug)]
pub(crate) struct MainlineBenchArgs {
    /// Nodes in each of the two latency networks.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Operations of each kind timed on the long-running client of each network.
    #[arg(long, default_value_t = 30)]
    ops: usize,
    /// Fresh client processes per operation kind and network.
    #[arg(long, default_value_t = 5)]
    fresh: usize,
    /// Seconds of load per query kind and server in the throughput part (0 skips it).
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Routing-table entries the throughput part gives each server before measuring.
    #[arg(long, default_value_t = 300)]
    table: usize,
    /// Print exactly one JSON object.
    #[arg(long)]
    json: bool,
}

impl MainlineBenchArgs {
    pub(crate) fn json(&self) -> bool {
        self.json
    }
}

/// A helper process of the benchmark, killed (by PID) when dropped.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
}

impl Proc {
    fn start(args: &[&str]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {args:?}"))?;
        let out = BufReader::new(child.stdout.take().context("stdout")?);
        let stdin = child.stdin.take();
        Ok(Self { child, stdin, out })
    }
    fn line(&mut self) -> Result<Value> {
        let mut l = String::new();
        self.out.read_line(&mut l)?;
        serde_json::from_str(&l).with_context(|| format!("bad line {l:?}"))
    }
    fn ask(&mut self, q: &str) -> Result<Value> {
        let w = self.stdin.as_mut().context("stdin")?;
        writeln!(w, "{q}")?;
        w.flush()?;
        self.line()
    }
    fn cpu_s(&self) -> f64 {
        crate::cmd::bench::cpu_s(&self.child.id().to_string())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn summary(mut v: Vec<f64>, failed: usize) -> Value {
    json!({"p50_ms": crate::cmd::bench::pct(&mut v, 0.5), "p90_ms": crate::cmd::bench::pct(&mut v, 0.9), "n": v.len(), "failed": failed})
}

/// Latencies (ms) of one kind of operation, and how many failed.
#[derive(Default)]
struct Lat {
    ok: Vec<f64>,
    failed: usize,
}

impl Lat {
    /// Four empty series: put and get, immutable and mutable.
    fn four() -> (Self, Self, Self, Self) {
        Default::default()
    }
    /// The four series as the report prints them.
    fn report(pi: Self, gi: Self, pm: Self, gm: Self) -> Value {
        json!({"put_immutable": pi.json(), "get_immutable": gi.json(), "put_mutable": pm.json(), "get_mutable": gm.json()})
    }
    fn add(&mut self, started: Instant, ok: bool) {
        if ok {
            self.ok.push(started.elapsed().as_secs_f64() * 1000.0);
        } else {
            self.failed += 1;
        }
    }
    fn json(self) -> Value {
        summary(self.ok, self.failed)
    }
}

fn seed(i: usize, tag: &str) -> [u8; 32] {
    let a = item::sha1(format!("{tag} {i} a").as_bytes());
    let b = item::sha1(format!("{tag} {i} b").as_bytes());
    let mut s = [0u8; 32];
    s[..20].copy_from_slice(&a);
    s[20..].copy_from_slice(&b[..12]);
    s
}

pub(crate) fn run(a: MainlineBenchArgs) -> Result<()> {
    if a.nodes < 2 {
        bail!("--nodes must be at least 2, got {}", a.nodes);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stamp = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tag = format!("bench{stamp}");

    // ---- 1. latency in two 50-node networks ----
    let mut ours_net = Proc::start(&[
        "bench",
        "mainline-net",
        "--impl",
        "ours",
        "--nodes",
        &a.nodes.to_string(),
    ])?;
    let ours_port = ours_net.line()?["port"].as_u64().context("port")? as u16;
    let mut crate_net = Proc::start(&[
        "bench",
        "mainline-net",
        "--impl",
        "crate",
        "--nodes",
        &a.nodes.to_string(),
    ])?;
    let crate_port = crate_net.line()?["port"].as_u64().context("port")? as u16;
    let ours_size = ours_net.ask("size")?;
    let crate_size = crate_net.ask("size")?;

    // Fresh processes first: they are read-only (BEP43) in both implementations, so they leave
    // no departed node behind in the tables; the long-running client, a full node, does when it
    // stops, and lookups that meet it later wait for it.
    let ours_fresh = fresh(
        &["mainline"],
        ours_port,
        a.fresh,
        &format!("{tag} fresh ours"),
    )?;
    let crate_fresh = fresh(
        &["bench", "mainline-crate-client"],
        crate_port,
        a.fresh,
        &format!("{tag} fresh crate"),
    )?;

    // Long-running client nodes.
    let ours_long = rt.block_on(long_ours(ours_port, a.ops, &tag))?;
    let crate_long = long_crate(crate_port, a.ops, &tag)?;
    drop(ours_net);
    drop(crate_net);

    let ratio = |o: &Value, c: &Value, k: &str| {
        let (x, y) = (
            o[k]["p50_ms"].as_f64().unwrap_or(f64::NAN),
            c[k]["p50_ms"].as_f64().unwrap_or(f64::NAN),
        );
        json!((x / y * 1000.0).round() / 1000.0)
    };
    let mut ratios = json!({});
    for (mode, o, c) in [
        ("long", &ours_long, &crate_long),
        ("fresh", &ours_fresh, &crate_fresh),
    ] {
        for k in [
            "put_immutable",
            "get_immutable",
            "put_mutable",
            "get_mutable",
        ] {
            ratios[format!("{mode}_{k}_p50_ours_over_crate")] = ratio(o, c, k);
        }
    }

    // ---- 2. throughput ----
    let throughput = if a.secs > 0.0 {
        throughput(&a)?
    } else {
        Value::Null
    };

    let out = json!({
        "bench": "mainline",
        "nodes": a.nodes,
        "latency": {
            "ours": {"network": ours_size, "long_running": ours_long, "fresh_process": ours_fresh},
            "mainline_crate": {"network": crate_size, "long_running": crate_long, "fresh_process": crate_fresh},
            "ratios": ratios,
        },
        "throughput": throughput,
    });
    emit(a.json, &out, || {
        serde_json::to_string_pretty(&out).unwrap_or_default()
    });
    Ok(())
}

async fn long_ours(port: u16, ops: usize, tag: &str) -> Result<Value> {
    let mut cfg = MainlineConfig::default();
    cfg.bind = "127.0.0.1:0".parse()?;
    cfg.bootstrap = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))];
    cfg.limits.per_ip_rate = 0;
    let node = Mainline::spawn(cfg).await?;
    node.bootstrap().await?;
    let (mut pi, mut gi, mut pm, mut gm) = Lat::four();
    for i in 0..ops {
        let v = item::bencode_bytes(format!("{tag} long ours imm {i}").as_bytes());
        let t = Instant::now();
        let r = node.put_immutable(&v).await;
        pi.add(t, r.is_ok());
        let t = Instant::now();
        let r = node.get_immutable(item::immutable_target(&v)).await;
        gi.add(t, r.is_ok_and(|g| g.v[..] == v[..]));
        let s = seed(i, &format!("{tag} long ours"));
        let it = MutableItem::sign(&s, b"", 1, &item::bencode_bytes(format!("m{i}").as_bytes()))?;
        let t = Instant::now();
        let r = node.put_mutable(&it, None).await;
        pm.add(t, r.is_ok());
        let t = Instant::now();
        let r = node.get_mutable(it.pubkey, b"", None).await;
        gm.add(t, r.is_ok_and(|g| g.seq == 1));
    }
    node.shutdown().await;
    Ok(Lat::report(pi, gi, pm, gm))
}

#[allow(deprecated)] // the mainline crate's blocking API
fn long_crate(port: u16, ops: usize, tag: &str) -> Result<Value> {
    let dht = mainline::Dht::builder()
        .bind_address(Ipv4Addr::LOCALHOST)
        .bootstrap(&[format!("127.0.0.1:{port}")])
        .build()?;
    dht.bootstrapped();
    let (mut pi, mut gi, mut pm, mut gm) = Lat::four();
    for i in 0..ops {
        let v = format!("{tag} long crate imm {i}");
        let t = Instant::now();
        let r = dht.put_immutable(v.as_bytes());
        pi.add(t, r.is_ok());
        let target = r.ok();
        let t = Instant::now();
        let got = target.and_then(|id| dht.get_immutable(id));
        gi.add(t, got.is_some_and(|g| g[..] == *v.as_bytes()));
        let key = mainline::SigningKey::from_bytes(&seed(i, &format!("{tag} long crate")));
        let pk = key.verifying_key().to_bytes();
        let it = mainline::MutableItem::new(key, format!("m{i}").as_bytes(), 1, None);
        let t = Instant::now();
        let r = dht.put_mutable(it, None);
        pm.add(t, r.is_ok());
        let t = Instant::now();
        let got = dht.get_mutable_most_recent(&pk, None);
        gm.add(t, got.is_some_and(|g| g.seq() == 1));
    }
    Ok(Lat::report(pi, gi, pm, gm))
}

/// Runs `n` fresh client processes per operation kind, timing each from spawn to exit.
fn fresh(prefix: &[&str], port: u16, n: usize, tag: &str) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let boot = format!("127.0.0.1:{port}");
    let run = |args: Vec<String>| -> (bool, Instant) {
        let t = Instant::now();
        let out = Command::new(&exe)
            .args(prefix)
            .args(&args)
            .args([
                "--bootstrap",
                &boot,
                "--bind",
                "127.0.0.1",
                "--timeout",
                "20",
            ])
            .stderr(Stdio::null())
            .output();
        let ok = out.is_ok_and(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            serde_json::from_str::<Value>(text.lines().last().unwrap_or_default())
                .is_ok_and(|v| v["ok"] == true)
        });
        (ok, t)
    };
    let (mut pi, mut gi, mut pm, mut gm) = Lat::four();
    for i in 0..n {
        let value = format!("{tag} {i}");
        let (ok, t) = run(vec![
            "put-immutable".into(),
            "--value".into(),
            value.clone(),
        ]);
        pi.ok.push(t.elapsed().as_secs_f64() * 1000.0);
        pi.failed += usize::from(!ok);
        let target = item::immutable_target(&item::bencode_bytes(value.as_bytes())).to_hex();
        let (ok, t) = run(vec!["get-immutable".into(), "--target".into(), target]);
        gi.add(t, ok);
        let s = seed(i, tag);
        let (ok, t) = run(vec![
            "put-mutable".into(),
            "--seed".into(),
            hex::encode(s),
            "--seq".into(),
            "1".into(),
            "--value".into(),
            value.clone(),
        ]);
        pm.add(t, ok);
        let (ok, t) = run(vec![
            "get-mutable".into(),
            "--pubkey".into(),
            hex::encode(item::public_key(&s)),
        ]);
        gm.add(t, ok);
    }
    Ok(Lat::report(pi, gi, pm, gm))
}

// ---- throughput ----

fn throughput(a: &MainlineBenchArgs) -> Result<Value> {
    let mut out = json!({});
    // The echo responder: the loopback limit for one core.
    let mut echo = Proc::start(&["bench", "udp-echo"])?;
    let port = echo.line()?["port"].as_u64().context("port")? as u16;
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let c0 = echo.cpu_s();
    let r = load(target, Kind::Ping, a.secs)?;
    out["echo"] = json!({"ping": rate_json(r, echo.cpu_s() - c0, a.secs)});
    drop(echo);

    for which in ["ours", "crate"] {
        let mut p = Proc::start(&[
            "bench",
            "mainline-net",
            "--impl",
            which,
            "--nodes",
            "1",
            "--server-only",
        ])?;
        let port = p.line()?["port"].as_u64().context("port")? as u16;
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let id = fill_table(target, a.table)?;
        std::thread::sleep(Duration::from_millis(300));
        let size = p.ask("size")?;
        let mut res = json!({"routing_table": size["routing"], "server_id": id.to_hex()});
        for kind in [Kind::Ping, Kind::FindNode, Kind::Get] {
            let c0 = p.cpu_s();
            let r = load(target, kind, a.secs)?;
            res[kind.name()] = rate_json(r, p.cpu_s() - c0, a.secs);
        }
        out[if which == "ours" {
            "ours"
        } else {
            "mainline_crate"
        }] = res;
    }
    let rate = |who: &str, k: &str| out[who][k]["per_s"].as_f64().unwrap_or(f64::NAN);
    let mut ratios = json!({});
    for k in ["ping", "find_node", "get"] {
        ratios[format!("{k}_ours_over_crate")] =
            json!(round3(rate("ours", k) / rate("mainline_crate", k)));
        ratios[format!("{k}_ours_over_echo")] =
            json!(round3(rate("ours", k) / rate("echo", "ping")));
    }
    out["ratios"] = ratios;
    out["note"] = json!(
        "one load generator process (this one) with 4 sockets and 64 queries in flight each; servers run with no per-IP limit and no reply budget (every query comes from 127.0.0.1)"
    );
    Ok(out)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn rate_json((answered, sent): (u64, u64), cpu: f64, secs: f64) -> Value {
    json!({
        "per_s": (answered as f64 / secs).round(),
        "sent": sent,
        "answered": answered,
        "server_cpu_s": round3(cpu),
        "per_cpu_s": if cpu > 0.0 { (answered as f64 / cpu).round() } else { f64::NAN },
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Ping,
    FindNode,
    Get,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::FindNode => "find_node",
            Self::Get => "get",
        }
    }
}

/// A KRPC query from `id` with a 4-byte transaction id at a fixed offset (returned).
fn query(kind: Kind, id: &NodeId, target: &NodeId, ro: bool) -> (Vec<u8>, usize) {
    let mut a = Dict::new();
    a.bytes(b"id", id.as_bytes());
    match kind {
        Kind::Ping => {}
        Kind::FindNode | Kind::Get => {
            a.bytes(b"target", target.as_bytes());
        }
    }
    let q: &[u8] = match kind {
        Kind::Ping => b"ping",
        Kind::FindNode => b"find_node",
        Kind::Get => b"get",
    };
    let mut top = Dict::new();
    top.raw(b"a", &a.finish())
        .bytes(b"q", q)
        .bytes(b"t", b"\0\0\0\0")
        .bytes(b"y", b"q");
    if ro {
        top.int(b"ro", 1);
    }
    let b = top.finish();
    let at = b
        .windows(7)
        .position(|w| w == b"1:t4:\0\0")
        .map_or(0, |p| p + 5);
    (b, at)
}

/// Gives the server at `target` routing-table entries: `find_node` queries from `n` node ids
/// spread over the buckets nearest its id (8 per bucket), each from its own 127.1.x.y address.
/// Returns the server's id.
fn fill_table(target: SocketAddr, n: usize) -> Result<NodeId> {
    let probe = UdpSocket::bind("127.0.0.1:0")?;
    probe.set_read_timeout(Some(Duration::from_secs(2)))?;
    let me = NodeId::from_bytes(item::sha1(b"probe"));
    let (q, _) = query(Kind::Ping, &me, &me, true);
    probe.send_to(&q, target)?;
    let mut buf = [0u8; 2048];
    let (len, _) = probe
        .recv_from(&mut buf)
        .context("the server did not answer a ping")?;
    let v = kad_plugin_bep44::bencode::parse(&buf[..len]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = v
        .get(b"r")
        .and_then(|r| r.get(b"id"))
        .and_then(|x| x.bytes())
        .and_then(NodeId::from_slice)
        .context("no id in the ping answer")?;
    let per_bucket = 8;
    for i in 0..n {
        let bucket = i / per_bucket;
        let mut id = *server.as_bytes();
        let bit = bucket.min(159);
        id[bit / 8] ^= 0x80 >> (bit % 8);
        let r = item::sha1(format!("fill {i}").as_bytes());
        for b in (bit + 1)..160 {
            let mask = 0x80u8 >> (b % 8);
            id[b / 8] = (id[b / 8] & !mask) | (r[b / 8] & mask);
        }
        let ip = Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
        let s = UdpSocket::bind((ip, 0))?;
        // find_node with target = the sender's id: what a joining node sends. (The mainline
        // crate, started without a bootstrap list, learns such senders under the target id.)
        let id = NodeId::from_bytes(id);
        let (q, _) = query(Kind::FindNode, &id, &id, false);
        s.send_to(&q, target)?;
    }
    Ok(server)
}

/// Sends `kind` queries for `secs` seconds from 4 sockets, 64 in flight each. Returns
/// (answered, sent).
fn load(target: SocketAddr, kind: Kind, secs: f64) -> Result<(u64, u64)> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for w in 0..4u8 {
        handles.push(std::thread::spawn(move || -> Result<(u64, u64)> {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            let me = NodeId::from_bytes(item::sha1(&[b'g', w]));
            let targets: Vec<NodeId> = (0..1024u32)
                .map(|i| NodeId::from_bytes(item::sha1(&i.to_be_bytes())))
                .collect();
            let mut txn = 0u32;
            let (mut sent, mut answered) = (0u64, 0u64);
            let send = |s: &UdpSocket, txn: &mut u32| -> Result<()> {
                let (mut q, at) = query(kind, &me, &targets[*txn as usize % 1024], true);
                q[at..at + 4].copy_from_slice(&txn.to_be_bytes());
                *txn = txn.wrapping_add(1);
                s.send_to(&q, target)?;
                Ok(())
            };
            for _ in 0..64 {
                send(&s, &mut txn)?;
                sent += 1;
            }
            let mut buf = [0u8; 4096];
            while Instant::now() < end {
                match s.recv_from(&mut buf) {
                    Ok(_) => {
                        answered += 1;
                        send(&s, &mut txn)?;
                        sent += 1;
                    }
                    Err(_) => {
                        // Lost or dropped: refill the window.
                        for _ in 0..64 {
                            send(&s, &mut txn)?;
                            sent += 1;
                        }
                    }
                }
            }
            Ok((answered, sent))
        }));
    }
    let mut total = (0, 0);
    for h in handles {
        let (a, s) = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        total.0 += a;
        total.1 += s;
    }
    Ok(total)
}

// ---- hidden helper commands ----

/// `kad bench mainline-net`: runs a network of `nodes` (ours or the mainline crate's) in this
/// process, prints {"port":P} (the first node), then answers "size" on stdin with
/// {"nodes":N,"routing":R} (R: the first node's table) until stdin closes.
#[derive(Args, Debug)]
pub(crate) struct NetArgs {
    /// "ours" or "crate".
    #[arg(long = "impl")]
    which: String,
    /// Nodes in the network.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// One node with no per-IP limit and no reply budget (the throughput target).
    #[arg(long)]
    server_only: bool,
}

pub(crate) fn net(a: NetArgs) -> Result<()> {
    match a.which.as_str() {
        "ours" => net_ours(a),
        "crate" => net_crate(a),
        other => bail!("--impl must be ours or crate, got {other:?}"),
    }
}

fn serve_stdin(mut size: impl FnMut() -> Value) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line.as_deref() {
            Ok("size") => {
                let v = size();
                if !v.is_null() {
                    println!("{v}");
                }
            }
            _ => break,
        }
    }
}

fn net_ours(a: NetArgs) -> Result<()> {
    // One thread, like `kad mainline server`: no hand-offs between worker threads per datagram.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let nodes = rt.block_on(crate::cmd::mainline::local_network(a.nodes, |cfg| {
        cfg.limits.per_ip_rate = 0;
        if a.server_only {
            cfg.limits.reply_budget = 0;
        }
    }))?;
    println!("{}", json!({"port": nodes[0].local_addr().port()}));
    // The runtime runs the nodes only inside block_on: stdin is read on another thread.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    std::thread::spawn(move || {
        serve_stdin(|| {
            let _ = tx.send(());
            Value::Null
        })
    });
    rt.block_on(async {
        while rx.recv().await.is_some() {
            let routing = nodes[0].stats().await.map(|s| s.routing).unwrap_or(0);
            println!("{}", json!({"nodes": nodes.len(), "routing": routing}));
        }
    });
    Ok(())
}

#[allow(deprecated)] // the mainline crate's blocking API
fn net_crate(a: NetArgs) -> Result<()> {
    let first = mainline::Dht::builder()
        .server_mode()
        .bind_address(Ipv4Addr::LOCALHOST)
        .no_bootstrap()
        .build()?;
    let port = first.info().local_addr().port();
    let mut nodes = vec![first];
    for _ in 1..a.nodes {
        let n = mainline::Dht::builder()
            .server_mode()
            .bind_address(Ipv4Addr::LOCALHOST)
            .bootstrap(&[format!("127.0.0.1:{port}")])
            .build()?;
        nodes.push(n);
    }
    for n in &nodes[1..] {
        n.bootstrapped();
    }
    println!("{}", json!({"port": port}));
    serve_stdin(|| json!({"nodes": nodes.len(), "routing": nodes[0].to_bootstrap().len()}));
    Ok(())
}

/// `kad bench udp-echo`: answers every datagram with itself, on one thread.
pub(crate) fn echo() -> Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    println!("{}", json!({"port": s.local_addr()?.port()}));
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = s.recv_from(&mut buf)?;
        let _ = s.send_to(&buf[..n], from);
    }
}

/// `kad bench mainline-crate-client`: one operation with the `mainline` crate in a fresh
/// process, printing one JSON line like `kad mainline`.
#[derive(Args, Debug)]
pub(crate) struct CrateClientArgs {
    /// put-immutable, get-immutable, put-mutable or get-mutable.
    op: String,
    /// HOST:PORT to join through.
    #[arg(long)]
    bootstrap: String,
    /// Accepted for symmetry with `kad mainline` (binds 127.0.0.1).
    #[arg(long)]
    bind: Option<String>,
    /// Accepted for symmetry with `kad mainline`.
    #[arg(long)]
    timeout: Option<f64>,
    /// The value (puts).
    #[arg(long)]
    value: Option<String>,
    /// Target, 40 hex (get-immutable).
    #[arg(long)]
    target: Option<String>,
    /// ed25519 seed, 64 hex (put-mutable).
    #[arg(long)]
    seed: Option<String>,
    /// Public key, 64 hex (get-mutable).
    #[arg(long)]
    pubkey: Option<String>,
    /// Sequence number (put-mutable).
    #[arg(long, default_value_t = 1)]
    seq: i64,
}

#[allow(deprecated)] // the mainline crate's blocking API
pub(crate) fn crate_client(a: CrateClientArgs) -> Result<()> {
    let t = Instant::now();
    let dht = mainline::Dht::builder()
        .bind_address(Ipv4Addr::LOCALHOST)
        .bootstrap(std::slice::from_ref(&a.bootstrap))
        .build()?;
    let h32 = |s: &Option<String>| -> Result<[u8; 32]> {
        let b = hex::decode(s.as_deref().unwrap_or_default())?;
        b.try_into()
            .map_err(|_| anyhow::anyhow!("need 64 hex characters"))
    };
    let ok = match a.op.as_str() {
        "put-immutable" => dht
            .put_immutable(a.value.unwrap_or_default().as_bytes())
            .is_ok(),
        "get-immutable" => {
            let b: [u8; 20] = hex::decode(a.target.unwrap_or_default())?
                .try_into()
                .map_err(|_| anyhow::anyhow!("target"))?;
            dht.get_immutable(mainline::Id::from_bytes(b)?).is_some()
        }
        "put-mutable" => {
            let key = mainline::SigningKey::from_bytes(&h32(&a.seed)?);
            let it = mainline::MutableItem::new(
                key,
                a.value.unwrap_or_default().as_bytes(),
                a.seq,
                None,
            );
            dht.put_mutable(it, None).is_ok()
        }
        "get-mutable" => dht
            .get_mutable_most_recent(&h32(&a.pubkey)?, None)
            .is_some(),
        other => bail!("unknown op {other}"),
    };
    println!(
        "{}",
        json!({"ok": ok, "op": a.op, "elapsed_ms": t.elapsed().as_secs_f64() * 1000.0})
    );
    Ok(())
}
