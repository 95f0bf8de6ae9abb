//! [`BlobError`]: what can go wrong building, parsing or decrypting a stored file.

use crate::limits::{MANIFEST_FORMAT, MAX_INDEX_BLOBS, MAX_MANIFEST_LEN};

/// Everything that can go wrong building, parsing or decrypting a stored file.
///
/// Parse errors name the field and the limit they break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The manifest is longer than [`MAX_MANIFEST_LEN`](crate::MAX_MANIFEST_LEN).
    #[error("manifest is {len} bytes, the limit is {MAX_MANIFEST_LEN}")]
    ManifestTooLarge {
        /// Its length in bytes.
        len: usize,
    },
    /// The manifest is not JSON, not an object, or has a missing, unknown or duplicate field.
    #[error("manifest is not a valid {MANIFEST_FORMAT} JSON object: {0}")]
    ManifestJson(String),
    /// A manifest field has a wrong type or value.
    #[error("manifest field `{field}`: {reason}")]
    Manifest {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it, and the limit it breaks.
        reason: String,
    },
    /// A chunk number past the end of the file.
    #[error("chunk {index} does not exist: the file has {chunks} chunks")]
    ChunkOutOfRange {
        /// The chunk number asked for.
        index: u64,
        /// How many chunks the file has.
        chunks: u64,
    },
    /// An index blob whose length is not a positive multiple of 20 bytes.
    #[error("index blob is {len} bytes: it must be a positive multiple of 20 (one key per chunk)")]
    IndexBlob {
        /// Its length in bytes.
        len: usize,
    },
    /// [`index_blobs`](crate::index_blobs) was asked for blobs too small to hold a single key.
    #[error("index blobs of at most {max_blob_len} bytes cannot hold one 20-byte chunk key")]
    IndexBlobTooSmall {
        /// The requested largest blob length.
        max_blob_len: usize,
    },
    /// The file has more chunks than [`MAX_INDEX_BLOBS`](crate::MAX_INDEX_BLOBS) index blobs can list.
    #[error(
        "the file has {chunks} chunks but {MAX_INDEX_BLOBS} index blobs of {keys_per_blob} keys \
         list at most {max_chunks}: the file may be at most {max_chunks} times the chunk size \
         (use a larger chunk size or index blob size)",
        max_chunks = *keys_per_blob * MAX_INDEX_BLOBS as u64
    )]
    TooManyChunks {
        /// How many chunks the file has.
        chunks: u64,
        /// How many keys fit in one index blob.
        keys_per_blob: u64,
    },
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    /// A chunk failed authenticated decryption.
    #[error(
        "chunk {index} does not decrypt: wrong key, or the chunk is corrupt, truncated or out of \
         place"
    )]
    Decrypt {
        /// The chunk's number.
        index: u64,
    },
    /// The key (or the key rebuilt from shares) does not match the manifest's key check.
    #[error("the key or shares do not match this file (key check failed)")]
    WrongKey,
    /// A capability string does not parse; says which part is wrong.
    #[error("invalid capability: {0}")]
    BadCapability(String),
    /// [`split_key`](crate::split_key)(crate::split_key) was given an impossible threshold or share count.
    #[error("cannot split a key into {n} shares with threshold {threshold}: {reason}")]
    InvalidSplit {
        /// The requested threshold.
        threshold: u8,
        /// The requested number of shares.
        n: u8,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A share string does not parse; says which field is wrong.
    #[error("invalid share: {0}")]
    BadShare(String),
    /// A share string parses but its checksum does not match.
    #[error("share is corrupt or mistyped (checksum mismatch)")]
    ShareChecksum,
    /// [`combine_shares`](crate::combine_shares) was given no shares.
    #[error("no shares given")]
    NoShares,
    /// Fewer shares than their threshold.
    #[error("need {need} shares, got {got}")]
    NotEnoughShares {
        /// The shares' threshold.
        need: u8,
        /// How many distinct shares were given.
        got: usize,
    },
    /// Shares from different splits (different thresholds).
    #[error("shares come from different splits: one needs {first} shares, another needs {other}")]
    MixedThresholds {
        /// The first share's threshold.
        first: u8,
        /// A different threshold found among the others.
        other: u8,
    },
    /// The same share (x coordinate) was given twice.
    #[error("share number {x} was given more than once")]
    DuplicateShare {
        /// The repeated x coordinate.
        x: u8,
    },
    /// The index blobs do not add up to the chunks the manifest commits to.
    #[error("the file's index does not match its manifest (wrong chunk count or root hash)")]
    RootMismatch,
}
