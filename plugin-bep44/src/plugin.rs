//! The Mainline plugin: the server side of `get_peers`, `announce_peer`, `get`, `put` and
//! `sample_infohashes`, and the client side of BEP44 get/put and BEP5 peer lookups, run as
//! kad-core plugin lookups.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kad_core::{
    Contact, LookupStats, NodeId, PeerAddr, Plugin, PluginCx, PluginData, PluginResponse,
    QueryError, QueryId, Reply, RequestId, RpcError,
};
use rand::{Rng, RngCore};

use crate::bencode::{self, Dict, Val};
use crate::bep42;
use crate::item::{self, MAX_SALT, MAX_V};
use crate::krpc::{KrpcShared, code, compact_peer, parse_compact_addr};

/// Nodes per reply and put/announce fan-out (BEP5's K).
pub const K: usize = 8;
/// Token secrets rotate this often; a token is accepted for two periods.
pub const TOKEN_ROTATION: Duration = Duration::from_secs(300);

/// Bounds of the server-side stores.
#[derive(Debug, Clone)]
pub struct ItemStoreLimits {
    /// Items (immutable and mutable together). Default 2,000.
    pub max_items: usize,
    /// An item not refreshed for this long is dropped. Default 2 h (BEP44).
    pub item_lifetime: Duration,
    /// Info-hashes with announced peers. Default 2,000.
    pub max_infohashes: usize,
    /// Peers kept per info-hash. Default 500.
    pub max_peers_per_hash: usize,
    /// A peer not re-announced for this long is dropped. Default 45 min.
    pub peer_lifetime: Duration,
    /// Peers returned in one `get_peers` reply (keeps replies near 1 KiB). Default 50.
    pub max_values_per_reply: usize,
}

impl Default for ItemStoreLimits {
    fn default() -> Self {
        Self {
            max_items: 2_000,
            item_lifetime: Duration::from_secs(2 * 3600),
            max_infohashes: 2_000,
            max_peers_per_hash: 500,
            peer_lifetime: Duration::from_secs(45 * 60),
            max_values_per_reply: 50,
        }
    }
}

#[derive(Debug, Clone)]
struct StoredItem {
    v: Bytes,
    mutable: Option<MutFields>,
    refreshed: Instant,
}

#[derive(Debug, Clone)]
struct MutFields {
    k: [u8; 32],
    seq: i64,
    sig: [u8; 64],
}

#[derive(Debug, Default)]
struct PeerList {
    peers: HashMap<SocketAddr, Instant>,
    last: Option<Instant>,
}

#[derive(Debug, Default)]
struct Tokens {
    cur: [u8; 16],
    prev: [u8; 16],
    rotated: Option<Instant>,
}

impl Tokens {
    fn refresh(&mut self, now: Instant, rng: &mut dyn RngCore) {
        match self.rotated {
            None => {
                rng.fill_bytes(&mut self.cur);
                rng.fill_bytes(&mut self.prev);
                self.rotated = Some(now);
            }
            Some(t) if now.saturating_duration_since(t) >= TOKEN_ROTATION => {
                self.prev = self.cur;
                rng.fill_bytes(&mut self.cur);
                self.rotated = Some(now);
            }
            _ => {}
        }
    }
    fn make(secret: &[u8; 16], ip: IpAddr) -> [u8; 8] {
        let mut buf = secret.to_vec();
        match ip {
            IpAddr::V4(v4) => buf.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => buf.extend_from_slice(&v6.octets()),
        }
        let h = item::sha1(&buf);
        h[..8].try_into().unwrap_or([0; 8])
    }
    fn token(&self, ip: IpAddr) -> [u8; 8] {
        Self::make(&self.cur, ip)
    }
    fn valid(&self, ip: IpAddr, token: &[u8]) -> bool {
        token == Self::make(&self.cur, ip) || token == Self::make(&self.prev, ip)
    }
}

/// A command from the handle to the plugin (in a `PluginData` given to `Dht::command`).
#[derive(Debug, Clone)]
pub(crate) enum Cmd {
    Get {
        target: NodeId,
        /// Mutable: the public key and the salt.
        mutable: Option<([u8; 32], Bytes)>,
        seq: Option<i64>,
    },
    Put {
        /// The bencoded value.
        v: Bytes,
        /// Mutable: the signed item and the cas.
        mutable: Option<(item::MutableItem, Option<i64>)>,
    },
    GetPeers {
        info_hash: NodeId,
    },
    Announce {
        info_hash: NodeId,
        port: u16,
        implied_port: bool,
    },
}

/// What a `get` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The bencoded value.
    pub(crate) v: Bytes,
    /// Mutable items: the sequence number.
    pub(crate) seq: Option<i64>,
    /// Mutable items: the public key.
    pub(crate) k: Option<[u8; 32]>,
    /// Mutable items: the signature.
    pub(crate) sig: Option<[u8; 64]>,
}

/// The plugin's answer to a command (in a `PluginData`).
#[derive(Debug, Clone, Default)]
pub(crate) struct CmdResult {
    pub(crate) found: Option<Found>,
    /// Nodes that answered the lookup.
    pub(crate) answered: usize,
    /// Valid values received (get).
    pub(crate) values: usize,
    /// Values received that failed verification (get).
    pub(crate) rejected: usize,
    /// Nodes that acknowledged a put or announce.
    pub(crate) stored_on: usize,
    /// Nodes a put or announce was sent to.
    pub(crate) asked: usize,
    /// Error answers to a put or announce: (code, message).
    pub(crate) errors: Vec<(i64, String)>,
    pub(crate) timeouts: usize,
    /// Peers found by get_peers.
    pub(crate) peers: Vec<SocketAddr>,
    /// The closest nodes that answered.
    pub(crate) closest: Vec<NodeId>,
}

enum OpKind {
    Get {
        mutable: Option<([u8; 32], Vec<u8>)>,
        /// Immutable values end the command at the first valid answer.
        finished: bool,
    },
    Put {
        v: Bytes,
        mutable: Option<(item::MutableItem, Option<i64>)>,
    },
    GetPeers,
    Announce {
        port: u16,
        implied_port: bool,
    },
}

struct Op {
    cmd: QueryId,
    target: NodeId,
    kind: OpKind,
    /// Write tokens by node address (ids of deployed nodes change), with the contact as it
    /// answered (the id in its answer) and whether it returned an item.
    tokens: HashMap<PeerAddr, (Contact, Bytes, bool)>,
    result: CmdResult,
    peers: BTreeSet<SocketAddr>,
}

struct Fanout {
    cmd: QueryId,
    outstanding: usize,
    result: CmdResult,
}

/// The Mainline plugin (namespace `mainline`). Build one per node with [`Bep44Plugin::new`];
/// [`Mainline::spawn`](crate::Mainline::spawn) does it for you.
pub struct Bep44Plugin {
    shared: Arc<KrpcShared>,
    limits: ItemStoreLimits,
    tokens: Tokens,
    items: HashMap<NodeId, StoredItem>,
    peers: HashMap<NodeId, PeerList>,
    ops: HashMap<QueryId, Op>,
    fanout_of: HashMap<RequestId, QueryId>,
    fanouts: HashMap<QueryId, Fanout>,
    next_sweep: Option<Instant>,
    local_hint: NodeId,
}

impl std::fmt::Debug for Bep44Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bep44Plugin")
            .field("items", &self.items.len())
            .field("infohashes", &self.peers.len())
            .field("ops", &self.ops.len())
            .finish_non_exhaustive()
    }
}

fn err(code: i64, msg: &str) -> Reply {
    Reply::Error(RpcError::new(code, msg))
}

fn id_arg(a: &Val<'_>, key: &[u8]) -> Option<NodeId> {
    a.get(key).and_then(Val::bytes).and_then(NodeId::from_slice)
}

fn source_ip(from: &Contact) -> Option<SocketAddr> {
    from.addrs.first().and_then(|a| a.socket_addr())
}

impl Bep44Plugin {
    /// A plugin sharing counters and the external-address vote with the codec.
    pub fn new(shared: Arc<KrpcShared>, limits: ItemStoreLimits) -> Self {
        Self {
            shared,
            limits,
            tokens: Tokens::default(),
            items: HashMap::new(),
            peers: HashMap::new(),
            ops: HashMap::new(),
            fanout_of: HashMap::new(),
            fanouts: HashMap::new(),
            next_sweep: None,
            local_hint: NodeId::from_bytes([0; 20]),
        }
    }

    fn sweep(&mut self, now: Instant) {
        let (il, pl) = (self.limits.item_lifetime, self.limits.peer_lifetime);
        let before = self.items.len();
        self.items
            .retain(|_, it| now.saturating_duration_since(it.refreshed) < il);
        let mut expired = (before - self.items.len()) as u64;
        for list in self.peers.values_mut() {
            let n = list.peers.len();
            list.peers
                .retain(|_, t| now.saturating_duration_since(*t) < pl);
            expired += (n - list.peers.len()) as u64;
        }
        self.peers.retain(|_, l| !l.peers.is_empty());
        self.shared.count(&self.shared.expired, expired);
        self.next_sweep = Some(now + Duration::from_secs(60));
    }

    // ---- server ----

    fn serve(
        &mut self,
        cx: &mut PluginCx<'_>,
        from: &Contact,
        method: &str,
        params: &Bytes,
    ) -> Reply {
        match method {
            "mainline.insecure_id" => return err(code::PROTOCOL, "invalid node ID"),
            "mainline.unknown" => return err(code::METHOD_UNKNOWN, "method unknown"),
            _ => {}
        }
        let Some(src) = source_ip(from) else {
            return err(code::SERVER, "no source address");
        };
        let Ok(a) = bencode::parse(params) else {
            return err(code::PROTOCOL, "invalid arguments");
        };
        self.tokens.refresh(cx.now(), cx.rng());
        let now = cx.now();
        match method {
            "mainline.get_peers" => {
                let Some(ih) = id_arg(&a, b"info_hash") else {
                    return err(code::PROTOCOL, "missing 'info_hash' key");
                };
                let mut r = Dict::new();
                r.bytes(b"token", &self.tokens.token(src.ip()));
                if let Some(list) = self.peers.get(&ih) {
                    let values: Vec<Vec<u8>> = list
                        .peers
                        .keys()
                        .filter(|p| p.is_ipv4() == src.is_ipv4())
                        .take(self.limits.max_values_per_reply)
                        .map(|p| compact_peer(*p))
                        .collect();
                    if !values.is_empty() {
                        r.bytes_list(b"values", values.iter().map(Vec::as_slice));
                    }
                }
                Reply::WithNodes(Bytes::from(r.finish()), cx.closest_answered(&ih, K))
            }
            "mainline.announce_peer" => {
                let Some(ih) = id_arg(&a, b"info_hash") else {
                    return err(code::PROTOCOL, "missing 'info_hash' key");
                };
                let Some(token) = a.get(b"token").and_then(Val::bytes) else {
                    return err(code::PROTOCOL, "missing 'token' key");
                };
                let implied = a.get(b"implied_port").and_then(Val::int).unwrap_or(0) != 0;
                let port = if implied {
                    src.port()
                } else {
                    match a.get(b"port").and_then(Val::int) {
                        Some(p @ 1..=65535) => p as u16,
                        Some(_) => return err(code::PROTOCOL, "invalid port"),
                        None => return err(code::PROTOCOL, "missing 'port' key"),
                    }
                };
                if !self.tokens.valid(src.ip(), token) {
                    return err(code::PROTOCOL, "invalid token");
                }
                self.store_peer(ih, SocketAddr::new(src.ip(), port), now);
                Reply::Result(Bytes::from_static(b"de"))
            }
            "mainline.get" => {
                let Some(target) = id_arg(&a, b"target") else {
                    return err(code::PROTOCOL, "missing 'target' key");
                };
                let want_seq = a.get(b"seq").and_then(Val::int);
                let mut r = Dict::new();
                r.bytes(b"token", &self.tokens.token(src.ip()));
                if let Some(it) = self.items.get(&target) {
                    match &it.mutable {
                        None => {
                            r.raw(b"v", &it.v);
                        }
                        Some(m) => {
                            r.int(b"seq", m.seq);
                            if want_seq.is_none_or(|s| s < m.seq) {
                                r.bytes(b"k", &m.k).bytes(b"sig", &m.sig).raw(b"v", &it.v);
                            }
                        }
                    }
                }
                Reply::WithNodes(Bytes::from(r.finish()), cx.closest_answered(&target, K))
            }
            "mainline.put" => {
                let reply = self.serve_put(&a, src.ip(), now);
                let c = if matches!(reply, Reply::Error(_)) {
                    &self.shared.puts_refused
                } else {
                    &self.shared.puts_stored
                };
                self.shared.count(c, 1);
                reply
            }
            "mainline.sample_infohashes" => {
                let Some(target) = id_arg(&a, b"target") else {
                    return err(code::PROTOCOL, "missing 'target' key");
                };
                let n = self.peers.len();
                let mut samples = Vec::new();
                if n > 0 {
                    let skip = cx.rng().random_range(0..n);
                    for ih in self.peers.keys().cycle().skip(skip).take(n.min(20)) {
                        samples.extend_from_slice(ih.as_bytes());
                    }
                }
                let mut r = Dict::new();
                r.int(b"interval", 300)
                    .int(b"num", n as i64)
                    .bytes(b"samples", &samples);
                Reply::WithNodes(Bytes::from(r.finish()), cx.closest_answered(&target, K))
            }
            _ => err(code::METHOD_UNKNOWN, "method unknown"),
        }
    }

    fn store_peer(&mut self, ih: NodeId, peer: SocketAddr, now: Instant) {
        if !self.peers.contains_key(&ih) && self.peers.len() >= self.limits.max_infohashes {
            // Full: the info-hash announced least recently makes room.
            if let Some(old) = self
                .peers
                .iter()
                .min_by_key(|(_, l)| l.last)
                .map(|(k, _)| *k)
            {
                self.peers.remove(&old);
            }
        }
        let list = self.peers.entry(ih).or_default();
        if !list.peers.contains_key(&peer) && list.peers.len() >= self.limits.max_peers_per_hash {
            if let Some(old) = list.peers.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                list.peers.remove(&old);
            }
        }
        list.peers.insert(peer, now);
        list.last = Some(now);
        self.shared.count(&self.shared.announces, 1);
    }

    /// The storing node's checks, in MAINLINE.md's recommended order.
    fn serve_put(&mut self, a: &Val<'_>, ip: IpAddr, now: Instant) -> Reply {
        // 1. Parse.
        let Some(token) = a.get(b"token").and_then(Val::bytes) else {
            return err(code::PROTOCOL, "missing 'token' key");
        };
        let Some(v) = a.get(b"v") else {
            return err(code::PROTOCOL, "missing 'v' key");
        };
        let v = bencode::raw_of(v);
        if v.len() > MAX_V {
            return err(code::MESSAGE_TOO_BIG, "message (v field) too big");
        }
        let salt = a.get(b"salt").and_then(Val::bytes).unwrap_or_default();
        if salt.len() > MAX_SALT {
            return err(code::SALT_TOO_BIG, "salt (salt field) too big");
        }
        let mutable = match a.get(b"k") {
            None => None,
            Some(k) => {
                let k: Option<[u8; 32]> = k.bytes().and_then(|b| b.try_into().ok());
                let sig: Option<[u8; 64]> = a
                    .get(b"sig")
                    .and_then(Val::bytes)
                    .and_then(|b| b.try_into().ok());
                let seq = a.get(b"seq").and_then(Val::int);
                match (k, sig, seq) {
                    (Some(k), Some(sig), Some(seq)) if seq >= 0 => Some(MutFields { k, seq, sig }),
                    (None, ..) => return err(code::PROTOCOL, "invalid value for 'k'"),
                    (_, None, _) => return err(code::PROTOCOL, "invalid value for 'sig'"),
                    _ => return err(code::PROTOCOL, "invalid value for 'seq'"),
                }
            }
        };
        // 2. Derive the target ourselves; a `target` argument must agree.
        let target = match &mutable {
            None => item::immutable_target(&v),
            Some(m) => item::mutable_target(&m.k, salt),
        };
        if let Some(t) = a.get(b"target") {
            if t.bytes().and_then(NodeId::from_slice) != Some(target) {
                return err(code::PROTOCOL, "target does not match the item");
            }
        }
        // 3. The token was handed to this IP in the last two rotations.
        if !self.tokens.valid(ip, token) {
            return err(code::PROTOCOL, "invalid token");
        }
        // 4. The signature, before looking at stored state.
        if let Some(m) = &mutable {
            if !item::verify(&m.k, salt, m.seq, &v, &m.sig) {
                return err(code::INVALID_SIGNATURE, "invalid signature");
            }
        }
        // 5. Against what is stored.
        let cas = a.get(b"cas").and_then(Val::int);
        if let Some(existing) = self.items.get_mut(&target) {
            match (&existing.mutable, &mutable) {
                (Some(old), Some(new)) => {
                    if cas.is_some_and(|c| c != old.seq) {
                        return err(
                            code::CAS_MISMATCH,
                            "CAS mismatch, re-read the value and retry",
                        );
                    }
                    if new.seq < old.seq {
                        return err(
                            code::SEQ_LESS_THAN_CURRENT,
                            "sequence number less than current",
                        );
                    }
                    if new.seq == old.seq {
                        if existing.v[..] == v[..] {
                            existing.refreshed = now;
                            return Reply::Result(Bytes::from_static(b"de"));
                        }
                        return err(
                            code::SEQ_LESS_THAN_CURRENT,
                            "sequence number not greater than current",
                        );
                    }
                }
                _ => {
                    // Immutable (the target is the value's hash): the same item again.
                    existing.refreshed = now;
                    return Reply::Result(Bytes::from_static(b"de"));
                }
            }
        }
        // 6. Store (making room by evicting the item farthest from our id, if it is farther).
        if !self.items.contains_key(&target) && self.items.len() >= self.limits.max_items {
            let local = self.local_hint;
            let far = self
                .items
                .keys()
                .max_by_key(|k| k.distance(&local))
                .copied();
            match far {
                Some(f) if f.distance(&local) > target.distance(&local) => {
                    self.items.remove(&f);
                    self.shared.count(&self.shared.items_evicted, 1);
                }
                _ => return err(code::SERVER, "item storage full"),
            }
        }
        self.items.insert(
            target,
            StoredItem {
                v: Bytes::from(v),
                mutable,
                refreshed: now,
            },
        );
        Reply::Result(Bytes::from_static(b"de"))
    }

    // ---- client ----

    fn command(&mut self, cx: &mut PluginCx<'_>, query: QueryId, cmd: Cmd) {
        let (target, kind, params) = match cmd {
            Cmd::Get {
                target,
                mutable,
                seq,
            } => {
                let mutable = mutable.map(|(k, salt)| (k, salt.to_vec()));
                let mut p = Dict::new();
                p.bytes(b"target", target.as_bytes());
                if let Some(s) = seq {
                    p.int(b"seq", s);
                }
                (
                    target,
                    OpKind::Get {
                        mutable,
                        finished: false,
                    },
                    p.finish(),
                )
            }
            Cmd::Put { v, mutable } => {
                let target = match &mutable {
                    None => item::immutable_target(&v),
                    Some((it, _)) => it.target(),
                };
                let mut p = Dict::new();
                p.bytes(b"target", target.as_bytes());
                (target, OpKind::Put { v, mutable }, p.finish())
            }
            Cmd::GetPeers { info_hash: ih } => {
                let mut p = Dict::new();
                p.bytes(b"info_hash", ih.as_bytes());
                (ih, OpKind::GetPeers, p.finish())
            }
            Cmd::Announce {
                info_hash: ih,
                port,
                implied_port,
            } => {
                let mut p = Dict::new();
                p.bytes(b"info_hash", ih.as_bytes());
                (ih, OpKind::Announce { port, implied_port }, p.finish())
            }
        };
        let method = match kind {
            OpKind::GetPeers | OpKind::Announce { .. } => "mainline.get_peers",
            _ => "mainline.get",
        };
        // A put or an announce places something on the k closest nodes: its lookup waits for
        // the slow ones among them rather than settling for the k quickest (which, under load,
        // can be the k closest minus the busiest ones). A get takes the first answers.
        let placement = matches!(kind, OpKind::Put { .. } | OpKind::Announce { .. });
        let lookup = if placement {
            cx.start_placement_lookup(target, method, Bytes::from(params))
        } else {
            cx.start_lookup(target, method, Bytes::from(params))
        };
        self.ops.insert(
            lookup,
            Op {
                cmd: query,
                target,
                kind,
                tokens: HashMap::new(),
                result: CmdResult::default(),
                peers: BTreeSet::new(),
            },
        );
    }

    fn lookup_answer(
        &mut self,
        cx: &mut PluginCx<'_>,
        lookup: QueryId,
        from: &Contact,
        result: &Bytes,
    ) {
        let Some(op) = self.ops.get_mut(&lookup) else {
            return;
        };
        let Ok(r) = bencode::parse(result) else {
            return;
        };
        op.result.answered += 1;
        let v = r.get(b"v").map(|v| bencode::raw_of(v));
        let had_item = v.is_some();
        if let Some(t) = r.get(b"token").and_then(Val::bytes) {
            if t.len() <= 64 {
                if let Some(a) = from.addrs.first() {
                    op.tokens.insert(
                        a.clone(),
                        (from.clone(), Bytes::copy_from_slice(t), had_item),
                    );
                }
            }
        }
        if let Some(vals) = r.get(b"values").and_then(Val::list) {
            for p in vals
                .iter()
                .filter_map(Val::bytes)
                .filter_map(parse_compact_addr)
            {
                if op.peers.len() < 10_000 && p.port() != 0 {
                    op.peers.insert(p);
                }
            }
        }
        let OpKind::Get { mutable, finished } = &mut op.kind else {
            return;
        };
        let Some(v) = v else {
            return;
        };
        if *finished {
            return;
        }
        match mutable {
            None => {
                // Immutable: the value must hash to the target; the first valid one is final.
                if item::immutable_target(&v) == op.target {
                    op.result.values += 1;
                    op.result.found = Some(Found {
                        v: Bytes::copy_from_slice(&v),
                        seq: None,
                        k: None,
                        sig: None,
                    });
                    *finished = true;
                    let res = op.result.clone();
                    let cmd = op.cmd;
                    cx.complete(cmd, Ok(PluginData::new(res)));
                } else {
                    op.result.rejected += 1;
                }
            }
            Some((pk, salt)) => {
                let k: Option<[u8; 32]> = r
                    .get(b"k")
                    .and_then(Val::bytes)
                    .and_then(|b| b.try_into().ok());
                let sig: Option<[u8; 64]> = r
                    .get(b"sig")
                    .and_then(Val::bytes)
                    .and_then(|b| b.try_into().ok());
                let seq = r.get(b"seq").and_then(Val::int);
                let ok = match (k, sig, seq) {
                    (Some(k), Some(sig), Some(seq)) => {
                        k == *pk
                            && item::mutable_target(&k, salt) == op.target
                            && item::verify(&k, salt, seq, &v, &sig)
                    }
                    _ => false,
                };
                if !ok {
                    op.result.rejected += 1;
                    return;
                }
                let (Some(seq), Some(sig)) = (seq, sig) else {
                    return;
                };
                op.result.values += 1;
                let better = match &op.result.found {
                    None => true,
                    Some(f) => {
                        let cur = f.seq.unwrap_or(i64::MIN);
                        // Highest seq wins; equal seq: the larger value bytes (a fixed rule).
                        seq > cur || (seq == cur && v[..] > f.v[..])
                    }
                };
                if better {
                    op.result.found = Some(Found {
                        v: Bytes::copy_from_slice(&v),
                        seq: Some(seq),
                        k: Some(*pk),
                        sig: Some(sig),
                    });
                }
            }
        }
    }

    fn lookup_done(&mut self, cx: &mut PluginCx<'_>, lookup: QueryId, closest: &[Contact]) {
        let Some(mut op) = self.ops.remove(&lookup) else {
            return;
        };
        op.result.closest = closest.iter().map(|c| c.id).collect();
        let enforce = self.shared.limits.enforce_bep42;
        let secure = |c: &Contact| source_ip(c).is_none_or(|s| bep42::is_secure(&c.id, s.ip()));
        match op.kind {
            OpKind::Get { finished: true, .. } => {}
            OpKind::Get { .. } => {
                let res = op.result;
                cx.complete(op.cmd, Ok(PluginData::new(res)));
            }
            OpKind::GetPeers => {
                op.result.peers = op.peers.into_iter().collect();
                let res = op.result;
                cx.complete(op.cmd, Ok(PluginData::new(res)));
            }
            OpKind::Put { .. } | OpKind::Announce { .. } => {
                // The K closest nodes that answered and gave a token (BEP42-valid ones only,
                // when enforcing; valid ones first otherwise), each node once and ranked by the
                // id it answered with. Not by the lookup's `closest`, which ranks the ids that
                // were asked for: routing tables hold ids their node never answered with (the
                // mainline crate sends, besides each query, a ping under a random id, and the
                // nodes it pings list it under that id), so one node could fill several of the
                // K places, at distances that are not its own, and a put could land on a few
                // nodes of one implementation only.
                let mut chosen: Vec<&(Contact, Bytes, bool)> = op
                    .tokens
                    .values()
                    .filter(|(c, ..)| !enforce || secure(c))
                    .collect();
                chosen.sort_by_key(|(c, ..)| (!secure(c), c.id.distance(&op.target)));
                let mut ids = HashSet::new();
                chosen.retain(|(c, ..)| ids.insert(c.id));
                chosen.truncate(K);
                let mut sent = 0;
                for (c, token, had_item) in chosen {
                    let mut p = Dict::new();
                    let method = match &op.kind {
                        OpKind::Put { v, mutable } => {
                            p.bytes(b"token", token)
                                .raw(b"v", v)
                                .bytes(b"target", op.target.as_bytes());
                            if let Some((it, cas)) = mutable {
                                p.bytes(b"k", &it.pubkey)
                                    .int(b"seq", it.seq)
                                    .bytes(b"sig", &it.sig);
                                if !it.salt.is_empty() {
                                    p.bytes(b"salt", &it.salt);
                                }
                                // cas only to nodes that returned the item (BEP44).
                                if let (Some(cas), true) = (cas, *had_item) {
                                    p.int(b"cas", *cas);
                                }
                            }
                            "mainline.put"
                        }
                        OpKind::Announce { port, implied_port } => {
                            p.bytes(b"info_hash", op.target.as_bytes())
                                .bytes(b"token", token)
                                .int(b"port", i64::from(*port));
                            if *implied_port {
                                p.int(b"implied_port", 1);
                            }
                            "mainline.announce_peer"
                        }
                        _ => unreachable!("only puts and announces fan out"),
                    };
                    let rid = cx.send_request(c.clone(), method, Bytes::from(p.finish()));
                    self.fanout_of.insert(rid, op.cmd);
                    sent += 1;
                }
                op.result.asked = sent;
                if sent == 0 {
                    let res = op.result;
                    cx.complete(op.cmd, Ok(PluginData::new(res)));
                } else {
                    self.fanouts.insert(
                        op.cmd,
                        Fanout {
                            cmd: op.cmd,
                            outstanding: sent,
                            result: op.result,
                        },
                    );
                }
            }
        }
    }

    fn fanout_answer(&mut self, cx: &mut PluginCx<'_>, id: RequestId, rsp: PluginResponse) {
        let Some(cmd) = self.fanout_of.remove(&id) else {
            return;
        };
        let Some(f) = self.fanouts.get_mut(&cmd) else {
            return;
        };
        match rsp {
            PluginResponse::Ok { .. } => f.result.stored_on += 1,
            PluginResponse::Remote(e) => f.result.errors.push((e.code, e.message)),
            _ => f.result.timeouts += 1,
        }
        f.outstanding -= 1;
        if f.outstanding == 0 {
            if let Some(f) = self.fanouts.remove(&cmd) {
                cx.complete(f.cmd, Ok(PluginData::new(f.result)));
            }
        }
    }
}

impl Plugin for Bep44Plugin {
    fn namespace(&self) -> &'static str {
        "mainline"
    }

    fn on_request(
        &mut self,
        cx: &mut PluginCx<'_>,
        from: &Contact,
        method: &str,
        params: &Bytes,
    ) -> Reply {
        self.local_hint = cx.local().id;
        if self.next_sweep.is_none() {
            self.next_sweep = Some(cx.now() + Duration::from_secs(60));
        }
        self.serve(cx, from, method, params)
    }

    fn on_command(&mut self, cx: &mut PluginCx<'_>, query: QueryId, input: PluginData) {
        match input.downcast_ref::<Cmd>() {
            Some(cmd) => self.command(cx, query, cmd.clone()),
            None => cx.complete(
                query,
                Err(QueryError::Remote(RpcError::new(
                    RpcError::INVALID_PARAMS,
                    format!(
                        "mainline commands come from the Mainline handle, not a {}",
                        input.type_name()
                    ),
                ))),
            ),
        }
    }

    fn on_response(&mut self, cx: &mut PluginCx<'_>, id: RequestId, response: PluginResponse) {
        self.fanout_answer(cx, id, response);
    }

    fn on_lookup_response(
        &mut self,
        cx: &mut PluginCx<'_>,
        query: QueryId,
        from: &Contact,
        result: &Bytes,
    ) {
        self.lookup_answer(cx, query, from, result);
    }

    fn on_lookup_done(
        &mut self,
        cx: &mut PluginCx<'_>,
        query: QueryId,
        closest: &[Contact],
        _stats: &LookupStats,
    ) {
        self.lookup_done(cx, query, closest);
    }

    fn on_timeout(&mut self, cx: &mut PluginCx<'_>) {
        self.sweep(cx.now());
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }
}
