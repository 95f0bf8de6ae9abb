//! `kad sim`: the simulator from the command line (lookups here; churn, Sybil and pub/sub
//! scenarios in their own modules).

pub(crate) mod churn;
pub(crate) mod sybil;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kad_sim::{LinkModel, LookupScenario, run_lookup_scenario};

use crate::{check_range, peak_rss_mb, progress_bar};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct SimArgs {
    #[command(subcommand)]
    pub(crate) scenario: Option<SimScenario>,
    /// Number of nodes in the network.
    #[arg(long, default_value_t = 1000)]
    pub(crate) nodes: usize,
    /// Number of lookups to run once the network has formed.
    #[arg(long, default_value_t = 200)]
    pub(crate) lookups: usize,
    /// Bucket size, and how many closest nodes a lookup converges on.
    #[arg(long, default_value_t = 20)]
    pub(crate) k: usize,
    /// Parallel requests per lookup while it makes progress.
    #[arg(long, default_value_t = 3)]
    pub(crate) alpha: usize,
    /// One-way delay of every link in milliseconds (the round-trip time is twice it).
    #[arg(long, default_value_t = 50.0)]
    pub(crate) latency_ms: f64,
    /// Extra random delay per message, uniform in [0, jitter], in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) jitter_ms: f64,
    /// Probability that any one message is lost (0.0 to 1.0; each direction independently).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) loss: f64,
    /// Fraction of the nodes that leave without notice during the lookups (as many new ones join).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) churn: f64,
    /// Seed of every random choice in the simulation.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Print exactly one JSON object instead of a table and a progress bar.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum SimScenario {
    /// One sensor publishing to many subscribers through rendezvous nodes: delivery rate,
    /// end-to-end latency (ms and round trips), duplicates, and what a late subscriber gets.
    ///
    /// Builds --nodes nodes (all running the pub/sub plugin), subscribes --subscribers of them
    /// to one sensor, publishes --readings readings every --interval-ms, and optionally kills
    /// --churn of the k rendezvous nodes (closest first: the pushers) while readings flow, each
    /// replaced by a newcomer. Same arguments, same result (digest).
    Pubsub(crate::cmd::bench::pubsub::SimPubsubArgs),
    /// A day of churn: are the records put at the start still retrievable, and does per-node
    /// memory stay flat?
    ///
    /// Builds --nodes nodes; --owners of them put --records records and stay for the whole run
    /// (republishing every --republish-h); every hour --churn-per-hour of the nodes leave
    /// without notice and as many join. Each hour a sample of keys is fetched (the curve) and
    /// per-node state is summarised with the process's RSS; at the end --readers nodes fetch
    /// every key. Same arguments, same result (digest; not wall_s or the RSS figures).
    Churn(churn::SimChurnArgs),
    /// Sybil and eclipse attacks: a share of the nodes collude (they name only each other, drop
    /// every record and never return a value); how many lookups and gets still succeed, with
    /// and without each defence?
    ///
    /// Grows the same --nodes network once per --defences setting (none, disjoint lookup paths,
    /// per-subnet limits in buckets and lookups, both), with --adversaries of the nodes in
    /// --adversary-subnets shared subnets; honest nodes put --records records, then run
    /// --lookups FIND_NODE lookups and fetch every record. Same arguments, same result (digest).
    Sybil(sybil::SimSybilArgs),
}

/// `kad sim`: grows a network in the simulator and runs lookups in it.
pub(crate) fn run(a: SimArgs) -> Result<()> {
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
