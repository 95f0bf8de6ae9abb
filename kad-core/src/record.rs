//! Records, the `RecordStore` hook with its in-memory implementation, and the `RecordValidator` hook.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::{Distance, Key, NodeId};

/// A value stored in the DHT under a 160-bit key.
///
/// Times are wall-clock milliseconds since the Unix epoch, so they survive restarts and can be
/// serialised. `published_at_ms` is set once by the original publisher and kept by every
/// re-replication; expiry is counted from it, so re-replication never makes a record immortal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The key.
    pub key: Key,
    /// The value.
    pub value: Bytes,
    /// The node that published it originally, when known.
    pub publisher: Option<NodeId>,
    /// When the original publisher published (or last republished) it.
    pub published_at_ms: u64,
    /// When it expires; a storing node may shorten this to its own maximum TTL.
    pub expires_at_ms: u64,
    /// When this node stored it (local bookkeeping; 0 on the wire).
    #[serde(default)]
    pub stored_at_ms: u64,
}

impl Record {
    /// A record published now (`now_ms`) that lives for `ttl_ms`.
    pub fn new(
        key: Key,
        value: impl Into<Bytes>,
        publisher: Option<NodeId>,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Self {
        Self {
            key,
            value: value.into(),
            publisher,
            published_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            stored_at_ms: 0,
        }
    }

    /// Whether the record has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms <= now_ms
    }

    /// Bytes this record accounts for in a store's quota.
    pub fn size(&self) -> usize {
        self.value.len() + 64
    }
}

/// Why a store refused a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store is at its quota and the record may not evict anything.
    #[error("store full: {what} limit of {limit} reached")]
    Full {
        /// Which limit (`records` or `bytes`).
        what: &'static str,
        /// Its value.
        limit: usize,
    },
    /// The record alone is larger than the store allows.
    #[error("record of {len} bytes exceeds the store's limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A backend failure (I/O, corruption) of a persistent store.
    #[error("store backend: {0}")]
    Backend(String),
}

/// Keeps records. Synchronous: the engine calls it inline, so implementations must be quick
/// (a persistent store commits before returning, which is what makes an acknowledgement durable).
///
/// Contract: the store never grows past its quota. A full store either evicts by its policy or
/// returns [`StoreError::Full`]; it never blocks.
pub trait RecordStore: Send + 'static {
    /// The record under `key`, if held and not removed.
    fn get(&self, key: &Key) -> Option<Record>;
    /// Keeps `record`, replacing any record under the same key. Returns the records evicted to
    /// make room.
    fn put(&mut self, record: Record) -> Result<Vec<Record>, StoreError>;
    /// Removes and returns the record under `key`.
    fn remove(&mut self, key: &Key) -> Option<Record>;
    /// Removes every record expired at `now_ms`; returns how many.
    fn remove_expired(&mut self, now_ms: u64) -> usize;
    /// Every key held (used by re-replication and republish).
    fn keys(&self) -> Vec<Key>;
    /// Number of records held.
    fn len(&self) -> usize;
    /// Whether the store is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes accounted against the quota.
    fn size_bytes(&self) -> usize;

    /// Keeps `record` as one this node publishes itself and republishes (from
    /// [`Node::put`](crate::Node::put), or adopted by a plugin through
    /// [`PluginCx::adopt`](crate::PluginCx::adopt)), apart from the records it caches for others
    /// and out of reach of their eviction, so that a restarted node finds it again and goes on
    /// republishing it. Called again with new times at each republish; replaces any own record
    /// under the same key.
    ///
    /// Returns `Ok(true)` when the store keeps it (a persistent store, committed before
    /// returning). The default keeps nothing and returns `Ok(false)`: the engine then holds the
    /// record in memory for the life of the process.
    fn keep_own(&mut self, _record: &Record) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// The own record under `key` kept with [`keep_own`](Self::keep_own).
    fn own(&self, _key: &Key) -> Option<Record> {
        None
    }
    /// Every own record kept with [`keep_own`](Self::keep_own), without its value: what a node
    /// loads when it starts.
    fn own_entries(&self) -> Vec<OwnEntry> {
        Vec::new()
    }
    /// Forgets the own record under `key` (the node stops republishing it); whether there was one.
    fn forget_own(&mut self, _key: &Key) -> bool {
        false
    }
}

/// An own record kept by a [`RecordStore`] (see [`RecordStore::keep_own`]), without its value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OwnEntry {
    /// The key.
    pub key: Key,
    /// Bytes ([`Record::size`]).
    pub size: usize,
    /// When it was last published (wall-clock ms).
    pub published_at_ms: u64,
    /// When that copy expires (wall-clock ms): its lifetime is kept at each republish.
    pub expires_at_ms: u64,
}

impl OwnEntry {
    /// The entry of `record`.
    pub fn of(record: &Record) -> Self {
        Self {
            key: record.key,
            size: record.size(),
            published_at_ms: record.published_at_ms,
            expires_at_ms: record.expires_at_ms,
        }
    }
}

/// What a full [`MemoryStore`] does with a new record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Eviction {
    /// Refuse new records when full.
    Reject,
    /// Evict the records whose keys are farthest from this node's id, if the new one is closer
    /// than them (a node is responsible first for the keys near it). Default.
    FarthestFirst,
}

/// Quotas of a [`RecordStore`] ([`MemoryStore`], or a persistent store built on [`QuotaIndex`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreLimits {
    /// Most records held. Default 65,536.
    pub max_records: usize,
    /// Most bytes held (values plus 64 bytes of overhead each). Default 64 MiB.
    pub max_bytes: usize,
    /// Most bytes held for one publisher (the record's `publisher`, or the node that sent the
    /// STORE when the record names none). Default a quarter of the default `max_bytes`, 16 MiB.
    /// A publisher over its share is refused; it never evicts another publisher's records.
    pub max_publisher_bytes: usize,
    /// What happens when full. Default [`Eviction::FarthestFirst`].
    pub eviction: Eviction,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_records: 65_536,
            max_bytes: 64 * 1024 * 1024,
            max_publisher_bytes: 16 * 1024 * 1024,
            eviction: Eviction::FarthestFirst,
        }
    }
}

impl StoreLimits {
    /// Limits of `max_records` records and `max_bytes` bytes, with a per-publisher share of a
    /// quarter of the bytes and farthest-first eviction.
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Self {
            max_records,
            max_bytes,
            max_publisher_bytes: max_bytes / 4,
            eviction: Eviction::FarthestFirst,
        }
    }

    /// Sets the per-publisher byte share.
    pub fn publisher_bytes(mut self, max: usize) -> Self {
        self.max_publisher_bytes = max;
        self
    }

    /// Sets the eviction policy.
    pub fn eviction(mut self, eviction: Eviction) -> Self {
        self.eviction = eviction;
        self
    }
}

/// What a [`QuotaIndex`] remembers of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The key.
    pub key: Key,
    /// Bytes accounted ([`Record::size`]).
    pub size: usize,
    /// The publisher it is accounted to.
    pub publisher: Option<NodeId>,
    /// When it expires (wall-clock ms).
    pub expires_at_ms: u64,
}

/// The bookkeeping of a bounded store, without the values: sizes, per-publisher usage, expiry
/// order and the eviction plan (farthest from the local id first). [`MemoryStore`] keeps its
/// values beside one; a persistent store keeps one in memory (a few dozen bytes a record) and
/// its values on disk, so both enforce exactly the same quotas.
#[derive(Debug)]
pub struct QuotaIndex {
    local: NodeId,
    limits: StoreLimits,
    entries: BTreeMap<Distance, IndexEntry>,
    expiry: BTreeSet<(u64, Distance)>,
    publishers: HashMap<NodeId, usize>,
    bytes: usize,
}

impl QuotaIndex {
    /// An empty index for the node `local`.
    pub fn new(local: NodeId, limits: StoreLimits) -> Self {
        Self {
            local,
            limits,
            entries: BTreeMap::new(),
            expiry: BTreeSet::new(),
            publishers: HashMap::new(),
            bytes: 0,
        }
    }

    /// The limits.
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Records indexed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes accounted.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes accounted to `publisher`.
    pub fn publisher_bytes(&self, publisher: &NodeId) -> usize {
        self.publishers.get(publisher).copied().unwrap_or(0)
    }

    /// The entry under `key`.
    pub fn get(&self, key: &Key) -> Option<&IndexEntry> {
        self.entries.get(&key.distance(&self.local))
    }

    /// Every key, nearest to the local id first.
    pub fn keys(&self) -> Vec<Key> {
        self.entries.values().map(|e| e.key).collect()
    }

    /// Keys of the records expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> Vec<Key> {
        self.expiry
            .range(..(now_ms.saturating_add(1), Distance([0; 20])))
            .filter_map(|(_, d)| self.entries.get(d).map(|e| e.key))
            .collect()
    }

    fn full(what: &'static str, limit: usize) -> StoreError {
        StoreError::Full { what, limit }
    }

    /// Decides whether `record` may be stored: `Ok` with the keys to evict first (farthest from
    /// the local id, only ever farther than the new record), or the limit that refuses it. The
    /// index is not changed.
    pub fn plan(&self, record: &Record) -> Result<Vec<Key>, StoreError> {
        let l = &self.limits;
        let size = record.size();
        if size > l.max_bytes {
            return Err(StoreError::TooLarge {
                len: size,
                limit: l.max_bytes,
            });
        }
        let d = record.key.distance(&self.local);
        let old = self.entries.get(&d);
        if let Some(p) = record.publisher {
            let freed = old.filter(|o| o.publisher == Some(p)).map_or(0, |o| o.size);
            if self.publisher_bytes(&p) - freed + size > l.max_publisher_bytes {
                return Err(Self::full("publisher bytes", l.max_publisher_bytes));
            }
        }
        let mut recs = self.entries.len() - usize::from(old.is_some());
        let mut bytes = self.bytes - old.map_or(0, |o| o.size);
        let fits = |recs: usize, bytes: usize| recs < l.max_records && bytes + size <= l.max_bytes;
        let refusal = |recs: usize| {
            if recs >= l.max_records {
                Self::full("records", l.max_records)
            } else {
                Self::full("bytes", l.max_bytes)
            }
        };
        if fits(recs, bytes) {
            return Ok(Vec::new());
        }
        if l.eviction == Eviction::Reject {
            return Err(refusal(recs));
        }
        let mut victims = Vec::new();
        for (vd, v) in self.entries.iter().rev() {
            if fits(recs, bytes) || *vd <= d {
                break; // never evict something closer than (or equal to) the new record
            }
            recs -= 1;
            bytes -= v.size;
            victims.push(v.key);
        }
        if fits(recs, bytes) {
            Ok(victims)
        } else {
            Err(refusal(recs))
        }
    }

    /// Indexes `record`, replacing any entry under its key.
    pub fn insert(&mut self, record: &Record) {
        self.remove(&record.key);
        let d = record.key.distance(&self.local);
        let e = IndexEntry {
            key: record.key,
            size: record.size(),
            publisher: record.publisher,
            expires_at_ms: record.expires_at_ms,
        };
        self.bytes += e.size;
        if let Some(p) = e.publisher {
            *self.publishers.entry(p).or_default() += e.size;
        }
        self.expiry.insert((e.expires_at_ms, d));
        self.entries.insert(d, e);
    }

    /// Removes the entry under `key`.
    pub fn remove(&mut self, key: &Key) -> Option<IndexEntry> {
        let d = key.distance(&self.local);
        let e = self.entries.remove(&d)?;
        self.bytes -= e.size;
        self.expiry.remove(&(e.expires_at_ms, d));
        if let Some(p) = e.publisher {
            if let Some(b) = self.publishers.get_mut(&p) {
                *b -= e.size;
                if *b == 0 {
                    self.publishers.remove(&p);
                }
            }
        }
        Some(e)
    }
}

/// The in-memory [`RecordStore`]: records ordered by distance from the local id, with quotas.
#[derive(Debug)]
pub struct MemoryStore {
    index: QuotaIndex,
    records: HashMap<Key, Record>,
}

impl MemoryStore {
    /// An empty store for the node `local`.
    pub fn new(local: NodeId, limits: StoreLimits) -> Self {
        Self {
            index: QuotaIndex::new(local, limits),
            records: HashMap::new(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &StoreLimits {
        self.index.limits()
    }
}

impl RecordStore for MemoryStore {
    fn get(&self, key: &Key) -> Option<Record> {
        self.records.get(key).cloned()
    }

    fn put(&mut self, record: Record) -> Result<Vec<Record>, StoreError> {
        let victims = self.index.plan(&record)?;
        let evicted = victims.iter().filter_map(|k| self.remove(k)).collect();
        self.index.insert(&record);
        self.records.insert(record.key, record);
        Ok(evicted)
    }

    fn remove(&mut self, key: &Key) -> Option<Record> {
        self.index.remove(key);
        self.records.remove(key)
    }

    fn remove_expired(&mut self, now_ms: u64) -> usize {
        let expired = self.index.expired(now_ms);
        for k in &expired {
            self.remove(k);
        }
        expired.len()
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
}

/// Why a validator rejected a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record rejected: {0}")]
pub struct Rejected(pub String);

/// Decides which records are acceptable, on put (before storing) and on get (before trusting an
/// answer), and which of several valid records for one key is best.
///
/// Examples: content addressing (key = hash of value), BEP44 items (signature, highest `seq`),
/// sensor readings.
pub trait RecordValidator: Send + Sync + 'static {
    /// Accepts or rejects `record`. Called for every inbound STORE and every value a lookup receives.
    fn validate(&self, record: &Record) -> Result<(), Rejected>;
    /// Index of the best record among `candidates` (all valid, same key, never empty).
    /// The default prefers the most recently published one, the first among equals.
    fn select(&self, _key: &Key, candidates: &[Record]) -> usize {
        let mut best = 0;
        for (i, r) in candidates.iter().enumerate() {
            if r.published_at_ms > candidates[best].published_at_ms {
                best = i;
            }
        }
        best
    }
}

/// Accepts every record (the engine still enforces size and expiry limits).
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl RecordValidator for AcceptAll {
    fn validate(&self, _record: &Record) -> Result<(), Rejected> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick an arbitrary base instant
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        let mut k = [0u8; 20];
        k[0] = b;
        NodeId(k)
    }

    fn rec(b: u8, len: usize) -> Record {
        Record::new(key(b), vec![0u8; len], None, 1_000, 10_000)
    }

    #[test]
    fn reject_policy_refuses_when_full() {
        let mut s = MemoryStore::new(
            NodeId::ZERO,
            StoreLimits::new(2, 1 << 20).eviction(Eviction::Reject),
        );
        s.put(rec(1, 10)).unwrap();
        s.put(rec(2, 10)).unwrap();
        assert_eq!(
            s.put(rec(3, 10)),
            Err(StoreError::Full {
                what: "records",
                limit: 2
            })
        );
        // Replacing an existing key is not growth.
        s.put(rec(2, 20)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.size_bytes(), 10 + 64 + 20 + 64);
    }

    #[test]
    fn farthest_first_evicts_only_farther_records() {
        let mut s = MemoryStore::new(NodeId::ZERO, StoreLimits::new(2, 1 << 20));
        s.put(rec(0x10, 1)).unwrap();
        s.put(rec(0x80, 1)).unwrap();
        // 0x20 is closer to ZERO than 0x80: evicts 0x80.
        let ev = s.put(rec(0x20, 1)).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].key, key(0x80));
        // 0xF0 is farther than everything held: refused, store untouched.
        assert!(matches!(s.put(rec(0xF0, 1)), Err(StoreError::Full { .. })));
        assert_eq!(s.len(), 2);
        assert!(s.get(&key(0x10)).is_some() && s.get(&key(0x20)).is_some());
    }

    #[test]
    fn byte_quota_and_oversize() {
        let mut s = MemoryStore::new(
            NodeId::ZERO,
            StoreLimits::new(100, 300).publisher_bytes(300),
        );
        assert!(matches!(
            s.put(rec(1, 400)),
            Err(StoreError::TooLarge { .. })
        ));
        s.put(rec(0x80, 100)).unwrap();
        // 2 x 164 bytes > 300: the closer record evicts the farther one.
        let ev = s.put(rec(0x01, 100)).unwrap();
        assert_eq!(ev.len(), 1);
        assert!(s.size_bytes() <= 300);
        assert!(s.get(&key(0x80)).is_none());
        // A farther one is refused, naming the limit.
        assert_eq!(
            s.put(rec(0xF0, 100)),
            Err(StoreError::Full {
                what: "bytes",
                limit: 300
            })
        );
    }

    #[test]
    fn expiry() {
        let mut s = MemoryStore::new(NodeId::ZERO, StoreLimits::default());
        s.put(Record::new(key(1), "a", None, 0, 100)).unwrap();
        s.put(Record::new(key(2), "b", None, 0, 200)).unwrap();
        assert_eq!(s.remove_expired(150), 1);
        assert!(s.get(&key(1)).is_none());
        assert!(s.get(&key(2)).is_some());
        assert_eq!(s.size_bytes(), 65);
    }

    #[test]
    fn publisher_share_is_enforced_without_evicting_others() {
        let alice = key(0xA1);
        let bob = key(0xB0);
        let mut s = MemoryStore::new(
            NodeId::ZERO,
            StoreLimits::new(100, 1000).publisher_bytes(300),
        );
        let by = |k: u8, len: usize, p: NodeId| Record::new(key(k), vec![0; len], Some(p), 0, 1000);
        s.put(by(0x80, 100, alice)).unwrap();
        s.put(by(0x81, 100, bob)).unwrap();
        // Alice's second record would bring her to 328 bytes: refused, naming the limit.
        assert_eq!(
            s.put(by(0x01, 100, alice)),
            Err(StoreError::Full {
                what: "publisher bytes",
                limit: 300
            })
        );
        // Replacing her own record is not growth.
        s.put(by(0x80, 200, alice)).unwrap();
        assert_eq!(s.len(), 2);
        // Once removed, her share is free again.
        s.remove(&key(0x80));
        s.put(by(0x01, 200, alice)).unwrap();
        assert_eq!(s.size_bytes(), 164 + 264);
    }

    #[test]
    fn quota_index_plans_without_changing_anything() {
        let mut ix = QuotaIndex::new(NodeId::ZERO, StoreLimits::new(2, 1 << 20));
        ix.insert(&rec(0x10, 1));
        ix.insert(&rec(0x80, 1));
        assert_eq!(ix.plan(&rec(0x20, 1)), Ok(vec![key(0x80)]));
        assert_eq!(ix.len(), 2);
        assert_eq!(
            ix.plan(&rec(0x80, 5)),
            Ok(vec![]),
            "a replacement needs no room"
        );
        assert_eq!(ix.expired(10_999), vec![]);
        assert_eq!(ix.expired(11_000).len(), 2);
    }
}
