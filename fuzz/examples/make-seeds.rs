//! Writes the committed seed corpus, `fuzz/corpus/<target>/`, with the libraries' own encoders.
//!
//! Run from `fuzz/`: `cargo run --example make-seeds` (it replaces the files it writes and
//! leaves others alone). File names are the seeds' purpose; the first byte of each is the
//! target's selector byte (see each target's header).
//!
//! - `krpc_decode`: KRPC queries, answers and errors from `KrpcCodec::encode` (ping,
//!   find_node, get_peers, announce_peer, get, put with the signed BEP44 mutable item of test
//!   vector 1 and an immutable one, sample_infohashes, read-only with `want`), answers with
//!   `nodes`/`nodes6`/`values`, each with the flags that make the codec expect it;
//! - `native_decode`: the PROTOCOL.md test vectors re-encoded by `NativeCodec` (same time and
//!   nonce, so the same bytes) and the harness's base messages, for all three modes;
//! - `manifest_parse`: manifests and index blobs of small plain and encrypted files laid out
//!   with `index_blobs`, `chunk_root`, `seal_chunk` and `Manifest::to_bytes`;
//! - `engine_inputs`, `routing_table`: their inputs are decoded by `arbitrary`, not a wire
//!   format: a few fixed pseudo-random byte strings to start from.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use kad_core::{
    Body, Codec, CodecCx, Contact, Message, NativeCodec, NativeIdentity, NodeId, PeerAddr, Request,
    Response, RpcError, TxnId,
};
use kad_plugin_bep44::bencode::{self, Dict};
use kad_plugin_bep44::{KrpcCodec, KrpcLimits, KrpcShared};
use kad_plugin_storage::{
    Encryption, FileKey, Manifest, chunk_root, content_key, index_blobs, seal_chunk,
};
use rand::{RngCore, SeedableRng};

#[path = "../common/native_base.rs"]
mod native_base;

fn out_dir(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&d).expect("create the corpus directory");
    d
}

fn write(target: &str, name: &str, sel: u8, bytes: &[u8]) {
    let mut v = vec![sel];
    v.extend_from_slice(bytes);
    fs::write(out_dir(target).join(name), v).expect("write a seed");
}

/// An RNG that yields one fixed `u64` (the nonce of a PROTOCOL.md vector).
struct Fixed(u64);

impl RngCore for Fixed {
    fn next_u32(&mut self) -> u32 {
        self.0 as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for (d, s) in dst.iter_mut().zip(self.0.to_be_bytes().iter().cycle()) {
            *d = *s;
        }
    }
}

// ---- KRPC ----

const ABC: NodeId = NodeId::from_bytes(*b"abcdefghij0123456789");
const MNO: NodeId = NodeId::from_bytes(*b"mnopqrstuvwxyz123456");

fn krpc_encode(msg: &Message, peer: Option<&PeerAddr>) -> Vec<u8> {
    let mut codec = KrpcCodec::new(KrpcShared::new(KrpcLimits::default()));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut cx = CodecCx {
        unix_ms: 1_763_683_200_000,
        local_id: ABC,
        max_skew_ms: 0,
        rng: &mut rng,
        peer,
        proven: None,
    };
    codec.encode(msg, &mut cx).expect("KRPC encodes").to_vec()
}

fn krpc_msg(sender: NodeId, read_only: bool, body: Body) -> Message {
    Message {
        txn: TxnId::from_bytes(&b"aa"[..]),
        sender: Contact::with_addrs(sender, Vec::new()),
        recipient: None,
        read_only,
        observed: None,
        body,
    }
}

fn query(method: &str, params: Dict) -> Body {
    Body::Request(Request::Custom {
        method: format!("mainline.{method}"),
        params: Bytes::from(params.finish()),
    })
}

fn krpc_seeds() {
    const T: &str = "krpc_decode";
    // Flags: peer 1 = udp v4, 2 = udp v6; 4 = a request with this `t` is outstanding, its
    // method in bits 3-4 (0 ping, 1 find_node, 2 get, 3 get_peers).
    let v4 = PeerAddr::Udp("198.51.100.7:6881".parse().expect("addr"));
    let q = |name: &str, flags: u8, body: Body, ro: bool| {
        write(T, name, flags, &krpc_encode(&krpc_msg(ABC, ro, body), None));
    };
    q("q_ping", 1, Body::Request(Request::Ping), false);
    q(
        "q_find_node",
        1,
        Body::Request(Request::FindNode { target: MNO }),
        false,
    );
    q(
        "q_find_node_ro",
        2,
        Body::Request(Request::FindNode { target: MNO }),
        true,
    );
    let mut d = Dict::new();
    d.bytes(b"info_hash", MNO.as_bytes());
    q("q_get_peers", 1, query("get_peers", d), false);
    let mut d = Dict::new();
    d.int(b"implied_port", 1)
        .bytes(b"info_hash", MNO.as_bytes())
        .int(b"port", 6881)
        .bytes(b"token", b"aoeusnth");
    q("q_announce_peer", 1, query("announce_peer", d), false);
    let mut d = Dict::new();
    d.int(b"seq", 4).bytes(b"target", MNO.as_bytes());
    q("q_get", 1, query("get", d), false);
    // BEP44 test vector 1: a mutable item, seq 1, signed by the published key.
    let k = hex::decode("77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548")
        .expect("hex");
    let sig = hex::decode(
        "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff\
         1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01",
    )
    .expect("hex");
    let mut d = Dict::new();
    d.bytes(b"k", &k)
        .int(b"seq", 1)
        .bytes(b"sig", &sig)
        .bytes(b"token", b"aoeusnth")
        .raw(b"v", b"12:Hello World!");
    q("q_put_mutable", 1, query("put", d), false);
    let mut d = Dict::new();
    d.bytes(b"token", b"aoeusnth").raw(b"v", b"12:Hello World!");
    q("q_put_immutable", 1, query("put", d), false);
    let mut d = Dict::new();
    d.bytes(b"target", MNO.as_bytes());
    q(
        "q_sample_infohashes",
        2,
        query("sample_infohashes", d),
        false,
    );
    let mut d = Dict::new();
    d.bytes(b"target", MNO.as_bytes())
        .bytes_list(b"want", [&b"n4"[..], b"n6"]);
    q("q_find_node_want", 1, query("find_node", d), true);

    // Answers, as a peer sends them (with our `ip`), typed by the request the flags recreate.
    let nodes = vec![
        Contact::new(MNO, PeerAddr::Udp("127.0.0.1:7000".parse().expect("addr"))),
        Contact::new(
            ABC,
            PeerAddr::Udp("[2001:db8::1]:7001".parse().expect("addr")),
        ),
        Contact::new(
            NodeId::from_bytes([0x33; 20]),
            PeerAddr::Udp("10.1.2.3:6881".parse().expect("addr")),
        ),
    ];
    let r = |name: &str, flags: u8, body: Body| {
        write(
            T,
            name,
            flags,
            &krpc_encode(&krpc_msg(MNO, false, body), Some(&v4)),
        );
    };
    r("r_ping", 1 | 4, Body::Response(Response::Pong));
    r(
        "r_find_node",
        1 | 4 | (1 << 3),
        Body::Response(Response::Nodes {
            nodes: nodes.clone(),
        }),
    );
    let mut d = Dict::new();
    d.bytes(b"k", &k)
        .int(b"seq", 1)
        .bytes(b"sig", &sig)
        .bytes(b"token", b"tok1")
        .raw(b"v", b"12:Hello World!");
    r(
        "r_get_mutable",
        1 | 4 | (2 << 3),
        Body::Response(Response::Custom {
            result: Bytes::from(d.finish()),
            nodes: nodes.clone(),
        }),
    );
    let mut d = Dict::new();
    d.bytes(b"token", b"aoeusnth")
        .bytes_list(b"values", [&b"axje.u"[..], b"idhtnm"]);
    r(
        "r_get_peers",
        1 | 4 | (3 << 3),
        Body::Response(Response::Custom {
            result: Bytes::from(d.finish()),
            nodes,
        }),
    );
    // An error and an answer nobody asked for.
    r(
        "e_generic",
        1 | 4,
        Body::Error(RpcError::new(201, "A Generic Error Ocurred")),
    );
    r(
        "e_cas",
        1 | 4 | (2 << 3),
        Body::Error(RpcError::new(301, "CAS mismatch")),
    );
    r("r_unsolicited", 0, Body::Response(Response::Pong));
    let mut v = Vec::new();
    bencode::put_bytes(&mut v, b"compact");
    write(T, "not_a_dict", 1, &v);
}

// ---- native ----

fn native_seeds() {
    const T: &str = "native_decode";
    let secret = |n: u8| {
        let mut s = [0u8; 32];
        s[31] = n;
        s
    };
    let a = Arc::new(NativeIdentity::from_secret(&secret(1)).expect("valid secret"));
    let b = Arc::new(NativeIdentity::from_secret(&secret(2)).expect("valid secret"));
    // The PROTOCOL.md vectors are version 1 (no `up`); the base messages announce version 2.
    let encode = |from: &Arc<NativeIdentity>,
                  m: &Message,
                  unix_ms: u64,
                  rng: &mut dyn RngCore,
                  version: u32| {
        let mut cx = CodecCx {
            unix_ms,
            local_id: from.id(),
            max_skew_ms: 0,
            rng,
            peer: None,
            proven: None,
        };
        NativeCodec::new(from.clone())
            .max_version(version)
            .encode(m, &mut cx)
            .expect("native encodes")
            .to_vec()
    };
    // The PROTOCOL.md vectors (mode 0, decoded at their time by their recipient).
    let udp = |p: u16| -> PeerAddr { format!("udp://127.0.0.1:{p}").parse().expect("addr") };
    let msg = |from: &NativeIdentity, addr, txn: &[u8], to: Option<NodeId>, body| Message {
        txn: TxnId::from_bytes(txn.to_vec()),
        sender: Contact::new(from.id(), addr),
        recipient: to,
        read_only: false,
        observed: None,
        body,
    };
    let ping = msg(
        &a,
        udp(4000),
        &[1, 2, 3, 4],
        None,
        Body::Request(Request::Ping),
    );
    let find = msg(
        &a,
        udp(4000),
        &[0xca, 0xfe, 0, 1],
        Some(b.id()),
        Body::Request(Request::FindNode { target: b.id() }),
    );
    let nodes = msg(
        &b,
        udp(4001),
        &[0xca, 0xfe, 0, 1],
        Some(a.id()),
        Body::Response(Response::Nodes {
            nodes: vec![Contact::new(b.id(), udp(4001))],
        }),
    );
    let v_ping = encode(
        &a,
        &ping,
        1_763_683_200_000,
        &mut Fixed(0x0102030405060708),
        1,
    );
    let v_find = encode(
        &a,
        &find,
        1_763_683_200_001,
        &mut Fixed(0x1111111111111111),
        1,
    );
    let v_nodes = encode(
        &b,
        &nodes,
        1_763_683_200_002,
        &mut Fixed(0x2222222222222222),
        1,
    );
    assert!(
        v_ping.ends_with(b"6791af\"]"),
        "the PROTOCOL.md ping vector, byte for byte"
    );
    write(T, "raw_vector_ping", 4, &v_ping);
    write(T, "raw_vector_find_node", 4, &v_find);
    write(T, "raw_vector_nodes", 0, &v_nodes);
    // The harness's base messages: unmutated (mode 1), and their SIGNED text (mode 2).
    for (i, m) in native_base::base_messages(&a, &b).iter().enumerate() {
        let (from, sel) = if m.sender.id == a.id() {
            (&a, 4u8)
        } else {
            (&b, 8u8)
        };
        let kind = match &m.body {
            Body::Request(r) => r.method().to_ascii_lowercase(),
            Body::Response(_) => "answer".into(),
            _ => "error".into(),
        };
        write(T, &format!("mutate_{i:02}_{kind}"), 1, &[i as u8]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
        let d = encode(from, m, native_base::UNIX_MS, &mut rng, 2);
        let signed = &d[1..d.len() - 132];
        write(T, &format!("resign_{i:02}_{kind}"), 2 | sel, signed);
        if i == 1 {
            write(T, &format!("raw_{i:02}_{kind}"), 4, &d);
        }
        // Version 2: the same text as a version 2 message, MAC'd by the harness (mode 3), and
        // one whole MAC'd datagram (mode 0).
        if let Some(to) = m.recipient {
            let dir = if m.sender.id == a.id() { 0u8 } else { 8u8 };
            let v2 = String::from_utf8(signed.to_vec())
                .expect("utf-8")
                .replacen(r#""kad":{"v":1,"#, r#""kad":{"v":2,"#, 1)
                .replacen(r#","up":2"#, "", 1);
            write(T, &format!("mac_{i:02}_{kind}"), 3 | dir, v2.as_bytes());
            if i == 1 {
                let pair = kad_core::native::pair_key(&a, &b.public_key_bytes()).expect("key");
                let tag = kad_core::native::mac_tag(&pair, &m.sender.id, &to, v2.as_bytes());
                let dgram = format!("[{v2},\"{}\"]", hex::encode(tag));
                write(T, &format!("raw_mac_{i:02}_{kind}"), 4, dgram.as_bytes());
            }
        }
    }
}

// ---- storage ----

fn manifest_seeds() {
    const T: &str = "manifest_parse";
    let file = |size: usize| -> Vec<u8> { (0..size).map(|i| (i * 7 + 3) as u8).collect() };
    let cases: [(&str, usize, u32, usize, bool, Option<&str>); 5] = [
        ("empty", 0, 1024, 40, false, None),
        ("one_chunk_named", 700, 1024, 40, false, Some("notes.txt")),
        ("plain_multi_blob", 5000, 512, 60, false, Some("report.pdf")),
        ("encrypted", 3000, 1024, 40, true, None),
        ("encrypted_exact_chunks", 4096, 1024, 100, true, None),
    ];
    let key = FileKey::from_bytes([7; 32]);
    for (name, size, chunk_size, blob_len, encrypted, file_name) in cases {
        let data = file(size);
        let chunks: Vec<&[u8]> = data.chunks(chunk_size as usize).collect();
        let count = chunks.len() as u64;
        let keys: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if encrypted {
                    content_key(&seal_chunk(&key, i as u64, count, c))
                } else {
                    content_key(c)
                }
            })
            .collect();
        let blobs = index_blobs(&keys, blob_len).expect("index blobs");
        let m = Manifest {
            size: size as u64,
            chunk_size,
            chunks: count,
            index: blobs.iter().map(|b| content_key(b)).collect(),
            root: chunk_root(&keys),
            name: file_name.map(str::to_owned),
            encryption: encrypted.then(|| Encryption {
                key_check: key.check(),
            }),
        };
        m.validate().expect("a valid manifest");
        write(T, &format!("manifest_{name}"), 0, &m.to_bytes());
        if let Some(b) = blobs.first() {
            write(T, &format!("index_{name}"), 1, b);
        }
    }
}

// ---- arbitrary-driven targets ----

fn random_seeds(target: &str, lens: &[usize]) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    for (i, len) in lens.iter().enumerate() {
        let mut b = vec![0u8; *len];
        rng.fill_bytes(&mut b);
        fs::write(out_dir(target).join(format!("random_{i:02}")), b).expect("write a seed");
    }
}

fn main() {
    krpc_seeds();
    native_seeds();
    manifest_seeds();
    random_seeds("engine_inputs", &[64, 256, 1024, 4096]);
    random_seeds("routing_table", &[64, 256, 1024, 4096]);
    println!("seeds written under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
