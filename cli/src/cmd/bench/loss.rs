//! `kad bench loss`: real `kad node` processes in two network namespaces joined by a veth pair,
//! every datagram that enters a namespace dropped with the probability under test (nftables
//! `numgen random` in the input hook), puts through a node of the first namespace and gets
//! through a node of the second; beside each rate, the simulator's lookup success for the same
//! loss and node count.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::{Value, json};

/// `kad bench loss` flags.
#[derive(Args, Debug)]
pub(crate) struct LossBenchArgs {
    /// Loss rates to measure, in percent of the datagrams entering each namespace,
    /// comma-separated (0 to 50).
    #[arg(
        long,
        default_value = "0,2,5,10,20",
        value_delimiter = ',',
        value_name = "PCTS"
    )]
    rates: Vec<u32>,
    /// `kad node` processes in each of the two namespaces (1 to 20).
    #[arg(long, default_value_t = 5, value_name = "N")]
    nodes_per_ns: usize,
    /// Values put (then got) per rate (1 to 200).
    #[arg(long, default_value_t = 10, value_name = "N")]
    ops: usize,
    /// Seconds the nodes get to join before the puts start (they keep retrying meanwhile).
    #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
    settle: f64,
    /// Keep each `kad` process's log (standard error) in a file of its own under DIR, named
    /// by start order, role and namespace; the log level follows RUST_LOG (e.g.
    /// `RUST_LOG=debug`). Without it, the processes' logs are discarded.
    #[arg(long, value_name = "DIR")]
    logs: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

const NET: &str = "10.213.0";

/// Two namespaces and the processes started in them; torn down (processes killed by PID,
/// namespaces deleted) when dropped.
struct Lab {
    a: String,
    b: String,
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lab {
    fn up(loss_pct: u32) -> Result<Self> {
        let tag = format!("kl{}", std::process::id() % 100_000);
        let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
        let _ = Command::new("ip").args(["netns", "del", &a]).output();
        let _ = Command::new("ip").args(["netns", "del", &b]).output();
        ip(&["netns", "add", &a]).context(
            "kad bench loss builds network namespaces: it needs root and iproute2 (ip netns add)",
        )?;
        let lab = Self {
            a: a.clone(),
            b: b.clone(),
            children: Vec::new(),
        };
        ip(&["netns", "add", &b])?;
        ip(&[
            "-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b,
        ])?;
        for (ns, dev, addr) in [
            (&a, "va", format!("{NET}.1/24")),
            (&b, "vb", format!("{NET}.2/24")),
        ] {
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            if loss_pct > 0 {
                let rules = format!(
                    "table inet kadloss {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  meta l4proto udp numgen random mod 100 < {loss_pct} drop\n }}\n}}\n"
                );
                let mut nft = Command::new("ip")
                    .args(["netns", "exec", ns, "nft", "-f", "-"])
                    .stdin(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("running nft (nftables)")?;
                std::io::Write::write_all(
                    nft.stdin.as_mut().context("nft stdin")?,
                    rules.as_bytes(),
                )?;
                drop(nft.stdin.take());
                let out = nft.wait_with_output()?;
                if !out.status.success() {
                    bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
            }
        }
        Ok(lab)
    }

    fn ns(&self, second: bool) -> &str {
        if second { &self.b } else { &self.a }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.a]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).output();
    }
}

/// What one node process said last: its routing-table size, and whether it printed
/// `bootstrap_failed`.
#[derive(Default, Clone)]
pub(super) struct NodeState {
    table: usize,
    bootstrap_failed: bool,
    /// The engine counters of its last stats line.
    pub(super) counters: Value,
    /// The transport counters of its last stats line, by local address.
    pub(super) transports: Value,
}

/// Where the `kad` processes of a benchmark write their logs (`--logs`): unset, they are
/// discarded.
static LOG_DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
/// Numbers the log files of one run, in start order.
static LOG_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Keeps the standard error of every `kad` process this benchmark starts in `dir`, one file
/// each, named by start order, role and namespace.
pub(crate) fn keep_logs(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--logs: creating {}", dir.display()))?;
    let _ = LOG_DIR.set(dir.to_owned());
    Ok(())
}

/// A process's standard error: a new file under `--logs`, else nothing.
fn stderr_for(role: &str, ns: &str) -> Stdio {
    let Some(dir) = LOG_DIR.get() else {
        return Stdio::null();
    };
    let n = LOG_SEQ.fetch_add(1, Ordering::Relaxed);
    let role: String = role
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    match std::fs::File::create(dir.join(format!("{n:04}-{role}-{ns}.log"))) {
        Ok(f) => f.into(),
        Err(_) => Stdio::null(),
    }
}

/// Starts `kad node --listen LISTEN` in namespace `ns` for `secs` seconds; the child joins
/// `children` (killed by the caller). Its JSON lines are read into the returned state.
pub(super) fn start_node(
    children: &mut Vec<Child>,
    exe: &std::path::Path,
    ns: &str,
    listen: &str,
    boot: Option<&str>,
    secs: f64,
) -> Result<Arc<Mutex<NodeState>>> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(exe).args([
        "node",
        "--listen",
        listen,
        "--json",
        "--stats-every",
        "1",
        "--for",
        &secs.to_string(),
    ]);
    if let Some(b) = boot {
        cmd.args(["--bootstrap", b]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr_for("node", ns))
        .spawn()
        .context("starting kad node")?;
    let out = child.stdout.take().context("stdout")?;
    children.push(child);
    let state = Arc::new(Mutex::new(NodeState::default()));
    let s = state.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let mut st = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match v["event"].as_str() {
                Some("stats") => {
                    st.table = v["routing_table"].as_u64().unwrap_or(0) as usize;
                    st.counters = v["stats"].clone();
                    st.transports = v["transports"].clone();
                }
                Some("bootstrap_failed") => st.bootstrap_failed = true,
                _ => {}
            }
        }
    });
    Ok(state)
}

/// Nodes whose routing table is not empty.
pub(super) fn joined(nodes: &[Arc<Mutex<NodeState>>]) -> usize {
    nodes
        .iter()
        .filter(|s| s.lock().map(|s| s.table > 0).unwrap_or(false))
        .count()
}

/// Waits until every node has joined (then 2 s more, for the last joins to spread) or `settle`
/// seconds from `t0`; the seconds it took all of them, if they did.
pub(super) fn wait_joined(
    nodes: &[Arc<Mutex<NodeState>>],
    t0: Instant,
    settle: f64,
) -> Option<f64> {
    while t0.elapsed() < Duration::from_secs_f64(settle) {
        if joined(nodes) == nodes.len() {
            let s = t0.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_secs(2));
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Runs a one-shot client command in a namespace; its last stdout line as JSON.
pub(crate) fn client(ns: &str, exe: &std::path::Path, args: &[&str]) -> Result<Value> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(args)
        .stderr(stderr_for(args.first().copied().unwrap_or("client"), ns))
        .output()
        .context("running a kad client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| json!({"ok": false, "error": format!("exit {:?}", out.status.code())})))
}

fn one_rate(a: &LossBenchArgs, loss: u32) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let mut lab = Lab::up(loss)?;
    let n = a.nodes_per_ns;
    let life = a.settle + a.ops as f64 * 70.0 + 30.0;
    let boot = format!("udp://{NET}.1:4000");
    let mut nodes = Vec::new();
    for second in [false, true] {
        for i in 0..n {
            let port = 4000 + 2 * i as u16;
            let first = !second && i == 0;
            let b = (!first).then_some(boot.as_str());
            let ns = lab.ns(second).to_owned();
            let ip = format!("{NET}.{}", 1 + u8::from(second));
            let listen = format!("udp://{ip}:{port},quic://{ip}:{}", port + 1);
            nodes.push(start_node(&mut lab.children, &exe, &ns, &listen, b, life)?);
        }
    }
    // Joined: a routing table that is not empty. Wait for all, or --settle.
    let t0 = Instant::now();
    let all_joined_s = wait_joined(&nodes, t0, a.settle);
    let joined_n = joined(&nodes);
    let failed_events = nodes
        .iter()
        .filter(|s| s.lock().map(|s| s.bootstrap_failed).unwrap_or(false))
        .count();
    let put_via = format!("udp://{NET}.1:4002");
    let get_via = format!("udp://{NET}.2:4000");
    let (mut stored, mut put_ok, mut found, mut get_ms) = (Vec::new(), 0, 0, Vec::new());
    let tag = format!("{}-{loss}", std::process::id());
    for i in 0..a.ops {
        let value = format!("kad bench loss {tag} value {i}");
        let p = client(
            lab.ns(false),
            &exe,
            &[
                "put",
                &value,
                "--bootstrap",
                &put_via,
                "--json",
                "--timeout",
                "30",
            ],
        )?;
        let Some(key) = p["key"].as_str().map(str::to_owned) else {
            stored.push(0);
            continue;
        };
        put_ok += 1;
        stored.push(p["stored"].as_u64().unwrap_or(0));
        let g = client(
            lab.ns(true),
            &exe,
            &[
                "get",
                &key,
                "--bootstrap",
                &get_via,
                "--json",
                "--timeout",
                "30",
            ],
        )?;
        if g["value"].as_str() == Some(value.as_str()) {
            found += 1;
            get_ms.push(g["elapsed_ms"].as_f64().unwrap_or(0.0));
        }
    }
    drop(lab);
    stored.sort_unstable();
    let mut sc = kad_sim::LookupScenario::default();
    sc.nodes = 2 * n;
    sc.lookups = 500;
    sc.link.loss = f64::from(loss) / 100.0;
    let sim = kad_sim::run_lookup_scenario(&sc, |_, _| {});
    Ok(json!({
        "loss_pct": loss,
        "nodes": 2 * n,
        "joined": joined_n,
        "all_joined_s": all_joined_s,
        "printed_bootstrap_failed": failed_events,
        "puts": a.ops,
        "puts_ok": put_ok,
        "stored_min": stored.first().copied().unwrap_or(0),
        "stored_median": stored.get(stored.len() / 2).copied().unwrap_or(0),
        "gets": a.ops,
        "found": found,
        "found_rate": found as f64 / a.ops as f64,
        "get_ms_p50": crate::cmd::bench::pct(&mut get_ms.clone(), 0.5),
        "get_ms_p90": crate::cmd::bench::pct(&mut get_ms, 0.9),
        "sim_lookup_success": sim.success_rate,
    }))
}

pub(crate) fn run(a: LossBenchArgs) -> Result<()> {
    if let Some(dir) = &a.logs {
        keep_logs(dir)?;
    }
    crate::check_range("nodes-per-ns", a.nodes_per_ns, 1, 20)?;
    crate::check_range("ops", a.ops, 1, 200)?;
    for &r in &a.rates {
        crate::check_range("rates", r, 0, 50)?;
    }
    if !(1.0..=600.0).contains(&a.settle) {
        bail!("--settle = {} is out of range: 1 to 600 seconds", a.settle);
    }
    let mut runs = Vec::new();
    for &loss in &a.rates {
        let r = one_rate(&a, loss)?;
        if !a.json {
            println!(
                "loss {:>2}%: {}/{} nodes joined, puts {}/{} (stored median {}), gets found {}/{} (p50 {} ms), simulator lookups {:.1}%",
                loss,
                r["joined"],
                r["nodes"],
                r["puts_ok"],
                r["puts"],
                r["stored_median"],
                r["found"],
                r["gets"],
                r["get_ms_p50"],
                r["sim_lookup_success"].as_f64().unwrap_or(0.0) * 100.0
            );
        }
        runs.push(r);
    }
    if a.json {
        println!("{}", json!({"bench": "loss", "runs": runs}));
    }
    Ok(())
}
