//! Maintenance: bucket refresh, republishing and re-replication, and re-joining a network the node lost.

use std::time::Instant;

use tracing::debug;

use super::{Node, QueryKind, REJOIN_ADDRS};

impl Node {
    /// Schedules a join when the routing table is empty and there is somewhere to join through,
    /// or a lookup of our own id when it holds fewer than k contacts (a join cut short by loss,
    /// or made through a seed that had not joined yet, leaves a node on an island). The wait
    /// doubles from [`Config::rejoin_min`] to [`Config::rejoin_max`] while the table stays thin.
    pub(super) fn watch_alone(&mut self, now: Instant) {
        if self.routing.len() >= self.config.k {
            self.rejoin_wait = self.config.rejoin_min;
            self.rejoin_at = None;
            return;
        }
        let somewhere =
            !(self.routing.is_empty() && self.join_addrs.is_empty() && self.last_known.is_empty());
        if self.rejoin_at.is_none() && somewhere {
            self.rejoin_at = Some(now + self.rejoin_wait);
        }
    }

    /// Joins again through the bootstrap addresses and the contacts last known when the table
    /// is empty, or looks up our own id when it is thin; nothing while a join runs.
    pub(super) fn rejoin(&mut self, now: Instant) {
        if self.routing.len() >= self.config.k {
            return;
        }
        let joining = self.queries.values().any(|q| {
            matches!(q.kind, QueryKind::Bootstrap { .. })
                || (matches!(q.kind, QueryKind::Refresh)
                    && q.lookup
                        .as_ref()
                        .is_some_and(|l| l.target() == self.local.id))
        });
        if joining {
            return;
        }
        self.rejoin_wait = (self.rejoin_wait * 2).min(self.config.rejoin_max);
        if !self.routing.is_empty() {
            let me = self.local.id;
            let lookup = self.make_lookup(now, me);
            if let Ok(qid) = self.new_query(now, QueryKind::Refresh, Some(lookup)) {
                self.step_query(now, qid);
            }
            return;
        }
        let mut addrs = self.join_addrs.clone();
        for a in &self.last_known {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        if addrs.is_empty() {
            return;
        }
        self.stats.rejoins += 1;
        debug!(addrs = addrs.len(), "routing table empty: joining again");
        let _ = self.start_bootstrap(now, &addrs);
    }

    /// Keeps the addresses of a few of the closest contacts, to join again through them should
    /// the table ever empty.
    pub(super) fn remember_contacts(&mut self) {
        let me = self.local.id;
        let closest = self.routing.closest(&me, REJOIN_ADDRS);
        if closest.is_empty() {
            return;
        }
        self.last_known = closest
            .iter()
            .filter_map(|c| c.addr_for(&self.config.transport_preference).cloned())
            .collect();
    }

    pub(super) fn maintenance(&mut self, now: Instant) {
        let unix = self.unix_ms(now);
        let expired = self.store.remove_expired(unix);
        self.stats.records_expired += expired as u64;
        self.remember_contacts();
        // A thin table (fewer than k contacts) looks for more with a self-lookup.
        if self.routing.len() < self.config.k && !self.routing.is_empty() {
            let me = self.local.id;
            let lookup = self.make_lookup(now, me);
            if let Ok(qid) = self.new_query(now, QueryKind::Refresh, Some(lookup)) {
                self.step_query(now, qid);
            }
        }
        // Bucket refresh.
        for idx in self
            .routing
            .stale_buckets(now, self.config.refresh_interval)
        {
            let target = self.local.id.random_in_bucket(idx, &mut self.rng);
            let lookup = self.make_lookup(now, target);
            if let Ok(qid) = self.new_query(now, QueryKind::Refresh, Some(lookup)) {
                self.step_query(now, qid);
            }
        }
        // Re-replicate what we hold to the current k closest, keeping the original publish time.
        // A record some other holder re-stored here within the interval is skipped: that holder
        // is replicating it (so in a stable network one holder per record does the work).
        if now >= self.next_replicate && self.replicate_queue.is_empty() {
            self.next_replicate = now + self.config.replicate_interval;
            let fresh = unix.saturating_sub(self.config.replicate_interval.as_millis() as u64);
            self.replicate_queue = self
                .store
                .keys()
                .into_iter()
                .filter(|k| {
                    self.store
                        .get(k)
                        .is_some_and(|r| r.stored_at_ms <= fresh && !r.is_expired(unix))
                })
                .collect();
        }
        // A quarter of the free query slots per tick.
        let room = self.config.max_queries.saturating_sub(self.queries.len()) / 4;
        for _ in 0..room.max(1) {
            let Some(key) = self.replicate_queue.pop_front() else {
                break;
            };
            if let Some(mut r) = self.store.get(&key) {
                if !r.is_expired(unix) {
                    r.stored_at_ms = 0;
                    if self.put_record(now, r).is_err() {
                        self.replicate_queue.push_front(key);
                        break;
                    }
                }
            }
        }
    }
}
