//! Query progress: lookups stepped forward, and gets and puts finished.

use std::time::{Duration, Instant};

use tracing::debug;

use super::{
    Event, GetOutcome, LookupOutcome, Node, PendingKind, PutOutcome, Query, QueryError, QueryId,
    QueryKind, QueryResult,
};
use crate::addr::Contact;
use crate::config::Config;
use crate::id::NodeId;
use crate::lookup::Lookup;
use crate::message::{Request, RpcError};
use crate::record::Record;

/// Values up to this size (bytes) go in a put's STOREs to any candidate, even one first heard of
/// in another node's answer: such a STORE is no more than about twice a FIND_NODE, which a
/// lookup sends to the same candidates. Larger ones go only to nodes that have answered us.
pub(super) const DIRECT_STORE_ANY: usize = 512;

impl Node {
    pub(super) fn step_query(&mut self, now: Instant, qid: QueryId) {
        self.step_query_inner(now, qid, false);
    }

    /// Advances a query. While queries wait for in-flight room (`starved`), others queue behind
    /// them instead of taking freed slots, so no query starves; `from_queue` marks the query
    /// being served from the front of that queue.
    pub(super) fn step_query_inner(&mut self, now: Instant, qid: QueryId, from_queue: bool) {
        let soft = self.soft_timeout();
        let mut room = self
            .config
            .max_in_flight
            .saturating_sub(self.in_flight.len());
        if !from_queue && !self.starved.is_empty() {
            room = 0;
        }
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        // Early return of a get that has its quorum.
        if let QueryKind::Get { quorum, found, .. } = &q.kind {
            if *quorum > 0 && found.len() >= *quorum {
                self.finish_get(now, qid);
                return;
            }
        }
        if let QueryKind::Put {
            storing: Some(_), ..
        } = &q.kind
        {
            return;
        }
        let Some(lookup) = q.lookup.as_mut() else {
            return;
        };
        if lookup.is_finished(now) {
            return self.lookup_finished(now, qid);
        }
        // A peer whose own RTT is known gets a soft deadline from it (twice its smoothed RTT),
        // never longer than the network-wide one; others get the network-wide one. A put that
        // stores as it searches asks its STOREs again sooner, at the peer's own retransmission
        // timeout (1.25 to 1.5 of its RTT): it waits for every one of them, so on a lossy path
        // one lost STORE or answer sets the put's time, and then costs about 2.4 round trips
        // in all instead of 3.
        let direct = matches!(
            q.kind,
            QueryKind::Put {
                direct: Some(_),
                ..
            }
        );
        let routing = &self.routing;
        let min_soft = self.config.min_soft_timeout;
        let soft_for = |c: &Contact| match routing.get(&c.id) {
            Some(e) if e.srtt_us > 0 => {
                let own = match e.resend_after() {
                    Some(rto) if direct => rto,
                    _ => Duration::from_micros(u64::from(e.srtt_us)) * 2,
                };
                own.clamp(min_soft, soft.max(min_soft))
            }
            _ => soft,
        };
        let asks = lookup.next_with(now, soft_for, room);
        let target = lookup.target();
        if room == 0 && !self.starved.contains(&qid) {
            self.starved.push_back(qid);
        }
        // A put that stores as it searches sends a record larger than `DIRECT_STORE_ANY` only
        // to nodes that have answered us (a contact named by another node gets a FIND_NODE
        // first, and the record once the lookup ends, if it is among the k closest): no node
        // can aim our large records at a third party by naming it. A smaller record goes to
        // any candidate, as a FIND_NODE would.
        let routing = &self.routing;
        let store = match &mut q.kind {
            QueryKind::Put {
                record,
                direct: Some(d),
                ..
            } => {
                let small = record.value.len() <= DIRECT_STORE_ANY;
                let known = |c: &Contact| small || routing.get(&c.id).is_some_and(|e| e.answered);
                d.asked
                    .extend(asks.iter().filter(|c| known(c)).map(|c| c.id));
                Some((
                    Request::Store {
                        record: record.clone(),
                        want_nodes: true,
                    },
                    asks.iter().map(known).collect::<Vec<bool>>(),
                ))
            }
            _ => None,
        };
        let req = match &q.kind {
            QueryKind::Get { key, .. } => Request::FindValue { key: *key },
            QueryKind::PluginLookup { method, params, .. } => Request::Custom {
                method: method.clone(),
                params: params.clone(),
            },
            _ => Request::FindNode { target },
        };
        let mut gave_up = false;
        for (i, c) in asks.into_iter().enumerate() {
            let peer = c.id;
            let req = match &store {
                Some((store, known)) if known[i] => store.clone(),
                _ => req.clone(),
            };
            if !self.send_to_contact(now, &c, req, PendingKind::Lookup { query: qid, peer }) {
                // No transport of ours reaches it (or no room to send).
                gave_up = true;
                if let Some(l) = self.queries.get_mut(&qid).and_then(|q| q.lookup.as_mut()) {
                    l.give_up(&peer);
                }
            }
        }
        if self
            .queries
            .get(&qid)
            .and_then(|q| q.lookup.as_ref())
            .is_some_and(|l| l.is_finished(now))
        {
            self.lookup_finished(now, qid);
        } else if gave_up {
            // Candidates given up on free their slots: ask the next ones now, or a lookup whose
            // every ask failed would wait forever (nothing in flight to answer or time out).
            // Each round gives up at least one candidate, so this ends.
            self.step_query_inner(now, qid, from_queue);
        }
    }

    pub(super) fn lookup_finished(&mut self, now: Instant, qid: QueryId) {
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        let Some(lookup) = q.lookup.as_ref() else {
            return;
        };
        debug!(
            query = qid.0,
            target = %lookup.target(),
            candidates = %lookup.describe(),
            "lookup finished"
        );
        let outcome = LookupOutcome {
            target: lookup.target(),
            closest: lookup.closest_succeeded(),
            unanswered: lookup.closest_unanswered(),
            stats: lookup.finish_stats(),
            elapsed: now.saturating_duration_since(q.started),
        };
        match &mut q.kind {
            QueryKind::FindNode => self.finish(now, qid, QueryResult::FindNode(Ok(outcome))),
            QueryKind::Refresh => self.finish(now, qid, QueryResult::Refresh(outcome)),
            QueryKind::Bootstrap { refresh_left, .. } => {
                if outcome.closest.is_empty() && self.routing.is_empty() {
                    self.finish(now, qid, QueryResult::Bootstrap(Err(QueryError::NoPeers)));
                    return self.watch_alone(now);
                }
                // Optionally refresh the farthest non-full buckets, each with its own lookup,
                // down to the bucket of the closest contact (Kademlia's join: nearer than that
                // no node is known to exist, and the self-lookup has just searched there).
                let mut n = *refresh_left;
                *refresh_left = 0;
                let sizes = self.routing.bucket_sizes();
                let k = self.config.k;
                let nearest = sizes
                    .iter()
                    .filter(|(_, entries, _)| *entries > 0)
                    .map(|(idx, ..)| *idx)
                    .min()
                    .unwrap_or(0);
                let mut targets = Vec::new();
                for idx in (nearest..crate::id::ID_BITS).rev() {
                    if n == 0 {
                        break;
                    }
                    let full = sizes.iter().any(|(i, e, _)| *i == idx && *e >= k);
                    if !full {
                        targets.push(self.local.id.random_in_bucket(idx, &mut self.rng));
                        n -= 1;
                    }
                }
                for t in targets {
                    let lookup = self.make_lookup(now, t);
                    if let Ok(r) = self.new_query(now, QueryKind::Refresh, Some(lookup)) {
                        self.step_query(now, r);
                    }
                }
                self.remember_contacts();
                self.finish(now, qid, QueryResult::Bootstrap(Ok(outcome)));
                self.watch_alone(now);
            }
            QueryKind::Get { .. } => self.finish_get(now, qid),
            QueryKind::PluginLookup { plugin, .. } => {
                let plugin = *plugin;
                let closest = outcome.closest.clone();
                let stats = outcome.stats.clone();
                self.with_plugin(now, plugin, |p, cx| {
                    p.on_lookup_done(cx, qid, &closest, &stats)
                });
                self.finish(now, qid, QueryResult::PluginLookup(outcome));
            }
            QueryKind::Put {
                record,
                storing,
                direct,
                ..
            } => {
                // Store at the k closest that answered, and here if this node is among them. A
                // put that stored as it searched has sent most of its STOREs already: left are
                // the k closest it asked a FIND_NODE (named by others, unknown to us until they
                // answered).
                let record = record.clone();
                let (stored, asked) = direct
                    .as_ref()
                    .map_or((0, 0), |d| (d.stored.len(), d.asked.len()));
                let targets: Vec<Contact> = outcome
                    .closest
                    .iter()
                    .filter(|c| direct.as_ref().is_none_or(|d| !d.answered.contains(&c.id)))
                    .cloned()
                    .collect();
                let local = Self::stores_locally(
                    &self.config,
                    &self.local.id,
                    &outcome.closest,
                    &record.key,
                );
                *storing = Some((0, stored, asked + targets.len() + usize::from(local)));
                let local_ok = local && {
                    let id = self.local.id;
                    self.store_local(now, id, record.clone())
                };
                let mut sent = 0;
                for c in &targets {
                    let req = Request::Store {
                        record: record.clone(),
                        want_nodes: false,
                    };
                    if self.send_to_contact(now, c, req, PendingKind::Store { query: qid }) {
                        sent += 1;
                    }
                }
                let done = match self.queries.get_mut(&qid) {
                    Some(Query {
                        kind:
                            QueryKind::Put {
                                storing: Some((outstanding, stored, _)),
                                quorum,
                                ..
                            },
                        ..
                    }) => {
                        *stored += usize::from(local_ok);
                        *outstanding = sent;
                        sent == 0 || (*quorum > 0 && *stored >= *quorum)
                    }
                    _ => false,
                };
                debug!(key = %record.key, stored, asked, sent, "put: storing at the closest nodes");
                if done {
                    self.finish_put(now, qid);
                }
            }
            QueryKind::Ping | QueryKind::Call | QueryKind::Command { .. } => {}
        }
    }

    /// Whether this node keeps a copy of a record it puts: when it is among the k closest to
    /// the key (`closest`: the k closest that answered), unless it is read-only (it keeps
    /// nothing for others: it may leave at any time).
    fn stores_locally(config: &Config, me: &NodeId, closest: &[Contact], key: &NodeId) -> bool {
        let me = me.distance(key);
        !config.read_only
            && (closest.len() < config.k || closest.last().is_some_and(|c| me < c.id.distance(key)))
    }

    pub(super) fn store_local(&mut self, now: Instant, from: NodeId, record: Record) -> bool {
        self.store_inbound(now, from, record).is_ok()
    }

    pub(super) fn finish_get(&mut self, now: Instant, qid: QueryId) {
        let Some(q) = self.queries.get(&qid) else {
            return;
        };
        let QueryKind::Get { key, found, .. } = &q.kind else {
            return;
        };
        let stats = q
            .lookup
            .as_ref()
            .map(Lookup::finish_stats)
            .unwrap_or_default();
        let elapsed = now.saturating_duration_since(q.started);
        let alone = || {
            q.lookup
                .as_ref()
                .is_none_or(|l| l.closest_succeeded().is_empty())
        };
        let r = if found.is_empty() && alone() {
            // Nobody answered: "not found" would claim more than is known.
            Err(QueryError::NoPeers)
        } else if found.is_empty() {
            Err(QueryError::NotFound)
        } else {
            let best = self.validator.select(key, found);
            Ok(GetOutcome {
                record: found[best.min(found.len() - 1)].clone(),
                answers: found.len(),
                stats,
                elapsed,
            })
        };
        self.finish(now, qid, QueryResult::Get(r));
    }

    pub(super) fn finish_put(&mut self, now: Instant, qid: QueryId) {
        let Some(q) = self.queries.get(&qid) else {
            return;
        };
        let QueryKind::Put {
            record,
            storing,
            refused,
            ..
        } = &q.kind
        else {
            return;
        };
        let (_, stored, tried) = storing.unwrap_or((0, 0, 0));
        let stats = q
            .lookup
            .as_ref()
            .map(Lookup::finish_stats)
            .unwrap_or_default();
        let r = if stored == 0 {
            // Say why when a node said why (store full, record rejected).
            Err(match refused {
                Some(e) if e.code != RpcError::INTERNAL => QueryError::Remote(e.clone()),
                _ => QueryError::NotStored,
            })
        } else {
            Ok(PutOutcome {
                key: record.key,
                stored,
                tried,
                stats,
                elapsed: now.saturating_duration_since(q.started),
            })
        };
        self.finish(now, qid, QueryResult::Put(r));
    }

    pub(super) fn finish(&mut self, now: Instant, qid: QueryId, result: QueryResult) {
        self.republish_finished(now, qid, &result);
        if let Some(q) = self.queries.remove(&qid) {
            self.stats.queries_done += 1;
            self.stats
                .query_latency
                .entry(q.kind.name())
                .or_default()
                .record(now.saturating_duration_since(q.started));
            self.starved.retain(|q| *q != qid);
            self.emit(Event::QueryDone { id: qid, result });
        }
    }
}
