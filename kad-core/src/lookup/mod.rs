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

mod path;

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick an arbitrary base instant
mod tests;

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::addr::{Contact, Subnet};
use crate::id::NodeId;

use path::{Path, admit_subnet};

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

    /// Admits at most `limit` candidates of one subnet ([`PeerAddr::subnet`](crate::PeerAddr::subnet)) in the whole
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

    /// Asks `alpha` candidates at a time (at least 1) instead of the configured number: a put
    /// that stores as it searches asks all of the k closest at once. Call before the first
    /// [`next`](Self::next).
    pub fn with_alpha(mut self, alpha: usize) -> Self {
        self.alpha = alpha.max(1);
        for p in &mut self.paths {
            p.alpha = self.alpha;
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
            .filter(|&q| q != p && self.paths[q].never_had_candidates())
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

    /// The candidates that did not answer (still waiting, never asked, or given up on), closest
    /// first, over all paths: at most k, among the k closest candidates of each path. Nodes a
    /// lookup heard of near the target, but finished without hearing from: slow peers (far
    /// away, or behind a connection handshake) as well as departed ones.
    pub fn closest_unanswered(&self) -> Vec<Contact> {
        let answered: Vec<NodeId> = self.closest_succeeded().iter().map(|c| c.id).collect();
        let mut all: Vec<Contact> = self
            .paths
            .iter()
            .flat_map(Path::closest_unanswered)
            .filter(|c| !answered.contains(&c.id))
            .collect();
        all.sort_by_key(|c| c.id.distance(&self.target));
        all.dedup_by_key(|c| c.id);
        all.truncate(self.k);
        all
    }

    /// The candidates of every path, closest first, with their states (for debug logs).
    pub(crate) fn describe(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.paths.iter().enumerate() {
            if self.paths.len() > 1 {
                out.push_str(&format!(" path {i}:"));
            }
            p.describe(&mut out);
        }
        out
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
