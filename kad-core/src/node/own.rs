//! The records this node publishes itself: republished before they expire, and kept by a
//! persistent store ([`RecordStore::keep_own`]) so that a restarted node goes on republishing them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{Node, QueryResult};
use crate::id::Key;
use crate::node::CommandError;
use crate::query::QueryId;
use crate::record::{Record, RecordStore, StoreError};

/// Republishes running at once: the others wait (a pinned file's records fall due together).
pub(crate) const REPUBLISH_IN_FLIGHT: usize = 16;
/// The wait before a failed republish is tried again, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(600);

/// When a record published at `published_at_ms` that expires at `expires_at_ms` is republished
/// next, at `now` (wall clock `unix` ms): `interval` after it was published, or when a tenth of its
/// lifetime is left if that comes first; a short-lived record leaves up to a quarter of its life,
/// at most a minute, for a republish round that is slow: many records due together, at most
/// [`REPUBLISH_IN_FLIGHT`] at a time, over a lossy link. (A record with a short TTL is still
/// republished before it expires.) The
/// lifetime counts at most `max_life`, the longest other nodes keep a copy. At least a second
/// after it was published (a record that lives less is republished once it has expired). Never
/// before `now`.
pub(crate) fn republish_due(
    now: Instant,
    unix: u64,
    interval: Duration,
    max_life: Duration,
    published_at_ms: u64,
    expires_at_ms: u64,
) -> Instant {
    let life = expires_at_ms
        .saturating_sub(published_at_ms)
        .min(max_life.as_millis() as u64);
    let interval = interval.as_millis() as u64;
    // Left before expiry: a tenth of the life, and for short lives up to a quarter of it (at
    // most a minute), room for a slow round.
    let leave = (life / 10).max((life / 4).min(60_000));
    let after = interval.min(life - leave).max(1_000);
    let at = published_at_ms.saturating_add(after);
    now + Duration::from_millis(at.saturating_sub(unix))
}

/// The record under `key` a node can answer with: one it holds for others, else one of its
/// own; not expired at `unix`.
pub(crate) fn local_record(
    store: &dyn RecordStore,
    own: &OwnRecords,
    key: &Key,
    unix: u64,
) -> Option<Record> {
    store
        .get(key)
        .filter(|r| !r.is_expired(unix))
        .or_else(|| own.get(store, key))
        .filter(|r| !r.is_expired(unix))
}

/// One own record: when it is republished next, its size, its value unless the store keeps it,
/// and the republishes that failed in a row.
#[derive(Debug)]
struct Own {
    due: Instant,
    size: usize,
    record: Option<Record>,
    failures: u32,
}

/// The own records of a node, with their bytes and the republishes running.
#[derive(Debug, Default)]
pub(crate) struct OwnRecords {
    map: BTreeMap<Key, Own>,
    /// `(due, key)` of every entry, earliest first.
    dues: BTreeSet<(Instant, Key)>,
    bytes: usize,
    in_flight: BTreeMap<QueryId, Key>,
}

impl OwnRecords {
    /// Keeps `record`, republished next at `due`: in `store` when it keeps own records (then not
    /// in memory), else in memory. A store error changes nothing.
    pub(crate) fn keep(
        &mut self,
        store: &mut dyn RecordStore,
        record: Record,
        due: Instant,
    ) -> Result<(), StoreError> {
        let kept = store.keep_own(&record)?;
        let size = record.size();
        self.insert(record.key, due, size, (!kept).then_some(record));
        Ok(())
    }

    /// Keeps `record` in memory only (its store failed to keep it).
    pub(crate) fn keep_in_memory(&mut self, record: Record, due: Instant) {
        self.insert(record.key, due, record.size(), Some(record));
    }

    /// Knows of a record the store keeps (found when the node starts).
    pub(crate) fn insert_kept(&mut self, key: Key, size: usize, due: Instant) {
        self.insert(key, due, size, None);
    }

    fn insert(&mut self, key: Key, due: Instant, size: usize, record: Option<Record>) {
        let own = Own {
            due,
            size,
            record,
            failures: 0,
        };
        if let Some(old) = self.map.insert(key, own) {
            self.bytes -= old.size;
            self.dues.remove(&(old.due, key));
            if let Some(o) = self.map.get_mut(&key) {
                o.failures = old.failures;
            }
        }
        self.dues.insert((due, key));
        self.bytes += size;
    }

    /// Bytes of the own record under `key`, if there is one.
    pub(crate) fn size_of(&self, key: &Key) -> Option<usize> {
        self.map.get(key).map(|o| o.size)
    }

    /// Moves the next republish of `key` to `due`.
    pub(crate) fn reschedule(&mut self, key: &Key, due: Instant) {
        if let Some(o) = self.map.get_mut(key) {
            self.dues.remove(&(o.due, *key));
            o.due = due;
            self.dues.insert((due, *key));
        }
    }

    /// When the next republish is due, unless as many run as may.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        if self.in_flight.len() >= REPUBLISH_IN_FLIGHT {
            return None;
        }
        self.dues.first().map(|(t, _)| *t)
    }

    /// Forgets the record under `key` (and has the store forget it); whether there was one.
    pub(crate) fn forget(&mut self, store: &mut dyn RecordStore, key: &Key) -> bool {
        let kept = store.forget_own(key);
        match self.map.remove(key) {
            Some(old) => {
                self.bytes -= old.size;
                self.dues.remove(&(old.due, *key));
                true
            }
            None => kept,
        }
    }

    /// The record under `key`, from memory or the store.
    pub(crate) fn get(&self, store: &dyn RecordStore, key: &Key) -> Option<Record> {
        match &self.map.get(key)?.record {
            Some(r) => Some(r.clone()),
            None => store.own(key),
        }
    }

    /// Whether `key` is an own record.
    pub(crate) fn contains(&self, key: &Key) -> bool {
        self.map.contains_key(key)
    }

    /// Every key whose republish is due at `now`.
    pub(crate) fn all_due(&self, now: Instant) -> Vec<Key> {
        self.dues
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, k)| *k)
            .collect()
    }

    /// Keys whose republish is due at `now`, as many as may start.
    pub(crate) fn due(&self, now: Instant) -> Vec<Key> {
        self.dues
            .iter()
            .take_while(|(t, _)| *t <= now)
            .take(REPUBLISH_IN_FLIGHT.saturating_sub(self.in_flight.len()))
            .map(|(_, k)| *k)
            .collect()
    }

    /// Number of own records.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes of own records ([`Record::size`] each).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The keys, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Key> {
        self.map.keys()
    }
}

impl Node {
    /// When a record published at `published_at_ms` that expires at `expires_at_ms` is
    /// republished next (see [`republish_due`]).
    pub(super) fn republish_due(
        &self,
        now: Instant,
        published_at_ms: u64,
        expires_at_ms: u64,
    ) -> Instant {
        republish_due(
            now,
            self.unix_ms(now),
            self.config.republish_interval,
            self.config.record_ttl,
            published_at_ms,
            expires_at_ms,
        )
    }

    /// Keys of the records this node publishes itself and republishes before they expire: its
    /// [`put`](Self::put)s, and records a plugin adopted ([`PluginCx::adopt`](crate::PluginCx::adopt)).
    /// A persistent store keeps them across restarts ([`RecordStore::keep_own`]).
    pub fn own_keys(&self) -> Vec<Key> {
        self.own_records.keys().copied().collect()
    }

    /// Bytes of the own records ([`Record::size`] each).
    pub fn own_bytes(&self) -> usize {
        self.own_records.bytes()
    }

    /// Stops republishing the record under `key` (a persistent store forgets it too); whether
    /// it was an own record. Copies stored at other nodes live until they expire.
    pub fn unpublish(&mut self, key: &Key) -> bool {
        self.own_records.forget(&mut *self.store, key)
    }

    /// Takes up the own records the store kept (a restart).
    pub(super) fn load_own(&mut self, now: Instant) {
        for e in self.store.own_entries() {
            let due = self.republish_due(now, e.published_at_ms, e.expires_at_ms);
            self.own_records.insert_kept(e.key, e.size, due);
        }
        if self.own_records.len() > 0 {
            debug!(
                records = self.own_records.len(),
                bytes = self.own_records.bytes(),
                "own records loaded from the store"
            );
        }
    }

    /// Makes `record` one of this node's own records, republished from now on.
    pub(super) fn keep_own(&mut self, now: Instant, record: Record) {
        let due = self.republish_due(now, record.published_at_ms, record.expires_at_ms);
        if let Err(e) = self.own_records.keep(&mut *self.store, record.clone(), due) {
            warn!(key = %record.key, error = %e, "own record kept in memory only: the store failed");
            self.own_records.keep_in_memory(record, due);
        }
    }

    /// Republishes the own records that are due, with a fresh publish time and the same
    /// lifetime, at most [`REPUBLISH_IN_FLIGHT`] at a time. Without contacts (a node that has just
    /// started), they wait until it has some.
    pub(super) fn republish_due_records(&mut self, now: Instant) {
        let unix = self.unix_ms(now);
        if self.routing.is_empty() {
            for key in self.own_records.all_due(now) {
                self.own_records
                    .reschedule(&key, now + Duration::from_secs(5));
            }
            return;
        }
        // Each pass takes every key it sees off the due list (in flight, put off or forgotten):
        // the loop ends with none due, or with as many in flight as may be.
        loop {
            let due = self.own_records.due(now);
            if due.is_empty() {
                return;
            }
            for key in due {
                let Some(mut r) = self.own_records.get(&*self.store, &key) else {
                    // A read error of the store, or a record it no longer has: try again later
                    // rather than forget it.
                    warn!(%key, "own record not read from the store: republish put off");
                    self.republish_failed(now, key);
                    continue;
                };
                let life = r.expires_at_ms.saturating_sub(r.published_at_ms);
                r.published_at_ms = unix;
                r.expires_at_ms = unix.saturating_add(life);
                match self.put_record(now, r.clone()) {
                    Ok(qid) => {
                        self.stats.republished += 1;
                        self.own_records.in_flight.insert(qid, key);
                        self.keep_own(now, r);
                    }
                    Err(CommandError::TooManyQueries { .. }) => {
                        // The query table is full: everything due waits a second.
                        for k in self.own_records.all_due(now) {
                            self.own_records
                                .reschedule(&k, now + Duration::from_secs(1));
                        }
                        return;
                    }
                    Err(e) => {
                        // It can never be published (too large, expired): say so, forget it.
                        warn!(%key, error = %e, "own record cannot be republished: forgotten");
                        self.own_records.forget(&mut *self.store, &key);
                    }
                }
            }
        }
    }

    /// Sees the end of a query that was a republish: one that stored nowhere is tried again
    /// after a wait that doubles with each failure in a row.
    pub(super) fn republish_finished(&mut self, now: Instant, qid: QueryId, result: &QueryResult) {
        let Some(key) = self.own_records.in_flight.remove(&qid) else {
            return;
        };
        match result {
            // Stored by another node than this one (or this is the only node there is).
            QueryResult::Put(Ok(o)) if o.stored > 1 || o.tried <= 1 => {
                if let Some(own) = self.own_records.map.get_mut(&key) {
                    own.failures = 0;
                }
            }
            _ => self.republish_failed(now, key),
        }
    }

    fn republish_failed(&mut self, now: Instant, key: Key) {
        let Some(own) = self.own_records.map.get_mut(&key) else {
            return;
        };
        own.failures = own.failures.saturating_add(1);
        let wait = RETRY_MIN
            .saturating_mul(1 << (own.failures - 1).min(6))
            .min(RETRY_MAX);
        debug!(%key, failures = own.failures, ?wait, "republish stored nowhere: trying again");
        self.stats.republish_failures += 1;
        self.own_records.reschedule(&key, now + wait);
    }

    /// The record under `key` this node can answer with (see [`local_record`]).
    pub(super) fn local_record(&self, key: &Key, unix: u64) -> Option<Record> {
        local_record(&*self.store, &self.own_records, key, unix)
    }
}
