//! Inbound messages: requests answered (or handed to plugins), responses matched to their requests.

use std::time::Instant;

use bytes::Bytes;
use tracing::trace;

use super::{
    Event, Node, PendingKind, PingOutcome, Query, QueryError, QueryId, QueryKind, QueryResult,
};
use crate::addr::{Contact, PeerAddr};
use crate::id::NodeId;
use crate::message::{Body, Message, Request, Response, RpcError, TxnId};
use crate::plugin::{Action, Dest, Plugin, PluginCx, PluginResponse, Reply};
use crate::record::{Record, StoreError};
use crate::routing::InsertOutcome;

impl Node {
    pub(super) fn handle_message(&mut self, now: Instant, from: PeerAddr, msg: Message) {
        self.stats.messages_in += 1;
        if msg.sender.id == self.local.id {
            self.stats.dropped_self += 1;
            return;
        }
        if let Some(r) = msg.recipient {
            if r != self.local.id {
                // Bootstrap pings carry no recipient; anything else must be for us.
                self.stats.dropped_wrong_recipient += 1;
                return;
            }
        }
        match msg.body {
            Body::Request(req) => {
                // A request without a recipient (a PING to a bare address) can be replayed to
                // other nodes by anyone who saw it: answer it, but learn nothing from it.
                let learn = !msg.read_only && msg.recipient.is_some();
                self.handle_request(now, from, msg.txn, msg.sender, learn, req)
            }
            Body::Response(rsp) => {
                let seen = msg.observed;
                self.handle_response(now, from, msg.txn, msg.sender, msg.read_only, seen, Ok(rsp))
            }
            Body::Error(err) => {
                let seen = msg.observed;
                self.handle_response(
                    now,
                    from,
                    msg.txn,
                    msg.sender,
                    msg.read_only,
                    seen,
                    Err(err),
                )
            }
        }
    }

    /// Adds or refreshes the sender of a message in the routing table. `answered`: the message
    /// answers a request of ours. A sender new to the table that has only sent a request is
    /// asked for a PING (unless a proving PING or another request of ours is already on its way
    /// to that address): until it answers one, it is not handed out to other nodes.
    pub(super) fn observe_sender(
        &mut self,
        now: Instant,
        from: &PeerAddr,
        sender: Contact,
        answered: bool,
    ) {
        let advertised_instead = !from.kind().source_is_dialable()
            && sender.addrs.iter().any(|a| a.kind() == from.kind());
        let contact = if advertised_instead || sender.addrs.contains(from) {
            sender
        } else {
            // The address we actually heard it from comes first.
            let mut addrs = vec![from.clone()];
            addrs.extend(sender.addrs.iter().filter(|a| *a != from).cloned());
            Contact::with_addrs(sender.id, addrs)
        };
        let id = contact.id;
        let verify = (!answered).then(|| contact.clone());
        // A requester already waiting as a replacement was sent its verifying PING when it
        // arrived: one per requester, not one per request.
        let waiting = self.routing.replacement(&id).is_some();
        let outcome = self.routing.insert(now, contact, true);
        let pending = matches!(outcome, InsertOutcome::Pending { .. });
        match outcome {
            InsertOutcome::Pending { ping } => {
                if let Some(p) = ping {
                    let peer = p.id;
                    if !self.send_to_contact(
                        now,
                        &p,
                        Request::Ping,
                        PendingKind::EvictPing { peer },
                    ) {
                        self.routing.on_ping_ok(&peer);
                    }
                }
                // A requester waiting as a replacement is verified as well: one that answers is
                // the first promoted, and one that does not (its source may be forged) leaves
                // the replacement cache.
                let awaiting = self.guard.awaiting(now, from, self.hard_timeout());
                if let Some(c) =
                    verify.filter(|_| !waiting && !self.guard.proving(from) && !awaiting)
                {
                    self.stats.verify_pings += 1;
                    self.send_to_contact(now, &c, Request::Ping, PendingKind::Verify);
                }
            }
            InsertOutcome::Inserted => {
                // No PING when one is on its way to that address, or when a request of ours
                // is: its answer verifies the contact as well.
                let awaiting = self.guard.awaiting(now, from, self.hard_timeout());
                if let Some(c) = verify.filter(|_| !self.guard.proving(from) && !awaiting) {
                    self.stats.verify_pings += 1;
                    self.send_to_contact(now, &c, Request::Ping, PendingKind::Verify);
                }
            }
            _ => {}
        }
        if answered {
            self.routing.on_answer(&id);
            if pending {
                self.routing.promote_answered(&id);
            }
        }
    }

    pub(super) fn handle_request(
        &mut self,
        now: Instant,
        from: PeerAddr,
        txn: TxnId,
        sender: Contact,
        learn: bool,
        req: Request,
    ) {
        if !self.config.answer_requests {
            self.stats.ignored_read_only += 1;
            return;
        }
        for p in &mut self.plugins {
            if !p.allow(&from, &sender, &req) {
                self.stats.dropped_filtered += 1;
                return;
            }
        }
        self.stats.requests_in += 1;
        let method = match &req {
            Request::Custom { method, .. }
                if !self.plugins.iter().any(|p| {
                    method
                        .strip_prefix(p.namespace())
                        .is_some_and(|m| m.starts_with('.'))
                }) =>
            {
                "unknown"
            }
            r => r.method(),
        };
        crate::stats::count_method(&mut self.stats.rpc_in, method);
        let sender_id = sender.id;
        let k = self.config.k;
        let body = match req {
            Request::Ping => Some(Body::Response(Response::Pong)),
            Request::FindNode { target } => Some(Body::Response(Response::Nodes {
                nodes: self.closest_for(&target, &sender_id, k),
            })),
            Request::FindValue { key } => {
                let unix = self.unix_ms(now);
                let nodes = self.closest_for(&key, &sender_id, k);
                match self.local_record(&key, unix) {
                    Some(mut record) => {
                        record.stored_at_ms = 0;
                        Some(Body::Response(Response::Value { record, nodes }))
                    }
                    _ => Some(Body::Response(Response::Nodes { nodes })),
                }
            }
            Request::Store { record, want_nodes } => {
                let key = record.key;
                Some(match self.store_inbound(now, sender_id, record) {
                    Ok(()) => Body::Response(Response::Stored {
                        nodes: if want_nodes {
                            self.closest_for(&key, &sender_id, k)
                        } else {
                            Vec::new()
                        },
                    }),
                    Err(e) => {
                        self.stats.records_rejected += 1;
                        Body::Error(e)
                    }
                })
            }
            Request::Custom { method, params } => {
                self.plugin_request(now, &sender, &method, &params)
            }
        };
        if let Some(body) = body {
            self.reply(from.clone(), txn, sender_id, body);
        }
        if self.config.accept_requesters && learn {
            self.observe_sender(now, &from, sender, false);
        }
    }

    pub(super) fn closest_for(
        &self,
        target: &NodeId,
        requester: &NodeId,
        k: usize,
    ) -> Vec<Contact> {
        // Ask for k first (usually one bucket's walk); k + 1 only if the requester is among them.
        let mut v = self.routing.closest_answered(target, k);
        if v.iter().any(|c| c.id == *requester) {
            v = self.routing.closest_answered(target, k + 1);
            v.retain(|c| c.id != *requester);
            v.truncate(k);
        }
        v
    }

    pub(super) fn store_inbound(
        &mut self,
        now: Instant,
        from: NodeId,
        mut record: Record,
    ) -> Result<(), RpcError> {
        let unix = self.unix_ms(now);
        if record.value.len() > self.config.max_value_len {
            return Err(RpcError::new(
                RpcError::INVALID_PARAMS,
                format!(
                    "value is {} bytes, limit {}",
                    record.value.len(),
                    self.config.max_value_len
                ),
            ));
        }
        if record.is_expired(unix) {
            return Err(RpcError::new(RpcError::REJECTED, "record expired"));
        }
        if record.published_at_ms > unix + self.config.max_clock_skew.as_millis() as u64 {
            return Err(RpcError::new(
                RpcError::REJECTED,
                "record published in the future",
            ));
        }
        self.validator
            .validate(&record)
            .map_err(|e| RpcError::new(RpcError::REJECTED, e.0))?;
        let max_expiry = record
            .published_at_ms
            .saturating_add(self.config.record_ttl.as_millis() as u64);
        record.expires_at_ms = record.expires_at_ms.min(max_expiry);
        record.stored_at_ms = unix;
        // A record naming no publisher is accounted to the node that sent it.
        record.publisher.get_or_insert(from);
        if let Some(existing) = self.store.get(&record.key) {
            if existing.value == record.value && existing.published_at_ms > record.published_at_ms {
                // The same value with an older publish time: keep ours, refresh when we saw it.
                record.published_at_ms = existing.published_at_ms;
                record.expires_at_ms = existing.expires_at_ms;
            } else if !existing.is_expired(unix) && existing.value != record.value {
                let pick = self
                    .validator
                    .select(&record.key, &[existing, record.clone()]);
                if pick == 0 {
                    return Err(RpcError::new(
                        RpcError::REJECTED,
                        "a better record is already stored",
                    ));
                }
            }
        }
        let key = record.key;
        match self.store.put(record) {
            Ok(_) => {
                self.stats.records_stored += 1;
                self.emit(Event::RecordStored { key, from });
                Ok(())
            }
            Err(e @ StoreError::Full { .. }) => {
                Err(RpcError::new(RpcError::STORE_FULL, e.to_string()))
            }
            Err(e) => Err(RpcError::new(RpcError::REJECTED, e.to_string())),
        }
    }

    pub(super) fn plugin_request(
        &mut self,
        now: Instant,
        sender: &Contact,
        method: &str,
        params: &Bytes,
    ) -> Option<Body> {
        if matches!(method, "PING" | "FIND_NODE" | "FIND_VALUE" | "STORE") {
            // A codec hands core methods whose params did not parse over as `Custom`.
            return Some(Body::Error(RpcError::new(
                RpcError::INVALID_PARAMS,
                format!("invalid params for {method}"),
            )));
        }
        let ns = method.split_once('.').map(|(ns, _)| ns);
        let Some(idx) = ns.and_then(|ns| self.plugins.iter().position(|p| p.namespace() == ns))
        else {
            return Some(Body::Error(RpcError::new(
                RpcError::METHOD_NOT_FOUND,
                format!("method not found: {method}"),
            )));
        };
        let reply = self.with_plugin(now, idx, |p, cx| p.on_request(cx, sender, method, params));
        match reply {
            Reply::Result(result) => Some(Body::Response(Response::Custom {
                result,
                nodes: Vec::new(),
            })),
            Reply::WithNodes(result, nodes) => {
                Some(Body::Response(Response::Custom { result, nodes }))
            }
            Reply::Error(e) => Some(Body::Error(e)),
            Reply::Drop => None,
        }
    }

    pub(super) fn with_plugin<R>(
        &mut self,
        now: Instant,
        idx: usize,
        f: impl FnOnce(&mut dyn Plugin, &mut PluginCx<'_>) -> R,
    ) -> R {
        let mut plugins = std::mem::take(&mut self.plugins);
        let mut actions = Vec::new();
        let unix_ms = self.unix_ms(now);
        let r = {
            let mut cx = PluginCx {
                now,
                unix_ms,
                local: &self.local,
                read_only: self.config.read_only,
                sent_to: &self.sent_to,
                rng: &mut self.rng,
                routing: &self.routing,
                store: &mut *self.store,
                own: &mut self.own_records,
                validator: &*self.validator,
                republish_interval: self.config.republish_interval,
                record_ttl: self.config.record_ttl,
                max_value_len: self.config.max_value_len,
                actions: &mut actions,
                next_request: &mut self.next_request,
                next_query: &mut self.next_query,
                k: self.config.k,
            };
            f(&mut *plugins[idx], &mut cx)
        };
        self.plugins = plugins;
        self.apply_plugin_actions(now, idx, actions);
        r
    }

    pub(super) fn apply_plugin_actions(&mut self, now: Instant, idx: usize, actions: Vec<Action>) {
        let namespace = self.plugins[idx].namespace();
        for a in actions {
            match a {
                Action::Send {
                    id,
                    to,
                    method,
                    params,
                } => {
                    let (addr, expected) = match to {
                        Dest::Contact(c) => (
                            c.addr_for(&self.config.transport_preference).cloned(),
                            Some(c.id),
                        ),
                        Dest::Addr(a) => (Some(a), None),
                    };
                    let req = Request::Custom { method, params };
                    let kind = PendingKind::Plugin { plugin: idx, id };
                    let sent = match addr {
                        Some(a) => self.send_request(now, a, expected, req, kind),
                        None => false,
                    };
                    if !sent {
                        self.with_plugin(now, idx, |p, cx| {
                            p.on_response(cx, id, PluginResponse::Timeout)
                        });
                    }
                }
                Action::Lookup {
                    id,
                    target,
                    method,
                    params,
                    wait_for_slow,
                } => {
                    let lookup = self
                        .make_lookup(now, target)
                        .with_wait_for_slow(wait_for_slow);
                    self.stats.queries_started += 1;
                    self.queries.insert(
                        id,
                        Query {
                            kind: QueryKind::PluginLookup {
                                plugin: idx,
                                method,
                                params,
                            },
                            started: now,
                            lookup: Some(lookup),
                        },
                    );
                    self.step_query(now, id);
                }
                Action::Complete { query, result } => {
                    let mine = matches!(
                        self.queries.get(&query),
                        Some(Query { kind: QueryKind::Command { plugin }, .. }) if *plugin == idx
                    );
                    if mine {
                        self.finish(now, query, QueryResult::Command(result));
                    }
                }
                Action::Emit { name, data } => self.emit(Event::Plugin {
                    namespace,
                    name,
                    data,
                }),
                Action::SetAddrs(addrs) => self.set_addrs(now, addrs),
                Action::SetReadOnly(ro) => self.set_read_only(now, ro),
            }
        }
    }

    pub(super) fn handle_response(
        &mut self,
        now: Instant,
        from: PeerAddr,
        txn: TxnId,
        sender: Contact,
        read_only: bool,
        observed: Option<PeerAddr>,
        rsp: Result<Response, RpcError>,
    ) {
        let key = (txn, from);
        let Some(pending) = self.in_flight.get(&key) else {
            self.stats.dropped_unknown_txn += 1;
            trace!(peer = %key.1, "response to no request of ours");
            return;
        };
        if let Some(expected) = pending.expected.filter(|id| *id != sender.id) {
            if !self.config.accept_id_change || read_only {
                self.stats.dropped_wrong_peer += 1;
                return;
            }
            // Unsigned networks (Mainline): the node at that address now has another id
            // (implementations regenerate ids, e.g. for BEP42). Forget the old one.
            self.routing.remove(&expected);
            self.stats.id_changes += 1;
        }
        let Some(pending) = self.in_flight.remove(&key) else {
            return;
        };
        self.deadlines.remove(&pending.deadline);
        self.stats.responses_in += 1;
        let rtt = now.saturating_duration_since(pending.sent_at);
        // Karn: an answer to a retransmitted request may answer any copy; it says nothing of the RTT.
        if pending.sends == 1 {
            self.rtt.sample(rtt);
        }
        let from = key.1;
        self.address_proven(now, &from);
        if !read_only {
            self.observe_sender(now, &from, sender.clone(), true);
            if pending.sends == 1 {
                self.routing.record_rtt(&sender.id, rtt);
            }
        }
        if let Some(seen) = observed {
            // Only answers to our own requests count: an unsolicited "you are at X" is noise.
            for idx in 0..self.plugins.len() {
                self.with_plugin(now, idx, |p, cx| p.on_observed(cx, &sender, &from, &seen));
            }
        }
        match pending.kind {
            PendingKind::Lookup { query, peer } => {
                self.lookup_response(now, query, peer, &sender, rsp)
            }
            PendingKind::Store { query } => self.store_result(now, query, rsp.err()),
            PendingKind::Ping { query } => {
                let r = match rsp {
                    Ok(_) => Ok(PingOutcome {
                        contact: sender,
                        rtt,
                    }),
                    Err(e) => Err(QueryError::Remote(e)),
                };
                self.finish(now, query, QueryResult::Ping(r));
            }
            PendingKind::BootstrapPing { query } => {
                let start = match self.queries.get_mut(&query) {
                    Some(Query {
                        kind: QueryKind::Bootstrap { pings, .. },
                        lookup,
                        ..
                    }) => {
                        *pings = pings.saturating_sub(1);
                        lookup.is_none()
                    }
                    _ => false,
                };
                if read_only {
                    // Still usable as a seed for our own lookup, though not kept in the table.
                    self.routing.insert(now, sender, false);
                }
                if start {
                    self.start_bootstrap_lookup(now, query);
                }
            }
            PendingKind::EvictPing { peer } => self.routing.on_ping_ok(&peer),
            // The answer made it a contact we hand out (above).
            PendingKind::Verify => {}
            // The deferred replies went out when the answer proved the address.
            PendingKind::Prove { addr } => self.guard.proof_answered(&addr),
            PendingKind::Call { query } => {
                let r = match rsp {
                    Ok(Response::Custom { result, .. }) => Ok(result),
                    Ok(_) => Err(QueryError::Remote(RpcError::new(
                        RpcError::INTERNAL,
                        "unexpected response type",
                    ))),
                    Err(e) => Err(QueryError::Remote(e)),
                };
                self.finish(now, query, QueryResult::Call(r));
            }
            PendingKind::Plugin { plugin, id } => {
                let r = match rsp {
                    Ok(Response::Custom { result, nodes }) => PluginResponse::Ok {
                        from: sender,
                        result,
                        nodes,
                    },
                    Ok(other) => PluginResponse::Ok {
                        from: sender,
                        result: Bytes::new(),
                        nodes: other.nodes().to_vec(),
                    },
                    Err(e) => PluginResponse::Remote(e),
                };
                self.with_plugin(now, plugin, |p, cx| p.on_response(cx, id, r));
            }
        }
        self.feed_starved(now);
    }

    pub(super) fn lookup_response(
        &mut self,
        now: Instant,
        qid: QueryId,
        peer: NodeId,
        sender: &Contact,
        rsp: Result<Response, RpcError>,
    ) {
        let unix = self.unix_ms(now);
        let validator = self.validator.clone();
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        let Some(lookup) = q.lookup.as_mut() else {
            return;
        };
        let mut progress = None;
        let mut plugin_cb = None;
        match &rsp {
            Ok(r) => {
                // An answer under another id than the one asked (accepted with
                // `accept_id_change`) is that node's, at its own distance: the id asked for must
                // not count among the closest (Mainline tables list nodes under ids they never
                // answered with, e.g. the random ids of the mainline crate's pings).
                let peer = if sender.id == peer {
                    peer
                } else {
                    lookup.on_id_change(&peer, sender);
                    sender.id
                };
                lookup.on_success(&peer, r.nodes());
                match (&mut q.kind, r) {
                    (QueryKind::Get { key, found, .. }, Response::Value { record, .. }) => {
                        if record.key == *key
                            && !record.is_expired(unix)
                            && validator.validate(record).is_ok()
                        {
                            found.push(record.clone());
                            progress = Some(record.clone());
                        } else {
                            self.stats.values_rejected += 1;
                        }
                    }
                    (QueryKind::PluginLookup { plugin, .. }, Response::Custom { result, .. }) => {
                        plugin_cb = Some((*plugin, result.clone()));
                    }
                    (
                        QueryKind::Put {
                            direct: Some(d), ..
                        },
                        Response::Stored { .. },
                    ) => {
                        d.stored.insert(peer);
                        d.answered.insert(peer);
                    }
                    _ => {}
                }
            }
            // An error answer: the peer is alive but told us nothing.
            Err(e) => {
                lookup.on_success(&peer, &[]);
                // A STORE refused: a node's own answer says more than a timeout.
                if let QueryKind::Put {
                    refused,
                    direct: Some(d),
                    ..
                } = &mut q.kind
                {
                    d.answered.insert(peer);
                    if refused
                        .as_ref()
                        .is_none_or(|r| r.code == RpcError::INTERNAL)
                    {
                        *refused = Some(e.clone());
                    }
                }
            }
        }
        if let Some(record) = progress {
            self.emit(Event::GetProgress {
                id: qid,
                record,
                from: peer,
            });
        }
        if let Some((plugin, result)) = plugin_cb {
            self.with_plugin(now, plugin, |p, cx| {
                p.on_lookup_response(cx, qid, sender, &result)
            });
        }
        self.step_query(now, qid);
    }

    /// One storing node answered (`None`: stored) or failed.
    pub(super) fn store_result(&mut self, now: Instant, qid: QueryId, err: Option<RpcError>) {
        let done = match self.queries.get_mut(&qid) {
            Some(Query {
                kind:
                    QueryKind::Put {
                        storing: Some((outstanding, stored, _)),
                        refused,
                        quorum,
                        ..
                    },
                ..
            }) => {
                *outstanding = outstanding.saturating_sub(1);
                match err {
                    None => *stored += 1,
                    // A node's own answer says more than a timeout.
                    Some(e)
                        if refused
                            .as_ref()
                            .is_none_or(|r| r.code == RpcError::INTERNAL) =>
                    {
                        *refused = Some(e);
                    }
                    Some(_) => {}
                }
                *outstanding == 0 || (*quorum > 0 && *stored >= *quorum)
            }
            _ => false,
        };
        if done {
            self.finish_put(now, qid);
        }
    }
}
