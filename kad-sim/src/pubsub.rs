//! The pub/sub scenario behind `kad sim pubsub`: one sensor, many subscribers,
//! a simulated network, optional churn of the rendezvous nodes. Same arguments, same result.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::{LinkModel, Sim, SimStats, grow_network};
use bytes::Bytes;
use kad_core::{Config, Event, NodeId, PluginData, QueryId, QueryResult};
use kad_plugin_bep44::item::{self, MutableItem};
use rand::Rng as _;
use serde::Serialize;

use kad_plugin_pubsub::{
    NAMESPACE, PublishOutcome, PubsubCommand, PubsubConfig, PubsubPlugin, ReadingEvent,
};
use kad_plugin_pubsub::{TopicKind, WireItem};

/// Parameters of the scenario.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PubsubScenario {
    /// Nodes in the network (every one runs the plugin).
    pub nodes: usize,
    /// Nodes that subscribe to the sensor.
    pub subscribers: usize,
    /// Readings published.
    pub readings: usize,
    /// Time between two readings.
    pub interval: Duration,
    /// The link model (one-way latency: a round trip is twice it).
    pub link: LinkModel,
    /// Fraction of the rendezvous nodes (the k closest to the sensor's key) that leave without
    /// notice while readings flow, closest first (the pushers), each replaced by a new node.
    pub churn: f64,
    /// Bucket size and rendezvous set size.
    pub k: usize,
    /// Pushing rendezvous nodes per subscriber.
    pub fanout: usize,
    /// The seed.
    pub seed: u64,
    /// Virtual time between two joins while the network forms.
    pub join_spacing: Duration,
}

impl Default for PubsubScenario {
    fn default() -> Self {
        Self {
            nodes: 1000,
            subscribers: 100,
            readings: 30,
            interval: Duration::from_secs(1),
            link: LinkModel {
                latency: Duration::from_millis(25),
                ..LinkModel::default()
            },
            churn: 0.0,
            k: 20,
            fanout: PubsubConfig::default().fanout,
            seed: 1,
            join_spacing: Duration::from_millis(2),
        }
    }
}

/// What the scenario measured (virtual time).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct PubsubReport {
    /// Nodes in the network.
    pub nodes: usize,
    /// Subscribers asked for.
    pub subscribers: usize,
    /// Subscribers whose subscribe succeeded.
    pub subscribed: usize,
    /// Readings published.
    pub readings: usize,
    /// Bucket size.
    pub k: usize,
    /// Pushers per subscriber.
    pub fanout: usize,
    /// The seed.
    pub seed: u64,
    /// Round-trip time of the link model, ms.
    pub rtt_ms: f64,
    /// Rendezvous nodes killed while readings flowed.
    pub rendezvous_killed: usize,
    /// Readings × successful subscribers.
    pub expected: u64,
    /// Distinct readings delivered to subscribers.
    pub delivered: u64,
    /// `delivered / expected`.
    pub delivery_rate: f64,
    /// Deliveries not in increasing seq order (must be 0).
    pub out_of_order: u64,
    /// Extra copies dropped by subscribers (pushed by more than one node).
    pub duplicates_dropped: u64,
    /// End-to-end latency from publish to delivery, ms.
    pub latency_ms_p50: f64,
    /// 99th percentile of it.
    pub latency_ms_p99: f64,
    /// Largest.
    pub latency_ms_max: f64,
    /// Median latency in round trips.
    pub latency_rtt_p50: f64,
    /// 99th percentile in round trips.
    pub latency_rtt_p99: f64,
    /// Median rendezvous nodes that accepted a reading.
    pub stored_on_p50: usize,
    /// Publishes whose command failed.
    pub publish_failed: usize,
    /// A subscriber joining after the last reading: ms until it had the latest one (None: never).
    pub late_subscriber_ms: Option<f64>,
    /// Virtual time simulated, seconds.
    pub virtual_s: f64,
    /// Network counters.
    pub network: SimStats,
    /// Hash of every delivery and event: equal for equal arguments.
    pub digest: String,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

fn cmd(c: &PubsubCommand) -> PluginData {
    PluginData::new(c.clone())
}

/// Runs the scenario. `progress(stage, done, total)` reports the network build and the readings.
pub fn run_pubsub_scenario(
    sc: &PubsubScenario,
    mut progress: impl FnMut(&str, usize, usize),
) -> PubsubReport {
    // The virtual clock's zero; results depend only on durations from it.
    #[allow(clippy::disallowed_methods)]
    let base = Instant::now();
    let mut sim = Sim::new(sc.seed, sc.link.clone(), base);
    let mut cfg = Config::default();
    cfg.k = sc.k;
    let mut pcfg = PubsubConfig::default();
    pcfg.fanout = sc.fanout;
    let plugin =
        |b: kad_core::NodeBuilder| b.plugin(Box::new(PubsubPlugin::new(pcfg.clone(), None)));
    let nodes = grow_network(
        &mut sim,
        sc.nodes,
        &cfg,
        sc.join_spacing,
        |_, b| plugin(b),
        |i| progress("join", i, sc.nodes),
    );

    // The sensor and its subscribers.
    let mut seed = [0u8; 32];
    sim.rng().fill(&mut seed);
    let salt = Bytes::from_static(b"meter");
    let pubkey = item::public_key(&seed);
    let topic = item::mutable_target(&pubkey, &salt);
    let kind = TopicKind::Sensor {
        k: pubkey,
        salt: salt.clone(),
    };
    let n_subs = sc.subscribers.min(nodes.len().saturating_sub(2));
    // A partial Fisher-Yates shuffle picks the publisher and the subscribers.
    let mut order: Vec<usize> = nodes.clone();
    for i in 0..(n_subs + 1).min(order.len()) {
        let j = sim.rng().random_range(i..order.len());
        order.swap(i, j);
    }
    let publisher = order[0];
    let subs: Vec<usize> = order[1..=n_subs].to_vec();
    let is_sub: BTreeMap<usize, ()> = subs.iter().map(|&i| (i, ())).collect();

    let mut waiting: BTreeMap<(usize, QueryId), ()> = BTreeMap::new();
    let sub_cmd = cmd(&PubsubCommand::Subscribe {
        kind: kind.clone(),
        since: None,
    });
    for &s in &subs {
        if let Some(Ok(q)) = sim.command(s, |n, now| n.command(now, NAMESPACE, sub_cmd.clone())) {
            waiting.insert((s, q), ());
        }
    }

    let mut subscribed: BTreeMap<usize, ()> = BTreeMap::new();
    let mut published_at: BTreeMap<i64, Instant> = BTreeMap::new();
    let mut last_seq: BTreeMap<usize, i64> = BTreeMap::new();
    let mut delivered = 0u64;
    let mut out_of_order = 0u64;
    let mut lat_ms: Vec<f64> = Vec::new();
    let mut publishes: BTreeMap<QueryId, ()> = BTreeMap::new();
    let mut stored: Vec<usize> = Vec::new();
    let mut publish_failed = 0usize;
    let mut late: Option<(usize, QueryId, Instant)> = None;
    let mut late_ms: Option<f64> = None;
    let final_seq = sc.readings as i64;

    // Steps the simulation to `until`, handling every event at its own virtual time.
    macro_rules! run_until {
        ($until:expr) => {{
            let until: Instant = $until;
            loop {
                while let Some((idx, ev)) = sim.poll_event() {
                    let now = sim.now();
                    match ev {
                        Event::QueryDone {
                            id,
                            result: QueryResult::Command(r),
                        } => {
                            if waiting.remove(&(idx, id)).is_some() && r.is_ok() {
                                subscribed.insert(idx, ());
                            } else if idx == publisher && publishes.remove(&id).is_some() {
                                match r
                                    .ok()
                                    .and_then(|b| b.downcast_ref::<PublishOutcome>().cloned())
                                {
                                    Some(o) => stored.push(o.stored_on),
                                    None => publish_failed += 1,
                                }
                            }
                        }
                        Event::Plugin { data, .. } => {
                            let Some(r) = data.downcast_ref::<ReadingEvent>() else {
                                continue;
                            };
                            if r.topic != topic {
                                continue;
                            }
                            if let Some((l, _, at)) = late {
                                if l == idx && r.item.seq == final_seq && late_ms.is_none() {
                                    late_ms = Some((now - at).as_secs_f64() * 1e3);
                                }
                            }
                            if !is_sub.contains_key(&idx) {
                                continue;
                            }
                            let prev = last_seq.insert(idx, r.item.seq);
                            if prev.is_some_and(|p| p >= r.item.seq) {
                                out_of_order += 1;
                                continue;
                            }
                            if let Some(at) = published_at.get(&r.item.seq) {
                                delivered += 1;
                                lat_ms.push((now - *at).as_secs_f64() * 1e3);
                            }
                        }
                        _ => {}
                    }
                }
                match sim.next_event_at() {
                    Some(t) if t <= until => {
                        sim.step();
                    }
                    _ => break,
                }
            }
            sim.run_until(until);
        }};
    }

    // Subscriptions settle.
    let t = sim.now() + Duration::from_secs(10);
    run_until!(t);

    // Rendezvous churn: the k closest live nodes to the topic, closest first, minus the
    // publisher and the subscribers (their loss is not what is measured).
    let mut rendezvous: Vec<(NodeId, usize)> = sim
        .alive()
        .filter(|i| *i != publisher && !is_sub.contains_key(i))
        .filter_map(|i| sim.node(i).map(|n| (n.id(), i)))
        .collect();
    rendezvous.sort_by_key(|(id, _)| id.distance(&topic));
    rendezvous.truncate(sc.k);
    let n_kill = ((sc.k as f64) * sc.churn).round() as usize;
    let window = sc.interval * sc.readings.max(1) as u32;
    let start = sim.now();
    let mut kills: Vec<(Instant, usize)> = rendezvous
        .iter()
        .take(n_kill)
        .enumerate()
        .map(|(i, (_, idx))| {
            let at = start + window.mul_f64((i as f64 + 0.5) / n_kill.max(1) as f64);
            (at, *idx)
        })
        .collect();
    kills.reverse();
    let mut killed = 0usize;

    // One step past the last reading: kills scheduled after it happen then.
    for seq in 1..=final_seq + 1 {
        let at = start + sc.interval * (seq as u32 - 1);
        while kills
            .last()
            .is_some_and(|(t, _)| *t <= at || seq > final_seq)
        {
            let Some((t, victim)) = kills.pop() else {
                break;
            };
            run_until!(t);
            sim.kill(victim);
            killed += 1;
            // A newcomer takes its place in the network.
            let j = nodes[sim.rng().random_range(0..nodes.len())];
            let newcomer = sim.add_node_with(cfg.clone(), plugin);
            if let Some(c) = sim.node(j).map(|n| n.contact().clone()) {
                let _ = sim.command(newcomer, |n, now| n.bootstrap_with(now, vec![c]));
            }
        }
        run_until!(at);
        if seq > final_seq {
            break;
        }
        let v = item::bencode_bytes(format!("{seq}").as_bytes());
        let Ok(it) = MutableItem::sign(&seed, &salt, seq, &v) else {
            continue;
        };
        published_at.insert(seq, sim.now());
        let c = cmd(&PubsubCommand::Publish {
            item: WireItem::from(it),
        });
        if let Some(Ok(q)) = sim.command(publisher, |n, now| n.command(now, NAMESPACE, c)) {
            publishes.insert(q, ());
        }
        progress("readings", seq as usize, sc.readings);
    }
    let t = sim.now() + Duration::from_secs(5);
    run_until!(t);

    // A late subscriber gets the latest reading at once.
    let late_node = sim
        .alive()
        .find(|i| *i != publisher && !is_sub.contains_key(i));
    if let Some(l) = late_node {
        let c = sub_cmd.clone();
        if let Some(Ok(q)) = sim.command(l, |n, now| n.command(now, NAMESPACE, c)) {
            late = Some((l, q, sim.now()));
        }
        let t = sim.now() + Duration::from_secs(5);
        run_until!(t);
    }

    let expected = (subscribed.len() * sc.readings) as u64;
    let rtt_ms = sc.link.latency.as_secs_f64() * 2e3;
    // The subscribers' own counters: copies they dropped.
    let stats_cmd = cmd(&PubsubCommand::Stats);
    let mut asked: BTreeMap<(usize, QueryId), ()> = BTreeMap::new();
    for &s in &subs {
        let c = stats_cmd.clone();
        if let Some(Ok(q)) = sim.command(s, |n, now| n.command(now, NAMESPACE, c)) {
            asked.insert((s, q), ());
        }
    }
    let mut duplicates_dropped = 0u64;
    while let Some((idx, ev)) = sim.poll_event() {
        if let Event::QueryDone {
            id,
            result: QueryResult::Command(Ok(b)),
        } = ev
        {
            if asked.remove(&(idx, id)).is_some() {
                if let Some(st) = b.downcast_ref::<kad_plugin_pubsub::PubsubStats>() {
                    duplicates_dropped += st.duplicates;
                }
            }
        }
    }
    let p50 = percentile(&mut lat_ms, 0.5);
    let p99 = percentile(&mut lat_ms, 0.99);
    let max = lat_ms.last().copied().unwrap_or(0.0);
    stored.sort_unstable();
    PubsubReport {
        nodes: sc.nodes,
        subscribers: n_subs,
        subscribed: subscribed.len(),
        readings: sc.readings,
        k: sc.k,
        fanout: sc.fanout,
        seed: sc.seed,
        rtt_ms,
        rendezvous_killed: killed,
        expected,
        delivered,
        delivery_rate: if expected == 0 {
            0.0
        } else {
            delivered as f64 / expected as f64
        },
        out_of_order,
        duplicates_dropped,
        latency_ms_p50: p50,
        latency_ms_p99: p99,
        latency_ms_max: max,
        latency_rtt_p50: if rtt_ms > 0.0 { p50 / rtt_ms } else { 0.0 },
        latency_rtt_p99: if rtt_ms > 0.0 { p99 / rtt_ms } else { 0.0 },
        stored_on_p50: stored.get(stored.len() / 2).copied().unwrap_or(0),
        publish_failed,
        late_subscriber_ms: late_ms,
        virtual_s: sim.elapsed().as_secs_f64(),
        network: sim.stats().clone(),
        digest: format!("{:016x}", sim.digest()),
    }
}
