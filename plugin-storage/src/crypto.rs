//! Encryption of stored files: file keys, chunk sealing, capabilities and key shares.
//!
//! Every encrypted file gets a fresh random [`FileKey`]. Each chunk is sealed on its own with
//! XChaCha20-Poly1305 ([`seal_chunk`]), bound to its position and to the file's chunk count, so
//! chunks cannot be reordered, swapped between positions or the file truncated unnoticed.
//!
//! The key reaches readers either inside a [`Capability`] (`kad:<manifest key>#<file key>`, one
//! string that both finds and opens the file) or split into Shamir [`Share`]s ([`split_key`],
//! [`combine_shares`]) so that any `threshold` of `n` holders can rebuild it.
//!
//! A wrong key is caught before any download: the manifest carries [`FileKey::check`], and a
//! caller that finds a mismatch reports [`BlobError::WrongKey`].

use std::fmt;
use std::str::FromStr;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use kad_core::Key;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::error::BlobError;
use crate::hex::hex_array;

/// Length of the Poly1305 tag appended to every sealed chunk.
pub const TAG_LEN: usize = 16;

/// A 256-bit file key.
///
/// Zeroized on drop; `Debug` prints `FileKey(..)` so it never lands in logs. Equality is
/// constant-time.
#[derive(Clone)]
pub struct FileKey([u8; 32]);

impl FileKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<Self, BlobError> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| BlobError::Random(e.to_string()))?;
        Ok(Self(b))
    }

    /// The key with these bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 8 bytes that let a reader tell a wrong key before downloading anything:
    /// `SHA-256("kad-key-check/1" || key)[..8]`. Stored in the manifest
    /// ([`Encryption::key_check`](crate::Encryption::key_check)); reveals nothing useful about
    /// the key.
    pub fn check(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(b"kad-key-check/1");
        h.update(self.0);
        let d = h.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&d[..8]);
        out
    }
}

impl Drop for FileKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(..)")
    }
}

impl PartialEq for FileKey {
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for FileKey {}

fn cipher(key: &FileKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&chacha20poly1305::Key::from(*key.as_bytes()))
}

fn nonce(index: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[..8].copy_from_slice(&index.to_le_bytes());
    XNonce::from(n)
}

fn aad(index: u64, count: u64) -> [u8; 27] {
    let mut a = [0u8; 27];
    a[..11].copy_from_slice(b"kad-chunk/1");
    a[11..19].copy_from_slice(&index.to_le_bytes());
    a[19..].copy_from_slice(&count.to_le_bytes());
    a
}

/// Seals chunk `index` of a file of `count` chunks with XChaCha20-Poly1305.
///
/// - nonce: 24 bytes, `index` as u64 little-endian then zeros. Unique per key because every file
///   gets a fresh key and every chunk of a file a distinct index.
/// - associated data: `b"kad-chunk/1" || index (u64 LE) || count (u64 LE)`, binding the chunk to
///   its position and to the file's length.
///
/// Returns `ciphertext || tag` ([`TAG_LEN`] bytes longer than `plaintext`).
///
/// # Panics
///
/// Only if `plaintext` exceeds the cipher's limit of 256 GiB (chunks are at most 4 MiB).
pub fn seal_chunk(key: &FileKey, index: u64, count: u64, plaintext: &[u8]) -> Vec<u8> {
    let aad = aad(index, count);
    cipher(key)
        .encrypt(
            &nonce(index),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("XChaCha20-Poly1305 seals any message under 256 GiB")
}

/// Opens a chunk sealed by [`seal_chunk`] with the same key, `index` and `count`.
///
/// Any failure (wrong key, index or count, a flipped bit, truncation) gives
/// [`BlobError::Decrypt`] with the chunk's index.
pub fn open_chunk(
    key: &FileKey,
    index: u64,
    count: u64,
    sealed: &[u8],
) -> Result<Vec<u8>, BlobError> {
    if sealed.len() < TAG_LEN {
        return Err(BlobError::Decrypt { index });
    }
    let aad = aad(index, count);
    cipher(key)
        .decrypt(
            &nonce(index),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| BlobError::Decrypt { index })
}

/// Everything needed to fetch and open an encrypted file, as one string:
/// `kad:<40 hex manifest key>#<64 hex file key>`.
///
/// Whoever holds it can read the file: treat the string as a secret. `Debug` hides the key;
/// `Display` prints it (that is the point).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Capability {
    /// The manifest's key (the file's key in the DHT).
    pub manifest: Key,
    /// The key that opens the file's chunks.
    pub key: FileKey,
}

/// The prefix of a capability string.
const CAP_PREFIX: &str = "kad:";

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut k = hex::encode(self.key.as_bytes());
        let r = write!(f, "{CAP_PREFIX}{}#{k}", self.manifest);
        k.zeroize();
        r
    }
}

impl FromStr for Capability {
    type Err = BlobError;

    /// Parses `kad:<40 hex>#<64 hex>` (surrounding whitespace ignored, hex in either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |m: String| BlobError::BadCapability(m);
        let s = s.trim();
        let rest = s.strip_prefix(CAP_PREFIX).ok_or_else(|| {
            bad(format!(
                "must start with \"{CAP_PREFIX}\" (expected kad:<40 hex manifest key>#<64 hex key>)"
            ))
        })?;
        let (manifest, key) = rest.split_once('#').ok_or_else(|| {
            bad("missing '#' between the manifest key and the file key \
                 (expected kad:<40 hex manifest key>#<64 hex key>)"
                .into())
        })?;
        let manifest = hex_array::<20>(manifest)
            .map_err(|e| bad(format!("manifest key (before '#'): {e}")))?;
        let mut key_bytes =
            hex_array::<32>(key).map_err(|e| bad(format!("file key (after '#'): {e}")))?;
        let key = FileKey::from_bytes(key_bytes);
        key_bytes.zeroize();
        Ok(Self {
            manifest: Key::from_bytes(manifest),
            key,
        })
    }
}

/// One Shamir share of a [`FileKey`] (over GF(256), one polynomial per key byte).
///
/// Text form, as printed by `Display` and read by `FromStr`:
///
/// ```text
/// kad-share1-<T>-<x>-<64 hex y>-<8 hex checksum>
/// ```
///
/// - `T`: the threshold, how many shares rebuild the key (decimal, 1..=255);
/// - `x`: this share's x coordinate (decimal, 1..=255; [`split_key`] numbers shares from 1);
/// - `y`: the 32 share bytes (the polynomials evaluated at `x`);
/// - checksum: the first 4 bytes of SHA-256 over the text before the last `-`, i.e.
///   `kad-share1-<T>-<x>-<y>` in its canonical form (decimal without leading zeros, lowercase
///   hex), exactly as `Display` prints it. It catches typos; it does not authenticate the share.
///
/// Parsing ignores surrounding whitespace and accepts uppercase hex. The share is secret
/// material: it is zeroized on drop and `Debug` hides `y`.
#[derive(Clone, PartialEq, Eq)]
pub struct Share {
    threshold: u8,
    x: u8,
    y: [u8; 32],
}

/// The prefix of a share string.
const SHARE_PREFIX: &str = "kad-share1-";

impl Share {
    /// How many shares rebuild the key.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// This share's x coordinate (1..=255), its number among the shares of one split.
    pub fn x(&self) -> u8 {
        self.x
    }

    /// `kad-share1-<T>-<x>-<y hex>`: the text the checksum covers.
    fn body(&self) -> String {
        format!(
            "{SHARE_PREFIX}{}-{}-{}",
            self.threshold,
            self.x,
            hex::encode(self.y)
        )
    }
}

fn share_checksum(body: &str) -> [u8; 4] {
    let d = Sha256::digest(body.as_bytes());
    [d[0], d[1], d[2], d[3]]
}

impl Drop for Share {
    fn drop(&mut self) {
        self.y.zeroize();
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("threshold", &self.threshold)
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut body = self.body();
        let sum = share_checksum(&body);
        let r = write!(f, "{body}-{}", hex::encode(sum));
        body.zeroize();
        r
    }
}

/// Parses a decimal field of a share: 1..=255, digits only.
fn share_number(field: &str, s: &str) -> Result<u8, BlobError> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BlobError::BadShare(format!(
            "{field}: expected a number 1..=255, got {:?}",
            truncate(s)
        )));
    }
    match s.parse::<u16>() {
        Ok(v @ 1..=255) => Ok(v as u8),
        _ => Err(BlobError::BadShare(format!(
            "{field}: {s} is out of range 1..=255"
        ))),
    }
}

/// At most 70 characters of untrusted text, for error messages.
fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(70).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

impl FromStr for Share {
    type Err = BlobError;

    /// Parses `kad-share1-<T>-<x>-<64 hex>-<8 hex>` (see the type's documentation). Errors:
    /// [`BlobError::BadShare`] naming the prefix or the field; [`BlobError::ShareChecksum`] when
    /// every field parses but the checksum does not match.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "kad-share1-<threshold>-<x>-<64 hex>-<8 hex checksum>";
        let s = s.trim();
        let Some(rest) = s.strip_prefix(SHARE_PREFIX) else {
            return Err(BlobError::BadShare(if s.starts_with("kad-share") {
                format!("unsupported share version: expected {FORM}")
            } else {
                format!("must start with \"{SHARE_PREFIX}\" (expected {FORM})")
            }));
        };
        let fields: Vec<&str> = rest.split('-').collect();
        let [t, x, y, sum] = fields[..] else {
            return Err(BlobError::BadShare(format!(
                "expected 4 fields after \"{SHARE_PREFIX}\", got {} (expected {FORM})",
                fields.len()
            )));
        };
        let threshold = share_number("threshold", t)?;
        let x = share_number("x", x)?;
        let mut y =
            hex_array::<32>(y).map_err(|e| BlobError::BadShare(format!("share value: {e}")))?;
        let sum = hex_array::<4>(sum).map_err(|e| BlobError::BadShare(format!("checksum: {e}")))?;
        let share = Self { threshold, x, y };
        y.zeroize();
        let mut body = share.body();
        let ok = share_checksum(&body) == sum;
        body.zeroize();
        if !ok {
            return Err(BlobError::ShareChecksum);
        }
        Ok(share)
    }
}

/// Splits `key` into `n` shares of which any `threshold` rebuild it (Shamir over GF(256)).
///
/// Shares are numbered `x = 1..=n`. Limits, each reported as [`BlobError::InvalidSplit`]:
///
/// - `1 <= n <= 255` (255 nonzero points in GF(256));
/// - `1 <= threshold <= n`;
/// - `threshold >= 2` unless `n == 1`: with threshold 1 every share would be a plain copy of the
///   key, which is better said by handing out the key itself. `(1, 1)` is allowed and gives one
///   share holding the key, a checksummed backup form.
///
/// Fewer than `threshold` shares reveal nothing about the key.
pub fn split_key(key: &FileKey, threshold: u8, n: u8) -> Result<Vec<Share>, BlobError> {
    let invalid = |reason| BlobError::InvalidSplit {
        threshold,
        n,
        reason,
    };
    if n == 0 {
        return Err(invalid("the number of shares must be 1..=255"));
    }
    if threshold == 0 || threshold > n {
        return Err(invalid("the threshold must be 1..=n"));
    }
    if threshold == 1 && n > 1 {
        return Err(invalid(
            "threshold 1 would make every share a copy of the key: use a threshold of at least 2 \
             (or n = 1 for a single backup share)",
        ));
    }
    let dealer = blahaj::Sharks(threshold).dealer(key.as_bytes());
    let mut shares = Vec::with_capacity(usize::from(n));
    for s in dealer.take(usize::from(n)) {
        // blahaj's byte form is x || y.
        let mut bytes: Vec<u8> = Vec::from(&s);
        let mut y = [0u8; 32];
        y.copy_from_slice(&bytes[1..33]);
        shares.push(Share {
            threshold,
            x: bytes[0],
            y,
        });
        y.zeroize();
        bytes.zeroize();
    }
    Ok(shares)
}

/// Rebuilds a key from at least `threshold` shares of one split, in any order.
///
/// Errors: [`BlobError::NoShares`]; [`BlobError::MixedThresholds`] when the shares disagree on
/// the threshold (they come from different splits); [`BlobError::DuplicateShare`] when an x
/// coordinate repeats; [`BlobError::NotEnoughShares`] ("need T shares, got n").
///
/// All given shares are used. A well-formed but wrong share (from another split with the same
/// threshold, or mistyped in a way the checksum missed) yields a different key: compare
/// [`FileKey::check`] with the manifest and report [`BlobError::WrongKey`].
pub fn combine_shares(shares: &[Share]) -> Result<FileKey, BlobError> {
    let first = shares.first().ok_or(BlobError::NoShares)?;
    let threshold = first.threshold;
    if let Some(other) = shares.iter().find(|s| s.threshold != threshold) {
        return Err(BlobError::MixedThresholds {
            first: threshold,
            other: other.threshold,
        });
    }
    let mut seen = [false; 256];
    for s in shares {
        if std::mem::replace(&mut seen[usize::from(s.x)], true) {
            return Err(BlobError::DuplicateShare { x: s.x });
        }
    }
    if shares.len() < usize::from(threshold) {
        return Err(BlobError::NotEnoughShares {
            need: threshold,
            got: shares.len(),
        });
    }
    let mut points = Vec::with_capacity(shares.len());
    for s in shares {
        let mut bytes = [0u8; 33];
        bytes[0] = s.x;
        bytes[1..].copy_from_slice(&s.y);
        let point = blahaj::Share::try_from(&bytes[..]);
        bytes.zeroize();
        // 33 bytes is always long enough.
        points.push(point.map_err(|e| BlobError::BadShare(e.to_string()))?);
    }
    let mut secret =
        blahaj::Sharks(threshold)
            .recover(&points)
            .map_err(|_| BlobError::NotEnoughShares {
                need: threshold,
                got: shares.len(),
            })?;
    let mut key = [0u8; 32];
    let ok = secret.len() == 32;
    if ok {
        key.copy_from_slice(&secret);
    }
    secret.zeroize();
    if !ok {
        return Err(BlobError::BadShare("share value: expected 32 bytes".into()));
    }
    let out = FileKey::from_bytes(key);
    key.zeroize();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::content_key;
    use proptest::prelude::*;

    fn k(b: u8) -> FileKey {
        FileKey::from_bytes([b; 32])
    }

    #[test]
    fn file_key_basics() {
        let a = FileKey::generate().unwrap();
        let b = FileKey::generate().unwrap();
        assert_ne!(a, b);
        assert_ne!(a.check(), b.check());
        assert_eq!(format!("{a:?}"), "FileKey(..)");
        let c = FileKey::from_bytes(*a.as_bytes());
        assert_eq!(a, c);
        assert_eq!(a.check(), c.check());
        // SHA-256("kad-key-check/1" || 32 zero bytes)[..8], computed independently.
        let mut h = Sha256::new();
        h.update(b"kad-key-check/1");
        h.update([0u8; 32]);
        assert_eq!(k(0).check()[..], h.finalize()[..8]);
    }

    #[test]
    fn seal_open_round_trip() {
        let key = k(7);
        for len in [0, 1, 1000, 70_000] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = seal_chunk(&key, 3, 10, &pt);
            assert_eq!(sealed.len(), len + TAG_LEN);
            assert_eq!(open_chunk(&key, 3, 10, &sealed).unwrap(), pt);
        }
        // Distinct positions give distinct ciphertexts of the same plaintext.
        assert_ne!(
            seal_chunk(&key, 0, 2, b"same"),
            seal_chunk(&key, 1, 2, b"same")
        );
    }

    #[test]
    fn open_fails_on_tampering() {
        let key = k(7);
        let sealed = seal_chunk(&key, 3, 10, b"hello, world");
        let err = Err(BlobError::Decrypt { index: 3 });
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(open_chunk(&key, 3, 10, &bad), err, "flipped byte {i}");
        }
        assert_eq!(open_chunk(&k(8), 3, 10, &sealed), err, "wrong key");
        assert_eq!(
            open_chunk(&key, 4, 10, &sealed),
            Err(BlobError::Decrypt { index: 4 }),
            "wrong index"
        );
        assert_eq!(open_chunk(&key, 3, 11, &sealed), err, "wrong count");
        assert_eq!(open_chunk(&key, 3, 9, &sealed), err, "wrong count");
        for cut in [0, 1, TAG_LEN - 1, TAG_LEN, sealed.len() - 1] {
            assert_eq!(
                open_chunk(&key, 3, 10, &sealed[..cut]),
                err,
                "truncated to {cut}"
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(open_chunk(&key, 3, 10, &longer), err, "extended");
    }

    #[test]
    fn capability_round_trip() {
        let cap = Capability {
            manifest: content_key(b"manifest"),
            key: k(0xab),
        };
        let s = cap.to_string();
        assert_eq!(s, format!("kad:{}#{}", cap.manifest, "ab".repeat(32)));
        assert_eq!(s.parse::<Capability>().unwrap(), cap);
        assert_eq!(
            format!("  {}\n", s.to_uppercase().replace("KAD:", "kad:"))
                .parse::<Capability>()
                .unwrap(),
            cap
        );
        assert!(!format!("{cap:?}").contains(&"ab".repeat(32)));
    }

    #[test]
    fn capability_parse_errors() {
        let m = content_key(b"m").to_string();
        let key = "cd".repeat(32);
        let msg = |s: &str| match s.parse::<Capability>() {
            Err(BlobError::BadCapability(e)) => e,
            other => panic!("{s:?}: {other:?}"),
        };
        assert!(msg(&format!("{m}#{key}")).contains("\"kad:\""));
        assert!(msg(&format!("kad:{m}{key}")).contains("missing '#'"));
        let e = msg(&format!("kad:{}#{key}", &m[..39]));
        assert!(
            e.contains("manifest key") && e.contains("40 hex digits"),
            "{e}"
        );
        let e = msg(&format!("kad:{}g#{key}", &m[..39]));
        assert!(e.contains("manifest key") && e.contains("not hex"), "{e}");
        let e = msg(&format!("kad:{m}#{}", &key[..62]));
        assert!(e.contains("file key") && e.contains("64 hex digits"), "{e}");
        let e = msg(&format!("kad:{m}#{}zz", &key[..62]));
        assert!(e.contains("file key") && e.contains("not hex"), "{e}");
        let e = msg(&format!("kad:{m}#{key}#"));
        assert!(e.contains("file key"), "{e}");
        let e = msg(&format!("kad:{m}#{}é", &key[..62]));
        assert!(e.contains("file key"), "{e}");
    }

    #[test]
    fn split_combine_shapes() {
        let key = FileKey::generate().unwrap();
        for (t, n) in [(1u8, 1u8), (2, 3), (3, 5), (5, 5), (2, 255), (255, 255)] {
            let shares = split_key(&key, t, n).unwrap();
            assert_eq!(shares.len(), usize::from(n));
            assert!(
                shares
                    .iter()
                    .enumerate()
                    .all(|(i, s)| s.x() as usize == i + 1 && s.threshold() == t)
            );
            // Through the text form, as users will pass them.
            let parsed: Vec<Share> = shares
                .iter()
                .map(|s| s.to_string().parse().unwrap())
                .collect();
            assert_eq!(parsed, shares);
            assert_eq!(combine_shares(&shares[..usize::from(t)]).unwrap(), key);
            let mut rev: Vec<Share> = shares[usize::from(n - t)..].to_vec();
            rev.reverse();
            assert_eq!(combine_shares(&rev).unwrap(), key);
            assert_eq!(combine_shares(&shares).unwrap(), key);
        }
    }

    #[test]
    fn split_rejects_bad_parameters() {
        let key = k(1);
        for (t, n) in [(0u8, 3u8), (4, 3), (1, 2), (0, 0), (1, 0), (2, 1)] {
            match split_key(&key, t, n) {
                Err(BlobError::InvalidSplit {
                    threshold,
                    n: nn,
                    reason,
                }) => {
                    assert_eq!((threshold, nn), (t, n));
                    assert!(!reason.is_empty());
                }
                other => panic!("({t}, {n}): {other:?}"),
            }
        }
        let e = split_key(&key, 1, 3).unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");
    }

    #[test]
    fn combine_errors() {
        let key = k(9);
        let shares = split_key(&key, 3, 5).unwrap();
        assert_eq!(combine_shares(&[]), Err(BlobError::NoShares));
        let e = combine_shares(&shares[..2]).unwrap_err();
        assert_eq!(e, BlobError::NotEnoughShares { need: 3, got: 2 });
        assert_eq!(e.to_string(), "need 3 shares, got 2");
        let dup = [shares[0].clone(), shares[1].clone(), shares[0].clone()];
        assert_eq!(
            combine_shares(&dup),
            Err(BlobError::DuplicateShare { x: 1 })
        );
        let two = split_key(&key, 2, 3).unwrap();
        let mixed = [shares[0].clone(), shares[1].clone(), two[2].clone()];
        assert_eq!(
            combine_shares(&mixed),
            Err(BlobError::MixedThresholds { first: 3, other: 2 })
        );
    }

    #[test]
    fn wrong_share_gives_a_key_that_fails_its_check() {
        let key = FileKey::generate().unwrap();
        let shares = split_key(&key, 2, 3).unwrap();
        let other = split_key(&FileKey::generate().unwrap(), 2, 3).unwrap();
        let rebuilt = combine_shares(&[shares[0].clone(), other[1].clone()]).unwrap();
        assert_ne!(rebuilt.check(), key.check());
    }

    #[test]
    fn share_text_format_and_errors() {
        let shares = split_key(&k(3), 2, 3).unwrap();
        let s = shares[1].to_string();
        let parts: Vec<&str> = s.split('-').collect();
        assert_eq!(parts.len(), 6);
        assert_eq!(&parts[..4], ["kad", "share1", "2", "2"]);
        assert_eq!(parts[4].len(), 64);
        assert_eq!(parts[5].len(), 8);
        let body = &s[..s.rfind('-').unwrap()];
        assert_eq!(parts[5], hex::encode(&Sha256::digest(body.as_bytes())[..4]));
        assert!(!format!("{:?}", shares[1]).contains(parts[4]));
        assert_eq!(
            s.to_uppercase()
                .replace("KAD-SHARE1", "kad-share1")
                .parse::<Share>()
                .unwrap(),
            shares[1]
        );

        let bad = |t: &str| match t.parse::<Share>() {
            Err(BlobError::BadShare(e)) => e,
            other => panic!("{t:?}: {other:?}"),
        };
        assert!(bad(&s.replace("kad-share1", "kad-shard1")).contains("kad-share1-"));
        assert!(bad(&s.replace("kad-share1", "kad-share2")).contains("version"));
        assert!(bad(&s.replacen("-2-2-", "-2-", 1)).contains("4 fields"));
        assert!(bad(&s.replacen("-2-2-", "-0-2-", 1)).contains("threshold"));
        assert!(bad(&s.replacen("-2-2-", "-2-256-", 1)).contains("x: 256"));
        assert!(bad(&s.replacen("-2-2-", "-2-a-", 1)).contains("x:"));
        let e = bad(&format!("kad-share1-2-2-{}", parts[4]));
        assert!(e.contains("got 3"), "{e}");
        let e = bad(&s.replace(parts[4], &parts[4][..62]));
        assert!(
            e.contains("share value") && e.contains("64 hex digits"),
            "{e}"
        );
        assert!(bad(&s.replace(parts[5], "0000000g")).contains("checksum"));
        assert!(bad(&s.replace(parts[4], &"zz".repeat(32))).contains("share value"));
    }

    #[test]
    fn corrupted_share_fails_checksum() {
        let shares = split_key(&k(3), 2, 3).unwrap();
        let s = shares[0].to_string();
        let parts: Vec<&str> = s.split('-').collect();
        // Change one hex digit of y.
        let y = parts[4];
        let flipped = if y.as_bytes()[10] == b'0' { '1' } else { '0' };
        let mut y2 = y.to_string();
        y2.replace_range(10..11, &flipped.to_string());
        let bad = s.replace(y, &y2);
        assert_eq!(bad.parse::<Share>(), Err(BlobError::ShareChecksum));
        assert_eq!(
            BlobError::ShareChecksum.to_string(),
            "share is corrupt or mistyped (checksum mismatch)"
        );
        // A changed threshold or x (still in range) is caught too.
        let bad = s.replacen("-2-1-", "-3-1-", 1);
        assert_eq!(bad.parse::<Share>(), Err(BlobError::ShareChecksum));
        let bad = s.replacen("-2-1-", "-2-4-", 1);
        assert_eq!(bad.parse::<Share>(), Err(BlobError::ShareChecksum));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_threshold_subset_in_any_order_rebuilds(
            key in any::<[u8; 32]>(),
            n in 2u8..=12,
            t_seed in any::<u8>(),
            picks in any::<[u64; 12]>(),
        ) {
            let t = 2 + t_seed % (n - 1);
            let key = FileKey::from_bytes(key);
            let shares = split_key(&key, t, n).unwrap();
            // A random permutation of the shares (Fisher-Yates from `picks`), then its first t.
            let mut order: Vec<usize> = (0..usize::from(n)).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, (picks[i] % (i as u64 + 1)) as usize);
            }
            let subset: Vec<Share> = order[..usize::from(t)].iter().map(|&i| shares[i].clone()).collect();
            prop_assert_eq!(combine_shares(&subset).unwrap(), key.clone());
            let fewer: Vec<Share> = subset[..usize::from(t) - 1].to_vec();
            prop_assert_eq!(
                combine_shares(&fewer),
                Err(BlobError::NotEnoughShares { need: t, got: usize::from(t) - 1 })
            );
        }

        #[test]
        fn seal_open_round_trips(key in any::<[u8; 32]>(), index in any::<u64>(), count in any::<u64>(), pt in proptest::collection::vec(any::<u8>(), 0..300)) {
            let key = FileKey::from_bytes(key);
            let sealed = seal_chunk(&key, index, count, &pt);
            prop_assert_eq!(open_chunk(&key, index, count, &sealed).unwrap(), pt);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,120}", t in "kad(:|-share1-)[0-9a-fA-F#-]{0,120}") {
            let _ = s.parse::<Capability>();
            let _ = s.parse::<Share>();
            let _ = t.parse::<Capability>();
            let _ = t.parse::<Share>();
        }

        #[test]
        fn capability_round_trips(m in any::<[u8; 20]>(), key in any::<[u8; 32]>()) {
            let cap = Capability { manifest: Key::from_bytes(m), key: FileKey::from_bytes(key) };
            prop_assert_eq!(cap.to_string().parse::<Capability>().unwrap(), cap);
        }
    }
}
