//! The native codec: PROTOCOL.md's test vectors, round trips, and every rejection case.

use std::sync::Arc;

use bytes::Bytes;
use kad_core::native::{self, MAX_DATAGRAM};
use kad_core::{
    Body, Codec, CodecCx, Contact, DecodeError, Message, NativeCodec, NativeIdentity, NodeId,
    PeerAddr, Record, Request, Response, RpcError, TxnId,
};
use proptest::prelude::*;
use rand::RngCore;

/// An RNG that always yields the same number: fixes the nonce, as the test vectors need.
struct FixedRng(u64);

impl RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        self.0 as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for (i, b) in dst.iter_mut().enumerate() {
            *b = self.0.to_be_bytes()[i % 8];
        }
    }
}

/// A counter RNG: a fresh nonce for every message.
struct CountRng(u64);

impl RngCore for CountRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        dst.fill(self.next_u64() as u8);
    }
}

const T0: u64 = 1_763_683_200_000; // 2025-11-21T00:00:00Z
const SKEW: u64 = 60_000;

fn cx(rng: &mut dyn RngCore, unix_ms: u64, local_id: NodeId) -> CodecCx<'_> {
    CodecCx {
        unix_ms,
        local_id,
        max_skew_ms: SKEW,
        rng,
        peer: None,
        proven: None,
    }
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

// ---- PROTOCOL.md test vectors (keep in sync with the document; this test checks both) ----

const SECRET_A: &str = "0000000000000000000000000000000000000000000000000000000000000001";
const SECRET_B: &str = "0000000000000000000000000000000000000000000000000000000000000002";

struct Party {
    identity: Arc<NativeIdentity>,
    codec: NativeCodec,
    contact: Contact,
}

fn party(secret: &str, port: u16) -> Party {
    let identity = Arc::new(NativeIdentity::from_secret(&hex32(secret)).unwrap());
    let contact = Contact::new(
        identity.id(),
        format!("udp://127.0.0.1:{port}").parse().unwrap(),
    );
    Party {
        codec: NativeCodec::new(identity.clone()),
        identity,
        contact,
    }
}

fn msg(from: &Party, to: Option<NodeId>, txn: &[u8], body: Body) -> Message {
    Message {
        txn: TxnId::from_bytes(txn.to_vec()),
        sender: from.contact.clone(),
        recipient: to,
        read_only: false,
        observed: None,
        body,
    }
}

struct Vector {
    name: String,
    fields: std::collections::HashMap<String, String>,
}

impl Vector {
    fn get(&self, k: &str) -> &str {
        self.fields
            .get(k)
            .unwrap_or_else(|| panic!("vector {} lacks {k}", self.name))
    }
}

/// The `text` blocks of PROTOCOL.md that start with `vector:`.
fn vectors() -> Vec<Vector> {
    let doc = include_str!("../../PROTOCOL.md");
    let mut out = Vec::new();
    for block in doc.split("```text\n").skip(1) {
        let body = block.split("```").next().unwrap();
        if !body.starts_with("vector:") {
            continue;
        }
        let fields: std::collections::HashMap<_, _> = body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        out.push(Vector {
            name: fields["vector"].clone(),
            fields,
        });
    }
    out
}

/// Encodes `m` as `p` at `ts` (nonces from `seed`), the link proving `proven` as recipient.
fn encode_via(p: &mut Party, m: &Message, ts: u64, seed: u64, proven: Option<NodeId>) -> Bytes {
    let mut rng = CountRng(seed);
    let mut cx = cx(&mut rng, ts, p.identity.id());
    cx.proven = proven;
    p.codec.encode(m, &mut cx).unwrap()
}

/// Decodes `bytes` as `p` at `now`, the link having proved `proven` as the sender.
fn decode_via(
    p: &mut Party,
    bytes: &[u8],
    now: u64,
    proven: Option<NodeId>,
) -> Result<Message, DecodeError> {
    let mut rng = CountRng(0);
    let mut cx = cx(&mut rng, now, p.identity.id());
    cx.proven = proven;
    p.codec.decode(bytes, &mut cx)
}

/// `x` hears from `from` (a signed PING announcing version 2), as a node does before it MACs.
fn introduce(x: &mut Party, from: &Party) {
    let mut tx = NativeCodec::new(from.identity.clone());
    let ping = msg(
        from,
        Some(x.identity.id()),
        b"hi",
        Body::Request(Request::Ping),
    );
    let bytes = tx
        .encode(
            &ping,
            &mut cx(&mut CountRng(1 << 50), T0, from.identity.id()),
        )
        .unwrap();
    x.codec
        .decode(&bytes, &mut cx(&mut CountRng(0), T0, x.identity.id()))
        .unwrap();
}

/// The x coordinate of the ECDH point of `secret` and `peer`'s key, computed apart from the codec.
fn shared_x(secret: &str, peer: &Party) -> [u8; 32] {
    let sk = k256::SecretKey::from_slice(&hex32(secret)).unwrap();
    let pk = k256::PublicKey::from_sec1_bytes(&peer.identity.public_key_bytes()).unwrap();
    let shared = k256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
    (*shared.raw_secret_bytes()).into()
}

const SECRET_C: &str = "0000000000000000000000000000000000000000000000000000000000000003";

/// The version 2 vectors: what each computes, as PROTOCOL.md lists it (the failure message
/// prints the block this code computes).
fn v2_vectors() -> Vec<(String, String)> {
    let a = party(SECRET_A, 4000);
    let b = party(SECRET_B, 4001);
    let c = party(SECRET_C, 4002);
    let pair = native::pair_key(&a.identity, &b.identity.public_key_bytes()).unwrap();
    let mut out = vec![(
        "pair".to_owned(),
        format!(
            "vector: pair\nsecret_key: {SECRET_A}\nnode_id: {}\npeer_secret_key: {SECRET_B}\npeer_public_key: {}\npeer_node_id: {}\nshared_x: {}\npair_key: {}\n",
            a.identity.id(),
            hex::encode(b.identity.public_key_bytes()),
            b.identity.id(),
            hex::encode(shared_x(SECRET_A, &b)),
            hex::encode(pair)
        ),
    )];
    let block = |name: &str, note_auth: &str, p: &Party, unix: u64, nonce: u64, bytes: &[u8]| {
        let text = std::str::from_utf8(bytes).unwrap();
        let tail = if note_auth == "mac" { 68 } else { 132 };
        let signed = &text[1..text.len() - tail];
        let auth = &text[text.len() - tail + 2..text.len() - 2];
        format!(
            "vector: {name}\nsecret_key: {}\nunix_ms: {unix}\nnonce: {nonce:016x}\nsigned: {signed}\n{note_auth}: {auth}\ndatagram: {text}\n",
            hex::encode(p.identity.secret_bytes()),
        )
    };
    let enc = |p: &mut Party, m: &Message, unix: u64, nonce: u64| {
        p.codec
            .encode(m, &mut cx(&mut FixedRng(nonce), unix, p.identity.id()))
            .unwrap()
    };
    // A node speaking version 2 pings an address: signed, and says it speaks version 2.
    let mut a = a;
    let mut b = b;
    let ping = msg(&a, None, &[1, 2, 3, 4], Body::Request(Request::Ping));
    let (unix, nonce) = (T0 + 3, 0x3333_3333_3333_3333);
    let bytes = enc(&mut a, &ping, unix, nonce);
    out.push((
        "ping_v2".into(),
        block("ping_v2", "signature", &a, unix, nonce, &bytes),
    ));
    // B has heard from A and from C; A has heard from B: they MAC.
    introduce(&mut b, &a);
    introduce(&mut b, &c);
    introduce(&mut a, &b);
    let find = msg(
        &a,
        Some(b.identity.id()),
        &[0xca, 0xfe, 0x00, 0x02],
        Body::Request(Request::FindNode {
            target: c.identity.id(),
        }),
    );
    let (unix, nonce) = (T0 + 4, 0x4444_4444_4444_4444);
    let bytes = enc(&mut a, &find, unix, nonce);
    out.push((
        "find_node_v2".into(),
        block("find_node_v2", "mac", &a, unix, nonce, &bytes),
    ));
    let nodes = msg(
        &b,
        Some(a.identity.id()),
        &[0xca, 0xfe, 0x00, 0x02],
        Body::Response(Response::Nodes {
            nodes: vec![c.contact.clone()],
        }),
    );
    let (unix, nonce) = (T0 + 5, 0x5555_5555_5555_5555);
    let bytes = enc(&mut b, &nodes, unix, nonce);
    out.push((
        "nodes_v2".into(),
        block("nodes_v2", "mac", &b, unix, nonce, &bytes),
    ));
    out
}

#[test]
fn protocol_md_version_2_vectors_are_what_the_codec_computes() {
    let doc = include_str!("../../PROTOCOL.md");
    let missing: Vec<String> = v2_vectors()
        .into_iter()
        .filter(|(_, block)| !doc.contains(&format!("```text\n{block}```")))
        .map(|(name, block)| format!("{name}:\n```text\n{block}```\n"))
        .collect();
    assert!(
        missing.is_empty(),
        "PROTOCOL.md lacks these vectors as computed:\n{}",
        missing.concat()
    );
    // Each vector stands on its own facts, too: the pairwise key is symmetric, the MAC is the
    // documented HMAC of the documented input, and the recipient decodes the datagram.
    let vs = vectors();
    let get = |n: &str| vs.iter().find(|v| v.name == n).unwrap();
    let a = party(SECRET_A, 4000);
    let b = party(SECRET_B, 4001);
    let pair: [u8; 32] = hex32(get("pair").get("pair_key"));
    assert_eq!(
        native::pair_key(&b.identity, &a.identity.public_key_bytes()),
        Some(pair)
    );
    for (name, from, to) in [("find_node_v2", &a, &b), ("nodes_v2", &b, &a)] {
        let v = get(name);
        let tag = native::mac_tag(
            &pair,
            &from.identity.id(),
            &to.identity.id(),
            v.get("signed").as_bytes(),
        );
        assert_eq!(hex::encode(tag), v.get("mac"), "{name}");
        let mut rx = NativeCodec::new(to.identity.clone());
        let unix: u64 = v.get("unix_ms").parse().unwrap();
        let m = rx
            .decode(
                v.get("datagram").as_bytes(),
                &mut cx(&mut FixedRng(0), unix, to.identity.id()),
            )
            .unwrap_or_else(|e| panic!("vector {name}: {e}"));
        assert_eq!(m.sender, from.contact);
    }
    let ping = get("ping_v2");
    let mut rx = NativeCodec::new(b.identity.clone());
    let unix: u64 = ping.get("unix_ms").parse().unwrap();
    rx.decode(
        ping.get("datagram").as_bytes(),
        &mut cx(&mut FixedRng(0), unix, b.identity.id()),
    )
    .unwrap();
    assert!(
        rx.would_mac(&a.identity.id()),
        "the ping announced version 2"
    );
}

#[test]
fn protocol_md_vectors_decode_and_reencode_byte_for_byte() {
    let vs = vectors();
    assert_eq!(
        vs.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        [
            "ping",
            "find_node",
            "nodes",
            "pair",
            "ping_v2",
            "find_node_v2",
            "nodes_v2"
        ]
    );
    let a = party(SECRET_A, 4000);
    let b = party(SECRET_B, 4001);
    for v in vs
        .iter()
        .filter(|v| v.fields.get("version").map(String::as_str) == Some("1"))
    {
        let (signer, receiver) = if v.get("secret_key") == SECRET_A {
            (&a, &b)
        } else {
            (&b, &a)
        };
        // Identity facts.
        let identity = NativeIdentity::from_secret(&hex32(v.get("secret_key"))).unwrap();
        assert_eq!(
            hex::encode(identity.public_key_bytes()),
            v.get("public_key")
        );
        assert_eq!(identity.id().to_string(), v.get("node_id"));
        assert_eq!(
            native::node_id_from_public_key(&hex::decode(v.get("public_key")).unwrap()),
            identity.id()
        );
        // The datagram is `[` signed `,"` signature `"]`, and the signature is RFC 6979.
        let datagram = v.get("datagram").as_bytes();
        let expected = format!("[{},\"{}\"]", v.get("signed"), v.get("signature"));
        assert_eq!(datagram, expected.as_bytes(), "{}", v.name);
        assert_eq!(
            hex::encode(identity.sign_bytes(v.get("signed").as_bytes())),
            v.get("signature")
        );
        assert!(native::verify_signature(
            &identity.public_key_bytes(),
            v.get("signed").as_bytes(),
            &hex::decode(v.get("signature")).unwrap()
        ));
        // Decoding as the recipient at the signing time succeeds.
        let unix: u64 = v.get("unix_ms").parse().unwrap();
        let nonce = u64::from_str_radix(v.get("nonce"), 16).unwrap();
        let mut rx = NativeCodec::new(receiver.identity.clone());
        let m = rx
            .decode(
                datagram,
                &mut cx(&mut FixedRng(0), unix, receiver.identity.id()),
            )
            .unwrap_or_else(|e| panic!("vector {}: {e}", v.name));
        assert_eq!(m.sender, signer.contact);
        // Encoding the decoded message with the same time and nonce gives the same bytes.
        let mut tx = NativeCodec::new(signer.identity.clone()).max_version(1);
        let again = tx
            .encode(
                &m,
                &mut cx(&mut FixedRng(nonce), unix, signer.identity.id()),
            )
            .unwrap();
        assert_eq!(
            &again[..],
            datagram,
            "vector {} re-encodes identically",
            v.name
        );
    }
}

fn all_bodies(p: &Party) -> Vec<Body> {
    let rec = Record::new(
        NodeId::from_bytes([9; 20]),
        Bytes::from_static(b"\x00\x01binary\xff value"),
        Some(p.identity.id()),
        T0,
        86_400_000,
    );
    let nodes = vec![
        p.contact.clone(),
        Contact::with_addrs(
            NodeId::from_bytes([3; 20]),
            vec![
                "udp://[::1]:9".parse().unwrap(),
                "ws://example.invalid:80/kad".parse().unwrap(),
            ],
        ),
    ];
    vec![
        Body::Request(Request::Ping),
        Body::Request(Request::FindNode {
            target: NodeId::from_bytes([1; 20]),
        }),
        Body::Request(Request::FindValue {
            key: NodeId::from_bytes([2; 20]),
        }),
        Body::Request(Request::Store {
            record: rec.clone(),
            want_nodes: false,
        }),
        Body::Request(Request::Store {
            record: rec.clone(),
            want_nodes: true,
        }),
        Body::Request(Request::Custom {
            method: "pubsub.SUBSCRIBE".into(),
            params: Bytes::from_static(br#"{"topic":"abc","n":[1,2]}"#),
        }),
        Body::Response(Response::Pong),
        Body::Response(Response::Nodes {
            nodes: nodes.clone(),
        }),
        Body::Response(Response::Nodes { nodes: vec![] }),
        Body::Response(Response::Value {
            record: rec,
            nodes: nodes.clone(),
        }),
        Body::Response(Response::Stored { nodes: vec![] }),
        Body::Response(Response::Stored {
            nodes: nodes.clone(),
        }),
        Body::Response(Response::Custom {
            result: Bytes::from_static(br#"{"ok":true}"#),
            nodes,
        }),
        Body::Error(RpcError::new(RpcError::METHOD_NOT_FOUND, "no such method")),
    ]
}

#[test]
fn every_message_kind_round_trips() {
    let mut a = party(SECRET_A, 4000);
    let mut b = party(SECRET_B, 4001);
    let mut rng = CountRng(0);
    for (i, body) in all_bodies(&a).into_iter().enumerate() {
        let mut m = msg(&a, Some(b.identity.id()), &[i as u8, 1, 2, 3], body);
        m.read_only = i % 2 == 0;
        let bytes = a
            .codec
            .encode(&m, &mut cx(&mut rng, T0, a.identity.id()))
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("the datagram is JSON");
        let got = b
            .codec
            .decode(&bytes, &mut cx(&mut rng, T0 + 500, b.identity.id()))
            .unwrap();
        assert_eq!(got, m, "message {i}");
    }
}

static NONCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 40);
use std::sync::atomic::Ordering::Relaxed;

/// Encodes `m` from `from` at `ts` and decodes it at `now` as `to`.
fn send(
    from: &mut Party,
    to: &mut Party,
    m: &Message,
    ts: u64,
    now: u64,
) -> Result<Message, DecodeError> {
    let bytes = from
        .codec
        .encode(
            m,
            &mut cx(
                &mut CountRng(NONCES.fetch_add(1 << 20, Relaxed)),
                ts,
                from.identity.id(),
            ),
        )
        .unwrap();
    to.codec
        .decode(&bytes, &mut cx(&mut CountRng(0), now, to.identity.id()))
}

/// Signs arbitrary `signed` text with `p`'s key into a datagram.
fn forge(p: &Party, signed: &str) -> Vec<u8> {
    format!(
        "[{signed},\"{}\"]",
        hex::encode(p.identity.sign_bytes(signed.as_bytes()))
    )
    .into_bytes()
}

#[test]
fn each_rejection_has_its_own_reason() {
    let mut a = party(SECRET_A, 4000);
    let mut b = party(SECRET_B, 4001);
    let c = party(
        "00000000000000000000000000000000000000000000000000000000000000c3",
        4002,
    );
    let to_b = msg(
        &a,
        Some(b.identity.id()),
        b"t1",
        Body::Request(Request::FindNode {
            target: b.identity.id(),
        }),
    );

    // Accepted within the window on either side.
    assert!(send(&mut a, &mut b, &to_b, T0, T0 + SKEW).is_ok());
    assert!(send(&mut a, &mut b, &to_b, T0 + SKEW, T0).is_ok());
    // Stale: just outside the window, in the past and in the future.
    assert!(matches!(
        send(&mut a, &mut b, &to_b, T0, T0 + SKEW + 1),
        Err(DecodeError::Stale { skew_ms: -60_001 })
    ));
    assert!(matches!(
        send(&mut a, &mut b, &to_b, T0 + SKEW + 1, T0),
        Err(DecodeError::Stale { skew_ms: 60_001 })
    ));

    // Replay: the same datagram twice.
    let bytes = a
        .codec
        .encode(&to_b, &mut cx(&mut CountRng(77), T0, a.identity.id()))
        .unwrap();
    let mut rx = |bytes: &[u8]| {
        b.codec
            .decode(bytes, &mut cx(&mut CountRng(0), T0 + 10, b.identity.id()))
    };
    assert!(rx(&bytes).is_ok());
    assert!(matches!(rx(&bytes), Err(DecodeError::Replay)));

    // Bad signature: one hex digit of the signature changed, or one byte of the signed text.
    let bytes = a
        .codec
        .encode(&to_b, &mut cx(&mut CountRng(78), T0, a.identity.id()))
        .unwrap();
    let mut sig_flip = bytes.to_vec();
    let at = sig_flip.len() - 5;
    sig_flip[at] = if sig_flip[at] == b'0' { b'1' } else { b'0' };
    assert!(matches!(rx(&sig_flip), Err(DecodeError::BadSignature)));
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let tampered = text.replace("udp://127.0.0.1:4000", "udp://127.0.0.1:4999");
    assert!(matches!(
        rx(tampered.as_bytes()),
        Err(DecodeError::BadSignature)
    ));
    // The untampered one still goes through: failed checks do not burn the nonce.
    assert!(rx(&bytes).is_ok());

    // Id not matching the key: C signs a message claiming A's id with C's key.
    let signed = format!(
        r#"{{"jsonrpc":"2.0","id":"01","method":"PING","params":{{}},"kad":{{"v":1,"from":{{"id":"{}","key":"{}","addrs":[]}},"to":"{}","ts":{T0},"nonce":"0000000000000001"}}}}"#,
        a.identity.id(),
        hex::encode(c.identity.public_key_bytes()),
        b.identity.id()
    );
    assert!(matches!(
        rx(&forge(&c, &signed)),
        Err(DecodeError::IdMismatch)
    ));
    // An invalid public key (not on the curve) counts as a bad signature.
    let signed = signed.replace(
        &hex::encode(c.identity.public_key_bytes()),
        &format!("02{}", "ff".repeat(32)),
    );
    assert!(matches!(
        rx(&forge(&c, &signed)),
        Err(DecodeError::BadSignature)
    ));

    // Addressed to another node.
    let to_c = msg(
        &a,
        Some(c.identity.id()),
        b"t2",
        Body::Request(Request::Ping),
    );
    assert!(matches!(
        send(&mut a, &mut b, &to_c, T0, T0),
        Err(DecodeError::WrongRecipient)
    ));
    // No recipient is only allowed in a PING.
    let anon_ping = msg(&a, None, b"t3", Body::Request(Request::Ping));
    assert!(send(&mut a, &mut b, &anon_ping, T0, T0).is_ok());
    let anon_find = msg(
        &a,
        None,
        b"t4",
        Body::Request(Request::FindNode {
            target: c.identity.id(),
        }),
    );
    assert!(matches!(
        send(&mut a, &mut b, &anon_find, T0, T0),
        Err(DecodeError::WrongRecipient)
    ));
    let anon_pong = msg(&a, None, b"t5", Body::Response(Response::Pong));
    assert!(matches!(
        send(&mut a, &mut b, &anon_pong, T0, T0),
        Err(DecodeError::WrongRecipient)
    ));

    // Malformed: garbage, truncated, not an envelope, oversize.
    let mut rx = |bytes: &[u8]| {
        b.codec
            .decode(bytes, &mut cx(&mut CountRng(0), T0, b.identity.id()))
    };
    for junk in [
        &b""[..],
        b"[]",
        b"{\"jsonrpc\":\"2.0\"}",
        &bytes[..bytes.len() - 1],
        &bytes[1..],
    ] {
        assert!(
            matches!(rx(junk), Err(DecodeError::Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(junk)
        );
    }
    assert!(matches!(
        rx(&vec![b' '; MAX_DATAGRAM + 1]),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn core_method_with_bad_params_becomes_an_invalid_params_call() {
    let a = party(SECRET_A, 4000);
    let mut b = party(SECRET_B, 4001);
    let signed = format!(
        r#"{{"jsonrpc":"2.0","id":"0a","method":"FIND_NODE","params":{{"target":"nothex"}},"kad":{{"v":1,"from":{{"id":"{}","key":"{}","addrs":["udp://127.0.0.1:4000"]}},"to":"{}","ts":{T0},"nonce":"00000000000000ff"}}}}"#,
        a.identity.id(),
        hex::encode(a.identity.public_key_bytes()),
        b.identity.id()
    );
    let m = b
        .codec
        .decode(
            &forge(&a, &signed),
            &mut cx(&mut CountRng(0), T0, b.identity.id()),
        )
        .unwrap();
    assert!(
        matches!(m.body, Body::Request(Request::Custom { ref method, .. }) if method == "FIND_NODE")
    );
}

#[test]
fn a_full_replay_cache_forgets_the_oldest_and_refuses_anything_not_newer() {
    let mut a = party(SECRET_A, 4000);
    let b = party(SECRET_B, 4001);
    let mut b_codec = NativeCodec::new(b.identity.clone()).replay_capacity(10);
    let m = msg(
        &a,
        Some(b.identity.id()),
        b"r",
        Body::Request(Request::Ping),
    );
    let datagrams: Vec<_> = (0..20u64)
        .map(|i| {
            a.codec
                .encode(
                    &m,
                    &mut cx(&mut CountRng(i * 1000), T0 + i, a.identity.id()),
                )
                .unwrap()
        })
        .collect();
    let mut rx = |d: &[u8]| b_codec.decode(d, &mut cx(&mut CountRng(0), T0 + 100, b.identity.id()));
    for d in &datagrams {
        assert!(rx(d).is_ok());
    }
    // The first ten were forgotten, yet none of the twenty can be replayed.
    for d in &datagrams {
        assert!(matches!(rx(d), Err(DecodeError::Replay)));
    }
    // A fresh message with a newer timestamp is accepted.
    let fresh = a
        .codec
        .encode(
            &m,
            &mut cx(&mut CountRng(999_999), T0 + 50, a.identity.id()),
        )
        .unwrap();
    assert!(rx(&fresh).is_ok());
}

#[test]
fn signatures_are_low_s_and_deterministic() {
    let id = NativeIdentity::from_secret(&[0x42; 32]).unwrap();
    for i in 0..64u8 {
        let m = [i; 17];
        let s1 = id.sign_bytes(&m);
        assert_eq!(
            s1,
            id.sign_bytes(&m),
            "RFC 6979: same message, same signature"
        );
        let sig = k256::ecdsa::Signature::from_slice(&s1).unwrap();
        assert!(sig.normalize_s().is_none(), "already low-S");
        // The high-S twin of a valid signature is refused.
        let (r, s) = sig.split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        assert!(!native::verify_signature(
            &id.public_key_bytes(),
            &m,
            &high.to_bytes()
        ));
        assert!(native::verify_signature(&id.public_key_bytes(), &m, &s1));
    }
    assert!(NativeIdentity::from_secret(&[0; 32]).is_err());
    assert!(
        NativeIdentity::from_secret(&[0xff; 32]).is_err(),
        "above the group order"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let b = party(SECRET_B, 4001);
        let mut codec = NativeCodec::new(b.identity.clone());
        let _ = codec.decode(&data, &mut cx(&mut CountRng(0), T0, b.identity.id()));
    }

    #[test]
    fn decode_never_panics_on_mutated_datagrams(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        which in 0usize..12,
    ) {
        let mut a = party(SECRET_A, 4000);
        let b = party(SECRET_B, 4001);
        let body = all_bodies(&a).swap_remove(which);
        let m = msg(&a, Some(b.identity.id()), b"pp", body);
        let mut bytes = a.codec.encode(&m, &mut cx(&mut CountRng(5), T0, a.identity.id())).unwrap().to_vec();
        for (at, byte) in edits {
            let n = bytes.len();
            bytes[at % n] = byte;
        }
        let mut codec = NativeCodec::new(b.identity.clone());
        let r = codec.decode(&bytes, &mut cx(&mut CountRng(0), T0, b.identity.id()));
        // Whatever changed, an accepted message is still exactly what A signed.
        if let Ok(got) = r {
            prop_assert_eq!(got, m);
        }
    }
}

#[test]
fn eviction_follows_timestamps_not_arrival() {
    // A peer with a fast clock (59 s ahead, inside the window) sends first; honest messages
    // stamped now arrive later. When the cache overflows, the oldest *timestamps* go first, so
    // the floor rises only to the honest messages' times, never to the fast peer's.
    let mut fast = party(SECRET_A, 4000);
    let mut honest = party(
        "00000000000000000000000000000000000000000000000000000000000000c3",
        4002,
    );
    let b = party(SECRET_B, 4001);
    let mut rx = NativeCodec::new(b.identity.clone()).replay_capacity(30);
    let ping = |p: &Party| msg(p, Some(b.identity.id()), b"z", Body::Request(Request::Ping));
    let mut dec =
        |d: &[u8], now: u64| rx.decode(d, &mut cx(&mut CountRng(0), now, b.identity.id()));
    for i in 0..20u64 {
        let m = ping(&fast);
        let d = fast
            .codec
            .encode(
                &m,
                &mut cx(&mut CountRng(i << 8), T0 + 59_000, fast.identity.id()),
            )
            .unwrap();
        assert!(dec(&d, T0).is_ok());
    }
    // 40 honest messages, one per millisecond: the cache (30) overflows by 30.
    for i in 0..40u64 {
        let m = ping(&honest);
        let d = honest
            .codec
            .encode(
                &m,
                &mut cx(&mut CountRng(1 << 40 | i), T0 + i, honest.identity.id()),
            )
            .unwrap();
        assert!(dec(&d, T0 + i).is_ok(), "honest message {i}");
    }
    // The floor is now T0 + 29 (the newest honest timestamp evicted): a message stamped later
    // than that is accepted, one stamped at or before it is refused as a possible replay.
    let m = ping(&honest);
    let late = honest
        .codec
        .encode(
            &m,
            &mut cx(&mut CountRng(7 << 50), T0 + 30, honest.identity.id()),
        )
        .unwrap();
    assert!(dec(&late, T0 + 40).is_ok());
    let early = honest
        .codec
        .encode(
            &m,
            &mut cx(&mut CountRng(8 << 50), T0 + 29, honest.identity.id()),
        )
        .unwrap();
    assert!(matches!(dec(&early, T0 + 40), Err(DecodeError::Replay)));
}

#[test]
fn an_answer_too_big_for_a_datagram_drops_contacts_not_the_answer() {
    let mut a = party(SECRET_A, 4000);
    let b = party(SECRET_B, 4001);
    let long = |i: u8| -> Contact {
        let addrs: Vec<PeerAddr> = (0..8)
            .map(|j| {
                format!("ws://{}.example.invalid:80/{}", "h".repeat(200), j)
                    .parse()
                    .unwrap()
            })
            .collect();
        Contact::with_addrs(NodeId::from_bytes([i; 20]), addrs)
    };
    let nodes: Vec<Contact> = (0..20).map(long).collect();
    let record = Record::new(
        NodeId::from_bytes([9; 20]),
        vec![7u8; 40_000],
        None,
        T0,
        1000,
    );
    let m = msg(
        &a,
        Some(b.identity.id()),
        b"v",
        Body::Response(Response::Value {
            record: record.clone(),
            nodes,
        }),
    );
    let bytes = a
        .codec
        .encode(&m, &mut cx(&mut CountRng(3), T0, a.identity.id()))
        .unwrap();
    assert!(bytes.len() <= MAX_DATAGRAM);
    let mut rx = NativeCodec::new(b.identity.clone());
    let got = rx
        .decode(&bytes, &mut cx(&mut CountRng(0), T0, b.identity.id()))
        .unwrap();
    let Body::Response(Response::Value { record: r, nodes }) = got.body else {
        panic!()
    };
    assert_eq!(r.value, record.value);
    assert!(nodes.len() < 20, "some contacts were left out");
    // Addresses longer than 255 bytes are refused when parsed.
    assert!(
        format!("ws://{}/x", "h".repeat(300))
            .parse::<PeerAddr>()
            .is_err()
    );
}

#[test]
fn only_one_signed_form_is_accepted() {
    let mut a = party(SECRET_A, 4000);
    let b = party(SECRET_B, 4001);
    let m = msg(
        &a,
        Some(b.identity.id()),
        b"u",
        Body::Request(Request::Ping),
    );
    let bytes = a
        .codec
        .encode(&m, &mut cx(&mut CountRng(11), T0, a.identity.id()))
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    // The same signature in upper case: refused as malformed (it would be a second form).
    let n = text.len();
    let upper = format!(
        "{}{}{}",
        &text[..n - 130],
        text[n - 130..n - 2].to_uppercase(),
        &text[n - 2..]
    );
    let mut rx = NativeCodec::new(b.identity.clone());
    assert!(matches!(
        rx.decode(
            upper.as_bytes(),
            &mut cx(&mut CountRng(0), T0, b.identity.id())
        ),
        Err(DecodeError::Malformed(_))
    ));
    // A signed array instead of an object: refused.
    let arr = r#"["2.0","01"]"#;
    let d = forge(&a, arr);
    assert!(matches!(
        rx.decode(&d, &mut cx(&mut CountRng(0), T0, b.identity.id())),
        Err(DecodeError::Malformed(_))
    ));
    // The genuine one passes.
    assert!(
        rx.decode(&bytes, &mut cx(&mut CountRng(0), T0, b.identity.id()))
            .is_ok()
    );
}

fn party_with(identity: NativeIdentity, port: u16, min_work: u32) -> Party {
    let identity = Arc::new(identity);
    let contact = Contact::new(
        identity.id(),
        format!("udp://127.0.0.1:{port}").parse().unwrap(),
    );
    Party {
        codec: NativeCodec::new(identity.clone()).min_id_work(min_work),
        identity,
        contact,
    }
}

/// The id cost: a node that requires 8 bits of work drops messages from weaker ids (as an
/// authentication failure, before the signature check) and strips weaker contacts from the
/// answers it receives; identities made with `generate_with_work` get through.
#[test]
fn id_work_is_required_of_senders_and_of_the_contacts_they_name() {
    let mut rng = CountRng(7);
    let strong = NativeIdentity::generate_with_work(&mut rng, 8);
    assert!(native::id_work(&strong.id()) >= 8);
    // A weak identity: the first one generated with less than 8 bits.
    let weak = loop {
        let id = NativeIdentity::generate(&mut rng);
        if native::id_work(&id.id()) < 8 {
            break id;
        }
    };
    let mut judge = party_with(NativeIdentity::generate_with_work(&mut rng, 8), 7000, 8);
    let mut s = party_with(strong, 7001, 0);
    let mut w = party_with(weak, 7002, 0);
    let to = Some(judge.identity.id());
    let ping = msg(&w, to, b"t1", Body::Request(Request::Ping));
    match send(&mut w, &mut judge, &ping, T0, T0) {
        Err(DecodeError::Auth(why)) => assert!(why.contains("8 required"), "{why}"),
        other => panic!("weak sender accepted: {other:?}"),
    }
    let ping = msg(&s, to, b"t2", Body::Request(Request::Ping));
    assert!(send(&mut s, &mut judge, &ping, T0, T0).is_ok());
    // An answer naming a weak and a strong contact: only the strong one is kept.
    let nodes = vec![w.contact.clone(), s.contact.clone(), judge.contact.clone()];
    let answer = msg(
        &s,
        to,
        b"t3",
        Body::Response(Response::Nodes {
            nodes: nodes.clone(),
        }),
    );
    let got = send(&mut s, &mut judge, &answer, T0, T0).unwrap();
    match got.body {
        Body::Response(Response::Nodes { nodes: kept }) => {
            assert_eq!(kept, vec![s.contact.clone(), judge.contact.clone()]);
        }
        other => panic!("{other:?}"),
    }
    // A node without the requirement takes everything.
    let answer = msg(
        &s,
        Some(w.identity.id()),
        b"t4",
        Body::Response(Response::Nodes { nodes }),
    );
    let got = send(&mut s, &mut w, &answer, T0, T0).unwrap();
    assert!(matches!(got.body, Body::Response(Response::Nodes { nodes }) if nodes.len() == 3));
}

/// `id_work` counts leading zero bits of SHA-256(id), across byte boundaries.
#[test]
fn id_work_counts_leading_zero_bits_of_the_hash() {
    let mut rng = CountRng(99);
    let mut seen = [false; 12];
    for _ in 0..4000 {
        let id = NativeIdentity::generate(&mut rng).id();
        let w = native::id_work(&id) as usize;
        if w < seen.len() {
            seen[w] = true;
        }
        use sha2::Digest;
        let h = sha2::Sha256::digest(id.as_bytes());
        let bits: String = h.iter().map(|b| format!("{b:08b}")).collect();
        assert_eq!(w, bits.chars().take_while(|c| *c == '0').count());
    }
    // With 4000 ids every count from 0 to 7 turns up.
    assert!(seen[..8].iter().all(|s| *s), "{seen:?}");
}

/// PROTOCOL.md section 1's id-work examples.
#[test]
fn protocol_md_id_work_examples() {
    let one = NativeIdentity::from_secret(&hex32(SECRET_A)).unwrap();
    assert_eq!(native::id_work(&one.id()), 0);
    let first = (1u32..)
        .map(|n| {
            let mut s = [0u8; 32];
            s[28..].copy_from_slice(&n.to_be_bytes());
            (n, NativeIdentity::from_secret(&s).unwrap())
        })
        .find(|(_, id)| native::id_work(&id.id()) >= 8)
        .unwrap();
    use sha2::Digest;
    let h = sha2::Sha256::digest(first.1.id().as_bytes());
    println!(
        "WORK8 {} {} {}",
        first.0,
        first.1.id(),
        hex::encode(&h[..2])
    );
    let doc = include_str!("../../PROTOCOL.md");
    assert!(
        doc.contains(&format!("is {} (id `{}`", first.0, first.1.id())),
        "PROTOCOL.md section 1"
    );
}

/// Wraps `signed` text in a version 2 envelope with the MAC of `from` to `to` under `pair`.
fn mac_forge(pair: &[u8; 32], from: NodeId, to: NodeId, signed: &str) -> Vec<u8> {
    let tag = native::mac_tag(pair, &from, &to, signed.as_bytes());
    format!("[{signed},\"{}\"]", hex::encode(tag)).into_bytes()
}

/// Every rejection of version 1 has its version 2 twin, each counted under its own reason; and
/// the MAC binds the direction and the key.
#[test]
fn each_version_2_rejection_has_its_own_reason() {
    let mut a = party(SECRET_A, 4000);
    let mut b = party(SECRET_B, 4001);
    let c = party(SECRET_C, 4002);
    introduce(&mut a, &b);
    let to_b = msg(
        &a,
        Some(b.identity.id()),
        b"v2",
        Body::Request(Request::FindNode {
            target: b.identity.id(),
        }),
    );
    let enc = |a: &mut Party, rng: u64, ts: u64| {
        a.codec
            .encode(&to_b, &mut cx(&mut CountRng(rng), ts, a.identity.id()))
            .unwrap()
    };
    let bytes = enc(&mut a, 100, T0);
    assert!(bytes.ends_with(b"\"]") && bytes[bytes.len() - 68..].starts_with(b",\""));
    assert!(String::from_utf8_lossy(&bytes).contains(r#""kad":{"v":2,"#));
    let mut rx = |bytes: &[u8], now: u64| {
        b.codec
            .decode(bytes, &mut cx(&mut CountRng(0), now, b.identity.id()))
    };
    // Stale, on either side of the window; then accepted within it.
    assert!(matches!(
        rx(&bytes, T0 + SKEW + 1),
        Err(DecodeError::Stale { skew_ms: -60_001 })
    ));
    assert!(matches!(
        rx(&bytes, T0 - SKEW - 1),
        Err(DecodeError::Stale { skew_ms: 60_001 })
    ));
    // Bad MAC: a digit of the tag, or a byte of the text; neither burns the nonce.
    let mut flip = bytes.to_vec();
    let at = flip.len() - 5;
    flip[at] = if flip[at] == b'0' { b'1' } else { b'0' };
    assert!(matches!(rx(&flip, T0), Err(DecodeError::BadMac)));
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let tampered = text.replace("udp://127.0.0.1:4000", "udp://127.0.0.1:4999");
    assert!(matches!(
        rx(tampered.as_bytes(), T0),
        Err(DecodeError::BadMac)
    ));
    // Upper-case MAC: a second form of the same message, refused.
    let n = text.len();
    let upper = format!(
        "{}{}{}",
        &text[..n - 66],
        text[n - 66..n - 2].to_uppercase(),
        &text[n - 2..]
    );
    assert!(matches!(
        rx(upper.as_bytes(), T0),
        Err(DecodeError::Malformed(_))
    ));
    assert!(rx(&bytes, T0).is_ok());
    // Replay.
    assert!(matches!(rx(&bytes, T0 + 5), Err(DecodeError::Replay)));

    let pair = native::pair_key(&a.identity, &b.identity.public_key_bytes()).unwrap();
    let signed = |from: &Party, id: NodeId, to: &str, v: u32, nonce: u32| {
        format!(
            r#"{{"jsonrpc":"2.0","id":"02","method":"PING","params":{{}},"kad":{{"v":{v},"from":{{"id":"{id}","key":"{}","addrs":[]}},"to":{to},"ts":{T0},"nonce":"{nonce:016x}"}}}}"#,
            hex::encode(from.identity.public_key_bytes()),
        )
    };
    let to_b_json = format!("\"{}\"", b.identity.id());
    let (ida, idb) = (a.identity.id(), b.identity.id());
    // A correct hand-made message passes (the harness computes the MAC as documented).
    assert!(
        rx(
            &mac_forge(&pair, ida, idb, &signed(&a, ida, &to_b_json, 2, 1)),
            T0
        )
        .is_ok()
    );
    // Direction: the MAC of B-to-A (same pairwise key) does not authenticate A-to-B.
    assert!(matches!(
        rx(
            &mac_forge(&pair, idb, ida, &signed(&a, ida, &to_b_json, 2, 2)),
            T0
        ),
        Err(DecodeError::BadMac)
    ));
    // A third party C claiming to be A, with A's key, cannot compute K_AB: its own K_CB fails.
    let pair_cb = native::pair_key(&c.identity, &b.identity.public_key_bytes()).unwrap();
    assert!(matches!(
        rx(
            &mac_forge(&pair_cb, ida, idb, &signed(&a, ida, &to_b_json, 2, 3)),
            T0
        ),
        Err(DecodeError::BadMac)
    ));
    // C's key under A's id.
    assert!(matches!(
        rx(
            &mac_forge(&pair_cb, ida, idb, &signed(&c, ida, &to_b_json, 2, 4)),
            T0
        ),
        Err(DecodeError::IdMismatch)
    ));
    // A key that is not a point: a bad MAC.
    let bad_key = signed(&a, ida, &to_b_json, 2, 5).replace(
        &hex::encode(a.identity.public_key_bytes()),
        &format!("02{}", "ff".repeat(32)),
    );
    assert!(matches!(
        rx(&mac_forge(&pair, ida, idb, &bad_key), T0),
        Err(DecodeError::BadMac)
    ));
    // Addressed to C, or to no one (a MAC binds a recipient): wrong recipient.
    let to_c = format!("\"{}\"", c.identity.id());
    assert!(matches!(
        rx(
            &mac_forge(&pair, ida, c.identity.id(), &signed(&a, ida, &to_c, 2, 6)),
            T0
        ),
        Err(DecodeError::WrongRecipient)
    ));
    assert!(matches!(
        rx(
            &mac_forge(&pair, ida, idb, &signed(&a, ida, "null", 2, 7)),
            T0
        ),
        Err(DecodeError::WrongRecipient)
    ));
    // A MAC on a version 1 message, a signature on a version 2 one: malformed.
    assert!(matches!(
        rx(
            &mac_forge(&pair, ida, idb, &signed(&a, ida, &to_b_json, 1, 8)),
            T0
        ),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        rx(&forge(&a, &signed(&a, ida, &to_b_json, 2, 9)), T0),
        Err(DecodeError::Malformed(_))
    ));

    // A contact listed with a key that is not its own: the whole answer is dropped.
    let listed = |key: &Party| {
        format!(
            r#"{{"jsonrpc":"2.0","id":"03","result":{{"nodes":[{{"id":"{}","addrs":["udp://127.0.0.1:4002"],"key":"{}"}}]}},"kad":{{"v":2,"from":{{"id":"{ida}","key":"{}","addrs":[]}},"to":"{idb}","ts":{T0},"nonce":"{:016x}"}}}}"#,
            c.identity.id(),
            hex::encode(key.identity.public_key_bytes()),
            hex::encode(a.identity.public_key_bytes()),
            key.identity.id().as_bytes()[0],
        )
    };
    assert!(matches!(
        rx(&mac_forge(&pair, ida, idb, &listed(&a)), T0),
        Err(DecodeError::IdMismatch)
    ));
    let ok = rx(&mac_forge(&pair, ida, idb, &listed(&c)), T0).unwrap();
    assert!(matches!(ok.body, Body::Response(Response::Nodes { ref nodes }) if nodes.len() == 1));
    // ... and B now MACs its first message to C, learned from the list.
    assert!(b.codec.would_mac(&c.identity.id()));
}

/// A version 1 node and a version 2 node talk: the version 2 node never sends version 2 to it,
/// and both decode everything the other sends.
#[test]
fn a_version_1_node_and_a_version_2_node_understand_each_other() {
    let mut old = party(SECRET_A, 4000);
    old.codec = NativeCodec::new(old.identity.clone()).max_version(1);
    let mut new = party(SECRET_B, 4001);
    let ping = msg(
        &old,
        Some(new.identity.id()),
        b"p",
        Body::Request(Request::Ping),
    );
    let got = send(&mut old, &mut new, &ping, T0, T0).unwrap();
    assert_eq!(got.body, Body::Request(Request::Ping));
    assert!(
        !new.codec.would_mac(&old.identity.id()),
        "no `up`: version 1"
    );
    let pong = msg(
        &new,
        Some(old.identity.id()),
        b"p",
        Body::Response(Response::Pong),
    );
    let bytes = new
        .codec
        .encode(&pong, &mut cx(&mut CountRng(5), T0, new.identity.id()))
        .unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains(r#""kad":{"v":1,"#));
    old.codec
        .decode(&bytes, &mut cx(&mut CountRng(0), T0, old.identity.id()))
        .unwrap();
    // The version 1 node learned the other speaks 2 (`up`), and still signs: it speaks only 1.
    assert!(!old.codec.would_mac(&new.identity.id()));
    let again = msg(
        &old,
        Some(new.identity.id()),
        b"q",
        Body::Request(Request::Ping),
    );
    let bytes = old
        .codec
        .encode(&again, &mut cx(&mut CountRng(9), T0, old.identity.id()))
        .unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains(r#""up""#));
    new.codec
        .decode(&bytes, &mut cx(&mut CountRng(0), T0, new.identity.id()))
        .unwrap();
}

/// Two version 2 nodes: the first message each way is signed, every later one carries a MAC.
#[test]
fn two_version_2_nodes_sign_once_then_mac() {
    let mut a = party(SECRET_A, 4000);
    let mut b = party(SECRET_B, 4001);
    let mut kinds = Vec::new();
    let mut step = |from: &mut Party, to: &mut Party, i: u8| {
        let m = msg(
            from,
            Some(to.identity.id()),
            &[i],
            Body::Request(Request::Ping),
        );
        let bytes = from
            .codec
            .encode(
                &m,
                &mut cx(&mut CountRng(u64::from(i) << 8), T0, from.identity.id()),
            )
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        kinds.push(if text.contains(r#""v":2"#) {
            "mac"
        } else {
            "sig"
        });
        to.codec
            .decode(&bytes, &mut cx(&mut CountRng(0), T0, to.identity.id()))
            .unwrap();
    };
    for i in 0..3u8 {
        step(&mut a, &mut b, 2 * i);
        step(&mut b, &mut a, 2 * i + 1);
    }
    assert_eq!(kinds, ["sig", "mac", "mac", "mac", "mac", "mac"]);
    assert_eq!(a.codec.known_peers(), 1);
}

/// On a link that proves both ends (QUIC), version 2 messages carry no signature or MAC; such a
/// message is accepted only when the transport proved its sender, and only that sender.
#[test]
fn a_proven_link_carries_messages_without_signature_or_mac() {
    let mut a = party(SECRET_A, 4000);
    let mut b = party(SECRET_B, 4001);
    let c = party(SECRET_C, 4002);
    introduce(&mut a, &b);
    let m = msg(
        &a,
        Some(b.identity.id()),
        b"q1",
        Body::Request(Request::Ping),
    );
    let (ida, idb, idc) = (a.identity.id(), b.identity.id(), c.identity.id());
    let bytes = encode_via(&mut a, &m, T0, 1 << 32, Some(idb));
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.ends_with(r#"}},""]"#), "{text}");
    assert!(text.contains(r#""kad":{"v":2,"#));
    // A link proving another recipient: a MAC, as on UDP.
    let other = encode_via(&mut a, &m, T0, 2 << 32, Some(idc));
    assert!(other[other.len() - 68..].starts_with(b",\""));
    // Not over a proving link (UDP), or over one that proved someone else: refused, counted.
    assert!(matches!(
        decode_via(&mut b, &bytes, T0, None),
        Err(DecodeError::Unproven)
    ));
    assert!(matches!(
        decode_via(&mut b, &bytes, T0, Some(idc)),
        Err(DecodeError::Unproven)
    ));
    // Tampering is the link's business (TLS); the replay, stale and recipient checks still run.
    assert!(decode_via(&mut b, &bytes, T0, Some(ida)).is_ok());
    assert!(matches!(
        decode_via(&mut b, &bytes, T0, Some(ida)),
        Err(DecodeError::Replay)
    ));
    let late = encode_via(&mut a, &m, T0 - SKEW - 1, 9 << 32, Some(idb));
    assert!(matches!(
        decode_via(&mut b, &late, T0, Some(ida)),
        Err(DecodeError::Stale { .. })
    ));
    // A peer not known to speak version 2 is signed to, proving link or not.
    let mut fresh = party(SECRET_A, 4000);
    let signed = encode_via(&mut fresh, &m, T0, 5, Some(idb));
    assert!(String::from_utf8_lossy(&signed).contains(r#""kad":{"v":1,"#));
    // A signature is checked unless the link proved that very sender.
    let mut bad = signed.to_vec();
    let at = bad.len() - 5;
    bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
    let mut rx = party(SECRET_B, 4001);
    assert!(matches!(
        decode_via(&mut rx, &bad, T0, Some(idc)),
        Err(DecodeError::BadSignature)
    ));
    assert!(matches!(
        decode_via(&mut rx, &bad, T0, None),
        Err(DecodeError::BadSignature)
    ));
    assert!(decode_via(&mut rx, &bad, T0, Some(ida)).is_ok());
}
