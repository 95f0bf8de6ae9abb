//! The validly signed messages `native_decode` mutates, shared with `make-seeds`.

use bytes::Bytes;
use kad_core::{
    Body, Contact, Message, NativeIdentity, NodeId, PeerAddr, Record, Request, Response, RpcError,
    TxnId,
};

/// The time the base messages are signed at, and the receiver's clock (one millisecond after
/// the PROTOCOL.md `ping` vector).
pub const UNIX_MS: u64 = 1_763_683_200_001;

/// Messages of every kind, from A to B and back.
pub fn base_messages(a: &NativeIdentity, b: &NativeIdentity) -> Vec<Message> {
    let ca = Contact::new(a.id(), "udp://127.0.0.1:4000".parse().expect("addr"));
    let cb = Contact::with_addrs(
        b.id(),
        vec![
            "udp://127.0.0.1:4001".parse().expect("addr"),
            "quic://[::1]:4001".parse().expect("addr"),
            "wss://node.example/kad".parse().expect("addr"),
        ],
    );
    let rec = Record::new(
        NodeId::from_bytes([9; 20]),
        &b"hello, record"[..],
        Some(a.id()),
        UNIX_MS,
        86_400_000,
    );
    let msg = |from: &Contact, to: Option<NodeId>, body: Body| Message {
        txn: TxnId::from_bytes(vec![0xca, 0xfe, 0, 1]),
        sender: from.clone(),
        recipient: to,
        read_only: false,
        observed: None,
        body,
    };
    let (ia, ib) = (Some(a.id()), Some(b.id()));
    let seen = Some(PeerAddr::Udp("203.0.113.5:4000".parse().expect("addr")));
    let mut v = vec![
        msg(&ca, None, Body::Request(Request::Ping)),
        msg(&ca, ib, Body::Request(Request::FindNode { target: b.id() })),
        msg(&ca, ib, Body::Request(Request::FindValue { key: rec.key })),
        msg(
            &ca,
            ib,
            Body::Request(Request::Store {
                record: rec.clone(),
                want_nodes: false,
            }),
        ),
        msg(
            &ca,
            ib,
            Body::Request(Request::Store {
                record: rec.clone(),
                want_nodes: true,
            }),
        ),
        msg(
            &ca,
            ib,
            Body::Request(Request::Custom {
                method: "pubsub.SUBSCRIBE".into(),
                params: Bytes::from_static(
                    br#"{"topic":"0909090909090909090909090909090909090909","ttl":60}"#,
                ),
            }),
        ),
        msg(&cb, ia, Body::Response(Response::Pong)),
        msg(
            &cb,
            ia,
            Body::Response(Response::Nodes {
                nodes: vec![ca.clone(), cb.clone()],
            }),
        ),
        msg(
            &cb,
            ia,
            Body::Response(Response::Value {
                record: rec,
                nodes: vec![ca.clone()],
            }),
        ),
        msg(&cb, ia, Body::Response(Response::Stored { nodes: vec![] })),
        msg(
            &cb,
            ia,
            Body::Response(Response::Stored {
                nodes: vec![ca.clone()],
            }),
        ),
        msg(
            &cb,
            ia,
            Body::Response(Response::Custom {
                result: Bytes::from_static(br#"{"ok":true,"n":[1,2.5,null,"x"]}"#),
                nodes: vec![cb.clone()],
            }),
        ),
        msg(
            &cb,
            ia,
            Body::Error(RpcError::new(
                RpcError::METHOD_NOT_FOUND,
                "no \"such\" method",
            )),
        ),
    ];
    for m in &mut v[5..] {
        m.observed = seen.clone();
    }
    v[6].read_only = true;
    v
}
