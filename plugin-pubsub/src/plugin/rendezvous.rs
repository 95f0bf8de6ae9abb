//! The rendezvous role: holding subscriptions for a topic near its key, and pushing readings and messages to the subscribers.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kad_core::{Contact, Key, NodeId, PluginCx, PluginResponse, Reply, RpcError};

use super::{
    MAX_LIVE, MAX_RECENT_BYTES, NOT_SUBSCRIBED, Pending, PubsubPlugin, Pushed, SEQ_NOT_NEWER, Sub,
    Topic, history_size, json, push_contact, rpc_err,
};
use crate::wire::{
    self, FindParams, FindResult, NotifyParams, PostParams, PublishParams, PublishResult,
    SubscribeParams, SubscribeResult, TopicKind, TopicMessage,
};

impl PubsubPlugin {
    /// The topic entry for `key`, created if there is room.
    pub(super) fn topic_entry(&mut self, now: Instant, key: Key) -> Result<&mut Topic, Reply> {
        if !self.topics.contains_key(&key) && self.topics.len() >= self.config.max_topics {
            // Make room from an idle topic (no subscriber), the least recently touched.
            let victim = self
                .topics
                .iter()
                .filter(|(_, t)| t.subs.is_empty())
                .min_by_key(|(_, t)| t.touched)
                .map(|(k, _)| *k);
            match victim {
                Some(v) => {
                    if let Some(t) = self.topics.remove(&v) {
                        let freed = t.history.iter().map(history_size).sum::<usize>();
                        self.history_bytes = self.history_bytes.saturating_sub(freed);
                    }
                }
                None => {
                    self.stats.limited += 1;
                    return Err(rpc_err(
                        RpcError::STORE_FULL,
                        format!(
                            "this node holds {} topics, the limit is {}",
                            self.topics.len(),
                            self.config.max_topics
                        ),
                    ));
                }
            }
        }
        self.schedule_sweep(now);
        Ok(self.topics.entry(key).or_insert_with(|| Topic::new(now)))
    }

    pub(super) fn on_find(&mut self, cx: &PluginCx<'_>, params: &Bytes) -> Reply {
        let p: FindParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.FIND: {e}")),
        };
        let mut r = FindResult::default();
        if let Some(t) = self.topics.get(&p.topic) {
            r.latest = t.latest.clone();
            r.prev = t.latest_prev.or(t.history.back().map(|i| i.seq));
            r.subscribers = t.subs.len();
        }
        Reply::WithNodes(json(&r), cx.closest_answered(&p.topic, cx.k()))
    }

    pub(super) fn on_subscribe(
        &mut self,
        cx: &PluginCx<'_>,
        from: &Contact,
        params: &Bytes,
    ) -> Reply {
        let now = cx.now();
        let p: SubscribeParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => {
                return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.SUBSCRIBE: {e}"));
            }
        };
        if let Err(e) = p.kind.check() {
            return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.SUBSCRIBE: {e}"));
        }
        if p.kind.key() != p.topic {
            return rpc_err(
                RpcError::INVALID_PARAMS,
                "pubsub.SUBSCRIBE: topic is not the key of kind",
            );
        }
        if p.ranked.len() > 4 * cx.k().max(16) {
            return rpc_err(
                RpcError::INVALID_PARAMS,
                format!(
                    "pubsub.SUBSCRIBE: ranked has {} nodes, the limit is {}",
                    p.ranked.len(),
                    4 * cx.k().max(16)
                ),
            );
        }
        if p.ttl == 0 {
            self.remove_sub(&p.topic, &from.id);
            return Reply::Result(json(&SubscribeResult::default()));
        }
        let known = self
            .topics
            .get(&p.topic)
            .is_some_and(|t| t.subs.contains_key(&from.id));
        if !known {
            let held = self.per_subscriber.get(&from.id).copied().unwrap_or(0);
            if held >= self.config.max_subscriptions_per_subscriber {
                self.stats.limited += 1;
                return rpc_err(
                    RpcError::STORE_FULL,
                    format!(
                        "you hold {held} subscriptions here, the limit is {}",
                        self.config.max_subscriptions_per_subscriber
                    ),
                );
            }
        }
        let max_subs = self.config.max_subscribers_per_topic;
        let ttl = Duration::from_secs(u64::from(p.ttl)).min(self.config.max_subscription_ttl);
        let max_recent = self.config.max_recent_messages;
        let now_ms = cx.unix_ms();
        let contact = push_contact(from, self.observed.as_ref());
        let topic = match self.topic_entry(now, p.topic) {
            Ok(t) => t,
            Err(r) => return r,
        };
        match (&p.kind, &topic.sensor) {
            (TopicKind::Sensor { k, salt }, None) if topic.recent.is_empty() => {
                topic.sensor = Some((*k, salt.clone()));
            }
            (TopicKind::Sensor { .. }, Some(_)) => {}
            (TopicKind::Named { .. }, None) => {}
            _ => {
                return rpc_err(
                    RpcError::REJECTED,
                    "pubsub.SUBSCRIBE: the topic is of the other kind",
                );
            }
        }
        if !known && topic.subs.len() >= max_subs {
            self.stats.limited += 1;
            return rpc_err(
                RpcError::STORE_FULL,
                format!("the topic has {max_subs} subscribers, the limit"),
            );
        }
        let sub = topic.subs.entry(from.id).or_insert(Sub {
            contact: contact.clone(),
            expires: now,
            push: p.push,
            ranked: Vec::new(),
            failures: 0,
            in_flight: 0,
            last_seq: None,
            last_message: None,
        });
        // `failures` stays: only an answered push clears it, so a renewal cannot keep pushes
        // flowing to a host that never answers.
        sub.contact = contact;
        sub.expires = now + ttl;
        sub.push = p.push;
        sub.ranked = p.ranked;
        topic.touched = now;
        let mut r = SubscribeResult {
            ttl: ttl.as_secs() as u32,
            ..Default::default()
        };
        if let Some(l) = &topic.latest {
            if p.seq.is_none_or(|s| l.seq > s) {
                r.latest = Some(l.clone());
            }
        }
        // A subscriber coming back: the kept readings it missed, newest kept first while the
        // answer stays well inside one datagram, handed over oldest first.
        if let Some(seq) = p.seq {
            let mut budget = MAX_RECENT_BYTES;
            for item in topic.history.iter().rev().take_while(|i| i.seq > seq) {
                let size = item.v.len() * 2 + item.salt.len() * 2 + 256; // hex, plus the fields
                if size > budget {
                    break;
                }
                budget -= size;
                r.missed.push(item.clone());
            }
            r.missed.reverse();
        }
        let live: Vec<&TopicMessage> = topic
            .recent
            .iter()
            .filter(|m| m.expires_ms() > now_ms)
            .collect();
        // Newest first while the answer stays well inside one datagram.
        let mut budget = MAX_RECENT_BYTES;
        let mut recent: Vec<TopicMessage> = Vec::new();
        for m in live.into_iter().rev().take(max_recent) {
            let size = m.data.len() * 6 + 512; // JSON escaping at worst, plus the fields
            if size > budget {
                break;
            }
            budget -= size;
            recent.push(m.clone());
        }
        recent.reverse();
        r.recent = recent;
        if !known {
            *self.per_subscriber.entry(from.id).or_insert(0) += 1;
        }
        Reply::Result(json(&r))
    }

    pub(super) fn remove_sub(&mut self, topic: &Key, sub: &NodeId) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        if t.subs.remove(sub).is_some() {
            self.stats.subscribers_dropped += 1;
            if let Some(n) = self.per_subscriber.get_mut(sub) {
                *n -= 1;
                if *n == 0 {
                    self.per_subscriber.remove(sub);
                }
            }
        }
    }

    pub(super) fn on_publish(&mut self, cx: &mut PluginCx<'_>, params: &Bytes) -> Reply {
        let now = cx.now();
        let p: PublishParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => {
                return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.PUBLISH: {e}"));
            }
        };
        if let Err(e) = p.item.check() {
            self.stats.refused += 1;
            return rpc_err(RpcError::REJECTED, format!("pubsub.PUBLISH: {e}"));
        }
        let key = p.item.topic();
        if let Some(topic) = self.topics.get(&key) {
            if !topic.recent.is_empty() {
                self.stats.refused += 1;
                return rpc_err(RpcError::REJECTED, "pubsub.PUBLISH: a named topic");
            }
            if let Some(l) = &topic.latest {
                if l.seq == p.item.seq && l.sig == p.item.sig {
                    // The same reading again: a repair round with a new view of who is live.
                    let pushed = match p.live {
                        Some(live) => {
                            let seq = p.item.seq;
                            let notify = json(&NotifyParams {
                                topic: key,
                                item: Some(p.item),
                                message: None,
                                prev: topic.latest_prev.or(topic.history.back().map(|i| i.seq)),
                            });
                            self.repair(cx, key, live, notify, Pushed::Seq(seq))
                        }
                        None => 0,
                    };
                    return Reply::Result(json(&PublishResult { pushed }));
                }
                if l.seq >= p.item.seq {
                    self.stats.refused += 1;
                    return rpc_err(
                        SEQ_NOT_NEWER,
                        format!("seq {} is not newer than {}", p.item.seq, l.seq),
                    );
                }
            }
        }
        let (max_history, max_bytes) = (self.config.max_history, self.config.max_history_bytes);
        if let Err(r) = self.topic_entry(now, key) {
            return r;
        }
        let mut bytes = self.history_bytes;
        let Some(topic) = self.topics.get_mut(&key) else {
            return rpc_err(RpcError::INTERNAL, "pubsub.PUBLISH: topic vanished");
        };
        topic.sensor = Some((p.item.k, p.item.salt.clone()));
        if let Some(previous) = topic.latest.replace(p.item.clone()) {
            // The reading it replaces joins the history: the oldest go past `max_history`, or
            // (this topic's own first) past the node's `max_history_bytes`.
            let size = history_size(&previous);
            if max_history > 1 {
                topic.history.push_back(previous);
                bytes += size;
            }
            while topic.history.len() >= max_history.max(1)
                || (bytes > max_bytes && !topic.history.is_empty())
            {
                if let Some(old) = topic.history.pop_front() {
                    bytes = bytes.saturating_sub(history_size(&old));
                }
            }
        }
        self.history_bytes = bytes;
        topic.touched = now;
        topic.latest_prev = p.prev.filter(|s| *s < p.item.seq);
        let prev = topic.latest_prev.or(topic.history.back().map(|i| i.seq));
        if let Some(live) = p.live.filter(|l| l.len() <= MAX_LIVE) {
            topic.live = Some(live.into_iter().collect());
        }
        self.stats.accepted += 1;
        // A rendezvous node that is also a subscriber of the topic (in a network of fewer than
        // k + 1 nodes, every node is both) delivers to its own application: no node pushes to
        // itself.
        if self.mine.contains_key(&key) {
            self.receive_item(cx, key, p.item.clone(), prev, None);
        }
        let seq = p.item.seq;
        let notify = json(&NotifyParams {
            topic: key,
            item: Some(p.item),
            message: None,
            prev,
        });
        let pushed = self.push_all(cx, key, notify, Pushed::Seq(seq));
        Reply::Result(json(&PublishResult { pushed }))
    }

    pub(super) fn on_post(&mut self, cx: &mut PluginCx<'_>, params: &Bytes) -> Reply {
        let now = cx.now();
        let now_ms = cx.unix_ms();
        let p: PostParams = match serde_json::from_slice(params) {
            Ok(p) => p,
            Err(e) => return rpc_err(RpcError::INVALID_PARAMS, format!("pubsub.POST: {e}")),
        };
        if let Err(e) = p.message.check(now_ms) {
            self.stats.refused += 1;
            return rpc_err(RpcError::REJECTED, format!("pubsub.POST: {e}"));
        }
        let max_recent = self.config.max_recent_messages;
        let key = p.message.topic;
        let id = p.message.id();
        if let Some(topic) = self.topics.get(&key) {
            if topic.sensor.is_some() {
                self.stats.refused += 1;
                return rpc_err(RpcError::REJECTED, "pubsub.POST: a sensor topic");
            }
            if topic.recent.iter().any(|m| m.id() == id) {
                let pushed = match p.live {
                    Some(live) => {
                        let notify = json(&NotifyParams {
                            topic: key,
                            item: None,
                            prev: None,
                            message: Some(p.message),
                        });
                        self.repair(cx, key, live, notify, Pushed::Message(id))
                    }
                    None => 0,
                };
                return Reply::Result(json(&PublishResult { pushed }));
            }
        }
        let topic = match self.topic_entry(now, key) {
            Ok(t) => t,
            Err(r) => return r,
        };
        topic.recent.retain(|m| m.expires_ms() > now_ms);
        topic.recent.push_back(p.message.clone());
        if let Some(live) = p.live.filter(|l| l.len() <= MAX_LIVE) {
            topic.live = Some(live.into_iter().collect());
        }
        while topic.recent.len() > max_recent {
            topic.recent.pop_front();
        }
        topic.touched = now;
        self.stats.accepted += 1;
        // As for readings: a subscribed rendezvous node delivers to its own application.
        if self.mine.contains_key(&key) {
            self.deliver_message(cx, key, p.message.clone());
        }
        let notify = json(&NotifyParams {
            topic: key,
            item: None,
            message: Some(p.message),
            prev: None,
        });
        let pushed = self.push_all(cx, key, notify, Pushed::Message(id));
        Reply::Result(json(&PublishResult { pushed }))
    }

    /// Whether this node (`me`) pushes to `sub` when `live` are the live rendezvous nodes: while
    /// fewer than `fanout` of the nodes the subscriber ranked above it are live.
    pub(super) fn on_duty(
        sub: &Sub,
        me: &NodeId,
        live: Option<&BTreeSet<NodeId>>,
        fanout: usize,
    ) -> bool {
        match sub.ranked.iter().position(|id| id == me) {
            None => sub.push,
            Some(pos) => {
                let above = match live {
                    None => pos,
                    Some(l) => sub.ranked[..pos].iter().filter(|id| l.contains(id)).count(),
                };
                above < fanout
            }
        }
    }

    /// A repair round: with the publisher's new view `live`, pushes `notify` to the subscribers
    /// this node is now on duty for and has not pushed it to.
    pub(super) fn repair(
        &mut self,
        cx: &mut PluginCx<'_>,
        key: Key,
        live: Vec<NodeId>,
        notify: Bytes,
        what: Pushed,
    ) -> usize {
        if live.len() > MAX_LIVE {
            return 0;
        }
        if let Some(topic) = self.topics.get_mut(&key) {
            topic.live = Some(live.into_iter().collect());
        }
        self.push_all(cx, key, notify, what)
    }

    /// Pushes `notify` to every live subscriber of `key` this node is on duty for.
    pub(super) fn push_all(
        &mut self,
        cx: &mut PluginCx<'_>,
        key: Key,
        notify: Bytes,
        what: Pushed,
    ) -> usize {
        let me = cx.local().id;
        let fanout = self.config.fanout;
        let live = self.topics.get(&key).and_then(|t| t.live.clone());
        self.push_to(cx, key, notify, what, |_, s| {
            Self::on_duty(s, &me, live.as_ref(), fanout)
        })
    }

    pub(super) fn push_to(
        &mut self,
        cx: &mut PluginCx<'_>,
        key: Key,
        notify: Bytes,
        what: Pushed,
        pick: impl Fn(&NodeId, &Sub) -> bool,
    ) -> usize {
        let now = cx.now();
        let max_in_flight = self.config.max_notifies_in_flight;
        let Some(topic) = self.topics.get_mut(&key) else {
            return 0;
        };
        let mut pushed = 0;
        for (id, sub) in topic.subs.iter_mut() {
            if sub.expires <= now || !pick(id, sub) {
                continue;
            }
            // Each reading or message goes to a subscriber once from this node, however many
            // repair rounds (which anyone can send) ask for it.
            let sent = match what {
                Pushed::Seq(seq) => sub.last_seq.is_some_and(|l| l >= seq),
                Pushed::Message(m) => sub.last_message == Some(m),
            };
            if sent {
                continue;
            }
            if sub.in_flight >= max_in_flight
                || self.notifies_pending >= self.config.max_pending_notifies
            {
                self.stats.notifies_skipped += 1;
                continue;
            }
            match what {
                Pushed::Seq(seq) => sub.last_seq = Some(seq),
                Pushed::Message(m) => sub.last_message = Some(m),
            }
            sub.in_flight += 1;
            self.notifies_pending += 1;
            let rid = cx.send_request(sub.contact.clone(), wire::NOTIFY, notify.clone());
            self.pending.insert(
                rid,
                Pending::Notify {
                    topic: key,
                    sub: *id,
                    again: Some(notify.clone()),
                },
            );
            self.stats.notifies_sent += 1;
            pushed += 1;
        }
        pushed
    }

    pub(super) fn on_notify_response(
        &mut self,
        cx: &mut PluginCx<'_>,
        topic: Key,
        sub: NodeId,
        again: Option<Bytes>,
        r: &PluginResponse,
    ) {
        let drop_after = self.config.drop_after_failures;
        let s = self
            .topics
            .get_mut(&topic)
            .and_then(|t| t.subs.get_mut(&sub));
        let resend = matches!(r, PluginResponse::Timeout) && again.is_some() && s.is_some();
        if !resend {
            self.notifies_pending = self.notifies_pending.saturating_sub(1);
        }
        let Some(s) = s else {
            return;
        };
        if let (true, Some(params)) = (resend, again) {
            // One resend: a lost datagram should not cost a reading (the engine does not
            // retry plugin requests). Still in flight, so `in_flight` stays.
            let rid = cx.send_request(s.contact.clone(), wire::NOTIFY, params);
            self.pending.insert(
                rid,
                Pending::Notify {
                    topic,
                    sub,
                    again: None,
                },
            );
            self.stats.notifies_sent += 1;
            return;
        }
        s.in_flight = s.in_flight.saturating_sub(1);
        let remove = match r {
            PluginResponse::Ok { .. } => {
                s.failures = 0;
                false
            }
            PluginResponse::Remote(e) if e.code == NOT_SUBSCRIBED => true,
            _ => {
                self.stats.notifies_failed += 1;
                s.failures = s.failures.saturating_add(1);
                s.failures >= drop_after
            }
        };
        if remove {
            self.remove_sub(&topic, &sub);
        }
    }
}
