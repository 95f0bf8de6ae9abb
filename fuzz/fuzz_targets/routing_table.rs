//! `routing_table`: `kad_core::RoutingTable` against a reference model.
//!
//! The model is the table as `routing.rs` documents it, written the plain way: per bucket
//! (`159 - common prefix length` with the local id) an ordered list of entries and a replacement
//! cache, liveness from `last_seen`/`failures`/`verified`, ping-before-evict (one ping per
//! bucket at a time, contacts that never answered us first among the questionable ones), replacement by the freshest cached contact after `max_failures`
//! failures, and `remove` promoting the freshest replacement. Every operation's return value is
//! compared, and after each one the whole state (bucket sizes, every entry, `len`,
//! `check_invariants`, stale buckets, the next refresh). `closest`, `closest_answered` and
//! `closest_bad` are checked against a brute-force sort of the model's contacts by XOR distance.

#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use kad_core::{Contact, InsertOutcome, Liveness, NodeId, PeerAddr, RoutingParams, RoutingTable};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum IdPick {
    /// One of the ids used so far.
    Known(u8),
    /// An id in bucket `bucket % 160` whose other bits come from a small space, so ids repeat
    /// and buckets fill.
    InBucket { bucket: u8, low: u8 },
    /// Anything (including the local id).
    Raw([u8; 20]),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        id: IdPick,
        addr: u8,
        verified: bool,
    },
    Failure(IdPick),
    PingOk(IdPick),
    Answer(IdPick),
    Remove(IdPick),
    Rtt(IdPick, u32),
    Touch(IdPick),
    AdvanceSecs(u16),
    Closest {
        target: IdPick,
        n: u8,
    },
    ClosestBad {
        target: IdPick,
        n: u8,
    },
    ClosestAnswered {
        target: IdPick,
        n: u8,
    },
    Restore,
}

#[derive(Arbitrary, Debug)]
struct Input {
    local: [u8; 20],
    k: u8,
    cache: u8,
    window_secs: u16,
    max_failures: u8,
    refresh_secs: u16,
    /// Per-subnet limit of a bucket: `% 3` (0 = off).
    subnet_limit: u8,
    ops: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq)]
struct MEntry {
    contact: Contact,
    last_seen: u64,
    failures: u8,
    srtt_us: u32,
    verified: bool,
    answered: bool,
}

#[derive(Default, Debug)]
struct MBucket {
    entries: Vec<MEntry>,
    cache: Vec<MEntry>,
    last_active: Option<u64>,
    pinging: Option<NodeId>,
}

struct Model {
    local: NodeId,
    k: usize,
    cache: usize,
    window: u64,
    max_failures: u8,
    subnet_limit: usize,
    buckets: BTreeMap<usize, MBucket>,
}

/// Subnet of a contact's first address (the library's own classification).
fn m_subnet(c: &Contact) -> Option<kad_core::Subnet> {
    c.primary_addr().and_then(PeerAddr::subnet)
}

/// Whether one more contact of `net` fits in `entries` (the one at `skip` not counted).
fn m_fits(
    entries: &[MEntry],
    limit: usize,
    net: Option<kad_core::Subnet>,
    skip: Option<usize>,
) -> bool {
    match net {
        Some(net) if limit > 0 => {
            let same = entries
                .iter()
                .enumerate()
                .filter(|(i, e)| Some(*i) != skip && m_subnet(&e.contact) == Some(net))
                .count();
            same < limit
        }
        _ => true,
    }
}

/// The replacement a leaving entry's slot goes to: the freshest that has answered us, else the
/// freshest, among those whose subnet has room (`skip`: the entry leaving).
fn m_promotable(bucket: &MBucket, limit: usize, skip: Option<usize>) -> Option<usize> {
    let fits = |i: &usize| {
        m_fits(
            &bucket.entries,
            limit,
            m_subnet(&bucket.cache[*i].contact),
            skip,
        )
    };
    (0..bucket.cache.len())
        .rev()
        .find(|i| bucket.cache[*i].answered && fits(i))
        .or_else(|| (0..bucket.cache.len()).rev().find(fits))
}

/// Bucket of `id` seen from `local`: 159 minus the length of their common prefix.
fn bucket_of(local: &NodeId, id: &NodeId) -> Option<usize> {
    let mut prefix = 0;
    for i in 0..160 {
        let bit = |x: &NodeId| (x.0[i / 8] >> (7 - i % 8)) & 1;
        if bit(local) != bit(id) {
            return Some(159 - prefix);
        }
        prefix += 1;
    }
    None
}

impl Model {
    fn questionable(&self, e: &MEntry, now: u64) -> bool {
        !e.verified || now - e.last_seen >= self.window
    }

    fn liveness(&self, e: &MEntry, now: u64) -> Liveness {
        if e.failures >= self.max_failures {
            Liveness::Bad
        } else if self.questionable(e, now) {
            Liveness::Questionable
        } else {
            Liveness::Good
        }
    }

    fn insert(&mut self, now: u64, contact: Contact, verified: bool) -> InsertOutcome {
        let Some(b) = bucket_of(&self.local, &contact.id) else {
            return InsertOutcome::Ignored;
        };
        let (k, cache, max_failures, window) = (self.k, self.cache, self.max_failures, self.window);
        let limit = self.subnet_limit;
        let bucket = self.buckets.entry(b).or_default();
        if let Some(pos) = bucket
            .entries
            .iter()
            .position(|e| e.contact.id == contact.id)
        {
            if verified {
                // A new address whose subnet is full in this bucket is not taken.
                let net = m_subnet(&contact);
                let keep_old = net != m_subnet(&bucket.entries[pos].contact)
                    && !m_fits(&bucket.entries, limit, net, Some(pos));
                let e = &mut bucket.entries[pos];
                *e = MEntry {
                    contact: if keep_old { e.contact.clone() } else { contact },
                    last_seen: now,
                    failures: 0,
                    srtt_us: e.srtt_us,
                    verified,
                    answered: e.answered,
                };
                bucket.last_active = Some(now);
            }
            return InsertOutcome::Updated;
        }
        // The subnet limit: at most `subnet_limit` entries of one subnet per bucket.
        if !m_fits(&bucket.entries, limit, m_subnet(&contact), None) {
            return InsertOutcome::Ignored;
        }
        let entry = MEntry {
            contact,
            last_seen: now,
            failures: 0,
            srtt_us: 0,
            verified,
            answered: false,
        };
        if bucket.entries.len() < k {
            bucket.entries.push(entry);
            if verified {
                bucket.last_active = Some(now);
            }
            return InsertOutcome::Inserted;
        }
        if !verified {
            return InsertOutcome::Ignored;
        }
        if let Some(bad) = bucket
            .entries
            .iter_mut()
            .find(|e| e.failures >= max_failures)
        {
            *bad = entry;
            bucket.last_active = Some(now);
            return InsertOutcome::Inserted;
        }
        // The freshest replacement, still known to have answered if it had.
        let mut entry = entry;
        if let Some(i) = bucket
            .cache
            .iter()
            .position(|r| r.contact.id == entry.contact.id)
        {
            entry.answered = bucket.cache.remove(i).answered;
        }
        if bucket.cache.len() >= cache {
            if cache == 0 {
                return InsertOutcome::Ignored;
            }
            bucket.cache.remove(0);
        }
        bucket.cache.push(entry);
        let mut ping = None;
        if bucket.pinging.is_none() {
            // The stalest questionable entry (the first of equals).
            for e in &bucket.entries {
                if (!e.verified || !e.answered || now - e.last_seen >= window)
                    && ping
                        .as_ref()
                        .is_none_or(|p: &MEntry| e.last_seen < p.last_seen)
                {
                    ping = Some(e.clone());
                }
            }
        }
        if let Some(p) = &ping {
            bucket.pinging = Some(p.contact.id);
        }
        InsertOutcome::Pending {
            ping: ping.map(|e| e.contact),
        }
    }

    fn failure(&mut self, id: &NodeId) -> bool {
        let max_failures = self.max_failures;
        let limit = self.subnet_limit;
        let Some(bucket) = bucket_of(&self.local, id).and_then(|b| self.buckets.get_mut(&b)) else {
            return false;
        };
        if bucket.pinging == Some(*id) {
            bucket.pinging = None;
        }
        let Some(pos) = bucket.entries.iter().position(|e| e.contact.id == *id) else {
            bucket.cache.retain(|r| r.contact.id != *id);
            return false;
        };
        let e = &mut bucket.entries[pos];
        e.failures = e.failures.saturating_add(1);
        if e.failures < max_failures {
            return false;
        }
        // The freshest replacement that has answered us, else the freshest, whose subnet has
        // room (the failed entry leaving).
        let pick = m_promotable(bucket, limit, Some(pos));
        match pick {
            Some(i) => {
                bucket.entries[pos] = bucket.cache.remove(i);
                true
            }
            None => false,
        }
    }

    fn answer(&mut self, id: &NodeId) {
        if let Some(bucket) = bucket_of(&self.local, id).and_then(|b| self.buckets.get_mut(&b)) {
            for e in bucket.entries.iter_mut().chain(bucket.cache.iter_mut()) {
                if e.contact.id == *id {
                    e.answered = true;
                }
            }
        }
    }

    fn ping_ok(&mut self, id: &NodeId) {
        if let Some(bucket) = bucket_of(&self.local, id).and_then(|b| self.buckets.get_mut(&b)) {
            if bucket.pinging == Some(*id) {
                bucket.pinging = None;
            }
        }
    }

    fn remove(&mut self, id: &NodeId) -> Option<MEntry> {
        let limit = self.subnet_limit;
        let bucket = self.buckets.get_mut(&bucket_of(&self.local, id)?)?;
        bucket.cache.retain(|r| r.contact.id != *id);
        let pos = bucket.entries.iter().position(|e| e.contact.id == *id)?;
        let e = bucket.entries.swap_remove(pos);
        let pick = m_promotable(bucket, limit, None);
        if let Some(i) = pick {
            let fresh = bucket.cache.remove(i);
            bucket.entries.push(fresh);
        }
        Some(e)
    }

    fn rtt(&mut self, id: &NodeId, rtt: Duration) {
        let Some(bucket) = bucket_of(&self.local, id).and_then(|b| self.buckets.get_mut(&b)) else {
            return;
        };
        if let Some(e) = bucket.entries.iter_mut().find(|e| e.contact.id == *id) {
            let sample = rtt.as_micros().min(u128::from(u32::MAX)) as u32;
            e.srtt_us = if e.srtt_us == 0 {
                sample
            } else {
                (e.srtt_us / 8) * 7 + sample / 8
            };
        }
    }

    fn touch(&mut self, now: u64, id: &NodeId) {
        if let Some(bucket) = bucket_of(&self.local, id).and_then(|b| self.buckets.get_mut(&b)) {
            bucket.last_active = Some(now);
        }
    }

    fn entries(&self) -> impl Iterator<Item = &MEntry> {
        self.buckets.values().flat_map(|b| b.entries.iter())
    }

    /// The `n` closest contacts to `target` among those whose failures are below (or, with
    /// `bad`, at least) `max_failures`, by brute force.
    fn closest(&self, target: &NodeId, n: usize, bad: bool) -> Vec<Contact> {
        self.closest_where(target, n, |e| (e.failures >= self.max_failures) == bad)
    }

    fn closest_where(
        &self,
        target: &NodeId,
        n: usize,
        keep: impl Fn(&MEntry) -> bool,
    ) -> Vec<Contact> {
        let mut v: Vec<&MEntry> = self.entries().filter(|e| keep(e)).collect();
        v.sort_by_key(|e| e.contact.id.distance(target));
        v.into_iter().take(n).map(|e| e.contact.clone()).collect()
    }
}

/// The id at distance `d` from `local`, where `d` has its highest set bit at bucket
/// `bucket % 160` and the 8 bits below it taken from `low` (the rest zero).
fn in_bucket(local: &NodeId, bucket: u8, low: u8) -> NodeId {
    let top = 159 - usize::from(bucket) % 160; // bit position counted from the top
    let mut d = [0u8; 20];
    let mut set = |pos: usize| d[pos / 8] |= 0x80 >> (pos % 8);
    set(top);
    for j in 0..8 {
        if low & (0x80 >> j) != 0 && top + 1 + j < 160 {
            set(top + 1 + j);
        }
    }
    NodeId(local.distance(&NodeId(d)).0)
}

struct Ids(Vec<NodeId>);

impl Ids {
    fn pick(&mut self, local: &NodeId, p: IdPick) -> NodeId {
        let id = match p {
            IdPick::Known(i) if !self.0.is_empty() => self.0[usize::from(i) % self.0.len()],
            IdPick::Known(i) => in_bucket(local, i, 0),
            IdPick::InBucket { bucket, low } => in_bucket(local, bucket, low),
            IdPick::Raw(b) => NodeId(b),
        };
        if !self.0.contains(&id) && self.0.len() < 256 {
            self.0.push(id);
        }
        id
    }
}

fuzz_target!(|input: Input| {
    let t0 = Instant::now();
    let local = NodeId(input.local);
    let k = usize::from(input.k % 8) + 1;
    let cache = usize::from(input.cache % 5);
    let window = u64::from(input.window_secs % 3600) + 1;
    let max_failures = input.max_failures % 4 + 1;
    let refresh = Duration::from_secs(u64::from(input.refresh_secs % 3600) + 1);
    let subnet_limit = usize::from(input.subnet_limit % 3);
    let mut rt = RoutingTable::new(
        local,
        RoutingParams {
            k,
            replacement_cache: cache,
            liveness_window: Duration::from_secs(window),
            max_failures,
            subnet_limit,
        },
    );
    let mut model = Model {
        local,
        k,
        cache,
        window: window * 1000,
        max_failures,
        subnet_limit,
        buckets: BTreeMap::new(),
    };
    let mut ids = Ids(Vec::new());
    // Model time in milliseconds since t0.
    let mut now = 0u64;
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let same = |a: &[Contact], b: &[Contact]| a.iter().map(|c| c.id).eq(b.iter().map(|c| c.id));
    for op in input.ops.iter().take(512) {
        match *op {
            Op::Insert { id, addr, verified } => {
                let id = ids.pick(&local, id);
                // Half the addresses are public IPv4 ones in four /24s (the subnet limit
                // applies), half in-memory endpoints (never limited).
                let a = if addr & 0x80 != 0 {
                    PeerAddr::Udp(([203, 0, (addr >> 4) & 3, addr], 6881).into())
                } else {
                    PeerAddr::Mem(u64::from(addr))
                };
                let c = Contact::new(id, a);
                let got = rt.insert(at(now), c.clone(), verified);
                let want = model.insert(now, c, verified);
                assert_eq!(got, want, "insert {id:?} verified={verified}");
            }
            Op::Failure(id) => {
                let id = ids.pick(&local, id);
                assert_eq!(rt.on_failure(&id), model.failure(&id), "on_failure {id:?}");
            }
            Op::PingOk(id) => {
                let id = ids.pick(&local, id);
                rt.on_ping_ok(&id);
                model.ping_ok(&id);
            }
            Op::Answer(id) => {
                let id = ids.pick(&local, id);
                rt.on_answer(&id);
                model.answer(&id);
            }
            Op::Remove(id) => {
                let id = ids.pick(&local, id);
                let got = rt.remove(&id).map(|e| (e.contact, e.failures, e.verified));
                let want = model
                    .remove(&id)
                    .map(|e| (e.contact, e.failures, e.verified));
                assert_eq!(got, want, "remove {id:?}");
            }
            Op::Rtt(id, us) => {
                let id = ids.pick(&local, id);
                rt.record_rtt(&id, Duration::from_micros(u64::from(us)));
                model.rtt(&id, Duration::from_micros(u64::from(us)));
            }
            Op::Touch(id) => {
                let id = ids.pick(&local, id);
                rt.touch(at(now), &id);
                model.touch(now, &id);
            }
            Op::AdvanceSecs(s) => now += u64::from(s) * 1000 + u64::from(s % 7),
            Op::Closest { target, n } => {
                let target = ids.pick(&local, target);
                let n = usize::from(n % 40);
                let got = rt.closest(&target, n);
                assert!(got.len() <= n);
                assert!(
                    same(&got, &model.closest(&target, n, false)),
                    "closest({target:?}, {n})"
                );
                let entries = rt.closest_entries(&target, n);
                assert!(entries.iter().map(|e| &e.contact).eq(got.iter()));
            }
            Op::ClosestBad { target, n } => {
                let target = ids.pick(&local, target);
                let n = usize::from(n % 40);
                let got = rt.closest_bad(&target, n);
                assert!(same(&got, &model.closest(&target, n, true)), "closest_bad");
            }
            Op::ClosestAnswered { target, n } => {
                let target = ids.pick(&local, target);
                let n = usize::from(n % 40);
                let got = rt.closest_answered(&target, n);
                let want = model.closest_where(&target, n, |e| {
                    e.answered && e.failures < model.max_failures
                });
                assert!(same(&got, &want), "closest_answered({target:?}, {n})");
            }
            Op::Restore => {
                // A fresh table restored from a snapshot holds the same contacts, unverified.
                let snap = rt.snapshot();
                assert_eq!(snap.local, local);
                let mut fresh = RoutingTable::new(
                    local,
                    RoutingParams {
                        k,
                        replacement_cache: cache,
                        liveness_window: Duration::from_secs(window),
                        max_failures,
                        subnet_limit,
                    },
                );
                assert_eq!(fresh.restore(at(now), &snap), rt.len());
                assert_eq!(fresh.len(), rt.len());
                assert!(
                    fresh
                        .iter()
                        .all(|e| fresh.liveness(e, at(now)) == Liveness::Questionable)
                );
                fresh.check_invariants().expect("restored table invariants");
            }
        }
        // The whole state agrees with the model.
        if let Err(e) = rt.check_invariants() {
            panic!("invariant broken after {op:?}: {e}");
        }
        let sizes: Vec<(usize, usize, usize)> = model
            .buckets
            .iter()
            .filter(|(_, b)| !b.entries.is_empty() || !b.cache.is_empty())
            .map(|(i, b)| (*i, b.entries.len(), b.cache.len()))
            .collect();
        assert_eq!(rt.bucket_sizes(), sizes, "bucket sizes after {op:?}");
        assert_eq!(rt.len(), model.entries().count());
        assert!(rt.len() <= 160 * k);
        for (got, want) in rt.iter().zip(model.entries()) {
            assert_eq!(got.contact, want.contact, "entry order after {op:?}");
            assert_eq!(
                (
                    got.last_seen,
                    got.failures,
                    got.srtt_us,
                    got.verified,
                    got.answered
                ),
                (
                    at(want.last_seen),
                    want.failures,
                    want.srtt_us,
                    want.verified,
                    want.answered
                ),
                "entry {:?} after {op:?}",
                want.contact.id
            );
            assert_eq!(rt.liveness(got, at(now)), model.liveness(want, now));
            assert_eq!(
                rt.get(&want.contact.id).map(|e| &e.contact),
                Some(&want.contact)
            );
        }
        let stale: Vec<usize> = model
            .buckets
            .iter()
            .filter(|(_, b)| !b.entries.is_empty())
            .filter(|(_, b)| {
                b.last_active
                    .is_none_or(|t| now - t >= refresh.as_millis() as u64)
            })
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(rt.stale_buckets(at(now), refresh), stale);
        let next = model
            .buckets
            .values()
            .filter(|b| !b.entries.is_empty())
            .filter_map(|b| b.last_active)
            .min()
            .map(|t| at(t) + refresh);
        assert_eq!(rt.next_refresh(refresh), next);
    }
});
