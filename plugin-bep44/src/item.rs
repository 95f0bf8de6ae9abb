//! BEP44 items: targets, the signing buffer, signing and verification.
//!
//! An immutable item lives at SHA-1 of its bencoded value; a mutable one at SHA-1 of the ed25519
//! public key followed by the salt, signed over `[4:salt<len>:<salt>]3:seqi<seq>e1:v<v>`.

use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use kad_core::NodeId;
use sha1::{Digest, Sha1};

use crate::bencode;

/// Largest bencoded `v` (BEP44).
pub const MAX_V: usize = 1000;
/// Largest salt (BEP44).
pub const MAX_SALT: usize = 64;

/// SHA-1 of `data`.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}

/// The target of an immutable item: SHA-1 of the bencoded value.
pub fn immutable_target(v_bencoded: &[u8]) -> NodeId {
    NodeId::from_bytes(sha1(v_bencoded))
}

/// The target of a mutable item: SHA-1 of the public key followed by the salt (empty = none).
pub fn mutable_target(pubkey: &[u8; 32], salt: &[u8]) -> NodeId {
    let mut h = Sha1::new();
    h.update(pubkey);
    h.update(salt);
    NodeId::from_bytes(h.finalize().into())
}

/// The exact bytes a mutable item's signature covers (built by concatenation, BEP44).
pub fn signing_buffer(salt: &[u8], seq: i64, v_bencoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v_bencoded.len() + salt.len() + 32);
    if !salt.is_empty() {
        out.extend_from_slice(b"4:salt");
        bencode::put_bytes(&mut out, salt);
    }
    out.extend_from_slice(b"3:seq");
    bencode::put_int(&mut out, seq);
    out.extend_from_slice(b"1:v");
    out.extend_from_slice(v_bencoded);
    out
}

/// Encodes a UTF-8 or binary value as a bencoded byte string (how the CLI stores strings).
pub fn bencode_bytes(value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 5);
    bencode::put_bytes(&mut v, value);
    v
}

/// Why a user's item cannot be built. Names the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ItemError {
    /// `v` is too large.
    #[error("v is {len} bytes bencoded, the limit is {MAX_V}")]
    ValueTooLarge {
        /// Its bencoded size.
        len: usize,
    },
    /// `v` is empty or not a single canonical bencoded value.
    #[error("v is not one canonical bencoded value: {0}")]
    BadValue(String),
    /// The salt is too long.
    #[error("salt is {len} bytes, the limit is {MAX_SALT}")]
    SaltTooLarge {
        /// Its size.
        len: usize,
    },
    /// `seq` is negative.
    #[error("seq is {0}, it must be >= 0")]
    NegativeSeq(i64),
}

/// Checks a bencoded `v` as a storing node and a writer must: one canonical value, 1..=1000 bytes.
pub fn check_value(v: &[u8]) -> Result<(), ItemError> {
    if v.len() > MAX_V {
        return Err(ItemError::ValueTooLarge { len: v.len() });
    }
    bencode::parse(v).map_err(|e| ItemError::BadValue(e.0))?;
    Ok(())
}

/// A signed mutable item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutableItem {
    /// The ed25519 public key.
    pub pubkey: [u8; 32],
    /// The salt (empty: none).
    pub salt: Bytes,
    /// The sequence number.
    pub seq: i64,
    /// The bencoded value.
    pub v: Bytes,
    /// The signature over [`signing_buffer`].
    pub sig: [u8; 64],
}

impl MutableItem {
    /// Signs a new item with a 32-byte ed25519 seed.
    pub fn sign(
        seed: &[u8; 32],
        salt: &[u8],
        seq: i64,
        v_bencoded: &[u8],
    ) -> Result<Self, ItemError> {
        check_value(v_bencoded)?;
        if salt.len() > MAX_SALT {
            return Err(ItemError::SaltTooLarge { len: salt.len() });
        }
        if seq < 0 {
            return Err(ItemError::NegativeSeq(seq));
        }
        let key = SigningKey::from_bytes(seed);
        let sig = key.sign(&signing_buffer(salt, seq, v_bencoded));
        Ok(Self {
            pubkey: key.verifying_key().to_bytes(),
            salt: Bytes::copy_from_slice(salt),
            seq,
            v: Bytes::copy_from_slice(v_bencoded),
            sig: sig.to_bytes(),
        })
    }

    /// The item's target.
    pub fn target(&self) -> NodeId {
        mutable_target(&self.pubkey, &self.salt)
    }

    /// Whether the signature verifies.
    pub fn verify(&self) -> bool {
        verify(&self.pubkey, &self.salt, self.seq, &self.v, &self.sig)
    }
}

/// The public key of a 32-byte ed25519 seed.
pub fn public_key(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

/// Verifies a mutable item's signature (strict ed25519: no small-order keys, canonical S).
pub fn verify(pubkey: &[u8; 32], salt: &[u8], seq: i64, v: &[u8], sig: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(pubkey) else {
        return false;
    };
    let sig = Signature::from_bytes(sig);
    key.verify(&signing_buffer(salt, seq, v), &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    const PK: &str = "77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548";
    const SK: &str = "e06d3183d14159228433ed599221b80bd0a5ce8352e4bdf0262f76786ef1c74db7e7a9fea2c0eb269d61e3b38e450a22e754941ac78479d6c54e1faf6037881d";
    const V: &[u8] = b"12:Hello World!";

    /// Signs with the BEP's 64-byte expanded secret key (no seed is published).
    fn sign_expanded(msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};
        let esk = ExpandedSecretKey::from_bytes(&h::<64>(SK));
        let vk = VerifyingKey::from_bytes(&h::<32>(PK)).unwrap();
        raw_sign::<sha2::Sha512>(&esk, msg, &vk).to_bytes()
    }

    #[test]
    fn bep44_test_1_mutable_without_salt() {
        let buf = signing_buffer(b"", 1, V);
        assert_eq!(
            hex::encode(&buf),
            "333a736571693165313a7631323a48656c6c6f20576f726c6421"
        );
        let sig = sign_expanded(&buf);
        assert_eq!(
            hex::encode(sig),
            "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01"
        );
        assert!(verify(&h(PK), b"", 1, V, &sig));
        assert!(!verify(&h(PK), b"", 2, V, &sig), "a tampered seq must fail");
        assert_eq!(
            mutable_target(&h(PK), b"").to_hex(),
            "4a533d47ec9c7d95b1ad75f576cffc641853b750"
        );
    }

    #[test]
    fn bep44_test_2_mutable_with_salt() {
        let buf = signing_buffer(b"foobar", 1, V);
        assert_eq!(
            hex::encode(&buf),
            "343a73616c74363a666f6f626172333a736571693165313a7631323a48656c6c6f20576f726c6421"
        );
        let sig = sign_expanded(&buf);
        assert_eq!(
            hex::encode(sig),
            "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17ddf9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08"
        );
        assert!(verify(&h(PK), b"foobar", 1, V, &sig));
        assert!(!verify(&h(PK), b"", 1, V, &sig), "the salt is signed");
        assert_eq!(
            mutable_target(&h(PK), b"foobar").to_hex(),
            "411eba73b6f087ca51a3795d9c8c938d365e32c1"
        );
    }

    #[test]
    fn bep44_test_3_immutable() {
        assert_eq!(
            immutable_target(V).to_hex(),
            "e5f96f6f38320f0f33959cb4d3d656452117aadb"
        );
        assert_ne!(
            immutable_target(b"Hello World!").to_hex(),
            "e5f96f6f38320f0f33959cb4d3d656452117aadb"
        );
    }

    #[test]
    fn bep46_targets() {
        let pk = h::<32>("8543d3e6115f0f98c944077a4493dcd543e49c739fd998550a1f614ab36ed63e");
        assert_eq!(
            mutable_target(&pk, b"").to_hex(),
            "cc3f9d90b572172053626f9980ce261a850d050b"
        );
        assert_eq!(
            mutable_target(&pk, b"n").to_hex(),
            "59ee7c2cb9b4f7eb1986ee2d18fd2fdb8a56554f"
        );
    }

    #[test]
    fn items_from_a_seed_sign_and_verify_and_limits_name_the_field() {
        let seed = [7u8; 32];
        let item = MutableItem::sign(&seed, b"salt", 5, b"3:abc").unwrap();
        assert!(item.verify());
        assert_eq!(item.pubkey, public_key(&seed));
        let mut bad = item.clone();
        bad.v = Bytes::from_static(b"3:abd");
        assert!(!bad.verify());
        let big = bencode_bytes(&[b'x'; 996]);
        assert_eq!(big.len(), 1000);
        assert!(MutableItem::sign(&seed, b"", 1, &big).is_ok());
        let too_big = bencode_bytes(&[b'x'; 997]);
        let e = MutableItem::sign(&seed, b"", 1, &too_big).unwrap_err();
        assert!(
            e.to_string().contains("1001") && e.to_string().contains("1000"),
            "{e}"
        );
        let e = MutableItem::sign(&seed, &[0; 65], 1, b"1:x").unwrap_err();
        assert!(e.to_string().contains("salt is 65 bytes"), "{e}");
        assert!(MutableItem::sign(&seed, b"", -1, b"1:x").is_err());
        assert!(
            MutableItem::sign(&seed, b"", 1, b"1:xy").is_err(),
            "not canonical bencode"
        );
        assert!(MutableItem::sign(&seed, b"", 1, b"").is_err(), "empty v");
    }
}
