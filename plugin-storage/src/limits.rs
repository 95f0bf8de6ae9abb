//! The stored file format's names and limits: every bound a hostile manifest could push against.

/// The `format` string of a manifest.
pub const MANIFEST_FORMAT: &str = "kad-file/1";

/// The only encryption algorithm a manifest may name (see [`seal_chunk`](crate::seal_chunk)).
pub const ENCRYPTION_ALG: &str = "xchacha20poly1305";

/// Most index blobs a manifest may list. With index blobs as large as chunks this bounds a
/// file to `MAX_INDEX_BLOBS * (chunk_size / 20) * chunk_size` bytes: about 245 GiB with 35 KiB
/// chunks (UDP), far more with larger ones; see [`max_file_size`](crate::max_file_size).
pub const MAX_INDEX_BLOBS: usize = 4096;

/// Largest chunk size a manifest may declare: 4 MiB. A reader holds a few chunks in memory at
/// once, so a hostile manifest must not be able to make it allocate more.
pub const MAX_CHUNK_SIZE: u32 = 4 << 20;

/// Longest file name a manifest may carry, in bytes (UTF-8).
pub const MAX_NAME_LEN: usize = 255;

/// Largest manifest [`Manifest::from_bytes`](crate::Manifest::from_bytes) parses: 256 KiB. The largest valid manifest
/// ([`MAX_INDEX_BLOBS`] index keys and a [`MAX_NAME_LEN`]-byte name) is under 180 KB.
pub const MAX_MANIFEST_LEN: usize = 256 << 10;
