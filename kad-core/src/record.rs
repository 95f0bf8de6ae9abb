//! Records, the `RecordStore` hook with its in-memory implementation, and the `RecordValidator` hook.

use std::collections::BTreeMap;

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

/// Quotas of a [`MemoryStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreLimits {
    /// Most records held. Default 65,536.
    pub max_records: usize,
    /// Most bytes held (values plus 64 bytes of overhead each). Default 64 MiB.
    pub max_bytes: usize,
    /// What happens when full. Default [`Eviction::FarthestFirst`].
    pub eviction: Eviction,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_records: 65_536,
            max_bytes: 64 * 1024 * 1024,
            eviction: Eviction::FarthestFirst,
        }
    }
}

/// The in-memory [`RecordStore`]: records ordered by distance from the local id, with quotas.
#[derive(Debug)]
pub struct MemoryStore {
    local: NodeId,
    limits: StoreLimits,
    records: BTreeMap<Distance, Record>,
    bytes: usize,
}

impl MemoryStore {
    /// An empty store for the node `local`.
    pub fn new(local: NodeId, limits: StoreLimits) -> Self {
        Self {
            local,
            limits,
            records: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// The limits.
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    fn remove_dist(&mut self, d: &Distance) -> Option<Record> {
        let r = self.records.remove(d)?;
        self.bytes -= r.size();
        Some(r)
    }
}

impl RecordStore for MemoryStore {
    fn get(&self, key: &Key) -> Option<Record> {
        self.records.get(&key.distance(&self.local)).cloned()
    }

    fn put(&mut self, record: Record) -> Result<Vec<Record>, StoreError> {
        let size = record.size();
        if size > self.limits.max_bytes {
            return Err(StoreError::TooLarge {
                len: size,
                limit: self.limits.max_bytes,
            });
        }
        let d = record.key.distance(&self.local);
        let old_size = self.records.get(&d).map_or(0, Record::size);
        let fits = |s: &Self, extra_rec: usize| {
            s.records.len() + extra_rec <= s.limits.max_records
                && s.bytes - old_size + size <= s.limits.max_bytes
        };
        let new_rec = usize::from(old_size == 0 && !self.records.contains_key(&d));
        let mut evicted = Vec::new();
        if !fits(self, new_rec) {
            match self.limits.eviction {
                Eviction::Reject => {
                    let what = if self.records.len() + new_rec > self.limits.max_records {
                        ("records", self.limits.max_records)
                    } else {
                        ("bytes", self.limits.max_bytes)
                    };
                    return Err(StoreError::Full {
                        what: what.0,
                        limit: what.1,
                    });
                }
                Eviction::FarthestFirst => {
                    // Plan the evictions first so a refusal leaves the store untouched.
                    let mut recs = self.records.len();
                    let mut bytes = self.bytes - old_size;
                    let mut victims = Vec::new();
                    for (vd, v) in self.records.iter().rev() {
                        if recs + new_rec <= self.limits.max_records
                            && bytes + size <= self.limits.max_bytes
                        {
                            break;
                        }
                        if *vd <= d {
                            break; // never evict something closer than (or equal to) the new record
                        }
                        recs -= 1;
                        bytes -= v.size();
                        victims.push(*vd);
                    }
                    if recs + new_rec > self.limits.max_records
                        || bytes + size > self.limits.max_bytes
                    {
                        let what = if recs + new_rec > self.limits.max_records {
                            ("records", self.limits.max_records)
                        } else {
                            ("bytes", self.limits.max_bytes)
                        };
                        return Err(StoreError::Full {
                            what: what.0,
                            limit: what.1,
                        });
                    }
                    for vd in victims {
                        if let Some(r) = self.remove_dist(&vd) {
                            evicted.push(r);
                        }
                    }
                }
            }
        }
        self.remove_dist(&d);
        self.bytes += size;
        self.records.insert(d, record);
        Ok(evicted)
    }

    fn remove(&mut self, key: &Key) -> Option<Record> {
        self.remove_dist(&key.distance(&self.local))
    }

    fn remove_expired(&mut self, now_ms: u64) -> usize {
        let expired: Vec<Distance> = self
            .records
            .iter()
            .filter(|(_, r)| r.is_expired(now_ms))
            .map(|(d, _)| *d)
            .collect();
        for d in &expired {
            self.remove_dist(d);
        }
        expired.len()
    }

    fn keys(&self) -> Vec<Key> {
        self.records.values().map(|r| r.key).collect()
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn size_bytes(&self) -> usize {
        self.bytes
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
            StoreLimits {
                max_records: 2,
                max_bytes: 1 << 20,
                eviction: Eviction::Reject,
            },
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
        let mut s = MemoryStore::new(
            NodeId::ZERO,
            StoreLimits {
                max_records: 2,
                max_bytes: 1 << 20,
                eviction: Eviction::FarthestFirst,
            },
        );
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
            StoreLimits {
                max_records: 100,
                max_bytes: 300,
                eviction: Eviction::FarthestFirst,
            },
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
}
