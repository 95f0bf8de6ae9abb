//! The publisher role: publishing readings and posting messages to a topic's rendezvous nodes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use kad_core::{
    Contact, Key, NodeId, PluginCx, PluginData, PluginResponse, QueryError, QueryId, RpcError,
};
use rand::RngCore as _;

use super::{
    Holders, LookupFor, MAX_HOLDER_CACHE, MySub, Op, Payload, Pending, PublishOutcome,
    PubsubCommand, PubsubPlugin, SWEEP_EVERY, json,
};
use crate::wire::{self, FindParams, PublishResult, SubscribeParams, TopicKind, TopicMessage};

impl PubsubPlugin {
    pub(super) fn start_op(
        &mut self,
        cx: &mut PluginCx<'_>,
        cmd: QueryId,
        topic: Key,
        payload: Payload,
    ) {
        let op = self.next_op;
        self.next_op += 1;
        let mut o = Op {
            cmd,
            topic,
            payload,
            outcome: PublishOutcome {
                topic,
                ..Default::default()
            },
            outstanding: 0,
            first_error: None,
            acked: Vec::new(),
            dead: Vec::new(),
        };
        let now = cx.now();
        let cache = self.config.holder_cache;
        let cached = self.holders.get_mut(&topic).and_then(|h| {
            // An old or damaged set is still used (no reading waits for a lookup), and
            // refreshed in the background.
            if now >= h.at + cache {
                h.refresh = true;
            }
            let refresh = h.refresh && !h.refreshing;
            if refresh {
                h.refreshing = true;
            }
            (!h.contacts.is_empty()).then(|| (h.contacts.clone(), h.live.clone(), refresh))
        });
        match cached {
            Some((contacts, live, refresh)) => {
                // Only nodes this reading goes to count as live: a node left out (by a
                // refreshed lookup) does not push it, so standbys must.
                let live = live.map(|l| {
                    l.into_iter()
                        .filter(|id| contacts.iter().any(|c| c.id == *id))
                        .collect()
                });
                let params = o.payload.params(live);
                for c in contacts {
                    let holder = c.id;
                    let rid = cx.send_request(c, o.payload.method(), params.clone());
                    self.pending.insert(rid, Pending::Op { op, holder });
                    o.outstanding += 1;
                    o.outcome.asked += 1;
                }
                self.ops.insert(op, o);
                if refresh {
                    let q = cx.start_lookup(topic, wire::FIND, json(&FindParams { topic }));
                    self.lookups.insert(q, LookupFor::Refresh(topic));
                }
            }
            None => {
                o.outcome.lookup = true;
                // Latency first: a reading goes out now, and standbys repair what it misses.
                let q = cx.start_lookup(topic, wire::FIND, json(&FindParams { topic }));
                self.lookups.insert(q, LookupFor::Op(op));
                self.ops.insert(op, o);
            }
        }
    }

    pub(super) fn cache_holders(&mut self, now: Instant, topic: Key, closest: &[Contact]) {
        if self.holders.len() >= MAX_HOLDER_CACHE && !self.holders.contains_key(&topic) {
            let oldest = self
                .holders
                .iter()
                .min_by_key(|(_, h)| h.at)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.holders.remove(&k);
            }
        }
        let h = self.holders.entry(topic).or_insert(Holders {
            contacts: Vec::new(),
            at: now,
            live: None,
            refresh: false,
            refreshing: false,
        });
        // Nodes that accepted the last reading stay (up to k/2 of them beyond the lookup's
        // result): a lookup that missed a live rendezvous node, say for a lost answer, must not
        // silence it; the pushers it serves would otherwise wait for a repair.
        let keep: Vec<Contact> = h
            .contacts
            .iter()
            .filter(|c| !closest.iter().any(|n| n.id == c.id))
            .filter(|c| h.live.as_ref().is_some_and(|l| l.contains(&c.id)))
            .take(closest.len().div_ceil(2))
            .cloned()
            .collect();
        h.contacts = closest.to_vec();
        h.contacts.extend(keep);
        h.at = now;
        h.refresh = false;
        h.refreshing = false;
    }

    pub(super) fn op_found(&mut self, cx: &mut PluginCx<'_>, op: u64, closest: &[Contact]) {
        let Some(topic) = self.ops.get(&op).map(|o| o.topic) else {
            return;
        };
        if closest.is_empty() {
            if let Some(o) = self.ops.remove(&op) {
                cx.complete(o.cmd, Err(QueryError::NoPeers));
            }
            return;
        }
        self.cache_holders(cx.now(), topic, closest);
        let Some(o) = self.ops.get_mut(&op) else {
            return;
        };
        let params = o.payload.params(None);
        for c in closest {
            let rid = cx.send_request(c.clone(), o.payload.method(), params.clone());
            self.pending.insert(rid, Pending::Op { op, holder: c.id });
            o.outstanding += 1;
            o.outcome.asked += 1;
        }
    }

    pub(super) fn on_op_response(
        &mut self,
        cx: &mut PluginCx<'_>,
        op: u64,
        holder: NodeId,
        r: PluginResponse,
    ) {
        let Some(o) = self.ops.get_mut(&op) else {
            return;
        };
        o.outstanding -= 1;
        match r {
            PluginResponse::Ok { result, from, .. } => {
                o.outcome.stored_on += 1;
                o.acked.push(from);
                if let Ok(p) = serde_json::from_slice::<PublishResult>(&result) {
                    o.outcome.pushed += p.pushed;
                }
            }
            PluginResponse::Remote(e) => {
                o.outcome.errors.push(format!("{} {}", e.code, e.message));
                o.first_error.get_or_insert(e);
            }
            _ => {
                o.outcome.timeouts += 1;
                o.dead.push(holder);
            }
        }
        if o.outstanding > 0 {
            return;
        }
        let Some(o) = self.ops.remove(&op) else {
            return;
        };
        let live: Vec<NodeId> = o.acked.iter().map(|c| c.id).collect();
        if let Some(h) = self.holders.get_mut(&o.topic) {
            if !o.acked.is_empty() {
                h.live = Some(live.clone());
            }
            if !o.dead.is_empty() {
                // Forget the dead; look for their replacements in the background.
                h.contacts.retain(|c| !o.dead.contains(&c.id));
                h.refresh = true;
            }
        }
        if (o.acked.len() < o.outcome.asked || o.outcome.lookup) && !o.acked.is_empty() {
            // Repair round: the same reading, with who is live now, so standbys push it to
            // the subscribers of the dead pushers (and, after a lookup, of pushers the lookup
            // did not reach).
            let params = o.payload.params(Some(live));
            for c in &o.acked {
                let rid = cx.send_request(c.clone(), o.payload.method(), params.clone());
                self.pending.insert(rid, Pending::Ignore);
            }
        }
        let result = match (o.outcome.stored_on, o.first_error) {
            (0, Some(e)) => Err(QueryError::Remote(e)),
            (0, None) => Err(QueryError::Timeout),
            _ => Ok(PluginData::new(o.outcome.clone())),
        };
        cx.complete(o.cmd, result);
    }

    /// Forgets the subscription to `topic` and tells its rendezvous nodes.
    fn unsubscribe(&mut self, cx: &mut PluginCx<'_>, topic: Key) {
        let Some(s) = self.forget_subscription(&topic) else {
            return;
        };
        if let Some(cmd) = s.cmd {
            cx.complete(cmd, Err(QueryError::NotFound));
        }
        let params = json(&SubscribeParams {
            topic,
            kind: s.kind,
            ttl: 0,
            push: false,
            seq: None,
            ranked: Vec::new(),
        });
        for c in s.candidates {
            // Fire and forget: holders that miss it drop us at the next push.
            cx.send_request(c, wire::SUBSCRIBE, params.clone());
        }
    }

    pub(super) fn command(&mut self, cx: &mut PluginCx<'_>, query: QueryId, c: PubsubCommand) {
        let bad = |msg: String| {
            Err(QueryError::Remote(RpcError::new(
                RpcError::INVALID_PARAMS,
                msg,
            )))
        };
        match c {
            PubsubCommand::Subscribe { kind, since } => {
                if let Err(e) = kind.check() {
                    return cx.complete(query, bad(e.to_owned()));
                }
                let topic = kind.key();
                let now = cx.now();
                let s = self.mine.entry(topic).or_insert_with(|| MySub {
                    kind,
                    last_seq: since,
                    seen: BTreeSet::new(),
                    seen_order: VecDeque::new(),
                    candidates: Vec::new(),
                    pushers: BTreeSet::new(),
                    registered: BTreeSet::new(),
                    failed: BTreeSet::new(),
                    outstanding: 0,
                    cmd: None,
                    lookup: None,
                    renew_at: now,
                    holders: BTreeSet::new(),
                    cmd_holder: 0,
                    catching_up: false,
                    gathering: since.map(|_| BTreeMap::new()),
                });
                let holder = self.next_holder;
                self.next_holder += 1;
                s.holders.insert(holder);
                let superseded = std::mem::replace(&mut s.cmd_holder, holder);
                if let Some(old) = s.cmd.replace(query) {
                    // Its caller gets an error, hence no handle to give back.
                    s.holders.remove(&superseded);
                    cx.complete(
                        old,
                        Err(QueryError::Remote(RpcError::new(
                            RpcError::REFUSED,
                            "superseded by a new subscribe",
                        ))),
                    );
                }
                self.schedule_sweep(now);
                self.start_subscription_lookup(cx, topic);
            }
            PubsubCommand::Release { topic, holder } => {
                let last = self.mine.get_mut(&topic).is_some_and(|s| {
                    s.holders.remove(&holder);
                    s.holders.is_empty()
                });
                if last {
                    self.unsubscribe(cx, topic);
                }
                cx.complete(query, Ok(PluginData::new(())));
            }
            PubsubCommand::Unsubscribe { topic } => {
                self.unsubscribe(cx, topic);
                cx.complete(query, Ok(PluginData::new(())));
            }
            PubsubCommand::Publish { item } => {
                if let Err(e) = item.check() {
                    return cx.complete(query, bad(format!("item: {e}")));
                }
                let topic = item.topic();
                let prev = self
                    .published
                    .get(&topic)
                    .copied()
                    .filter(|p| *p < item.seq);
                if self.published.len() < self.config.max_topics
                    || self.published.contains_key(&topic)
                {
                    self.published.insert(topic, item.seq);
                }
                self.start_op(cx, query, topic, Payload::Item(item, prev));
            }
            PubsubCommand::Post { name, data, ttl } => {
                let Some(identity) = self.identity.clone() else {
                    return cx.complete(
                        query,
                        bad("this node has no signing identity for posts".into()),
                    );
                };
                let kind = TopicKind::Named { name: name.clone() };
                if let Err(e) = kind.check() {
                    return cx.complete(query, bad(e.to_owned()));
                }
                if data.len() > wire::MAX_MESSAGE_DATA {
                    return cx.complete(
                        query,
                        bad(format!(
                            "data is {} bytes, the limit is {}",
                            data.len(),
                            wire::MAX_MESSAGE_DATA
                        )),
                    );
                }
                if ttl == 0 || ttl > wire::MAX_MESSAGE_TTL_S {
                    return cx.complete(
                        query,
                        bad(format!(
                            "ttl is {ttl} s, it must be 1..={}",
                            wire::MAX_MESSAGE_TTL_S
                        )),
                    );
                }
                let topic = kind.key();
                let nonce = cx.rng().next_u64();
                let m = TopicMessage::sign(&identity, &name, cx.unix_ms(), ttl, nonce, data);
                self.start_op(cx, query, topic, Payload::Message(m));
            }
            PubsubCommand::Stats => cx.complete(query, Ok(PluginData::new(self.stats()))),
        }
    }

    pub(super) fn sweep(&mut self, cx: &mut PluginCx<'_>) {
        let now = cx.now();
        let now_ms = cx.unix_ms();
        let idle = self.config.topic_idle;
        let mut dropped = Vec::new();
        for (key, t) in self.topics.iter_mut() {
            for (id, s) in &t.subs {
                if s.expires <= now {
                    dropped.push((*key, *id));
                }
            }
            t.recent.retain(|m| m.expires_ms() > now_ms);
        }
        for (key, id) in dropped {
            self.remove_sub(&key, &id);
        }
        let mut freed = 0;
        self.topics.retain(|_, t| {
            let keep = !t.subs.is_empty() || now < t.touched + idle;
            if !keep {
                freed += t.history.iter().map(super::history_size).sum::<usize>();
            }
            keep
        });
        self.history_bytes = self.history_bytes.saturating_sub(freed);
        let burst = self.config.sender_burst;
        let rate = self.config.sender_rate.max(f64::MIN_POSITIVE);
        let full_after = Duration::from_secs_f64((burst / rate).min(3600.0));
        self.buckets.retain(|_, b| now < b.at + full_after);
        let cache = self.config.holder_cache;
        self.holders.retain(|_, h| now < h.at + cache * 4);
        for s in self.mine.values_mut() {
            while let Some((id, exp)) = s.seen_order.front().copied() {
                if exp > now_ms {
                    break;
                }
                s.seen_order.pop_front();
                s.seen.remove(&id);
            }
        }
        let busy = !self.topics.is_empty() || !self.mine.is_empty() || !self.buckets.is_empty();
        self.next_sweep = busy.then(|| now + SWEEP_EVERY);
    }
}
