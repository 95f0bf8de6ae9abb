//! Unit and property tests of the lookup.

use super::path::State;
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
    // 0x20 is named among the k closest of all, without an answer.
    assert_eq!(l.closest_unanswered(), vec![c(0x20)]);
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
    assert_eq!(l.closest_unanswered(), vec![c(2)], "still waiting");
    // A late answer still counts.
    l.on_success(&c(2).id, &[]);
    assert_eq!(l.closest_succeeded(), vec![c(1), c(2)]);
    assert!(l.closest_unanswered().is_empty());
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
    // c(2) is slow: the lookup is not done without it, so it asks c(2) again at its soft
    // deadline (a lost datagram costs a soft timeout, not a hard one).
    let later = now + Duration::from_millis(11);
    assert_eq!(l.next(later, soft, 10), vec![c(2)]);
    // Its attempts spent (3 in the tail of a lookup before a STORE), it is skipped: the search
    // widens to c(3).
    let much_later = now + Duration::from_millis(40);
    assert_eq!(l.next(much_later, soft, 10), vec![c(2)]);
    let later = now + Duration::from_millis(80);
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

/// Runs `l` to its end over a network where `silent` nodes never answer and every other node
/// answers with `named(id)`; returns the k closest that answered.
fn run_to_end(
    mut l: Lookup,
    silent: &[Contact],
    named: impl Fn(&NodeId) -> Vec<Contact>,
) -> Vec<Contact> {
    let soft = Duration::from_millis(10);
    let mut now = Instant::now();
    let mut rounds = 0;
    while !l.is_finished(now) {
        rounds += 1;
        assert!(rounds < 1_000, "lookup did not terminate");
        for c in l.next(now, soft, 64) {
            if silent.contains(&c) {
                l.on_failure(&c.id);
            } else {
                l.on_success(&c.id, &named(&c.id));
            }
        }
        now += Duration::from_millis(5);
    }
    l.closest_succeeded()
}

/// Candidates given up on leave the candidate set: a crowd of silent nodes close to the target
/// (departed nodes, or ids that tables list for a node that never had them) cannot keep the
/// lookup from taking in the live nodes named after they failed. With k = 2 the set holds 6
/// candidates: five silent ones and a live one, `0x70`, which names two live nodes closer
/// than itself once the silent ones have failed.
#[test]
fn silent_candidates_given_up_free_their_places() {
    let target = NodeId::ZERO;
    let silent: Vec<Contact> = (1..=5).map(c).collect();
    let (seed, relay, near) = (c(0x80), c(0x70), [c(0x10), c(0x11)]);
    let named = |id: &NodeId| {
        if *id == seed.id {
            let mut v = silent.clone();
            v.push(relay.clone());
            v
        } else if *id == relay.id {
            near.to_vec()
        } else {
            Vec::new()
        }
    };
    let l = Lookup::new(NodeId([0xff; 20]), target, 2, 2, 1, vec![seed.clone()]);
    assert_eq!(run_to_end(l, &silent, named), near.to_vec());
}
