//! The iterative lookup: a pure state machine over candidates ordered by distance to a target.
//!
//! It asks `alpha` candidates at a time while answers bring closer nodes. A request that stays
//! silent past its soft deadline stops counting against the parallelism, so the search widens
//! instead of waiting (libtorrent's idea). After `alpha` answers in a row bring nothing closer,
//! the lookup is *stalled* and asks every remaining candidate among the k closest at once. It
//! finishes when the k closest candidates that have not failed have all answered.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::addr::Contact;
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

/// An iterative lookup towards `target`.
#[derive(Debug)]
pub struct Lookup {
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
    stats: LookupStats,
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
            stats: LookupStats::default(),
        };
        for c in seeds {
            l.add(c, 0);
        }
        l.best = l.candidates.keys().next().copied();
        l
    }

    /// Answers in a row that bring nothing closer before the lookup asks all of the k closest
    /// at once (default 1: latency first; `alpha` saves requests).
    pub fn with_patience(mut self, patience: usize) -> Self {
        self.patience = patience.max(1);
        self
    }

    /// When set, a candidate in the head that stays silent past the soft deadline of its last
    /// attempt stops holding the lookup open (as silent candidates outside the head already
    /// do): the search widens past it and a late answer still counts. For networks full of
    /// departed nodes (Mainline). Default off.
    pub fn with_skip_silent_head(mut self, skip: bool) -> Self {
        self.skip_silent_head = skip;
        self
    }

    /// When set, a candidate among the k closest that is slow to answer still holds the lookup
    /// open until it answers or fails for good (the search widens past it all the same). For
    /// the lookup before a STORE: the record belongs on the k closest, busy ones included, not
    /// on the k quickest. Default off (latency first).
    pub fn with_wait_for_slow(mut self, wait: bool) -> Self {
        self.wait_for_slow = wait;
        self
    }

    /// The lookup's target.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Counters so far.
    pub fn stats(&self) -> &LookupStats {
        &self.stats
    }

    fn add(&mut self, c: Contact, depth: u8) -> bool {
        if c.id == self.local {
            return false;
        }
        let d = c.id.distance(&self.target);
        if self.candidates.contains_key(&d) {
            return false;
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

    /// The candidate `id` answered, naming `nodes`.
    pub fn on_success(&mut self, id: &NodeId, nodes: &[Contact]) {
        let d = id.distance(&self.target);
        let Some(cand) = self.candidates.get_mut(&d) else {
            return;
        };
        if cand.state == State::Succeeded {
            return;
        }
        cand.state = State::Succeeded;
        let depth = cand.depth.saturating_add(1);
        self.stats.responses += 1;
        for n in nodes {
            self.add(n.clone(), depth);
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
    }

    /// A request to `id` failed (hard timeout). Once none of its requests is outstanding, the
    /// candidate is retried if it has attempts left (`max_attempts` in the head of the result,
    /// two elsewhere), else given up.
    pub fn on_failure(&mut self, id: &NodeId) {
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
            self.max_attempts.min(TAIL_ATTEMPTS)
        };
        cand.state = if cand.attempts < allowed {
            State::Fresh
        } else {
            State::Failed
        };
    }

    /// Gives up on `id` at once (no address usable, or the request could not be sent).
    pub fn give_up(&mut self, id: &NodeId) {
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
    pub fn is_finished(&self, now: Instant) -> bool {
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
    pub fn has_waiting(&self) -> bool {
        self.candidates
            .values()
            .any(|c| matches!(c.state, State::Waiting { .. }))
    }

    /// The earliest soft deadline after `now`, when the lookup may widen.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
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
    pub fn closest_succeeded(&self) -> Vec<Contact> {
        self.candidates
            .values()
            .filter(|c| c.state == State::Succeeded)
            .take(self.k)
            .map(|c| c.contact.clone())
            .collect()
    }

    /// Finishes the lookup: its counters, with `hops` filled in.
    pub fn finish_stats(&self) -> LookupStats {
        let mut s = self.stats.clone();
        s.hops = self
            .candidates
            .values()
            .find(|c| c.state == State::Succeeded)
            .map_or(0, |c| u32::from(c.depth) + 1);
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
        assert!(l.add(c(0x30), 1));
        assert_eq!(l.candidates.len(), 3);
        assert!(!l.candidates.values().any(|x| x.contact == c(0x60)));
        // A newcomer farther than everything is refused.
        assert!(!l.add(c(0x70), 1));
        // Every candidate in flight: a closer newcomer still gets in (the set grows past the cap).
        let soon = Instant::now() + Duration::from_secs(1);
        for cand in l.candidates.values_mut() {
            cand.state = State::Waiting {
                soft_deadline: soon,
            };
        }
        assert!(l.add(c(0x01), 2));
        assert_eq!(l.candidates.len(), 4);
        assert_eq!(
            l.candidates.values().next().map(|x| x.contact.clone()),
            Some(c(0x01))
        );
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
