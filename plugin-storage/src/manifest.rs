//! How a file is laid out in the DHT: content-addressed chunks, index blobs and a manifest.
//!
//! A file of `size` bytes is cut into `chunks = ceil(size / chunk_size)` plaintext chunks (the
//! last one may be shorter). Each chunk is stored as is, or sealed with [`seal_chunk`] when the
//! file is encrypted, under its [`content_key`]. The ordered chunk keys are packed into
//! *index blobs* ([`index_blobs`]: plain concatenations of 20-byte keys), themselves stored under
//! their content keys. The [`Manifest`] (JSON) names the index blobs in order, commits to every
//! chunk key through [`chunk_root`], and is stored under its own content key: the file's key.
//!
//! Everything a reader parses here (manifests, index blobs) comes from the network, so every
//! parser is total: it returns a [`BlobError`] naming the field and the limit, never panics.
//!
//! [`seal_chunk`]: crate::seal_chunk

use kad_core::Key;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::crypto::TAG_LEN;
use crate::error::BlobError;
use crate::hex::hex_array;
use crate::limits::{
    ENCRYPTION_ALG, MANIFEST_FORMAT, MAX_CHUNK_SIZE, MAX_INDEX_BLOBS, MAX_MANIFEST_LEN,
    MAX_NAME_LEN,
};

/// Length of a chunk key in bytes.
const KEY_LEN: usize = kad_core::ID_LEN;

/// The DHT key of a chunk, index blob or manifest: `RIPEMD-160(SHA-256(bytes))` (the native
/// network's content key, re-exported from `kad-core`).
pub use kad_core::content_key;

/// The commitment to a file's chunk keys: SHA-256 over `"kad-root/1"` then the 20-byte keys in
/// order. A reader recomputes it from the index blobs and rejects them if it differs.
pub fn chunk_root(keys: &[Key]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kad-root/1");
    for k in keys {
        h.update(k.as_bytes());
    }
    h.finalize().into()
}

/// Splits the ordered chunk keys into index blobs of at most `max_blob_len` bytes: each blob is a
/// concatenation of `max_blob_len / 20` keys (fewer in the last one), so every blob holds at least
/// one key. No keys (an empty file) give no blobs.
///
/// Errors: [`BlobError::IndexBlobTooSmall`] when `max_blob_len < 20`;
/// [`BlobError::TooManyChunks`] when more than [`MAX_INDEX_BLOBS`] blobs would be needed (the
/// message names the largest file that fits, in chunks).
pub fn index_blobs(keys: &[Key], max_blob_len: usize) -> Result<Vec<Vec<u8>>, BlobError> {
    let per_blob = max_blob_len / KEY_LEN;
    if per_blob == 0 {
        return Err(BlobError::IndexBlobTooSmall { max_blob_len });
    }
    if keys.len().div_ceil(per_blob) > MAX_INDEX_BLOBS {
        return Err(BlobError::TooManyChunks {
            chunks: keys.len() as u64,
            keys_per_blob: per_blob as u64,
        });
    }
    Ok(keys
        .chunks(per_blob)
        .map(|group| {
            let mut blob = Vec::with_capacity(group.len() * KEY_LEN);
            for k in group {
                blob.extend_from_slice(k.as_bytes());
            }
            blob
        })
        .collect())
}

/// Parses an index blob into its chunk keys. Its length must be a positive multiple of 20.
pub fn parse_index_blob(b: &[u8]) -> Result<Vec<Key>, BlobError> {
    if b.is_empty() || b.len() % KEY_LEN != 0 {
        return Err(BlobError::IndexBlob { len: b.len() });
    }
    Ok(b.chunks_exact(KEY_LEN)
        .filter_map(Key::from_slice)
        .collect())
}

/// The largest file, in bytes, whose chunk keys fit in [`MAX_INDEX_BLOBS`] index blobs of at
/// most `max_blob_len` bytes when chunks are `chunk_size` bytes (saturating at `u64::MAX`).
pub fn max_file_size(chunk_size: u32, max_blob_len: usize) -> u64 {
    let per_blob = (max_blob_len / KEY_LEN) as u64;
    per_blob
        .saturating_mul(MAX_INDEX_BLOBS as u64)
        .saturating_mul(u64::from(chunk_size))
}

/// The chunk size to use over a transport whose largest message is `max_message_len` bytes.
///
/// A chunk travels as the value of a store request (or a find-value response): base64-encoded
/// inside a signed JSON message that may also carry up to 20 contacts. The reasoning:
///
/// - 16 KiB of every message are reserved for everything but the value: the JSON envelope, key,
///   ids, signature and up to 20 contacts (each a 40-hex id and an address of at most
///   [`MAX_URI_LEN`](kad_core::MAX_URI_LEN) = 255 bytes plus punctuation, about 6.4 KiB in all),
///   with room to spare for the [`TAG_LEN`]-byte tag of encrypted chunks;
/// - base64 turns 3 bytes into 4 characters, so the remaining room carries 3/4 as many raw bytes:
///   `floor((max_message_len - 16384) * 3 / 4)`;
/// - rounded down to a multiple of 1024 for tidy sizes;
/// - at least 1024 (a transport too small even for that will refuse the store, which the caller
///   reports), and at most 4 MiB ([`MAX_CHUNK_SIZE`]) so a chunk never costs a reader much memory
///   however large the transport's messages.
///
/// For UDP (65,507 bytes) this gives 35,840; for a 1 MiB limit, 774,144.
pub fn chunk_size_for(max_message_len: usize) -> u32 {
    let room = (max_message_len as u128).saturating_sub(16384);
    let raw = room * 3 / 4;
    let rounded = raw / 1024 * 1024;
    rounded.clamp(1024, u128::from(MAX_CHUNK_SIZE)) as u32
}

/// How a file's chunks are encrypted. The algorithm is fixed: XChaCha20-Poly1305 as in
/// [`seal_chunk`](crate::seal_chunk); its manifest name is [`ENCRYPTION_ALG`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Encryption {
    /// [`FileKey::check`](crate::FileKey::check) of the file's key: tells a wrong key before any
    /// chunk is downloaded.
    pub key_check: [u8; 8],
}

/// A file's manifest: what a reader needs to fetch, check and reassemble it.
///
/// Serialised as JSON by [`to_bytes`](Self::to_bytes), in this exact field order:
/// `{"format":"kad-file/1","size":..,"chunk_size":..,"chunks":..,"index":["<40 hex>",..],
/// "root":"<64 hex>","name":"..","encryption":{"alg":"xchacha20poly1305","key_check":"<16 hex>"}}`
/// where `name` and `encryption` are left out when `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Manifest {
    /// Plaintext bytes in the file.
    pub size: u64,
    /// Plaintext bytes per chunk (the last chunk may be shorter); `1..=`[`MAX_CHUNK_SIZE`].
    pub chunk_size: u32,
    /// Number of chunks: `ceil(size / chunk_size)`, 0 for an empty file.
    pub chunks: u64,
    /// Keys of the index blobs, in order; empty iff the file is empty; at most
    /// [`MAX_INDEX_BLOBS`] and at most `chunks`.
    pub index: Vec<Key>,
    /// [`chunk_root`] of all chunk keys in order.
    pub root: [u8; 32],
    /// The file's base name (see [`validate_name`]); always `None` when encrypted, since a name
    /// in the clear would leak what the file is.
    pub name: Option<String>,
    /// Present when the chunks are encrypted.
    pub encryption: Option<Encryption>,
}

#[derive(Serialize)]
struct WireOut<'a> {
    format: &'static str,
    size: u64,
    chunk_size: u32,
    chunks: u64,
    index: &'a [Key],
    root: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption: Option<WireEncOut>,
}

#[derive(Serialize)]
struct WireEncOut {
    alg: &'static str,
    key_check: String,
}

/// First pass: only the format, so that another format is reported as such.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct WireFormat {
    format: Option<Value>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
#[serde(deny_unknown_fields)]
struct WireIn {
    #[allow(dead_code)]
    format: Value,
    size: Value,
    chunk_size: Value,
    chunks: Value,
    index: Value,
    root: Value,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    encryption: Option<Value>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
#[serde(deny_unknown_fields)]
struct WireEncIn {
    alg: Value,
    key_check: Value,
}

fn field_err(field: &'static str, reason: impl Into<String>) -> BlobError {
    BlobError::Manifest {
        field,
        reason: reason.into(),
    }
}

fn as_u64(field: &'static str, v: &Value) -> Result<u64, BlobError> {
    v.as_u64().ok_or_else(|| {
        field_err(
            field,
            format!("expected an integer 0..=2^64-1, got {}", kind(v)),
        )
    })
}

/// A short description of a JSON value for error messages (never the whole value).
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.len() <= 80 => format!("{s:?}"),
        Value::String(s) => format!("a string of {} bytes", s.len()),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

fn hex_field<const N: usize>(field: &'static str, v: &Value) -> Result<[u8; N], BlobError> {
    let Value::String(s) = v else {
        return Err(field_err(
            field,
            format!("expected a string of {} hex digits, got {}", 2 * N, kind(v)),
        ));
    };
    hex_array(s).map_err(|e| field_err(field, e))
}

/// Checks a file name as a manifest may carry it: a base name only, so that writing it to disk
/// can never escape the target directory.
///
/// Rules: 1..=[`MAX_NAME_LEN`] bytes; no `/`, `\`, NUL or other control characters; not `.` or
/// `..`.
pub fn validate_name(name: &str) -> Result<(), BlobError> {
    let bad = |reason: String| field_err("name", reason);
    if name.is_empty() {
        return Err(bad("empty: a name must be 1 to 255 bytes".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(format!(
            "{} bytes: a name must be at most {MAX_NAME_LEN} bytes",
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(bad(format!("{name:?} is not a file name")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | '\\') || c.is_control())
    {
        return Err(bad(format!(
            "contains {c:?}: a name is a base name, without '/', '\\', NUL or control characters"
        )));
    }
    Ok(())
}

impl Manifest {
    /// The manifest as JSON (see the type's documentation for the exact layout). Deterministic:
    /// equal manifests give equal bytes, hence equal keys.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = WireOut {
            format: MANIFEST_FORMAT,
            size: self.size,
            chunk_size: self.chunk_size,
            chunks: self.chunks,
            index: &self.index,
            root: hex::encode(self.root),
            name: self.name.as_deref(),
            encryption: self.encryption.map(|e| WireEncOut {
                alg: ENCRYPTION_ALG,
                key_check: hex::encode(e.key_check),
            }),
        };
        // Serialising plain strings and integers into a Vec cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parses and [validates](Self::validate) a manifest received from the network.
    ///
    /// Strict: the `format` must be [`MANIFEST_FORMAT`]; unknown or duplicate fields are
    /// rejected; hex fields must have exactly the right length; `encryption.alg` must be
    /// [`ENCRYPTION_ALG`]; at most [`MAX_MANIFEST_LEN`] bytes. Never panics, whatever the bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, BlobError> {
        if b.len() > MAX_MANIFEST_LEN {
            return Err(BlobError::ManifestTooLarge { len: b.len() });
        }
        let head: WireFormat =
            serde_json::from_slice(b).map_err(|e| BlobError::ManifestJson(e.to_string()))?;
        match head.format {
            None => return Err(BlobError::ManifestJson("missing field `format`".into())),
            Some(Value::String(s)) if s == MANIFEST_FORMAT => {}
            Some(v) => {
                return Err(field_err(
                    "format",
                    format!(
                        "unsupported format {}: expected {MANIFEST_FORMAT:?}",
                        kind(&v)
                    ),
                ));
            }
        }
        let w: WireIn =
            serde_json::from_slice(b).map_err(|e| BlobError::ManifestJson(e.to_string()))?;

        let size = as_u64("size", &w.size)?;
        let chunk_size = as_u64("chunk_size", &w.chunk_size)?;
        let chunk_size = u32::try_from(chunk_size)
            .ok()
            .filter(|c| (1..=MAX_CHUNK_SIZE).contains(c))
            .ok_or_else(|| {
                field_err(
                    "chunk_size",
                    format!("{chunk_size}: must be 1..={MAX_CHUNK_SIZE}"),
                )
            })?;
        let chunks = as_u64("chunks", &w.chunks)?;

        let Value::Array(entries) = &w.index else {
            return Err(field_err(
                "index",
                format!("expected an array of hex keys, got {}", kind(&w.index)),
            ));
        };
        if entries.len() > MAX_INDEX_BLOBS {
            return Err(field_err(
                "index",
                format!(
                    "{} entries: at most {MAX_INDEX_BLOBS} index blobs are allowed",
                    entries.len()
                ),
            ));
        }
        let mut index = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let Value::String(s) = e else {
                return Err(field_err(
                    "index",
                    format!(
                        "entry {i}: expected a string of 40 hex digits, got {}",
                        kind(e)
                    ),
                ));
            };
            let k = hex_array::<KEY_LEN>(s)
                .map_err(|r| field_err("index", format!("entry {i}: {r}")))?;
            index.push(Key::from_bytes(k));
        }

        let root = hex_field::<32>("root", &w.root)?;

        let name = match w.name {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(v) => {
                return Err(field_err(
                    "name",
                    format!("expected a string, got {}", kind(&v)),
                ));
            }
        };

        let encryption = match w.encryption {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => {
                let e: WireEncIn = serde_json::from_value(v)
                    .map_err(|e| field_err("encryption", e.to_string()))?;
                match &e.alg {
                    Value::String(s) if s == ENCRYPTION_ALG => {}
                    other => {
                        return Err(field_err(
                            "encryption.alg",
                            format!(
                                "unknown algorithm {}: only {ENCRYPTION_ALG:?} is supported",
                                kind(other)
                            ),
                        ));
                    }
                }
                let key_check = hex_field::<8>("encryption.key_check", &e.key_check)?;
                Some(Encryption { key_check })
            }
            Some(v) => {
                return Err(field_err(
                    "encryption",
                    format!("expected an object, got {}", kind(&v)),
                ));
            }
        };

        let m = Self {
            size,
            chunk_size,
            chunks,
            index,
            root,
            name,
            encryption,
        };
        m.validate()?;
        Ok(m)
    }

    /// Checks the rules that tie the fields together (what [`from_bytes`](Self::from_bytes)
    /// enforces beyond syntax); a writer may call it before storing:
    ///
    /// - `chunk_size` is `1..=`[`MAX_CHUNK_SIZE`];
    /// - `chunks == ceil(size / chunk_size)`;
    /// - `index` is empty iff `chunks == 0`, has at most `chunks` and at most [`MAX_INDEX_BLOBS`]
    ///   entries;
    /// - an empty file's `root` is `chunk_root(&[])`;
    /// - `name` passes [`validate_name`] and is absent when the file is encrypted.
    pub fn validate(&self) -> Result<(), BlobError> {
        if !(1..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(field_err(
                "chunk_size",
                format!("{}: must be 1..={MAX_CHUNK_SIZE}", self.chunk_size),
            ));
        }
        let expected = self.size.div_ceil(u64::from(self.chunk_size));
        if self.chunks != expected {
            return Err(field_err(
                "chunks",
                format!(
                    "{} does not match size {} / chunk_size {} (expected {expected})",
                    self.chunks, self.size, self.chunk_size
                ),
            ));
        }
        if self.index.len() > MAX_INDEX_BLOBS {
            return Err(field_err(
                "index",
                format!(
                    "{} entries: at most {MAX_INDEX_BLOBS} index blobs are allowed",
                    self.index.len()
                ),
            ));
        }
        if self.chunks == 0 && !self.index.is_empty() {
            return Err(field_err(
                "index",
                format!(
                    "{} entries for an empty file: must be empty",
                    self.index.len()
                ),
            ));
        }
        if self.chunks > 0 && self.index.is_empty() {
            return Err(field_err(
                "index",
                format!("empty, but the file has {} chunks", self.chunks),
            ));
        }
        if self.index.len() as u64 > self.chunks {
            return Err(field_err(
                "index",
                format!(
                    "{} entries for {} chunks: at most one index blob per chunk",
                    self.index.len(),
                    self.chunks
                ),
            ));
        }
        if self.chunks == 0 && self.root != chunk_root(&[]) {
            return Err(field_err(
                "root",
                "an empty file's root must be the root of no chunks",
            ));
        }
        if let Some(name) = &self.name {
            validate_name(name)?;
            if self.encryption.is_some() {
                return Err(field_err(
                    "name",
                    "must be absent when the file is encrypted (it would leak in the clear)",
                ));
            }
        }
        Ok(())
    }

    /// Plaintext length of chunk `i`: `chunk_size`, except for a shorter last chunk.
    /// Errs with [`BlobError::ChunkOutOfRange`] when `i >= chunks`.
    pub fn plain_len(&self, i: u64) -> Result<usize, BlobError> {
        if i >= self.chunks {
            return Err(BlobError::ChunkOutOfRange {
                index: i,
                chunks: self.chunks,
            });
        }
        let cs = u64::from(self.chunk_size);
        let start = i.saturating_mul(cs);
        let len = self.size.saturating_sub(start).min(cs);
        // len <= chunk_size, a u32.
        Ok(len as usize)
    }

    /// Stored length of chunk `i`: its plaintext length, plus [`TAG_LEN`] when encrypted.
    /// Errs with [`BlobError::ChunkOutOfRange`] when `i >= chunks`.
    pub fn stored_len(&self, i: u64) -> Result<usize, BlobError> {
        let plain = self.plain_len(i)?;
        Ok(if self.encryption.is_some() {
            plain.saturating_add(TAG_LEN)
        } else {
            plain
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u8) -> Key {
        content_key(&[i])
    }

    fn sample(encrypted: bool) -> Manifest {
        let keys: Vec<Key> = (0..5).map(key).collect();
        Manifest {
            size: 10_000,
            chunk_size: 2048,
            chunks: 5,
            index: vec![content_key(b"idx0"), content_key(b"idx1")],
            root: chunk_root(&keys),
            name: (!encrypted).then(|| "report.pdf".to_string()),
            encryption: encrypted.then_some(Encryption {
                key_check: [1, 2, 3, 4, 5, 6, 7, 8],
            }),
        }
    }

    fn json(m: &Manifest) -> serde_json::Map<String, Value> {
        match serde_json::from_slice(&m.to_bytes()).unwrap() {
            Value::Object(o) => o,
            _ => unreachable!(),
        }
    }

    fn parse(o: &serde_json::Map<String, Value>) -> Result<Manifest, BlobError> {
        Manifest::from_bytes(&serde_json::to_vec(o).unwrap())
    }

    fn field_of(e: BlobError) -> &'static str {
        match e {
            BlobError::Manifest { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn content_key_is_ripemd_of_sha() {
        // RIPEMD-160(SHA-256("")) is the well-known HASH160 of the empty string.
        assert_eq!(
            content_key(b"").to_string(),
            "b472a266d0bd89c13706a4132ccfb16f7c3b9fcb"
        );
    }

    #[test]
    fn chunk_root_depends_on_order() {
        let a = [key(1), key(2)];
        let b = [key(2), key(1)];
        assert_ne!(chunk_root(&a), chunk_root(&b));
        assert_eq!(chunk_root(&a), chunk_root(&a.clone()));
    }

    #[test]
    fn manifest_round_trip_and_layout() {
        for enc in [false, true] {
            let m = sample(enc);
            let bytes = m.to_bytes();
            assert_eq!(Manifest::from_bytes(&bytes).unwrap(), m);
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.starts_with(
                r#"{"format":"kad-file/1","size":10000,"chunk_size":2048,"chunks":5,"index":[""#
            ));
            assert_eq!(text.contains("\"name\""), !enc);
            assert_eq!(
                text.contains(
                    r#""encryption":{"alg":"xchacha20poly1305","key_check":"0102030405060708"}"#
                ),
                enc
            );
        }
        let empty = Manifest {
            size: 0,
            chunk_size: 1024,
            chunks: 0,
            index: vec![],
            root: chunk_root(&[]),
            name: None,
            encryption: None,
        };
        assert_eq!(Manifest::from_bytes(&empty.to_bytes()).unwrap(), empty);
    }

    #[test]
    fn manifest_rejects_wrong_format() {
        let mut o = json(&sample(false));
        o.insert("format".into(), "kad-file/2".into());
        assert_eq!(field_of(parse(&o).unwrap_err()), "format");
        o.remove("format");
        assert!(matches!(parse(&o), Err(BlobError::ManifestJson(e)) if e.contains("format")));
        assert!(matches!(
            Manifest::from_bytes(b"[1,2]"),
            Err(BlobError::ManifestJson(_))
        ));
        assert!(matches!(
            Manifest::from_bytes(b"{"),
            Err(BlobError::ManifestJson(_))
        ));
        let e = Manifest::from_bytes(b"[]").unwrap_err().to_string();
        assert!(e.contains("expected a JSON object"), "{e}");
        let big = vec![b' '; MAX_MANIFEST_LEN + 1];
        assert_eq!(
            Manifest::from_bytes(&big),
            Err(BlobError::ManifestTooLarge {
                len: MAX_MANIFEST_LEN + 1
            })
        );
    }

    #[test]
    fn manifest_rejects_unknown_missing_and_duplicate_fields() {
        let mut o = json(&sample(false));
        o.insert("extra".into(), 1.into());
        let e = parse(&o).unwrap_err();
        assert!(e.to_string().contains("extra"), "{e}");
        let mut o = json(&sample(false));
        o.remove("root");
        let e = parse(&o).unwrap_err();
        assert!(e.to_string().contains("root"), "{e}");
        let text = String::from_utf8(sample(false).to_bytes()).unwrap();
        let dup = text.replacen("\"size\":10000", "\"size\":10000,\"size\":10000", 1);
        let e = Manifest::from_bytes(dup.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
    }

    #[test]
    fn manifest_rejects_inconsistent_chunks() {
        let mut o = json(&sample(false));
        o.insert("chunks".into(), 4.into());
        let e = parse(&o).unwrap_err();
        assert!(e.to_string().contains("expected 5"), "{e}");
        assert_eq!(field_of(e), "chunks");

        let mut o = json(&sample(false));
        o.insert("chunk_size".into(), 0.into());
        assert_eq!(field_of(parse(&o).unwrap_err()), "chunk_size");
        o.insert("chunk_size".into(), (u64::from(MAX_CHUNK_SIZE) + 1).into());
        assert_eq!(field_of(parse(&o).unwrap_err()), "chunk_size");
        o.insert("chunk_size".into(), (-1).into());
        assert_eq!(field_of(parse(&o).unwrap_err()), "chunk_size");
        let mut o = json(&sample(false));
        o.insert("size".into(), "10000".into());
        assert_eq!(field_of(parse(&o).unwrap_err()), "size");

        // Index non-empty iff chunks > 0, and never more entries than chunks.
        let mut m = sample(false);
        m.index.clear();
        assert_eq!(
            field_of(Manifest::from_bytes(&m.to_bytes()).unwrap_err()),
            "index"
        );
        let mut m = sample(false);
        m.index = (0..6).map(key).collect();
        assert_eq!(
            field_of(Manifest::from_bytes(&m.to_bytes()).unwrap_err()),
            "index"
        );
        let mut m = sample(false);
        m.size = 0;
        m.chunks = 0;
        m.root = chunk_root(&[]);
        assert_eq!(
            field_of(Manifest::from_bytes(&m.to_bytes()).unwrap_err()),
            "index"
        );
        m.index.clear();
        m.root = [0; 32];
        assert_eq!(
            field_of(Manifest::from_bytes(&m.to_bytes()).unwrap_err()),
            "root"
        );
    }

    #[test]
    fn manifest_rejects_bad_hex() {
        let mut o = json(&sample(false));
        o.insert("root".into(), "zz".repeat(32).into());
        let e = parse(&o).unwrap_err();
        assert!(e.to_string().contains("not hex"), "{e}");
        assert_eq!(field_of(e), "root");
        o.insert("root".into(), "ab".repeat(31).into());
        let e = parse(&o).unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");

        let mut o = json(&sample(false));
        o.insert(
            "index".into(),
            serde_json::json!([key(1).to_string(), "abc"]),
        );
        let e = parse(&o).unwrap_err();
        assert!(e.to_string().contains("entry 1"), "{e}");
        assert_eq!(field_of(e), "index");
        o.insert("index".into(), serde_json::json!([7]));
        assert_eq!(field_of(parse(&o).unwrap_err()), "index");
        o.insert("index".into(), "nope".into());
        assert_eq!(field_of(parse(&o).unwrap_err()), "index");

        let mut o = json(&sample(true));
        o.insert(
            "encryption".into(),
            serde_json::json!({"alg": ENCRYPTION_ALG, "key_check": "0102"}),
        );
        assert_eq!(field_of(parse(&o).unwrap_err()), "encryption.key_check");
    }

    #[test]
    fn manifest_rejects_too_many_index_entries() {
        let n = MAX_INDEX_BLOBS + 1;
        let m = Manifest {
            size: n as u64,
            chunk_size: 1,
            chunks: n as u64,
            index: vec![key(0); n],
            root: [0; 32],
            name: None,
            encryption: None,
        };
        let e = Manifest::from_bytes(&m.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("4096"), "{e}");
        assert_eq!(field_of(e), "index");
        assert!(m.validate().is_err());
        // The largest valid manifest fits in MAX_MANIFEST_LEN.
        let mut ok = m.clone();
        ok.index.truncate(MAX_INDEX_BLOBS);
        ok.name = Some("\"".repeat(MAX_NAME_LEN));
        assert!(ok.to_bytes().len() < 180_000);
        assert_eq!(Manifest::from_bytes(&ok.to_bytes()).unwrap(), ok);
    }

    #[test]
    fn manifest_rejects_bad_names() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "a\0b",
            "line\nbreak",
            &"x".repeat(256),
        ] {
            let mut m = sample(false);
            m.name = Some(bad.to_string());
            let e = Manifest::from_bytes(&m.to_bytes()).unwrap_err();
            assert_eq!(field_of(e), "name", "{bad:?}");
        }
        for good in ["a", "..a", "résumé.txt", &"x".repeat(255)] {
            let mut m = sample(false);
            m.name = Some(good.to_string());
            assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
        }
        // No name in the clear beside encrypted chunks.
        let mut m = sample(true);
        m.name = Some("secret.txt".into());
        assert_eq!(
            field_of(Manifest::from_bytes(&m.to_bytes()).unwrap_err()),
            "name"
        );
        let mut o = json(&sample(false));
        o.insert("name".into(), 5.into());
        assert_eq!(field_of(parse(&o).unwrap_err()), "name");
    }

    #[test]
    fn manifest_rejects_unknown_alg() {
        let mut o = json(&sample(true));
        o.insert(
            "encryption".into(),
            serde_json::json!({"alg": "aes-256-gcm", "key_check": "0102030405060708"}),
        );
        let e = parse(&o).unwrap_err();
        assert!(e.to_string().contains("aes-256-gcm"), "{e}");
        assert_eq!(field_of(e), "encryption.alg");
        o.insert(
            "encryption".into(),
            serde_json::json!({"alg": ENCRYPTION_ALG, "key_check": "0102030405060708", "x": 1}),
        );
        assert_eq!(field_of(parse(&o).unwrap_err()), "encryption");
        o.insert("encryption".into(), "yes".into());
        assert_eq!(field_of(parse(&o).unwrap_err()), "encryption");
    }

    #[test]
    fn chunk_lengths() {
        let m = sample(false); // 10_000 bytes in chunks of 2048: 4 × 2048 + 1808
        assert_eq!(m.plain_len(0).unwrap(), 2048);
        assert_eq!(m.plain_len(3).unwrap(), 2048);
        assert_eq!(m.plain_len(4).unwrap(), 1808);
        assert_eq!(m.stored_len(4).unwrap(), 1808);
        assert_eq!(
            m.plain_len(5),
            Err(BlobError::ChunkOutOfRange {
                index: 5,
                chunks: 5
            })
        );
        assert!(m.stored_len(u64::MAX).is_err());
        let e = sample(true);
        assert_eq!(e.stored_len(0).unwrap(), 2048 + TAG_LEN);
        assert_eq!(e.stored_len(4).unwrap(), 1808 + TAG_LEN);
        assert!(e.stored_len(5).is_err());
    }

    #[test]
    fn index_blobs_round_trip_and_limits() {
        let keys: Vec<Key> = (0..=200).map(key).collect();
        let blobs = index_blobs(&keys, 10 * 20 + 19).unwrap();
        assert_eq!(blobs.len(), 21);
        assert!(blobs[..20].iter().all(|b| b.len() == 200));
        assert_eq!(blobs[20].len(), 20);
        let back: Vec<Key> = blobs
            .iter()
            .flat_map(|b| parse_index_blob(b).unwrap())
            .collect();
        assert_eq!(back, keys);
        assert!(index_blobs(&[], 1000).unwrap().is_empty());
        assert_eq!(
            index_blobs(&keys, 19),
            Err(BlobError::IndexBlobTooSmall { max_blob_len: 19 })
        );
        // One key per blob: MAX_INDEX_BLOBS keys fit, one more does not.
        let many = vec![key(0); MAX_INDEX_BLOBS + 1];
        assert_eq!(
            index_blobs(&many[..MAX_INDEX_BLOBS], 20).unwrap().len(),
            MAX_INDEX_BLOBS
        );
        let e = index_blobs(&many, 39).unwrap_err();
        assert_eq!(
            e,
            BlobError::TooManyChunks {
                chunks: 4097,
                keys_per_blob: 1
            }
        );
        assert!(e.to_string().contains("at most 4096"), "{e}");
        assert_eq!(max_file_size(1000, 40), 2 * 4096 * 1000);

        assert_eq!(parse_index_blob(&[]), Err(BlobError::IndexBlob { len: 0 }));
        assert_eq!(
            parse_index_blob(&[0; 21]),
            Err(BlobError::IndexBlob { len: 21 })
        );
        assert_eq!(
            parse_index_blob(&[7; 40]).unwrap(),
            vec![Key::from_bytes([7; 20]); 2]
        );
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size_for(65_507), 35_840);
        assert_eq!(chunk_size_for(1 << 20), 774_144);
        assert_eq!(chunk_size_for(0), 1024);
        assert_eq!(chunk_size_for(16_384), 1024);
        assert_eq!(chunk_size_for(usize::MAX), MAX_CHUNK_SIZE);
        assert_eq!(chunk_size_for(64 << 20), MAX_CHUNK_SIZE);
    }

    #[test]
    fn error_messages_name_limits() {
        let e = BlobError::TooManyChunks {
            chunks: 10_000_000,
            keys_per_blob: 1792,
        };
        let s = e.to_string();
        assert!(s.contains("7340032") && s.contains("4096"), "{s}");
    }

    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        (
            0u64..1 << 40,
            1u32..=MAX_CHUNK_SIZE,
            any::<[u8; 32]>(),
            proptest::option::of("[a-zA-Z0-9 ._-]{1,40}"),
            proptest::option::of(any::<[u8; 8]>()),
            any::<[u8; 20]>(),
        )
            .prop_filter("a name that is not . or ..", |t| {
                !matches!(t.3.as_deref(), Some("." | ".."))
            })
            .prop_map(|(size, chunk_size, root, name, check, k)| {
                let chunks = size.div_ceil(u64::from(chunk_size));
                let n = chunks.min(5) as usize;
                let encryption = check.map(|key_check| Encryption { key_check });
                Manifest {
                    size,
                    chunk_size,
                    chunks,
                    index: vec![Key::from_bytes(k); n],
                    root: if chunks == 0 { chunk_root(&[]) } else { root },
                    name: if encryption.is_some() { None } else { name },
                    encryption,
                }
            })
    }

    proptest! {
        #[test]
        fn manifest_round_trips(m in arb_manifest()) {
            prop_assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
        }

        #[test]
        fn manifest_never_panics_on_random_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::from_bytes(&b);
        }

        #[test]
        fn manifest_never_panics_on_mutated_json(m in arb_manifest(), pos in any::<usize>(), byte in any::<u8>()) {
            let mut b = m.to_bytes();
            let i = pos % b.len();
            b[i] = byte;
            if let Ok(parsed) = Manifest::from_bytes(&b) {
                prop_assert!(parsed.validate().is_ok());
            }
        }

        #[test]
        fn index_blobs_round_trip(n in 0usize..300, max in 20usize..1000) {
            let keys: Vec<Key> = (0..n).map(|i| content_key(&i.to_le_bytes())).collect();
            let blobs = index_blobs(&keys, max).unwrap();
            prop_assert!(blobs.iter().all(|b| !b.is_empty() && b.len() <= max && b.len() % 20 == 0));
            let back: Vec<Key> = blobs.iter().flat_map(|b| parse_index_blob(b).unwrap()).collect();
            prop_assert_eq!(back, keys);
        }

        #[test]
        fn parse_index_blob_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let r = parse_index_blob(&b);
            prop_assert_eq!(r.is_ok(), !b.is_empty() && b.len() % 20 == 0);
        }
    }
}
