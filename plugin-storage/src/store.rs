//! The persistent record store: [`RedbStore`] keeps records in a [redb] database file, and
//! [`RoutingFile`] keeps the routing table's contacts in the same file for warm restarts.
//!
//! Every change is committed with [`Durability::Immediate`] (an fsync) before the call returns,
//! so a record whose STORE was acknowledged survives a crash or `kill -9`. Only the bookkeeping
//! of the records (a [`QuotaIndex`]: key, size, publisher, expiry; about a hundred bytes a
//! record) lives in memory; values are read from disk on [`RecordStore::get`]. The quotas and
//! the eviction order are exactly those of [`kad_core::MemoryStore`], which uses the same index.
//!
//! # File layout
//!
//! One redb database with four tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | `u32`: `"format_version"` = 1 |
//! | `records` | the record key, `[u8; 20]` | a record, encoded as below |
//! | `own` | the record key, `[u8; 20]` | a record the node publishes itself ([`RecordStore::keep_own`]), encoded as below |
//! | `routing` | `u32`, the position in the saved list | a contact as JSON: `{"id": "<40 hex digits>", "addrs": ["udp://…", …]}` |
//!
//! A record value is, in order (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | encoding version, 1 |
//! | 1 | 1 if the record names a publisher, else 0 |
//! | 20 | the publisher id (all zeros when there is none) |
//! | 8 | `published_at_ms` (u64) |
//! | 8 | `expires_at_ms` (u64) |
//! | 8 | `stored_at_ms` (u64) |
//! | rest | the value bytes |
//!
//! The key is not repeated: it is the table key. Decoding checks every bound, the version and
//! the publisher flag; an entry that fails is dropped (and counted) when the store opens.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use kad_core::{
    Contact, ID_LEN, Key, NodeId, OwnEntry, PeerAddr, QuotaIndex, Record, RecordStore, StoreError,
    StoreLimits,
};
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

/// Records, by key.
const RECORDS: TableDefinition<'static, &[u8; ID_LEN], &[u8]> = TableDefinition::new("records");
/// Format metadata.
const META: TableDefinition<'static, &str, u32> = TableDefinition::new("meta");
/// The node's own records (published or adopted: republished), by key.
const OWN: TableDefinition<'static, &[u8; ID_LEN], &[u8]> = TableDefinition::new("own");
/// Saved routing-table contacts, by position.
const ROUTING: TableDefinition<'static, u32, &[u8]> = TableDefinition::new("routing");

/// The `meta` key holding the file's format version.
const FORMAT_VERSION_KEY: &str = "format_version";
/// The file format this code reads and writes.
const FORMAT_VERSION: u32 = 1;
/// The encoding version byte of a record value.
const RECORD_VERSION: u8 = 1;
/// Length of an encoded record before its value bytes.
const RECORD_HEADER_LEN: usize = 1 + 1 + ID_LEN + 8 + 8 + 8;
/// redb's page cache used by [`RedbStore::open`].
const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Most contacts [`RoutingFile`] saves and loads.
const MAX_ROUTING_CONTACTS: usize = 10_000;

/// What [`RedbStore::open`] found in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpenStats {
    /// Records held once the store was open (after dropping the expired, evicted and corrupt).
    pub loaded: usize,
    /// Records already expired at open, deleted.
    pub expired: usize,
    /// Records evicted at open because they exceeded the limits (the quota shrank since the
    /// file was written), farthest from the local id first.
    pub evicted: usize,
    /// Entries that did not decode, deleted.
    pub corrupt: usize,
    /// Own records found (the node's published and adopted records, republished).
    pub own: usize,
}

/// A persistent [`RecordStore`] on redb: every put/remove is committed (fsync, redb
/// [`Durability::Immediate`]) before it returns, so an acknowledged STORE survives `kill -9`.
///
/// The quotas ([`StoreLimits`]) are enforced by a [`QuotaIndex`] kept in memory, exactly as
/// [`kad_core::MemoryStore`] enforces them; the values stay on disk.
///
/// A backend failure in [`RecordStore::put`] is returned as [`StoreError::Backend`]. The other
/// trait methods cannot return errors: a failing `get` answers `None`, a failing `remove` or
/// `remove_expired` leaves the records in place; each logs a warning and counts in
/// [`RedbStore::backend_errors`].
///
/// ```no_run
/// use kad_core::{NodeId, Record, RecordStore, StoreLimits};
/// use kad_plugin_storage::RedbStore;
///
/// # fn main() -> Result<(), kad_core::StoreError> {
/// let now_ms = 1_700_000_000_000; // callers pass wall-clock milliseconds
/// let local = NodeId::from_bytes([1; 20]);
/// let mut store = RedbStore::open("records.redb".as_ref(), local, StoreLimits::default(), now_ms)?;
/// store.put(Record::new(NodeId::from_bytes([2; 20]), "hello", None, now_ms, 3_600_000))?;
/// // Saved routing contacts make the next start a warm one.
/// let contacts = store.routing().load()?;
/// # let _ = contacts;
/// # Ok(())
/// # }
/// ```
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    index: QuotaIndex,
    own: BTreeMap<Key, OwnEntry>,
    stats: OpenStats,
    backend_errors: AtomicU64,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("records", &self.index.len())
            .field("bytes", &self.index.bytes())
            .field("open_stats", &self.stats)
            .field("backend_errors", &self.backend_errors())
            .finish()
    }
}

impl RedbStore {
    /// Opens or creates the database file at `path` for node `local`.
    ///
    /// Rebuilds the in-memory [`QuotaIndex`] by scanning the records table (values are not kept
    /// in memory: memory is O(records) times about 100 bytes). Records already expired at
    /// `now_ms` (wall-clock milliseconds since the Unix epoch, passed in by the caller) are
    /// deleted. If the records exceed `limits` (the quota shrank since the last run), the ones
    /// farthest from `local` are evicted until the record and byte limits hold, then each
    /// publisher over its share loses its farthest records until it fits; this happens
    /// whatever the [`Eviction`](kad_core::Eviction) policy, since the quota must hold. Entries
    /// that do not decode are deleted and counted, never a panic. See [`RedbStore::open_stats`].
    ///
    /// redb's page cache is 64 MiB; see [`RedbStore::open_with_cache`].
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the file cannot be opened or created, is not a redb
    /// database, was written by a newer version of this crate (an unknown format version), or
    /// is already open (by another process, or by this one).
    pub fn open(
        path: &Path,
        local: NodeId,
        limits: StoreLimits,
        now_ms: u64,
    ) -> Result<Self, StoreError> {
        Self::open_with_cache(path, local, limits, now_ms, DEFAULT_CACHE_BYTES)
    }

    /// Same as [`RedbStore::open`], with redb's page cache limited to `cache_bytes`.
    ///
    /// # Errors
    /// As [`RedbStore::open`].
    pub fn open_with_cache(
        path: &Path,
        local: NodeId,
        limits: StoreLimits,
        now_ms: u64,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| open_error(path, e))?;
        let mut index = QuotaIndex::new(local, limits);
        let mut own = BTreeMap::new();
        let stats = load(&db, path, &mut index, &mut own, now_ms)?;
        if stats.corrupt > 0 {
            tracing::warn!(
                path = %path.display(),
                corrupt = stats.corrupt,
                "record store: dropped entries that did not decode"
            );
        }
        tracing::debug!(path = %path.display(), ?stats, "record store opened");
        Ok(Self {
            db: Arc::new(db),
            path: path.to_owned(),
            index,
            own,
            stats,
            backend_errors: AtomicU64::new(0),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening found: records loaded, expired, evicted and corrupt entries dropped.
    pub fn open_stats(&self) -> OpenStats {
        self.stats
    }

    /// Backend failures (I/O errors, entries that no longer decode) since the store was opened.
    pub fn backend_errors(&self) -> u64 {
        self.backend_errors.load(Ordering::Relaxed)
    }

    /// A handle on the same database for saving and loading the routing table (warm restarts).
    pub fn routing(&self) -> RoutingFile {
        RoutingFile {
            db: Arc::clone(&self.db),
        }
    }

    /// Counts and logs a backend failure of `op`; returns its message.
    fn failed(&self, op: &str, e: impl fmt::Display) -> String {
        self.backend_errors.fetch_add(1, Ordering::Relaxed);
        let msg = format!("store {}: {op}: {e}", self.path.display());
        tracing::warn!("{msg}");
        msg
    }

    /// Reads and decodes the record under `key` in `table`.
    fn read_from(
        &self,
        table: TableDefinition<'static, &[u8; ID_LEN], &[u8]>,
        key: &Key,
    ) -> Result<Option<Record>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(table).map_err(|e| e.to_string())?;
        let Some(guard) = table.get(&key.0).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        decode_record(&key.0, guard.value())
            .map(Some)
            .map_err(|why| format!("record {key} does not decode: {why}"))
    }

    /// Deletes `keys` and writes `record` (if any) in one committed transaction; returns the
    /// deleted records that still decoded, in the order of `keys`.
    fn write(&self, keys: &[Key], record: Option<&Record>) -> Result<Vec<Record>, redb::Error> {
        let txn = begin_write(&self.db)?;
        let mut removed = Vec::with_capacity(keys.len());
        {
            let mut table = txn.open_table(RECORDS)?;
            for key in keys {
                if let Some(old) = table.remove(&key.0)? {
                    match decode_record(&key.0, old.value()) {
                        Ok(r) => removed.push(r),
                        Err(why) => {
                            tracing::warn!(%key, why, "record store: deleted an undecodable record");
                        }
                    }
                }
            }
            if let Some(r) = record {
                table.insert(&r.key.0, encode_record(r).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(removed)
    }
}

impl RecordStore for RedbStore {
    fn get(&self, key: &Key) -> Option<Record> {
        // The index is authoritative: no disk read for keys not held.
        self.index.get(key)?;
        match self.read_from(RECORDS, key) {
            Ok(r) => r,
            Err(e) => {
                self.failed("get", e);
                None
            }
        }
    }

    fn put(&mut self, record: Record) -> Result<Vec<Record>, StoreError> {
        let victims = self.index.plan(&record)?;
        let evicted = self
            .write(&victims, Some(&record))
            .map_err(|e| StoreError::Backend(self.failed("put", e)))?;
        for key in &victims {
            self.index.remove(key);
        }
        self.index.insert(&record);
        Ok(evicted)
    }

    fn remove(&mut self, key: &Key) -> Option<Record> {
        self.index.get(key)?;
        match self.write(&[*key], None) {
            Ok(mut removed) => {
                self.index.remove(key);
                removed.pop()
            }
            Err(e) => {
                self.failed("remove", e);
                None
            }
        }
    }

    fn remove_expired(&mut self, now_ms: u64) -> usize {
        let expired = self.index.expired(now_ms);
        if expired.is_empty() {
            return 0;
        }
        match self.write(&expired, None) {
            Ok(_) => {
                for key in &expired {
                    self.index.remove(key);
                }
                expired.len()
            }
            Err(e) => {
                self.failed("remove expired", e);
                0
            }
        }
    }

    fn keys(&self) -> Vec<Key> {
        self.index.keys()
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn size_bytes(&self) -> usize {
        self.index.bytes()
    }

    fn keep_own(&mut self, record: &Record) -> Result<bool, StoreError> {
        let write = || -> Result<(), redb::Error> {
            let txn = begin_write(&self.db)?;
            txn.open_table(OWN)?
                .insert(&record.key.0, encode_record(record).as_slice())?;
            txn.commit()?;
            Ok(())
        };
        write().map_err(|e| StoreError::Backend(self.failed("keep own", e)))?;
        self.own.insert(record.key, OwnEntry::of(record));
        Ok(true)
    }

    fn own(&self, key: &Key) -> Option<Record> {
        self.own.get(key)?;
        match self.read_from(OWN, key) {
            Ok(r) => r,
            Err(e) => {
                self.failed("own", e);
                None
            }
        }
    }

    fn own_entries(&self) -> Vec<OwnEntry> {
        self.own.values().cloned().collect()
    }

    fn forget_own(&mut self, key: &Key) -> bool {
        if !self.own.contains_key(key) {
            return false;
        }
        let write = || -> Result<(), redb::Error> {
            let txn = begin_write(&self.db)?;
            txn.open_table(OWN)?.remove(&key.0)?;
            txn.commit()?;
            Ok(())
        };
        match write() {
            Ok(()) => {
                self.own.remove(key);
                true
            }
            Err(e) => {
                self.failed("forget own", e);
                false
            }
        }
    }
}

/// The saved routing table, in the same database file as a [`RedbStore`] (from
/// [`RedbStore::routing`]). Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct RoutingFile {
    db: Arc<Database>,
}

impl fmt::Debug for RoutingFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutingFile").finish_non_exhaustive()
    }
}

/// A contact as saved in the `routing` table.
#[derive(Serialize, Deserialize)]
struct SavedContact {
    id: String,
    addrs: Vec<String>,
}

impl RoutingFile {
    /// Replaces the saved contacts with `contacts` (the first 10,000 of them), in one committed
    /// write transaction: each is saved as its id plus its address URIs, in order.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the transaction fails; the previous set is then kept.
    pub fn save(&self, contacts: &[Contact]) -> Result<(), StoreError> {
        let fail = |e: redb::Error| StoreError::Backend(format!("routing file: save: {e}"));
        let txn = begin_write(&self.db).map_err(fail)?;
        {
            let mut table = txn.open_table(ROUTING).map_err(|e| fail(e.into()))?;
            table.retain(|_, _| false).map_err(|e| fail(e.into()))?;
            for (pos, c) in (0u32..).zip(contacts.iter().take(MAX_ROUTING_CONTACTS)) {
                let saved = SavedContact {
                    id: c.id.to_hex(),
                    addrs: c.addrs.iter().map(ToString::to_string).collect(),
                };
                let json = serde_json::to_vec(&saved)
                    .map_err(|e| StoreError::Backend(format!("routing file: save: {e}")))?;
                table
                    .insert(pos, json.as_slice())
                    .map_err(|e| fail(e.into()))?;
            }
        }
        txn.commit().map_err(|e| fail(e.into()))
    }

    /// The saved contacts, in the order saved, at most 10,000. Entries that do not parse are
    /// skipped, as are addresses that do not parse and contacts left with no address.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the database cannot be read.
    pub fn load(&self) -> Result<Vec<Contact>, StoreError> {
        let fail = |e: redb::Error| StoreError::Backend(format!("routing file: load: {e}"));
        let txn = self.db.begin_read().map_err(|e| fail(e.into()))?;
        let table = match txn.open_table(ROUTING) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(fail(e.into())),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| fail(e.into()))? {
            if out.len() >= MAX_ROUTING_CONTACTS {
                break;
            }
            let (_, value) = entry.map_err(|e| fail(e.into()))?;
            match parse_contact(value.value()) {
                Some(c) => out.push(c),
                None => tracing::debug!("routing file: skipped an unparsable contact"),
            }
        }
        Ok(out)
    }
}

/// A saved contact, if its id and at least one address parse.
fn parse_contact(bytes: &[u8]) -> Option<Contact> {
    let saved: SavedContact = serde_json::from_slice(bytes).ok()?;
    let id = NodeId::from_hex(&saved.id).ok()?;
    let addrs: Vec<PeerAddr> = saved.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    (!addrs.is_empty()).then(|| Contact::with_addrs(id, addrs))
}

/// A write transaction that fsyncs on commit.
fn begin_write(db: &Database) -> Result<WriteTransaction, redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

/// The error for a database that cannot be opened.
fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    let p = path.display();
    StoreError::Backend(match e {
        DatabaseError::DatabaseAlreadyOpen => {
            format!("store {p} is in use by another process (or already open in this one)")
        }
        DatabaseError::UpgradeRequired(v) => {
            format!("store {p} is in redb file format {v}, which must be upgraded to be opened")
        }
        e => format!("cannot open store {p}: {e}"),
    })
}

/// Checks the format version, scans the records into `index` and deletes the expired, corrupt
/// and over-quota ones, all in one committed transaction.
fn load(
    db: &Database,
    path: &Path,
    index: &mut QuotaIndex,
    own: &mut BTreeMap<Key, OwnEntry>,
    now_ms: u64,
) -> Result<OpenStats, StoreError> {
    let fail = |e: redb::Error| StoreError::Backend(format!("store {}: open: {e}", path.display()));
    let mut stats = OpenStats::default();
    let txn = begin_write(db).map_err(fail)?;
    {
        let mut meta = txn.open_table(META).map_err(|e| fail(e.into()))?;
        let version = meta
            .get(FORMAT_VERSION_KEY)
            .map_err(|e| fail(e.into()))?
            .map(|v| v.value());
        match version {
            Some(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(StoreError::Backend(format!(
                    "store {} has format version {v}, but this version of kad-plugin-storage \
                     only reads version {FORMAT_VERSION}: it was written by a newer release",
                    path.display()
                )));
            }
            None => {
                meta.insert(FORMAT_VERSION_KEY, FORMAT_VERSION)
                    .map_err(|e| fail(e.into()))?;
            }
        }
    }
    {
        let mut table = txn.open_table(RECORDS).map_err(|e| fail(e.into()))?;
        let mut doomed: Vec<[u8; ID_LEN]> = Vec::new();
        for entry in table.iter().map_err(|e| fail(e.into()))? {
            let (k, v) = entry.map_err(|e| fail(e.into()))?;
            let key = *k.value();
            match decode_record(&key, v.value()) {
                Ok(r) if r.is_expired(now_ms) => {
                    stats.expired += 1;
                    doomed.push(key);
                }
                Ok(r) => index.insert(&r),
                Err(why) => {
                    tracing::debug!(key = %NodeId(key), why, "record store: corrupt entry");
                    stats.corrupt += 1;
                    doomed.push(key);
                }
            }
        }
        let evicted = shrink(index);
        stats.evicted = evicted.len();
        doomed.extend(evicted.iter().map(|k| k.0));
        for key in &doomed {
            table.remove(key).map_err(|e| fail(e.into()))?;
        }
    }
    {
        // Own records are republished with fresh times whatever their expiry: all are kept.
        let mut table = txn.open_table(OWN).map_err(|e| fail(e.into()))?;
        let mut doomed: Vec<[u8; ID_LEN]> = Vec::new();
        for entry in table.iter().map_err(|e| fail(e.into()))? {
            let (k, v) = entry.map_err(|e| fail(e.into()))?;
            let key = *k.value();
            match decode_record(&key, v.value()) {
                Ok(r) => {
                    own.insert(r.key, OwnEntry::of(&r));
                }
                Err(why) => {
                    tracing::debug!(key = %NodeId(key), why, "record store: corrupt own entry");
                    stats.corrupt += 1;
                    doomed.push(key);
                }
            }
        }
        for key in &doomed {
            table.remove(key).map_err(|e| fail(e.into()))?;
        }
    }
    stats.own = own.len();
    // Created now so that readers never find it missing.
    txn.open_table(ROUTING).map_err(|e| fail(e.into()))?;
    txn.commit().map_err(|e| fail(e.into()))?;
    stats.loaded = index.len();
    Ok(stats)
}

/// Removes from `index` what exceeds its limits: the farthest records until the record and
/// byte limits hold, then, for each publisher over its share, its farthest records. Returns
/// the keys removed.
fn shrink(index: &mut QuotaIndex) -> Vec<Key> {
    let limits = index.limits().clone();
    let mut evicted = Vec::new();
    let mut keys = index.keys(); // nearest first
    while index.len() > limits.max_records || index.bytes() > limits.max_bytes {
        let Some(key) = keys.pop() else { break };
        index.remove(&key);
        evicted.push(key);
    }
    for key in keys.iter().rev() {
        let over = index
            .get(key)
            .and_then(|e| e.publisher)
            .is_some_and(|p| index.publisher_bytes(&p) > limits.max_publisher_bytes);
        if over {
            index.remove(key);
            evicted.push(*key);
        }
    }
    evicted
}

/// Encodes `r` as documented in the module docs (the key is not included).
fn encode_record(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + r.value.len());
    out.push(RECORD_VERSION);
    out.push(u8::from(r.publisher.is_some()));
    out.extend_from_slice(&r.publisher.unwrap_or(NodeId::ZERO).0);
    out.extend_from_slice(&r.published_at_ms.to_le_bytes());
    out.extend_from_slice(&r.expires_at_ms.to_le_bytes());
    out.extend_from_slice(&r.stored_at_ms.to_le_bytes());
    out.extend_from_slice(&r.value);
    out
}

/// A bounds-checked reader over an encoded record.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or("shorter than a record header")?;
        self.0 = rest;
        Ok(*head)
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

/// Decodes a record stored under `key`; the error says why it does not decode.
fn decode_record(key: &[u8; ID_LEN], bytes: &[u8]) -> Result<Record, &'static str> {
    let mut r = Reader(bytes);
    let [version] = r.take::<1>()?;
    if version != RECORD_VERSION {
        return Err("unknown record encoding version");
    }
    let [flag] = r.take::<1>()?;
    let publisher = r.take::<ID_LEN>()?;
    let publisher = match flag {
        0 if publisher == [0; ID_LEN] => None,
        1 => Some(NodeId(publisher)),
        _ => return Err("invalid publisher field"),
    };
    let published_at_ms = r.u64()?;
    let expires_at_ms = r.u64()?;
    let stored_at_ms = r.u64()?;
    Ok(Record {
        key: NodeId(*key),
        value: Bytes::copy_from_slice(r.0),
        publisher,
        published_at_ms,
        expires_at_ms,
        stored_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kad_core::MemoryStore;
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn key(b: u8) -> Key {
        let mut k = [0u8; ID_LEN];
        k[0] = b;
        NodeId(k)
    }

    fn rec(k: Key, value: &[u8], publisher: Option<NodeId>, ttl_ms: u64) -> Record {
        let mut r = Record::new(k, value.to_vec(), publisher, NOW, ttl_ms);
        r.stored_at_ms = NOW + 7;
        r
    }

    fn key_set(s: &dyn RecordStore) -> BTreeSet<Key> {
        s.keys().into_iter().collect()
    }

    fn open(path: &Path, limits: StoreLimits, now_ms: u64) -> RedbStore {
        RedbStore::open(path, NodeId::ZERO, limits, now_ms).unwrap()
    }

    #[test]
    fn put_get_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("db"), StoreLimits::default(), NOW);
        assert!(s.is_empty());
        let value: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let a = rec(key(1), &value, Some(key(0xAA)), 60_000);
        let b = rec(key(2), b"", None, 1);
        assert_eq!(s.put(a.clone()).unwrap(), vec![]);
        assert_eq!(s.put(b.clone()).unwrap(), vec![]);
        assert_eq!(s.get(&key(1)), Some(a.clone()));
        assert_eq!(s.get(&key(2)), Some(b.clone()));
        assert_eq!(s.get(&key(3)), None);
        assert_eq!(s.len(), 2);
        assert_eq!(s.size_bytes(), a.size() + b.size());
        // Replacing keeps one record under the key.
        let a2 = rec(key(1), b"newer", Some(key(0xAB)), 90_000);
        s.put(a2.clone()).unwrap();
        assert_eq!(s.get(&key(1)), Some(a2.clone()));
        assert_eq!(s.len(), 2);
        assert_eq!(s.remove(&key(1)), Some(a2));
        assert_eq!(s.remove(&key(1)), None);
        assert_eq!(s.get(&key(1)), None);
        assert_eq!(s.keys(), vec![key(2)]);
        assert_eq!(s.size_bytes(), b.size());
        assert_eq!(s.backend_errors(), 0);
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let records: Vec<Record> = (1..=20u8)
            .map(|i| {
                rec(
                    key(i),
                    &vec![i; usize::from(i) * 10],
                    Some(key(0xF0)),
                    60_000,
                )
            })
            .collect();
        {
            let mut s = open(&path, StoreLimits::default(), NOW);
            for r in &records {
                s.put(r.clone()).unwrap();
            }
            assert_eq!(s.remove(&key(5)).map(|r| r.key), Some(key(5)));
            assert_eq!(s.path(), path);
        }
        let s = open(&path, StoreLimits::default(), NOW + 1);
        assert_eq!(
            s.open_stats(),
            OpenStats {
                loaded: 19,
                ..OpenStats::default()
            }
        );
        for r in &records {
            if r.key == key(5) {
                assert_eq!(s.get(&r.key), None);
            } else {
                assert_eq!(s.get(&r.key).as_ref(), Some(r));
            }
        }
        let expected: usize = records
            .iter()
            .filter(|r| r.key != key(5))
            .map(Record::size)
            .sum();
        assert_eq!(s.size_bytes(), expected);
        assert_eq!(s.len(), 19);
    }

    #[test]
    fn own_records_survive_reopen_apart_from_expiry_and_quotas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // A store of one record: the own records are not held to its quota.
        let tiny = StoreLimits::new(1, 1 << 20);
        let a = rec(key(1), b"pinned a", Some(key(0xC1)), 1_000);
        let b = rec(key(2), &[9; 5000], None, 60_000);
        let mut b2 = b.clone();
        b2.published_at_ms += 30_000;
        b2.expires_at_ms += 30_000;
        {
            let mut s = open(&path, tiny.clone(), NOW);
            assert!(s.keep_own(&a).unwrap());
            assert!(s.keep_own(&b).unwrap());
            s.put(rec(key(3), b"cached", None, 60_000)).unwrap();
            assert_eq!(s.own(&key(1)), Some(a.clone()));
            assert_eq!(s.get(&key(1)), None, "own records are apart from the cache");
            // Republished: new times replace the old.
            assert!(s.keep_own(&b2).unwrap());
            assert_eq!(s.own(&key(2)), Some(b2.clone()));
        }
        // Reopened long after `a` expired: every own record is still there.
        let mut s = open(&path, tiny.clone(), NOW + 100_000);
        assert_eq!(s.open_stats().own, 2);
        assert_eq!(s.open_stats().expired, 1, "the cached record expired");
        let mut entries = s.own_entries();
        entries.sort_by_key(|e| e.key);
        assert_eq!(entries, vec![OwnEntry::of(&a), OwnEntry::of(&b2)]);
        assert!(s.forget_own(&key(1)));
        assert!(!s.forget_own(&key(1)));
        assert_eq!(s.own(&key(1)), None);
        drop(s);
        let s = open(&path, tiny, NOW);
        assert_eq!(s.own_entries().len(), 1);
        assert_eq!(s.own(&key(2)).map(|r| r.value.len()), Some(5000));
        assert_eq!(s.backend_errors(), 0);
    }

    #[test]
    fn expiry_across_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let mut s = open(&path, StoreLimits::default(), NOW);
            s.put(rec(key(1), b"a", None, 100)).unwrap();
            s.put(rec(key(2), b"b", None, 200)).unwrap();
            s.put(rec(key(3), b"c", None, 300)).unwrap();
            s.put(rec(key(4), b"d", None, 400)).unwrap();
        }
        // Expiry is inclusive: expires_at_ms == now is expired.
        let mut s = open(&path, StoreLimits::default(), NOW + 200);
        assert_eq!(s.open_stats().expired, 2);
        assert_eq!(s.open_stats().loaded, 2);
        assert_eq!(key_set(&s), [key(3), key(4)].into());
        assert_eq!(s.remove_expired(NOW + 299), 0);
        assert_eq!(s.remove_expired(NOW + 300), 1);
        assert_eq!(s.keys(), vec![key(4)]);
        drop(s);
        // The deletion persisted (reopened at a time when key(3) would not have expired).
        let s = open(&path, StoreLimits::default(), NOW);
        assert_eq!(s.keys(), vec![key(4)]);
        assert_eq!(s.open_stats().expired, 0);
    }

    #[test]
    fn shrunk_limits_evict_farthest_first_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let mut s = open(&path, StoreLimits::new(100, 1 << 20), NOW);
            for b in [0x01, 0x02, 0x10, 0x80, 0xF0] {
                s.put(rec(key(b), &[b; 36], None, 60_000)).unwrap();
            }
        }
        // Every record accounts 100 bytes.
        let s = open(&path, StoreLimits::new(3, 1 << 20), NOW);
        assert_eq!(s.open_stats().evicted, 2);
        assert_eq!(s.keys(), vec![key(0x01), key(0x02), key(0x10)]);
        drop(s);
        let s = open(&path, StoreLimits::new(100, 250).publisher_bytes(250), NOW);
        assert_eq!(s.open_stats().evicted, 1);
        assert_eq!(s.keys(), vec![key(0x01), key(0x02)]);
        assert!(s.size_bytes() <= 250);
        drop(s);
        // The evictions persisted.
        let s = open(&path, StoreLimits::default(), NOW);
        assert_eq!(s.keys(), vec![key(0x01), key(0x02)]);
    }

    #[test]
    fn shrunk_publisher_share_evicts_only_that_publisher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (alice, bob) = (key(0xA1), key(0xB0));
        {
            let mut s = open(
                &path,
                StoreLimits::new(100, 10_000).publisher_bytes(1000),
                NOW,
            );
            for b in [0x01, 0x40, 0x90] {
                s.put(rec(key(b), &[0; 36], Some(alice), 60_000)).unwrap();
            }
            s.put(rec(key(0xF0), &[0; 36], Some(bob), 60_000)).unwrap();
        }
        let s = open(
            &path,
            StoreLimits::new(100, 10_000).publisher_bytes(200),
            NOW,
        );
        assert_eq!(s.open_stats().evicted, 1);
        assert_eq!(s.keys(), vec![key(0x01), key(0x40), key(0xF0)]);
    }

    #[test]
    fn corrupt_entries_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let good = rec(key(1), b"fine", Some(key(9)), 60_000);
        {
            let mut s = open(&path, StoreLimits::default(), NOW);
            s.put(good.clone()).unwrap();
            s.put(rec(key(2), b"also fine", None, 60_000)).unwrap();
        }
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(RECORDS).unwrap();
                t.insert(&key(3).0, b"xx".as_slice()).unwrap();
                let mut bad_version = encode_record(&rec(key(4), b"v", None, 60_000));
                bad_version[0] = 99;
                t.insert(&key(4).0, bad_version.as_slice()).unwrap();
                let mut bad_flag = encode_record(&rec(key(5), b"v", None, 60_000));
                bad_flag[1] = 7;
                t.insert(&key(5).0, bad_flag.as_slice()).unwrap();
                t.insert(&key(6).0, [].as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let s = open(&path, StoreLimits::default(), NOW);
        assert_eq!(
            s.open_stats(),
            OpenStats {
                loaded: 2,
                expired: 0,
                evicted: 0,
                corrupt: 4,
                own: 0,
            }
        );
        assert_eq!(s.get(&key(1)), Some(good));
        assert_eq!(s.get(&key(3)), None);
        drop(s);
        let s = open(&path, StoreLimits::default(), NOW);
        assert_eq!(
            s.open_stats().corrupt,
            0,
            "the corrupt entries were deleted"
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn newer_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(FORMAT_VERSION_KEY, 2)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&path, NodeId::ZERO, StoreLimits::default(), NOW).unwrap_err();
        let StoreError::Backend(msg) = err else {
            panic!("unexpected error {err:?}")
        };
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("format version 2"), "{msg}");
    }

    #[test]
    fn not_a_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, vec![0x55; 10_000]).unwrap();
        let err = RedbStore::open(&path, NodeId::ZERO, StoreLimits::default(), NOW).unwrap_err();
        assert!(matches!(err, StoreError::Backend(ref m) if m.contains("cannot open store")));
    }

    #[test]
    fn opening_twice_names_the_file_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _first = open(&path, StoreLimits::default(), NOW);
        let err = RedbStore::open(&path, NodeId::ZERO, StoreLimits::default(), NOW).unwrap_err();
        assert_eq!(
            err,
            StoreError::Backend(format!(
                "store {} is in use by another process (or already open in this one)",
                path.display()
            ))
        );
    }

    #[test]
    fn routing_file_round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = |b: u8, addrs: &[&str]| {
            Contact::with_addrs(
                NodeId([b; ID_LEN]),
                addrs.iter().map(|a| a.parse().unwrap()).collect(),
            )
        };
        let first = vec![
            c(1, &["udp://127.0.0.1:4000", "quic://127.0.0.1:4001"]),
            c(2, &["ws://localhost:4002/kad", "udp://[::1]:4003"]),
            c(3, &["mem://7"]),
        ];
        {
            let s = open(&path, StoreLimits::default(), NOW);
            let routing = s.routing();
            assert_eq!(routing.load().unwrap(), vec![]);
            routing.save(&first).unwrap();
            assert_eq!(routing.load().unwrap(), first);
        }
        let s = open(&path, StoreLimits::default(), NOW);
        let routing = s.routing();
        assert_eq!(routing.load().unwrap(), first, "kept across restarts");
        let second = vec![c(9, &["quic://10.0.0.1:5000"])];
        routing.save(&second).unwrap();
        assert_eq!(
            routing.load().unwrap(),
            second,
            "save replaces the previous set"
        );
        // Unparsable entries are skipped, unparsable addresses dropped.
        {
            let txn = routing.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(ROUTING).unwrap();
                t.insert(1, b"not json".as_slice()).unwrap();
                t.insert(2, br#"{"id":"zz","addrs":["udp://1.2.3.4:5"]}"#.as_slice())
                    .unwrap();
                let id = NodeId([4; ID_LEN]).to_hex();
                let json = format!(r#"{{"id":"{id}","addrs":["tcp://x","udp://1.2.3.4:5"]}}"#);
                t.insert(3, json.as_bytes()).unwrap();
                let json = format!(r#"{{"id":"{id}","addrs":["bogus"]}}"#);
                t.insert(4, json.as_bytes()).unwrap();
            }
            txn.commit().unwrap();
        }
        assert_eq!(
            routing.load().unwrap(),
            vec![second[0].clone(), c(4, &["udp://1.2.3.4:5"])]
        );
        routing.save(&[]).unwrap();
        assert_eq!(routing.load().unwrap(), vec![]);
    }

    #[test]
    fn store_is_send_and_static() {
        fn is_store<T: RecordStore>() {}
        fn is_send_sync<T: Send + Sync + 'static>() {}
        is_store::<RedbStore>();
        is_send_sync::<RoutingFile>();
    }

    /// One step of the model test: `(kind, fresh key, pick, publisher, value length)`.
    type Step = (u8, [u8; ID_LEN], usize, usize, usize);

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn quotas_match_memory_store(
            local in any::<[u8; ID_LEN]>(),
            steps in prop::collection::vec(
                (
                    0u8..10,
                    any::<[u8; ID_LEN]>(),
                    any::<usize>(),
                    0usize..4,
                    // Small values reach the record limit, large ones the byte limits.
                    prop_oneof![2 => 0usize..40, 1 => 0usize..700],
                ),
                1..60,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            let local = NodeId(local);
            let limits = StoreLimits::new(20, 4000).publisher_bytes(2000);
            let mut mem = MemoryStore::new(local, limits.clone());
            let mut disk = RedbStore::open(&path, local, limits.clone(), NOW).unwrap();
            let publishers = [None, Some(key(0xA0)), Some(key(0xB0)), Some(key(0xC0))];
            for (i, (kind, fresh, pick, publisher, len)) in steps.into_iter().enumerate() {
                let held = mem.keys();
                let existing = (!held.is_empty()).then(|| held[pick % held.len()]);
                let step: Step = (kind, fresh, pick, publisher, len);
                match (kind, existing) {
                    (0, Some(k)) => {
                        prop_assert_eq!(mem.remove(&k), disk.remove(&k), "{:?}", step);
                    }
                    _ => {
                        let k = match (kind, existing) {
                            (1..=3, Some(k)) => k,
                            _ => NodeId(fresh),
                        };
                        let mut r = Record::new(
                            k,
                            vec![u8::try_from(i % 256).unwrap(); len],
                            publishers[publisher],
                            NOW,
                            1_000_000,
                        );
                        r.stored_at_ms = NOW + i as u64;
                        prop_assert_eq!(mem.put(r.clone()), disk.put(r), "{:?}", step);
                    }
                }
                prop_assert_eq!(key_set(&mem), key_set(&disk));
                prop_assert_eq!(mem.size_bytes(), disk.size_bytes());
                prop_assert_eq!(mem.len(), disk.len());
            }
            for k in mem.keys() {
                prop_assert_eq!(mem.get(&k), disk.get(&k));
            }
            prop_assert_eq!(disk.backend_errors(), 0);
            drop(disk);
            let disk = RedbStore::open(&path, local, limits, NOW).unwrap();
            prop_assert_eq!(key_set(&mem), key_set(&disk));
            prop_assert_eq!(mem.size_bytes(), disk.size_bytes());
            prop_assert_eq!(disk.open_stats().loaded, mem.len());
            prop_assert_eq!(disk.open_stats().evicted, 0);
        }

        #[test]
        fn decode_never_panics(key in any::<[u8; ID_LEN]>(), bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_record(&key, &bytes);
        }

        #[test]
        fn encode_decode_round_trip(
            key in any::<[u8; ID_LEN]>(),
            publisher in prop::option::of(any::<[u8; ID_LEN]>()),
            times in any::<(u64, u64, u64)>(),
            value in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let r = Record {
                key: NodeId(key),
                value: value.into(),
                publisher: publisher.map(NodeId),
                published_at_ms: times.0,
                expires_at_ms: times.1,
                stored_at_ms: times.2,
            };
            let bytes = encode_record(&r);
            prop_assert_eq!(bytes.len(), RECORD_HEADER_LEN + r.value.len());
            prop_assert_eq!(decode_record(&key, &bytes), Ok(r));
            for cut in 0..RECORD_HEADER_LEN {
                prop_assert!(decode_record(&key, &bytes[..cut]).is_err());
            }
        }
    }
}
