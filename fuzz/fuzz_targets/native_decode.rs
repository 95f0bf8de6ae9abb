//! `native_decode`: the signed JSON-RPC codec of `kad-core` (`NativeCodec`, PROTOCOL.md).
//!
//! The first byte picks a mode (bits 0-1) and the receiving node (bit 2: A, the key with
//! secret 1, or B, secret 2); the rest depends on the mode:
//!
//! - 0, raw: the rest is a datagram, decoded at the time of the PROTOCOL.md test vectors. Never
//!   panics; a datagram that verifies (a seed) must round-trip as in mode 2.
//! - 1, mutated: the rest chooses one of a few messages validly signed by A or B and a list of
//!   byte mutations. The signature covers exactly the bytes of `SIGNED`, and the rest of the
//!   datagram is fixed by position (PROTOCOL.md section 3), so no change to a datagram is
//!   semantically irrelevant: a datagram that differs in any byte must not decode, and the
//!   unchanged one must.
//! - 2, re-signed: the rest is a `SIGNED` JSON text, which the harness signs with the sender's
//!   key (bit 3: A or B) and wraps in the envelope; any timestamp is accepted. This reaches the
//!   parser behind the signature check. Whatever decodes must re-encode with the sender's key
//!   and decode to an equal message.
//! - 3, MAC'd (version 2): the rest is a `SIGNED` JSON text, which the harness authenticates
//!   with the MAC of A and B (bit 3: from A or from B, to the other; the ids in the MAC input
//!   are those two) and wraps in the version 2 envelope: the parser behind the MAC check. What
//!   decodes must come from the MAC's sender, satisfy the limits and round-trip as in mode 2.
//!
//! The base messages of mode 1 come in both forms: signed (version 1) and MAC'd (version 2, by
//! a codec that knows the recipient). Every decoded message also re-encodes in version 2, by a
//! codec that knows its recipient, and decodes to an equal message.

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use kad_core::{Body, Codec, CodecCx, Message, NativeCodec, NativeIdentity, NodeId, Request};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

#[path = "../common/native_base.rs"]
mod native_base;
use native_base::{UNIX_MS, base_messages};

fn secret(n: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[31] = n;
    s
}

struct Fixture {
    a: Arc<NativeIdentity>,
    b: Arc<NativeIdentity>,
    /// Datagrams signed or MAC'd at `UNIX_MS`: (bytes, recipient is A).
    base: Vec<(Vec<u8>, bool)>,
    /// The pairwise key of A and B.
    pair: [u8; 32],
    /// Codecs of A (knowing B speaks version 2) and of B (knowing A): they MAC.
    warm: [Mutex<NativeCodec>; 2],
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let a = Arc::new(NativeIdentity::from_secret(&secret(1)).expect("valid secret"));
        let b = Arc::new(NativeIdentity::from_secret(&secret(2)).expect("valid secret"));
        let warm = [warm_codec(&a, &b), warm_codec(&b, &a)];
        let mut base = Vec::new();
        for (i, m) in base_messages(&a, &b).into_iter().enumerate() {
            let (from, to_a) = if m.sender.id == a.id() {
                (&a, false)
            } else {
                (&b, true)
            };
            let bytes = encode(from, &m, i as u64).expect("base message encodes");
            base.push((bytes.to_vec(), to_a));
            if m.recipient.is_some() {
                let w = &warm[usize::from(to_a)];
                let mut w = w.lock().expect("not poisoned");
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1000 + i as u64);
                let mac = w
                    .encode(&m, &mut cx(&mut rng, from.id(), 0))
                    .expect("base message encodes");
                assert!(mac.ends_with(b"\"]") && mac[mac.len() - 68..].starts_with(b",\""));
                base.push((mac.to_vec(), to_a));
            }
        }
        let pair = kad_core::native::pair_key(&a, &b.public_key_bytes()).expect("valid key");
        Fixture {
            a,
            b,
            base,
            pair,
            warm,
        }
    })
}

fn cx<'a>(rng: &'a mut rand_chacha::ChaCha8Rng, local: NodeId, skew: u64) -> CodecCx<'a> {
    CodecCx {
        unix_ms: UNIX_MS,
        local_id: local,
        max_skew_ms: skew,
        rng,
        peer: None,
        proven: None,
    }
}

/// A codec of `me` that has heard a signed version 2 PING from `peer`, so it MACs to it.
fn warm_codec(me: &Arc<NativeIdentity>, peer: &Arc<NativeIdentity>) -> Mutex<NativeCodec> {
    let ping = Message {
        txn: kad_core::TxnId::from_bytes(vec![7]),
        sender: kad_core::Contact::new(peer.id(), "udp://127.0.0.1:9".parse().expect("addr")),
        recipient: Some(me.id()),
        read_only: false,
        observed: None,
        body: Body::Request(Request::Ping),
    };
    let bytes = encode(peer, &ping, 7).expect("ping encodes");
    let mut codec = NativeCodec::new(me.clone());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    codec
        .decode(&bytes, &mut cx(&mut rng, me.id(), 60_000))
        .expect("the ping decodes");
    assert!(codec.would_mac(&peer.id()));
    Mutex::new(codec)
}

fn encode(from: &Arc<NativeIdentity>, m: &Message, nonce_seed: u64) -> Result<Bytes, String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(nonce_seed);
    NativeCodec::new(from.clone())
        .encode(m, &mut cx(&mut rng, from.id(), 0))
        .map_err(|e| e.to_string())
}

/// Decodes as `local` (A or B) with a fresh codec (no replay history, no known peers).
fn decode(bytes: &[u8], local: NodeId, skew: u64) -> Result<Message, kad_core::DecodeError> {
    let f = fixture();
    let me = if local == f.b.id() { &f.b } else { &f.a };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    NativeCodec::new(me.clone()).decode(bytes, &mut cx(&mut rng, local, skew))
}

/// What a decoded message must satisfy, and its round trip through the sender's encoder.
fn check_decoded(m1: &Message, local: NodeId) {
    let f = fixture();
    assert!((1..=32).contains(&m1.txn.0.len()));
    assert!(m1.sender.addrs.len() <= 8);
    assert!(m1.recipient.is_none_or(|r| r == local));
    if m1.recipient.is_none() {
        assert!(
            matches!(m1.body, Body::Request(Request::Ping)),
            "only PING may omit `to`"
        );
    }
    match &m1.body {
        Body::Request(_) => assert!(m1.observed.is_none(), "requests carry no `seen`"),
        Body::Response(r) => {
            assert!(r.nodes().len() <= 64);
            assert!(r.nodes().iter().all(|c| c.addrs.len() <= 8));
        }
        _ => {}
    }
    let from = if m1.sender.id == f.a.id() {
        &f.a
    } else if m1.sender.id == f.b.id() {
        &f.b
    } else {
        // Signed by a key the harness does not hold (a foreign seed): nothing to re-sign with.
        return;
    };
    let enc = match encode(from, m1, 99) {
        Ok(b) => b,
        Err(e) => panic!("a decoded message does not re-encode: {e}: {m1:?}"),
    };
    let m2 = decode(&enc, local, 60_000).expect("a re-encoded message decodes");
    assert_eq!(&m2, m1, "round trip");
    // And in version 2, by a codec that knows the recipient (A and B know each other).
    if m1.recipient == Some(local) && local != m1.sender.id {
        let w = &f.warm[usize::from(m1.sender.id == f.b.id())];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(98);
        let enc = match w
            .lock()
            .expect("not poisoned")
            .encode(m1, &mut cx(&mut rng, m1.sender.id, 0))
        {
            Ok(b) => b,
            Err(e) => panic!("a decoded message does not re-encode in version 2: {e}: {m1:?}"),
        };
        assert!(enc[enc.len() - 68..].starts_with(b",\""), "MAC'd");
        let m3 = decode(&enc, local, 60_000).expect("a MAC'd message decodes");
        assert_eq!(&m3, m1, "version 2 round trip");
    }
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    Flip {
        at: u16,
        bit: u8,
    },
    Set {
        at: u16,
        byte: u8,
    },
    Insert {
        at: u16,
        byte: u8,
    },
    Remove {
        at: u16,
    },
    Swap {
        a: u16,
        b: u16,
    },
    /// Copies a run of the message over another place (keeps it JSON-looking).
    Copy {
        from: u16,
        to: u16,
        len: u8,
    },
    Truncate {
        len: u16,
    },
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    let n = b.len().max(1);
    match *m {
        Mutation::Flip { at, bit } => {
            if let Some(x) = b.get_mut(usize::from(at) % n) {
                *x ^= 1 << (bit % 8);
            }
        }
        Mutation::Set { at, byte } => {
            if let Some(x) = b.get_mut(usize::from(at) % n) {
                *x = byte;
            }
        }
        Mutation::Insert { at, byte } => b.insert(usize::from(at) % (b.len() + 1), byte),
        Mutation::Remove { at } => {
            if !b.is_empty() {
                b.remove(usize::from(at) % n);
            }
        }
        Mutation::Swap { a, b: c } => {
            if !b.is_empty() {
                b.swap(usize::from(a) % n, usize::from(c) % n);
            }
        }
        Mutation::Copy { from, to, len } => {
            let (from, to) = (usize::from(from) % n, usize::from(to) % n);
            let len = usize::from(len)
                .min(b.len() - from.min(b.len()))
                .min(b.len() - to);
            let run = b[from..from + len].to_vec();
            b[to..to + len].copy_from_slice(&run);
        }
        Mutation::Truncate { len } => b.truncate(usize::from(len)),
    }
}

/// `[SIGNED,"AUTH"]`: `signed` and the hex of `auth` (a signature or a MAC).
fn envelope(signed: &[u8], auth: &[u8]) -> Vec<u8> {
    let mut dgram = Vec::with_capacity(signed.len() + 2 * auth.len() + 6);
    dgram.push(b'[');
    dgram.extend_from_slice(signed);
    dgram.extend_from_slice(b",\"");
    dgram.extend_from_slice(hex::encode(auth).as_bytes());
    dgram.extend_from_slice(b"\"]");
    dgram
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, rest)) = input.split_first() else {
        return;
    };
    let f = fixture();
    let local = if sel & 4 == 0 { f.a.id() } else { f.b.id() };
    match sel & 3 {
        0 => {
            if let Ok(m) = decode(rest, local, 60_000) {
                check_decoded(&m, local);
            }
        }
        1 => {
            let mut u = Unstructured::new(rest);
            let Ok(i) = u.arbitrary::<u8>() else { return };
            let (original, to_a) = &f.base[usize::from(i) % f.base.len()];
            let local = if *to_a { f.a.id() } else { f.b.id() };
            let mut bytes = original.clone();
            for _ in 0..16 {
                if u.is_empty() {
                    break;
                }
                match u.arbitrary::<Mutation>() {
                    Ok(m) => apply(&mut bytes, &m),
                    Err(_) => break,
                }
            }
            let r = decode(&bytes, local, 60_000);
            if bytes == *original {
                let m = r.expect("the unchanged message verifies");
                check_decoded(&m, local);
            } else {
                assert!(
                    r.is_err(),
                    "a changed datagram was accepted:\n{}\n{:?}",
                    String::from_utf8_lossy(&bytes),
                    r
                );
            }
        }
        2 => {
            let signer = if sel & 8 == 0 { &f.a } else { &f.b };
            let dgram = envelope(rest, &signer.sign_bytes(rest));
            if let Ok(m) = decode(&dgram, local, u64::MAX) {
                assert_eq!(m.sender.id, signer.id(), "only the signer's key verifies");
                check_decoded(&m, local);
            }
        }
        _ => {
            // From A to B (bit 3 clear) or from B to A, MAC'd with their pairwise key.
            let (from, to) = if sel & 8 == 0 {
                (&f.a, &f.b)
            } else {
                (&f.b, &f.a)
            };
            let tag = kad_core::native::mac_tag(&f.pair, &from.id(), &to.id(), rest);
            let dgram = envelope(rest, &tag);
            if let Ok(m) = decode(&dgram, to.id(), u64::MAX) {
                assert_eq!(m.sender.id, from.id(), "only the MAC's sender verifies");
                assert_eq!(
                    m.recipient,
                    Some(to.id()),
                    "a MAC'd message names its recipient"
                );
                check_decoded(&m, to.id());
            }
        }
    }
});
