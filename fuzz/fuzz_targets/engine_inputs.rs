//! `engine_inputs`: the sans-IO engine (`kad_core::Node`) under arbitrary inputs.
//!
//! The input is decoded with `arbitrary` into a small configuration (k, alpha, disjoint lookup
//! paths, subnet limit, in-flight and query limits, store quotas, ...) and a sequence of steps:
//! requests from a handful of peers
//! (some in the same buckets), answers to the requests the node sent (right or wrong
//! transaction, address, id), the same as JSON datagrams through the codec, raw datagrams,
//! commands (`find_node`, `get`, `put`, `put_record`, `ping`, `call`, `bootstrap`,
//! `bootstrap_with`, `add_contact`, read-only switches, snapshot restore) and time passing on a
//! virtual clock. Every output is drained after every step, as the run loop requires.
//!
//! Invariants checked after every step (only what the engine guarantees):
//! - no panic; the routing table's own invariants (`check_invariants`: at most k per bucket,
//!   no duplicates, right buckets) and at most 160 k contacts;
//! - requests in flight <= `max_in_flight`, queries running <= `max_queries` (no plugins here,
//!   whose lookups are outside that limit);
//! - the store within `max_records`, `max_bytes` and `max_publisher_bytes`, its byte count the
//!   sum of its records' sizes;
//! - every message goes to an address that appeared in some input, carries this node's id and
//!   read-only flag; a request never names this node as recipient; an answer goes only to the
//!   address of the request being handled, echoes its transaction and names its sender, and a
//!   request that passes the recipient checks gets exactly one answer (none when
//!   `answer_requests` is off);
//! - each query finishes once; results are consistent (`get` values are for the key, `put`
//!   stored <= tried, lookups return at most k distinct contacts sorted by distance);
//! - after `Input::Timeout` at `now`, `poll_timeout()` is later than `now` (no busy loop);
//! - at the end, with no more answers, every query a command started finishes within four
//!   hours of virtual time.

#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use kad_core::{
    Body, Config, Contact, Event, Eviction, Input, Key, Message, Node, NodeId, Output, PeerAddr,
    QueryId, QueryResult, Record, Request, Response, RpcError, StoreLimits, TxnId, VirtualClock,
};
use libfuzzer_sys::fuzz_target;

const EPOCH_MS: u64 = 1_763_683_200_000;
const LOCAL: NodeId = NodeId::from_bytes([0x55; 20]);
const LOCAL_ADDR: PeerAddr = PeerAddr::Mem(1000);
const POOL: usize = 24;

/// A fixed instant for the virtual clock's base (any instant works: only differences matter).
fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// Peer `i`'s id: in bucket 159 - i % 4 of `LOCAL`, so small buckets overflow.
fn pool_id(i: usize) -> NodeId {
    let mut d = [0u8; 20];
    let top = i % 4;
    d[0] = (0x80u8 >> top) | ((i as u8).wrapping_mul(37) & (0x7f >> top));
    d[1] = i as u8;
    d[19] = 0xa5 ^ i as u8;
    NodeId(LOCAL.distance(&NodeId(d)).0)
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum IdPick {
    Pool(u8),
    Local,
    Raw([u8; 20]),
}

impl IdPick {
    fn id(self) -> NodeId {
        match self {
            Self::Pool(i) => pool_id(usize::from(i) % POOL),
            Self::Local => LOCAL,
            Self::Raw(b) => NodeId(b),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum AddrPick {
    Mem(u8),
    Udp(u8),
    Ws(u8),
    /// A public IPv4 address in one of two /24s (the subnet limit applies).
    Public(u8),
}

impl AddrPick {
    fn addr(self) -> PeerAddr {
        match self {
            Self::Mem(i) => PeerAddr::Mem(u64::from(i % 32)),
            Self::Udp(i) => PeerAddr::Udp(([10, 0, 0, i % 16], 4000).into()),
            Self::Public(i) => PeerAddr::Udp(([198, 51, i & 1, i % 16], 4000).into()),
            Self::Ws(i) => format!("ws://h{}.example/kad", i % 4)
                .parse()
                .expect("valid ws uri"),
        }
    }
}

/// Peer `i`'s own address.
fn home(i: usize) -> PeerAddr {
    PeerAddr::Mem(i as u64)
}

#[derive(Arbitrary, Debug, Clone)]
struct ContactSpec {
    id: IdPick,
    addrs: Vec<AddrPick>,
    /// Also list the pool peer's own address (when the id is a pool id).
    home: bool,
}

#[derive(Arbitrary, Debug, Clone)]
struct RecordSpec {
    key: IdPick,
    len: u8,
    fill: u8,
    publisher: Option<IdPick>,
    /// Seconds after (or, negative, before) now.
    published: i16,
    ttl_secs: u32,
}

#[derive(Arbitrary, Debug, Clone)]
enum ReqSpec {
    Ping,
    FindNode(IdPick),
    FindValue(IdPick),
    /// The record, and whether the STORE asks for the closest contacts.
    Store(RecordSpec, bool),
    Custom {
        known: bool,
        params: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug, Clone)]
enum AnsSpec {
    Pong,
    Nodes(Vec<ContactSpec>),
    Value(RecordSpec, Vec<ContactSpec>),
    Stored(Vec<ContactSpec>),
    Custom(Vec<u8>, Vec<ContactSpec>),
    Error(i16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Recipient {
    Me,
    Nobody,
    Other(IdPick),
}

#[derive(Arbitrary, Debug, Clone)]
enum MsgSpec {
    Request {
        from: AddrPick,
        sender: ContactSpec,
        recipient: Recipient,
        read_only: bool,
        txn: Vec<u8>,
        req: ReqSpec,
    },
    Answer {
        /// Which of the requests sent so far (most recent first).
        which: u8,
        /// Comes from another address than the one asked.
        from: Option<AddrPick>,
        /// Claims another id than the one asked.
        sender: Option<IdPick>,
        wrong_txn: bool,
        recipient: Recipient,
        read_only: bool,
        observed: Option<AddrPick>,
        body: AnsSpec,
    },
}

#[derive(Arbitrary, Debug)]
enum Step {
    Message(MsgSpec),
    /// The same message, as bytes through the node's codec.
    Json(MsgSpec),
    Datagram(AddrPick, Vec<u8>),
    AdvanceMs(u16),
    AdvanceSecs(u16),
    Timeout,
    FindNode(IdPick),
    Get(IdPick, u8),
    Put(IdPick, u8, u8),
    PutRecord(RecordSpec, u8),
    Ping(AddrPick),
    Call(ContactSpec, bool),
    Bootstrap(Vec<AddrPick>),
    BootstrapWith(Vec<ContactSpec>),
    AddContact(ContactSpec),
    SetReadOnly(bool),
    SetAddrs(Vec<AddrPick>),
    Restore,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    /// Lookup paths: `% 3 + 1`, at most k.
    disjoint_paths: u8,
    /// Per-subnet limit: `% 3` (0 = off).
    subnet_limit: u8,
    k: u8,
    alpha: u8,
    max_in_flight: u8,
    max_queries: u8,
    replacement_cache: u8,
    max_failures: u8,
    max_attempts: u8,
    patience: u8,
    skip_silent_head: bool,
    direct_put: bool,
    bootstrap_refresh: u8,
    accept_id_change: bool,
    accept_requesters: bool,
    ignore_requests: bool,
    read_only: bool,
    max_records: u8,
    max_bytes: u16,
    publisher_share: u8,
    reject_when_full: bool,
    max_value_len: u16,
    short_ttls: bool,
    seed: u8,
}

#[derive(Arbitrary, Debug)]
struct FuzzInput {
    setup: Setup,
    steps: Vec<Step>,
}

struct Harness {
    node: Node,
    now: Instant,
    /// Every address that appeared in an input: the only ones the node may send to.
    known: BTreeSet<PeerAddr>,
    /// Requests the node sent, most recent last (bounded).
    sent: Vec<(PeerAddr, Message)>,
    /// Queries started by commands, with the key of `get`s.
    started: BTreeMap<QueryId, Option<Key>>,
    done: BTreeSet<QueryId>,
    limits: StoreLimits,
    /// Answers the anti-amplification guard held back: (address, txn, requester). They may go
    /// out later, when the address proves itself, or be dropped.
    deferred: Vec<(PeerAddr, TxnId, NodeId)>,
}

/// A request being handled: answers may only go back to it.
struct Handling {
    from: PeerAddr,
    txn: TxnId,
    sender: NodeId,
    /// Answers it must get (0 or 1).
    answers: usize,
    /// `Stats::replies_deferred` before it was handled.
    deferred_before: u64,
}

impl Harness {
    fn unix_ms(&self) -> u64 {
        EPOCH_MS + self.now.duration_since(t0()).as_millis() as u64
    }

    fn note_addrs<'a>(&mut self, addrs: impl IntoIterator<Item = &'a PeerAddr>) {
        self.known.extend(addrs.into_iter().cloned());
    }

    fn note_message(&mut self, m: &Message) {
        self.note_addrs(m.sender.addrs.iter());
        self.note_addrs(m.observed.iter());
        if let Body::Response(r) = &m.body {
            for c in r.nodes() {
                self.note_addrs(c.addrs.iter());
            }
        }
    }

    fn contact(&mut self, c: &ContactSpec) -> Contact {
        let id = c.id.id();
        let mut addrs: Vec<PeerAddr> = c.addrs.iter().take(4).map(|a| a.addr()).collect();
        if let (true, IdPick::Pool(i)) = (c.home, c.id) {
            addrs.insert(0, home(usize::from(i) % POOL));
        }
        let c = Contact::with_addrs(id, addrs);
        self.note_addrs(c.addrs.iter());
        c
    }

    fn record(&self, r: &RecordSpec) -> Record {
        let published = self
            .unix_ms()
            .saturating_add_signed(i64::from(r.published) * 1000);
        Record::new(
            r.key.id(),
            vec![r.fill; usize::from(r.len)],
            r.publisher.map(IdPick::id),
            published,
            u64::from(r.ttl_secs % 200_000) * 1000,
        )
    }

    fn recipient(r: Recipient) -> Option<NodeId> {
        match r {
            Recipient::Me => Some(LOCAL),
            Recipient::Nobody => None,
            Recipient::Other(p) => Some(p.id()),
        }
    }

    /// Builds the message of a spec; `None` when it answers a request never sent.
    fn message(&mut self, spec: &MsgSpec) -> Option<(PeerAddr, Message)> {
        Some(match spec {
            MsgSpec::Request {
                from,
                sender,
                recipient,
                read_only,
                txn,
                req,
            } => {
                let from = from.addr();
                let req = match req {
                    ReqSpec::Ping => Request::Ping,
                    ReqSpec::FindNode(t) => Request::FindNode { target: t.id() },
                    ReqSpec::FindValue(k) => Request::FindValue { key: k.id() },
                    ReqSpec::Store(r, want_nodes) => Request::Store {
                        record: self.record(r),
                        want_nodes: *want_nodes,
                    },
                    ReqSpec::Custom { known, params } => Request::Custom {
                        method: if *known { "FIND_NODE" } else { "test.METHOD" }.into(),
                        params: Bytes::copy_from_slice(params),
                    },
                };
                let msg = Message {
                    txn: TxnId::from_bytes(txn.iter().take(8).copied().collect::<Vec<u8>>()),
                    sender: self.contact(sender),
                    recipient: Self::recipient(*recipient),
                    read_only: *read_only,
                    observed: None,
                    body: Body::Request(req),
                };
                (from, msg)
            }
            MsgSpec::Answer {
                which,
                from,
                sender,
                wrong_txn,
                recipient,
                read_only,
                observed,
                body,
            } => {
                let n = self.sent.len();
                if n == 0 {
                    return None;
                }
                let (to, req) = self.sent[n - 1 - usize::from(*which) % n].clone();
                let from = from.map_or(to.clone(), AddrPick::addr);
                let id = match (sender, req.recipient) {
                    (Some(p), _) => p.id(),
                    (None, Some(id)) => id,
                    (None, None) => match to {
                        PeerAddr::Mem(i) if (i as usize) < POOL => pool_id(i as usize),
                        _ => pool_id(0),
                    },
                };
                let nodes = |h: &mut Self, v: &[ContactSpec]| {
                    v.iter().take(8).map(|c| h.contact(c)).collect::<Vec<_>>()
                };
                let body = match body {
                    AnsSpec::Pong => Body::Response(Response::Pong),
                    AnsSpec::Nodes(v) => Body::Response(Response::Nodes {
                        nodes: nodes(self, v),
                    }),
                    AnsSpec::Value(r, v) => Body::Response(Response::Value {
                        record: self.record(r),
                        nodes: nodes(self, v),
                    }),
                    AnsSpec::Stored(v) => Body::Response(Response::Stored {
                        nodes: nodes(self, v),
                    }),
                    AnsSpec::Custom(b, v) => Body::Response(Response::Custom {
                        result: Bytes::copy_from_slice(b),
                        nodes: nodes(self, v),
                    }),
                    AnsSpec::Error(c) => Body::Error(RpcError::new(i64::from(*c), "fuzz")),
                };
                let mut txn = req.txn.0.to_vec();
                if *wrong_txn {
                    txn.push(0);
                }
                let msg = Message {
                    txn: TxnId::from_bytes(txn),
                    sender: Contact::new(id, from.clone()),
                    recipient: match recipient {
                        Recipient::Me | Recipient::Nobody => Some(LOCAL),
                        Recipient::Other(p) => Some(p.id()),
                    },
                    read_only: *read_only,
                    observed: observed.map(AddrPick::addr),
                    body,
                };
                (from, msg)
            }
        })
    }

    /// Feeds an input at the current time, drains the outputs and checks the invariants.
    fn feed(&mut self, input: Input, handling: Option<Handling>) {
        if let Input::Datagram { from, .. } | Input::Message { from, .. } = &input {
            self.known.insert(from.clone());
        }
        let is_timeout = matches!(input, Input::Timeout);
        self.node.handle_input(self.now, input);
        self.drain(handling);
        if is_timeout {
            let next = self
                .node
                .poll_timeout()
                .expect("maintenance is always scheduled");
            assert!(
                next > self.now,
                "poll_timeout {next:?} not after the timeout at {:?}",
                self.now
            );
        }
    }

    fn drain(&mut self, handling: Option<Handling>) {
        let mut answers = 0;
        let read_only = self.node.config().read_only;
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Send { to, msg } => {
                    assert!(
                        self.known.contains(&to),
                        "sent to {to:?}, an address no input named"
                    );
                    assert_eq!(msg.sender.id, LOCAL);
                    assert_eq!(msg.read_only, read_only);
                    match &msg.body {
                        Body::Request(_) => {
                            assert_eq!(msg.txn.0.len(), 4, "our transaction ids are 4 bytes");
                            assert_ne!(msg.recipient, Some(LOCAL), "a request to ourselves");
                            assert_eq!(msg.observed, None);
                            self.sent.push((to, msg));
                            if self.sent.len() > 64 {
                                self.sent.remove(0);
                            }
                        }
                        _ => {
                            let this = handling.as_ref().is_some_and(|h| {
                                answers == 0
                                    && to == h.from
                                    && msg.txn == h.txn
                                    && msg.recipient == Some(h.sender)
                            });
                            if this {
                                answers += 1;
                            } else {
                                // Otherwise only a held-back answer, to its own requester.
                                let key = (to, msg.txn.clone(), msg.recipient.unwrap_or(LOCAL));
                                let Some(i) = self.deferred.iter().position(|d| *d == key) else {
                                    panic!("an answer to no request: {key:?} {msg:?}");
                                };
                                self.deferred.remove(i);
                            }
                        }
                    }
                }
                Output::Event(e) => self.event(e),
                _ => {}
            }
        }
        if let Some(h) = handling {
            // An answer larger than its request, to a UDP address that never answered us, is
            // held back (the guard pings the address first). Nothing else goes unanswered.
            let held = self.node.stats().replies_deferred > h.deferred_before;
            if h.answers == 1 && answers == 0 && held {
                assert!(
                    matches!(h.from, PeerAddr::Udp(_)),
                    "held back for {:?}",
                    h.from
                );
                self.deferred.push((h.from, h.txn, h.sender));
            } else {
                assert_eq!(
                    answers,
                    h.answers,
                    "answers to one request ({:?})",
                    self.node.stats()
                );
            }
        }
        self.check();
    }

    fn event(&mut self, e: Event) {
        let k = self.node.config().k;
        match e {
            Event::QueryDone { id, result } => {
                assert!(self.done.insert(id), "{id:?} finished twice");
                let key = self.started.get(&id).copied().flatten();
                match result {
                    QueryResult::FindNode(Ok(o))
                    | QueryResult::Bootstrap(Ok(o))
                    | QueryResult::Refresh(o) => {
                        assert!(o.closest.len() <= k);
                        assert!(o.closest.iter().all(|c| c.id != LOCAL));
                        for w in o.closest.windows(2) {
                            assert!(w[0].id.distance(&o.target) < w[1].id.distance(&o.target));
                        }
                    }
                    QueryResult::Get(Ok(o)) => {
                        if let Some(key) = key {
                            assert_eq!(o.record.key, key);
                        }
                        assert!(o.answers >= 1);
                    }
                    QueryResult::Put(Ok(o)) => {
                        assert!(1 <= o.stored && o.stored <= o.tried, "{o:?}");
                    }
                    _ => {}
                }
            }
            Event::GetProgress { id, record, .. } => {
                if let Some(Some(key)) = self.started.get(&id) {
                    assert_eq!(record.key, *key);
                }
                assert!(!self.done.contains(&id), "progress after the end");
            }
            _ => {}
        }
    }

    fn check(&self) {
        let n = &self.node;
        let cfg = n.config();
        let rt = n.routing_table();
        if let Err(e) = rt.check_invariants() {
            panic!("routing table: {e}");
        }
        assert!(rt.len() <= 160 * cfg.k);
        assert!(rt.iter().all(|e| e.contact.id != LOCAL));
        assert!(
            n.in_flight() <= cfg.max_in_flight,
            "{} in flight",
            n.in_flight()
        );
        assert!(
            n.queries_running() <= cfg.max_queries,
            "{} queries",
            n.queries_running()
        );
        let store = n.store();
        let l = &self.limits;
        assert!(store.len() <= l.max_records, "{} records", store.len());
        assert!(
            store.size_bytes() <= l.max_bytes,
            "{} bytes",
            store.size_bytes()
        );
        let keys = store.keys();
        assert_eq!(keys.len(), store.len());
        let mut total = 0;
        let mut per: HashMap<NodeId, usize> = HashMap::new();
        for key in &keys {
            let r = store.get(key).expect("a listed key is held");
            assert_eq!(r.key, *key);
            assert!(r.value.len() <= cfg.max_value_len);
            total += r.size();
            if let Some(p) = r.publisher {
                *per.entry(p).or_default() += r.size();
            }
        }
        assert_eq!(total, store.size_bytes());
        assert!(per.values().all(|b| *b <= l.max_publisher_bytes), "{per:?}");
    }

    fn deliver(&mut self, spec: &MsgSpec, as_bytes: bool) {
        let Some((from, msg)) = self.message(spec) else {
            return;
        };
        self.note_message(&msg);
        let input = if as_bytes {
            let data = serde_json::to_vec(&msg).expect("messages serialise");
            Input::Datagram {
                from: from.clone(),
                data: Bytes::from(data),
            }
        } else {
            Input::Message {
                from: from.clone(),
                msg: msg.clone(),
            }
        };
        let handling = self.handling(&from, &msg);
        self.feed(input, Some(handling));
    }

    fn handling(&self, from: &PeerAddr, msg: &Message) -> Handling {
        let answered = matches!(msg.body, Body::Request(_))
            && self.node.config().answer_requests
            && msg.sender.id != LOCAL
            && msg.recipient.is_none_or(|r| r == LOCAL);
        Handling {
            from: from.clone(),
            txn: msg.txn.clone(),
            sender: msg.sender.id,
            answers: usize::from(answered),
            deferred_before: self.node.stats().replies_deferred,
        }
    }

    /// Fires every timer due up to `until`, in order, and ends at `until`.
    fn advance(&mut self, until: Instant, max_rounds: usize) -> bool {
        for _ in 0..max_rounds {
            match self.node.poll_timeout() {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.feed(Input::Timeout, None);
                }
                _ => {
                    self.now = until;
                    return true;
                }
            }
        }
        self.now = until;
        false
    }

    fn command(&mut self, r: Result<QueryId, kad_core::CommandError>, key: Option<Key>) {
        if let Ok(id) = r {
            assert!(self.started.insert(id, key).is_none(), "query id reused");
            assert!(!self.done.contains(&id), "query id reused");
        }
        self.drain(None);
    }

    fn step(&mut self, step: &Step) {
        let now = self.now;
        match step {
            Step::Message(m) => self.deliver(m, false),
            Step::Json(m) => self.deliver(m, true),
            Step::Datagram(from, data) => {
                let from = from.addr();
                let handling = match serde_json::from_slice::<Message>(data) {
                    Ok(m) if data.len() <= 64 * 1024 => {
                        self.note_message(&m);
                        Some(self.handling(&from, &m))
                    }
                    _ => None,
                };
                let input = Input::Datagram {
                    from,
                    data: Bytes::copy_from_slice(data),
                };
                self.feed(input, handling);
            }
            Step::AdvanceMs(ms) => {
                self.advance(now + Duration::from_millis(u64::from(*ms)), 10_000);
            }
            Step::AdvanceSecs(s) => {
                self.advance(now + Duration::from_secs(u64::from(*s % 7200)), 10_000);
            }
            Step::Timeout => self.feed(Input::Timeout, None),
            Step::FindNode(t) => {
                let r = self.node.find_node(now, t.id());
                self.command(r, None);
            }
            Step::Get(k, quorum) => {
                let key = k.id();
                let r = self.node.get(now, key, usize::from(*quorum % 4));
                self.command(r, Some(key));
            }
            Step::Put(k, len, quorum) => {
                let value = Bytes::from(vec![*len; usize::from(*len) * 2]);
                let r = self
                    .node
                    .put_quorum(now, k.id(), value, usize::from(*quorum % 4));
                self.command(r, None);
            }
            Step::PutRecord(spec, quorum) => {
                let rec = self.record(spec);
                let r = self
                    .node
                    .put_record_quorum(now, rec, usize::from(*quorum % 4));
                self.command(r, None);
            }
            Step::Ping(a) => {
                let a = a.addr();
                self.known.insert(a.clone());
                let r = self.node.ping(now, a);
                self.command(r, None);
            }
            Step::Call(c, namespaced) => {
                // Calling one's own id is the user's mistake, not remote input: the engine
                // sends it as asked, which the request check below would flag.
                let mut c = self.contact(c);
                if c.id == LOCAL {
                    c.id = pool_id(0);
                }
                let method = if *namespaced { "test.ECHO" } else { "ECHO" };
                let r = self.node.call(now, &c, method, Bytes::from_static(b"{}"));
                self.command(r, None);
            }
            Step::Bootstrap(seeds) => {
                let seeds: Vec<PeerAddr> = seeds.iter().take(8).map(|a| a.addr()).collect();
                self.note_addrs(seeds.iter());
                let r = self.node.bootstrap(now, &seeds);
                self.command(r, None);
            }
            Step::BootstrapWith(seeds) => {
                let seeds: Vec<Contact> = seeds.iter().take(8).map(|c| self.contact(c)).collect();
                let r = self.node.bootstrap_with(now, seeds);
                self.command(r, None);
            }
            Step::AddContact(c) => {
                let c = self.contact(c);
                self.node.add_contact(now, c);
                self.drain(None);
            }
            Step::SetReadOnly(ro) => {
                self.node.set_read_only(now, *ro);
                self.drain(None);
            }
            Step::SetAddrs(addrs) => {
                let mut v = vec![LOCAL_ADDR];
                v.extend(addrs.iter().take(3).map(|a| a.addr()));
                self.node.set_addrs(now, v);
                self.drain(None);
            }
            Step::Restore => {
                let snap = self.node.snapshot();
                let before = self.node.routing_table().len();
                // Restoring our own snapshot adds nothing: every contact is already there.
                assert_eq!(self.node.restore(now, &snap), 0);
                assert_eq!(self.node.routing_table().len(), before);
                self.drain(None);
            }
        }
    }
}

fn build(s: &Setup) -> (Node, StoreLimits) {
    let mut limits = StoreLimits::default();
    limits.max_records = usize::from(s.max_records % 6) + 1;
    limits.max_bytes = 64 + usize::from(s.max_bytes % 2048);
    limits.max_publisher_bytes = limits.max_bytes * (usize::from(s.publisher_share % 4) + 1) / 4;
    limits.eviction = if s.reject_when_full {
        Eviction::Reject
    } else {
        Eviction::FarthestFirst
    };
    let mut cfg = Config::default();
    cfg.k = usize::from(s.k % 6) + 1;
    cfg.alpha = usize::from(s.alpha % 3) + 1;
    cfg.max_in_flight = usize::from(s.max_in_flight % 8) + 1;
    cfg.max_queries = usize::from(s.max_queries % 4) + 1;
    cfg.replacement_cache = usize::from(s.replacement_cache % 3);
    cfg.max_failures = s.max_failures % 3 + 1;
    cfg.max_attempts = s.max_attempts % 5 + 1;
    cfg.lookup_patience = usize::from(s.patience % 3) + 1;
    cfg.lookup_skip_silent_head = s.skip_silent_head;
    cfg.direct_put = s.direct_put;
    cfg.disjoint_paths = (usize::from(s.disjoint_paths % 3) + 1).min(cfg.k);
    cfg.subnet_limit = usize::from(s.subnet_limit % 3);
    cfg.bootstrap_refresh = usize::from(s.bootstrap_refresh % 3);
    cfg.accept_id_change = s.accept_id_change;
    cfg.accept_requesters = s.accept_requesters;
    cfg.answer_requests = !s.ignore_requests;
    cfg.read_only = s.read_only;
    cfg.max_value_len = usize::from(s.max_value_len % 512);
    if s.short_ttls {
        cfg.record_ttl = Duration::from_secs(600);
        cfg.replicate_interval = Duration::from_secs(120);
        cfg.republish_interval = Duration::from_secs(300);
    }
    cfg.rng_seed = Some([s.seed; 32]);
    cfg.store_limits = limits.clone();
    cfg.wall_clock = Arc::new(VirtualClock {
        base: t0(),
        epoch_ms: EPOCH_MS,
    });
    let node = Node::builder(cfg)
        .id(LOCAL)
        .addrs(vec![LOCAL_ADDR])
        .build(t0())
        .expect("the configuration is valid");
    (node, limits)
}

fuzz_target!(|input: FuzzInput| {
    let (node, limits) = build(&input.setup);
    let mut h = Harness {
        node,
        now: t0(),
        known: BTreeSet::new(),
        sent: Vec::new(),
        started: BTreeMap::new(),
        done: BTreeSet::new(),
        limits,
        deferred: Vec::new(),
    };
    h.known.insert(LOCAL_ADDR);
    h.check();
    for step in input.steps.iter().take(256) {
        h.step(step);
    }
    // No more answers: every query a command started ends (lookups and pings time out).
    let deadline = h.now + Duration::from_secs(4 * 3600);
    let mut rounds = 0;
    while h.started.keys().any(|id| !h.done.contains(id)) && h.now < deadline && rounds < 20_000 {
        let next = h
            .node
            .poll_timeout()
            .expect("maintenance is always scheduled");
        h.now = h.now.max(next.min(deadline));
        h.feed(Input::Timeout, None);
        rounds += 1;
    }
    if rounds < 20_000 {
        let open: Vec<_> = h.started.keys().filter(|id| !h.done.contains(id)).collect();
        assert!(
            open.is_empty(),
            "queries {open:?} never finished (config {:?})",
            h.node.config()
        );
    }
});
