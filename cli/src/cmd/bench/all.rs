//! `kad bench all`: every benchmark in one run, each figure beside its alternative, as ratios.
//!
//! Each part runs in a fresh process (this executable, or the libp2p-kad harness), one after
//! the other, so their memory and CPU are measured alone and on the same machine state:
//!
//! 1. physical limits: raw k256 sign and verify, raw loopback UDP round trips, and the signed
//!    PING rate of a `kad node` process against the sign+verify bound;
//! 2. native networks of `--nodes` nodes: ours over UDP (put waiting for all k stores, and for
//!    the first) and over QUIC (first store), against libp2p-kad over QUIC (`--libp2p`);
//! 3. `kad bench mainline` (ours against the `mainline` crate), `transports`, `storage`,
//!    `pubsub`;
//! 4. `kad sim` at 10 to 100,000 nodes: lookup hops and latency against network size.
//!
//! The report lists every ratio with its target (where the issue set one) and the command that
//! reproduces the figure; `--plot FILE.svg` draws the latency distributions and hops.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::net::emit;

/// `kad bench all` flags.
#[derive(Args, Debug)]
pub(crate) struct AllArgs {
    /// Nodes in the native networks (ours and libp2p-kad's).
    #[arg(long, default_value_t = 100, value_name = "N")]
    nodes: usize,
    /// Puts and gets timed in each native network.
    #[arg(long, default_value_t = 200, value_name = "N")]
    ops: usize,
    /// Fresh nodes that join and get one record, in each native network.
    #[arg(long, default_value_t = 10, value_name = "N")]
    joins: usize,
    /// Smaller everything (a few minutes instead of about half an hour): the sub-benchmarks'
    /// smoke sizes and simulations up to 10,000 nodes.
    #[arg(long)]
    quick: bool,
    /// Also run libp2p-kad: builds cli/libp2p-bench (release, outside the workspace; the
    /// first build takes several minutes) with cargo, unless --libp2p-bin is given.
    #[arg(long)]
    libp2p: bool,
    /// A libp2p-bench executable already built (implies --libp2p).
    #[arg(long, value_name = "FILE")]
    libp2p_bin: Option<PathBuf>,
    /// The largest simulated network (10 to 100000; default 100000, 10000 with --quick).
    #[arg(long, value_name = "N")]
    sim_max: Option<usize>,
    /// Draw the latency distributions and the hops against network size into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Print exactly one JSON object (progress goes to stderr).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Runs `kad ARGS --json` (this executable) and parses its last stdout line.
fn kad(args: &[String]) -> Result<Value> {
    let exe = std::env::current_exe().context("finding the kad executable")?;
    run_json(&exe, args)
}

fn run_json(exe: &Path, args: &[String]) -> Result<Value> {
    let t = Instant::now();
    eprintln!("bench all: {} {}", exe.display(), args.join(" "));
    let out = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            exe.display(),
            args.join(" "),
            out.status,
            text.trim()
        );
    }
    let line = text.trim().lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(line)
        .with_context(|| format!("{} {}: not one JSON line", exe.display(), args.join(" ")))?;
    eprintln!("bench all:   done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(v)
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// Raw loopback UDP: round trips of 100-byte datagrams to an echo thread, one at a time.
fn udp_rtt(n: usize) -> Result<Value> {
    let echo = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let to = echo.local_addr()?;
    echo.set_read_timeout(Some(Duration::from_secs(2)))?;
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((len, from)) = echo.recv_from(&mut buf) {
            if echo.send_to(&buf[..len], from).is_err() || buf[..len].starts_with(b"stop") {
                break;
            }
        }
    });
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let msg = [7u8; 100];
    let mut buf = [0u8; 2048];
    let mut rtt = Vec::with_capacity(n);
    let t = Instant::now();
    for _ in 0..n {
        let t1 = Instant::now();
        sock.send_to(&msg, to)?;
        sock.recv_from(&mut buf)?;
        rtt.push(t1.elapsed().as_secs_f64() * 1e6);
    }
    let per_s = n as f64 / t.elapsed().as_secs_f64();
    sock.send_to(b"stop", to)?;
    let _ = server.join();
    Ok(json!({
        "round_trips": n,
        "rtt_us_p50": r1(crate::cmd::bench::pct(&mut rtt, 0.5)),
        "rtt_us_p90": r1(crate::cmd::bench::pct(&mut rtt, 0.9)),
        "round_trips_per_s": per_s.round(),
    }))
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One line of the ratio table.
struct Ratio {
    what: String,
    ours: f64,
    theirs: f64,
    unit: &'static str,
    /// The target for ours / theirs, and whether lower is better.
    target: Option<f64>,
    lower_is_better: bool,
    command: String,
}

impl Ratio {
    fn json(&self) -> Value {
        let ratio = self.ours / self.theirs;
        let met = self.target.map(|t| {
            if self.lower_is_better {
                ratio <= t
            } else {
                ratio >= t
            }
        });
        json!({
            "what": self.what, "ours": self.ours, "alternative": self.theirs, "unit": self.unit,
            "ratio": if ratio.is_finite() { json!(r3(ratio)) } else { Value::Null },
            "target": self.target.map(|t| format!("{} {t}", if self.lower_is_better { "<=" } else { ">=" })),
            "met": met, "command": self.command,
        })
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

pub(crate) fn run(a: AllArgs) -> Result<()> {
    if !(10..=2000).contains(&a.nodes) {
        bail!("--nodes = {} is out of range: 10 to 2000", a.nodes);
    }
    if !(1..=100_000).contains(&a.ops) {
        bail!("--ops = {} is out of range: 1 to 100000", a.ops);
    }
    if a.joins > 1000 {
        bail!("--joins = {} is out of range: 0 to 1000", a.joins);
    }
    let sim_max = a.sim_max.unwrap_or(if a.quick { 10_000 } else { 100_000 });
    if !(10..=100_000).contains(&sim_max) {
        bail!("--sim-max = {sim_max} is out of range: 10 to 100000");
    }
    let t0 = Instant::now();
    let secs = if a.quick { 1.0 } else { 3.0 };
    let (n, ops, joins) = (a.nodes, a.ops, a.joins);

    // 1. Physical limits.
    eprintln!("bench all: raw crypto, raw loopback UDP, signed PING rate");
    let crypto = crate::cmd::bench::raw_crypto(secs);
    let udp = udp_rtt(if a.quick { 2000 } else { 20_000 })?;
    let pair_rate = f(&crypto["sign_verify_pairs_per_s"]);
    let ping = crate::cmd::bench::ping_rate(secs, pair_rate)?;

    // 2. Native networks, ours then libp2p-kad's.
    let native = |transport: &str, quorum: usize| -> Result<(String, Value)> {
        let cmd = format!(
            "bench native --network-only --transport {transport} --quorum {quorum} --nodes {n} --ops {ops} --joins {joins} --json"
        );
        Ok((format!("kad {cmd}"), kad(&args(&cmd))?["network"].take()))
    };
    let (udp_all_cmd, udp_all) = native("udp", 0)?;
    let (udp_one_cmd, udp_one) = native("udp", 1)?;
    let (quic_one_cmd, quic_one) = native("quic", 1)?;
    let libp2p_args = format!("--nodes {n} --ops {ops} --joins {joins} --json");
    let libp2p_cmd =
        format!("cargo run --release --manifest-path cli/libp2p-bench/Cargo.toml -- {libp2p_args}");
    let libp2p = if a.libp2p || a.libp2p_bin.is_some() {
        let bin = match &a.libp2p_bin {
            Some(b) => b.clone(),
            None => build_libp2p()?,
        };
        Some(run_json(&bin, &args(&libp2p_args))?)
    } else {
        None
    };

    // 3. The other benchmarks.
    let sub = |name: &str, quick: &str| -> Result<(String, Value)> {
        let cmd = if a.quick {
            format!("bench {name} {quick} --json")
        } else {
            format!("bench {name} --json")
        };
        Ok((format!("kad {cmd}"), kad(&args(&cmd))?))
    };
    let (mainline_cmd, mainline) = sub(
        "mainline",
        "--nodes 12 --ops 5 --fresh 1 --secs 0.5 --table 100",
    )?;
    let (transports_cmd, transports) = sub(
        "transports",
        "--kinds udp,quic,ws,wss --secs 0.3 --idle 50 --ws-connections 500",
    )?;
    let (storage_cmd, storage) = sub(
        "storage",
        "--nodes 6 --mb 4 --udp-mb 1 --small-mb 0.1 --store-secs 0.3",
    )?;
    let (pubsub_cmd, pubsub) = sub("pubsub", "--nodes 6 --subscribers 10 --readings 10")?;

    // 4. Hops and latency against network size, in the simulator.
    let mut sim = Vec::new();
    let mut size = 10;
    while size <= sim_max {
        let lookups = if size >= 100_000 { 500 } else { 1000 };
        let cmd = format!("sim --nodes {size} --lookups {lookups} --json");
        let r = kad(&args(&cmd))?;
        sim.push(json!({"nodes": size, "command": format!("kad {cmd}"),
            "hops_p50": r["hops_p50"], "hops_p90": r["hops_p90"], "hops_max": r["hops_max"],
            "rpcs_p50": r["rpcs_per_lookup_p50"], "latency_ms_p50": r["latency_ms_p50"],
            "success_rate": r["success_rate"], "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"]}));
        size *= 10;
    }

    // The ratios.
    let mut ratios = Vec::new();
    ratios.push(Ratio {
        what: "signed PINGs (protocol version 1) answered by a kad node process, against the raw \
               sign+verify bound"
            .into(),
        ours: f(&ping["signed_v1"]["pings_per_s"]),
        theirs: pair_rate,
        unit: "per s",
        target: Some(0.7),
        lower_is_better: false,
        command: "kad bench native --json (parts 1 and 2)".into(),
    });
    ratios.push(Ratio {
        what: "PINGs from a known peer (version 2, MAC'd both ways) answered by a kad node \
               process one at a time, against raw loopback UDP round trips one at a time"
            .into(),
        ours: f(&ping["round_trips_per_s"]),
        theirs: f(&udp["round_trips_per_s"]),
        unit: "per s",
        target: Some(0.5),
        lower_is_better: false,
        command: "kad bench native --json (part 2)".into(),
    });
    if let Some(l) = &libp2p {
        // Over QUIC, then ours over UDP, our default transport.
        for (ours, ours_label, ours_cmd) in [
            (&quic_one, "QUIC", &quic_one_cmd),
            (&udp_one, "UDP", &udp_one_cmd),
        ] {
            // The targets, as ratios to libp2p-kad over QUIC: (UDP, QUIC).
            for (what, key, theirs_key, (udp_target, quic_target)) in [
                (
                    "put latency p50, first store (libp2p Quorum::One)",
                    "put_ms_p50",
                    "put_ms_p50",
                    (Some(0.5), Some(0.7)),
                ),
                (
                    "get latency p50",
                    "get_ms_p50",
                    "get_ms_p50",
                    (Some(0.8), None),
                ),
                (
                    "CPU per put (whole process: every node, both ends)",
                    "put_cpu_ms_per_op",
                    "put_cpu_ms_per_op",
                    (Some(0.25), Some(0.5)),
                ),
                (
                    "CPU per get",
                    "get_cpu_ms_per_op",
                    "get_cpu_ms_per_op",
                    (Some(0.5), None),
                ),
                (
                    "memory per node (process RSS / nodes)",
                    "rss_mb_per_node",
                    "rss_mb_per_node",
                    (None, Some(0.25)),
                ),
                (
                    "a fresh node: join + get, p50",
                    "fresh_join_plus_get_ms_p50",
                    "join_plus_get_ms_p50",
                    (None, None),
                ),
            ] {
                let target = if ours_label == "QUIC" {
                    quic_target
                } else {
                    udp_target
                };
                ratios.push(Ratio {
                    what: format!(
                        "{n} nodes, ours over {ours_label} against libp2p-kad over QUIC: {what}"
                    ),
                    ours: f(&ours[key]),
                    theirs: f(&l[theirs_key]),
                    unit: if key.contains("rss") { "MB" } else { "ms" },
                    target,
                    lower_is_better: true,
                    command: format!("{ours_cmd}; {libp2p_cmd}"),
                });
            }
        }
    }
    let lat = &mainline["latency"];
    for (mode, label) in [
        ("long_running", "long-running node"),
        ("fresh_process", "fresh process"),
    ] {
        for op in [
            "put_mutable",
            "get_mutable",
            "put_immutable",
            "get_immutable",
        ] {
            ratios.push(Ratio {
                what: format!("Mainline {op} p50, {label}: ours against the mainline crate"),
                ours: f(&lat["ours"][mode][op]["p50_ms"]),
                theirs: f(&lat["mainline_crate"][mode][op]["p50_ms"]),
                unit: "ms",
                target: Some(1.0),
                lower_is_better: true,
                command: mainline_cmd.clone(),
            });
        }
    }
    let tp = &mainline["throughput"];
    for q in ["ping", "find_node", "get"] {
        ratios.push(Ratio {
            what: format!("Mainline server: {q} answered per s, ours against the mainline crate"),
            ours: f(&tp["ours"][q]["per_s"]),
            theirs: f(&tp["mainline_crate"][q]["per_s"]),
            unit: "per s",
            target: Some(1.0),
            lower_is_better: false,
            command: mainline_cmd.clone(),
        });
    }
    let ratios: Vec<Value> = ratios.iter().map(Ratio::json).collect();

    let report = json!({
        "bench": "all",
        "quick": a.quick,
        "machine": {"cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(0)},
        "ratios": ratios,
        "limits": {"crypto": crypto, "udp": udp, "ping": ping},
        "native": {
            "ours_udp_all_stores": {"command": udp_all_cmd, "result": udp_all},
            "ours_udp_first_store": {"command": udp_one_cmd, "result": udp_one},
            "ours_quic_first_store": {"command": quic_one_cmd, "result": quic_one},
            "libp2p_kad_quic": libp2p.as_ref().map(|l| json!({"command": libp2p_cmd, "result": l})),
        },
        "mainline": {"command": mainline_cmd, "result": mainline},
        "transports": {"command": transports_cmd, "result": transports},
        "storage": {"command": storage_cmd, "result": storage},
        "pubsub": {"command": pubsub_cmd, "result": pubsub},
        "sim": sim,
        "wall_s": r1(t0.elapsed().as_secs_f64()),
    });
    if let Some(p) = &a.plot {
        std::fs::write(p, crate::plot::svg(&report))
            .with_context(|| format!("--plot {}: cannot write it", p.display()))?;
        eprintln!("bench all: plot written to {}", p.display());
    }
    emit(a.json, &report, || table(&report));
    Ok(())
}

/// The ratios as a text table.
fn table(r: &Value) -> String {
    let mut t = String::from("ratio (ours / alternative)  target  met  what\n");
    for x in r["ratios"].as_array().into_iter().flatten() {
        t += &format!(
            "{:>8} {:>12} {:>6}  {} ({} {} against {})\n          {}\n",
            x["ratio"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.3}")),
            x["target"].as_str().unwrap_or("-"),
            match x["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            },
            x["what"].as_str().unwrap_or(""),
            x["ours"],
            x["unit"].as_str().unwrap_or(""),
            x["alternative"],
            x["command"].as_str().unwrap_or("")
        );
    }
    t += "\nsimulated lookups (k = 20, alpha = 3, 100 ms RTT):\n";
    for s in r["sim"].as_array().into_iter().flatten() {
        t += &format!(
            "  {:>6} nodes: hops p50 {} p90 {}, {} RPCs, {} ms p50, success {}\n",
            s["nodes"],
            s["hops_p50"],
            s["hops_p90"],
            s["rpcs_p50"],
            s["latency_ms_p50"],
            s["success_rate"]
        );
    }
    t += &format!("\nwall time {} s; --json prints every figure", r["wall_s"]);
    t
}

/// Builds the libp2p-kad harness (outside the workspace) and returns its executable.
fn build_libp2p() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("libp2p-bench");
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() {
        bail!(
            "--libp2p: {} is missing (run from a clone of the repository, or give --libp2p-bin)",
            manifest.display()
        );
    }
    eprintln!("bench all: building the libp2p-kad harness (cargo build --release)");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--manifest-path"])
        .arg(&manifest)
        .status()
        .context("running cargo to build cli/libp2p-bench")?;
    if !status.success() {
        bail!("--libp2p: building cli/libp2p-bench failed ({status})");
    }
    let bin = dir.join("target/release/libp2p-bench");
    if !bin.exists() {
        bail!("--libp2p: {} was not built", bin.display());
    }
    Ok(bin)
}
