//! The KRPC codec (BEP5): bencoded dictionaries over UDP, mapped to kad-core's typed messages.
//!
//! - `ping` and `find_node` become the engine's `Ping` and `FindNode`; `get_peers`,
//!   `announce_peer`, `get`, `put` and `sample_infohashes` become `mainline.<name>` plugin
//!   methods whose params are the raw `a` dictionary (handled by [`Bep44Plugin`](crate::Bep44Plugin)).
//! - KRPC responses do not say which query they answer, so the codec remembers the method of each
//!   request it encoded, keyed by transaction id and peer, and forgets it after a minute.
//! - Input: any transaction id length (echoed verbatim), unknown keys ignored, `ro` read,
//!   `ip` voted on; anything not canonical bencode is dropped without a reply.
//! - Output: canonical (sorted keys), 4-byte transaction ids, a 4-byte `v`, the requester's
//!   address as `ip` in every response and error, `ro=1` on queries of a read-only node.
//! - Before parsing: a per-source-IP token bucket. After encoding: a reply byte budget.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use kad_core::{
    Body, Codec, CodecCx, Contact, DecodeError, EncodeError, Message, NodeId, PeerAddr, Request,
    Response, RpcError, TxnId,
};

use crate::bencode::{self, Dict, Val};
use crate::bep42::{self, IpVoter};

/// Our client version, sent as `v` on every message: "KD" and version 0.1.
pub const CLIENT_VERSION: [u8; 4] = *b"KD\x00\x01";

/// KRPC error codes (BEP5 and BEP44).
pub mod code {
    /// Generic error.
    pub const GENERIC: i64 = 201;
    /// Server error.
    pub const SERVER: i64 = 202;
    /// Protocol error: malformed packet, invalid argument, bad token.
    pub const PROTOCOL: i64 = 203;
    /// Method unknown.
    pub const METHOD_UNKNOWN: i64 = 204;
    /// BEP44: `v` too big.
    pub const MESSAGE_TOO_BIG: i64 = 205;
    /// BEP44: invalid signature.
    pub const INVALID_SIGNATURE: i64 = 206;
    /// BEP44: salt too big.
    pub const SALT_TOO_BIG: i64 = 207;
    /// BEP44: CAS mismatch.
    pub const CAS_MISMATCH: i64 = 301;
    /// BEP44: sequence number less than current.
    pub const SEQ_LESS_THAN_CURRENT: i64 = 302;
}

/// Which address families a requester wants nodes for (BEP32 `want`).
const WANT_N4: u8 = 1;
const WANT_N6: u8 = 2;

/// Limits and switches of the codec (shared with the plugin and the handle).
#[derive(Debug, Clone)]
pub struct KrpcLimits {
    /// Datagrams per second accepted from one source IP before parsing (0: no limit).
    pub per_ip_rate: u32,
    /// Burst allowed above the rate, in datagrams.
    pub per_ip_burst: u32,
    /// Bytes per second of responses and errors we send (0: no budget).
    pub reply_budget: u64,
    /// Answer queries from nodes whose id does not match their IP with 203 and never learn them
    /// (BEP42 enforcement).
    pub enforce_bep42: bool,
}

impl Default for KrpcLimits {
    fn default() -> Self {
        Self {
            per_ip_rate: 1000,
            per_ip_burst: 2000,
            reply_budget: 32 * 1024 * 1024,
            enforce_bep42: false,
        }
    }
}

/// Counters and the external-address vote, shared by the codec, the plugin and the handle.
#[derive(Debug)]
pub struct KrpcShared {
    /// The limits in force.
    pub limits: KrpcLimits,
    /// Datagrams dropped by the per-IP limiter (also in `Stats::dropped_rate_limited`).
    pub rate_limited: AtomicU64,
    /// Replies not sent because the reply budget was spent.
    pub budget_dropped: AtomicU64,
    /// Queries from ids that fail BEP42 for their address (answered with 203 when enforcing).
    pub insecure_ids: AtomicU64,
    /// Responses that carried an `ip` we could read.
    pub ip_reports: AtomicU64,
    /// Items stored or refreshed by peers' `put`s.
    pub puts_stored: AtomicU64,
    /// Peers' `put`s refused with an error.
    pub puts_refused: AtomicU64,
    /// Peers stored by `announce_peer`.
    pub announces: AtomicU64,
    /// Items evicted to make room for closer ones.
    pub items_evicted: AtomicU64,
    /// Items and peers dropped by expiry.
    pub expired: AtomicU64,
    /// The external-address vote.
    pub voter: Mutex<IpVoter>,
}

impl KrpcShared {
    /// Shared state with these limits.
    pub fn new(limits: KrpcLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            rate_limited: AtomicU64::new(0),
            budget_dropped: AtomicU64::new(0),
            insecure_ids: AtomicU64::new(0),
            ip_reports: AtomicU64::new(0),
            puts_stored: AtomicU64::new(0),
            puts_refused: AtomicU64::new(0),
            announces: AtomicU64::new(0),
            items_evicted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            voter: Mutex::new(IpVoter::new(256, 3)),
        })
    }
    /// Adds `n` to one of the counters.
    pub fn count(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    /// Our external IP as most responders report it, once enough did.
    pub fn external_ip(&self) -> Option<IpAddr> {
        self.voter.lock().ok()?.external_ip()
    }
}

struct Outstanding {
    method: &'static str,
    expected: Option<NodeId>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// The KRPC codec. One per node.
pub struct KrpcCodec {
    shared: Arc<KrpcShared>,
    out: HashMap<(Bytes, PeerAddr), Outstanding>,
    out_order: VecDeque<(u64, Bytes, PeerAddr)>,
    wants: HashMap<PeerAddr, u8>,
    buckets: HashMap<IpAddr, Bucket>,
    budget: f64,
    budget_ms: u64,
}

impl std::fmt::Debug for KrpcCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KrpcCodec")
            .field("outstanding", &self.out.len())
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

/// Requests remembered for at most this long (longer than any request timeout).
const OUT_TTL_MS: u64 = 60_000;
/// At most this many remembered requests (the engine's in-flight limit is far lower).
const OUT_CAP: usize = 65_536;
/// At most this many source IPs tracked by the limiter; idle ones are forgotten first.
const BUCKETS_CAP: usize = 65_536;
/// Largest datagram accepted (IPv4 UDP payload limit).
const MAX_DATAGRAM: usize = 65_507;

impl KrpcCodec {
    /// A codec sharing counters and limits with `shared`.
    pub fn new(shared: Arc<KrpcShared>) -> Self {
        Self {
            shared,
            out: HashMap::new(),
            out_order: VecDeque::new(),
            wants: HashMap::new(),
            buckets: HashMap::new(),
            budget: 0.0,
            budget_ms: 0,
        }
    }

    fn allow_source(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        let limits = &self.shared.limits;
        if limits.per_ip_rate == 0 {
            return true;
        }
        let (rate, burst) = (
            f64::from(limits.per_ip_rate),
            f64::from(limits.per_ip_burst.max(1)),
        );
        if self.buckets.len() >= BUCKETS_CAP && !self.buckets.contains_key(&ip) {
            // Forget sources idle for 10 s; if that frees nothing, start over (bounded memory).
            self.buckets
                .retain(|_, b| now_ms.saturating_sub(b.last_ms) < 10_000);
            if self.buckets.len() >= BUCKETS_CAP {
                self.buckets.clear();
            }
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last_ms: now_ms,
        });
        let dt = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.last_ms = now_ms;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn spend_budget(&mut self, bytes: usize, now_ms: u64) -> bool {
        let rate = self.shared.limits.reply_budget;
        if rate == 0 {
            return true;
        }
        // Three seconds of burst, like libtorrent's upload quota.
        let cap = rate as f64 * 3.0;
        if self.budget_ms == 0 {
            self.budget = cap;
        } else {
            let dt = now_ms.saturating_sub(self.budget_ms) as f64 / 1000.0;
            self.budget = (self.budget + dt * rate as f64).min(cap);
        }
        self.budget_ms = now_ms;
        if self.budget >= bytes as f64 {
            self.budget -= bytes as f64;
            true
        } else {
            false
        }
    }

    fn remember(
        &mut self,
        txn: &Bytes,
        to: &PeerAddr,
        method: &'static str,
        expected: Option<NodeId>,
        now_ms: u64,
    ) {
        while let Some((at, _, _)) = self.out_order.front() {
            if now_ms.saturating_sub(*at) < OUT_TTL_MS && self.out_order.len() < OUT_CAP {
                break;
            }
            if let Some((_, t, p)) = self.out_order.pop_front() {
                self.out.remove(&(t, p));
            }
        }
        self.out
            .insert((txn.clone(), to.clone()), Outstanding { method, expected });
        self.out_order.push_back((now_ms, txn.clone(), to.clone()));
    }
}

fn compact_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

/// Parses a compact peer (6 or 18 bytes).
pub fn parse_compact_addr(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        6 => {
            let ip: [u8; 4] = b[..4].try_into().ok()?;
            Some(SocketAddr::new(
                IpAddr::from(ip),
                u16::from_be_bytes([b[4], b[5]]),
            ))
        }
        18 => {
            let ip: [u8; 16] = b[..16].try_into().ok()?;
            Some(SocketAddr::new(
                IpAddr::from(ip),
                u16::from_be_bytes([b[16], b[17]]),
            ))
        }
        _ => None,
    }
}

/// Encodes a socket address as a compact peer (6 or 18 bytes); IPv4-mapped IPv6 becomes IPv4.
pub fn compact_peer(a: SocketAddr) -> Vec<u8> {
    let a = unmap(a);
    let mut v = Vec::with_capacity(18);
    compact_addr(&mut v, a);
    v
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// Parses `nodes` (26-byte entries) or `nodes6` (38-byte entries); skips port 0 and a trailing
/// partial entry, never limits the count.
pub fn parse_nodes(b: &[u8], v6: bool) -> Vec<Contact> {
    let size = if v6 { 38 } else { 26 };
    b.chunks_exact(size)
        .filter_map(|c| {
            let id = NodeId::from_slice(&c[..20])?;
            let addr = parse_compact_addr(&c[20..])?;
            (addr.port() != 0).then(|| Contact::new(id, PeerAddr::Udp(addr)))
        })
        .collect()
}

/// Writes `nodes` and/or `nodes6` for these contacts into `d`, per the `want` flags.
fn write_nodes(d: &mut Dict, nodes: &[Contact], want: u8) {
    let (mut n4, mut n6) = (Vec::new(), Vec::new());
    for c in nodes {
        let Some(a) = c.addrs.iter().find_map(|a| match a {
            PeerAddr::Udp(s) => Some(unmap(*s)),
            _ => None,
        }) else {
            continue;
        };
        if a.port() == 0 {
            continue;
        }
        let buf = if a.is_ipv4() { &mut n4 } else { &mut n6 };
        buf.extend_from_slice(c.id.as_bytes());
        compact_addr(buf, a);
    }
    if want & WANT_N4 != 0 && !n4.is_empty() {
        d.bytes(b"nodes", &n4);
    }
    if want & WANT_N6 != 0 && !n6.is_empty() {
        d.bytes(b"nodes6", &n6);
    }
}

/// Maps engine and plugin error codes to KRPC codes.
fn wire_code(c: i64) -> i64 {
    match c {
        RpcError::METHOD_NOT_FOUND => code::METHOD_UNKNOWN,
        RpcError::INVALID_PARAMS | RpcError::REJECTED => code::PROTOCOL,
        RpcError::INTERNAL | RpcError::STORE_FULL => code::SERVER,
        RpcError::REFUSED => code::GENERIC,
        c if c > 0 => c,
        _ => code::GENERIC,
    }
}

fn method_name(q: &[u8]) -> Option<&'static str> {
    Some(match q {
        b"ping" => "ping",
        b"find_node" => "find_node",
        b"get_peers" => "get_peers",
        b"announce_peer" => "announce_peer",
        b"get" => "get",
        b"put" => "put",
        b"sample_infohashes" => "sample_infohashes",
        _ => return None,
    })
}

fn malformed(s: &str) -> DecodeError {
    DecodeError::Malformed(s.to_owned())
}

impl Codec for KrpcCodec {
    fn encode(&mut self, msg: &Message, cx: &mut CodecCx<'_>) -> Result<Bytes, EncodeError> {
        let mut top = Dict::new();
        top.bytes(b"t", &msg.txn.0).bytes(b"v", &CLIENT_VERSION);
        match &msg.body {
            Body::Request(req) => {
                let mut a = Dict::new();
                let method: &'static str = match req {
                    Request::Ping => "ping",
                    Request::FindNode { target } => {
                        a.bytes(b"target", target.as_bytes());
                        "find_node"
                    }
                    Request::Custom { method, params } => {
                        let name = method
                            .strip_prefix("mainline.")
                            .and_then(|m| method_name(m.as_bytes()))
                            .ok_or_else(|| {
                                EncodeError::Unsupported(format!("KRPC has no method {method}"))
                            })?;
                        a.merge_encoded(params).map_err(|e| {
                            EncodeError::Unsupported(format!("params of {method}: {e}"))
                        })?;
                        name
                    }
                    other => {
                        return Err(EncodeError::Unsupported(format!(
                            "KRPC has no {} request",
                            other.method()
                        )));
                    }
                };
                a.bytes(b"id", msg.sender.id.as_bytes());
                top.raw(b"a", &a.finish())
                    .bytes(b"q", method.as_bytes())
                    .bytes(b"y", b"q");
                if msg.read_only {
                    top.int(b"ro", 1);
                }
                if let Some(to) = cx.peer {
                    self.remember(&msg.txn.0, to, method, msg.recipient, cx.unix_ms);
                }
            }
            Body::Response(rsp) => {
                let want =
                    match cx.peer {
                        Some(p) => self.wants.remove(p).unwrap_or_else(|| {
                            match p.socket_addr().map(unmap) {
                                Some(SocketAddr::V6(_)) => WANT_N6,
                                _ => WANT_N4,
                            }
                        }),
                        None => WANT_N4 | WANT_N6,
                    };
                let mut r = Dict::new();
                match rsp {
                    Response::Pong => {}
                    Response::Nodes { nodes } => write_nodes(&mut r, nodes, want),
                    Response::Custom { result, nodes } => {
                        r.merge_encoded(result)
                            .map_err(|e| EncodeError::Unsupported(format!("result: {e}")))?;
                        write_nodes(&mut r, nodes, want);
                    }
                    _ => return Err(EncodeError::Unsupported("KRPC has no such response".into())),
                }
                r.bytes(b"id", msg.sender.id.as_bytes());
                top.raw(b"r", &r.finish()).bytes(b"y", b"r");
                if let Some(a) = cx.peer.and_then(PeerAddr::socket_addr) {
                    top.bytes(b"ip", &compact_peer(a));
                }
            }
            Body::Error(e) => {
                let mut l = vec![b'l'];
                bencode::put_int(&mut l, wire_code(e.code));
                bencode::put_bytes(&mut l, e.message.as_bytes());
                l.push(b'e');
                top.raw(b"e", &l).bytes(b"y", b"e");
                if let Some(p) = cx.peer {
                    self.wants.remove(p);
                }
                if let Some(a) = cx.peer.and_then(PeerAddr::socket_addr) {
                    top.bytes(b"ip", &compact_peer(a));
                }
            }
            _ => return Err(EncodeError::Unsupported("unknown body".into())),
        }
        let out = top.finish();
        if !matches!(msg.body, Body::Request(_)) && !self.spend_budget(out.len(), cx.unix_ms) {
            self.shared.budget_dropped.fetch_add(1, Ordering::Relaxed);
            return Err(EncodeError::Unsupported("reply budget spent".into()));
        }
        Ok(Bytes::from(out))
    }

    fn decode(&mut self, bytes: &[u8], cx: &mut CodecCx<'_>) -> Result<Message, DecodeError> {
        let peer = cx.peer.cloned();
        let src = peer.as_ref().and_then(PeerAddr::socket_addr).map(unmap);
        if let Some(s) = src {
            if !self.allow_source(s.ip(), cx.unix_ms) {
                self.shared.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(DecodeError::RateLimited);
            }
        }
        // Cheap filters first (libtorrent's): a KRPC message is a dictionary of some size.
        if bytes.len() < 12 || bytes[0] != b'd' || bytes[bytes.len() - 1] != b'e' {
            return Err(malformed("not a KRPC dictionary"));
        }
        if bytes.len() > MAX_DATAGRAM {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_DATAGRAM,
            });
        }
        let top = bencode::parse(bytes).map_err(|e| DecodeError::Malformed(e.0))?;
        let t = top
            .get(b"t")
            .and_then(Val::bytes)
            .ok_or_else(|| malformed("no t"))?;
        if t.is_empty() || t.len() > 64 {
            return Err(malformed("bad t"));
        }
        let txn = TxnId(Bytes::copy_from_slice(t));
        let y = top
            .get(b"y")
            .and_then(Val::bytes)
            .ok_or_else(|| malformed("no y"))?;
        let ro = top.get(b"ro").and_then(Val::int) == Some(1);
        let contact = |id: NodeId| match &peer {
            Some(p) => Contact::new(id, p.clone()),
            None => Contact::with_addrs(id, Vec::new()),
        };
        match y {
            b"q" => {
                let q = top
                    .get(b"q")
                    .and_then(Val::bytes)
                    .ok_or_else(|| malformed("no q"))?;
                let a = top.get(b"a").ok_or_else(|| malformed("no a"))?;
                let (Val::Dict(_, a_raw), Some(id)) = (
                    a,
                    a.get(b"id")
                        .and_then(Val::bytes)
                        .and_then(NodeId::from_slice),
                ) else {
                    return Err(malformed("no a.id"));
                };
                if let Some(w) = a.get(b"want").and_then(Val::list) {
                    let mut flags = 0;
                    for x in w {
                        match x.bytes() {
                            Some(b"n4") => flags |= WANT_N4,
                            Some(b"n6") => flags |= WANT_N6,
                            _ => {}
                        }
                    }
                    if let (Some(p), true) = (&peer, flags != 0) {
                        if self.wants.len() >= 4096 {
                            self.wants.clear();
                        }
                        self.wants.insert(p.clone(), flags);
                    }
                }
                let mut read_only = ro;
                let secure = src.is_none_or(|s| bep42::is_secure(&id, s.ip()));
                let req = if !secure && self.shared.limits.enforce_bep42 {
                    self.shared.insecure_ids.fetch_add(1, Ordering::Relaxed);
                    read_only = true;
                    Request::Custom {
                        method: "mainline.insecure_id".into(),
                        params: Bytes::new(),
                    }
                } else {
                    if !secure {
                        self.shared.insecure_ids.fetch_add(1, Ordering::Relaxed);
                    }
                    let target =
                        |key: &[u8]| a.get(key).and_then(Val::bytes).and_then(NodeId::from_slice);
                    match method_name(q) {
                        Some("ping") => Request::Ping,
                        Some("find_node") => match target(b"target") {
                            Some(target) => Request::FindNode { target },
                            // The engine answers a core method with bad params with 203.
                            None => Request::Custom {
                                method: "FIND_NODE".into(),
                                params: Bytes::new(),
                            },
                        },
                        Some(m) => Request::Custom {
                            method: format!("mainline.{m}"),
                            params: Bytes::copy_from_slice(a_raw),
                        },
                        // libtorrent's forward-compatibility rule: an unknown query with a
                        // target or info_hash is answered like find_node.
                        None => match target(b"target").or_else(|| target(b"info_hash")) {
                            Some(target) => Request::FindNode { target },
                            None => Request::Custom {
                                method: "mainline.unknown".into(),
                                params: Bytes::new(),
                            },
                        },
                    }
                };
                Ok(Message {
                    txn,
                    sender: contact(id),
                    // KRPC does not name the recipient: a query that reached us is for us.
                    recipient: Some(cx.local_id),
                    read_only,
                    observed: None,
                    body: Body::Request(req),
                })
            }
            b"r" => {
                let r = top.get(b"r").ok_or_else(|| malformed("no r"))?;
                let (Val::Dict(_, r_raw), Some(id)) = (
                    r,
                    r.get(b"id")
                        .and_then(Val::bytes)
                        .and_then(NodeId::from_slice),
                ) else {
                    return Err(malformed("no r.id"));
                };
                let seen = top
                    .get(b"ip")
                    .and_then(Val::bytes)
                    .and_then(parse_compact_addr);
                if let (Some(ip), Some(s)) = (seen, src) {
                    self.shared.ip_reports.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut v) = self.shared.voter.lock() {
                        v.vote(s.ip(), ip.ip());
                    }
                }
                let mut nodes = r
                    .get(b"nodes")
                    .and_then(Val::bytes)
                    .map(|b| parse_nodes(b, false))
                    .unwrap_or_default();
                if let Some(b) = r.get(b"nodes6").and_then(Val::bytes) {
                    nodes.extend(parse_nodes(b, true));
                }
                let method = peer
                    .as_ref()
                    .and_then(|p| self.out.remove(&(txn.0.clone(), p.clone())))
                    .map(|o| o.method);
                let body = match method {
                    Some("ping") => Response::Pong,
                    Some("find_node") => Response::Nodes { nodes },
                    _ => Response::Custom {
                        result: Bytes::copy_from_slice(r_raw),
                        nodes,
                    },
                };
                // BEP42 enforcement: responses from ids that do not match their address count
                // as answers, but their sender is not learned.
                let secure = src.is_none_or(|s| bep42::is_secure(&id, s.ip()));
                Ok(Message {
                    txn,
                    sender: contact(id),
                    recipient: Some(cx.local_id),
                    read_only: ro || (!secure && self.shared.limits.enforce_bep42),
                    observed: seen.map(PeerAddr::Udp),
                    body: Body::Response(body),
                })
            }
            b"e" => {
                let e = top
                    .get(b"e")
                    .and_then(Val::list)
                    .ok_or_else(|| malformed("no e"))?;
                let code = e.first().and_then(Val::int).unwrap_or(code::GENERIC);
                let message = e
                    .get(1)
                    .and_then(Val::bytes)
                    .map(|m| String::from_utf8_lossy(&m[..m.len().min(256)]).into_owned())
                    .unwrap_or_default();
                // Errors carry no id: use the one we asked, and never learn from an error.
                let expected = peer
                    .as_ref()
                    .and_then(|p| self.out.remove(&(txn.0.clone(), p.clone())))
                    .and_then(|o| o.expected);
                Ok(Message {
                    txn,
                    sender: contact(expected.unwrap_or(NodeId::from_bytes([0; 20]))),
                    recipient: Some(cx.local_id),
                    read_only: true,
                    observed: None,
                    body: Body::Error(RpcError::new(code, message)),
                })
            }
            _ => Err(malformed("unknown y")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn id(s: &[u8; 20]) -> NodeId {
        NodeId::from_bytes(*s)
    }

    fn codec() -> KrpcCodec {
        KrpcCodec::new(KrpcShared::new(KrpcLimits::default()))
    }

    fn with_cx<R>(
        peer: Option<&PeerAddr>,
        local: NodeId,
        f: impl FnOnce(&mut CodecCx<'_>) -> R,
    ) -> R {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut cx = CodecCx {
            unix_ms: 1_000_000,
            local_id: local,
            max_skew_ms: 0,
            rng: &mut rng,
            peer,
            proven: None,
        };
        f(&mut cx)
    }

    fn strip_v(b: &[u8]) -> Vec<u8> {
        // Our messages carry `1:v4:KD\0\x01` (sorted between `t` and `y`); the BEP examples do not.
        let v = b"1:v4:KD\x00\x01";
        let at = b.windows(v.len()).position(|w| w == v).expect("v present");
        [&b[..at], &b[at + v.len()..]].concat()
    }

    fn msg(txn: &[u8], sender: NodeId, body: Body) -> Message {
        Message {
            txn: TxnId(Bytes::copy_from_slice(txn)),
            sender: Contact::with_addrs(sender, Vec::new()),
            recipient: None,
            read_only: false,
            observed: None,
            body,
        }
    }

    #[test]
    fn bep5_examples_byte_for_byte() {
        let a = id(b"abcdefghij0123456789");
        let m = id(b"mnopqrstuvwxyz123456");
        let mut c = codec();
        let peer = PeerAddr::Udp("127.0.0.1:6881".parse().unwrap());
        let enc = |c: &mut KrpcCodec, msg: &Message, peer: Option<&PeerAddr>| {
            with_cx(peer, a, |cx| c.encode(msg, cx)).unwrap()
        };
        let ping = msg(b"aa", a, Body::Request(Request::Ping));
        assert_eq!(
            strip_v(&enc(&mut c, &ping, None)),
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"
        );
        let fq = msg(b"aa", a, Body::Request(Request::FindNode { target: m }));
        assert_eq!(
            strip_v(&enc(&mut c, &fq, None)),
            &b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe"[..]
        );
        let pong = msg(b"aa", m, Body::Response(Response::Pong));
        assert_eq!(
            strip_v(&enc(&mut c, &pong, None)),
            b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re"
        );
        let err = msg(
            b"aa",
            m,
            Body::Error(RpcError::new(201, "A Generic Error Ocurred")),
        );
        assert_eq!(
            strip_v(&enc(&mut c, &err, None)),
            b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee"
        );
        // `ip` goes at the top level of responses, with the requester's address.
        assert_eq!(
            strip_v(&enc(&mut c, &pong, Some(&peer))),
            b"d2:ip6:\x7f\x00\x00\x01\x1a\xe11:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re"
        );
        // A plugin request: params are the `a` dictionary without `id`.
        let gp = msg(
            b"aa",
            a,
            Body::Request(Request::Custom {
                method: "mainline.get_peers".into(),
                params: Bytes::from_static(b"d9:info_hash20:mnopqrstuvwxyz123456e"),
            }),
        );
        assert_eq!(
            strip_v(&enc(&mut c, &gp, None)),
            &b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe"[..]
        );
        let mut ro = msg(b"aa", a, Body::Request(Request::Ping));
        ro.read_only = true;
        assert!(strip_v(&enc(&mut c, &ro, None)).ends_with(b"1:q4:ping2:roi1e1:t2:aa1:y1:qe"));
    }

    #[test]
    fn decodes_queries_with_any_txn_length_unknown_keys_ro_and_want() {
        let local = id(b"LLLLLLLLLLLLLLLLLLLL");
        let peer = PeerAddr::Udp("127.0.0.1:7000".parse().unwrap());
        let mut c = codec();
        let raw = b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:wantl2:n42:n6e5:zzzzzi1ee1:q9:find_node2:roi1e1:t5:12345\
1:y1:q1:zi3ee";
        let m = with_cx(Some(&peer), local, |cx| c.decode(raw, cx)).unwrap();
        assert_eq!(&m.txn.0[..], b"12345");
        assert!(m.read_only);
        assert_eq!(m.sender.addrs[0], peer);
        assert!(matches!(m.body, Body::Request(Request::FindNode { .. })));
        // The response goes out with both families wanted; the txn is echoed verbatim.
        let v6 = Contact::new(
            id(b"66666666666666666666"),
            PeerAddr::Udp("[2001:db8::1]:9".parse().unwrap()),
        );
        let v4 = Contact::new(
            id(b"44444444444444444444"),
            PeerAddr::Udp("10.0.0.1:9".parse().unwrap()),
        );
        let rsp = Message {
            txn: m.txn.clone(),
            sender: Contact::with_addrs(local, Vec::new()),
            recipient: Some(m.sender.id),
            read_only: false,
            observed: None,
            body: Body::Response(Response::Nodes {
                nodes: vec![v4.clone(), v6.clone()],
            }),
        };
        let out = with_cx(Some(&peer), local, |cx| c.encode(&rsp, cx)).unwrap();
        let parsed = bencode::parse(&out).unwrap();
        let r = parsed.get(b"r").unwrap();
        assert_eq!(r.get(b"nodes").unwrap().bytes().unwrap().len(), 26);
        assert_eq!(r.get(b"nodes6").unwrap().bytes().unwrap().len(), 38);
        assert_eq!(parsed.get(b"t").unwrap().bytes().unwrap(), b"12345");
        // Without want, an IPv4 requester gets only `nodes`.
        let out = with_cx(Some(&peer), local, |cx| c.encode(&rsp, cx)).unwrap();
        assert!(
            bencode::parse(&out)
                .unwrap()
                .get(b"r")
                .unwrap()
                .get(b"nodes6")
                .is_none()
        );
    }

    #[test]
    fn responses_are_typed_by_the_request_they_answer() {
        let local = id(b"LLLLLLLLLLLLLLLLLLLL");
        let remote = id(b"RRRRRRRRRRRRRRRRRRRR");
        let peer = PeerAddr::Udp("127.0.0.1:7001".parse().unwrap());
        let mut c = codec();
        let mut q = msg(
            b"\x00\x00\x00\x01",
            local,
            Body::Request(Request::FindNode { target: remote }),
        );
        q.recipient = Some(remote);
        with_cx(Some(&peer), local, |cx| c.encode(&q, cx)).unwrap();
        let mut nodes = Vec::new();
        nodes.extend_from_slice(b"NNNNNNNNNNNNNNNNNNNN\x7f\x00\x00\x01\x1b\x58");
        nodes.extend_from_slice(b"PPPPPPPPPPPPPPPPPPPP\x7f\x00\x00\x01\x00\x00"); // port 0: skipped
        nodes.extend_from_slice(b"partial");
        let mut r = Dict::new();
        r.bytes(b"id", remote.as_bytes()).bytes(b"nodes", &nodes);
        let mut top = Dict::new();
        top.raw(b"r", &r.finish())
            .bytes(b"t", b"\x00\x00\x00\x01")
            .bytes(b"y", b"r")
            .bytes(b"ip", b"\x01\x02\x03\x04\x00\x01");
        let m = with_cx(Some(&peer), local, |cx| c.decode(&top.finish(), cx)).unwrap();
        match m.body {
            Body::Response(Response::Nodes { nodes }) => {
                assert_eq!(nodes.len(), 1);
                assert_eq!(
                    nodes[0].addrs[0],
                    PeerAddr::Udp("127.0.0.1:7000".parse().unwrap())
                );
            }
            other => panic!("{other:?}"),
        }
        // An error names no id: the codec fills in the node we asked.
        with_cx(Some(&peer), local, |cx| c.encode(&q, cx)).unwrap();
        let e = b"d1:eli302e4:nopee1:t4:\x00\x00\x00\x011:y1:ee";
        let m = with_cx(Some(&peer), local, |cx| c.decode(e, cx)).unwrap();
        assert_eq!(m.sender.id, remote);
        assert!(matches!(m.body, Body::Error(RpcError { code: 302, .. })));
    }

    #[test]
    fn garbage_is_dropped_and_floods_are_limited_before_parsing() {
        let local = id(b"LLLLLLLLLLLLLLLLLLLL");
        let peer = PeerAddr::Udp("127.0.0.9:7002".parse().unwrap());
        let mut c = KrpcCodec::new(KrpcShared::new(KrpcLimits {
            per_ip_rate: 10,
            per_ip_burst: 20,
            ..Default::default()
        }));
        for bad in [
            &b"garbage"[..],
            b"d1:y1:qe",
            b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe", // short id
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:y1:qe", // no t
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:xe",
            b"d1:t2:aa1:y1:q1:q4:pinge", // unsorted
        ] {
            let r = with_cx(Some(&peer), local, |cx| c.decode(bad, cx));
            assert!(
                matches!(r, Err(DecodeError::Malformed(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let mut limited = 0;
        for _ in 0..100 {
            if matches!(
                with_cx(Some(&peer), local, |cx| c.decode(ping, cx)),
                Err(DecodeError::RateLimited)
            ) {
                limited += 1;
            }
        }
        // 20 of burst, minus the 6 garbage datagrams already counted against this IP.
        assert_eq!(limited, 100 - 14);
        // Another source is unaffected.
        let other = PeerAddr::Udp("127.0.0.10:7002".parse().unwrap());
        assert!(with_cx(Some(&other), local, |cx| c.decode(ping, cx)).is_ok());
    }

    #[test]
    fn unknown_methods_with_a_target_are_answered_like_find_node() {
        let local = id(b"LLLLLLLLLLLLLLLLLLLL");
        let mut c = codec();
        let raw = b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q10:vote_thing1:t2:aa1:y1:qe";
        let m = with_cx(None, local, |cx| c.decode(raw, cx)).unwrap();
        assert!(matches!(m.body, Body::Request(Request::FindNode { .. })));
        let raw = b"d1:ad2:id20:abcdefghij0123456789e1:q10:vote_thing1:t2:aa1:y1:qe";
        let m = with_cx(None, local, |cx| c.decode(raw, cx)).unwrap();
        assert!(
            matches!(m.body, Body::Request(Request::Custom { ref method, .. }) if method == "mainline.unknown")
        );
    }
}
