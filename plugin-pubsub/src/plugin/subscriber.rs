//! The subscriber role: finding a topic's rendezvous nodes, subscribing, renewing, and taking pushes.

use std::time::Duration;

use bytes::Bytes;
use kad_core::{
    Contact, Key, NodeId, PluginCx, PluginData, PluginResponse, QueryError, Reply, RpcError,
};
use kad_plugin_bep44::item;
use rand::RngCore as _;

use super::{
    LookupFor, MessageEvent, MySub, NOT_SUBSCRIBED, Pending, PubsubPlugin, RETRY_EMPTY,
    ReadingEvent, SubscribeOutcome, json, rpc_err,
};
use crate::wire::{
    self, FindParams, NotifyParams, SubscribeParams, SubscribeResult, TopicKind, TopicMessage,
    WireItem,
};

/// Most readings a subscribe given a seq to start after holds while its answers come in (each
/// answer brings at most a datagram's worth; pushes arrive meanwhile). Well below the capacity
/// of the node's event channel, which a flush fills in one go.
const MAX_GATHERED: usize = 256;

impl PubsubPlugin {
    /// Removes our subscription to `topic` with the requests and lookups still out for it: their
    /// answers must not count for a new subscription to the same topic.
    pub(super) fn forget_subscription(&mut self, topic: &Key) -> Option<MySub> {
        self.pending.retain(|_, p| {
            !matches!(p, Pending::Subscribe { topic: t, .. } | Pending::CatchUp { topic: t } if t == topic)
        });
        self.lookups
            .retain(|_, l| !matches!(l, LookupFor::Subscribe(t) if t == topic));
        self.mine.remove(topic)
    }

    pub(super) fn on_notify(
        &mut self,
        cx: &mut PluginCx<'_>,
        from: &Contact,
        params: &Bytes,
    ) -> Reply {
        let p: NotifyParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.NOTIFY: {e}")),
        };
        if !self.mine.contains_key(&p.topic) {
            return rpc_err(NOT_SUBSCRIBED, "not subscribed");
        }
        if let Some(item) = p.item {
            self.receive_item(cx, p.topic, item, p.prev, Some(from));
        }
        if let Some(m) = p.message {
            self.deliver_message(cx, p.topic, m);
        }
        Reply::Result(Bytes::from_static(b"{}"))
    }

    /// A reading pushed by `from` (`None`: published to this node, a rendezvous node of its
    /// own subscription) whose predecessor is `prev`. After a gap (our last reading is older
    /// than `prev`) it is not delivered yet: a renewal asks `from` (or another rendezvous node)
    /// for the readings it kept since our last, and its answer delivers them, oldest first,
    /// then this one.
    pub(super) fn receive_item(
        &mut self,
        cx: &mut PluginCx<'_>,
        topic: Key,
        item: WireItem,
        prev: Option<i64>,
        from: Option<&Contact>,
    ) {
        let me = cx.local().id;
        let Some(s) = self.mine.get(&topic) else {
            return;
        };
        if s.gathering.is_some() {
            // The subscribe's answers are still coming in: this one joins them.
            return self.deliver_item(cx, topic, item, from.map_or(me, |c| c.id));
        }
        // Only a genuine reading of this sensor newer than ours can make us ask (`prev` is not
        // signed: a forged item never costs more than a dropped push).
        let behind = matches!((s.last_seq, prev), (Some(last), Some(prev)) if last < prev && prev < item.seq)
            && matches!(&s.kind, TopicKind::Sensor { k, salt } if item.k == *k && item.salt == *salt)
            && item.check().is_ok();
        if behind && s.catching_up {
            // The answer to the request already out brings readings up to its node's latest;
            // this one comes again with the next push or renewal.
            return;
        }
        let ask = match from {
            Some(c) => Some(c.clone()),
            None => s
                .candidates
                .iter()
                .find(|c| c.id != me && s.registered.contains(&c.id))
                .cloned(),
        };
        match ask.filter(|_| behind) {
            Some(c) => {
                self.stats.gaps += 1;
                self.send_catch_up(cx, topic, c);
            }
            None => self.deliver_item(cx, topic, item, from.map_or(me, |c| c.id)),
        }
    }

    /// Asks `to` for the readings it kept after our last: a renewal of our subscription there
    /// (same role as before), answered with `missed` and `latest`. Its failure changes nothing
    /// else: the next push or renewal tries again.
    fn send_catch_up(&mut self, cx: &mut PluginCx<'_>, topic: Key, to: Contact) {
        let push = self
            .mine
            .get(&topic)
            .is_some_and(|s| s.pushers.contains(&to.id));
        let Some(params) = self.subscribe_params(topic, push) else {
            return;
        };
        if let Some(s) = self.mine.get_mut(&topic) {
            s.catching_up = true;
        }
        let rid = cx.send_request(to, wire::SUBSCRIBE, json(&params));
        self.pending.insert(rid, Pending::CatchUp { topic });
    }

    pub(super) fn on_catch_up_response(
        &mut self,
        cx: &mut PluginCx<'_>,
        topic: Key,
        r: PluginResponse,
    ) {
        let Some(s) = self.mine.get_mut(&topic) else {
            return;
        };
        s.catching_up = false;
        if let PluginResponse::Ok { result, from, .. } = r {
            if let Ok(res) = serde_json::from_slice::<SubscribeResult>(&result) {
                for item in res.missed.into_iter().chain(res.latest) {
                    self.deliver_item(cx, topic, item, from.id);
                }
            }
        }
    }

    pub(super) fn deliver_item(
        &mut self,
        cx: &mut PluginCx<'_>,
        topic: Key,
        item: WireItem,
        from: NodeId,
    ) {
        let Some(sub) = self.mine.get_mut(&topic) else {
            return;
        };
        let TopicKind::Sensor { k, salt } = &sub.kind else {
            self.stats.rejected += 1;
            return;
        };
        if item.k != *k || item.salt != *salt {
            self.stats.rejected += 1;
            return;
        }
        // A copy of what was delivered (other pushers) or older: dropped before the costlier
        // signature check; it could not be delivered either way.
        let copy = sub.last_seq.is_some_and(|s| item.seq <= s)
            || sub
                .gathering
                .as_ref()
                .is_some_and(|g| g.contains_key(&item.seq));
        if copy {
            self.stats.duplicates += 1;
            return;
        }
        if item.check().is_err() {
            self.stats.rejected += 1;
            return;
        }
        if let Some(g) = &mut sub.gathering {
            g.insert(item.seq, (item, from));
            if g.len() >= MAX_GATHERED {
                // Bounded whatever the answers and pushes bring: what is held goes out now.
                self.deliver_gathered(cx, topic);
            }
            return;
        }
        sub.last_seq = Some(item.seq);
        self.stats.delivered += 1;
        cx.emit(
            "reading",
            PluginData::new(ReadingEvent { topic, item, from }),
        );
    }

    /// The subscribe's answers are all in: what they brought, every rendezvous node's kept
    /// readings together, is delivered in seq order, each once; readings are delivered as they
    /// come from now on.
    fn deliver_gathered(&mut self, cx: &mut PluginCx<'_>, topic: Key) {
        let Some(sub) = self.mine.get_mut(&topic) else {
            return;
        };
        let Some(gathered) = sub.gathering.take() else {
            return;
        };
        for (seq, (item, from)) in gathered {
            // Checked when gathered.
            sub.last_seq = Some(seq);
            self.stats.delivered += 1;
            cx.emit(
                "reading",
                PluginData::new(ReadingEvent { topic, item, from }),
            );
        }
    }

    pub(super) fn deliver_message(&mut self, cx: &mut PluginCx<'_>, topic: Key, m: TopicMessage) {
        let now_ms = cx.unix_ms();
        let max_seen = self.config.max_seen_messages;
        let Some(sub) = self.mine.get_mut(&topic) else {
            return;
        };
        let TopicKind::Named { name } = &sub.kind else {
            self.stats.rejected += 1;
            return;
        };
        if m.topic != topic || m.check(now_ms).is_err() {
            self.stats.rejected += 1;
            return;
        }
        let id = m.id();
        if !sub.seen.insert(id) {
            self.stats.duplicates += 1;
            return;
        }
        sub.seen_order.push_back((id, m.expires_ms()));
        while sub.seen_order.len() > max_seen {
            if let Some((old, _)) = sub.seen_order.pop_front() {
                sub.seen.remove(&old);
            }
        }
        self.stats.delivered += 1;
        let ev = MessageEvent {
            name: name.clone(),
            publisher: m.publisher(),
            message: m,
        };
        cx.emit("message", PluginData::new(ev));
    }

    pub(super) fn start_subscription_lookup(&mut self, cx: &mut PluginCx<'_>, topic: Key) {
        let q = cx.start_placement_lookup(topic, wire::FIND, json(&FindParams { topic }));
        self.lookups.insert(q, LookupFor::Subscribe(topic));
        if let Some(s) = self.mine.get_mut(&topic) {
            s.lookup = Some(q);
            // No second renewal while this one runs.
            s.renew_at = cx.now() + self.config.subscription_ttl / 3;
        }
    }

    /// A SUBSCRIBE (or renewal) of our subscription to `topic`, carrying our last seq.
    fn subscribe_params(&self, topic: Key, push: bool) -> Option<SubscribeParams> {
        let s = self.mine.get(&topic)?;
        Some(SubscribeParams {
            topic,
            kind: s.kind.clone(),
            ttl: self.config.subscription_ttl.as_secs().max(1) as u32,
            push,
            seq: s.last_seq,
            ranked: s.candidates.iter().map(|c| c.id).collect(),
        })
    }

    pub(super) fn send_subscribe(
        &mut self,
        cx: &mut PluginCx<'_>,
        topic: Key,
        to: Contact,
        push: bool,
    ) {
        let Some(params) = self.subscribe_params(topic, push) else {
            return;
        };
        let Some(s) = self.mine.get_mut(&topic) else {
            return;
        };
        s.outstanding += 1;
        if push {
            s.pushers.insert(to.id);
        }
        let holder = to.id;
        let rid = cx.send_request(to, wire::SUBSCRIBE, json(&params));
        self.pending.insert(
            rid,
            Pending::Subscribe {
                topic,
                holder,
                push,
            },
        );
    }

    pub(super) fn subscription_found(
        &mut self,
        cx: &mut PluginCx<'_>,
        topic: Key,
        closest: &[Contact],
    ) {
        let fanout = self.config.fanout;
        let Some(s) = self.mine.get_mut(&topic) else {
            return;
        };
        s.lookup = None;
        if closest.is_empty() {
            s.renew_at = cx.now() + RETRY_EMPTY;
            if let Some(cmd) = s.cmd.take() {
                // The subscribe failed: nothing is left running behind the caller's back
                // (a renewal that finds nobody keeps the subscription and tries again).
                if s.registered.is_empty() {
                    self.forget_subscription(&topic);
                }
                cx.complete(cmd, Err(QueryError::NoPeers));
            }
            return;
        }
        // Renewals spread over 80-100% of a third of the ttl: subscribers that started together
        // do not all renew in the same instant (and trip the nodes' rate limits together).
        let jitter = 0.8 + 0.2 * (cx.rng().next_u32() as f64 / f64::from(u32::MAX));
        s.renew_at = cx.now() + (self.config.subscription_ttl / 3).mul_f64(jitter);
        // The subscriber's own order of the rendezvous nodes: by distance to a hash of the topic
        // and its id. The same for every renewal while the set holds (stable pushers), but
        // different for each subscriber, so the pushing is spread over the whole rendezvous set
        // instead of falling on its `fanout` closest nodes.
        let mix = NodeId(item::sha1(&[topic.0, cx.local().id.0].concat()));
        let mut ranked = closest.to_vec();
        ranked.sort_by_key(|c| c.id.distance(&mix));
        let old_pushers = std::mem::take(&mut s.pushers);
        // Old pushers no longer in the set stop pushing.
        let demoted: Vec<NodeId> = old_pushers
            .iter()
            .filter(|id| !ranked.iter().any(|c| c.id == **id))
            .copied()
            .collect();
        let old_candidates = std::mem::replace(&mut s.candidates, ranked.clone());
        s.registered.clear();
        s.failed.clear();
        for id in demoted {
            if let Some(c) = old_candidates.iter().find(|c| c.id == id) {
                self.send_subscribe(cx, topic, c.clone(), false);
            }
        }
        for (i, c) in ranked.into_iter().enumerate() {
            self.send_subscribe(cx, topic, c, i < fanout);
        }
    }

    pub(super) fn on_subscribe_response(
        &mut self,
        cx: &mut PluginCx<'_>,
        topic: Key,
        holder: NodeId,
        push: bool,
        r: PluginResponse,
    ) {
        let Some(s) = self.mine.get_mut(&topic) else {
            return;
        };
        s.outstanding = s.outstanding.saturating_sub(1);
        let mut promote = false;
        match r {
            PluginResponse::Ok { result, from, .. } => {
                s.registered.insert(holder);
                if let Ok(res) = serde_json::from_slice::<SubscribeResult>(&result) {
                    // A node may grant less than asked: renew before its grant runs out.
                    if res.ttl > 0 {
                        let due = cx.now() + Duration::from_secs(u64::from(res.ttl)) / 3;
                        s.renew_at = s.renew_at.min(due);
                    }
                    // What a subscriber coming back missed, oldest first, then the latest:
                    // each delivered once, in seq order (older and repeated ones are dropped).
                    for item in res.missed.into_iter().chain(res.latest) {
                        self.deliver_item(cx, topic, item, from.id);
                    }
                    for m in res.recent {
                        self.deliver_message(cx, topic, m);
                    }
                }
            }
            _ => {
                s.failed.insert(holder);
                if push && s.pushers.remove(&holder) {
                    promote = true;
                }
            }
        }
        if promote {
            let Some(s) = self.mine.get(&topic) else {
                return;
            };
            let next = s
                .candidates
                .iter()
                .find(|c| !s.pushers.contains(&c.id) && !s.failed.contains(&c.id))
                .cloned();
            if let Some(c) = next {
                self.send_subscribe(cx, topic, c, true);
            }
        }
        let Some(s) = self.mine.get(&topic) else {
            return;
        };
        if s.outstanding == 0 {
            self.deliver_gathered(cx, topic);
        }
        let Some(s) = self.mine.get_mut(&topic) else {
            return;
        };
        if s.outstanding == 0 {
            if let Some(cmd) = s.cmd.take() {
                let out = SubscribeOutcome {
                    topic,
                    rendezvous: s.registered.len(),
                    pushers: s.pushers.intersection(&s.registered).count(),
                    latest_seq: s.last_seq,
                    asked: s.candidates.len(),
                    failed: s.failed.len(),
                    holder: s.cmd_holder,
                };
                if out.rendezvous == 0 {
                    self.forget_subscription(&topic);
                    cx.complete(
                        cmd,
                        Err(QueryError::Remote(RpcError::new(
                            RpcError::REFUSED,
                            "no rendezvous node accepted the subscription",
                        ))),
                    );
                } else {
                    cx.complete(cmd, Ok(PluginData::new(out)));
                }
            }
        }
    }
}
