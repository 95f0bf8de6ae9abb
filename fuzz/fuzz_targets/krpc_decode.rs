//! `krpc_decode`: the KRPC codec of `kad-plugin-bep44` on arbitrary datagrams.
//!
//! Input: one flag byte, then the datagram.
//!
//! - bits 0-1: where the datagram comes from: 0 unknown, 1 `udp://198.51.100.7:6881`,
//!   2 `udp://[2001:db8::7]:6881`, 3 the IPv4 one written as IPv4-mapped IPv6;
//! - bit 2: before decoding, the codec sent a request to that peer with the datagram's `t`
//!   (so a response is typed by it); bits 3-4 pick its method: ping, find_node, get, get_peers;
//! - bit 5: BEP42 enforcement on.
//!
//! Checks: decoding never panics; whatever decodes re-encodes, and decodes again to the same
//! message, exactly for queries, `ping`/`find_node` answers and short errors, and up to what
//! the codec documents as lossy for the rest (contacts normalised: IPv4-mapped becomes IPv4,
//! IPv4 before IPv6; plugin answers keep their own keys); `parse_nodes`/`parse_compact_addr`
//! agree with `compact_peer`.

#![no_main]

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use kad_core::{
    Body, Codec, CodecCx, Contact, Message, NodeId, PeerAddr, Request, Response, RpcError, TxnId,
};
use kad_plugin_bep44::bencode::{self, Val};
use kad_plugin_bep44::krpc::{compact_peer, parse_compact_addr, parse_nodes};
use kad_plugin_bep44::{KrpcCodec, KrpcLimits, KrpcShared};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

const LOCAL: NodeId = NodeId::from_bytes([0x4c; 20]);
const ASKED: NodeId = NodeId::from_bytes([0x52; 20]);
const UNIX_MS: u64 = 1_763_683_200_000;

fn peer(flags: u8) -> Option<PeerAddr> {
    let s = match flags & 3 {
        0 => return None,
        1 => "198.51.100.7:6881",
        2 => "[2001:db8::7]:6881",
        _ => "[::ffff:198.51.100.7]:6881",
    };
    Some(PeerAddr::Udp(s.parse().expect("valid socket address")))
}

fn with_cx<R>(peer: Option<&PeerAddr>, f: impl FnOnce(&mut CodecCx<'_>) -> R) -> R {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut cx = CodecCx {
        unix_ms: UNIX_MS,
        local_id: LOCAL,
        max_skew_ms: 60_000,
        rng: &mut rng,
        peer,
        proven: None,
    };
    f(&mut cx)
}

/// A fresh codec; with flag bit 2, one that sent a request with transaction `txn` to `peer`.
fn codec(flags: u8, peer: Option<&PeerAddr>, txn: Option<&[u8]>) -> KrpcCodec {
    let limits = KrpcLimits {
        enforce_bep42: flags & 0x20 != 0,
        ..KrpcLimits::default()
    };
    let mut c = KrpcCodec::new(KrpcShared::new(limits));
    if let (true, Some(p), Some(t)) = (flags & 4 != 0, peer, txn) {
        let target = NodeId::from_bytes([0x54; 20]);
        let custom = |m: &str, key: &[u8]| {
            let mut d = bencode::Dict::new();
            d.bytes(key, target.as_bytes());
            Request::Custom {
                method: m.into(),
                params: Bytes::from(d.finish()),
            }
        };
        let req = match (flags >> 3) & 3 {
            0 => Request::Ping,
            1 => Request::FindNode { target },
            2 => custom("mainline.get", b"target"),
            _ => custom("mainline.get_peers", b"info_hash"),
        };
        let msg = Message {
            txn: TxnId(Bytes::copy_from_slice(t)),
            sender: Contact::with_addrs(LOCAL, Vec::new()),
            recipient: Some(ASKED),
            read_only: false,
            observed: None,
            body: Body::Request(req),
        };
        with_cx(Some(p), |cx| c.encode(&msg, cx)).expect("our own request encodes");
    }
    c
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

fn udp(c: &Contact) -> SocketAddr {
    match c.addrs.first() {
        Some(PeerAddr::Udp(a)) => *a,
        other => panic!("a KRPC contact has one udp address, got {other:?}"),
    }
}

/// The contacts as the encoder writes them: IPv4 (mapped ones unmapped) first, then IPv6.
fn normalised(nodes: &[Contact]) -> Vec<Contact> {
    let un = |c: &Contact| Contact::new(c.id, PeerAddr::Udp(unmap(udp(c))));
    let v4 = nodes.iter().map(un).filter(|c| udp(c).is_ipv4());
    let v6 = nodes.iter().map(un).filter(|c| udp(c).is_ipv6());
    v4.chain(v6).collect()
}

fn as_set(nodes: &[Contact]) -> std::collections::BTreeSet<(NodeId, SocketAddr)> {
    nodes.iter().map(|c| (c.id, unmap(udp(c)))).collect()
}

/// The code the encoder puts on the wire for an error code.
fn wire_code(c: i64) -> i64 {
    match c {
        RpcError::METHOD_NOT_FOUND => 204,
        RpcError::INVALID_PARAMS | RpcError::REJECTED => 203,
        RpcError::INTERNAL | RpcError::STORE_FULL => 202,
        RpcError::REFUSED => 201,
        c if c > 0 => c,
        _ => 201,
    }
}

fn check_compact(data: &[u8]) {
    for v6 in [false, true] {
        let size = if v6 { 38 } else { 26 };
        let nodes = parse_nodes(data, v6);
        assert!(nodes.len() <= data.len() / size);
        for c in &nodes {
            let a = udp(c);
            assert_ne!(a.port(), 0, "port 0 is skipped");
            assert_eq!(c.addrs.len(), 1);
            // The entry is in the input, id then compact address.
            let mut entry = c.id.as_bytes().to_vec();
            let compact = compact_peer(a);
            if v6 && a.ip().to_canonical().is_ipv4() {
                // compact_peer unmaps: the input held the mapped 18-byte form.
                assert_eq!(compact.len(), 6);
            } else {
                entry.extend_from_slice(&compact);
                assert!(data.chunks_exact(size).any(|e| e == &entry[..]));
            }
        }
    }
    for len in [6, 18] {
        if let Some(b) = data.get(..len) {
            let a = parse_compact_addr(b).expect("6 and 18 bytes are compact addresses");
            let back = compact_peer(a);
            if len == 18 && unmap(a) != a {
                assert_eq!(back[..4], b[12..16]);
                assert_eq!(back[4..], b[16..]);
            } else {
                assert_eq!(back, b);
            }
        }
    }
    for len in [0, 1, 5, 7, 17, 19] {
        if let Some(b) = data.get(..len) {
            assert!(parse_compact_addr(b).is_none());
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, data)) = input.split_first() else {
        return;
    };
    check_compact(data);
    let p = peer(flags);
    let p = p.as_ref();
    let txn = bencode::parse(data)
        .ok()
        .and_then(|v| v.get(b"t").and_then(Val::bytes).map(<[u8]>::to_vec));
    let decode = |bytes: &[u8]| {
        let mut c = codec(flags, p, txn.as_deref());
        with_cx(p, |cx| c.decode(bytes, cx))
    };
    let Ok(m1) = decode(data) else {
        return;
    };
    assert!((1..=64).contains(&m1.txn.0.len()));
    assert_eq!(Some(&m1.txn.0[..]), txn.as_deref(), "t is echoed verbatim");
    assert_eq!(m1.recipient, Some(LOCAL));
    assert_eq!(
        m1.sender.addrs.first(),
        p,
        "the sender is where it came from"
    );
    assert!(m1.sender.addrs.len() <= 1);
    // Answers never need the peer to reach a requester: encode them without one (both address
    // families wanted, no `ip`), queries with it (the codec remembers them per peer).
    let encode = |m: &Message| {
        let mut c = KrpcCodec::new(KrpcShared::new(KrpcLimits::default()));
        let to = matches!(m.body, Body::Request(_)).then_some(p).flatten();
        with_cx(to, |cx| c.encode(m, cx))
    };
    match &m1.body {
        Body::Request(req) => {
            let must_encode = match req {
                Request::Ping | Request::FindNode { .. } => true,
                Request::Custom { method, .. } => !matches!(
                    &method[..],
                    "FIND_NODE" | "mainline.unknown" | "mainline.insecure_id"
                ),
                other => panic!("KRPC decodes no {other:?}"),
            };
            let enc = match encode(&m1) {
                Ok(b) => b,
                Err(e) if !must_encode => {
                    let _ = e;
                    return;
                }
                Err(e) => panic!("decoded query does not re-encode: {e}: {m1:?}"),
            };
            let m2 = decode(&enc).expect("a re-encoded query decodes");
            assert_eq!(m2, m1, "query round trip");
            assert_eq!(encode(&m2).expect("encodes again"), enc, "stable bytes");
        }
        Body::Response(rsp) => {
            let enc = encode(&m1).expect("a decoded answer re-encodes");
            let m2 = decode(&enc).expect("a re-encoded answer decodes");
            assert_eq!(
                (&m2.txn, &m2.sender, m2.recipient),
                (&m1.txn, &m1.sender, m1.recipient)
            );
            assert_eq!(m2.observed, None, "no `ip` was written");
            let Body::Response(rsp2) = &m2.body else {
                panic!("an answer decodes as an answer: {m2:?}");
            };
            match (rsp, rsp2) {
                (Response::Pong, Response::Pong) => {}
                (Response::Nodes { nodes }, Response::Nodes { nodes: n2 }) => {
                    assert_eq!(*n2, normalised(nodes));
                }
                (Response::Custom { nodes, .. }, Response::Custom { nodes: n2, result }) => {
                    assert_eq!(as_set(n2), as_set(nodes));
                    let r = bencode::parse(result).expect("result is bencode");
                    assert_eq!(
                        r.get(b"id").and_then(Val::bytes),
                        Some(&m1.sender.id.as_bytes()[..])
                    );
                }
                (a, b) => panic!("answer kind changed: {a:?} -> {b:?}"),
            }
            if !matches!(rsp, Response::Custom { .. }) {
                let m3 = decode(&encode(&m2).expect("encodes again")).expect("decodes again");
                assert_eq!(m3, m2, "typed answers are a fixed point after one round");
            }
        }
        Body::Error(e) => {
            assert!(
                e.message.len() <= 256 * 3,
                "at most 256 bytes, lossily decoded"
            );
            assert!(m1.read_only, "nobody is learned from an error");
            let enc = encode(&m1).expect("a decoded error re-encodes");
            let m2 = decode(&enc).expect("a re-encoded error decodes");
            let Body::Error(e2) = &m2.body else {
                panic!("an error decodes as an error: {m2:?}");
            };
            assert_eq!(e2.code, wire_code(e.code));
            assert_eq!((&m2.txn, &m2.sender), (&m1.txn, &m1.sender));
            if e.message.len() <= 256 {
                assert_eq!(e2.message, e.message);
                assert_eq!(m2, m1.clone_with_code(e2.code));
            }
        }
        other => panic!("unknown body {other:?}"),
    }
});

trait WithCode {
    fn clone_with_code(&self, code: i64) -> Self;
}

impl WithCode for Message {
    fn clone_with_code(&self, code: i64) -> Self {
        let mut m = self.clone();
        if let Body::Error(e) = &mut m.body {
            e.code = code;
        }
        m
    }
}
