//! Content-addressed, persistent, chunked and encrypted storage for `kad-core`.
//!
//! (crate docs are written last)

mod blob;
mod content;
mod crypto;
mod plugin;
mod store;
mod transfer;

pub use blob::*;
pub use content::ContentValidator;
pub use crypto::*;
pub use plugin::{FETCH, FetchParams, FetchReply, MAX_FETCH_KEYS, NAMESPACE, StoragePlugin};
pub use store::*;
pub use transfer::{
    GetOptions, GetReport, Protection, PutOptions, PutReport, TransferError, fetch_one, get_file,
    get_file_with, get_manifest, put_file, put_parallelism,
};
