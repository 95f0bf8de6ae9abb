//! One path of a lookup: the iterative search over candidates ordered by distance.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::addr::{Contact, PeerAddr, Subnet};
use crate::id::{Distance, NodeId};

use super::LookupStats;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Fresh,
    Waiting { soft_deadline: Instant },
    Succeeded,
}

#[derive(Clone, Debug)]
pub(super) struct Candidate {
    pub(super) contact: Contact,
    pub(super) state: State,
    pub(super) depth: u8,
    pub(super) attempts: u8,
    pub(super) outstanding: u8,
}

/// Attempts a candidate of this rank gets: `max_attempts` in the head (the `alpha` closest),
/// fewer in the tail.
fn allowed(alpha: usize, max_attempts: u8, wait_for_slow: bool, rank: usize) -> u8 {
    if rank < alpha {
        max_attempts
    } else if wait_for_slow {
        max_attempts.min(STORE_TAIL_ATTEMPTS)
    } else {
        max_attempts.min(TAIL_ATTEMPTS)
    }
}

/// Attempts for candidates outside the head of the lookup.
pub(super) const TAIL_ATTEMPTS: u8 = 2;

/// Attempts for candidates outside the head of a lookup that waits for slow nodes (the one
/// before a STORE): the record belongs on every one of the k closest, and at 10% loss each way
/// two attempts miss a live node 3.6% of the time, three 0.7%.
pub(super) const STORE_TAIL_ATTEMPTS: u8 = 3;

/// Most candidates given up on that a path remembers (times its candidate cap), so that one
/// named again is not asked again.
const FAILED_PER_CAP: usize = 8;

/// One path of a lookup: the iterative search itself.
#[derive(Debug)]
pub(super) struct Path {
    pub(super) target: NodeId,
    pub(super) local: NodeId,
    pub(super) k: usize,
    pub(super) alpha: usize,
    pub(super) max_attempts: u8,
    pub(super) cap: usize,
    /// The live candidates: fresh, asked, or answered. One given up on leaves the set (its
    /// place goes to the next closest) and is remembered in `failed`.
    pub(super) candidates: BTreeMap<Distance, Candidate>,
    /// Candidates given up on, by id (bounded: past `FAILED_PER_CAP` times the cap, new ones
    /// are not remembered, and could be asked again if named again).
    pub(super) failed: FxHashMap<NodeId, Contact>,
    pub(super) best: Option<Distance>,
    pub(super) no_progress: usize,
    pub(super) patience: usize,
    pub(super) stalled: bool,
    pub(super) skip_silent_head: bool,
    pub(super) wait_for_slow: bool,
    pub(super) subnet_limit: usize,
    pub(super) stats: LookupStats,
    /// Candidates turned away or evicted because the set was full.
    pub(super) dropped: u32,
}

impl Path {
    pub(super) fn new(
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
            failed: FxHashMap::default(),
            best: None,
            no_progress: 0,
            patience: 1,
            stalled: false,
            skip_silent_head: false,
            wait_for_slow: false,
            subnet_limit: 0,
            stats: LookupStats::default(),
            dropped: 0,
        };
        for c in seeds {
            l.add(c, 0);
        }
        l.best = l.candidates.keys().next().copied();
        l
    }

    pub(super) fn add(&mut self, c: Contact, depth: u8) -> bool {
        if c.id == self.local || self.failed.contains_key(&c.id) {
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
                self.dropped += 1;
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
                self.dropped += 1;
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

    pub(super) fn next_with(
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
                State::Succeeded => {}
                State::Waiting { soft_deadline } => {
                    if soft_deadline > now {
                        // A candidate that has been silent past a soft deadline before no longer
                        // holds a slot, even while it is asked again: the search widens around it.
                        if cand.attempts == 1 {
                            active += 1;
                        }
                    } else if (rank >= self.alpha
                        && (!self.wait_for_slow
                            || cand.attempts >= allowed(self.alpha, self.max_attempts, true, rank)))
                        || (self.skip_silent_head && cand.attempts >= self.max_attempts)
                    {
                        // Silent past its soft deadline outside the head (or on its last attempt,
                        // with skip_silent_head): skipped (it no longer counts among the k
                        // closest, though a late answer still does).
                        continue;
                    } else if cand.attempts
                        < allowed(self.alpha, self.max_attempts, self.wait_for_slow, rank)
                        && out.len() < room
                    {
                        // In the head, or in the tail of a lookup that waits for the whole tail
                        // (before a STORE): asked again at its soft deadline, not at the hard
                        // one, so that one lost datagram costs a soft timeout.
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
    pub(super) fn on_success(
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
        let closest = self.candidates.keys().next().copied();
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
    pub(super) fn on_id_change(&mut self, asked: &NodeId, answered: &Contact, join: bool) -> bool {
        let Some(depth) = self.fail(asked) else {
            return false;
        };
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
    pub(super) fn on_failure(&mut self, id: &NodeId) {
        let d = id.distance(&self.target);
        let rank = self.candidates.range(..d).count();
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
        if cand.attempts < allowed(self.alpha, self.max_attempts, self.wait_for_slow, rank) {
            cand.state = State::Fresh;
        } else {
            self.fail(id);
        }
    }

    /// Gives up on candidate `id`: it leaves the set and is not taken back if named again.
    /// Returns its depth if it was a candidate.
    fn fail(&mut self, id: &NodeId) -> Option<u8> {
        let cand = self.candidates.remove(&id.distance(&self.target))?;
        if self.failed.len() < self.cap * FAILED_PER_CAP {
            self.failed.insert(*id, cand.contact.clone());
        }
        Some(cand.depth)
    }

    /// Gives up on `id` at once (no address usable, or the request could not be sent).
    pub(super) fn give_up(&mut self, id: &NodeId) {
        let d = id.distance(&self.target);
        if self
            .candidates
            .get(&d)
            .is_some_and(|c| c.state != State::Succeeded)
        {
            self.fail(id);
            self.stats.failures += 1;
        }
    }

    /// Whether the lookup is done at `now`: the k closest candidates that have neither failed nor
    /// been skipped (silent past their soft deadline outside the head) have all answered.
    pub(super) fn is_finished(&self, now: Instant) -> bool {
        let mut rank = 0;
        for c in self.candidates.values() {
            if rank >= self.k {
                break;
            }
            match c.state {
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

    /// Whether this path has had no candidate yet (none live, none given up on).
    pub(super) fn never_had_candidates(&self) -> bool {
        self.candidates.is_empty() && self.failed.is_empty()
    }

    /// Whether any request of this lookup is still waiting for an answer.
    pub(super) fn has_waiting(&self) -> bool {
        self.candidates
            .values()
            .any(|c| matches!(c.state, State::Waiting { .. }))
    }

    /// The earliest soft deadline after `now`, when the lookup may widen.
    pub(super) fn next_deadline(&self, now: Instant) -> Option<Instant> {
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
    pub(super) fn closest_succeeded(&self) -> Vec<Contact> {
        self.candidates
            .values()
            .filter(|c| c.state == State::Succeeded)
            .take(self.k)
            .map(|c| c.contact.clone())
            .collect()
    }

    /// The candidates that did not answer, closest first: still waiting, never asked, or given
    /// up on; at most `k`, none farther than the k-th closest of all.
    pub(super) fn closest_unanswered(&self) -> Vec<Contact> {
        let mut all: Vec<(Distance, &Contact, bool)> = self
            .candidates
            .iter()
            .map(|(d, c)| (*d, &c.contact, c.state == State::Succeeded))
            .chain(
                self.failed
                    .values()
                    .map(|c| (c.id.distance(&self.target), c, false)),
            )
            .collect();
        all.sort_unstable_by_key(|(d, _, _)| *d);
        all.into_iter()
            .take(self.k)
            .filter(|(_, _, answered)| !answered)
            .map(|(_, c, _)| c.clone())
            .collect()
    }

    /// One line per candidate, closest first, for logs: id prefix, address, state, attempts.
    pub(super) fn describe(&self, out: &mut String) {
        use std::fmt::Write as _;
        for c in self.candidates.values() {
            let state = match c.state {
                State::Fresh => "fresh",
                State::Waiting { .. } => "waiting",
                State::Succeeded => "answered",
            };
            let id = c.contact.id.to_hex();
            let addr = c.contact.primary_addr().map(ToString::to_string);
            let _ = write!(
                out,
                " {}@{} {state}x{};",
                &id[..8],
                addr.as_deref().unwrap_or("-"),
                c.attempts
            );
        }
        let _ = write!(
            out,
            " given up: {}; dropped (set full): {}",
            self.failed.len(),
            self.dropped
        );
    }

    /// The path length of candidate `id` (0 for a seed or an unknown id).
    pub(super) fn depth_of(&self, id: &NodeId) -> u8 {
        self.candidates
            .get(&id.distance(&self.target))
            .map_or(0, |c| c.depth)
    }

    /// The closest candidate that answered: its distance and path length.
    pub(super) fn first_succeeded(&self) -> Option<(Distance, u32)> {
        self.candidates
            .iter()
            .find(|(_, c)| c.state == State::Succeeded)
            .map(|(d, c)| (*d, u32::from(c.depth) + 1))
    }
}

/// Counts `c` against a lookup-wide subnet limit; false if its subnet is full. (A candidate
/// counted but then not added still counts: the limit errs on the strict side.)
pub(super) fn admit_subnet(
    limit: usize,
    per_subnet: &mut FxHashMap<Subnet, usize>,
    c: &Contact,
) -> bool {
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
