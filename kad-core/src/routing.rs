//! The routing table: k-buckets with replacement caches, liveness, ping-before-evict and refresh.
//!
//! Buckets are indexed by [`NodeId::bucket_index`] (0..160) and created on first use, so a table
//! costs memory only for the buckets that hold contacts (about log2(N) of them in an N-node network).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::addr::{Contact, PeerAddr, Subnet};
use crate::id::{Distance, ID_BITS, NodeId};

/// How alive a contact looks, from the last time it was heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Liveness {
    /// Heard from within the liveness window and not failing.
    Good,
    /// Not heard from for longer than the liveness window (or never verified).
    Questionable,
    /// Failed to answer `max_failures` requests in a row: first to be replaced.
    Bad,
}

/// One contact in a bucket.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The contact.
    pub contact: Contact,
    /// Last time a message from it was received (or when it was added, if unverified).
    pub last_seen: Instant,
    /// Requests in a row it failed to answer.
    pub failures: u8,
    /// Smoothed round-trip time in microseconds, 0 when unknown.
    pub srtt_us: u32,
    /// Smoothed mean deviation of the round-trip time in microseconds (Jacobson/Karels).
    pub rttvar_us: u32,
    /// Smallest round-trip time seen in microseconds, 0 when unknown.
    pub min_rtt_us: u32,
    /// Whether it has ever been heard from directly.
    pub verified: bool,
    /// Whether it has answered a request of ours (under this id). Only such contacts are
    /// handed out to other nodes ([`closest_answered`](RoutingTable::closest_answered)): a
    /// node that has only sent us requests may be a client about to leave, or an id its node
    /// never answers to (BEP5 counts a node good once it has responded to one of our queries).
    pub answered: bool,
}

impl Entry {
    /// How long to wait for this contact's answer before asking again, once an RTT sample is
    /// in: the smoothed RTT plus four deviations (RFC 6298), kept between a quarter and half
    /// an RTT more, and at most one and a half times the smallest RTT seen. Asking again early
    /// costs one datagram; waiting costs round trips. One sample alone would set the deviation
    /// to half the RTT, and the first answer from a node that had to prove our address first
    /// took two round trips. `None` before the first sample.
    pub fn resend_after(&self) -> Option<Duration> {
        (self.srtt_us > 0).then(|| {
            let (srtt, var) = (u64::from(self.srtt_us), u64::from(self.rttvar_us));
            let min = u64::from(self.min_rtt_us.max(1));
            Duration::from_micros((srtt + (4 * var).clamp(srtt / 4, srtt / 2)).min(min * 3 / 2))
        })
    }
}

#[derive(Debug, Default)]
struct Bucket {
    entries: Vec<Entry>,
    replacements: Vec<Entry>,
    last_active: Option<Instant>,
    pinging: Option<NodeId>,
}

/// Parameters of a [`RoutingTable`] (taken from [`Config`](crate::Config)).
#[derive(Clone, Copy, Debug)]
pub struct RoutingParams {
    /// Contacts per bucket.
    pub k: usize,
    /// Replacement-cache entries per bucket.
    pub replacement_cache: usize,
    /// A contact heard from within this window is [`Liveness::Good`].
    pub liveness_window: Duration,
    /// Failures in a row that make a contact [`Liveness::Bad`].
    pub max_failures: u8,
    /// Most contacts of one subnet ([`PeerAddr::subnet`](crate::PeerAddr::subnet)) in one
    /// bucket; 0: no limit. A contact over it is ignored (kept neither in the bucket nor in its
    /// replacement cache).
    pub subnet_limit: usize,
}

impl RoutingParams {
    /// Whether `e` is bad: it failed `max_failures` requests in a row.
    fn is_bad(&self, e: &Entry) -> bool {
        e.failures >= self.max_failures
    }
}

/// What [`RoutingTable::insert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InsertOutcome {
    /// The contact was already present and was refreshed.
    Updated,
    /// The contact was added to its bucket (possibly replacing a bad contact).
    Inserted,
    /// The bucket is full: the contact went to the replacement cache. If `ping` is set, the
    /// caller should ping that questionable contact and report the result (ping-before-evict).
    Pending {
        /// The questionable contact to ping.
        ping: Option<Contact>,
    },
    /// Not inserted (our own id, an unverified contact for a full bucket, or a contact whose
    /// subnet already has `subnet_limit` contacts in the bucket).
    Ignored,
}

/// A serialisable snapshot of a routing table, for warm restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingSnapshot {
    /// The id of the node that owned the table.
    pub local: NodeId,
    /// Its contacts, closest buckets first.
    pub contacts: Vec<Contact>,
}

/// The subnet of a contact's primary address (`None`: never limited).
fn addr_subnet(c: &Contact) -> Option<Subnet> {
    c.primary_addr().and_then(PeerAddr::subnet)
}

/// Whether a contact of subnet `net` may join `entries` (leaving out the one at `skip`) under
/// the per-subnet `limit` (0: no limit).
fn fits(entries: &[Entry], limit: usize, net: Option<Subnet>, skip: Option<usize>) -> bool {
    let Some(net) = net else { return true };
    limit == 0
        || entries
            .iter()
            .enumerate()
            .filter(|(i, e)| Some(*i) != skip && addr_subnet(&e.contact) == Some(net))
            .count()
            < limit
}

/// The replacement that may take a slot in the bucket (the one at `skip` leaving): the freshest
/// that has answered a request of ours, else the freshest.
fn promotable(b: &Bucket, limit: usize, skip: Option<usize>) -> Option<usize> {
    let fit = |r: &Entry| fits(&b.entries, limit, addr_subnet(&r.contact), skip);
    b.replacements
        .iter()
        .rposition(|r| r.answered && fit(r))
        .or_else(|| b.replacements.iter().rposition(fit))
}

/// k-buckets around a local id.
#[derive(Debug)]
pub struct RoutingTable {
    local: NodeId,
    params: RoutingParams,
    buckets: BTreeMap<u8, Bucket>,
    len: usize,
}

impl RoutingTable {
    /// An empty table around `local`.
    pub fn new(local: NodeId, params: RoutingParams) -> Self {
        Self {
            local,
            params,
            buckets: BTreeMap::new(),
            len: 0,
        }
    }

    /// The local id.
    pub fn local_id(&self) -> NodeId {
        self.local
    }

    /// Number of contacts in buckets (replacement caches excluded).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no contact.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Liveness of an entry at `now`.
    pub fn liveness(&self, e: &Entry, now: Instant) -> Liveness {
        if self.params.is_bad(e) {
            Liveness::Bad
        } else if e.verified
            && now.saturating_duration_since(e.last_seen) < self.params.liveness_window
        {
            Liveness::Good
        } else {
            Liveness::Questionable
        }
    }

    /// Adds or refreshes a contact. `verified` means the contact itself just sent us a message
    /// (a response, or a request when we accept requesters); unverified contacts (from snapshots
    /// or bootstrap lists) only fill free space.
    pub fn insert(&mut self, now: Instant, contact: Contact, verified: bool) -> InsertOutcome {
        let Some(idx) = self.local.bucket_index(&contact.id) else {
            return InsertOutcome::Ignored;
        };
        let k = self.params.k;
        let cache = self.params.replacement_cache;
        let window = self.params.liveness_window;
        let limit = self.params.subnet_limit;
        let params = self.params;
        let bucket = self.buckets.entry(idx as u8).or_default();
        if let Some(pos) = bucket
            .entries
            .iter()
            .position(|e| e.contact.id == contact.id)
        {
            if verified {
                // A known contact heard from a new address keeps its old one if the new one's
                // subnet is already at its limit in this bucket.
                let net = addr_subnet(&contact);
                let keep_old = net != addr_subnet(&bucket.entries[pos].contact)
                    && !fits(&bucket.entries, limit, net, Some(pos));
                let e = &mut bucket.entries[pos];
                if !keep_old {
                    e.contact = contact;
                }
                e.last_seen = now;
                e.failures = 0;
                e.verified = true;
                bucket.last_active = Some(now);
            }
            return InsertOutcome::Updated;
        }
        if !fits(&bucket.entries, limit, addr_subnet(&contact), None) {
            return InsertOutcome::Ignored;
        }
        let entry = Entry {
            contact,
            last_seen: now,
            failures: 0,
            srtt_us: 0,
            rttvar_us: 0,
            min_rtt_us: 0,
            verified,
            answered: false,
        };
        if bucket.entries.len() < k {
            if bucket.entries.len() == bucket.entries.capacity() {
                // Grow 4, 8, 16, ..., but never past k: a full bucket wastes no slots.
                let len = bucket.entries.len();
                bucket.entries.reserve_exact(len.max(4).min(k - len));
            }
            bucket.entries.push(entry);
            if verified {
                bucket.last_active = Some(now);
            }
            self.len += 1;
            return InsertOutcome::Inserted;
        }
        if !verified {
            return InsertOutcome::Ignored;
        }
        // Full: replace a bad contact outright.
        if let Some(pos) = bucket.entries.iter().position(|e| params.is_bad(e)) {
            bucket.entries[pos] = entry;
            bucket.last_active = Some(now);
            return InsertOutcome::Inserted;
        }
        // Otherwise keep it as a replacement (the freshest, still known to have answered if it
        // had), and ask for a ping of the stalest questionable entry.
        let mut entry = entry;
        if let Some(i) = bucket
            .replacements
            .iter()
            .position(|r| r.contact.id == entry.contact.id)
        {
            entry.answered = bucket.replacements.remove(i).answered;
        }
        if bucket.replacements.len() >= cache {
            if cache == 0 {
                return InsertOutcome::Ignored;
            }
            bucket.replacements.remove(0);
        }
        bucket.replacements.push(entry);
        let ping = if bucket.pinging.is_none() {
            bucket
                .entries
                .iter()
                .filter(|e| {
                    !e.verified
                        || !e.answered
                        || now.saturating_duration_since(e.last_seen) >= window
                })
                .min_by_key(|e| e.last_seen)
                .map(|e| e.contact.clone())
        } else {
            None
        };
        if let Some(p) = &ping {
            bucket.pinging = Some(p.id);
        }
        InsertOutcome::Pending { ping }
    }

    /// Records that `id` failed to answer a request. After `max_failures` in a row it is bad, and
    /// the freshest replacement takes its place if there is one. Returns true if it was replaced.
    pub fn on_failure(&mut self, id: &NodeId) -> bool {
        let params = self.params;
        let Some(bucket) = self.bucket_mut(id) else {
            return false;
        };
        if bucket.pinging == Some(*id) {
            bucket.pinging = None;
        }
        let Some(pos) = bucket.entries.iter().position(|e| e.contact.id == *id) else {
            bucket.replacements.retain(|r| r.contact.id != *id);
            return false;
        };
        bucket.entries[pos].failures = bucket.entries[pos].failures.saturating_add(1);
        if !params.is_bad(&bucket.entries[pos]) {
            return false;
        }
        // Replace it by the freshest replacement (that its subnet's limit lets in). Without one
        // it stays, marked bad: excluded from `closest`, first to go when a new contact
        // arrives, and a last resort for lookups when nothing better is known (a lossy link
        // must not empty the table).
        match promotable(bucket, params.subnet_limit, Some(pos)) {
            Some(i) => {
                bucket.entries[pos] = bucket.replacements.remove(i);
                true
            }
            None => false,
        }
    }

    /// Up to `n` bad contacts closest to `target` (fallback seeds when good ones run short).
    pub fn closest_bad(&self, target: &NodeId, n: usize) -> Vec<Contact> {
        let mut v: Vec<&Entry> = self.iter().filter(|e| self.params.is_bad(e)).collect();
        v.sort_by_key(|e| e.contact.id.distance(target));
        v.into_iter().take(n).map(|e| e.contact.clone()).collect()
    }

    /// Records that a ping-before-evict answered: the pinged contact stays.
    pub fn on_ping_ok(&mut self, id: &NodeId) {
        if let Some(idx) = self.local.bucket_index(id) {
            if let Some(b) = self.buckets.get_mut(&(idx as u8)) {
                if b.pinging == Some(*id) {
                    b.pinging = None;
                }
            }
        }
    }

    /// Records that `id` answered a request of ours: it may now be handed out to others. Call
    /// after inserting it.
    pub fn on_answer(&mut self, id: &NodeId) {
        let Some(idx) = self.local.bucket_index(id) else {
            return;
        };
        if let Some(b) = self.buckets.get_mut(&(idx as u8)) {
            if let Some(e) = b
                .entries
                .iter_mut()
                .chain(b.replacements.iter_mut())
                .find(|e| e.contact.id == *id)
            {
                e.answered = true;
            }
        }
    }

    /// Moves `id`, a replacement that has answered a request of ours, into its bucket in place
    /// of a contact that never has (a requester whose source may be forged, or a client that
    /// left): the bad one first, else the stalest. Such a contact is never handed out, and it
    /// must not keep out one that can be. Returns whether it moved.
    pub fn promote_answered(&mut self, id: &NodeId) -> bool {
        let params = self.params;
        let Some(b) = self.bucket_mut(id) else {
            return false;
        };
        let Some(r) = b
            .replacements
            .iter()
            .position(|r| r.contact.id == *id && r.answered)
        else {
            return false;
        };
        let net = addr_subnet(&b.replacements[r].contact);
        let Some(pos) = b
            .entries
            .iter()
            .enumerate()
            .filter(|(i, e)| !e.answered && fits(&b.entries, params.subnet_limit, net, Some(*i)))
            .min_by_key(|(_, e)| (!params.is_bad(e), e.last_seen))
            .map(|(i, _)| i)
        else {
            return false;
        };
        if b.pinging == Some(b.entries[pos].contact.id) {
            b.pinging = None;
        }
        b.entries[pos] = b.replacements.remove(r);
        true
    }

    /// Folds an RTT sample into the contact's smoothed RTT and its deviation.
    pub fn record_rtt(&mut self, id: &NodeId, rtt: Duration) {
        if let Some(e) = self.entry_mut(id) {
            let sample = rtt.as_micros().min(u32::MAX as u128) as u32;
            if e.min_rtt_us == 0 || sample < e.min_rtt_us {
                e.min_rtt_us = sample.max(1);
            }
            if e.srtt_us == 0 {
                e.srtt_us = sample;
                e.rttvar_us = sample / 2;
            } else {
                let err = e.srtt_us.abs_diff(sample);
                e.rttvar_us = (e.rttvar_us / 4) * 3 + err / 4;
                e.srtt_us = (e.srtt_us / 8) * 7 + sample / 8;
            }
        }
    }

    /// Removes a contact (from its bucket or its replacement cache). Returns it if it was in a bucket.
    pub fn remove(&mut self, id: &NodeId) -> Option<Entry> {
        let idx = self.local.bucket_index(id)?;
        let bucket = self.buckets.get_mut(&(idx as u8))?;
        bucket.replacements.retain(|r| r.contact.id != *id);
        let pos = bucket.entries.iter().position(|e| e.contact.id == *id)?;
        let e = bucket.entries.swap_remove(pos);
        if let Some(i) = promotable(bucket, self.params.subnet_limit, None) {
            let rep = bucket.replacements.remove(i);
            bucket.entries.push(rep);
        } else {
            self.len -= 1;
        }
        Some(e)
    }

    /// The entry for `id`, if in a bucket.
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        let idx = self.local.bucket_index(id)?;
        self.buckets
            .get(&(idx as u8))?
            .entries
            .iter()
            .find(|e| e.contact.id == *id)
    }

    /// The bucket `id` belongs in, if it exists.
    fn bucket_mut(&mut self, id: &NodeId) -> Option<&mut Bucket> {
        let idx = self.local.bucket_index(id)?;
        self.buckets.get_mut(&(idx as u8))
    }

    /// `id`'s entry in its bucket's replacement cache, if it waits there.
    pub fn replacement(&self, id: &NodeId) -> Option<&Entry> {
        let idx = self.local.bucket_index(id)?;
        self.buckets
            .get(&(idx as u8))?
            .replacements
            .iter()
            .find(|e| e.contact.id == *id)
    }

    fn entry_mut(&mut self, id: &NodeId) -> Option<&mut Entry> {
        let idx = self.local.bucket_index(id)?;
        self.buckets
            .get_mut(&(idx as u8))?
            .entries
            .iter_mut()
            .find(|e| e.contact.id == *id)
    }

    /// Every entry, bucket by bucket (closest buckets first).
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.buckets.values().flat_map(|b| b.entries.iter())
    }

    /// Sizes of the non-empty buckets: `(index, entries, replacements)`.
    pub fn bucket_sizes(&self) -> Vec<(usize, usize, usize)> {
        self.buckets
            .iter()
            .filter(|(_, b)| !b.entries.is_empty() || !b.replacements.is_empty())
            .map(|(i, b)| (*i as usize, b.entries.len(), b.replacements.len()))
            .collect()
    }

    /// Whether this table likely holds every node near `target`: it knows fewer than `k`
    /// contacts in all (a network of about `k` nodes or fewer), or it knows the region of
    /// `target` as densely as its own, that is, the `k`-th closest contact to `target` is no
    /// farther from it (to within a factor of two) than the `k`-th closest to the local id is
    /// from the local id. Joining and refreshing keep a node's own neighbourhood complete, so
    /// this holds for targets near the local id and in small networks, and fails for most
    /// targets of a large network, which a far bucket covers only sparsely. A put stores at once
    /// where this holds, and searches first elsewhere.
    pub fn knows_neighbourhood(&self, target: &NodeId, k: usize) -> bool {
        if k == 0 {
            return false;
        }
        let reach = |t: &NodeId| {
            let c = self.closest(t, k);
            (c.len() >= k).then(|| c[k - 1].id.distance(t).bucket_index())
        };
        match (reach(target), reach(&self.local)) {
            (None, _) => self.len < k,
            (Some(_), None) => false,
            (Some(near_target), Some(near_self)) => near_target <= near_self,
        }
    }

    /// Up to `n` contacts closest to `target`, sorted by distance (then by id), bad contacts excluded.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<Contact> {
        self.closest_entries(target, n)
            .into_iter()
            .map(|e| e.contact.clone())
            .collect()
    }

    /// Up to `n` contacts closest to `target` that have answered a request of ours and are not
    /// bad, sorted by distance: the contacts to hand out in answers to other nodes.
    pub fn closest_answered(&self, target: &NodeId, n: usize) -> Vec<Contact> {
        self.closest_where(target, n, |e| e.answered)
            .into_iter()
            .map(|e| e.contact.clone())
            .collect()
    }

    /// Like [`closest`](Self::closest), returning the entries.
    pub fn closest_entries(&self, target: &NodeId, n: usize) -> Vec<&Entry> {
        self.closest_where(target, n, |_| true)
    }

    /// Up to `n` entries closest to `target` that are not bad and satisfy `keep`.
    fn closest_where(
        &self,
        target: &NodeId,
        n: usize,
        keep: impl Fn(&Entry) -> bool,
    ) -> Vec<&Entry> {
        if n == 0 {
            return Vec::new();
        }
        let mut all: Vec<(Distance, &Entry)> = Vec::new();
        let keep = |e: &Entry| !self.params.is_bad(e) && keep(e);
        fn take<'a>(
            b: &'a Bucket,
            target: &NodeId,
            keep: &impl Fn(&Entry) -> bool,
            all: &mut Vec<(Distance, &'a Entry)>,
        ) {
            for e in b.entries.iter().filter(|e| keep(e)) {
                all.push((e.contact.id.distance(target), e));
            }
        }
        // Walk the buckets instead of the whole table. Seen from `target`, an entry of bucket
        // `bt` (the target's own bucket) is closer than any entry of a lower bucket, and those
        // are closer than any entry of a higher bucket, in increasing order of index.
        let bt = self.local.bucket_index(target);
        if let Some(bt) = bt {
            if let Some(b) = self.buckets.get(&(bt as u8)) {
                take(b, target, &keep, &mut all);
            }
            if all.len() < n {
                for (_, b) in self.buckets.range(..bt as u8) {
                    take(b, target, &keep, &mut all);
                }
            }
        }
        let above = bt.map_or(0, |bt| bt + 1);
        if above < ID_BITS {
            for (_, b) in self.buckets.range(above as u8..) {
                if all.len() >= n {
                    break;
                }
                take(b, target, &keep, &mut all);
            }
        }
        if all.len() > n {
            all.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
            all.truncate(n);
        }
        all.sort_unstable_by_key(|a| a.0);
        all.into_iter().map(|(_, e)| e).collect()
    }

    /// Marks the bucket that `target` falls into as active (a lookup went there).
    pub fn touch(&mut self, now: Instant, target: &NodeId) {
        if let Some(idx) = self.local.bucket_index(target) {
            if let Some(b) = self.buckets.get_mut(&(idx as u8)) {
                b.last_active = Some(now);
            }
        }
    }

    /// Indices of non-empty buckets with no activity for `interval` (they need a refresh lookup).
    pub fn stale_buckets(&self, now: Instant, interval: Duration) -> Vec<usize> {
        self.buckets
            .iter()
            .filter(|(_, b)| !b.entries.is_empty())
            .filter(|(_, b)| {
                b.last_active
                    .is_none_or(|t| now.saturating_duration_since(t) >= interval)
            })
            .map(|(i, _)| *i as usize)
            .collect()
    }

    /// The earliest time a bucket becomes stale, given `interval`.
    pub fn next_refresh(&self, interval: Duration) -> Option<Instant> {
        self.buckets
            .values()
            .filter(|b| !b.entries.is_empty())
            .filter_map(|b| b.last_active)
            .min()
            .map(|t| t + interval)
    }

    /// A snapshot of every contact, for warm restarts.
    pub fn snapshot(&self) -> RoutingSnapshot {
        RoutingSnapshot {
            local: self.local,
            contacts: self.iter().map(|e| e.contact.clone()).collect(),
        }
    }

    /// Adds the contacts of a snapshot as unverified (questionable) entries; they become good
    /// once they answer. Returns how many were added.
    pub fn restore(&mut self, now: Instant, snapshot: &RoutingSnapshot) -> usize {
        snapshot
            .contacts
            .iter()
            .filter(|c| self.insert(now, (*c).clone(), false) == InsertOutcome::Inserted)
            .count()
    }

    /// Checks the table's invariants (at most k per bucket, no duplicates, every contact in the
    /// right bucket, `len` consistent). Used by tests and fuzzing.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        let mut n = 0;
        for (idx, b) in &self.buckets {
            if b.entries.len() > self.params.k {
                return Err(format!("bucket {idx} holds {} > k", b.entries.len()));
            }
            if b.replacements.len() > self.params.replacement_cache {
                return Err(format!("bucket {idx} cache holds {}", b.replacements.len()));
            }
            if self.params.subnet_limit > 0 {
                for e in &b.entries {
                    let net = addr_subnet(&e.contact);
                    let same = b
                        .entries
                        .iter()
                        .filter(|x| addr_subnet(&x.contact) == net)
                        .count();
                    if net.is_some() && same > self.params.subnet_limit {
                        return Err(format!("bucket {idx} holds {same} of subnet {net:?}"));
                    }
                }
            }
            for e in &b.entries {
                if !seen.insert(e.contact.id) {
                    return Err(format!("duplicate {:?}", e.contact.id));
                }
                if self.local.bucket_index(&e.contact.id) != Some(*idx as usize) {
                    return Err(format!("{:?} in wrong bucket {idx}", e.contact.id));
                }
                n += 1;
            }
        }
        if n != self.len {
            return Err(format!("len {} != counted {n}", self.len));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick an arbitrary base instant
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(k: usize) -> RoutingParams {
        RoutingParams {
            k,
            replacement_cache: 3,
            liveness_window: Duration::from_secs(900),
            max_failures: 2,
            subnet_limit: 2,
        }
    }

    /// At most `subnet_limit` contacts of one /24 per bucket, replacement cache included;
    /// other subnets and exempt (loopback) addresses are not affected.
    #[test]
    fn subnet_limit_per_bucket() {
        let now = Instant::now();
        let mut t = RoutingTable::new(NodeId::ZERO, params(8));
        // Ids 0x80.. all fall in bucket 159.
        let at = |b: u8, addr: &str| {
            let mut id = [0u8; 20];
            id[0] = 0x80 | b;
            Contact::new(NodeId(id), addr.parse().unwrap())
        };
        assert_eq!(
            t.insert(now, at(1, "udp://1.2.3.4:1"), true),
            InsertOutcome::Inserted
        );
        assert_eq!(
            t.insert(now, at(2, "udp://1.2.3.5:1"), true),
            InsertOutcome::Inserted
        );
        // A third from 1.2.3.0/24 is refused; the ones already in are still refreshed.
        assert_eq!(
            t.insert(now, at(3, "udp://1.2.3.6:1"), true),
            InsertOutcome::Ignored
        );
        assert_eq!(
            t.insert(now, at(1, "udp://1.2.3.4:1"), true),
            InsertOutcome::Updated
        );
        assert_eq!(
            t.insert(now, at(4, "udp://1.2.4.6:1"), true),
            InsertOutcome::Inserted
        );
        for i in 5..10 {
            assert_eq!(
                t.insert(now, at(i, "udp://127.0.0.1:1"), true),
                InsertOutcome::Inserted
            );
        }
        // The bucket is full: the limit also keeps the subnet out of the replacement cache.
        assert_eq!(
            t.insert(now, at(10, "udp://1.2.3.7:1"), true),
            InsertOutcome::Ignored
        );
        assert!(matches!(
            t.insert(now, at(11, "udp://5.6.7.8:1"), true),
            InsertOutcome::Pending { .. }
        ));
        assert_eq!(t.len(), 8);
        // Once one of the two is gone (its replacement takes the slot), another of its subnet
        // may wait in the replacement cache.
        assert!(t.remove(&at(2, "udp://1.2.3.5:1").id).is_some());
        assert!(matches!(
            t.insert(now, at(3, "udp://1.2.3.6:1"), true),
            InsertOutcome::Pending { .. }
        ));
        // Off: no limit.
        let mut p = params(8);
        p.subnet_limit = 0;
        let mut t = RoutingTable::new(NodeId::ZERO, p);
        for i in 1..6 {
            assert_eq!(
                t.insert(now, at(i, "udp://1.2.3.4:1"), true),
                InsertOutcome::Inserted
            );
        }
    }

    /// Found by the `routing_table` fuzz target: a replacement promoted when an entry fails
    /// (or is removed) must not take its subnet past the limit. The freshest replacement that
    /// fits is promoted; if none fits, the bad entry stays.
    #[test]
    fn promoted_replacements_respect_the_subnet_limit() {
        let now = Instant::now();
        let mut p = params(3);
        p.replacement_cache = 4;
        let mut t = RoutingTable::new(NodeId::ZERO, p);
        let at = |b: u8, addr: &str| {
            let mut id = [0u8; 20];
            id[0] = 0x80 | b;
            Contact::new(NodeId(id), addr.parse().unwrap())
        };
        let (a, b, c) = (
            at(1, "udp://1.2.3.1:1"),
            at(2, "udp://5.5.5.5:1"),
            at(3, "udp://6.6.6.6:1"),
        );
        for x in [&a, &b, &c] {
            assert_eq!(t.insert(now, x.clone(), true), InsertOutcome::Inserted);
            t.on_answer(&x.id);
        }
        // Two more of 1.2.3.0/24 wait as replacements (one of it in the bucket so far).
        let (d, e) = (at(4, "udp://1.2.3.4:1"), at(5, "udp://1.2.3.5:1"));
        for x in [&d, &e] {
            assert!(matches!(
                t.insert(now, x.clone(), true),
                InsertOutcome::Pending { .. }
            ));
        }
        // b fails for good: the freshest replacement, e, takes its slot (2 of the subnet).
        assert!(!t.on_failure(&b.id));
        assert!(t.on_failure(&b.id));
        assert!(t.get(&e.id).is_some());
        // c fails for good: d would be a third of the subnet, so c stays, marked bad.
        assert!(!t.on_failure(&c.id));
        assert!(!t.on_failure(&c.id));
        assert!(t.get(&d.id).is_none() && t.get(&c.id).is_some());
        // Removing a makes room: d is promoted.
        assert!(t.remove(&a.id).is_some());
        assert!(t.get(&d.id).is_some());
        t.check_invariants().unwrap();
        // A known contact heard from an address in a full subnet keeps its old address.
        assert_eq!(
            t.insert(now, at(3, "udp://1.2.3.9:1"), true),
            InsertOutcome::Updated
        );
        assert_eq!(t.get(&c.id).unwrap().contact, c);
        t.check_invariants().unwrap();
    }

    fn contact(id: NodeId) -> Contact {
        Contact::new(id, PeerAddr::Mem(u64::from(id.0[19])))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert([u8; 20], bool),
        Fail(usize),
        Remove(usize),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<[u8; 20]>(), any::<bool>()).prop_map(|(b, v)| Op::Insert(b, v)),
            // Ids close to the local id, so small buckets fill too.
            2 => (any::<[u8; 2]>(), any::<bool>()).prop_map(|(b, v)| { let mut a = [0u8; 20]; a[18] = b[0]; a[19] = b[1]; Op::Insert(a, v) }),
            1 => any::<usize>().prop_map(Op::Fail),
            1 => any::<usize>().prop_map(Op::Remove),
            1 => any::<u16>().prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold(
            k in 1usize..8,
            ops in proptest::collection::vec(op(), 1..300),
            target in any::<[u8; 20]>(),
            n in 1usize..25,
            near in 0usize..4,
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut rt = RoutingTable::new(NodeId::ZERO, params(k));
            let mut known: Vec<NodeId> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(b, v) => { let id = NodeId(b); known.push(id); rt.insert(now, contact(id), v); }
                    Op::Fail(i) => if !known.is_empty() { rt.on_failure(&known[i % known.len()]); },
                    Op::Remove(i) => if !known.is_empty() { rt.remove(&known[i % known.len()]); },
                    Op::Advance(s) => now += Duration::from_secs(u64::from(s)),
                }
                prop_assert!(rt.check_invariants().is_ok(), "{:?}", rt.check_invariants());
            }
            // Targets anywhere, and targets near the local id (deep buckets: the bucket walk).
            let mut target = NodeId(target);
            if near > 0 {
                let shift = near * 5;
                for (i, b) in target.0.iter_mut().enumerate() {
                    if i < shift / 8 { *b = 0; } else if i == shift / 8 { *b >>= shift % 8; }
                }
            }
            let closest = rt.closest(&target, n);
            prop_assert!(closest.len() <= n);
            for w in closest.windows(2) {
                prop_assert!(w[0].id.distance(&target) < w[1].id.distance(&target));
            }
            // closest() really returns the nearest non-bad contacts.
            let mut all: Vec<NodeId> = rt.iter().filter(|e| !rt.params.is_bad(e)).map(|e| e.contact.id).collect();
            all.sort_by_key(|id| id.distance(&target));
            all.truncate(n);
            prop_assert_eq!(all, closest.iter().map(|c| c.id).collect::<Vec<_>>());
        }
    }

    /// An id in the far half of the id space (bucket 159 of `NodeId::ZERO`), told apart by `b`.
    fn far(b: u8) -> NodeId {
        let mut a = [0u8; 20];
        a[0] = 0x80 | b;
        NodeId(a)
    }

    #[test]
    fn a_replacement_that_answers_takes_the_slot_of_a_contact_that_never_has() {
        let now = Instant::now();
        let mk = far;
        // A bucket of requesters that never answered: a replacement that answers takes the
        // stalest one's slot at once, with no failure to wait for.
        let mut rt = RoutingTable::new(NodeId::ZERO, params(2));
        rt.insert(now, contact(mk(5)), true);
        rt.insert(now + Duration::from_secs(1), contact(mk(6)), true);
        rt.insert(now, contact(mk(7)), true);
        assert!(!rt.promote_answered(&mk(7)), "it has not answered yet");
        rt.on_answer(&mk(7));
        assert!(rt.promote_answered(&mk(7)));
        assert!(rt.get(&mk(5)).is_none() && rt.get(&mk(6)).is_some() && rt.get(&mk(7)).is_some());
        // Once every slot holds a contact that answered, nothing is displaced.
        rt.on_answer(&mk(6));
        rt.insert(now, contact(mk(8)), true);
        rt.on_answer(&mk(8));
        assert!(!rt.promote_answered(&mk(8)));
        // Heard from again, a replacement stays known to have answered.
        rt.insert(now, contact(mk(8)), true);
        assert!(rt.replacement(&mk(8)).unwrap().answered);
        rt.check_invariants().unwrap();
    }

    #[test]
    fn ping_before_evict_and_replacement() {
        let now = Instant::now();
        let mut rt = RoutingTable::new(NodeId::ZERO, params(2));
        let mk = far;
        assert_eq!(
            rt.insert(now, contact(mk(1)), true),
            InsertOutcome::Inserted
        );
        assert_eq!(
            rt.insert(now, contact(mk(2)), true),
            InsertOutcome::Inserted
        );
        // Both have answered us and are fresh: the newcomer is cached, nothing to ping.
        rt.on_answer(&mk(1));
        rt.on_answer(&mk(2));
        assert_eq!(
            rt.insert(now, contact(mk(3)), true),
            InsertOutcome::Pending { ping: None }
        );
        // Later both are questionable: a ping of the stalest is requested, only once at a time.
        let later = now + Duration::from_secs(1000);
        let out = rt.insert(later, contact(mk(4)), true);
        assert!(matches!(out, InsertOutcome::Pending { ping: Some(_) }));
        assert_eq!(
            rt.insert(later, contact(mk(5)), true),
            InsertOutcome::Pending { ping: None }
        );
        // The pinged contact fails twice: replaced by the freshest replacement.
        let InsertOutcome::Pending { ping: Some(p) } = out else {
            unreachable!()
        };
        assert!(!rt.on_failure(&p.id));
        assert!(rt.on_failure(&p.id));
        assert!(rt.get(&p.id).is_none());
        assert!(rt.get(&mk(5)).is_some());
        assert_eq!(rt.len(), 2);
        rt.check_invariants().unwrap();
        // Without replacements a failing contact stays, marked bad, out of `closest`.
        let mut rt1 = RoutingTable::new(NodeId::ZERO, params(1));
        rt1.insert(now, contact(mk(1)), true);
        assert!(!rt1.on_failure(&mk(1)) && !rt1.on_failure(&mk(1)));
        assert_eq!(rt1.liveness(rt1.get(&mk(1)).unwrap(), now), Liveness::Bad);
        assert!(rt1.closest(&NodeId::ZERO, 5).is_empty());
        assert_eq!(rt1.closest_bad(&NodeId::ZERO, 5).len(), 1);
        // A new contact replaces the bad one.
        let mut far = [0u8; 20];
        far[0] = 0x81;
        far[1] = 1;
        assert_eq!(
            rt1.insert(now, contact(NodeId(far)), true),
            InsertOutcome::Inserted
        );
        assert!(rt1.get(&mk(1)).is_none());
    }

    #[test]
    fn snapshot_restore() {
        let now = Instant::now();
        let mut rt = RoutingTable::new(NodeId::ZERO, params(4));
        for i in 1..=10u8 {
            let mut a = [0u8; 20];
            a[0] = i;
            rt.insert(now, contact(NodeId(a)), true);
        }
        let snap = rt.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        let back: RoutingSnapshot = serde_json::from_str(&json).unwrap();
        let mut rt2 = RoutingTable::new(NodeId::ZERO, params(4));
        assert_eq!(rt2.restore(now, &back), rt.len());
        assert_eq!(rt2.len(), rt.len());
        assert!(
            rt2.iter()
                .all(|e| rt2.liveness(e, now) == Liveness::Questionable)
        );
    }
}
