//! Commands: queries a caller starts (bootstrap, lookups, get, put, ping, call, plugin commands).

use std::time::Instant;

use bytes::Bytes;

use super::{
    CommandError, DirectPut, Node, PendingKind, Query, QueryError, QueryId, QueryKind, QueryResult,
    REJOIN_ADDRS,
};
use crate::addr::{Contact, PeerAddr};
use crate::id::{Key, NodeId};
use crate::lookup::Lookup;
use crate::message::Request;
use crate::record::Record;
use crate::routing::RoutingSnapshot;

impl Node {
    pub(super) fn new_query(
        &mut self,
        now: Instant,
        kind: QueryKind,
        lookup: Option<Lookup>,
    ) -> Result<QueryId, CommandError> {
        if self.queries.len() >= self.config.max_queries {
            self.stats.queries_refused += 1;
            return Err(CommandError::TooManyQueries {
                limit: self.config.max_queries,
            });
        }
        let id = QueryId(self.next_query);
        self.next_query += 1;
        self.stats.queries_started += 1;
        self.queries.insert(
            id,
            Query {
                kind,
                started: now,
                lookup,
            },
        );
        Ok(id)
    }

    pub(super) fn make_lookup(&mut self, now: Instant, target: NodeId) -> Lookup {
        self.routing.touch(now, &target);
        let mut seeds = self.routing.closest(&target, self.config.k);
        if seeds.len() < self.config.alpha {
            // Few good contacts left: give the failing ones another chance.
            seeds.extend(
                self.routing
                    .closest_bad(&target, self.config.k - seeds.len()),
            );
        }
        Lookup::new(
            self.local.id,
            target,
            self.config.k,
            self.config.alpha,
            self.config.max_attempts,
            seeds,
        )
        .with_patience(self.config.lookup_patience)
        .with_skip_silent_head(self.config.lookup_skip_silent_head)
        .with_subnet_limit(self.config.subnet_limit)
        .with_disjoint_paths(self.config.disjoint_paths)
    }

    /// Adds a contact to the routing table as unverified (it becomes good once it answers).
    pub fn add_contact(&mut self, now: Instant, contact: Contact) {
        let now = self.advance(now);
        self.routing.insert(now, contact, false);
    }

    /// Restores a routing-table snapshot (contacts start as questionable). Returns how many were added.
    pub fn restore(&mut self, now: Instant, snapshot: &RoutingSnapshot) -> usize {
        let now = self.advance(now);
        self.routing.restore(now, snapshot)
    }

    /// Joins the network through seed addresses whose ids are unknown: pings them, then looks up
    /// our own id. Finishes with [`QueryResult::Bootstrap`].
    pub fn bootstrap(&mut self, now: Instant, seeds: &[PeerAddr]) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        if seeds.is_empty() && self.routing.is_empty() {
            return Err(CommandError::NoSeeds);
        }
        for a in seeds {
            if !self.join_addrs.contains(a) && self.join_addrs.len() < REJOIN_ADDRS {
                self.join_addrs.push(a.clone());
            }
        }
        self.start_bootstrap(now, seeds)
    }

    /// Pings `seeds`, then looks up our own id (the lookup starts at the first answer, or once
    /// every ping failed after its retransmissions).
    pub(super) fn start_bootstrap(
        &mut self,
        now: Instant,
        seeds: &[PeerAddr],
    ) -> Result<QueryId, CommandError> {
        let qid = self.new_query(
            now,
            QueryKind::Bootstrap {
                pings: 0,
                refresh_left: self.config.bootstrap_refresh,
            },
            None,
        )?;
        let mut sent = 0;
        for addr in seeds {
            if self.send_request(
                now,
                addr.clone(),
                None,
                Request::Ping,
                PendingKind::BootstrapPing { query: qid },
            ) {
                sent += 1;
            }
        }
        if let Some(Query {
            kind: QueryKind::Bootstrap { pings, .. },
            ..
        }) = self.queries.get_mut(&qid)
        {
            *pings = sent;
        }
        if sent == 0 {
            self.start_bootstrap_lookup(now, qid);
        }
        Ok(qid)
    }

    /// Joins the network through known contacts: adds them, then looks up our own id.
    pub fn bootstrap_with(
        &mut self,
        now: Instant,
        seeds: Vec<Contact>,
    ) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        for c in seeds {
            if let Some(a) = c.addr_for(&self.config.transport_preference) {
                if !self.join_addrs.contains(a) && self.join_addrs.len() < REJOIN_ADDRS {
                    self.join_addrs.push(a.clone());
                }
            }
            self.routing.insert(now, c, false);
        }
        let qid = self.new_query(
            now,
            QueryKind::Bootstrap {
                pings: 0,
                refresh_left: self.config.bootstrap_refresh,
            },
            None,
        )?;
        self.start_bootstrap_lookup(now, qid);
        Ok(qid)
    }

    pub(super) fn start_bootstrap_lookup(&mut self, now: Instant, qid: QueryId) {
        let lookup = self.make_lookup(now, self.local.id);
        if let Some(q) = self.queries.get_mut(&qid) {
            q.lookup = Some(lookup);
        }
        self.step_query(now, qid);
    }

    /// Finds the k closest nodes to `target`. Finishes with [`QueryResult::FindNode`].
    pub fn find_node(&mut self, now: Instant, target: NodeId) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        let lookup = self.make_lookup(now, target);
        let qid = self.new_query(now, QueryKind::FindNode, Some(lookup))?;
        self.step_query(now, qid);
        Ok(qid)
    }

    /// Looks up the record under `key`. Finishes with [`QueryResult::Get`] as soon as `quorum`
    /// valid values arrived (the best by the validator), or when the lookup converges. A `quorum`
    /// of 0 means: run the lookup to the end and return the best value seen. A locally held value
    /// counts as one answer.
    pub fn get(&mut self, now: Instant, key: Key, quorum: usize) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        let mut found = Vec::new();
        let unix = self.unix_ms(now);
        if let Some(r) = self.local_record(&key, unix) {
            if self.validator.validate(&r).is_ok() {
                found.push(r);
            }
        }
        let lookup = self.make_lookup(now, key);
        let qid = self.new_query(now, QueryKind::Get { key, quorum, found }, Some(lookup))?;
        self.step_query(now, qid);
        Ok(qid)
    }

    /// Publishes `value` under `key` as this node's record (republished before it expires).
    /// Finishes with [`QueryResult::Put`], saying how many nodes stored it.
    pub fn put(&mut self, now: Instant, key: Key, value: Bytes) -> Result<QueryId, CommandError> {
        self.put_quorum(now, key, value, 0)
    }

    /// Like [`put`](Self::put), finishing as soon as `quorum` nodes have stored the record
    /// (0: when every one of the k closest has answered). The other STOREs still go out; their
    /// answers are not waited for. The outcome's `stored` is the count at that moment.
    pub fn put_quorum(
        &mut self,
        now: Instant,
        key: Key,
        value: Bytes,
        quorum: usize,
    ) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        let unix = self.unix_ms(now);
        let record = Record::new(
            key,
            value,
            Some(self.local.id),
            unix,
            self.config.record_ttl.as_millis() as u64,
        );
        let qid = self.put_record_quorum(now, record.clone(), quorum)?;
        self.keep_own(now, record);
        Ok(qid)
    }

    /// Stores `record` as given at the k closest nodes to its key (no republish bookkeeping).
    pub fn put_record(&mut self, now: Instant, record: Record) -> Result<QueryId, CommandError> {
        self.put_record_quorum(now, record, 0)
    }

    /// Like [`put_record`](Self::put_record), finishing once `quorum` nodes stored it (see
    /// [`put_quorum`](Self::put_quorum)).
    pub fn put_record_quorum(
        &mut self,
        now: Instant,
        record: Record,
        quorum: usize,
    ) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        if record.value.len() > self.config.max_value_len {
            return Err(CommandError::ValueTooLarge {
                len: record.value.len(),
                limit: self.config.max_value_len,
            });
        }
        let unix = self.unix_ms(now);
        if record.is_expired(unix) {
            return Err(CommandError::Expired {
                expires_at_ms: record.expires_at_ms,
                now_ms: unix,
            });
        }
        // Stored at the k closest that answer, slow ones included.
        let mut lookup = self.make_lookup(now, record.key).with_wait_for_slow(true);
        // Where the table holds every node near the key, the put stores at the k closest it
        // knows at once, each STORE asking for the closest contacts its node knows (so a node it
        // did not know still gets the record): one round trip instead of a lookup and then the
        // STOREs. A put with a quorum finishes early and stops searching, so it searches first;
        // so does a large value, which a lookup's short deadlines would send again and again.
        // With disjoint paths each path would store at its own k closest.
        let direct = (quorum == 0
            && self.config.direct_put
            && self.config.disjoint_paths <= 1
            && record.value.len() <= super::outbound::SMALL_VALUE
            && self.routing.knows_neighbourhood(&record.key, self.config.k))
        .then(Box::<DirectPut>::default);
        if direct.is_some() {
            lookup = lookup.with_alpha(self.config.k);
        }
        let qid = self.new_query(
            now,
            QueryKind::Put {
                record,
                storing: None,
                refused: None,
                quorum,
                direct,
            },
            Some(lookup),
        )?;
        self.step_query(now, qid);
        Ok(qid)
    }

    /// Pings an address. Finishes with [`QueryResult::Ping`].
    pub fn ping(&mut self, now: Instant, addr: PeerAddr) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        let qid = self.new_query(now, QueryKind::Ping, None)?;
        if !self.send_request(
            now,
            addr,
            None,
            Request::Ping,
            PendingKind::Ping { query: qid },
        ) {
            self.finish(now, qid, QueryResult::Ping(Err(QueryError::NoPeers)));
        }
        Ok(qid)
    }

    /// Calls a plugin method (`namespace.METHOD`) on a peer. Finishes with [`QueryResult::Call`].
    pub fn call(
        &mut self,
        now: Instant,
        to: &Contact,
        method: &str,
        params: Bytes,
    ) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        if !method.contains('.') {
            return Err(CommandError::BadMethod(method.to_owned()));
        }
        let addr = to
            .addr_for(&self.config.transport_preference)
            .cloned()
            .ok_or(CommandError::NoAddress)?;
        let qid = self.new_query(now, QueryKind::Call, None)?;
        let req = Request::Custom {
            method: method.to_owned(),
            params,
        };
        if !self.send_request(
            now,
            addr,
            Some(to.id),
            req,
            PendingKind::Call { query: qid },
        ) {
            self.finish(now, qid, QueryResult::Call(Err(QueryError::NoPeers)));
        }
        Ok(qid)
    }

    /// Gives a command to the plugin with this namespace ([`Plugin::on_command`](crate::Plugin::on_command)). Finishes with
    /// [`QueryResult::Command`] when the plugin completes it.
    pub fn command(
        &mut self,
        now: Instant,
        namespace: &str,
        input: crate::PluginData,
    ) -> Result<QueryId, CommandError> {
        let now = self.advance(now);
        let idx = self
            .plugins
            .iter()
            .position(|p| p.namespace() == namespace)
            .ok_or_else(|| CommandError::NoPlugin(namespace.to_owned()))?;
        let qid = self.new_query(now, QueryKind::Command { plugin: idx }, None)?;
        self.with_plugin(now, idx, |p, cx| p.on_command(cx, qid, input));
        Ok(qid)
    }
}
