//! `kad sim sybil`: colluding adversaries try to eclipse lookups; each defence measured with
//! and without.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use kad_sim::LinkModel;
use kad_sim::sybil::{Defence, SybilScenario, run_sybil_scenario};

use crate::check_range;

#[derive(Args, Debug)]
pub(crate) struct SimSybilArgs {
    /// Nodes in the network, adversaries included. 20 to 100000.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Fraction of the nodes that are adversaries: they answer every FIND_NODE and FIND_VALUE
    /// with the closest adversaries only, never with a value, and acknowledge and drop every
    /// STORE. 0 to 0.9.
    #[arg(long, default_value_t = 0.2)]
    adversaries: f64,
    /// Subnets (/24s) the adversaries share, as a rented block of addresses would; 0: each
    /// adversary in a subnet of its own (per-subnet limits cannot tell them apart). 0 to 65536.
    #[arg(long, default_value_t = 4)]
    adversary_subnets: u32,
    /// FIND_NODE lookups from random honest nodes for random targets, per setting. 1 to 100000.
    #[arg(long, default_value_t = 300)]
    lookups: usize,
    /// Records put by honest nodes and fetched once each by another honest node, per setting.
    /// 0 to 100000.
    #[arg(long, default_value_t = 100)]
    records: usize,
    /// Bucket size. 1 to 256.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Lookup parallelism. 1 to 64.
    #[arg(long, default_value_t = 3)]
    alpha: usize,
    /// Targeted eclipse: the adversaries take ids sharing their first 20 bits with one of the
    /// first records' keys (k around each key, as grinding about 2^20 key pairs an id would
    /// give; an id cost of b bits makes that 2^(20+b)), instead of random ids. The report adds
    /// the gets of those keys.
    #[arg(long)]
    targeted: bool,
    /// Distinct random earlier nodes each node joins through, as a deployment's list of
    /// bootstrap nodes. With 1, a node whose only seed is an adversary is eclipsed from the
    /// start. 1 to 16.
    #[arg(long, default_value_t = 3)]
    bootstrap_seeds: usize,
    /// Disjoint paths per lookup in the settings that use them. 2 to 16, at most --k.
    #[arg(long, default_value_t = 4)]
    paths: usize,
    /// Most contacts per subnet per bucket and per lookup in the settings that use the limit.
    /// 1 to 256.
    #[arg(long, default_value_t = 2)]
    subnet_limit: usize,
    /// Defence settings to run, comma-separated, each on a network of its own: none,
    /// disjoint_paths, subnet_limit, all.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,disjoint_paths,subnet_limit,all"
    )]
    defences: Vec<String>,
    /// Round-trip time of every link, ms (one-way delay is half). 0 to 10000.
    #[arg(long, default_value_t = 100.0)]
    rtt_ms: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print exactly one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn run(a: SimSybilArgs) -> Result<()> {
    check_range("nodes", a.nodes, 20, 100_000)?;
    check_range("adversaries", a.adversaries, 0.0, 0.9)?;
    check_range("adversary-subnets", a.adversary_subnets, 0, 65_536)?;
    check_range("lookups", a.lookups, 1, 100_000)?;
    check_range("records", a.records, 0, 100_000)?;
    check_range("k", a.k, 1, 256)?;
    check_range("alpha", a.alpha, 1, 64)?;
    check_range("bootstrap-seeds", a.bootstrap_seeds, 1, 16)?;
    check_range("paths", a.paths, 2, 16)?;
    if a.paths > a.k {
        bail!(
            "--paths = {} is out of range: at most --k = {}",
            a.paths,
            a.k
        );
    }
    check_range("subnet-limit", a.subnet_limit, 1, 256)?;
    check_range("rtt-ms", a.rtt_ms, 0.0, 10_000.0)?;
    let mut defences = Vec::new();
    for d in &a.defences {
        match Defence::from_name(d.trim()) {
            Some(x) => defences.push(x),
            None => bail!(
                "--defences: unknown setting {d:?} (known: none, disjoint_paths, subnet_limit, all)"
            ),
        }
    }
    if defences.is_empty() {
        bail!("--defences: at least one setting");
    }

    let mut sc = SybilScenario::default();
    sc.nodes = a.nodes;
    sc.adversary_fraction = a.adversaries;
    sc.adversary_subnets = a.adversary_subnets;
    sc.lookups = a.lookups;
    sc.records = a.records;
    sc.k = a.k;
    sc.alpha = a.alpha;
    sc.bootstrap_seeds = a.bootstrap_seeds;
    sc.disjoint_paths = a.paths;
    sc.subnet_limit = a.subnet_limit;
    sc.defences = defences;
    sc.targeted = a.targeted;
    let mut link = LinkModel::default();
    link.latency = Duration::from_secs_f64(a.rtt_ms / 2000.0);
    sc.link = link;
    sc.seed = a.seed;

    let bar = crate::progress_bar(
        a.json,
        1,
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
    )?;
    let t0 = Instant::now();
    let r = run_sybil_scenario(&sc, |d, done, total| {
        bar.set_message(d.name());
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let wall_s = t0.elapsed().as_secs_f64();
    let mut v = serde_json::to_value(&r).context("serialising the report")?;
    if let Some(o) = v.as_object_mut() {
        o.insert("adversary_fraction".into(), a.adversaries.into());
        o.insert("rtt_ms".into(), a.rtt_ms.into());
        o.insert("wall_s".into(), ((wall_s * 1000.0).round() / 1000.0).into());
    }
    if a.json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let targeted = if r.targeted {
        ", with ids chosen around record keys"
    } else {
        ""
    };
    let subnets = if r.adversary_subnets == 0 {
        "each in its own subnet".to_string()
    } else {
        format!("in {} shared subnets", r.adversary_subnets)
    };
    println!(
        "{} nodes, {} adversaries {subnets}{targeted}; each joined through {} nodes; k={}, alpha={}, seed {}",
        r.nodes, r.adversaries, r.bootstrap_seeds, r.k, r.alpha, r.seed
    );
    println!();
    println!(
        "{:<15} {:>5} {:>6} {:>9} {:>9} {:>8} {:>10} {:>9} {:>6} {:>8} {:>10}",
        "defence",
        "paths",
        "subnet",
        "lookups",
        "gets",
        "holders",
        "adv.table",
        "unknown",
        "rpcs",
        "lat ms",
        "unfinished"
    );
    for run in &r.runs {
        println!(
            "{:<15} {:>5} {:>6} {:>8.1}% {:>8.1}% {:>8.1} {:>9.1}% {:>8.1}% {:>6} {:>8.0} {:>10}",
            run.defence.name(),
            run.disjoint_paths,
            run.subnet_limit,
            run.lookup_success * 100.0,
            run.get_success * 100.0,
            run.put_honest_holders_mean,
            run.adversaries_in_tables * 100.0,
            run.honest_unknown * 100.0,
            run.rpcs_per_lookup_p50,
            run.latency_ms_p50,
            run.unfinished
        );
    }
    if r.targeted {
        println!();
        for run in &r.runs {
            println!(
                "{:<15} gets of the {} surrounded keys: {:.1}%",
                run.defence.name(),
                run.targeted_gets,
                run.targeted_get_success * 100.0
            );
        }
    }
    println!();
    println!(
        "lookups: result holds the true closest honest node; gets: the value came back; holders:\n\
         honest nodes keeping each record after its put; adv.table: adversaries' share of honest\n\
         routing tables; unknown: honest nodes in no honest routing table. wall {wall_s:.1} s"
    );
    Ok(())
}
