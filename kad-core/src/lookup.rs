//! The iterative lookup: a pure state machine over candidates ordered by distance to a target.
//!
//! It asks `alpha` candidates at a time while answers bring closer nodes. A request that stays
//! silent past its soft deadline stops counting against the parallelism, so the search widens
//! instead of waiting (libtorrent's idea). After `alpha` answers in a row bring nothing closer,
//! the lookup is *stalled* and asks every remaining candidate among the k closest at once. It
//! finishes when the k closest candidates that have not failed have all answered.
//!
//! Against colluding nodes (Sybils that name only each other), a lookup can run several
//! *disjoint paths* (S/Kademlia): each path is such a search with its own candidates, no node
//! belongs to two paths, and an answer only feeds the path of the node that gave it. Nodes that
//! name only each other then capture the paths that reached them, not the whole lookup. A lookup
//! can also admit at most a few candidates per subnet ([`PeerAddr::subnet`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::addr::{Contact, PeerAddr, Subnet};
use crate::id::{Distance, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Fresh,
    Waiting { soft_deadline: Instant },
    Succeeded,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    contact: Contact,
    state: State,
    depth: u8,
    attempts: u8,
    outstanding: u8,
}

/// Attempts for candidates outside the head of the lookup.
const TAIL_ATTEMPTS: u8 = 2;

/// Attempts for candidates outside the head of a lookup that waits for slow nodes (the one
/// before a STORE): the record belongs on every one of the k closest, and at 10% loss each way
/// two attempts miss a live node 3.6% of the time, three 0.7%.
const STORE_TAIL_ATTEMPTS: u8 = 3;

/// A lookup's counters, reported when it finishes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LookupStats {
    /// Requests sent.
    pub rpcs: u32,
    /// Answers received.
    pub responses: u32,
    /// Requests that timed out or failed.
    pub failures: u32,
    /// Path length to the closest node found: 1 if it was in our own table, 2 if a node from our
    /// table named it, and so on.
    pub hops: u32,
}

/// One path of a lookup: the iterative search itself.
#[derive(Debug)]
struct Path {
    target: NodeId,
    local: NodeId,
    k: usize,
    alpha: usize,
    max_attempts: u8,
    cap: usize,
    candidates: BTreeMap<Distance, Candidate>,
    best: Option<Distance>,
    no_progress: usize,
    patience: usize,
    stalled: bool,
    skip_silent_head: bool,
    wait_for_slow: bool,
    subnet_limit: usize,
    stats: LookupStats,
}

impl Path {
    fn new(
        local: NodeId,
        target: NodeId,
        k: usize,
        alpha: usize,
        max_attempts: u8,
        seeds: Vec<Contact>,
    ) -> Self {
        let mut l = Self {
            target,
            local,
            k,
            alpha,
            max_attempts,
            cap: k * 3,
            candidates: BTreeMap::new(),
            best: None,
            no_progress: 0,
            patience: 1,
            stalled: false,
            skip_silent_head: false,
            wait_for_slow: false,
            subnet_limit: 0,
            stats: LookupStats::default(),
        };
        for c in seeds {
            l.add(c, 0);
        }
        l.best = l.candidates.keys().next().copied();
        l
    }

    fn add(&mut self, c: Contact, depth: u8) -> bool {
        if c.id == self.local {
            return false;
        }
        let d = c.id.distance(&self.target);
        if self.candidates.contains_key(&d) {
            return false;
        }
        if self.subnet_limit > 0 {
            if let Some(net) = c.primary_addr().and_then(PeerAddr::subnet) {
                let same = self
                    .candidates
                    .values()
                    .filter(|x| x.contact.primary_addr().and_then(PeerAddr::subnet) == Some(net))
                    .count();
                if same >= self.subnet_limit {
                    return false;
                }
            }
        }
        if self.candidates.len() >= self.cap {
            // Full: a newcomer must be closer than the farthest candidate; it evicts the farthest
            // one that is not in flight. If every farther one is in flight, the set grows past
            // the cap by at most the number of requests in flight.
            let Some((far, _)) = self.candidates.iter().next_back() else {
                return false;
            };
            if *far < d {
                return false;
            }
            let victim = self
                .candidates
                .range(d..)
                .rev()
                .find(|(_, c)| !matches!(c.state, State::Waiting { .. }))
                .map(|(k, _)| *k);
            if let Some(v) = victim {
                self.candidates.remove(&v);
            }
        }
        self.candidates.insert(
            d,
            Candidate {
                contact: c,
                state: State::Fresh,
                depth,
                attempts: 0,
                outstanding: 0,
            },
        );
        true
    }

    fn next_with(
        &mut self,
        now: Instant,
        soft_for: impl Fn(&Contact) -> Duration,
        room: usize,
    ) -> Vec<Contact> {
        let parallelism = if self.stalled { self.k } else { self.alpha };
        let mut active = 0;
        let mut out = Vec::new();
        let mut rank = 0;
        for cand in self.candidates.values_mut() {
            if rank >= self.k {
                break;
            }
            match cand.state {
                State::Failed => continue,
                State::Succeeded => {}
                State::Waiting { soft_deadline } => {
                    if soft_deadline > now {
                        // A candidate that has been silent past a soft deadline before no longer
                        // holds a slot, even while it is asked again: the search widens around it.
                        if cand.attempts == 1 {
                            active += 1;
                        }
                    } else if rank >= self.alpha
                        || (self.skip_silent_head && cand.attempts >= self.max_attempts)
                    {
                        // Silent past its soft deadline outside the head (or on its last attempt,
                        // with skip_silent_head): skipped (it no longer counts among the k
                        // closest, though a late answer still does).
                        continue;
                    } else if cand.attempts < self.max_attempts && out.len() < room {
                        cand.attempts += 1;
                        cand.outstanding += 1;
                        let wait = soft_for(&cand.contact) * u32::from(cand.attempts);
                        cand.state = State::Waiting {
                            soft_deadline: now + wait,
                        };
                        out.push(cand.contact.clone());
                    }
                }
                State::Fresh => {
                    if active < parallelism && out.len() < room {
                        cand.attempts += 1;
                        cand.outstanding += 1;
                        let wait = soft_for(&cand.contact) * u32::from(cand.attempts);
                        cand.state = State::Waiting {
                            soft_deadline: now + wait,
                        };
                        active += 1;
                        out.push(cand.contact.clone());
                    }
                }
            }
            rank += 1;
        }
        self.stats.rpcs += out.len() as u32;
        out
    }

    /// The candidate `id` answered, naming `nodes`; those `admit` accepts become candidates.
    /// Returns the ids added.
    fn on_success(
        &mut self,
        id: &NodeId,
        nodes: &[Contact],
        mut admit: impl FnMut(&Contact) -> bool,
    ) -> Vec<NodeId> {
        let d = id.distance(&self.target);
        let mut added = Vec::new();
        let Some(cand) = self.candidates.get_mut(&d) else {
            return added;
        };
        if cand.state == State::Succeeded {
            return added;
        }
        cand.state = State::Succeeded;
        let depth = cand.depth.saturating_add(1);
        self.stats.responses += 1;
        for n in nodes {
            if admit(n) && self.add(n.clone(), depth) {
                added.push(n.id);
            }
        }
        let closest = self
            .candidates
            .iter()
            .find(|(_, c)| c.state != State::Failed)
            .map(|(d, _)| *d);
        if closest.is_some() && (self.best.is_none() || closest < self.best) {
            self.best = closest;
            self.no_progress = 0;
            self.stalled = false;
        } else {
            self.no_progress += 1;
            if self.no_progress >= self.patience {
                self.stalled = true;
            }
        }
        added
    }

    /// The node asked as `asked` answered as `answered` (another id): `asked` is given up for
    /// good (it never counts among the closest, and is not asked again if named again), and
    /// the node becomes a candidate under the id it answered with, at its own distance, if it
    /// is not one already (and `join`). Returns whether that candidate is new.
    fn on_id_change(&mut self, asked: &NodeId, answered: &Contact, join: bool) -> bool {
        let Some(old) = self.candidates.get_mut(&asked.distance(&self.target)) else {
            return false;
        };
        let depth = old.depth;
        old.state = State::Failed;
        old.outstanding = 0;
        let d = answered.id.distance(&self.target);
        if !join || answered.id == self.local || self.candidates.contains_key(&d) {
            return false;
        }
        self.candidates.insert(
            d,
            Candidate {
                contact: answered.clone(),
                state: State::Fresh,
                depth,
                attempts: 1,
                outstanding: 0,
            },
        );
        true
    }

    /// A request to `id` failed (hard timeout). Once none of its requests is outstanding, the
    /// candidate is retried if it has attempts left (`max_attempts` in the head of the result,
    /// two elsewhere, three in a lookup before a STORE), else given up.
    fn on_failure(&mut self, id: &NodeId) {
        let d = id.distance(&self.target);
        let rank = self
            .candidates
            .range(..d)
            .filter(|(_, c)| c.state != State::Failed)
            .count();
        let Some(cand) = self.candidates.get_mut(&d) else {
            return;
        };
        if !matches!(cand.state, State::Waiting { .. }) {
            return;
        }
        self.stats.failures += 1;
        cand.outstanding = cand.outstanding.saturating_sub(1);
        if cand.outstanding > 0 {
            return;
        }
        let allowed = if rank < self.alpha {
            self.max_attempts
        } else {
            let tail = if self.wait_for_slow {
                STORE_TAIL_ATTEMPTS
            } else {
                TAIL_ATTEMPTS
            };
            self.max_attempts.min(tail)
        };
        cand.state = if cand.attempts < allowed {
            State::Fresh
        } else {
            State::Failed
        };
    }

    /// Gives up on `id` at once (no address usable, or the request could not be sent).
    fn give_up(&mut self, id: &NodeId) {
        let d = id.distance(&self.target);
        if let Some(cand) = self.candidates.get_mut(&d) {
            if cand.state != State::Succeeded {
                cand.state = State::Failed;
                self.stats.failures += 1;
            }
        }
    }

    /// Whether the lookup is done at `now`: the k closest candidates that have neither failed nor
    /// been skipped (silent past their soft deadline outside the head) have all answered.
    fn is_finished(&self, now: Instant) -> bool {
        let mut rank = 0;
        for c in self.candidates.values() {
            if rank >= self.k {
                break;
            }
            match c.state {
                State::Failed => continue,
                State::Succeeded => {}
                State::Waiting { soft_deadline }
                    if !self.wait_for_slow
                        && soft_deadline <= now
                        && (rank >= self.alpha
                            || (self.skip_silent_head && c.attempts >= self.max_attempts)) =>
                {
                    continue;
                }
                _ => return false,
            }
            rank += 1;
        }
        true
    }

    /// Whether any request of this lookup is still waiting for an answer.
    fn has_waiting(&self) -> bool {
        self.candidates
            .values()
            .any(|c| matches!(c.state, State::Waiting { .. }))
    }

    /// The earliest soft deadline after `now`, when the lookup may widen.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.candidates
            .values()
            .take(self.k * 2)
            .filter_map(|c| match c.state {
                State::Waiting { soft_deadline } if soft_deadline > now => Some(soft_deadline),
                _ => None,
            })
            .min()
    }

    /// The k closest candidates that answered, closest first.
    fn closest_succeeded(&self) -> Vec<Contact> {
        self.candidates
            .values()
            .filter(|c| c.state == State::Succeeded)
            .take(self.k)
            .map(|c| c.contact.clone())
            .collect()
    }

    /// The path length of candidate `id` (0 for a seed or an unknown id).
    fn depth_of(&self, id: &NodeId) -> u8 {
        self.candidates
            .get(&id.distance(&self.target))
            .map_or(0, |c| c.depth)
    }

    /// The closest candidate that answered: its distance and path length.
    fn first_succeeded(&self) -> Option<(Distance, u32)> {
        self.candidates
            .iter()
            .find(|(_, c)| c.state == State::Succeeded)
            .map(|(d, c)| (*d, u32::from(c.depth) + 1))
    }
}

/// Counts `c` against a lookup-wide subnet limit; false if its subnet is full. (A candidate
/// counted but then not added still counts: the limit errs on the strict side.)
fn admit_subnet(limit: usize, per_subnet: &mut FxHashMap<Subnet, usize>, c: &Contact) -> bool {
    if limit == 0 {
        return true;
    }
    let Some(net) = c.primary_addr().and_then(PeerAddr::subnet) else {
        return true;
    };
    let n = per_subnet.entry(net).or_insert(0);
    if *n >= limit {
        return false;
    }
    *n += 1;
    true
}

/// An iterative lookup towards `target`: one path, or several disjoint ones.
#[derive(Debug)]
pub struct Lookup {
    target: NodeId,
    k: usize,
    alpha: usize,
    paths: Vec<Path>,
    /// Which path each candidate belongs to (only with several paths).
    owner: FxHashMap<NodeId, usize>,
    /// With several paths: the per-subnet limit, counted over the whole lookup, and the
    /// candidates admitted per subnet so far.
    subnet_limit: usize,
    per_subnet: FxHashMap<Subnet, usize>,
}

impl Lookup {
    /// A lookup seeded with `seeds` (usually the k closest contacts in our routing table).
    pub fn new(
        local: NodeId,
        target: NodeId,
        k: usize,
        alpha: usize,
        max_attempts: u8,
        seeds: Vec<Contact>,
    ) -> Self {
        Self {
            target,
            k,
            alpha,
            paths: vec![Path::new(local, target, k, alpha, max_attempts, seeds)],
            owner: FxHashMap::default(),
            subnet_limit: 0,
            per_subnet: FxHashMap::default(),
        }
    }

    /// Splits the lookup into `paths` disjoint paths (S/Kademlia; 1 or less: one path). The
    /// seeds are dealt out closest first, one to each path in turn (while some path has no
    /// candidate, as when joining through fewer nodes than paths, the nodes named in answers
    /// are dealt out the same way); each path asks `alpha` candidates at a time and ends on its
    /// own k closest; the lookup ends when every path has. A node belongs to the first path
    /// that learned of it: other paths ignore it when it is named to them. Call before the
    /// first [`next`](Self::next); the other settings carry over, and a subnet limit then
    /// counts over all paths together.
    pub fn with_disjoint_paths(mut self, paths: usize) -> Self {
        let n = paths.clamp(1, 255);
        if n == self.paths.len() {
            return self;
        }
        let first = self.paths.swap_remove(0);
        let seeds: Vec<Contact> = first
            .candidates
            .values()
            .map(|c| c.contact.clone())
            .collect();
        let alpha = self.alpha;
        let mut split: Vec<Path> = (0..n)
            .map(|_| {
                let mut p = Path::new(
                    first.local,
                    first.target,
                    first.k,
                    alpha,
                    first.max_attempts,
                    Vec::new(),
                );
                p.patience = first.patience;
                p.skip_silent_head = first.skip_silent_head;
                p.wait_for_slow = first.wait_for_slow;
                // One path keeps its own limit; several share one count (below).
                p.subnet_limit = if n == 1 { first.subnet_limit } else { 0 };
                p
            })
            .collect();
        self.owner.clear();
        self.per_subnet.clear();
        self.subnet_limit = if n == 1 { 0 } else { first.subnet_limit };
        for (i, c) in seeds.into_iter().enumerate() {
            let p = i % n;
            let id = c.id;
            if n == 1 {
                split[p].add(c, 0);
            } else if self.admit_subnet(&c) && split[p].add(c, 0) {
                self.owner.insert(id, p);
            }
        }
        for p in &mut split {
            p.best = p.candidates.keys().next().copied();
        }
        self.paths = split;
        self
    }

    /// Admits at most `limit` candidates of one subnet ([`PeerAddr::subnet`]) in the whole
    /// lookup, all paths together (0: no limit). Seeds already admitted stay; call before
    /// [`with_disjoint_paths`](Self::with_disjoint_paths) to have the seeds counted too.
    pub fn with_subnet_limit(mut self, limit: usize) -> Self {
        if self.paths.len() == 1 {
            self.paths[0].subnet_limit = limit;
        } else {
            self.subnet_limit = limit;
        }
        self
    }

    fn admit_subnet(&mut self, c: &Contact) -> bool {
        admit_subnet(self.subnet_limit, &mut self.per_subnet, c)
    }

    /// Answers in a row that bring nothing closer before the lookup asks all of the k closest
    /// at once (default 1: latency first; `alpha` saves requests).
    pub fn with_patience(mut self, patience: usize) -> Self {
        for p in &mut self.paths {
            p.patience = patience.max(1);
        }
        self
    }

    /// When set, a candidate in the head that stays silent past the soft deadline of its last
    /// attempt stops holding the lookup open (as silent candidates outside the head already
    /// do): the search widens past it and a late answer still counts. For networks full of
    /// departed nodes (Mainline). Default off.
    pub fn with_skip_silent_head(mut self, skip: bool) -> Self {
        for p in &mut self.paths {
            p.skip_silent_head = skip;
        }
        self
    }

    /// When set, a candidate among the k closest that is slow to answer still holds the lookup
    /// open until it answers or fails for good (the search widens past it all the same). For
    /// the lookup before a STORE: the record belongs on the k closest, busy ones included, not
    /// on the k quickest. Default off (latency first).
    pub fn with_wait_for_slow(mut self, wait: bool) -> Self {
        for p in &mut self.paths {
            p.wait_for_slow = wait;
        }
        self
    }

    /// The lookup's target.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Counters so far (all paths).
    pub fn stats(&self) -> LookupStats {
        let mut s = LookupStats::default();
        for p in &self.paths {
            s.rpcs += p.stats.rpcs;
            s.responses += p.stats.responses;
            s.failures += p.stats.failures;
        }
        s
    }

    /// Number of disjoint paths.
    pub fn paths(&self) -> usize {
        self.paths.len()
    }

    /// Contacts to ask now, given the soft timeout for new requests and how many requests the
    /// node has room for. Each returned contact is marked as waiting.
    ///
    /// The `alpha` closest candidates are the head of the result: when one of them stays silent
    /// past its soft deadline it is asked again at once (up to `max_attempts`, each wait a
    /// little longer), so one lost packet costs a soft timeout, not a hard one. Other candidates
    /// get two attempts, the second after a hard timeout.
    pub fn next(&mut self, now: Instant, soft_timeout: Duration, room: usize) -> Vec<Contact> {
        self.next_with(now, |_| soft_timeout, room)
    }

    /// Like [`next`](Self::next), with a soft timeout per contact (from its own measured RTT).
    pub fn next_with(
        &mut self,
        now: Instant,
        soft_for: impl Fn(&Contact) -> Duration,
        room: usize,
    ) -> Vec<Contact> {
        let mut out = Vec::new();
        for p in &mut self.paths {
            let left = room.saturating_sub(out.len());
            if left == 0 {
                break;
            }
            out.extend(p.next_with(now, &soft_for, left));
        }
        out
    }

    fn path_of(&self, id: &NodeId) -> Option<usize> {
        if self.paths.len() == 1 {
            Some(0)
        } else {
            self.owner.get(id).copied()
        }
    }

    /// The candidate `id` answered, naming `nodes`. With several paths, only nodes that no other
    /// path holds join the answering node's path.
    pub fn on_success(&mut self, id: &NodeId, nodes: &[Contact]) {
        let Some(p) = self.path_of(id) else { return };
        if self.paths.len() == 1 {
            self.paths[0].on_success(id, nodes, |_| true);
            return;
        }
        let empty: Vec<usize> = (0..self.paths.len())
            .filter(|&q| q != p && self.paths[q].candidates.is_empty())
            .collect();
        if empty.is_empty() {
            let owner = &self.owner;
            let (limit, per_subnet) = (self.subnet_limit, &mut self.per_subnet);
            let added = self.paths[p].on_success(id, nodes, |c| match owner.get(&c.id) {
                Some(q) => *q == p,
                None => admit_subnet(limit, per_subnet, c),
            });
            for a in added {
                self.owner.insert(a, p);
            }
            return;
        }
        // Some paths have no candidate yet (fewer seeds than paths, as when joining through
        // one node): the nodes named are dealt out, closest first, between the answering path
        // and the empty ones, as the seeds were.
        let mut fresh: Vec<&Contact> = nodes
            .iter()
            .filter(|c| self.owner.get(&c.id).is_none_or(|q| *q == p))
            .collect();
        fresh.sort_by_key(|c| c.id.distance(&self.target));
        fresh.dedup_by_key(|c| c.id);
        fresh.retain(|c| self.owner.contains_key(&c.id) || self.admit_subnet(c));
        let mut share = vec![p];
        share.extend(&empty);
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        for (i, c) in fresh.into_iter().enumerate() {
            match share[i % share.len()] {
                q if q == p => mine.push(c.clone()),
                q => theirs.push((q, c.clone())),
            }
        }
        let depth = self.paths[p].depth_of(id);
        for a in self.paths[p].on_success(id, &mine, |_| true) {
            self.owner.insert(a, p);
        }
        for (q, c) in theirs {
            let cid = c.id;
            if self.paths[q].add(c, depth.saturating_add(1)) {
                self.owner.insert(cid, q);
            }
        }
    }

    /// The node asked as `asked` answered with another id (unsigned networks, where nodes
    /// change ids or are listed under ids they never had): the answer is the node's under the
    /// id it gave, at that id's distance. Call before [`on_success`](Self::on_success) with
    /// `answered.id`; `asked` is given up and never counts among the closest.
    pub fn on_id_change(&mut self, asked: &NodeId, answered: &Contact) {
        let Some(p) = self.path_of(asked) else { return };
        // With several paths, a node another path holds stays there (paths never share one).
        let join = self.paths.len() == 1 || self.owner.get(&answered.id).is_none_or(|q| *q == p);
        if self.paths[p].on_id_change(asked, answered, join) && self.paths.len() > 1 {
            self.owner.insert(answered.id, p);
        }
    }

    /// A request to `id` failed (hard timeout). Once none of its requests is outstanding, the
    /// candidate is retried if it has attempts left (`max_attempts` in the head of the result,
    /// two elsewhere, three in a lookup before a STORE), else given up.
    pub fn on_failure(&mut self, id: &NodeId) {
        if let Some(p) = self.path_of(id) {
            self.paths[p].on_failure(id);
        }
    }

    /// Gives up on `id` at once (no address usable, or the request could not be sent).
    pub fn give_up(&mut self, id: &NodeId) {
        if let Some(p) = self.path_of(id) {
            self.paths[p].give_up(id);
        }
    }

    /// Whether the lookup is done at `now`: on every path, the k closest candidates that have
    /// neither failed nor been skipped (silent past their soft deadline outside the head) have
    /// all answered.
    pub fn is_finished(&self, now: Instant) -> bool {
        self.paths.iter().all(|p| p.is_finished(now))
    }

    /// Whether any request of this lookup is still waiting for an answer.
    pub fn has_waiting(&self) -> bool {
        self.paths.iter().any(Path::has_waiting)
    }

    /// The earliest soft deadline after `now`, when the lookup may widen.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.paths.iter().filter_map(|p| p.next_deadline(now)).min()
    }

    /// The k closest candidates that answered, closest first (over all paths).
    pub fn closest_succeeded(&self) -> Vec<Contact> {
        if self.paths.len() == 1 {
            return self.paths[0].closest_succeeded();
        }
        let mut all: Vec<Contact> = self
            .paths
            .iter()
            .flat_map(Path::closest_succeeded)
            .collect();
        all.sort_by_key(|c| c.id.distance(&self.target));
        all.dedup_by_key(|c| c.id);
        all.truncate(self.k);
        all
    }

    /// Finishes the lookup: its counters, with `hops` filled in (the path length to the closest
    /// node that answered).
    pub fn finish_stats(&self) -> LookupStats {
        let mut s = self.stats();
        s.hops = self
            .paths
            .iter()
            .filter_map(Path::first_succeeded)
            .min()
            .map_or(0, |(_, h)| h);
        s
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick an arbitrary base instant
mod tests {
    use super::*;
    use crate::addr::PeerAddr;
    use proptest::prelude::*;

    /// With `skip_silent_head`, a silent node among the closest stops holding the lookup open
    /// after the soft deadline of its last attempt; without it the lookup waits for its failure.
    #[test]
    fn a_silent_head_node_is_skipped_only_when_asked() {
        let target = NodeId([0; 20]);
        let silent = Contact::new(NodeId([1; 20]), PeerAddr::Mem(1));
        let live = Contact::new(NodeId([2; 20]), PeerAddr::Mem(2));
        let soft = Duration::from_millis(10);
        for skip in [false, true] {
            let t0 = Instant::now();
            let mut l = Lookup::new(
                NodeId([0xAA; 20]),
                target,
                2,
                2,
                2,
                vec![silent.clone(), live.clone()],
            )
            .with_skip_silent_head(skip);
            assert_eq!(l.next(t0, soft, 8).len(), 2);
            l.on_success(&live.id, &[]);
            // First soft deadline: the silent node is asked again (its last attempt).
            let t1 = t0 + soft;
            assert_eq!(l.next(t1, soft, 8), vec![silent.clone()]);
            assert!(!l.is_finished(t1));
            // Past the second soft deadline (twice as long), no answer yet and no hard timeout.
            let t2 = t1 + soft * 2;
            assert_eq!(l.next(t2, soft, 8), Vec::<Contact>::new());
            assert_eq!(l.is_finished(t2), skip, "skip = {skip}");
            // Either way a late answer still counts.
            l.on_success(&silent.id, &[]);
            assert!(l.is_finished(t2));
            assert_eq!(l.closest_succeeded().len(), 2);
        }
    }

    proptest! {
        /// Any network of answering and silent nodes: the lookup ends, within a bounded number
        /// of rounds, with only nodes that answered, sorted by distance.
        #[test]
        fn lookup_terminates(
            k in 1usize..12,
            alpha in 1usize..5,
            attempts in 1u8..6,
            ids in proptest::collection::vec(any::<[u8; 20]>(), 1..120),
            silent in proptest::collection::vec(any::<bool>(), 120),
            links in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..10), 120),
            target in any::<[u8; 20]>(),
        ) {
            let contacts: Vec<Contact> = ids.iter().enumerate().map(|(i, b)| Contact::new(NodeId(*b), PeerAddr::Mem(i as u64))).collect();
            let index = |id: &NodeId| contacts.iter().position(|c| c.id == *id).unwrap();
            let seeds = contacts.iter().take(3).cloned().collect();
            let target = NodeId(target);
            let mut l = Lookup::new(NodeId([0xAA; 20]), target, k, alpha, attempts, seeds);
            let soft = Duration::from_millis(10);
            let mut now = Instant::now();
            let mut waiting: Vec<(Instant, NodeId)> = Vec::new();
            let mut rounds = 0;
            while !l.is_finished(now) {
                rounds += 1;
                prop_assert!(rounds < 10_000, "lookup did not terminate");
                for c in l.next(now, soft, 64) {
                    waiting.push((now + Duration::from_millis(25), c.id));
                }
                now += Duration::from_millis(5);
                // Settle requests whose time has come: silent nodes fail, others answer.
                let (due, rest): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(t, _)| *t <= now);
                waiting = rest;
                for (_, id) in due {
                    let i = index(&id);
                    if silent[i % silent.len()] {
                        l.on_failure(&id);
                    } else {
                        let nodes: Vec<Contact> = links[i % links.len()].iter().map(|j| contacts[*j as usize % contacts.len()].clone()).collect();
                        l.on_success(&id, &nodes);
                    }
                }
            }
            let res = l.closest_succeeded();
            prop_assert!(res.len() <= k);
            for w in res.windows(2) {
                prop_assert!(w[0].id.distance(&target) < w[1].id.distance(&target));
            }
            for c in &res {
                prop_assert!(!silent[index(&c.id) % silent.len()]);
            }
        }
    }

    /// A contact whose id starts with `b`, at `udp://IP:1`.
    fn at(b: u8, ip: &str) -> Contact {
        let mut a = [0u8; 20];
        a[0] = b;
        Contact::new(NodeId(a), format!("udp://{ip}:1").parse().unwrap())
    }

    fn c(b: u8) -> Contact {
        let mut a = [0u8; 20];
        a[0] = b;
        Contact::new(NodeId(a), PeerAddr::Mem(u64::from(b)))
    }

    #[test]
    fn converges_and_terminates() {
        let now = Instant::now();
        let target = NodeId::ZERO;
        let mut l = Lookup::new(NodeId([0xff; 20]), target, 2, 1, 1, vec![c(0x80), c(0x40)]);
        let ask = l.next(now, Duration::from_millis(100), 10);
        assert_eq!(ask, vec![c(0x40)]);
        l.on_success(&c(0x40).id, &[c(0x10), c(0x20)]);
        let ask = l.next(now, Duration::from_millis(100), 10);
        assert_eq!(ask, vec![c(0x10)]);
        l.on_success(&c(0x10).id, &[c(0x20)]);
        // No progress: stalled, so both remaining closest are asked at once... only 0x20 left in top 2.
        let ask = l.next(now, Duration::from_millis(100), 10);
        assert_eq!(ask, vec![c(0x20)]);
        assert!(!l.is_finished(now));
        l.on_failure(&c(0x20).id);
        // 0x20 failed (max_attempts 1): the top 2 now are 0x10 and 0x40, both answered.
        assert!(l.is_finished(now));
        assert_eq!(l.closest_succeeded(), vec![c(0x10), c(0x40)]);
        assert_eq!(l.finish_stats().hops, 2);
    }

    #[test]
    fn soft_timeout_widens() {
        let now = Instant::now();
        let mut l = Lookup::new(
            NodeId([0xff; 20]),
            NodeId::ZERO,
            3,
            1,
            2,
            vec![c(1), c(2), c(3)],
        );
        assert_eq!(l.next(now, Duration::from_millis(10), 10).len(), 1);
        assert!(l.next(now, Duration::from_millis(10), 10).is_empty());
        let later = now + Duration::from_millis(11);
        assert_eq!(l.next_deadline(now), Some(now + Duration::from_millis(10)));
        // The head (alpha = 1) is asked again at its soft deadline, and the search widens.
        assert_eq!(
            l.next(later, Duration::from_millis(10), 10),
            vec![c(1), c(2)]
        );
        // Its second attempt waits twice as long.
        assert_eq!(
            l.next_deadline(later),
            Some(later + Duration::from_millis(10))
        );
        // A late answer from the first still counts.
        l.on_success(&c(1).id, &[]);
        assert!(!l.is_finished(later));
    }

    #[test]
    fn silent_tail_candidates_do_not_hold_up_the_end() {
        let now = Instant::now();
        let soft = Duration::from_millis(10);
        let mut l = Lookup::new(
            NodeId([0xff; 20]),
            NodeId::ZERO,
            2,
            1,
            3,
            vec![c(1), c(2), c(3)],
        );
        assert_eq!(l.next(now, soft, 10), vec![c(1)]);
        l.on_success(&c(1).id, &[]);
        // Nothing closer: stalled, the rest of the k closest is asked at once.
        assert_eq!(l.next(now, soft, 10), vec![c(2)]);
        let later = now + Duration::from_millis(11);
        assert!(!l.is_finished(now));
        // c(2) stays silent past its soft deadline: skipped, c(3) takes its place.
        assert_eq!(l.next(later, soft, 10), vec![c(3)]);
        l.on_success(&c(3).id, &[]);
        assert!(l.is_finished(later));
        assert_eq!(l.closest_succeeded(), vec![c(1), c(3)]);
        // A late answer still counts.
        l.on_success(&c(2).id, &[]);
        assert_eq!(l.closest_succeeded(), vec![c(1), c(2)]);
    }

    #[test]
    fn a_put_lookup_waits_for_slow_candidates_among_the_k_closest() {
        let now = Instant::now();
        let soft = Duration::from_millis(10);
        let mut l = Lookup::new(
            NodeId([0xff; 20]),
            NodeId::ZERO,
            2,
            1,
            3,
            vec![c(1), c(2), c(3)],
        )
        .with_wait_for_slow(true);
        assert_eq!(l.next(now, soft, 10), vec![c(1)]);
        l.on_success(&c(1).id, &[]);
        assert_eq!(l.next(now, soft, 10), vec![c(2)]);
        // c(2) is slow: the search still widens to c(3), but the lookup is not done without it.
        let later = now + Duration::from_millis(11);
        assert_eq!(l.next(later, soft, 10), vec![c(3)]);
        l.on_success(&c(3).id, &[]);
        assert!(
            !l.is_finished(later),
            "c(2), among the 2 closest, has not answered"
        );
        l.on_success(&c(2).id, &[]);
        assert!(l.is_finished(later));
        assert_eq!(l.closest_succeeded(), vec![c(1), c(2)]);
        // A slow candidate that fails for good stops holding it open.
        let mut l = Lookup::new(NodeId([0xff; 20]), NodeId::ZERO, 2, 2, 1, vec![c(1), c(2)])
            .with_wait_for_slow(true);
        assert_eq!(l.next(now, soft, 10).len(), 2);
        l.on_success(&c(1).id, &[]);
        assert!(!l.is_finished(later));
        l.on_failure(&c(2).id);
        assert!(l.is_finished(later));
    }

    #[test]
    fn closer_candidate_enters_a_full_set() {
        // k = 1: room for 3 candidates.
        let mut l = Lookup::new(
            NodeId([0xff; 20]),
            NodeId::ZERO,
            1,
            1,
            1,
            vec![c(0x40), c(0x50), c(0x60)],
        );
        // The farthest is not in flight: a closer newcomer evicts it.
        assert!(l.paths[0].add(c(0x30), 1));
        assert_eq!(l.paths[0].candidates.len(), 3);
        assert!(!l.paths[0].candidates.values().any(|x| x.contact == c(0x60)));
        // A newcomer farther than everything is refused.
        assert!(!l.paths[0].add(c(0x70), 1));
        // Every candidate in flight: a closer newcomer still gets in (the set grows past the cap).
        let soon = Instant::now() + Duration::from_secs(1);
        for cand in l.paths[0].candidates.values_mut() {
            cand.state = State::Waiting {
                soft_deadline: soon,
            };
        }
        assert!(l.paths[0].add(c(0x01), 2));
        assert_eq!(l.paths[0].candidates.len(), 4);
        assert_eq!(
            l.paths[0]
                .candidates
                .values()
                .next()
                .map(|x| x.contact.clone()),
            Some(c(0x01))
        );
    }

    /// Two disjoint paths: seeds are dealt out closest first, a node named to both stays on the
    /// path that learned of it first, and the lookup ends only when both paths have.
    #[test]
    fn disjoint_paths_never_share_a_node() {
        let now = Instant::now();
        let soft = Duration::from_millis(10);
        let mut l = Lookup::new(
            NodeId([0xff; 20]),
            NodeId::ZERO,
            2,
            1,
            1,
            vec![c(0x40), c(0x50), c(0x60), c(0x70)],
        )
        .with_disjoint_paths(2);
        assert_eq!(l.paths(), 2);
        let on =
            |l: &Lookup, p: usize, x: u8| l.paths[p].candidates.values().any(|k| k.contact == c(x));
        assert!(on(&l, 0, 0x40) && on(&l, 0, 0x60) && on(&l, 1, 0x50) && on(&l, 1, 0x70));
        // alpha 1: one request per path.
        assert_eq!(l.next(now, soft, 10), vec![c(0x40), c(0x50)]);
        // Path 0's node names a path-1 node and a new one: only the new one joins path 0.
        l.on_success(&c(0x40).id, &[c(0x50), c(0x10)]);
        assert!(on(&l, 0, 0x10) && !on(&l, 0, 0x50));
        // Path 1's node names the new one too: path 1 ignores it.
        l.on_success(&c(0x50).id, &[c(0x10), c(0x20)]);
        assert!(!on(&l, 1, 0x10) && on(&l, 1, 0x20));
        assert_eq!(l.next(now, soft, 10), vec![c(0x10), c(0x20)]);
        l.on_success(&c(0x10).id, &[]);
        assert!(!l.is_finished(now), "path 1 has not finished");
        l.on_success(&c(0x20).id, &[]);
        assert!(l.is_finished(now));
        // The result merges the paths, closest first; hops come from the closest node's path.
        assert_eq!(l.closest_succeeded(), vec![c(0x10), c(0x20)]);
        assert_eq!(l.finish_stats().hops, 2);
        assert_eq!(l.finish_stats().rpcs, 4);
    }

    /// With a subnet limit, a path admits at most that many candidates of one /24.
    #[test]
    fn subnet_limit_per_lookup() {
        let now = Instant::now();
        let mut l = Lookup::new(
            NodeId([0xff; 20]),
            NodeId::ZERO,
            8,
            1,
            1,
            vec![at(0x40, "1.1.1.1")],
        )
        .with_subnet_limit(2);
        assert_eq!(l.next(now, Duration::from_millis(10), 10).len(), 1);
        l.on_success(
            &at(0x40, "1.1.1.1").id,
            &[
                at(0x01, "9.9.9.1"),
                at(0x02, "9.9.9.2"),
                at(0x03, "9.9.9.3"),
                at(0x04, "9.9.8.4"),
                at(0x05, "127.0.0.1"),
                at(0x06, "127.0.0.1"),
                at(0x07, "127.0.0.1"),
            ],
        );
        let ids: Vec<u8> = l.paths[0]
            .candidates
            .values()
            .map(|x| x.contact.id.0[0])
            .collect();
        assert_eq!(ids, vec![0x01, 0x02, 0x04, 0x05, 0x06, 0x07, 0x40]);
    }

    /// With several paths the subnet limit counts over the whole lookup, and a path left
    /// without seeds gets its share of the first answer.
    #[test]
    fn disjoint_paths_share_one_subnet_limit_and_deal_out_the_first_answer() {
        let now = Instant::now();
        let seed = at(0x40, "1.1.1.1");
        let mut l = Lookup::new(
            NodeId([0xff; 20]),
            NodeId::ZERO,
            8,
            1,
            1,
            vec![seed.clone()],
        )
        .with_subnet_limit(2)
        .with_disjoint_paths(3);
        assert_eq!(
            l.next(now, Duration::from_millis(10), 10),
            vec![seed.clone()]
        );
        l.on_success(
            &seed.id,
            &[
                at(0x01, "9.9.9.1"),
                at(0x02, "9.9.9.2"),
                at(0x03, "9.9.9.3"),
                at(0x04, "8.8.8.4"),
                at(0x05, "7.7.7.5"),
                at(0x06, "6.6.6.6"),
            ],
        );
        let ids = |l: &Lookup, p: usize| -> Vec<u8> {
            l.paths[p]
                .candidates
                .values()
                .map(|x| x.contact.id.0[0])
                .collect()
        };
        // 9.9.9.0/24 is admitted twice in all; the rest is dealt out closest first over the
        // answering path (0) and the two empty ones.
        assert_eq!(ids(&l, 0), vec![0x01, 0x05, 0x40]);
        assert_eq!(ids(&l, 1), vec![0x02, 0x06]);
        assert_eq!(ids(&l, 2), vec![0x04]);
        // Every path now asks its own.
        assert_eq!(l.next(now, Duration::from_millis(10), 10).len(), 3);
    }

    #[test]
    fn retries_before_giving_up() {
        let now = Instant::now();
        let mut l = Lookup::new(NodeId([0xff; 20]), NodeId::ZERO, 1, 1, 3, vec![c(1)]);
        assert_eq!(l.next(now, Duration::from_millis(10), 10), vec![c(1)]);
        // A retransmission at the soft deadline: two requests outstanding.
        let t1 = now + Duration::from_millis(10);
        assert_eq!(l.next(t1, Duration::from_millis(10), 10), vec![c(1)]);
        l.on_failure(&c(1).id);
        // One failure with another request outstanding: still waiting.
        assert!(!l.is_finished(t1));
        l.on_failure(&c(1).id);
        // Third and last attempt.
        assert_eq!(l.next(t1, Duration::from_millis(10), 10), vec![c(1)]);
        l.on_failure(&c(1).id);
        assert!(
            l.next(t1 + Duration::from_secs(1), Duration::from_millis(10), 10)
                .is_empty()
        );
        assert!(l.is_finished(t1));
        assert!(l.closest_succeeded().is_empty());
        assert_eq!(l.stats().failures, 3);
        assert_eq!(l.stats().rpcs, 3);
    }
}
