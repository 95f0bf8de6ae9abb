//! Timeouts: requests that went unanswered, and queries waiting for room.

use std::time::Instant;

use super::{Node, PendingKind, Query, QueryError, QueryId, QueryKind, QueryResult};
use crate::message::RpcError;
use crate::plugin::PluginResponse;

impl Node {
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        // Requests past their hard deadline.
        while let Some((&dk, _)) = self.deadlines.iter().next() {
            if dk.0 > now {
                break;
            }
            let Some((_, key)) = self.deadlines.pop_first() else {
                break;
            };
            let Some(p) = self.in_flight.remove(&key) else {
                continue;
            };
            let Some(p) = self.retransmit(now, key, p) else {
                continue;
            };
            self.stats.timeouts += 1;
            if let Some(id) = p.expected {
                self.routing.on_failure(&id);
            }
            self.request_failed(now, p.kind);
        }
        // Lookups whose soft deadlines passed widen.
        let due: Vec<QueryId> = self
            .queries
            .iter()
            .filter(|(_, q)| q.lookup.as_ref().is_some_and(|l| l.has_waiting()))
            .map(|(id, _)| *id)
            .collect();
        for qid in due {
            self.step_query(now, qid);
        }
        // Plugin timers.
        for idx in 0..self.plugins.len() {
            if self.plugins[idx].next_timeout().is_some_and(|t| t <= now) {
                self.with_plugin(now, idx, |p, cx| p.on_timeout(cx));
            }
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now + self.config.maintenance_interval;
            self.maintenance(now);
        }
        // Own records are republished when due, between maintenance ticks too (a short TTL).
        if self.own_records.next_due().is_some_and(|t| t <= now) {
            self.republish_due_records(now);
        }
        if self.rejoin_at.is_some_and(|t| t <= now) {
            self.rejoin_at = None;
            self.rejoin(now);
        }
        self.watch_alone(now);
        self.feed_starved(now);
    }

    pub(super) fn request_failed(&mut self, now: Instant, kind: PendingKind) {
        match kind {
            PendingKind::Lookup { query, peer } => {
                if let Some(l) = self.queries.get_mut(&query).and_then(|q| q.lookup.as_mut()) {
                    l.on_failure(&peer);
                }
                self.step_query(now, query);
            }
            PendingKind::Store { query } => self.store_result(
                now,
                query,
                Some(RpcError::new(RpcError::INTERNAL, "timed out")),
            ),
            PendingKind::Ping { query } => {
                self.finish(now, query, QueryResult::Ping(Err(QueryError::Timeout)))
            }
            PendingKind::BootstrapPing { query } => {
                let start = match self.queries.get_mut(&query) {
                    Some(Query {
                        kind: QueryKind::Bootstrap { pings, .. },
                        lookup,
                        ..
                    }) => {
                        *pings = pings.saturating_sub(1);
                        *pings == 0 && lookup.is_none()
                    }
                    _ => false,
                };
                if start {
                    self.start_bootstrap_lookup(now, query);
                }
            }
            PendingKind::EvictPing { .. } | PendingKind::Verify => {}
            PendingKind::Prove { addr } => {
                if self.guard.proof_failed(&addr) {
                    let n = self.guard.take(&addr).len() as u64;
                    self.stats.replies_deferred_dropped += n;
                }
            }
            PendingKind::Call { query } => {
                self.finish(now, query, QueryResult::Call(Err(QueryError::Timeout)))
            }
            PendingKind::Plugin { plugin, id } => {
                self.with_plugin(now, plugin, |p, cx| {
                    p.on_response(cx, id, PluginResponse::Timeout)
                });
            }
        }
    }

    pub(super) fn feed_starved(&mut self, now: Instant) {
        let mut turns = self.starved.len();
        while self.in_flight.len() < self.config.max_in_flight && turns > 0 {
            let Some(qid) = self.starved.pop_front() else {
                break;
            };
            turns -= 1;
            self.step_query_inner(now, qid, true);
        }
    }
}
