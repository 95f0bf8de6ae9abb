//! 160-bit identifiers, XOR distance and bucket indices.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of a [`NodeId`] in bytes (160 bits, as in kadtools and the BitTorrent Mainline DHT).
pub const ID_LEN: usize = 20;
/// Length of a [`NodeId`] in bits.
pub const ID_BITS: usize = ID_LEN * 8;

/// A 160-bit identifier: a node id, a record key or a lookup target.
///
/// Ids print and parse as 40 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; ID_LEN]);

/// Record keys live in the same 160-bit space as node ids.
pub type Key = NodeId;

impl NodeId {
    /// The all-zero id.
    pub const ZERO: Self = Self([0; ID_LEN]);

    /// Builds an id from its 20 bytes.
    pub const fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// Builds an id from a slice, which must be exactly 20 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; ID_LEN]>::try_from(bytes).ok().map(Self)
    }

    /// A uniformly random id drawn from `rng`.
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut b = [0u8; ID_LEN];
        rng.fill(&mut b[..]);
        Self(b)
    }

    /// XOR distance between two ids.
    pub fn distance(&self, other: &Self) -> Distance {
        let mut d = [0u8; ID_LEN];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// The index of the k-bucket that `other` falls into from this id's point of view:
    /// `159 - leading_zeros(self ^ other)`, so bucket 159 holds the farthest half of the id space
    /// and bucket 0 the single closest id. `None` when the ids are equal.
    pub fn bucket_index(&self, other: &Self) -> Option<usize> {
        self.distance(other).bucket_index()
    }

    /// A random id that falls into bucket `index` as seen from `self`.
    ///
    /// # Panics
    /// Panics if `index >= 160` (a programming error, never reachable from remote input).
    pub fn random_in_bucket<R: Rng + ?Sized>(&self, index: usize, rng: &mut R) -> Self {
        assert!(index < ID_BITS, "bucket index out of range");
        let mut d = [0u8; ID_LEN];
        rng.fill(&mut d[..]);
        // Distance must have its highest set bit at position `index` (counted from the lowest bit).
        let bit_from_top = ID_BITS - 1 - index;
        let byte = bit_from_top / 8;
        let bit = 7 - (bit_from_top % 8);
        for b in d.iter_mut().take(byte) {
            *b = 0;
        }
        let mask_keep = (1u16 << bit) as u8 - 1; // lower bits stay random
        d[byte] = (d[byte] & mask_keep) | (1 << bit);
        let mut out = [0u8; ID_LEN];
        for i in 0..ID_LEN {
            out[i] = self.0[i] ^ d[i];
        }
        Self(out)
    }

    /// Parses 40 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, ParseIdError> {
        let s = s.trim();
        if s.len() != ID_LEN * 2 {
            return Err(ParseIdError::Length(s.len()));
        }
        let mut out = [0u8; ID_LEN];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hi = hex_val(chunk[0]).ok_or(ParseIdError::Digit)?;
            let lo = hex_val(chunk[1]).ok_or(ParseIdError::Digit)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }

    /// The id as 40 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.hex_str(&mut [0u8; ID_LEN * 2]).to_owned()
    }

    /// Writes the 40 lowercase hex digits into `buf` (no allocation on the hot paths: logs,
    /// every message's JSON).
    fn hex_str<'b>(&self, buf: &'b mut [u8; ID_LEN * 2]) -> &'b str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = DIGITS[usize::from(b >> 4)];
            buf[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        // ASCII digits only: always UTF-8.
        std::str::from_utf8(buf).unwrap_or_default()
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// The string does not have exactly 40 characters.
    #[error("a node id is 40 hex digits, got {0} characters")]
    Length(usize),
    /// A character is not a hex digit.
    #[error("a node id may contain only hex digits")]
    Digit,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex_str(&mut [0u8; ID_LEN * 2]))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", &self.hex_str(&mut [0u8; ID_LEN * 2])[..12])
    }
}

impl FromStr for NodeId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex_str(&mut [0u8; ID_LEN * 2]))
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// XOR distance between two ids; orders numerically, so smaller is closer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug)]
pub struct Distance(pub [u8; ID_LEN]);

impl Distance {
    /// The bucket index of this distance: the position of its highest set bit, `None` for zero.
    pub fn bucket_index(&self) -> Option<usize> {
        for (i, b) in self.0.iter().enumerate() {
            if *b != 0 {
                let bit = 7 - b.leading_zeros() as usize;
                return Some((ID_LEN - 1 - i) * 8 + bit);
            }
        }
        None
    }

    /// Number of leading zero bits (the length of the common prefix of the two ids).
    pub fn leading_zeros(&self) -> u32 {
        let mut n = 0;
        for b in self.0 {
            if b == 0 {
                n += 8;
            } else {
                return n + b.leading_zeros();
            }
        }
        n
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick an arbitrary base instant
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn hex_round_trip() {
        let id = NodeId::from_hex("0123456789abcdef0123456789ABCDEF01234567").unwrap();
        assert_eq!(id.to_hex(), "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert_eq!(NodeId::from_hex("abc"), Err(ParseIdError::Length(3)));
        assert_eq!(NodeId::from_hex(&"g".repeat(40)), Err(ParseIdError::Digit));
    }

    #[test]
    fn bucket_index_edges() {
        let a = NodeId::ZERO;
        let mut b = [0u8; ID_LEN];
        b[0] = 0x80;
        assert_eq!(a.bucket_index(&NodeId(b)), Some(159));
        let mut c = [0u8; ID_LEN];
        c[19] = 1;
        assert_eq!(a.bucket_index(&NodeId(c)), Some(0));
        assert_eq!(a.bucket_index(&a), None);
    }

    #[test]
    fn random_in_bucket_lands_in_bucket() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let me = NodeId::random(&mut rng);
        for i in 0..ID_BITS {
            for _ in 0..4 {
                let t = me.random_in_bucket(i, &mut rng);
                assert_eq!(me.bucket_index(&t), Some(i));
            }
        }
    }
}
