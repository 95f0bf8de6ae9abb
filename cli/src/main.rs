//! `kad`: the command-line tool of the kad framework.
//!
//! Run `kad --help` for the commands, `kad COMMAND --help` for each command's flags.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod cmd;
mod net;
mod plot;
mod server;
mod storage;
mod transports;

use cmd::sim::{SimArgs, SimScenario};
use cmd::{bench, client, demo, mainline, nat, node, sensor, soak};

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
    Node(node::NodeArgs),
    /// NAT traversal: `kad nat status` reports the UPnP gateway, its external IP and port
    /// mappings and, with --bootstrap, the external address peers see and whether they can
    /// reach it.
    #[command(subcommand)]
    Nat(nat::NatCommand),
    /// Ping a node at an address and print its id and the round-trip time.
    Ping(client::PingArgs),
    /// Print the node id of a key file (creating the file with a fresh key if it is missing),
    /// e.g. a client's id for `kad node --pin-from`.
    Id(client::IdArgs),
    /// Find the k nodes closest to an id: prints them with hops, RPCs and elapsed time.
    Lookup(client::LookupArgs),
    /// Store a value (content-addressed: its key is RIPEMD-160(SHA-256(value))), a named record
    /// (--key), or a whole file (--file, optionally --encrypt or --shares T/N).
    ///
    /// Prints the key (or the capability, or the shares), how many nodes stored it and the
    /// elapsed time. Fails (status 2) when no node stored a record.
    Put(client::PutArgs),
    /// Fetch the record stored under a key, or with --out the whole file (verified chunk by
    /// chunk, decrypted with a capability or --share). Exit status 1 when it is not found.
    Get(client::GetArgs),
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
    /// A long run of real `kad` processes on a realistic network (needs root: it builds network
    /// namespaces): two sites a shaped link apart (--rtt-ms, --jitter-ms, --loss), nodes on UDP
    /// and QUIC with data directories, a steady workload of puts, gets, files (one pinned with a
    /// TTL shorter than the run) and sensor readings to subscribers (one killed and brought
    /// back with --since), kill -9 and restart of --kill-fraction of the nodes every
    /// --kill-every minutes, then requesters that never answer. Prints one JSON report:
    /// records_retrievable, pinned_retrievable_after_ttl, readings_delivered, history_replayed,
    /// forged_contacts_handed_out, rss_growth_second_half, panics, nodes, minutes, kills.
    /// --quick is the CI-sized run (about 5 minutes).
    Soak(soak::SoakArgs),
}

/// Large buffers (a 750 KiB chunk, base64-encoded once per peer it goes to) come and go in
/// bursts, such as a republish round. glibc raises its mmap threshold to the largest block
/// freed, so after the first burst such buffers come from the heap, and the heap's high-water
/// mark stays resident: a long-running node's RSS climbs a step with each burst. A fixed
/// threshold keeps every block of 256 KiB or more in its own mapping, returned when freed. A
/// threshold given in the environment (`MALLOC_MMAP_THRESHOLD_`) is left as it is.
fn fixed_mmap_threshold() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; called first thing in main, before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

fn main() -> std::process::ExitCode {
    fixed_mmap_threshold();
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
        Command::Id(a) => a.json,
        Command::Lookup(a) => a.client.json,
        Command::Put(a) => a.client.json,
        Command::Get(a) => a.client.json,
        Command::Bench(b) => b.json(),
        Command::Soak(a) => a.json,
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
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    }
    let r = match cli.command {
        Command::Sim(SimArgs {
            scenario: Some(SimScenario::Pubsub(p)),
            ..
        }) => bench::pubsub::sim(p).map(|()| None),
        Command::Sim(SimArgs {
            scenario: Some(SimScenario::Churn(c)),
            ..
        }) => cmd::sim::churn::run(c).map(|()| None),
        Command::Sim(SimArgs {
            scenario: Some(SimScenario::Sybil(c)),
            ..
        }) => cmd::sim::sybil::run(c).map(|()| None),
        Command::Sim(a) => cmd::sim::run(a).map(|()| None),
        Command::Id(a) => client::id(a).map(|()| None),
        Command::Soak(a) => soak::run(a).map(|()| None),
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
            Command::Node(a) => node::node(a).await.map(|()| None),
            Command::Demo(a) => demo::run(a).await.map(|()| None),
            Command::Nat(c) => nat::run(c).await.map(|()| None),
            Command::Ping(a) => client::ping(a).await.map(|()| None),
            Command::Lookup(a) => client::lookup(a).await.map(|()| None),
            Command::Put(a) => client::put(a).await.map(|()| None),
            Command::Get(a) => client::get(a).await,
            Command::Mainline(m) => Ok(Some(mainline::run(m).await)),
            Command::Sensor(c) => sensor::sensor(c).await.map(|()| None),
            Command::Pubsub(c) => sensor::pubsub(c).await.map(|()| None),
            Command::Sim(_) | Command::Bench(_) | Command::Id(_) | Command::Soak(_) => {
                unreachable!("handled synchronously")
            }
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
