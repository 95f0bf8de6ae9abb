//! `kad`: the command-line tool of the kad framework.
//!
//! Run `kad --help` for the commands, `kad COMMAND --help` for each command's flags.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use kad_sim::{LinkModel, LookupScenario, run_lookup_scenario};

mod bench;
mod bench_all;
mod bench_loss;
mod bench_mainline;
mod bench_pubsub;
mod bench_storage;
mod bench_transports;
mod demo;
mod mainline;
mod metrics;
mod nat;
mod net;
mod plot;
mod sensor;
mod sim_churn;
mod sim_sybil;
mod storage;
mod transports;
mod web;

/// A pluggable Kademlia DHT: simulator, nodes and tools.
#[derive(Parser, Debug)]
#[command(name = "kad", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// What to log on stderr: a level (error, warn, info, debug, trace) or per-crate directives
    /// in tracing's EnvFilter syntax, e.g. `info,kad_core=debug,kad_plugin_nat=trace`. `info`
    /// shows nodes starting and NAT changes; `debug` every query (inside a
    /// `node{id=..}:query{kind=.. key=..}` span, with its duration) and refused input; `trace`
    /// every datagram dropped and why. Default: the RUST_LOG variable, else `warn` (nothing
    /// with --json unless --log or RUST_LOG is given).
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Simulate a network on one thread with a virtual clock and run lookups in it.
    ///
    /// Builds a network of --nodes nodes (each joins through a random earlier node), then runs
    /// --lookups FIND_NODE lookups for random targets from random live nodes. A lookup succeeds
    /// when the first live node it returns is the true closest node to the target among those
    /// alive for the whole lookup. Latencies are virtual time. Identical arguments give identical
    /// results (except wall_s and peak_rss_mb). Errors exit with status 2 (with --json, also as
    /// {"ok":false,"error":"..."} on stdout).
    ///
    /// `kad sim pubsub` runs the pub/sub scenario instead: one sensor, many subscribers, optional
    /// churn of the rendezvous nodes (see `kad sim pubsub --help`). `kad sim churn` runs a day
    /// of churn and checks that records put at the start stay retrievable and that per-node
    /// memory stays flat (see `kad sim churn --help`). `kad sim sybil` measures lookups and gets
    /// against colluding adversaries with and without each defence (see `kad sim sybil --help`).
    Sim(SimArgs),
    /// A tour on 127.0.0.1 in about half a minute: starts a local network (30 native nodes over
    /// UDP, QUIC and WebSocket, 6 Mainline-mode nodes), publishes sensor readings to subscribers,
    /// stores an encrypted file whose key is split into shares and fetches it back through
    /// another node, puts and gets a BEP44 item among the Mainline-mode nodes, then prints a
    /// summary table and stops everything it started. Nothing leaves the machine.
    ///
    /// `--web 127.0.0.1:8080` also serves the live chart of the sensor's readings (paced one per
    /// second, about a minute); `--live` does the BEP44 step on the public Mainline DHT instead
    /// (opt-in: it needs internet access).
    Demo(demo::DemoArgs),
    /// Run a node of the native network: signed JSON-RPC 2.0 over UDP, QUIC and WebSocket.
    ///
    /// Prints its contact (id and addresses) once listening, joins through --bootstrap if given,
    /// and serves until Ctrl-C or --for SECONDS, then prints its counters (messages, drops by
    /// reason, routing table size, peak memory).
    Node(net::NodeArgs),
    /// NAT traversal: `kad nat status` reports the UPnP gateway, its external IP and port
    /// mappings and, with --bootstrap, the external address peers see and whether they can
    /// reach it.
    #[command(subcommand)]
    Nat(nat::NatCommand),
    /// Ping a node at an address and print its id and the round-trip time.
    Ping(net::PingArgs),
    /// Find the k nodes closest to an id: prints them with hops, RPCs and elapsed time.
    Lookup(net::LookupArgs),
    /// Store a value (content-addressed: its key is RIPEMD-160(SHA-256(value))), a named record
    /// (--key), or a whole file (--file, optionally --encrypt or --shares T/N).
    ///
    /// Prints the key (or the capability, or the shares), how many nodes stored it and the
    /// elapsed time. Fails (status 2) when no node stored a record.
    Put(net::PutArgs),
    /// Fetch the record stored under a key, or with --out the whole file (verified chunk by
    /// chunk, decrypted with a capability or --share). Exit status 1 when it is not found.
    Get(net::GetArgs),
    /// A BitTorrent Mainline DHT node and one-shot BEP44 clients, each printing one JSON line.
    ///
    /// Errors print {"ok":false,"error":"..."} and exit non-zero (1: not found or not stored,
    /// 2: bad input or failure). Without --bootstrap they use the live network's public routers.
    #[command(subcommand)]
    Mainline(mainline::MainlineCommand),
    /// The DHT-of-Things reference nodes: publish a sensor's signed readings, subscribe to them
    /// (pushed by rendezvous nodes on the native network, polled with --mainline), with an
    /// optional live chart in the browser.
    #[command(subcommand)]
    Sensor(sensor::SensorCommand),
    /// Named topics on the native network: post signed messages, subscribe to them.
    #[command(subcommand)]
    Pubsub(sensor::PubsubCommand),
    /// Benchmarks that print JSON: `kad bench native`, `kad bench mainline`, `kad bench transports`,
    /// `kad bench storage`.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct SimArgs {
    #[command(subcommand)]
    scenario: Option<SimScenario>,
    /// Number of nodes in the network.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Number of lookups to run once the network has formed.
    #[arg(long, default_value_t = 200)]
    lookups: usize,
    /// Bucket size, and how many closest nodes a lookup converges on.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Parallel requests per lookup while it makes progress.
    #[arg(long, default_value_t = 3)]
    alpha: usize,
    /// One-way delay of every link in milliseconds (the round-trip time is twice it).
    #[arg(long, default_value_t = 50.0)]
    latency_ms: f64,
    /// Extra random delay per message, uniform in [0, jitter], in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Probability that any one message is lost (0.0 to 1.0; each direction independently).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Fraction of the nodes that leave without notice during the lookups (as many new ones join).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Seed of every random choice in the simulation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print exactly one JSON object instead of a table and a progress bar.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum SimScenario {
    /// One sensor publishing to many subscribers through rendezvous nodes: delivery rate,
    /// end-to-end latency (ms and round trips), duplicates, and what a late subscriber gets.
    ///
    /// Builds --nodes nodes (all running the pub/sub plugin), subscribes --subscribers of them
    /// to one sensor, publishes --readings readings every --interval-ms, and optionally kills
    /// --churn of the k rendezvous nodes (closest first: the pushers) while readings flow, each
    /// replaced by a newcomer. Same arguments, same result (digest).
    Pubsub(bench_pubsub::SimPubsubArgs),
    /// A day of churn: are the records put at the start still retrievable, and does per-node
    /// memory stay flat?
    ///
    /// Builds --nodes nodes; --owners of them put --records records and stay for the whole run
    /// (republishing every --republish-h); every hour --churn-per-hour of the nodes leave
    /// without notice and as many join. Each hour a sample of keys is fetched (the curve) and
    /// per-node state is summarised with the process's RSS; at the end --readers nodes fetch
    /// every key. Same arguments, same result (digest; not wall_s or the RSS figures).
    Churn(sim_churn::SimChurnArgs),
    /// Sybil and eclipse attacks: a share of the nodes collude (they name only each other, drop
    /// every record and never return a value); how many lookups and gets still succeed, with
    /// and without each defence?
    ///
    /// Grows the same --nodes network once per --defences setting (none, disjoint lookup paths,
    /// per-subnet limits in buckets and lookups, both), with --adversaries of the nodes in
    /// --adversary-subnets shared subnets; honest nodes put --records records, then run
    /// --lookups FIND_NODE lookups and fetch every record. Same arguments, same result (digest).
    Sybil(sim_sybil::SimSybilArgs),
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let mainline = std::env::args().nth(1).as_deref() == Some("mainline");
            if mainline
                && !matches!(
                    e.kind(),
                    ErrorKind::DisplayHelp
                        | ErrorKind::DisplayVersion
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                )
            {
                let msg = e.render().to_string();
                // The message up to the usage line, on one line.
                let text: Vec<&str> = msg
                    .lines()
                    .take_while(|l| !l.starts_with("Usage:"))
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                let text = text.join(" ");
                let text = text.trim_start_matches("error: ");
                println!("{}", serde_json::json!({"ok": false, "error": text}));
                eprint!("{msg}");
                return std::process::ExitCode::from(2);
            }
            e.exit();
        }
    };
    let json = match &cli.command {
        Command::Mainline(_) => true,
        Command::Sim(a) => match &a.scenario {
            Some(SimScenario::Pubsub(p)) => p.json,
            Some(SimScenario::Churn(c)) => c.json,
            Some(SimScenario::Sybil(c)) => c.json,
            None => a.json,
        },
        Command::Sensor(c) => c.json(),
        Command::Pubsub(c) => c.json(),
        Command::Node(a) => a.json,
        Command::Demo(a) => a.json,
        Command::Nat(c) => c.json(),
        Command::Ping(a) => a.client.json,
        Command::Lookup(a) => a.client.json,
        Command::Put(a) => a.client.json,
        Command::Get(a) => a.client.json,
        Command::Bench(b) => b.json(),
    };
    if !json || cli.log.is_some() || std::env::var_os("RUST_LOG").is_some() {
        let filter = match &cli.log {
            Some(f) => match tracing_subscriber::EnvFilter::try_new(f) {
                Ok(filter) => filter,
                Err(e) => {
                    eprintln!(
                        "error: --log {f:?} is not a level (error, warn, info, debug, trace) or a list of directives like info,kad_core=debug: {e}"
                    );
                    std::process::exit(2);
                }
            },
            None => tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let r = match cli.command {
        Command::Sim(SimArgs {
            scenario: Some(SimScenario::Pubsub(p)),
            ..
        }) => bench_pubsub::sim(p).map(|()| None),
        Command::Sim(SimArgs {
            scenario: Some(SimScenario::Churn(c)),
            ..
        }) => sim_churn::run(c).map(|()| None),
        Command::Sim(SimArgs {
            scenario: Some(SimScenario::Sybil(c)),
            ..
        }) => sim_sybil::run(c).map(|()| None),
        Command::Sim(a) => sim(a).map(|()| None),
        Command::Bench(b) => bench::run(b).map(|()| None),
        cmd => async_main(cmd),
    };
    match r {
        Ok(None) => std::process::ExitCode::SUCCESS,
        Ok(Some(code)) => std::process::ExitCode::from(code),
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "error": format!("{e:#}") })
                );
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn async_main(cmd: Command) -> Result<Option<u8>> {
    // A Mainline node is one actor: one thread serves it best (no hand-offs between workers).
    let rt = match cmd {
        Command::Mainline(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .context("starting the tokio runtime")?;
    rt.block_on(async move {
        match cmd {
            Command::Node(a) => net::node(a).await.map(|()| None),
            Command::Demo(a) => demo::run(a).await.map(|()| None),
            Command::Nat(c) => nat::run(c).await.map(|()| None),
            Command::Ping(a) => net::ping(a).await.map(|()| None),
            Command::Lookup(a) => net::lookup(a).await.map(|()| None),
            Command::Put(a) => net::put(a).await.map(|()| None),
            Command::Get(a) => net::get(a).await,
            Command::Mainline(m) => Ok(Some(mainline::run(m).await)),
            Command::Sensor(c) => sensor::sensor(c).await.map(|()| None),
            Command::Pubsub(c) => sensor::pubsub(c).await.map(|()| None),
            Command::Sim(_) | Command::Bench(_) => unreachable!("handled synchronously"),
        }
    })
}

/// Refuses `--field = v` outside `lo..=hi` (NaN included), naming the flag and the limits.
/// A progress bar on stderr for the simulator commands (hidden with --json).
fn progress_bar(hidden: bool, len: u64, template: &str) -> Result<indicatif::ProgressBar> {
    if hidden {
        return Ok(indicatif::ProgressBar::hidden());
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(indicatif::ProgressStyle::with_template(template).context("progress template")?);
    Ok(b)
}

fn check_range<T: PartialOrd + Copy + std::fmt::Display>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<()> {
    if !(lo..=hi).contains(&v) {
        bail!("--{field} = {v} is out of range: it must be between {lo} and {hi}");
    }
    Ok(())
}

fn sim(a: SimArgs) -> Result<()> {
    if a.nodes < 2 {
        bail!(
            "--nodes = {} is out of range: at least 2 nodes are needed",
            a.nodes
        );
    }
    check_range("k", a.k, 1, 256)?;
    check_range("alpha", a.alpha, 1, 64)?;
    check_range("loss", a.loss, 0.0, 0.95)?;
    check_range("churn", a.churn, 0.0, 0.9)?;
    check_range("latency-ms", a.latency_ms, 0.0, 60_000.0)?;
    check_range("jitter-ms", a.jitter_ms, 0.0, 60_000.0)?;
    let sc = {
        let mut sc = LookupScenario::default();
        sc.nodes = a.nodes;
        sc.lookups = a.lookups;
        sc.k = a.k;
        sc.alpha = a.alpha;
        sc.seed = a.seed;
        sc.churn = a.churn;
        let mut link = LinkModel::default();
        link.latency = Duration::from_secs_f64(a.latency_ms / 1000.0);
        link.jitter = Duration::from_secs_f64(a.jitter_ms / 1000.0);
        link.loss = a.loss;
        sc.link = link;
        sc
    };
    let bar = progress_bar(
        a.json,
        (a.nodes + a.lookups) as u64,
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} joins+lookups ({eta})",
    )?;
    let t0 = Instant::now();
    let r = run_lookup_scenario(&sc, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let wall_s = t0.elapsed().as_secs_f64();
    let rss = peak_rss_mb();
    let mut v = serde_json::to_value(&r).context("serialising the report")?;
    if let Some(o) = v.as_object_mut() {
        o.insert("latency_ms".into(), a.latency_ms.into());
        o.insert("jitter_ms".into(), a.jitter_ms.into());
        o.insert("loss".into(), a.loss.into());
        o.insert("churn".into(), a.churn.into());
        o.insert("wall_s".into(), ((wall_s * 1000.0).round() / 1000.0).into());
        o.insert("peak_rss_mb".into(), rss.into());
    }
    if a.json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!(
        "simulated {} nodes, {} lookups (k={}, alpha={}, seed={})",
        r.nodes, r.lookups, r.k, r.alpha, r.seed
    );
    println!(
        "link: {} ms one-way, jitter {} ms, loss {}, churn {}",
        a.latency_ms, a.jitter_ms, a.loss, a.churn
    );
    println!();
    let rows: Vec<(&str, String)> = vec![
        ("success rate", format!("{:.4}", r.success_rate)),
        (
            "hops p50 / p90 / max",
            format!("{} / {} / {}", r.hops_p50, r.hops_p90, r.hops_max),
        ),
        ("RPCs per lookup p50", r.rpcs_per_lookup_p50.to_string()),
        (
            "latency p50 / p90 / p99",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                r.latency_ms_p50, r.latency_ms_p90, r.latency_ms_p99
            ),
        ),
        ("unfinished lookups", r.unfinished.to_string()),
        ("nodes churned", r.churned.to_string()),
        (
            "mean routing table",
            format!("{:.1} contacts", r.routing_table_mean),
        ),
        (
            "messages delivered / lost",
            format!("{} / {}", r.network.delivered, r.network.lost),
        ),
        ("virtual time", format!("{:.1} s", r.virtual_s)),
        ("wall time", format!("{wall_s:.2} s")),
        ("peak RSS", format!("{rss:.0} MB")),
        ("digest", r.digest.clone()),
    ];
    for (k, v) in rows {
        println!("  {k:<28} {v}");
    }
    Ok(())
}

/// Peak resident set size of this process in MB (Linux: VmHWM), 0 where unknown.
pub(crate) fn peak_rss_mb() -> f64 {
    proc_status_mb("self", "VmHWM:")
}

/// A memory field (`VmRSS:`, `VmHWM:`, ...) of /proc/PID/status in MB, 0 where unknown.
pub(crate) fn proc_status_mb(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| (kb / 1024.0 * 10.0).round() / 10.0)
}
