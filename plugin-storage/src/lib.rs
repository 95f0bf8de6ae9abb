//! Content-addressed, persistent, chunked and encrypted storage for `kad-core`: what a custom
//! P2P storage network is made of.
//!
//! - **Content addressing.** A value's key is `RIPEMD-160(SHA-256(value))` ([`content_key`]).
//!   [`ContentValidator`] refuses a STORE whose key does not match its value and drops a lookup
//!   answer whose value does not hash to the key (the lookup then asks the next holder).
//! - **Persistence.** [`RedbStore`] is a [`RecordStore`](kad_core::RecordStore) on the redb
//!   embedded database: each record is committed (fsync) before the STORE is acknowledged, so a
//!   node killed with SIGKILL keeps everything it acknowledged; expiry is wall-clock and holds
//!   across restarts; quotas are the same as the in-memory store's (records, bytes, bytes per
//!   publisher, farthest-from-our-id evicted first). [`RoutingFile`] keeps the routing table
//!   for warm restarts in the same file.
//! - **Large files.** [`put_file`] cuts a file into chunks sized to the transport's messages
//!   ([`chunk_size_for`]), stores each content-addressed, then index blobs (the ordered chunk
//!   keys) and a [`Manifest`] whose key is the file's key. [`get_file`] fetches chunks in
//!   parallel from any holder through `storage.FETCH` ([`StoragePlugin`]: many small chunks
//!   per answer, or one large one), verifies each against its key, asks another holder for a
//!   bad or missing one, and resumes an interrupted download from the chunks already on disk.
//! - **Pinning.** [`PutOptions::pin_to`] hands every record of a file to a node of the user's
//!   that keeps it as its own (`storage.PIN`, allowed by [`StoragePlugin::allow_pins`]) and
//!   republishes it before it expires, across restarts with a [`RedbStore`] (own records live in
//!   their own table): the file outlives its TTL and the client that put it.
//! - **Encryption and key shares.** [`Protection::Encrypted`] seals every chunk with
//!   XChaCha20-Poly1305 under a fresh key bound to the chunk's position, and hands back a
//!   [`Capability`] (`kad:KEY#SECRET`); [`Protection::Shared`] splits that key into Shamir
//!   shares ([`split_key`], [`combine_shares`]) of which any threshold rebuild it. A wrong key,
//!   too few shares, a corrupt share or a tampered chunk is an error, never wrong plaintext.
//!
//! Every storing node registers the validator, the plugin and a store:
//!
//! ```
//! use std::sync::Arc;
//! use kad_core::{Config, Node, NodeId, StoreLimits};
//! use kad_plugin_storage::{ContentValidator, RedbStore, StoragePlugin};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let id = NodeId::from_bytes([7; 20]);
//! let now_ms = 1_700_000_000_000; // the wall clock, in Unix milliseconds
//! // 1 GiB, at most a quarter of it for any one publisher.
//! let store = RedbStore::open(&dir.path().join("records.redb"), id, StoreLimits::new(1 << 20, 1 << 30), now_ms)?;
//! let routing = store.routing(); // save the table here on the way out, load it at start
//! let builder = Node::builder(Config::default())
//!     .id(id)
//!     .store(Box::new(store))
//!     .validator(Arc::new(ContentValidator))
//!     .plugin(Box::new(StoragePlugin::new(40_000)));
//! // ... then `Dht::spawn(builder, transports)`; see `kad node --data-dir` in the examples.
//! # let _ = (builder, routing); Ok(()) }
//! ```
//!
//! A reader or writer is any node (a read-only client will do) with the validator:
//!
//! ```no_run
//! # async fn demo(dht: kad_core::Dht) -> Result<(), kad_plugin_storage::TransferError> {
//! use kad_plugin_storage::{GetOptions, Protection, PutOptions, get_file, put_file};
//!
//! let opts = PutOptions { protection: Protection::Encrypted, ..PutOptions::default() };
//! let put = put_file(&dht, "report.pdf".as_ref(), &opts, &|done, total| {
//!     eprintln!("{done}/{total}");
//! })
//! .await?;
//! let cap = put.capability.expect("encrypted files come with a capability");
//! println!("{cap}"); // kad:<file key>#<secret>
//! get_file(&dht, cap.manifest, Some(&cap.key), "copy.pdf".as_ref(), &GetOptions::default(), &|_, _| {})
//!     .await?;
//! # Ok(()) }
//! ```

mod content;
mod crypto;
mod error;
mod hex;
mod limits;
mod manifest;
mod plugin;
mod store;
mod transfer;

pub use content::ContentValidator;
pub use crypto::*;
pub use error::BlobError;
pub use limits::*;
pub use manifest::*;
pub use plugin::{
    FETCH, FetchParams, FetchReply, MAX_FETCH_KEYS, MAX_PIN_RECORDS, MAX_PIN_TTL_MS, NAMESPACE,
    PIN, PinParams, PinReply, StoragePlugin, UNPIN, UnpinParams, UnpinReply,
};
pub use store::*;
pub use transfer::{
    GetOptions, GetReport, Protection, PutOptions, PutReport, TransferError, default_chunk_size,
    fetch_one, get_file, get_file_with, get_manifest, pin, put_file, put_parallelism,
};
