//! Moving whole files through a running [`Dht`]: chunk, encrypt, store, and fetch back in
//! parallel from any holder, verifying every chunk.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kad_core::{Contact, Dht, DhtError, Key, NodeId, QueryError, Record};
use tokio::task::JoinSet;

use crate::plugin::{FETCH, FetchParams, FetchReply, PIN, PinParams, PinReply};
use crate::{
    BlobError, Capability, Encryption, FileKey, Manifest, Share, chunk_root, content_key,
    index_blobs, open_chunk, parse_index_blob, seal_chunk, split_key,
};

/// How a file is protected when it is put.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protection {
    /// Stored as is: anyone with the key reads it.
    #[default]
    Plain,
    /// Encrypted under a fresh key, given back as a [`Capability`].
    Encrypted,
    /// Encrypted under a fresh key split into `shares` Shamir shares, any `threshold` of which
    /// rebuild it. The key itself is never printed.
    Shared {
        /// Shares needed.
        threshold: u8,
        /// Shares made.
        shares: u8,
    },
}

/// Options of [`put_file`].
#[derive(Clone, Debug)]
pub struct PutOptions {
    /// Plaintext bytes per chunk (see [`chunk_size_for`](crate::chunk_size_for)).
    pub chunk_size: u32,
    /// Chunks stored at once. Every chunk goes to the k closest nodes, so each storing node
    /// receives about this many chunks at once: keep `parallel x chunk_size` near 2 MiB (see
    /// [`put_parallelism`]) or busy nodes miss lookup deadlines and the chunks land on fewer
    /// of them.
    pub parallel: usize,
    /// Largest record value the network takes (index blobs are cut to it).
    pub max_value_len: usize,
    /// Encryption.
    pub protection: Protection,
    /// Record lifetime.
    pub ttl: Duration,
    /// Attempts per record before giving up (a STORE that fewer than half of the nodes it
    /// went to acknowledged is sent again while attempts remain).
    pub attempts: u32,
    /// A node that keeps every record of the file for this node's user and republishes it,
    /// across its restarts when it has a persistent store (`storage.PIN`, see
    /// [`StoragePlugin::allow_pins`](crate::StoragePlugin::allow_pins)): the file then outlives
    /// `ttl` and the writer. Each record goes to it once the k closest stored it; a refusal
    /// fails the put with [`TransferError::NotPinned`].
    pub pin_to: Option<Contact>,
}

impl Default for PutOptions {
    fn default() -> Self {
        Self {
            chunk_size: 32 * 1024,
            parallel: 8,
            max_value_len: 45_000,
            protection: Protection::Plain,
            ttl: Duration::from_secs(24 * 3600),
            attempts: 3,
            pin_to: None,
        }
    }
}

/// The default chunk size for a writer whose largest message is `max_message_len` bytes: the
/// largest that fits one message ([`chunk_size_for`](crate::chunk_size_for)), a KiB less when
/// the encryption tag would push it past the value limit.
pub fn default_chunk_size(max_message_len: usize, protection: Protection) -> u32 {
    let tag = if protection == Protection::Plain {
        0
    } else {
        crate::TAG_LEN
    };
    match crate::chunk_size_for(max_message_len) {
        c if c as usize + tag > kad_core::max_native_value_for(max_message_len) => c - 1024,
        c => c,
    }
}

/// Chunks stored at once for `chunk_size`: about 2 MiB of chunks in flight, 1 to 16.
pub fn put_parallelism(chunk_size: u32) -> usize {
    ((2 << 20) / chunk_size.max(1) as usize).clamp(1, 16)
}

/// What [`put_file`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct PutReport {
    /// The file's key (its manifest's content key).
    pub key: Key,
    /// Plaintext bytes.
    pub size: u64,
    /// Data chunks.
    pub chunks: u64,
    /// Index blobs.
    pub index_blobs: usize,
    /// The fewest nodes that stored any one record (chunk, index blob or manifest).
    pub min_replicas: usize,
    /// Stores retried after a failure, or sent again because fewer than half of the nodes
    /// stored them; pins asked again.
    pub retries: u64,
    /// Records the pinning node keeps ([`PutOptions::pin_to`]): all of them, or the put failed.
    pub pinned: usize,
    /// The capability (key plus secret) of an [`Protection::Encrypted`] file.
    pub capability: Option<Capability>,
    /// The shares of a [`Protection::Shared`] file.
    pub shares: Vec<Share>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// Reading or writing a local file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A bad option (names the field and the limit).
    #[error("{0}")]
    Invalid(String),
    /// The manifest, a share, a key or a chunk did not check out.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The node failed.
    #[error(transparent)]
    Dht(#[from] DhtError),
    /// A record could not be stored anywhere.
    #[error("{what}: no node stored it after {attempts} attempts (last error: {last})")]
    NotStored {
        /// Which record.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// The pinning node did not keep a record ([`PutOptions::pin_to`]).
    #[error("{what}: node {node} did not pin it: {reason}")]
    NotPinned {
        /// Which record.
        what: String,
        /// The pinning node.
        node: NodeId,
        /// Its answer, or why there was none.
        reason: String,
    },
    /// A record was not found at any holder.
    #[error(
        "{what} ({key}) was not found intact at any holder (asked {asked} nodes; copies that fail verification are never used)"
    )]
    NotFound {
        /// Which record.
        what: String,
        /// Its key.
        key: Key,
        /// Holders asked.
        asked: usize,
    },
    /// The file's chunks are larger than any message this node's transports receive.
    #[error(
        "the file's chunks are {chunk_len} bytes, more than the {limit} bytes of value one message \
         to this node carries: get it over QUIC or WebSocket (a quic:// or ws:// address)"
    )]
    ChunkTooLarge {
        /// Bytes of one stored chunk.
        chunk_len: usize,
        /// The largest value this node's transports receive in one answer
        /// ([`GetOptions::max_value_len`]).
        limit: usize,
    },
    /// Holders have the record but cannot send it over the transport the request went on.
    #[error(
        "{what} ({key}) is too large for the transport it was asked over: {holders} of the \
         {asked} holders asked said so ({detail})"
    )]
    AnswerTooLarge {
        /// Which record.
        what: String,
        /// Its key.
        key: Key,
        /// Holders that answered that the answer was too large.
        holders: usize,
        /// Holders asked.
        asked: usize,
        /// The last such answer's message.
        detail: String,
    },
    /// The key is a plain record, not a file manifest.
    #[error("{0} is not a file manifest")]
    NotAFile(Key),
    /// An encrypted file was asked for without its key.
    #[error("the file is encrypted: give its capability (kad:KEY#SECRET) or enough shares")]
    KeyNeeded,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One chunk stored by [`put_file`].
struct StoredChunk {
    index: u64,
    len: usize,
    key: Key,
    replicas: usize,
    retries: u64,
}

/// How [`put_file`] stores each record: where, for how long, how hard it tries, and who pins it.
#[derive(Clone)]
struct Storer {
    dht: Dht,
    ttl: Duration,
    attempts: u32,
    pin_to: Option<Contact>,
}

impl Storer {
    /// Stores one record (content-addressed) at the k closest nodes, then has the pinning node
    /// keep it; returns its key and how many nodes stored it.
    ///
    /// A STORE that fewer than half of the nodes it went to acknowledged is sent again (a repair:
    /// a fresh connection's first messages across a lossy link often time out), up to the
    /// attempts; the best count is kept. No node at all after every attempt is an error.
    async fn store(
        &self,
        what: &str,
        value: Bytes,
        retries: &mut u64,
    ) -> Result<(Key, usize), TransferError> {
        let key = content_key(&value);
        let attempts = self.attempts.max(1);
        let mut last = String::new();
        let mut best = 0;
        for attempt in 0..attempts {
            if attempt > 0 {
                *retries += 1;
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
            let record = Record::new(
                key,
                value.clone(),
                Some(self.dht.id()),
                kad_core::SystemClock::now_ms(),
                self.ttl.as_millis() as u64,
            );
            match self.dht.put_record(record).await {
                Ok(o) if o.stored > 0 => {
                    tracing::debug!(
                        what,
                        stored = o.stored,
                        tried = o.tried,
                        rpcs = o.stats.rpcs,
                        "stored"
                    );
                    best = best.max(o.stored);
                    if o.stored * 2 >= o.tried {
                        break;
                    }
                    last = format!("{} of {} nodes stored it", o.stored, o.tried);
                }
                Ok(o) => last = format!("0 of {} nodes stored it", o.tried),
                Err(DhtError::Command(e)) => {
                    return Err(TransferError::Invalid(format!("{what}: {e}")));
                }
                Err(e) => last = e.to_string(),
            }
        }
        if best == 0 {
            return Err(TransferError::NotStored {
                what: what.to_owned(),
                attempts,
                last,
            });
        }
        if let Some(to) = &self.pin_to {
            self.pin(to, what, key, value, retries).await?;
        }
        Ok((key, best))
    }

    /// Hands one record to the pinning node (see [`pin`]).
    async fn pin(
        &self,
        to: &Contact,
        what: &str,
        key: Key,
        value: Bytes,
        retries: &mut u64,
    ) -> Result<(), TransferError> {
        *retries += pin(&self.dht, to, what, key, value, self.ttl, self.attempts).await?;
        Ok(())
    }
}

/// Hands the record `key` = `value` (`what`, for errors) to the node `to`, which keeps it and
/// republishes it before it expires, copies living `ttl` (`storage.PIN`; the node must allow pins
/// from this node, see [`StoragePlugin::allow_pins`](crate::StoragePlugin::allow_pins)). A
/// request that gets no answer is sent again, up to `attempts` in all; returns how many were
/// sent again.
///
/// # Errors
/// [`TransferError::NotPinned`] with the node's reason when it refuses, or when it never answers;
/// [`TransferError::Invalid`] when the request cannot be sent (no transport reaches the node).
pub async fn pin(
    dht: &Dht,
    to: &Contact,
    what: &str,
    key: Key,
    value: Bytes,
    ttl: Duration,
    attempts: u32,
) -> Result<u64, TransferError> {
    let params = PinParams {
        values: vec![(key, value)],
        ttl_ms: ttl.as_millis() as u64,
    };
    let params = Bytes::from(
        serde_json::to_vec(&params).map_err(|e| TransferError::Invalid(e.to_string()))?,
    );
    let not_pinned = |reason: String| TransferError::NotPinned {
        what: what.to_owned(),
        node: to.id,
        reason,
    };
    let attempts = attempts.max(1);
    let mut last = String::new();
    for attempt in 0..attempts {
        match dht.call(to.clone(), PIN, params.clone()).await {
            Ok(answer) => {
                return match serde_json::from_slice::<PinReply>(&answer) {
                    Ok(r) if r.pinned == 1 => Ok(u64::from(attempt)),
                    Ok(r) => Err(not_pinned(format!("it pinned {} of 1 records", r.pinned))),
                    Err(e) => Err(not_pinned(format!("its answer did not parse: {e}"))),
                };
            }
            Err(DhtError::Query(QueryError::Remote(e))) => return Err(not_pinned(e.message)),
            Err(DhtError::Command(e)) => {
                return Err(TransferError::Invalid(format!("{what}: pin: {e}")));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(not_pinned(format!(
        "no answer after {attempts} attempts (last error: {last})"
    )))
}

/// Splits the file at `path` into chunks, stores each (encrypted first when asked), then the
/// index blobs and the manifest, `opts.parallel` records at a time. `progress(done, total)`
/// is called with plaintext bytes stored.
pub async fn put_file(
    dht: &Dht,
    path: &Path,
    opts: &PutOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<PutReport, TransferError> {
    let t0 = Instant::now();
    if opts.chunk_size == 0 || opts.chunk_size as usize > opts.max_value_len {
        return Err(TransferError::Invalid(format!(
            "chunk size {} is out of range: 1 to {} bytes (the largest value the network takes)",
            opts.chunk_size, opts.max_value_len
        )));
    }
    let sealed_extra = if opts.protection == Protection::Plain {
        0
    } else {
        crate::TAG_LEN
    };
    if opts.chunk_size as usize + sealed_extra > opts.max_value_len {
        return Err(TransferError::Invalid(format!(
            "chunk size {} plus the {sealed_extra}-byte tag exceeds the value limit of {} bytes",
            opts.chunk_size, opts.max_value_len
        )));
    }
    let storer = Storer {
        dht: dht.clone(),
        ttl: opts.ttl,
        attempts: opts.attempts,
        pin_to: opts.pin_to.clone(),
    };
    let mut file = File::open(path).map_err(io(path))?;
    let size = file.metadata().map_err(io(path))?.len();
    let chunks = size.div_ceil(u64::from(opts.chunk_size));
    let key = match opts.protection {
        Protection::Plain => None,
        _ => Some(FileKey::generate()?),
    };
    let mut keys = vec![NodeId::ZERO; chunks as usize];
    let mut min_replicas = usize::MAX;
    let mut retries = 0u64;
    let mut done = 0u64;
    progress(0, size);
    let mut tasks: JoinSet<Result<StoredChunk, TransferError>> = JoinSet::new();
    let mut next = 0u64;
    let parallel = opts.parallel.max(1);
    loop {
        while next < chunks && tasks.len() < parallel {
            let len = (size - next * u64::from(opts.chunk_size)).min(u64::from(opts.chunk_size));
            let mut buf = vec![0u8; len as usize];
            file.read_exact(&mut buf).map_err(io(path))?;
            let value = match &key {
                Some(k) => seal_chunk(k, next, chunks, &buf),
                None => buf,
            };
            let (storer, i) = (storer.clone(), next);
            tasks.spawn(async move {
                let mut r = 0;
                let what = format!("chunk {i}");
                let (k, n) = storer.store(&what, value.into(), &mut r).await?;
                Ok(StoredChunk {
                    index: i,
                    len: len as usize,
                    key: k,
                    replicas: n,
                    retries: r,
                })
            });
            next += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let c = joined.map_err(|e| TransferError::Invalid(e.to_string()))??;
        keys[c.index as usize] = c.key;
        min_replicas = min_replicas.min(c.replicas);
        retries += c.retries;
        done += c.len as u64;
        progress(done, size);
    }
    let blobs = index_blobs(&keys, opts.max_value_len)?;
    let mut index = Vec::with_capacity(blobs.len());
    for (i, b) in blobs.into_iter().enumerate() {
        let what = format!("index blob {i}");
        let (k, n) = storer.store(&what, b.into(), &mut retries).await?;
        index.push(k);
        min_replicas = min_replicas.min(n);
    }
    let manifest = Manifest {
        size,
        chunk_size: opts.chunk_size,
        chunks,
        index,
        root: chunk_root(&keys),
        name: match key {
            Some(_) => None,
            None => path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
                .filter(|n| n.len() <= 255),
        },
        encryption: key.as_ref().map(|k| Encryption {
            key_check: k.check(),
        }),
    };
    let bytes = manifest.to_bytes();
    if bytes.len() > opts.max_value_len {
        return Err(TransferError::Invalid(format!(
            "the manifest is {} bytes, over the value limit of {} bytes: use larger chunks",
            bytes.len(),
            opts.max_value_len
        )));
    }
    let (file_key, n) = storer
        .store("the manifest", bytes.into(), &mut retries)
        .await?;
    min_replicas = min_replicas.min(n);
    let (capability, shares) = match (opts.protection, key) {
        (Protection::Shared { threshold, shares }, Some(k)) => {
            (None, split_key(&k, threshold, shares)?)
        }
        (_, Some(k)) => (
            Some(Capability {
                manifest: file_key,
                key: k,
            }),
            Vec::new(),
        ),
        _ => (None, Vec::new()),
    };
    Ok(PutReport {
        key: file_key,
        size,
        chunks,
        index_blobs: manifest.index.len(),
        min_replicas,
        retries,
        pinned: if opts.pin_to.is_some() {
            chunks as usize + manifest.index.len() + 1
        } else {
            0
        },
        capability,
        shares,
        elapsed: t0.elapsed(),
    })
}

/// Options of [`get_file`].
#[derive(Clone, Debug)]
pub struct GetOptions {
    /// Fetches in flight at once.
    pub parallel: usize,
    /// Fetches in flight to one holder.
    pub per_peer: usize,
    /// Most value bytes asked for in one fetch answer (size it to the transport).
    pub max_reply_bytes: usize,
    /// Holders tried for one chunk before a lookup is made for more.
    pub holders: usize,
    /// Most answer bytes expected in flight at once (at least one fetch always goes). Over a
    /// datagram transport keep it within the socket's receive buffer (the `kad` CLI uses 1 MiB
    /// over UDP): answers arriving faster than they are read are dropped by the kernel and
    /// cost a timeout each. Unlimited by default, for stream transports with flow control.
    pub max_in_flight_bytes: usize,
    /// The largest value one answer can bring over this node's transports (the `kad` CLI
    /// takes it from its largest message, e.g. 45,000 bytes over UDP alone). A file whose
    /// chunks are larger fails at once with [`TransferError::ChunkTooLarge`] instead of asking
    /// holders for answers that cannot reach it. Unlimited by default.
    pub max_value_len: usize,
}

impl Default for GetOptions {
    fn default() -> Self {
        Self {
            parallel: 16,
            per_peer: 2,
            max_reply_bytes: 40_000,
            holders: 20,
            max_in_flight_bytes: usize::MAX,
            max_value_len: usize::MAX,
        }
    }
}

/// What [`get_file`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct GetReport {
    /// The file's key.
    pub key: Key,
    /// Plaintext bytes written.
    pub size: u64,
    /// Data chunks.
    pub chunks: u64,
    /// Chunks already in the partial file from an earlier, interrupted run.
    pub resumed: u64,
    /// Fetch requests sent.
    pub fetches: u64,
    /// Values that failed verification (wrong hash or failed decryption), each fetched again
    /// elsewhere.
    pub bad_chunks: u64,
    /// Fetches that failed (timeouts, errors).
    pub failed_fetches: u64,
    /// Lookups made to find more holders.
    pub lookups: u64,
    /// Distinct holders that served chunks.
    pub holders_used: usize,
    /// The name the publisher gave the file, if any.
    pub name: Option<String>,
    /// Wall time (manifest included).
    pub elapsed: Duration,
}

/// Fetches and verifies the manifest under `key`.
pub async fn get_manifest(dht: &Dht, key: Key) -> Result<Manifest, TransferError> {
    let value = fetch_one(dht, key, "the manifest").await?;
    Manifest::from_bytes(&value).map_err(|_| TransferError::NotAFile(key))
}

/// One content-addressed record, verified: through a lookup (`get`) first. When that finds no
/// valid value, the nodes near the key are asked at once with `storage.FETCH`, those a second
/// lookup heard from and those it named without hearing from: a lookup stops waiting for slow
/// nodes outside the closest few (holders across a slow link), a fetch waits and resends on its
/// own schedule. A key no node holds costs two lookups and at most one fetch timeout.
pub async fn fetch_one(dht: &Dht, key: Key, what: &str) -> Result<Bytes, TransferError> {
    match dht.get(key).await {
        Ok(o) if content_key(&o.record.value) == key => return Ok(o.record.value),
        Ok(_) | Err(DhtError::Query(QueryError::NotFound)) => {}
        Err(e) => return Err(e.into()),
    }
    let near = dht.find_node(key).await?;
    let me = dht.id();
    let params = Bytes::from(
        serde_json::to_vec(&FetchParams {
            keys: vec![key],
            max_bytes: 0,
        })
        .unwrap_or_default(),
    );
    let mut calls = JoinSet::new();
    let mut seen = HashSet::new();
    for c in near.closest.into_iter().chain(near.unanswered) {
        if c.id == me || !seen.insert(c.id) {
            continue;
        }
        let (d, params) = (dht.clone(), params.clone());
        calls.spawn(async move { d.call(c, FETCH, params).await });
    }
    let asked = calls.len();
    while let Some(r) = calls.join_next().await {
        let Ok(Ok(b)) = r else { continue };
        let Ok(reply) = serde_json::from_slice::<FetchReply>(&b) else {
            continue;
        };
        if let Some((_, v)) = reply
            .values
            .into_iter()
            .find(|(k, v)| *k == key && content_key(v) == key)
        {
            calls.abort_all();
            return Ok(v);
        }
    }
    Err(TransferError::NotFound {
        what: what.to_owned(),
        key,
        asked,
    })
}

/// Where a chunk is in the download.
struct Pending {
    /// Holders to ask, nearest to the chunk's key first; tried ones removed.
    candidates: VecDeque<Contact>,
    /// Holders already asked.
    asked: HashSet<NodeId>,
    lookups: u32,
    in_flight: bool,
    /// Fetches of this key that timed out (asked of the same holder again, twice at most).
    timeouts: u32,
}

enum Done {
    Fetch(Contact, Vec<Key>, Result<Bytes, DhtError>),
    /// The nodes a lookup for more holders heard from, and those it named without hearing from.
    Lookup(u64, Result<(Vec<Contact>, Vec<Contact>), DhtError>),
    Get(u64, Result<Bytes, DhtError>),
}

/// Downloads the file under `key` into `out`, `opts.parallel` fetches at a time, verifying
/// every chunk against its content key (and decrypting with `file_key` when the file is
/// encrypted). The data goes to `out` + `.part` first: an interrupted download resumes from the
/// chunks already there that still verify. `progress(done, total)` gets plaintext bytes.
pub async fn get_file(
    dht: &Dht,
    key: Key,
    file_key: Option<&FileKey>,
    out: &Path,
    opts: &GetOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<GetReport, TransferError> {
    let t0 = Instant::now();
    let manifest = get_manifest(dht, key).await?;
    get_file_with(dht, key, &manifest, file_key, out, opts, progress, t0).await
}

/// [`get_file`] with the manifest already fetched (say, to check a key first).
#[allow(clippy::too_many_arguments)]
pub async fn get_file_with(
    dht: &Dht,
    key: Key,
    manifest: &Manifest,
    file_key: Option<&FileKey>,
    out: &Path,
    opts: &GetOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
    t0: Instant,
) -> Result<GetReport, TransferError> {
    match (&manifest.encryption, file_key) {
        (Some(_), None) => return Err(TransferError::KeyNeeded),
        (Some(e), Some(k)) if k.check() != e.key_check => return Err(BlobError::WrongKey.into()),
        _ => {}
    }
    let file_key = manifest.encryption.as_ref().and(file_key);
    let chunk_len = manifest.stored_len(0).unwrap_or(0);
    if chunk_len > opts.max_value_len {
        return Err(TransferError::ChunkTooLarge {
            chunk_len,
            limit: opts.max_value_len,
        });
    }
    // The index: every chunk key, in order, checked against the root.
    let mut keys = Vec::with_capacity(manifest.chunks as usize);
    let index = fetch_many(
        dht,
        &manifest.index,
        opts,
        "index blob",
        opts.max_reply_bytes,
        true,
        |_, _| Ok(()),
    )
    .await?;
    for blob in &index.values {
        keys.extend(parse_index_blob(blob)?);
    }
    if keys.len() as u64 != manifest.chunks || chunk_root(&keys) != manifest.root {
        return Err(BlobError::RootMismatch.into());
    }
    // The partial file: keep what verifies, fetch the rest.
    let part = {
        let mut p = out.as_os_str().to_owned();
        p.push(".part");
        PathBuf::from(p)
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .map_err(io(&part))?;
    let old_len = f.metadata().map_err(io(&part))?.len();
    let mut have = vec![false; keys.len()];
    let mut resumed = 0u64;
    let mut done = 0u64;
    if old_len > 0 {
        let mut buf = Vec::new();
        for i in 0..manifest.chunks {
            let len = manifest.plain_len(i)?;
            let at = i * u64::from(manifest.chunk_size);
            if at + len as u64 > old_len {
                break;
            }
            buf.resize(len, 0);
            f.seek(SeekFrom::Start(at)).map_err(io(&part))?;
            f.read_exact(&mut buf).map_err(io(&part))?;
            let stored = match file_key {
                Some(k) => content_key(&seal_chunk(k, i, manifest.chunks, &buf)),
                None => content_key(&buf),
            };
            if stored == keys[i as usize] {
                have[i as usize] = true;
                resumed += 1;
                done += len as u64;
            }
        }
    }
    f.set_len(manifest.size).map_err(io(&part))?;
    progress(done, manifest.size);
    let wanted: Vec<Key> = keys
        .iter()
        .zip(&have)
        .filter(|(_, h)| !**h)
        .map(|(k, _)| *k)
        .collect();
    let position: HashMap<Key, Vec<u64>> =
        keys.iter()
            .enumerate()
            .fold(HashMap::new(), |mut m, (i, k)| {
                if !have[i] {
                    m.entry(*k).or_default().push(i as u64);
                }
                m
            });
    let n = manifest.chunks;
    let value_len = manifest.stored_len(0).unwrap_or(1);
    let r = fetch_many(dht, &wanted, opts, "chunk", value_len, false, |k, value| {
        for &i in &position[&k] {
            let plain = match file_key {
                Some(fk) => open_chunk(fk, i, n, value)?,
                None => value.to_vec(),
            };
            if plain.len() != manifest.plain_len(i)? {
                return Err(BlobError::Decrypt { index: i }.into());
            }
            let at = i * u64::from(manifest.chunk_size);
            f.seek(SeekFrom::Start(at)).map_err(io(&part))?;
            f.write_all(&plain).map_err(io(&part))?;
            done += plain.len() as u64;
            progress(done, manifest.size);
        }
        Ok(())
    })
    .await?;
    f.sync_all().map_err(io(&part))?;
    drop(f);
    std::fs::rename(&part, out).map_err(io(out))?;
    Ok(GetReport {
        key,
        size: manifest.size,
        chunks: manifest.chunks,
        resumed,
        fetches: index.fetches + r.fetches,
        bad_chunks: index.bad + r.bad,
        failed_fetches: index.failed + r.failed,
        lookups: index.lookups + r.lookups,
        holders_used: r.holders.len().max(index.holders.len()),
        name: manifest.name.clone(),
        elapsed: t0.elapsed(),
    })
}

/// What [`fetch_many`] brought back.
struct Fetched {
    /// Values in the order of the keys asked (only when asked to keep them).
    values: Vec<Bytes>,
    fetches: u64,
    bad: u64,
    failed: u64,
    lookups: u64,
    holders: HashSet<NodeId>,
}

/// The download plan of [`fetch_many`]: which holder each waiting key goes to next.
struct Plan {
    pending: HashMap<Key, Pending>,
    /// Keys waiting for a holder, per holder.
    queues: HashMap<NodeId, (Contact, VecDeque<Key>)>,
    /// Keys out of holders, waiting for a lookup.
    orphans: VecDeque<Key>,
    /// Failures per holder since it last served a value; three in a row and it is asked no
    /// more.
    bad_peer: HashMap<NodeId, u32>,
    /// Keys some holder has but said were too large for the transport: how many, and the last
    /// holder's words.
    too_large: HashMap<Key, (usize, String)>,
}

impl Plan {
    /// Files an idle key under its next holder (or as an orphan).
    fn route(&mut self, k: Key) {
        let Some(p) = self.pending.get_mut(&k) else {
            return;
        };
        p.in_flight = false;
        while let Some(c) = p.candidates.front() {
            if self.bad_peer.get(&c.id).copied().unwrap_or(0) < 3 && !p.asked.contains(&c.id) {
                break;
            }
            p.candidates.pop_front();
        }
        match p.candidates.front() {
            Some(c) => self
                .queues
                .entry(c.id)
                .or_insert_with(|| (c.clone(), VecDeque::new()))
                .1
                .push_back(k),
            None => self.orphans.push_back(k),
        }
    }

    /// Records that `peer` did not give `k` (missing, bad, or failed).
    fn miss(&mut self, k: Key, peer: NodeId) {
        if let Some(p) = self.pending.get_mut(&k) {
            p.asked.insert(peer);
        }
        self.route(k);
    }
}

/// Fetches every key in `keys` (content-addressed), verifying each value: from the nearest
/// holders the local table knows, in batches per holder (`value_len` is the expected size of a
/// value, to fill each answer), `opts.parallel` fetches at a time and `opts.per_peer` per
/// holder. A missing or bad value is asked of the next holder; a key out of holders gets a
/// lookup for more (the nodes it heard from, then those it named without hearing from), then
/// a last `get` through the whole network. `sink(key, value)` takes each
/// verified value once; a decryption failure it returns marks the value bad instead.
async fn fetch_many(
    dht: &Dht,
    keys: &[Key],
    opts: &GetOptions,
    what: &str,
    value_len: usize,
    keep: bool,
    mut sink: impl FnMut(Key, &Bytes) -> Result<(), TransferError>,
) -> Result<Fetched, TransferError> {
    let mut out = Fetched {
        values: Vec::new(),
        fetches: 0,
        bad: 0,
        failed: 0,
        lookups: 0,
        holders: HashSet::new(),
    };
    let me = dht.id();
    let known: Vec<Contact> = dht
        .snapshot()
        .await?
        .contacts
        .into_iter()
        .filter(|c| c.id != me)
        .collect();
    let mut plan = Plan {
        pending: HashMap::new(),
        queues: HashMap::new(),
        orphans: VecDeque::new(),
        bad_peer: HashMap::new(),
        too_large: HashMap::new(),
    };
    let mut order = Vec::new();
    for k in keys {
        if plan.pending.contains_key(k) {
            continue;
        }
        let mut c = known.clone();
        c.sort_by_key(|c| c.id.distance(k));
        c.truncate(opts.holders.max(1));
        plan.pending.insert(
            *k,
            Pending {
                candidates: c.into(),
                asked: HashSet::new(),
                lookups: 0,
                in_flight: false,
                timeouts: 0,
            },
        );
        order.push(*k);
    }
    let index_of: HashMap<Key, usize> = order.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    for k in &order {
        plan.route(*k);
    }
    let mut got: HashMap<Key, Bytes> = HashMap::new();
    let mut busy: HashMap<NodeId, usize> = HashMap::new();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let parallel = opts.parallel.max(1);
    let max_reply = opts.max_reply_bytes.max(1);
    let mut per_batch = (max_reply / value_len.max(1)).clamp(1, crate::plugin::MAX_FETCH_KEYS);
    // Answer bytes a fetch of `n` keys may bring.
    let expect = |n: usize| (n * value_len.max(1)).min(max_reply);
    let mut in_flight_bytes = 0usize;
    while !plan.pending.is_empty() {
        // Orphans: a lookup for more holders, then one `get` through the network, then give up.
        while tasks.len() < parallel * 2 {
            let Some(k) = plan.orphans.pop_front() else {
                break;
            };
            let Some(p) = plan.pending.get_mut(&k) else {
                continue;
            };
            p.in_flight = true;
            p.lookups += 1;
            let d = dht.clone();
            let i = index_of[&k] as u64;
            match p.lookups {
                1 => {
                    out.lookups += 1;
                    tasks.spawn(async move {
                        Done::Lookup(i, d.find_node(k).await.map(|o| (o.closest, o.unanswered)))
                    });
                }
                2 => {
                    out.lookups += 1;
                    tasks
                        .spawn(async move { Done::Get(i, d.get(k).await.map(|o| o.record.value)) });
                }
                _ => {
                    let what = format!("{what} {i}");
                    if let Some((holders, detail)) = plan.too_large.remove(&k) {
                        return Err(TransferError::AnswerTooLarge {
                            what,
                            key: k,
                            holders,
                            asked: p.asked.len(),
                            detail,
                        });
                    }
                    tracing::debug!(
                        key = %k,
                        asked = ?p.asked,
                        bad = ?plan.bad_peer,
                        "out of holders"
                    );
                    return Err(TransferError::NotFound {
                        what,
                        key: k,
                        asked: p.asked.len(),
                    });
                }
            }
        }
        // Fetches: the holders with the most waiting keys first.
        let mut peers: Vec<(usize, NodeId)> = plan
            .queues
            .iter()
            .filter(|(id, (_, q))| {
                !q.is_empty() && busy.get(*id).copied().unwrap_or(0) < opts.per_peer.max(1)
            })
            .map(|(id, (_, q))| (q.len(), *id))
            .collect();
        peers.sort_unstable_by(|a, b| b.cmp(a));
        'peers: for (_, id) in peers {
            while tasks.len() < parallel
                && busy.get(&id).copied().unwrap_or(0) < opts.per_peer.max(1)
            {
                let Some((c, q)) = plan.queues.get_mut(&id) else {
                    break;
                };
                if q.is_empty() {
                    break;
                }
                let n = per_batch.min(q.len());
                if in_flight_bytes > 0
                    && in_flight_bytes.saturating_add(expect(n)) > opts.max_in_flight_bytes
                {
                    break 'peers;
                }
                in_flight_bytes += expect(n);
                let batch: Vec<Key> = q.drain(..n).collect();
                let c = c.clone();
                for k in &batch {
                    if let Some(p) = plan.pending.get_mut(k) {
                        p.in_flight = true;
                    }
                }
                *busy.entry(id).or_default() += 1;
                let params = FetchParams {
                    keys: batch.clone(),
                    max_bytes: max_reply,
                };
                let params = Bytes::from(serde_json::to_vec(&params).unwrap_or_default());
                let d = dht.clone();
                out.fetches += 1;
                tracing::debug!(holder = %c.id, keys = batch.len(), "fetching");
                tasks.spawn(async move {
                    let r = d.call(c.clone(), FETCH, params).await;
                    Done::Fetch(c, batch, r)
                });
            }
            if tasks.len() >= parallel {
                break;
            }
        }
        let Some(joined) = tasks.join_next().await else {
            continue; // only orphans left, and they were just launched or failed above
        };
        match joined.map_err(|e| TransferError::Invalid(format!("a fetch task failed: {e}")))? {
            Done::Fetch(c, asked, r) => {
                if let Some(b) = busy.get_mut(&c.id) {
                    *b = b.saturating_sub(1);
                }
                in_flight_bytes = in_flight_bytes.saturating_sub(expect(asked.len()));
                if let Err(DhtError::Query(QueryError::Remote(e))) = &r {
                    if e.code == kad_core::RpcError::TOO_LARGE {
                        if asked.len() > 1 {
                            // Several values overflow one message of the way back: fewer per
                            // fetch from now on, and these keys asked again, as they were.
                            per_batch = (asked.len() / 2).max(1);
                            for k in asked {
                                plan.route(k);
                            }
                            continue;
                        }
                        // One value alone is too large for the transport between us.
                        for k in &asked {
                            let t = plan.too_large.entry(*k).or_default();
                            t.0 += 1;
                            t.1.clone_from(&e.message);
                        }
                    }
                }
                let error_answer = matches!(r, Err(DhtError::Query(QueryError::Remote(_))));
                let reply = r.map_err(|e| e.to_string()).and_then(|b| {
                    serde_json::from_slice::<FetchReply>(&b).map_err(|e| e.to_string())
                });
                let reply = match reply {
                    Ok(reply) => Ok(reply),
                    Err(e) => {
                        tracing::debug!(
                            holder = %c.id,
                            addr = ?c.addrs.first(),
                            keys = asked.len(),
                            error = %e,
                            "a fetch failed"
                        );
                        Err(())
                    }
                };
                let Ok(reply) = reply else {
                    out.failed += 1;
                    let failures = plan.bad_peer.entry(c.id).or_default();
                    *failures += 1;
                    // A lost answer (a timeout) is asked of the same holder again, until it
                    // fails three times in a row; an error answer moves on at once.
                    let again = *failures < 3 && !error_answer;
                    for k in asked {
                        // At most two timeouts per key before it moves on to another holder.
                        let retry = again
                            && plan.pending.get_mut(&k).is_some_and(|p| {
                                p.timeouts += 1;
                                p.timeouts <= 2
                            });
                        if retry {
                            plan.route(k);
                        } else {
                            plan.miss(k, c.id);
                        }
                    }
                    continue;
                };
                tracing::debug!(
                    holder = %c.id,
                    keys = asked.len(),
                    values = reply.values.len(),
                    missing = reply.missing.len(),
                    "fetched"
                );
                let asked_set: HashSet<Key> = asked.iter().copied().collect();
                let mut settled = HashSet::new();
                for (k, v) in reply.values {
                    if !asked_set.contains(&k) || !settled.insert(k) {
                        continue; // not asked, or sent twice
                    }
                    let ok = content_key(&v) == k
                        && match sink(k, &v) {
                            Ok(()) => true,
                            Err(TransferError::Blob(BlobError::Decrypt { .. })) => false,
                            Err(e) => return Err(e),
                        };
                    if ok {
                        plan.bad_peer.remove(&c.id); // failures count in a row
                        out.holders.insert(c.id);
                        plan.pending.remove(&k);
                        if keep {
                            got.insert(k, v);
                        }
                    } else {
                        out.bad += 1;
                        *plan.bad_peer.entry(c.id).or_default() += 1;
                        plan.miss(k, c.id);
                    }
                }
                for k in reply.missing {
                    if asked_set.contains(&k) && settled.insert(k) {
                        plan.miss(k, c.id);
                    }
                }
                // Keys left out for size go back to the same holder, after an answer that
                // brought or denied something. One that settles nothing is a failure: a holder
                // answering empty would otherwise be asked forever.
                let progressed = !settled.is_empty();
                if !progressed {
                    out.failed += 1;
                    *plan.bad_peer.entry(c.id).or_default() += 1;
                }
                for k in asked {
                    if !settled.contains(&k) {
                        if progressed {
                            plan.route(k);
                        } else {
                            plan.miss(k, c.id);
                        }
                    }
                }
            }
            Done::Lookup(i, r) => {
                let k = order[i as usize];
                tracing::debug!(
                    key = %k,
                    answered = ?r.as_ref().map(|(c, _)| c.iter().map(|c| c.id).collect::<Vec<_>>()),
                    unanswered = ?r.as_ref().map(|(_, c)| c.iter().map(|c| c.id).collect::<Vec<_>>()),
                    "a lookup for more holders"
                );
                if let (Some(p), Ok((answered, unanswered))) = (plan.pending.get_mut(&k), r) {
                    for c in answered {
                        if c.id != me && !p.asked.contains(&c.id) {
                            // A holder whose fetches failed three times in a row (lost answers
                            // on a lossy link, say) but that answered this lookup is alive: one
                            // more chance, rather than the key failing with holders unasked.
                            if let Some(f) = plan.bad_peer.get_mut(&c.id) {
                                *f = (*f).min(2);
                            }
                            p.candidates.push_back(c);
                        }
                    }
                    // Nodes the lookup named but did not hear from: it stops waiting for silent
                    // candidates outside the closest few after a round trip measured mostly on
                    // nearer peers, and a holder across a slow link (or behind a connection
                    // handshake) answers a fetch, which waits longer. Those that failed fetches
                    // before get no second chance: they may be gone.
                    for c in unanswered {
                        if c.id != me && !p.asked.contains(&c.id) {
                            p.candidates.push_back(c);
                        }
                    }
                }
                plan.route(k);
            }
            Done::Get(i, r) => {
                let k = order[i as usize];
                match r {
                    Ok(v) if content_key(&v) == k => match sink(k, &v) {
                        Ok(()) => {
                            plan.pending.remove(&k);
                            if keep {
                                got.insert(k, v);
                            }
                        }
                        Err(TransferError::Blob(BlobError::Decrypt { .. })) => {
                            out.bad += 1;
                            plan.route(k);
                        }
                        Err(e) => return Err(e),
                    },
                    r => {
                        tracing::debug!(key = %k, ok = r.is_ok(), "a get for the last holders failed");
                        plan.route(k)
                    }
                }
            }
        }
    }
    if keep {
        out.values = keys.iter().filter_map(|k| got.get(k).cloned()).collect();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_chunks_fill_a_message_and_leave_room_for_the_tag() {
        let quic = 1 << 20;
        assert_eq!(default_chunk_size(quic, Protection::Plain), 756 * 1024);
        assert_eq!(default_chunk_size(quic, Protection::Encrypted), 755 * 1024);
        assert!(
            default_chunk_size(quic, Protection::Encrypted) as usize + crate::TAG_LEN
                <= kad_core::max_native_value_for(quic)
        );
        // UDP chunks sit well under the datagram's value limit, tag or not.
        assert_eq!(default_chunk_size(65_507, Protection::Plain), 35 * 1024);
        assert_eq!(default_chunk_size(65_507, Protection::Encrypted), 35 * 1024);
    }
}
