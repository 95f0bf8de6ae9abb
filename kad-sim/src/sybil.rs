//! The Sybil and eclipse scenario behind `kad sim sybil`: a share of the network colludes to
//! capture lookups, and each defence is measured with and without.
//!
//! A fraction of the nodes ([`SybilScenario::adversary_fraction`], default 20%) are
//! adversaries ([`Sim::plan_adversaries`]): they join and answer PINGs like anyone, so they
//! enter routing tables, but every FIND_NODE and FIND_VALUE they are asked gets the closest
//! *adversaries* to the target (they know each other), never a value, and every STORE is
//! acknowledged and dropped. By default they sit in a few shared subnets (a rented block of
//! addresses, [`SybilScenario::adversary_subnets`]); honest nodes each have their own.
//!
//! The same network is grown once per defence setting ([`Defence`]): none, disjoint lookup
//! paths ([`Config::disjoint_paths`]), per-subnet limits in buckets and lookups
//! ([`Config::subnet_limit`]), and both. In each, honest owners put records, then honest nodes
//! run FIND_NODE lookups for random targets and GETs of the records. A lookup succeeds when its
//! result holds the true closest honest node to the target; a GET when it returns the value.
//!
//! ```
//! use kad_sim::sybil::{Defence, SybilScenario, run_sybil_scenario};
//! let mut sc = SybilScenario::default();
//! sc.nodes = 150;
//! sc.lookups = 30;
//! sc.records = 10;
//! sc.defences = vec![Defence::All];
//! let report = run_sybil_scenario(&sc, |_, _, _| {});
//! assert_eq!(report.runs.len(), 1);
//! assert!(report.runs[0].lookup_success > 0.9);
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::{LinkModel, Sim, SimStats, grow_network_with_seeds};
use kad_core::Config;
use kad_core::NodeId;
use kad_core::{Event, QueryId, QueryResult};

/// Longest the lookups and gets may take to finish, virtual time.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);
/// Bits of prefix a targeted adversary's id shares with the key it surrounds.
pub const TARGET_PREFIX_BITS: u32 = 20;
/// First subnet number of honest nodes (adversaries use 1..=adversary_subnets, or their own
/// from `SPREAD_BASE`).
const HONEST_BASE: u32 = 1 << 24;
const SPREAD_BASE: u32 = 1 << 25;

/// A defence setting of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Defence {
    /// No defence: one lookup path, no subnet limit.
    None,
    /// Disjoint lookup paths only ([`SybilScenario::disjoint_paths`]).
    DisjointPaths,
    /// Per-subnet limits only ([`SybilScenario::subnet_limit`]), in buckets and lookups.
    SubnetLimit,
    /// Both.
    All,
}

impl Defence {
    /// Every setting, in report order.
    pub const ALL: [Self; 4] = [
        Self::None,
        Self::DisjointPaths,
        Self::SubnetLimit,
        Self::All,
    ];

    /// The setting's name, as `kad sim sybil --defences` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::DisjointPaths => "disjoint_paths",
            Self::SubnetLimit => "subnet_limit",
            Self::All => "all",
        }
    }

    /// The setting named `s` (see [`name`](Self::name)).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// Parameters of the Sybil scenario.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SybilScenario {
    /// Nodes in the network, adversaries included.
    pub nodes: usize,
    /// Fraction of the nodes that are adversaries, 0 to 0.9.
    pub adversary_fraction: f64,
    /// Subnets the adversaries share (round robin); 0: each adversary in a subnet of its own
    /// (the per-subnet limit then cannot help).
    pub adversary_subnets: u32,
    /// FIND_NODE lookups from random honest nodes for random targets, per run.
    pub lookups: usize,
    /// Records put by honest owners and fetched once each by another honest node, per run.
    pub records: usize,
    /// Bucket size.
    pub k: usize,
    /// Lookup parallelism.
    pub alpha: usize,
    /// Distinct random earlier nodes each node joins through (a deployment's bootstrap list).
    /// With 1, a node whose only seed is an adversary is eclipsed from the start.
    pub bootstrap_seeds: usize,
    /// Paths of the runs with disjoint paths.
    pub disjoint_paths: usize,
    /// Per-subnet limit of the runs with it.
    pub subnet_limit: usize,
    /// The settings to run, each on a network of its own.
    pub defences: Vec<Defence>,
    /// Targeted eclipse: instead of random ids, the adversaries take ids that share the first
    /// [`TARGET_PREFIX_BITS`] bits with one of the first `adversaries / k` record keys (k of
    /// them around each), as an attacker grinding key pairs would (about 2^20 key generations
    /// an id; with an id cost of `b` bits, 2^(20 + b)). They then are those keys' closest nodes.
    pub targeted: bool,
    /// The link model.
    pub link: LinkModel,
    /// The simulation seed.
    pub seed: u64,
}

impl Default for SybilScenario {
    fn default() -> Self {
        Self {
            nodes: 1000,
            adversary_fraction: 0.2,
            adversary_subnets: 4,
            lookups: 300,
            records: 100,
            k: 20,
            alpha: 3,
            bootstrap_seeds: 3,
            disjoint_paths: 4,
            subnet_limit: 2,
            defences: Defence::ALL.to_vec(),
            targeted: false,
            link: LinkModel::default(),
            seed: 1,
        }
    }
}

/// What one defence setting measured.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct DefenceReport {
    /// The setting.
    pub defence: Defence,
    /// Lookup paths used.
    pub disjoint_paths: usize,
    /// Per-subnet limit used (0: none).
    pub subnet_limit: usize,
    /// Lookups run.
    pub lookups: usize,
    /// Fraction whose result held the true closest honest node.
    pub lookup_success: f64,
    /// Gets run.
    pub gets: usize,
    /// Fraction that returned the record's value.
    pub get_success: f64,
    /// With `targeted`: gets of the keys the adversaries surround.
    pub targeted_gets: usize,
    /// With `targeted`: fraction of those that returned the value.
    pub targeted_get_success: f64,
    /// Mean number of honest nodes that kept each record (acknowledgements from adversaries,
    /// which drop it, not counted).
    pub put_honest_holders_mean: f64,
    /// Share of honest nodes' routing-table entries that are adversaries, at the end.
    pub adversaries_in_tables: f64,
    /// Share of honest nodes that no honest node's routing table holds, at the end: eclipsed
    /// nodes, which only a lucky lookup can find.
    pub honest_unknown: f64,
    /// Median requests per lookup.
    pub rpcs_per_lookup_p50: u32,
    /// Median lookup latency, virtual ms.
    pub latency_ms_p50: f64,
    /// Lookups and gets that had not finished by the end.
    pub unfinished: usize,
    /// Network counters (`adversary_answers`: lies told).
    pub network: SimStats,
    /// Hash of every delivery and event: equal for equal arguments.
    pub digest: String,
}

/// What the scenario measured.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SybilReport {
    /// Nodes in the network.
    pub nodes: usize,
    /// Of which adversaries.
    pub adversaries: usize,
    /// Subnets the adversaries share (0: one each).
    pub adversary_subnets: u32,
    /// Whether the adversaries chose ids around record keys.
    pub targeted: bool,
    /// Bucket size.
    pub k: usize,
    /// Lookup parallelism.
    pub alpha: usize,
    /// Nodes each node joined through.
    pub bootstrap_seeds: usize,
    /// The seed.
    pub seed: u64,
    /// One entry per defence setting, in the order asked.
    pub runs: Vec<DefenceReport>,
}

enum Pending {
    Lookup(NodeId),
    Get(usize),
    Put,
}

/// Runs every setting of `sc.defences` on a network of its own and reports each.
/// `progress(defence, done, total)` is called as work advances.
pub fn run_sybil_scenario(
    sc: &SybilScenario,
    mut progress: impl FnMut(Defence, usize, usize),
) -> SybilReport {
    let adversaries = ((sc.nodes as f64) * sc.adversary_fraction.clamp(0.0, 0.9)).round() as usize;
    let runs = sc
        .defences
        .iter()
        .map(|d| run_one(sc, *d, adversaries, &mut progress))
        .collect();
    SybilReport {
        nodes: sc.nodes,
        adversaries,
        adversary_subnets: sc.adversary_subnets,
        targeted: sc.targeted,
        k: sc.k,
        alpha: sc.alpha,
        bootstrap_seeds: sc.bootstrap_seeds,
        seed: sc.seed,
        runs,
    }
}

fn run_one(
    sc: &SybilScenario,
    defence: Defence,
    adversaries: usize,
    progress: &mut impl FnMut(Defence, usize, usize),
) -> DefenceReport {
    let (paths, limit) = match defence {
        Defence::None => (1, 0),
        Defence::DisjointPaths => (sc.disjoint_paths, 0),
        Defence::SubnetLimit => (1, sc.subnet_limit),
        Defence::All => (sc.disjoint_paths, sc.subnet_limit),
    };
    // The virtual clock's zero; results depend only on durations from it.
    #[allow(clippy::disallowed_methods)]
    let base = Instant::now();
    let mut sim = Sim::new(sc.seed, sc.link.clone(), base);
    // The same adversaries and subnets in every run: drawn from the seed alone. Node 0, the
    // first seed of the network, is honest.
    let mut plan_rng = ChaCha8Rng::seed_from_u64(sc.seed ^ 0x5eed_5b11);
    let mut order: Vec<usize> = (1..sc.nodes).collect();
    order.shuffle(&mut plan_rng);
    let mut bad = vec![false; sc.nodes];
    for &i in order.iter().take(adversaries) {
        bad[i] = true;
    }
    let mut seen_bad = 0u32;
    let subnets = (0..sc.nodes)
        .map(|i| {
            if !bad[i] {
                HONEST_BASE + i as u32
            } else {
                seen_bad += 1;
                if sc.adversary_subnets == 0 {
                    SPREAD_BASE + i as u32
                } else {
                    1 + seen_bad % sc.adversary_subnets
                }
            }
        })
        .collect();
    sim.plan_subnets(subnets);
    sim.plan_adversaries(bad.clone());
    // Targeted: the record keys are drawn up front, and the adversaries surround the first ones.
    let planned_keys: Vec<NodeId> = if sc.targeted {
        (0..sc.records)
            .map(|_| NodeId::random(&mut plan_rng))
            .collect()
    } else {
        Vec::new()
    };
    let targeted_keys = if planned_keys.is_empty() {
        0
    } else {
        (adversaries / sc.k.max(1)).clamp(1, planned_keys.len())
    };
    let keys_at_start = &planned_keys;
    if targeted_keys > 0 {
        let mut ids = vec![None; sc.nodes];
        for (j, &i) in order.iter().take(adversaries).enumerate() {
            let key = keys_at_start[j % targeted_keys];
            let mut id = NodeId::random(&mut plan_rng).0;
            // Keep the key's first TARGET_PREFIX_BITS bits, the rest random.
            let whole = (TARGET_PREFIX_BITS / 8) as usize;
            id[..whole].copy_from_slice(&key.0[..whole]);
            let rest = TARGET_PREFIX_BITS % 8;
            if rest > 0 {
                let mask = 0xFFu8 << (8 - rest);
                id[whole] = (key.0[whole] & mask) | (id[whole] & !mask);
            }
            ids[i] = Some(NodeId(id));
        }
        sim.plan_ids(ids);
    }

    let mut cfg = Config::default();
    cfg.k = sc.k;
    cfg.alpha = sc.alpha;
    cfg.disjoint_paths = paths;
    cfg.subnet_limit = limit;
    let total = sc.nodes + sc.records * 2 + sc.lookups;
    grow_network_with_seeds(
        &mut sim,
        sc.nodes,
        &cfg,
        Duration::from_millis(2),
        sc.bootstrap_seeds,
        |_, b| b,
        |i| progress(defence, i, total),
    );
    let honest: Vec<usize> = sim.alive().filter(|i| !bad[*i]).collect();
    let honest_ids: Vec<(usize, NodeId)> = honest
        .iter()
        .filter_map(|&i| sim.node(i).map(|n| (i, n.id())))
        .collect();
    let mut pending: FxHashMap<(usize, QueryId), Pending> = FxHashMap::default();
    let mut tally = Tally {
        targeted_keys,
        ..Tally::default()
    };
    let spacing = Duration::from_millis(20);

    // Puts by honest owners.
    let mut keys = Vec::with_capacity(sc.records);
    let mut owners = Vec::with_capacity(sc.records);
    for r in 0..sc.records {
        let owner = honest[sim.rng().random_range(0..honest.len())];
        let key = match planned_keys.get(r) {
            Some(k) => *k,
            None => NodeId::random(sim.rng()),
        };
        keys.push(key);
        let value = Bytes::from(format!("sybil-record-{r}"));
        if let Some(Ok(q)) = sim.command(owner, |n, now| n.put(now, key, value)) {
            pending.insert((owner, q), Pending::Put);
        }
        owners.push(owner);
        sim.run_for(spacing);
        tally.take(&mut sim, &mut pending, &honest_ids);
    }
    settle(&mut sim, &mut pending, &mut tally, &honest_ids);
    // Honest holders, counted from their stores (adversaries acknowledge and drop).
    let holders: Vec<usize> = keys
        .iter()
        .map(|key| {
            honest
                .iter()
                .filter(|&&i| sim.node(i).is_some_and(|n| n.store().get(key).is_some()))
                .count()
        })
        .collect();
    progress(defence, sc.nodes + sc.records, total);

    // Lookups and gets, interleaved.
    for j in 0..sc.lookups.max(sc.records) {
        if j < sc.lookups {
            let src = honest[sim.rng().random_range(0..honest.len())];
            let target = NodeId::random(sim.rng());
            if let Some(Ok(q)) = sim.command(src, |n, now| n.find_node(now, target)) {
                pending.insert((src, q), Pending::Lookup(target));
            }
        }
        if j < sc.records {
            let reader = loop {
                let r = honest[sim.rng().random_range(0..honest.len())];
                if r != owners[j] || honest.len() == 1 {
                    break r;
                }
            };
            let key = keys[j];
            if let Some(Ok(q)) = sim.command(reader, |n, now| n.get(now, key, 1)) {
                pending.insert((reader, q), Pending::Get(j));
            }
        }
        sim.run_for(spacing);
        tally.take(&mut sim, &mut pending, &honest_ids);
        if j % 16 == 0 {
            progress(defence, sc.nodes + sc.records + j, total);
        }
    }
    settle(&mut sim, &mut pending, &mut tally, &honest_ids);
    progress(defence, total, total);

    let (mut entries, mut bad_entries) = (0usize, 0usize);
    let mut known = rustc_hash::FxHashSet::default();
    for &i in &honest {
        if let Some(n) = sim.node(i) {
            for e in n.routing_table().iter() {
                entries += 1;
                if sim.index_of_id(&e.contact.id).is_some_and(|j| bad[j]) {
                    bad_entries += 1;
                } else {
                    known.insert(e.contact.id);
                }
            }
        }
    }
    let unknown = honest_ids
        .iter()
        .filter(|(_, id)| !known.contains(id))
        .count();
    let count = |f: fn(&Pending) -> bool| pending.values().filter(|p| f(p)).count();
    let lookups = tally.lookups + count(|p| matches!(p, Pending::Lookup(_)));
    let gets = tally.gets + count(|p| matches!(p, Pending::Get(_)));
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    tally.rpcs.sort_unstable();
    tally.lat_us.sort_unstable();
    DefenceReport {
        defence,
        disjoint_paths: paths,
        subnet_limit: limit,
        lookups,
        lookup_success: ratio(tally.lookup_ok, lookups),
        gets,
        get_success: ratio(tally.get_ok, gets),
        targeted_gets: tally.targeted_gets,
        targeted_get_success: ratio(tally.targeted_ok, tally.targeted_gets),
        put_honest_holders_mean: ratio(holders.iter().sum(), holders.len()),
        adversaries_in_tables: ratio(bad_entries, entries),
        honest_unknown: ratio(unknown, honest_ids.len()),
        rpcs_per_lookup_p50: tally.rpcs.get(tally.rpcs.len() / 2).copied().unwrap_or(0),
        latency_ms_p50: tally
            .lat_us
            .get(tally.lat_us.len() / 2)
            .map_or(0.0, |u| *u as f64 / 1000.0),
        unfinished: pending.len(),
        network: sim.stats().clone(),
        digest: format!("{:016x}", sim.digest()),
    }
}

/// Results so far.
#[derive(Default)]
struct Tally {
    lookups: usize,
    lookup_ok: usize,
    gets: usize,
    get_ok: usize,
    /// Records `0..targeted_keys` are the ones the adversaries surround.
    targeted_keys: usize,
    targeted_gets: usize,
    targeted_ok: usize,
    rpcs: Vec<u32>,
    lat_us: Vec<u64>,
}

impl Tally {
    /// Consumes the events raised so far and scores the finished queries.
    fn take(
        &mut self,
        sim: &mut Sim,
        pending: &mut FxHashMap<(usize, QueryId), Pending>,
        honest: &[(usize, NodeId)],
    ) {
        while let Some((idx, ev)) = sim.poll_event() {
            let Event::QueryDone { id, result } = ev else {
                continue;
            };
            let Some(p) = pending.remove(&(idx, id)) else {
                continue;
            };
            match (p, result) {
                (Pending::Lookup(target), QueryResult::FindNode(r)) => {
                    self.lookups += 1;
                    let Ok(o) = r else { continue };
                    self.rpcs.push(o.stats.rpcs);
                    self.lat_us.push(o.elapsed.as_micros() as u64);
                    // The true closest honest node (honest nodes never leave in this scenario),
                    // the searcher excluded.
                    let truth = honest
                        .iter()
                        .filter(|(i, _)| *i != idx)
                        .map(|(_, id)| *id)
                        .min_by_key(|id| id.distance(&target));
                    if truth.is_some_and(|t| o.closest.iter().any(|c| c.id == t)) {
                        self.lookup_ok += 1;
                    }
                }
                (Pending::Get(r), QueryResult::Get(g)) => {
                    self.gets += 1;
                    let want = format!("sybil-record-{r}");
                    let ok = g.is_ok_and(|g| g.record.value == want.as_bytes());
                    self.get_ok += usize::from(ok);
                    if r < self.targeted_keys {
                        self.targeted_gets += 1;
                        self.targeted_ok += usize::from(ok);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Runs until every pending query has finished, or for [`DRAIN_LIMIT`].
fn settle(
    sim: &mut Sim,
    pending: &mut FxHashMap<(usize, QueryId), Pending>,
    tally: &mut Tally,
    honest: &[(usize, NodeId)],
) {
    let limit = sim.now() + DRAIN_LIMIT;
    while !pending.is_empty() && sim.now() < limit {
        sim.run_for(Duration::from_millis(100));
        tally.take(sim, pending, honest);
    }
}
