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

#![no_main]

use std::sync::{Arc, OnceLock};

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
    /// Datagrams signed at `UNIX_MS`: (bytes, recipient is A).
    base: Vec<(Vec<u8>, bool)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let a = Arc::new(NativeIdentity::from_secret(&secret(1)).expect("valid secret"));
        let b = Arc::new(NativeIdentity::from_secret(&secret(2)).expect("valid secret"));
        let base = base_messages(&a, &b)
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let (from, to_a) = if m.sender.id == a.id() {
                    (&a, false)
                } else {
                    (&b, true)
                };
                let bytes = encode(from, &m, i as u64).expect("base message encodes");
                (bytes.to_vec(), to_a)
            })
            .collect();
        Fixture { a, b, base }
    })
}

fn cx<'a>(rng: &'a mut rand_chacha::ChaCha8Rng, local: NodeId, skew: u64) -> CodecCx<'a> {
    CodecCx {
        unix_ms: UNIX_MS,
        local_id: local,
        max_skew_ms: skew,
        rng,
        peer: None,
    }
}

fn encode(from: &Arc<NativeIdentity>, m: &Message, nonce_seed: u64) -> Result<Bytes, String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(nonce_seed);
    NativeCodec::new(from.clone())
        .encode(m, &mut cx(&mut rng, from.id(), 0))
        .map_err(|e| e.to_string())
}

fn decode(bytes: &[u8], local: NodeId, skew: u64) -> Result<Message, kad_core::DecodeError> {
    let f = fixture();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    NativeCodec::new(f.a.clone()).decode(bytes, &mut cx(&mut rng, local, skew))
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
            let sig = signer.sign_bytes(rest);
            let mut dgram = Vec::with_capacity(rest.len() + 134);
            dgram.push(b'[');
            dgram.extend_from_slice(rest);
            dgram.extend_from_slice(b",\"");
            dgram.extend_from_slice(hex::encode(sig).as_bytes());
            dgram.extend_from_slice(b"\"]");
            if let Ok(m) = decode(&dgram, local, u64::MAX) {
                assert_eq!(m.sender.id, signer.id(), "only the signer's key verifies");
                check_decoded(&m, local);
            }
        }
        _ => {}
    }
});
