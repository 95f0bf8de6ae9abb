//! `kad sim churn`: a day of churn in the simulator; are the records put at the start still
//! there, and does per-node memory stay flat?

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use kad_sim::LinkModel;
use kad_sim::churn::{ChurnProgress, ChurnScenario, run_churn_scenario};

use crate::check_range;

#[derive(Args, Debug)]
pub(crate) struct SimChurnArgs {
    /// Nodes in the network, owners included (constant: each one that leaves is replaced).
    /// 10 to 100000.
    #[arg(long, default_value_t = 2000)]
    nodes: usize,
    /// Records put at the start, spread round robin over the owners. 1 to 100000.
    #[arg(long, default_value_t = 500)]
    records: usize,
    /// Virtual hours of churn. 1 to 168.
    #[arg(long, default_value_t = 24)]
    hours: u32,
    /// Fraction of --nodes replaced per hour: they leave without notice, spread evenly over the
    /// hour, and as many fresh nodes join through a random live node. 0 to 1.
    #[arg(long, default_value_t = 0.3)]
    churn_per_hour: f64,
    /// Nodes that put the records and stay for the whole run, republishing them (publishers
    /// are long-lived). 1 to --nodes - 10.
    #[arg(long, default_value_t = 50)]
    owners: usize,
    /// Bucket size: records are stored at the k closest nodes. 1 to 256.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Record time to live, hours (records expire this long after their last publication).
    /// 0.1 to 1000.
    #[arg(long, default_value_t = 24.0)]
    ttl_h: f64,
    /// How often holders re-replicate what they hold to the current k closest, hours.
    /// 0.05 to 1000.
    #[arg(long, default_value_t = 1.0)]
    replicate_h: f64,
    /// How often owners republish their records, hours; keep it below --ttl-h. 0.05 to 1000.
    #[arg(long, default_value_t = 22.0)]
    republish_h: f64,
    /// Keys fetched at each hour from random non-owner nodes (the retrievability curve);
    /// 0 for none. At most --records.
    #[arg(long, default_value_t = 100)]
    sample_keys: usize,
    /// Random non-owner nodes that each fetch every key at the end. 1 to 100.
    #[arg(long, default_value_t = 3)]
    readers: usize,
    /// Round-trip time of every link, ms (one-way delay is half). 0 to 10000.
    #[arg(long, default_value_t = 100.0)]
    rtt_ms: f64,
    /// Probability that any one message is lost (each direction independently). 0 to 0.5.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print exactly one JSON object (with the hourly samples) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The process's resident memory at an hour boundary.
#[derive(serde::Serialize)]
struct RssSample {
    hour: u32,
    live: usize,
    /// VmRSS of the whole process.
    rss_mb: f64,
    /// The simulator's slots of departed nodes (it never reuses an index; each slot keeps
    /// `size_of::<Node>()` bytes): simulator bookkeeping, not engine state.
    dead_slots_mb: f64,
    /// `(rss_mb - dead_slots_mb) / live`, KiB.
    kb_per_live_node: f64,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub(crate) fn run(a: SimChurnArgs) -> Result<()> {
    check_range("nodes", a.nodes, 10, 100_000)?;
    check_range("records", a.records, 1, 100_000)?;
    check_range("hours", a.hours, 1, 168)?;
    check_range("churn-per-hour", a.churn_per_hour, 0.0, 1.0)?;
    if a.owners == 0 || a.owners > a.nodes - 10 {
        bail!(
            "--owners = {} is out of range: it must be between 1 and --nodes - 10 = {}",
            a.owners,
            a.nodes - 10
        );
    }
    check_range("k", a.k, 1, 256)?;
    check_range("ttl-h", a.ttl_h, 0.1, 1000.0)?;
    check_range("replicate-h", a.replicate_h, 0.05, 1000.0)?;
    check_range("republish-h", a.republish_h, 0.05, 1000.0)?;
    if a.sample_keys > a.records {
        bail!(
            "--sample-keys = {} is out of range: it must be between 0 and --records = {}",
            a.sample_keys,
            a.records
        );
    }
    check_range("readers", a.readers, 1, 100)?;
    check_range("rtt-ms", a.rtt_ms, 0.0, 10_000.0)?;
    check_range("loss", a.loss, 0.0, 0.5)?;

    let hours = |h: f64| Duration::from_secs_f64(h * 3600.0);
    let mut sc = ChurnScenario::default();
    sc.nodes = a.nodes;
    sc.records = a.records;
    sc.hours = a.hours;
    sc.churn_per_hour = a.churn_per_hour;
    sc.owners = a.owners;
    sc.k = a.k;
    sc.record_ttl = hours(a.ttl_h);
    sc.replicate_interval = hours(a.replicate_h);
    sc.republish_interval = hours(a.republish_h);
    sc.sample_keys = a.sample_keys;
    sc.readers = a.readers;
    let mut link = LinkModel::default();
    link.latency = Duration::from_secs_f64(a.rtt_ms / 2000.0);
    link.loss = a.loss;
    sc.link = link;
    sc.seed = a.seed;

    let bar = crate::progress_bar(
        a.json,
        a.nodes as u64,
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
    )?;
    let mut rss: Vec<RssSample> = Vec::new();
    let t0 = Instant::now();
    let r = run_churn_scenario(&sc, |p| match p {
        ChurnProgress::Joining { joined, total } => {
            bar.set_message("nodes joined");
            bar.set_length(total as u64);
            bar.set_position(joined as u64);
        }
        ChurnProgress::Hour {
            hour,
            hours,
            live,
            slots,
        } => {
            bar.set_message("virtual hours");
            bar.set_length(u64::from(hours));
            bar.set_position(u64::from(hour));
            let mb = crate::proc_status_mb("self", "VmRSS:");
            let dead = slots.saturating_sub(live) * size_of::<kad_core::Node>();
            let dead_mb = dead as f64 / (1024.0 * 1024.0);
            rss.push(RssSample {
                hour,
                live,
                rss_mb: mb,
                dead_slots_mb: round1(dead_mb),
                kb_per_live_node: round1((mb - dead_mb) * 1024.0 / live.max(1) as f64),
            });
        }
        ChurnProgress::Checking { done, total } => {
            bar.set_message("final gets");
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        _ => {}
    });
    bar.finish_and_clear();
    let wall_s = t0.elapsed().as_secs_f64();
    let rss_at = |h: u32| rss.iter().find(|s| s.hour == h).map_or(0.0, |s| s.rss_mb);
    let per_node_at = |h: u32| {
        rss.iter()
            .find(|s| s.hour == h)
            .map_or(0.0, |s| s.kb_per_live_node)
    };
    let ratio = |end: f64, start: f64| if start > 0.0 { end / start } else { 0.0 };
    let rss_ratio = ratio(rss_at(a.hours), rss_at(1.min(a.hours)));
    let per_node_ratio = ratio(per_node_at(a.hours), per_node_at(1.min(a.hours)));
    let per_node_mid_ratio = ratio(per_node_at(a.hours), per_node_at(a.hours / 2));
    let mut v = serde_json::to_value(&r).context("serialising the report")?;
    if let Some(o) = v.as_object_mut() {
        o.insert("rtt_ms".into(), a.rtt_ms.into());
        o.insert("loss".into(), a.loss.into());
        o.insert("rss_end_over_hour1".into(), rss_ratio.into());
        o.insert(
            "rss_per_live_node_end_over_hour1".into(),
            per_node_ratio.into(),
        );
        o.insert(
            "rss_per_live_node_end_over_mid".into(),
            per_node_mid_ratio.into(),
        );
        o.insert("rss".into(), serde_json::to_value(&rss)?);
        o.insert("wall_s".into(), ((wall_s * 1000.0).round() / 1000.0).into());
        o.insert("peak_rss_mb".into(), crate::peak_rss_mb().into());
    }
    if a.json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!(
        "{} nodes ({} owners), {} records, {} h at {:.0}%/h churn ({} nodes replaced), k={}, seed {}",
        r.nodes,
        r.owners,
        r.records,
        r.hours,
        r.churn_per_hour * 100.0,
        r.replaced,
        r.k,
        r.seed
    );
    println!(
        "ttl {} h, replicate every {} h, republish every {} h",
        a.ttl_h, a.replicate_h, a.republish_h
    );
    println!();
    println!(
        "{:>4} {:>9} {:>11} {:>9} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "hour",
        "replaced",
        "found",
        "holders",
        "routing",
        "replcache",
        "records",
        "st.bytes",
        "queries",
        "rss MB"
    );
    for s in &r.hourly {
        let f = &s.footprint;
        println!(
            "{:>4} {:>9} {:>11} {:>4}/{:<4.1} {:>8.1} {:>9.1} {:>9.1} {:>9.0} {:>8.2} {:>8.1}",
            s.hour,
            s.replaced,
            format!("{}/{}", s.found, s.gets),
            s.holders_min,
            s.holders_mean,
            f.routing_mean,
            f.replacements_mean,
            f.records_mean,
            f.store_bytes_mean,
            f.queries_mean,
            rss_at(s.hour)
        );
    }
    println!(
        "(holders: fewest / mean live nodes holding a record; per-node columns are means; rss: \
         the whole process, including {:.1} MB of the simulator's slots of departed nodes at the end)",
        rss.last().map_or(0.0, |s| s.dead_slots_mb)
    );
    println!();
    let c = &r.final_check;
    let rows: Vec<(&str, String)> = vec![
        (
            "retrievable at the end",
            format!(
                "{}/{} gets = {:.4} ({})",
                c.found,
                c.gets,
                c.retrievable,
                if r.retrievable_ok {
                    ">= 99.9%"
                } else {
                    "BELOW 99.9%"
                }
            ),
        ),
        ("keys found", format!("{}/{}", c.keys_found, r.records)),
        (
            "get latency p50 / p99",
            format!("{:.0} / {:.0} ms", c.latency_ms_p50, c.latency_ms_p99),
        ),
        (
            "state end / hour 1",
            format!(
                "routing {:.2}, replacements {:.2}, records {:.2}, store bytes {:.2}, \
                 rss {:.2}, rss per node less dead slots {:.2}",
                r.growth_vs_hour1.routing,
                r.growth_vs_hour1.replacements,
                r.growth_vs_hour1.records,
                r.growth_vs_hour1.store_bytes,
                rss_ratio,
                per_node_ratio
            ),
        ),
        (
            "2nd-half peak / mid hour",
            format!(
                "routing {:.2}, replacements {:.2}, records {:.2}, store bytes {:.2} ({}); \
                 rss per node less dead slots, end / mid: {:.2}",
                r.growth_second_half.routing,
                r.growth_second_half.replacements,
                r.growth_second_half.records,
                r.growth_second_half.store_bytes,
                if r.flat { "flat" } else { "GROWING" },
                per_node_mid_ratio
            ),
        ),
        ("virtual time", format!("{:.0} s", r.virtual_s)),
        ("wall time", format!("{wall_s:.1} s")),
        ("digest", r.digest.clone()),
    ];
    for (k, v) in rows {
        println!("  {k:<26} {v}");
    }
    Ok(())
}
