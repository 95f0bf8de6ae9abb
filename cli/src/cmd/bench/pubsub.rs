//! `kad sim pubsub` (the simulator scenario) and `kad bench pubsub` (loopback, real sockets).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use kad_plugin_bep44::item::{self, MutableItem};
use kad_plugin_pubsub::{Delivery, Pubsub};
use kad_sim::LinkModel;
use kad_sim::pubsub::{PubsubScenario, run_pubsub_scenario};
use serde_json::json;
use tokio::sync::Mutex;

use crate::check_range;
use crate::cmd::bench::pct;
use crate::net;

#[derive(Args, Debug)]
pub(crate) struct SimPubsubArgs {
    /// Nodes in the network (each runs the pub/sub plugin).
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Nodes subscribed to the sensor.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Readings the sensor publishes.
    #[arg(long, default_value_t = 60)]
    readings: usize,
    /// Time between two readings, ms.
    #[arg(long, default_value_t = 1000.0)]
    interval_ms: f64,
    /// Round-trip time of every link, ms (one-way delay is half).
    #[arg(long, default_value_t = 50.0)]
    rtt_ms: f64,
    /// Extra random delay per message, uniform in [0, jitter], ms.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Probability that any one message is lost (0.0 to 0.5).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Fraction of the k rendezvous nodes (closest first) killed while readings flow (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Bucket size: the rendezvous set.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Rendezvous nodes that push to each subscriber (the others stand by).
    #[arg(long, default_value_t = 3)]
    fanout: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print exactly one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn sim(a: SimPubsubArgs) -> Result<()> {
    if a.nodes < 3 {
        bail!(
            "--nodes = {} is out of range: at least 3 are needed",
            a.nodes
        );
    }
    if a.subscribers == 0 || a.subscribers > a.nodes - 2 {
        bail!(
            "--subscribers = {} is out of range: it must be between 1 and --nodes - 2 = {}",
            a.subscribers,
            a.nodes - 2
        );
    }
    check_range("k", a.k, 1, 256)?;
    if !(1..=a.k).contains(&a.fanout) {
        bail!(
            "--fanout = {} is out of range: it must be between 1 and --k",
            a.fanout
        );
    }
    if !(1..=100_000).contains(&a.readings) {
        bail!("--readings = {} is out of range: 1 to 100000", a.readings);
    }
    check_range("interval-ms", a.interval_ms, 1.0, 3_600_000.0)?;
    check_range("rtt-ms", a.rtt_ms, 0.0, 60_000.0)?;
    check_range("jitter-ms", a.jitter_ms, 0.0, 60_000.0)?;
    check_range("loss", a.loss, 0.0, 0.5)?;
    check_range("churn", a.churn, 0.0, 1.0)?;
    let mut sc = PubsubScenario::default();
    sc.nodes = a.nodes;
    sc.subscribers = a.subscribers;
    sc.readings = a.readings;
    sc.interval = Duration::from_secs_f64(a.interval_ms / 1000.0);
    let mut link = LinkModel::default();
    link.latency = Duration::from_secs_f64(a.rtt_ms / 2000.0);
    link.jitter = Duration::from_secs_f64(a.jitter_ms / 1000.0);
    link.loss = a.loss;
    sc.link = link;
    sc.churn = a.churn;
    sc.k = a.k;
    sc.fanout = a.fanout;
    sc.seed = a.seed;
    let bar = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(a.nodes as u64)
    };
    let t0 = Instant::now();
    let r = run_pubsub_scenario(&sc, |stage, done, total| {
        bar.set_message(stage.to_owned());
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let mut v = serde_json::to_value(&r).context("serialising the report")?;
    if let Some(o) = v.as_object_mut() {
        o.insert("interval_ms".into(), a.interval_ms.into());
        o.insert("jitter_ms".into(), a.jitter_ms.into());
        o.insert("loss".into(), a.loss.into());
        o.insert("churn".into(), a.churn.into());
        o.insert(
            "wall_s".into(),
            ((t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0).into(),
        );
        o.insert("peak_rss_mb".into(), crate::peak_rss_mb().into());
    }
    if a.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub(crate) struct BenchPubsubArgs {
    /// Rendezvous (server) nodes.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Subscriber nodes (read-only clients, each its own UDP socket).
    #[arg(long, default_value_t = 50)]
    subscribers: usize,
    /// Readings published.
    #[arg(long, default_value_t = 100)]
    readings: usize,
    /// Time between readings, ms.
    #[arg(long, default_value_t = 100.0)]
    interval_ms: f64,
    /// Rendezvous nodes that push to each subscriber.
    #[arg(long, default_value_t = 3)]
    fanout: usize,
    /// Print exactly one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

type Arrivals = Arc<Mutex<Vec<(usize, i64, Instant)>>>;

pub(crate) fn run(a: BenchPubsubArgs) -> Result<()> {
    if !(1..=500).contains(&a.nodes) {
        bail!("--nodes = {} is out of range: 1 to 500", a.nodes);
    }
    if !(1..=1000).contains(&a.subscribers) {
        bail!(
            "--subscribers = {} is out of range: 1 to 1000",
            a.subscribers
        );
    }
    if !(1..=100_000).contains(&a.readings) {
        bail!("--readings = {} is out of range: 1 to 100000", a.readings);
    }
    check_range("interval-ms", a.interval_ms, 1.0, 60_000.0)?;
    if !(1..=a.nodes).contains(&a.fanout) {
        bail!(
            "--fanout = {} is out of range: it must be between 1 and --nodes",
            a.fanout
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let v = rt.block_on(bench(&a))?;
    if a.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

async fn spawn(read_only: bool, fanout: usize) -> Result<kad_core::Dht> {
    let mut pubsub = kad_plugin_pubsub::PubsubConfig::default();
    pubsub.fanout = fanout;
    let mut b = net::node_builder().udp("127.0.0.1:0").pubsub_config(pubsub);
    if read_only {
        b = b.client();
    }
    Ok(b.build().await.map_err(net::flag_error)?.dht().clone())
}

async fn bench(a: &BenchPubsubArgs) -> Result<serde_json::Value> {
    let t_all = Instant::now();
    // Rendezvous nodes.
    let mut servers = Vec::with_capacity(a.nodes);
    for _ in 0..a.nodes {
        servers.push(spawn(false, a.fanout).await?);
    }
    let seed_addr = servers[0].contact().addrs[0].clone();
    for s in &servers[1..] {
        s.bootstrap(vec![seed_addr.clone()]).await?;
    }
    // Second pass: the first nodes learn the later ones too.
    for s in &servers {
        s.bootstrap(vec![seed_addr.clone()]).await?;
    }
    let join = |ro: bool| {
        let seed = seed_addr.clone();
        let fanout = a.fanout;
        async move {
            let d = spawn(ro, fanout).await?;
            d.bootstrap(vec![seed]).await?;
            anyhow::Ok(Pubsub::attach(d).await?)
        }
    };
    // The sensor.
    let mut sensor = [0u8; 32];
    getrandom::fill(&mut sensor).context("drawing a key")?;
    let salt = b"bench";
    let pubkey = item::public_key(&sensor);

    // Subscribers, each with its own socket; arrivals are timed as they are delivered.
    let arrivals: Arrivals = Arc::new(Mutex::new(Vec::new()));
    let mut subscribe_ms = Vec::new();
    let mut subs = Vec::new();
    for i in 0..a.subscribers {
        let p = join(true).await?;
        let t0 = Instant::now();
        let mut sub = p.subscribe_sensor(pubkey, salt).await?;
        subscribe_ms.push(t0.elapsed().as_secs_f64());
        let arr = arrivals.clone();
        subs.push(p);
        tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                if let Delivery::Reading(r) = d {
                    arr.lock().await.push((i, r.item.seq, Instant::now()));
                }
            }
        });
    }
    let publisher = join(true).await?;

    // Readings. The process's CPU time from the first reading to the end of the drain is the
    // cost of delivering them: every node of the network runs in this process.
    let cpu0 = super::cpu_s("self");
    let mut published: BTreeMap<i64, Instant> = BTreeMap::new();
    let mut publish_ms = Vec::new();
    let mut stored = Vec::new();
    let mut failed = 0usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(a.interval_ms / 1000.0));
    for seq in 1..=a.readings as i64 {
        tick.tick().await;
        let it = MutableItem::sign(
            &sensor,
            salt,
            seq,
            &item::bencode_bytes(seq.to_string().as_bytes()),
        )?;
        let t0 = Instant::now();
        published.insert(seq, t0);
        match publisher.publish(it.into()).await {
            Ok(o) => stored.push(o.stored_on as f64),
            Err(_) => failed += 1,
        }
        publish_ms.push(t0.elapsed().as_secs_f64());
    }
    // Drain: until every reading arrived everywhere, or 5 s.
    let want = a.readings * a.subscribers;
    let drain_end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < drain_end {
        let n = arrivals.lock().await.len();
        if n >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_readings = super::cpu_s("self") - cpu0;
    // A late subscriber: time until it holds the latest reading.
    let late = join(true).await?;
    let t_late = Instant::now();
    let mut late_sub = late.subscribe_sensor(pubkey, salt).await?;
    let late_ms = match tokio::time::timeout(Duration::from_secs(5), late_sub.next()).await {
        Ok(Some(Delivery::Reading(r))) if r.item.seq == a.readings as i64 => {
            Some(t_late.elapsed().as_secs_f64() * 1e3)
        }
        _ => None,
    };

    let arr = arrivals.lock().await.clone();
    let mut per_sub: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    let mut lat = Vec::with_capacity(arr.len());
    for (i, seq, at) in &arr {
        per_sub.entry(*i).or_default().push(*seq);
        if let Some(t) = published.get(seq) {
            lat.push(at.saturating_duration_since(*t).as_secs_f64());
        }
    }
    let out_of_order: usize = per_sub
        .values()
        .map(|v| v.windows(2).filter(|w| w[0] >= w[1]).count())
        .sum();
    let complete = per_sub.values().filter(|v| v.len() == a.readings).count();
    let mut dup = 0u64;
    for p in &subs {
        if let Ok(s) = p.stats().await {
            dup += s.duplicates;
        }
    }
    let v = json!({
        "bench": "pubsub",
        "rendezvous_nodes": a.nodes,
        "subscribers": a.subscribers,
        "readings": a.readings,
        "interval_ms": a.interval_ms,
        "fanout": a.fanout,
        "expected": want,
        "delivered": arr.len(),
        "every_reading_delivered": arr.len() == want && complete == a.subscribers,
        "subscribers_complete": complete,
        "out_of_order": out_of_order,
        "duplicates_dropped": dup,
        "latency_ms_p50": pct(&mut lat, 0.5) * 1e3,
        "latency_ms_p90": pct(&mut lat, 0.9) * 1e3,
        "latency_ms_p99": pct(&mut lat, 0.99) * 1e3,
        "latency_ms_max": pct(&mut lat, 1.0) * 1e3,
        "publish_ms_p50": pct(&mut publish_ms, 0.5) * 1e3,
        "publish_failed": failed,
        "stored_on_p50": pct(&mut stored, 0.5),
        "subscribe_ms_p50": pct(&mut subscribe_ms, 0.5) * 1e3,
        "late_subscriber_ms": late_ms,
        "cpu_ms_per_reading": (cpu_readings * 1e3 / a.readings as f64 * 100.0).round() / 100.0,
        "cpu_us_per_delivery": (cpu_readings * 1e6 / arr.len().max(1) as f64).round(),
        "wall_s": (t_all.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "peak_rss_mb": crate::peak_rss_mb(),
    });
    for s in servers.iter().chain(subs.iter().map(Pubsub::dht)) {
        s.shutdown().await;
    }
    Ok(v)
}
