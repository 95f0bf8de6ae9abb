//! The long-run churn scenario behind `kad sim churn`: records put at the start stay
//! retrievable through a day of steady churn, and per-node state stays flat.
//!
//! The network grows to [`ChurnScenario::nodes`] nodes. A few of them are *owners*: each puts
//! its share of the records at the start and stays for the whole run, republishing its records
//! as [`Config::republish_interval`] says (publishers are long-lived; a record whose publisher
//! left is kept alive only until its TTL by re-replication, by design). Every other node may be
//! replaced: each virtual hour, `churn_per_hour * nodes` of them leave without notice, spread
//! evenly over the hour, and as many fresh nodes join through a random live node. Holders
//! re-replicate what they hold to the current k closest every [`Config::replicate_interval`].
//!
//! At each hour a sample of keys is fetched from random non-owner nodes (the curve), and the
//! per-node state (routing table, replacement caches, records, store bytes, requests in flight,
//! queries) is summarised (flatness). At the end every key is fetched from several random
//! non-owner nodes: the fraction of those gets that found the value is the retrievability.
//!
//! The record timings are Kademlia's classic ones, the engine's defaults: a TTL of 24 h from
//! publication, re-replication by holders every hour (keeping the publication time, so a copy
//! never outlives the TTL), republish by the owner every 22 h (a fresh publication time, out
//! before the original copies expire). A 24 h run ends just after the original copies expired:
//! every record found at the end was carried by the owners' republish and the re-replication
//! after it, as in a deployment where the publisher keeps its records alive.
//!
//! ```
//! use kad_sim::churn::{ChurnScenario, run_churn_scenario};
//! let mut sc = ChurnScenario::default();
//! sc.nodes = 60;
//! sc.records = 10;
//! sc.owners = 3;
//! sc.hours = 2;
//! sc.sample_keys = 5;
//! let report = run_churn_scenario(&sc, |_| {});
//! assert_eq!(report.final_check.found, report.final_check.gets);
//! assert_eq!(report.digest, run_churn_scenario(&sc, |_| {}).digest);
//! ```

use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::{LinkModel, Sim, SimStats, grow_network};
use kad_core::Config;
use kad_core::{Event, Node, QueryId, QueryResult};
use kad_core::{Key, NodeId};

const HOUR: Duration = Duration::from_secs(3600);
const MAX_BOOTSTRAP_RETRIES: u8 = 3;
/// A reader must have joined at least this long before its get (its bootstrap has finished).
const READER_MIN_AGE: Duration = Duration::from_secs(60);
/// Longest the final gets may take, virtual time.
const CHECK_LIMIT: Duration = Duration::from_secs(600);

/// Parameters of the churn scenario.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChurnScenario {
    /// Nodes in the network (owners included); constant while nodes are replaced.
    pub nodes: usize,
    /// Records put at the start.
    pub records: usize,
    /// Bytes of each record's value.
    pub value_len: usize,
    /// Virtual hours of churn.
    pub hours: u32,
    /// Fraction of `nodes` replaced per hour (leave without notice, as many join), 0 to 1.
    pub churn_per_hour: f64,
    /// Nodes that publish the records (round robin) and stay for the whole run; at least 1,
    /// fewer than `nodes`.
    pub owners: usize,
    /// Bucket size: records are stored at the k closest nodes.
    pub k: usize,
    /// Time to live of a record from its publication ([`Config::record_ttl`]). Default 24 h.
    pub record_ttl: Duration,
    /// How often holders re-replicate ([`Config::replicate_interval`]). Default 1 h.
    pub replicate_interval: Duration,
    /// How often owners republish ([`Config::republish_interval`]). Default 22 h: a republished
    /// copy is out before the original expires at 24 h.
    pub republish_interval: Duration,
    /// Keys fetched at each hour for the retrievability curve (check granularity); 0: none.
    pub sample_keys: usize,
    /// Non-owner nodes that each fetch every key at the end.
    pub readers: usize,
    /// The link model.
    pub link: LinkModel,
    /// Virtual time between two joins while the network forms.
    pub join_spacing: Duration,
    /// The simulation seed.
    pub seed: u64,
}

impl Default for ChurnScenario {
    fn default() -> Self {
        Self {
            nodes: 2000,
            records: 500,
            value_len: 100,
            hours: 24,
            churn_per_hour: 0.3,
            owners: 50,
            k: 20,
            record_ttl: Duration::from_secs(24 * 3600),
            replicate_interval: Duration::from_secs(3600),
            republish_interval: Duration::from_secs(22 * 3600),
            sample_keys: 100,
            readers: 3,
            link: LinkModel::default(),
            join_spacing: Duration::from_millis(2),
            seed: 1,
        }
    }
}

/// What the engines of the live nodes hold, summarised over the nodes.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct Footprint {
    /// Live nodes summarised.
    pub nodes: usize,
    /// Mean routing-table entries per node.
    pub routing_mean: f64,
    /// Most routing-table entries of one node.
    pub routing_max: usize,
    /// Mean replacement-cache entries per node.
    pub replacements_mean: f64,
    /// Most replacement-cache entries of one node.
    pub replacements_max: usize,
    /// Mean records held per node.
    pub records_mean: f64,
    /// Most records held by one node.
    pub records_max: usize,
    /// Mean bytes accounted by the record store per node.
    pub store_bytes_mean: f64,
    /// Most store bytes of one node.
    pub store_bytes_max: usize,
    /// Mean requests in flight per node.
    pub in_flight_mean: f64,
    /// Most requests in flight at one node.
    pub in_flight_max: usize,
    /// Mean queries running per node.
    pub queries_mean: f64,
    /// Most queries running at one node.
    pub queries_max: usize,
}

/// The state of the network at one hour boundary.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct HourSample {
    /// Hours since the records were put (0: right after the puts).
    pub hour: u32,
    /// Nodes replaced so far.
    pub replaced: usize,
    /// Sampled gets started at this hour (the final check at the last hour).
    pub gets: usize,
    /// Of which found the value.
    pub found: usize,
    /// Sampled gets that could not count: the reader left, or the get did not finish.
    pub aborted: usize,
    /// Fewest live nodes holding an unexpired copy of a record.
    pub holders_min: usize,
    /// Mean live nodes holding an unexpired copy of a record.
    pub holders_mean: f64,
    /// Records no live node holds.
    pub records_lost: usize,
    /// Per-node engine state.
    pub footprint: Footprint,
}

/// The final retrievability check.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct FinalCheck {
    /// Readers (random live non-owner nodes that joined at least a minute before, so their
    /// bootstrap is over) that fetched every key.
    pub readers: usize,
    /// Gets run (`readers * records`).
    pub gets: usize,
    /// Gets that found the value put at the start.
    pub found: usize,
    /// `found / gets`.
    pub retrievable: f64,
    /// Keys that at least one reader found.
    pub keys_found: usize,
    /// Up to 20 keys some reader did not find (hex).
    pub missing: Vec<String>,
    /// Median virtual latency of the gets that found the value, ms.
    pub latency_ms_p50: f64,
    /// 99th percentile, ms.
    pub latency_ms_p99: f64,
}

/// Ratios of per-node state (means over the live nodes) between two points of the run; 1.0:
/// the same.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct Growth {
    /// Routing-table entries (mean).
    pub routing: f64,
    /// Replacement-cache entries (mean).
    pub replacements: f64,
    /// Records held (mean).
    pub records: f64,
    /// Store bytes (mean).
    pub store_bytes: f64,
    /// Requests in flight plus queries running (mean, +1 each side so that idle nodes give 1).
    pub in_flight_and_queries: f64,
}

/// What the churn scenario measured.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ChurnReport {
    /// Nodes in the network.
    pub nodes: usize,
    /// Records put.
    pub records: usize,
    /// Virtual hours of churn.
    pub hours: u32,
    /// Fraction of the nodes replaced per hour.
    pub churn_per_hour: f64,
    /// Nodes replaced per hour.
    pub replaced_per_hour: usize,
    /// Nodes replaced in all.
    pub replaced: usize,
    /// Owners (never replaced).
    pub owners: usize,
    /// Bucket size.
    pub k: usize,
    /// Record TTL, hours.
    pub record_ttl_h: f64,
    /// Re-replication interval, hours.
    pub replicate_interval_h: f64,
    /// Republish interval, hours.
    pub republish_interval_h: f64,
    /// The seed.
    pub seed: u64,
    /// Initial puts that some node stored.
    pub puts_ok: usize,
    /// Fewest nodes that stored one initial put.
    pub put_stored_min: usize,
    /// The final check.
    pub final_check: FinalCheck,
    /// Whether at least 99.9% of the final gets found their value.
    pub retrievable_ok: bool,
    /// One sample per hour, hour 0 to `hours`.
    pub hourly: Vec<HourSample>,
    /// End state over hour 1. Routing tables and replacement caches are still filling at hour
    /// 1, so these are a little above 1 without any leak.
    pub growth_vs_hour1: Growth,
    /// The highest state of the second half (middle hour to end) over the middle hour: whether
    /// anything still grows once churn reached its steady state.
    pub growth_second_half: Growth,
    /// Nothing keeps growing: every `growth_second_half` ratio of held state (routing,
    /// replacements, records, store bytes) is at most 1.25, and the transient one (in flight and
    /// queries, which depends on what runs at the sampling instant) at most 1.5.
    pub flat: bool,
    /// Virtual time simulated, seconds.
    pub virtual_s: f64,
    /// Network counters.
    pub network: SimStats,
    /// Hash of every delivery and event: equal for equal arguments.
    pub digest: String,
}

/// Progress of [`run_churn_scenario`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum ChurnProgress {
    /// The network forms.
    Joining {
        /// Nodes joined.
        joined: usize,
        /// Of.
        total: usize,
    },
    /// An hour boundary was reached and the state summarised (a caller may take its own
    /// measures now, e.g. the process's memory).
    Hour {
        /// Hours since the puts.
        hour: u32,
        /// Of.
        hours: u32,
        /// Live nodes.
        live: usize,
        /// Node slots the simulator keeps, dead ones included (it never reuses an index; a
        /// dead slot keeps `size_of::<Node>()` bytes, which a caller measuring the process's
        /// memory may want to subtract).
        slots: usize,
    },
    /// The final gets run.
    Checking {
        /// Gets finished.
        done: usize,
        /// Of.
        total: usize,
    },
}

#[derive(Clone, Copy)]
enum GetTag {
    Sample(u32),
    Final,
}

struct Run<'a> {
    sc: &'a ChurnScenario,
    cfg: Config,
    sim: Sim,
    owners: Vec<usize>,
    /// Live non-owner nodes: the ones that may be replaced.
    others: Vec<usize>,
    keys: Vec<(Key, usize)>,
    values: Vec<bytes::Bytes>,
    puts: FxHashMap<(usize, QueryId), usize>,
    put_stored: Vec<usize>,
    gets: FxHashMap<(usize, QueryId), (GetTag, usize)>,
    /// Pending gets per reader.
    reading: FxHashMap<usize, usize>,
    /// Per hour: (gets, found, aborted).
    sampled: Vec<(usize, usize, usize)>,
    final_found: Vec<(usize, bool, Duration)>,
    replaced: usize,
}

impl Run<'_> {
    /// Consumes the simulator's events: put and get results, poor bootstraps (retried).
    fn pump(&mut self) {
        let mut retry = Vec::new();
        while let Some((idx, ev)) = self.sim.poll_event() {
            let Event::QueryDone { id, result } = ev else {
                continue;
            };
            match result {
                QueryResult::Bootstrap(r) => {
                    let want = self.sc.k.min(self.others.len() + self.owners.len() - 1);
                    let poor = r.as_ref().map_or(true, |o| o.closest.len() < want.max(1));
                    if poor && self.sim.bump_retries(idx) <= MAX_BOOTSTRAP_RETRIES {
                        retry.push(idx);
                    }
                }
                QueryResult::Put(r) if self.puts.remove(&(idx, id)).is_some() => {
                    self.put_stored.push(r.map_or(0, |p| p.stored));
                }
                QueryResult::Get(r) => {
                    let Some((tag, key_idx)) = self.gets.remove(&(idx, id)) else {
                        continue;
                    };
                    self.done_reading(idx);
                    let ok = r
                        .as_ref()
                        .is_ok_and(|g| g.record.value == self.values[key_idx]);
                    match tag {
                        GetTag::Sample(h) => {
                            let s = &mut self.sampled[h as usize];
                            s.1 += usize::from(ok);
                        }
                        GetTag::Final => {
                            let t = r.as_ref().map_or(Duration::ZERO, |g| g.elapsed);
                            self.final_found.push((key_idx, ok, t));
                        }
                    }
                }
                _ => {}
            }
        }
        for idx in retry {
            if let Some(seed) = self.random_live_contact(Some(idx)) {
                let _ = self
                    .sim
                    .command(idx, |n, now| n.bootstrap_with(now, vec![seed]));
            }
        }
    }

    fn done_reading(&mut self, idx: usize) {
        if let Some(c) = self.reading.get_mut(&idx) {
            *c -= 1;
            if *c == 0 {
                self.reading.remove(&idx);
            }
        }
    }

    fn random_live_contact(&mut self, not: Option<usize>) -> Option<kad_core::Contact> {
        let n = self.others.len() + self.owners.len();
        for _ in 0..8 {
            let i = self.sim.rng().random_range(0..n);
            let idx = if i < self.owners.len() {
                self.owners[i]
            } else {
                self.others[i - self.owners.len()]
            };
            if Some(idx) != not {
                return self.sim.node(idx).map(|n| n.contact().clone());
            }
        }
        None
    }

    /// A random non-owner that joined at least [`READER_MIN_AGE`] ago.
    fn random_reader(&mut self) -> Option<usize> {
        let now = self.sim.now();
        for _ in 0..64 {
            let idx = self.others[self.sim.rng().random_range(0..self.others.len())];
            if self
                .sim
                .joined_at(idx)
                .is_some_and(|t| now.saturating_duration_since(t) >= READER_MIN_AGE)
            {
                return Some(idx);
            }
        }
        None
    }

    fn start_get(&mut self, reader: usize, key_idx: usize, tag: GetTag) -> bool {
        let key = self.keys[key_idx].0;
        match self.sim.command(reader, |n, now| n.get(now, key, 1)) {
            Some(Ok(q)) => {
                self.gets.insert((reader, q), (tag, key_idx));
                *self.reading.entry(reader).or_default() += 1;
                true
            }
            _ => false,
        }
    }

    /// One node leaves without notice; a fresh one joins through a random live node.
    fn replace_one(&mut self) {
        // A node with a get running is spared if possible: its get would have nobody to report to.
        let mut pos = self.sim.rng().random_range(0..self.others.len());
        for _ in 0..16 {
            if !self.reading.contains_key(&self.others[pos]) {
                break;
            }
            pos = self.sim.rng().random_range(0..self.others.len());
        }
        let victim = self.others.swap_remove(pos);
        self.sim.kill(victim);
        if self.reading.remove(&victim).is_some() {
            let lost: Vec<_> = self
                .gets
                .iter()
                .filter(|((r, _), _)| *r == victim)
                .map(|(k, v)| (*k, v.0))
                .collect();
            for (k, tag) in lost {
                self.gets.remove(&k);
                if let GetTag::Sample(h) = tag {
                    self.sampled[h as usize].2 += 1;
                }
            }
        }
        let seed = self.random_live_contact(None);
        let idx = self.sim.add_node(self.cfg.clone());
        if let Some(seed) = seed {
            let _ = self
                .sim
                .command(idx, |n, now| n.bootstrap_with(now, vec![seed]));
        }
        self.others.push(idx);
        self.replaced += 1;
    }

    fn live(&self) -> impl Iterator<Item = &Node> + '_ {
        self.owners
            .iter()
            .chain(self.others.iter())
            .filter_map(|&i| self.sim.node(i))
    }

    fn footprint(&self) -> Footprint {
        let mut f = Footprint::default();
        let (mut rt, mut rep, mut rec, mut by, mut inf, mut q) = (0, 0, 0, 0, 0, 0);
        for n in self.live() {
            let r = n.routing_table().len();
            let p: usize = n.routing_table().bucket_sizes().iter().map(|b| b.2).sum();
            let s = n.store().len();
            let b = n.store().size_bytes();
            let i = n.in_flight();
            let qs = n.queries_running();
            f.nodes += 1;
            rt += r;
            rep += p;
            rec += s;
            by += b;
            inf += i;
            q += qs;
            f.routing_max = f.routing_max.max(r);
            f.replacements_max = f.replacements_max.max(p);
            f.records_max = f.records_max.max(s);
            f.store_bytes_max = f.store_bytes_max.max(b);
            f.in_flight_max = f.in_flight_max.max(i);
            f.queries_max = f.queries_max.max(qs);
        }
        let d = f.nodes.max(1) as f64;
        f.routing_mean = rt as f64 / d;
        f.replacements_mean = rep as f64 / d;
        f.records_mean = rec as f64 / d;
        f.store_bytes_mean = by as f64 / d;
        f.in_flight_mean = inf as f64 / d;
        f.queries_mean = q as f64 / d;
        f
    }

    /// `(fewest holders, mean holders, records without any)` over the records.
    fn holders(&self) -> (usize, f64, usize) {
        let now = self.sim.now();
        let mut count = vec![0usize; self.keys.len()];
        for n in self.live() {
            if n.store().is_empty() {
                continue;
            }
            let unix = n.unix_ms(now);
            for (c, (key, _)) in count.iter_mut().zip(&self.keys) {
                if n.store().get(key).is_some_and(|r| !r.is_expired(unix)) {
                    *c += 1;
                }
            }
        }
        let min = count.iter().copied().min().unwrap_or(0);
        let mean = count.iter().sum::<usize>() as f64 / count.len().max(1) as f64;
        (min, mean, count.iter().filter(|&&c| c == 0).count())
    }

    fn sample(&self, hour: u32) -> HourSample {
        let (holders_min, holders_mean, records_lost) = self.holders();
        HourSample {
            hour,
            replaced: self.replaced,
            gets: 0,
            found: 0,
            aborted: 0,
            holders_min,
            holders_mean,
            records_lost,
            footprint: self.footprint(),
        }
    }
}

fn ratio(end: f64, start: f64) -> f64 {
    if start <= 0.0 {
        if end <= 0.0 { 1.0 } else { f64::INFINITY }
    } else {
        end / start
    }
}

fn growth(end: &Footprint, start: &Footprint) -> Growth {
    Growth {
        routing: ratio(end.routing_mean, start.routing_mean),
        replacements: ratio(end.replacements_mean, start.replacements_mean),
        records: ratio(end.records_mean, start.records_mean),
        store_bytes: ratio(end.store_bytes_mean, start.store_bytes_mean),
        in_flight_and_queries: ratio(
            end.in_flight_mean + end.queries_mean + 1.0,
            start.in_flight_mean + start.queries_mean + 1.0,
        ),
    }
}

fn percentile_ms(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)].as_secs_f64() * 1000.0
}

/// Runs the churn scenario (see the [module docs](self)). `progress` is told how the run
/// advances; at each [`ChurnProgress::Hour`] the state has just been summarised.
///
/// # Panics
///
/// If `owners` is 0 or not below `nodes`, `records` is 0, or `churn_per_hour` is outside 0..=1.
pub fn run_churn_scenario(
    sc: &ChurnScenario,
    mut progress: impl FnMut(ChurnProgress),
) -> ChurnReport {
    assert!(
        sc.owners >= 1 && sc.owners < sc.nodes,
        "owners must be in 1..nodes"
    );
    assert!(sc.records >= 1, "records must be at least 1");
    assert!(
        (0.0..=1.0).contains(&sc.churn_per_hour),
        "churn_per_hour must be in 0..=1"
    );
    // The virtual clock's zero; results depend only on durations from it.
    #[allow(clippy::disallowed_methods)]
    let base = Instant::now();
    let sim = Sim::new(sc.seed, sc.link.clone(), base);
    let mut cfg = Config::default();
    cfg.k = sc.k;
    cfg.record_ttl = sc.record_ttl;
    cfg.replicate_interval = sc.replicate_interval;
    cfg.republish_interval = sc.republish_interval;
    let mut run = Run {
        sc,
        cfg: cfg.clone(),
        sim,
        owners: Vec::new(),
        others: Vec::new(),
        keys: Vec::new(),
        values: Vec::new(),
        puts: FxHashMap::default(),
        put_stored: Vec::new(),
        gets: FxHashMap::default(),
        reading: FxHashMap::default(),
        sampled: vec![(0, 0, 0); sc.hours as usize + 1],
        final_found: Vec::new(),
        replaced: 0,
    };

    // 1. The network.
    let mut all = grow_network(
        &mut run.sim,
        sc.nodes,
        &cfg,
        sc.join_spacing,
        |_, b| b,
        |joined| {
            progress(ChurnProgress::Joining {
                joined,
                total: sc.nodes,
            })
        },
    );
    all.shuffle(run.sim.rng());
    run.owners = all[..sc.owners].to_vec();
    run.owners.sort_unstable();
    run.others = all[sc.owners..].to_vec();
    run.others.sort_unstable();

    // 2. The owners put the records, one every 10 ms.
    for r in 0..sc.records {
        let key = NodeId::random(run.sim.rng());
        let owner = run.owners[r % run.owners.len()];
        let mut value = format!("record {r} ").into_bytes();
        value.resize(sc.value_len.max(value.len()), b'.');
        let value = bytes::Bytes::from(value);
        run.keys.push((key, owner));
        run.values.push(value.clone());
        if let Some(Ok(q)) = run.sim.command(owner, |n, now| n.put(now, key, value)) {
            run.puts.insert((owner, q), r);
        } else {
            run.put_stored.push(0);
        }
        run.sim.run_for(Duration::from_millis(10));
        run.pump();
    }
    let limit = run.sim.now() + Duration::from_secs(120);
    while !run.puts.is_empty() && run.sim.now() < limit {
        run.sim.run_for(Duration::from_millis(100));
        run.pump();
    }
    let t0 = run.sim.now();

    // 3. Hours of churn, with a sample at each hour boundary.
    let per_hour = (sc.nodes as f64 * sc.churn_per_hour).round() as usize;
    let per_hour = per_hour.min(sc.nodes - sc.owners);
    let mut hourly: Vec<HourSample> = Vec::with_capacity(sc.hours as usize + 1);
    for h in 0..sc.hours {
        let start = t0 + HOUR * h;
        run.sim.run_until(start);
        run.pump();
        hourly.push(run.sample(h));
        progress(ChurnProgress::Hour {
            hour: h,
            hours: sc.hours,
            live: run.others.len() + run.owners.len(),
            slots: run.sim.len(),
        });
        let n = sc.sample_keys.min(sc.records);
        let mut picks: Vec<usize> = (0..sc.records).collect();
        let (picks, _) = picks.partial_shuffle(run.sim.rng(), n);
        let picks = picks.to_vec();
        for key_idx in picks {
            if let Some(reader) = run.random_reader() {
                if run.start_get(reader, key_idx, GetTag::Sample(h)) {
                    run.sampled[h as usize].0 += 1;
                }
            }
        }
        for i in 0..per_hour {
            let at = start + HOUR.mul_f64((i as f64 + 0.5) / per_hour as f64);
            run.sim.run_until(at);
            run.pump();
            run.replace_one();
        }
    }
    let end = t0 + HOUR * sc.hours;
    run.sim.run_until(end);
    run.pump();
    // Sampled gets still running after an hour did not finish: aborted.
    for (_, (tag, _)) in std::mem::take(&mut run.gets) {
        if let GetTag::Sample(h) = tag {
            run.sampled[h as usize].2 += 1;
        }
    }
    run.reading.clear();
    let mut last = run.sample(sc.hours);
    progress(ChurnProgress::Hour {
        hour: sc.hours,
        hours: sc.hours,
        live: run.others.len() + run.owners.len(),
        slots: run.sim.len(),
    });

    // 4. The final check: each reader fetches every key, one get every 5 ms.
    let mut readers: Vec<usize> = Vec::new();
    let want = sc.readers.min(run.others.len());
    for _ in 0..want * 8 {
        if readers.len() == want {
            break;
        }
        if let Some(r) = run.random_reader() {
            if !readers.contains(&r) {
                readers.push(r);
            }
        }
    }
    let total = readers.len() * sc.records;
    let mut started = 0;
    for &reader in &readers {
        for key_idx in 0..sc.records {
            if run.start_get(reader, key_idx, GetTag::Final) {
                started += 1;
            } else {
                run.final_found.push((key_idx, false, Duration::ZERO));
            }
            run.sim.run_for(Duration::from_millis(5));
            run.pump();
            if started % 64 == 0 {
                progress(ChurnProgress::Checking {
                    done: run.final_found.len(),
                    total,
                });
            }
        }
    }
    let limit = run.sim.now() + CHECK_LIMIT;
    while !run.gets.is_empty() && run.sim.now() < limit {
        run.sim.run_for(Duration::from_millis(100));
        run.pump();
    }
    for (_, (_, key_idx)) in std::mem::take(&mut run.gets) {
        run.final_found.push((key_idx, false, Duration::ZERO));
    }
    progress(ChurnProgress::Checking { done: total, total });

    // 5. The report.
    for (s, &(gets, found, aborted)) in hourly.iter_mut().zip(&run.sampled) {
        s.gets = gets;
        s.found = found;
        s.aborted = aborted;
    }
    let found = run.final_found.iter().filter(|f| f.1).count();
    let mut found_keys = FxHashSet::default();
    let mut missing_keys = FxHashSet::default();
    for &(k, ok, _) in &run.final_found {
        if ok {
            found_keys.insert(k);
        } else {
            missing_keys.insert(k);
        }
    }
    let mut missing: Vec<usize> = missing_keys.into_iter().collect();
    missing.sort_unstable();
    let mut lat: Vec<Duration> = run
        .final_found
        .iter()
        .filter(|f| f.1)
        .map(|f| f.2)
        .collect();
    let gets = run.final_found.len();
    let retrievable = if gets == 0 {
        0.0
    } else {
        found as f64 / gets as f64
    };
    let final_check = FinalCheck {
        readers: readers.len(),
        gets,
        found,
        retrievable,
        keys_found: found_keys.len(),
        missing: missing
            .iter()
            .take(20)
            .map(|&k| run.keys[k].0.to_hex())
            .collect(),
        latency_ms_p50: percentile_ms(&mut lat, 0.5),
        latency_ms_p99: percentile_ms(&mut lat, 0.99),
    };
    last.gets = gets;
    last.found = found;
    hourly.push(last);
    let at = |h: u32| &hourly[(h as usize).min(hourly.len() - 1)].footprint;
    let growth_vs_hour1 = growth(at(sc.hours), at(1));
    let mid = sc.hours / 2;
    let mut peak = at(mid).clone();
    for s in &hourly[mid as usize..] {
        let f = &s.footprint;
        peak.routing_mean = peak.routing_mean.max(f.routing_mean);
        peak.replacements_mean = peak.replacements_mean.max(f.replacements_mean);
        peak.records_mean = peak.records_mean.max(f.records_mean);
        peak.store_bytes_mean = peak.store_bytes_mean.max(f.store_bytes_mean);
        peak.in_flight_mean = peak.in_flight_mean.max(f.in_flight_mean);
        peak.queries_mean = peak.queries_mean.max(f.queries_mean);
    }
    let growth_second_half = growth(&peak, at(mid));
    let g = &growth_second_half;
    let flat = [g.routing, g.replacements, g.records, g.store_bytes]
        .iter()
        .all(|&r| r <= 1.25)
        && g.in_flight_and_queries <= 1.5;
    let mut put_stored = run.put_stored.clone();
    put_stored.sort_unstable();
    ChurnReport {
        nodes: sc.nodes,
        records: sc.records,
        hours: sc.hours,
        churn_per_hour: sc.churn_per_hour,
        replaced_per_hour: per_hour,
        replaced: run.replaced,
        owners: sc.owners,
        k: sc.k,
        record_ttl_h: sc.record_ttl.as_secs_f64() / 3600.0,
        replicate_interval_h: sc.replicate_interval.as_secs_f64() / 3600.0,
        republish_interval_h: sc.republish_interval.as_secs_f64() / 3600.0,
        seed: sc.seed,
        puts_ok: put_stored.iter().filter(|&&s| s > 0).count(),
        put_stored_min: put_stored.first().copied().unwrap_or(0),
        retrievable_ok: retrievable >= 0.999,
        final_check,
        hourly,
        growth_vs_hour1,
        growth_second_half,
        flat,
        virtual_s: run.sim.elapsed().as_secs_f64(),
        network: run.sim.stats().clone(),
        digest: format!("{:016x}", run.sim.digest()),
    }
}
