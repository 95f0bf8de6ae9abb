//! The simulated network: [`Sim`], its link model and the lookup scenario.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use kad_core::NodeId;
use kad_core::{Body, Message, Request, Response};
use kad_core::{Config, VirtualClock};
use kad_core::{Contact, PeerAddr};
use kad_core::{Event, Input, Node, NodeBuilder, Output, QueryId, QueryResult};

/// The link model between simulated nodes.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LinkModel {
    /// One-way delay of every message (the round-trip time is twice it).
    pub latency: Duration,
    /// Extra delay, uniform in `[0, jitter]`, added to each message.
    pub jitter: Duration,
    /// Probability that a message is lost (each direction independently).
    pub loss: f64,
}

impl Default for LinkModel {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(50),
            jitter: Duration::ZERO,
            loss: 0.0,
        }
    }
}

#[allow(clippy::large_enum_variant)] // most events are deliveries; boxing would allocate per message
enum EvKind {
    Deliver {
        to: u32,
        from: PeerAddr,
        msg: Message,
    },
    Wake {
        node: u32,
    },
}

struct Ev {
    at: Instant,
    seq: u64,
    kind: EvKind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct SimNode {
    addr: PeerAddr,
    adversary: bool,
    retries: u8,
    joined_at: Instant,
    node: Option<Node>,
    wake: Option<Instant>,
    group: u32,
}

/// Counters of the simulated network.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct SimStats {
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost by the link model.
    pub lost: u64,
    /// Messages to a node that is gone.
    pub to_dead: u64,
    /// Messages cut by a partition.
    pub partitioned: u64,
    /// Requests answered by adversarial nodes with lies (see [`Sim::plan_adversaries`]).
    pub adversary_answers: u64,
}

/// Many nodes on one thread with a virtual clock.
pub struct Sim {
    base: Instant,
    now: Instant,
    seed: u64,
    rng: ChaCha8Rng,
    link: LinkModel,
    nodes: Vec<SimNode>,
    /// Ids of the live nodes, kept up to date by `add_node_with` and `kill`.
    live_ids: rustc_hash::FxHashMap<NodeId, usize>,
    heap: BinaryHeap<Reverse<Ev>>,
    seq: u64,
    events: VecDeque<(usize, Event)>,
    digest: DefaultHasher,
    stats: SimStats,
    epoch_ms: u64,
    /// Subnet of each node index to come (0 or missing: a plain `mem://INDEX`).
    subnet_plan: Vec<u32>,
    /// Whether each node index to come is adversarial.
    adversary_plan: Vec<bool>,
    /// Ids chosen for node indices to come (`None` or missing: random).
    id_plan: Vec<Option<NodeId>>,
    /// The live adversarial nodes, as contacts.
    adversaries: Vec<Contact>,
}

impl Sim {
    /// An empty simulation. `base` is the virtual clock's zero: any `Instant` works (results
    /// depend only on durations from it); callers usually pass `Instant::now()` once.
    pub fn new(seed: u64, link: LinkModel, base: Instant) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        s[8..16].copy_from_slice(b"kad-sim!");
        Self {
            base,
            now: base,
            seed,
            rng: ChaCha8Rng::from_seed(s),
            link,
            nodes: Vec::new(),
            live_ids: Default::default(),
            heap: BinaryHeap::new(),
            seq: 0,
            events: VecDeque::new(),
            digest: DefaultHasher::new(),
            stats: SimStats::default(),
            epoch_ms: 1_700_000_000_000,
            subnet_plan: Vec::new(),
            adversary_plan: Vec::new(),
            id_plan: Vec::new(),
            adversaries: Vec::new(),
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// The simulation's RNG (for scenario choices, so they stay reproducible).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Network counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// A hash of every delivery and every event so far: equal seeds and inputs give equal digests.
    pub fn digest(&self) -> u64 {
        self.digest.finish()
    }

    /// Number of nodes ever added (dead ones included; indices are never reused).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was ever added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Places the nodes to come in simulated subnets: node `i` gets the address
    /// [`PeerAddr::mem_in_subnet(subnets[i], i)`](PeerAddr::mem_in_subnet) (a 0 or missing entry:
    /// plain `mem://i`), so per-subnet limits ([`Config::subnet_limit`]) see them.
    pub fn plan_subnets(&mut self, subnets: Vec<u32>) {
        self.subnet_plan = subnets;
    }

    /// Makes the nodes to come at the indices where `adversarial[i]` is true colluding
    /// adversaries (an eclipse attack): they answer every FIND_NODE and FIND_VALUE with the
    /// closest live adversaries to the target (as many as their `k`) and never with a value, and
    /// acknowledge every STORE without keeping the record. Everything else (PINGs, their own
    /// lookups, joining) they do as honest nodes, so they enter routing tables like anyone.
    pub fn plan_adversaries(&mut self, adversarial: Vec<bool>) {
        self.adversary_plan = adversarial;
    }

    /// Gives the nodes to come chosen ids: node `i` gets `ids[i]` when it is `Some` (random
    /// otherwise). For attackers that grind ids next to a target. The random draw still happens,
    /// so planning ids does not move any other random choice.
    pub fn plan_ids(&mut self, ids: Vec<Option<NodeId>>) {
        self.id_plan = ids;
    }

    /// Whether the node at `idx` is adversarial.
    pub fn is_adversary(&self, idx: usize) -> bool {
        self.nodes.get(idx).is_some_and(|n| n.adversary)
    }

    /// Adds a node with `config` (its RNG seed, wall clock and id are set by the simulator).
    /// Returns its index; its address is `mem://INDEX` (see [`plan_subnets`](Self::plan_subnets)).
    pub fn add_node(&mut self, config: Config) -> usize {
        self.add_node_with(config, |b| b)
    }

    /// Like [`add_node`](Self::add_node), letting `build` add plugins, a store or a validator.
    pub fn add_node_with(
        &mut self,
        mut config: Config,
        build: impl FnOnce(NodeBuilder) -> NodeBuilder,
    ) -> usize {
        let idx = self.nodes.len();
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        seed[8..16].copy_from_slice(&(idx as u64).to_le_bytes());
        config.rng_seed = Some(seed);
        config.wall_clock = Arc::new(VirtualClock {
            base: self.base,
            epoch_ms: self.epoch_ms,
        });
        let mut id = NodeId::random(&mut self.rng);
        if let Some(Some(planned)) = self.id_plan.get(idx) {
            id = *planned;
        }
        let addr = match self.subnet_plan.get(idx) {
            Some(&net) if net != 0 => PeerAddr::mem_in_subnet(net, idx as u32),
            _ => PeerAddr::Mem(idx as u64),
        };
        let adversary = self.adversary_plan.get(idx).copied().unwrap_or(false);
        let node = build(Node::builder(config).id(id).addrs(vec![addr.clone()]))
            .build(self.now)
            .unwrap_or_else(|e| panic!("invalid simulated node config: {e}"));
        self.live_ids.insert(id, idx);
        if adversary {
            self.adversaries.push(node.contact().clone());
        }
        self.nodes.push(SimNode {
            addr,
            adversary,
            retries: 0,
            joined_at: self.now,
            node: Some(node),
            wake: None,
            group: 0,
        });
        self.schedule_wake(idx);
        idx
    }

    /// The node at `idx`, if alive.
    pub fn node(&self, idx: usize) -> Option<&Node> {
        self.nodes.get(idx).and_then(|n| n.node.as_ref())
    }

    /// Counts one more bootstrap retry of node `idx`; returns the new count.
    pub fn bump_retries(&mut self, idx: usize) -> u8 {
        let Some(n) = self.nodes.get_mut(idx) else {
            return u8::MAX;
        };
        n.retries = n.retries.saturating_add(1);
        n.retries
    }

    /// When the node at `idx` was added, if it is alive.
    pub fn joined_at(&self, idx: usize) -> Option<Instant> {
        self.nodes
            .get(idx)
            .filter(|n| n.node.is_some())
            .map(|n| n.joined_at)
    }

    /// Whether a live node has the id `id`.
    pub fn is_live_id(&self, id: &NodeId) -> bool {
        self.live_ids.contains_key(id)
    }

    /// The index of the live node with id `id`.
    pub fn index_of_id(&self, id: &NodeId) -> Option<usize> {
        self.live_ids.get(id).copied()
    }

    /// Whether the node at `idx` is alive.
    pub fn is_alive(&self, idx: usize) -> bool {
        self.node(idx).is_some()
    }

    /// Indices of the live nodes.
    pub fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.node.is_some())
            .map(|(i, _)| i)
    }

    /// Runs `f` on a live node at the current time (a command), then routes its outputs.
    pub fn command<R>(&mut self, idx: usize, f: impl FnOnce(&mut Node, Instant) -> R) -> Option<R> {
        let now = self.now;
        let node = self.nodes.get_mut(idx)?.node.as_mut()?;
        let r = f(node, now);
        self.drain(idx);
        Some(r)
    }

    /// Joins node `idx` as a deployed node does: it pings the seeds' addresses (their ids are
    /// not known to it), then looks up its own id ([`Node::bootstrap`]). Every message of the
    /// join crosses the link model, so a lossy link can fail it; the engine's retransmissions
    /// and re-joins are what recover. ([`grow_network`] gives each node its seed's whole
    /// contact instead, as a deployment's list of established bootstrap nodes would.)
    pub fn join(&mut self, idx: usize, seeds: &[Contact]) {
        let addrs: Vec<PeerAddr> = seeds
            .iter()
            .filter_map(|c| c.addrs.first().cloned())
            .collect();
        let _ = self.command(idx, |n, now| n.bootstrap(now, &addrs));
    }

    /// Removes a node without notice (churn): it stops answering, its state is freed.
    pub fn kill(&mut self, idx: usize) {
        if let Some(n) = self.nodes.get_mut(idx) {
            if let Some(node) = n.node.take() {
                self.live_ids.remove(&node.id());
                if n.adversary {
                    self.adversaries.retain(|c| c.id != node.id());
                }
            }
            n.wake = None;
        }
    }

    /// Splits the network: messages only flow between nodes of the same group.
    /// `group_of(idx)` gives each live node's group.
    pub fn partition(&mut self, mut group_of: impl FnMut(usize) -> u32) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.group = group_of(i);
        }
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
        }
    }

    /// The next event, if any: `(node index, event)`.
    pub fn poll_event(&mut self) -> Option<(usize, Event)> {
        self.events.pop_front()
    }

    fn push(&mut self, at: Instant, kind: EvKind) {
        self.seq += 1;
        self.heap.push(Reverse(Ev {
            at,
            seq: self.seq,
            kind,
        }));
    }

    fn schedule_wake(&mut self, idx: usize) {
        let Some(sn) = self.nodes.get_mut(idx) else {
            return;
        };
        let Some(node) = sn.node.as_ref() else { return };
        let Some(t) = node.poll_timeout() else { return };
        let t = t.max(self.now);
        if sn.wake.is_some_and(|w| w <= t) {
            return;
        }
        sn.wake = Some(t);
        self.push(t, EvKind::Wake { node: idx as u32 });
    }

    fn drain(&mut self, idx: usize) {
        loop {
            let Some(out) = self.nodes[idx].node.as_mut().and_then(Node::poll_output) else {
                break;
            };
            match out {
                Output::Send { to, msg } => self.transmit(idx, to, msg),
                Output::Event(ev) => {
                    if let Event::QueryDone { id, result } = &ev {
                        (idx, id.0, query_result_tag(result)).hash(&mut self.digest);
                    }
                    self.events.push_back((idx, ev));
                }
                _ => {}
            }
        }
        self.schedule_wake(idx);
    }

    fn transmit(&mut self, from_idx: usize, to: PeerAddr, msg: Message) {
        let PeerAddr::Mem(a) = to else { return };
        let j = (a & 0xFFFF_FFFF) as usize;
        if self.link.loss > 0.0 && self.rng.random_bool(self.link.loss.clamp(0.0, 1.0)) {
            self.stats.lost += 1;
            return;
        }
        match self.nodes.get(j) {
            Some(n) if n.node.is_some() && n.addr == to => {
                if n.group != self.nodes[from_idx].group {
                    self.stats.partitioned += 1;
                    return;
                }
            }
            _ => {
                self.stats.to_dead += 1;
                return;
            }
        }
        let mut delay = self.link.latency;
        if !self.link.jitter.is_zero() {
            let j = self
                .rng
                .random_range(0..=self.link.jitter.as_micros() as u64);
            delay += Duration::from_micros(j);
        }
        let at = self.now + delay;
        self.push(
            at,
            EvKind::Deliver {
                to: j as u32,
                from: self.nodes[from_idx].addr.clone(),
                msg,
            },
        );
    }

    /// Processes the earliest event. Returns false when nothing is scheduled.
    pub fn step(&mut self) -> bool {
        let Some(Reverse(ev)) = self.heap.pop() else {
            return false;
        };
        if ev.at > self.now {
            self.now = ev.at;
        }
        match ev.kind {
            EvKind::Deliver { to, from, msg } => {
                let to = to as usize;
                if self.nodes[to].node.is_none() {
                    self.stats.to_dead += 1;
                    return true;
                }
                self.stats.delivered += 1;
                let tag = match &msg.body {
                    Body::Request(r) => r.method().len() as u8,
                    Body::Response(_) => 100,
                    Body::Error(_) => 200,
                    _ => 255,
                };
                (
                    (self.now - self.base).as_nanos() as u64,
                    to,
                    &from,
                    &msg.txn.0[..],
                    tag,
                )
                    .hash(&mut self.digest);
                if self.nodes[to].adversary {
                    if let Some(lie) = self.adversary_answer(to, &from, &msg) {
                        self.stats.adversary_answers += 1;
                        if let Some(j) = self.index_of(&from) {
                            self.transmit(to, self.nodes[j].addr.clone(), lie);
                        }
                        return true;
                    }
                }
                let Some(node) = self.nodes[to].node.as_mut() else {
                    return true;
                };
                node.handle_input(self.now, Input::Message { from, msg });
                self.drain(to);
            }
            EvKind::Wake { node } => {
                let idx = node as usize;
                let sn = &mut self.nodes[idx];
                if sn.wake != Some(ev.at) {
                    return true; // superseded
                }
                sn.wake = None;
                let Some(n) = sn.node.as_mut() else {
                    return true;
                };
                n.handle_input(self.now, Input::Timeout);
                self.drain(idx);
            }
        }
        true
    }

    /// The node index behind a simulated address.
    fn index_of(&self, a: &PeerAddr) -> Option<usize> {
        let PeerAddr::Mem(a) = a else { return None };
        let j = (a & 0xFFFF_FFFF) as usize;
        (self.nodes.get(j)?.addr == PeerAddr::Mem(*a)).then_some(j)
    }

    /// What adversarial node `idx` answers to `msg` instead of the truth, if it lies about it.
    fn adversary_answer(&self, idx: usize, from: &PeerAddr, msg: &Message) -> Option<Message> {
        let Body::Request(req) = &msg.body else {
            return None;
        };
        let node = self.nodes[idx].node.as_ref()?;
        let closest = |target: &NodeId| {
            let mut v: Vec<Contact> = self
                .adversaries
                .iter()
                .filter(|c| c.id != node.id())
                .cloned()
                .collect();
            v.sort_by_key(|c| c.id.distance(target));
            v.truncate(node.config().k);
            v
        };
        let body = match req {
            Request::FindNode { target } => Response::Nodes {
                nodes: closest(target),
            },
            Request::FindValue { key } => Response::Nodes {
                nodes: closest(key),
            },
            Request::Store { record, want_nodes } => Response::Stored {
                nodes: if *want_nodes {
                    closest(&record.key)
                } else {
                    Vec::new()
                },
            },
            _ => return None,
        };
        Some(Message {
            txn: msg.txn.clone(),
            sender: node.contact().clone(),
            recipient: Some(msg.sender.id),
            read_only: false,
            observed: Some(from.clone()),
            body: Body::Response(body),
        })
    }

    /// When the earliest scheduled event happens, if any (drive with [`step`](Self::step) and
    /// [`poll_event`](Self::poll_event) to see each event at its own virtual time).
    pub fn next_event_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Processes every event up to and including `t`, then sets the clock to `t`.
    pub fn run_until(&mut self, t: Instant) {
        while self.heap.peek().is_some_and(|Reverse(e)| e.at <= t) {
            self.step();
        }
        if t > self.now {
            self.now = t;
        }
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }
}

fn query_result_tag(r: &QueryResult) -> u64 {
    let mut h = DefaultHasher::new();
    match r {
        QueryResult::FindNode(Ok(o))
        | QueryResult::Bootstrap(Ok(o))
        | QueryResult::Refresh(o)
        | QueryResult::PluginLookup(o) => {
            for c in &o.closest {
                c.id.hash(&mut h);
            }
            (o.stats.rpcs, o.stats.hops, o.elapsed.as_nanos() as u64).hash(&mut h);
        }
        QueryResult::Get(Ok(g)) => (&g.record.value[..], g.answers).hash(&mut h),
        QueryResult::Put(Ok(p)) => (p.stored, p.tried).hash(&mut h),
        other => format!("{other:?}").hash(&mut h),
    }
    h.finish()
}

/// Parameters of the lookup scenario behind `kad sim`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LookupScenario {
    /// Nodes in the network.
    pub nodes: usize,
    /// Lookups to run after the network has formed.
    pub lookups: usize,
    /// Bucket size.
    pub k: usize,
    /// Lookup parallelism.
    pub alpha: usize,
    /// The link model.
    pub link: LinkModel,
    /// Fraction of the nodes that leave without notice (and as many that join) during the lookups.
    pub churn: f64,
    /// The simulation seed.
    pub seed: u64,
    /// Virtual time between two joins while the network forms.
    pub join_spacing: Duration,
    /// Virtual time between two lookup starts.
    pub lookup_spacing: Duration,
}

impl Default for LookupScenario {
    fn default() -> Self {
        Self {
            nodes: 1000,
            lookups: 200,
            k: 20,
            alpha: 3,
            link: LinkModel::default(),
            churn: 0.0,
            seed: 1,
            join_spacing: Duration::from_millis(2),
            lookup_spacing: Duration::from_millis(20),
        }
    }
}

/// What the lookup scenario measured (virtual time).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ScenarioReport {
    /// Nodes at the start of the lookups.
    pub nodes: usize,
    /// Lookups run.
    pub lookups: usize,
    /// Bucket size.
    pub k: usize,
    /// Lookup parallelism.
    pub alpha: usize,
    /// The seed.
    pub seed: u64,
    /// Fraction of lookups that found the true closest live node.
    pub success_rate: f64,
    /// Median path length to the closest node found.
    pub hops_p50: u32,
    /// 90th percentile of hops.
    pub hops_p90: u32,
    /// Longest path.
    pub hops_max: u32,
    /// Median requests per lookup.
    pub rpcs_per_lookup_p50: u32,
    /// Median lookup latency, virtual ms.
    pub latency_ms_p50: f64,
    /// 90th percentile latency, virtual ms.
    pub latency_ms_p90: f64,
    /// 99th percentile latency, virtual ms.
    pub latency_ms_p99: f64,
    /// Lookups that did not finish within the time limit.
    pub unfinished: usize,
    /// Nodes that left (and joined) during the lookups.
    pub churned: usize,
    /// Mean routing-table size of live nodes at the end.
    pub routing_table_mean: f64,
    /// Virtual time simulated, seconds.
    pub virtual_s: f64,
    /// Network counters.
    pub network: SimStats,
    /// Hash of every delivery and event: equal for equal arguments.
    pub digest: String,
}

const MAX_BOOTSTRAP_RETRIES: u8 = 3;

/// Adds `count` nodes with `config` to `sim`, one every `join_spacing` of virtual time, each
/// joining through a random earlier node (`build` adds plugins, a store or a validator to node
/// `i`); then lets the joins settle for 20 virtual seconds. A node whose bootstrap found too few
/// nodes retries through another one, as an application would. Events raised meanwhile are
/// consumed. `progress(joined)` is called every 256 joins. Returns the nodes' indices.
pub fn grow_network(
    sim: &mut Sim,
    count: usize,
    config: &Config,
    join_spacing: Duration,
    build: impl FnMut(usize, NodeBuilder) -> NodeBuilder,
    progress: impl FnMut(usize),
) -> Vec<usize> {
    grow_network_with_seeds(sim, count, config, join_spacing, 1, build, progress)
}

/// Like [`grow_network`], each node joining through `seeds` distinct random earlier nodes (as
/// many as there are, at least 1): a deployment's list of bootstrap nodes. With one seed, a
/// node that joins through an adversary learns only what the adversary tells it.
pub fn grow_network_with_seeds(
    sim: &mut Sim,
    count: usize,
    config: &Config,
    join_spacing: Duration,
    seeds: usize,
    mut build: impl FnMut(usize, NodeBuilder) -> NodeBuilder,
    mut progress: impl FnMut(usize),
) -> Vec<usize> {
    let start = sim.now();
    let k = config.k;
    let mut contacts: Vec<Contact> = Vec::with_capacity(count);
    let mut indices = Vec::with_capacity(count);
    for i in 0..count {
        sim.run_until(start + join_spacing * i as u32);
        retry_failed_bootstraps(sim, &contacts, k);
        let idx = sim.add_node_with(config.clone(), |b| build(i, b));
        if !contacts.is_empty() {
            let mut chosen: Vec<Contact> = Vec::new();
            let want = seeds.clamp(1, contacts.len());
            while chosen.len() < want {
                let j = sim.rng().random_range(0..contacts.len());
                if !chosen.iter().any(|c| c.id == contacts[j].id) {
                    chosen.push(contacts[j].clone());
                }
            }
            let _ = sim.command(idx, |n, now| n.bootstrap_with(now, chosen));
        }
        if let Some(n) = sim.node(idx) {
            contacts.push(n.contact().clone());
        }
        indices.push(idx);
        if i % 256 == 0 {
            progress(i + 1);
        }
    }
    for _ in 0..20 {
        sim.run_for(Duration::from_secs(1));
        retry_failed_bootstraps(sim, &contacts, k);
    }
    indices
}

/// A bootstrap that failed or found fewer than `want` nodes (an application would try again
/// through another seed).
fn poor_bootstrap(r: &Result<kad_core::LookupOutcome, kad_core::QueryError>, want: usize) -> bool {
    r.as_ref().map_or(true, |o| o.closest.len() < want.max(1))
}

/// Retries, through a random other node, the bootstraps that finished without finding anyone.
fn retry_failed_bootstraps(sim: &mut Sim, contacts: &[Contact], k: usize) {
    let mut retry = Vec::new();
    while let Some((idx, ev)) = sim.poll_event() {
        if let Event::QueryDone {
            result: QueryResult::Bootstrap(r),
            ..
        } = &ev
        {
            if poor_bootstrap(r, k.min(contacts.len().saturating_sub(1)))
                && sim.bump_retries(idx) <= MAX_BOOTSTRAP_RETRIES
            {
                retry.push(idx);
            }
        }
    }
    for idx in retry {
        let seed = contacts[sim.rng().random_range(0..contacts.len())].clone();
        if seed.id != sim.node(idx).map_or(seed.id, Node::id) {
            let _ = sim.command(idx, |n, now| n.bootstrap_with(now, vec![seed]));
        }
    }
}

fn percentile<T: Copy + Ord + Default>(v: &mut [T], p: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Builds a network of `nodes` nodes (each joins through a random earlier node), then runs
/// `lookups` FIND_NODE lookups for random targets from random live nodes, with optional churn,
/// and reports success, hops, RPCs and latency. `progress(done, total)` is called as work advances.
pub fn run_lookup_scenario(
    sc: &LookupScenario,
    mut progress: impl FnMut(usize, usize),
) -> ScenarioReport {
    // The virtual clock's zero; results depend only on durations from it.
    #[allow(clippy::disallowed_methods)]
    let base = Instant::now();
    let mut sim = Sim::new(sc.seed, sc.link.clone(), base);
    let mut cfg = Config::default();
    cfg.k = sc.k;
    cfg.alpha = sc.alpha;
    // Bucket refresh every 15 min would add traffic beyond the scenario's horizon only.
    let total_work = sc.nodes + sc.lookups;
    let mut done_work = 0;

    // 1. Join.
    grow_network(
        &mut sim,
        sc.nodes,
        &cfg,
        sc.join_spacing,
        |_, b| b,
        |i| progress(i, total_work),
    );
    done_work += sc.nodes;

    // 2. Lookups, with churn spread over the same period.
    let start = sim.now();
    let phase = sc.lookup_spacing * sc.lookups as u32;
    let churn_n = ((sc.nodes as f64) * sc.churn).round() as usize;
    let mut churn_at: Vec<Instant> = (0..churn_n)
        .map(|i| start + phase.mul_f64(i as f64 / churn_n.max(1) as f64))
        .collect();
    churn_at.reverse();
    let mut live: Vec<usize> = sim.alive().collect();
    let mut pending: rustc_hash::FxHashMap<(usize, QueryId), NodeId> = Default::default();
    let mut hops = Vec::new();
    let mut rpcs = Vec::new();
    let mut lat_us: Vec<u64> = Vec::new();
    let mut ok = 0usize;
    let mut finished = 0usize;
    let mut churned = 0usize;
    let mut aborted = 0usize;

    let mut handle_events =
        |sim: &mut Sim,
         live: &[usize],
         pending: &mut rustc_hash::FxHashMap<(usize, QueryId), NodeId>| {
            let mut n_done = 0;
            let mut retry = Vec::new();
            while let Some((idx, ev)) = sim.poll_event() {
                if let Event::QueryDone {
                    result: QueryResult::Bootstrap(r),
                    ..
                } = &ev
                {
                    if poor_bootstrap(r, sc.k) && sim.bump_retries(idx) <= MAX_BOOTSTRAP_RETRIES {
                        retry.push(idx);
                    }
                    continue;
                }
                let Event::QueryDone {
                    id,
                    result: QueryResult::FindNode(r),
                } = ev
                else {
                    continue;
                };
                let Some(target) = pending.remove(&(idx, id)) else {
                    continue;
                };
                n_done += 1;
                let Ok(o) = r else { continue };
                // Success: the first live node of the result is the true closest among the nodes
                // alive for the whole lookup (joined before it started, still alive at its end),
                // the searcher excluded (a lookup never returns its own node).
                let started = sim.now() - o.elapsed;
                let truth = live
                    .iter()
                    .filter(|&&i| i != idx && sim.joined_at(i).is_some_and(|t| t <= started))
                    .filter_map(|&i| sim.node(i).map(|n| n.id()))
                    .min_by_key(|id| id.distance(&target));
                let first_live = o.closest.iter().map(|c| c.id).find(|id| sim.is_live_id(id));
                if truth.is_some() && first_live == truth {
                    ok += 1;
                }
                hops.push(o.stats.hops);
                rpcs.push(o.stats.rpcs);
                lat_us.push(o.elapsed.as_micros() as u64);
            }
            for idx in retry {
                let seed = live[sim.rng().random_range(0..live.len())];
                if let Some(c) = sim.node(seed).map(|n| n.contact().clone()) {
                    let _ = sim.command(idx, |n, now| n.bootstrap_with(now, vec![c]));
                }
            }
            n_done
        };

    // One step past the last lookup applies the churn scheduled after it.
    for l in 0..=sc.lookups {
        let t = start + sc.lookup_spacing * l as u32;
        while churn_at.last().is_some_and(|c| *c <= t) {
            let c = churn_at.pop().unwrap_or(t);
            sim.run_until(c);
            finished += handle_events(&mut sim, &live, &mut pending);
            // One leaves without notice...
            let victim_pos = sim.rng().random_range(0..live.len());
            let victim = live.swap_remove(victim_pos);
            sim.kill(victim);
            // A lookup whose origin left has nobody to report to: it is not counted.
            let before = pending.len();
            pending.retain(|(src, _), _| *src != victim);
            aborted += before - pending.len();
            // ...and one joins through a random live node.
            let seed_idx = live[sim.rng().random_range(0..live.len())];
            let Some(seed) = sim.node(seed_idx).map(|n| n.contact().clone()) else {
                continue;
            };
            let idx = sim.add_node(cfg.clone());
            let _ = sim.command(idx, |n, now| n.bootstrap_with(now, vec![seed]));
            live.push(idx);
            churned += 1;
        }
        sim.run_until(t);
        finished += handle_events(&mut sim, &live, &mut pending);
        if l == sc.lookups {
            break;
        }
        let src = live[sim.rng().random_range(0..live.len())];
        let target = NodeId::random(sim.rng());
        if let Some(Ok(q)) = sim.command(src, |n, now| n.find_node(now, target)) {
            pending.insert((src, q), target);
        }
        done_work += 1;
        if l % 16 == 0 {
            progress(done_work, total_work);
        }
    }
    // Drain: lookups end within a bounded number of timeouts.
    let limit = sim.now() + Duration::from_secs(120);
    while !pending.is_empty() && sim.now() < limit {
        sim.run_for(Duration::from_millis(100));
        finished += handle_events(&mut sim, &live, &mut pending);
    }
    progress(total_work, total_work);
    let _ = finished;

    let rt: Vec<usize> = live
        .iter()
        .filter_map(|&i| sim.node(i).map(|n| n.routing_table().len()))
        .collect();
    let n_lookups = lat_us.len() + pending.len();
    let _ = aborted;
    let to_ms = |us: u64| us as f64 / 1000.0;
    ScenarioReport {
        nodes: sc.nodes,
        lookups: sc.lookups,
        k: sc.k,
        alpha: sc.alpha,
        seed: sc.seed,
        success_rate: if n_lookups == 0 {
            0.0
        } else {
            ok as f64 / n_lookups as f64
        },
        hops_p50: percentile(&mut hops, 0.5),
        hops_p90: percentile(&mut hops, 0.9),
        hops_max: hops.iter().copied().max().unwrap_or(0),
        rpcs_per_lookup_p50: percentile(&mut rpcs, 0.5),
        latency_ms_p50: to_ms(percentile(&mut lat_us, 0.5)),
        latency_ms_p90: to_ms(percentile(&mut lat_us, 0.9)),
        latency_ms_p99: to_ms(percentile(&mut lat_us, 0.99)),
        unfinished: pending.len(),
        churned,
        routing_table_mean: if rt.is_empty() {
            0.0
        } else {
            rt.iter().sum::<usize>() as f64 / rt.len() as f64
        },
        virtual_s: sim.elapsed().as_secs_f64(),
        network: sim.stats().clone(),
        digest: format!("{:016x}", sim.digest()),
    }
}
