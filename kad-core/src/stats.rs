//! Counters the engine keeps: traffic, drops by reason, requests by method, query latencies.

use std::collections::BTreeMap;

use serde::Serialize;

/// The most method names [`Stats::rpc_in`] and [`Stats::rpc_out`] keep apart; further names are
/// counted under `"other"`, so a peer inventing names cannot grow the maps.
pub const MAX_METHODS: usize = 64;

/// Upper bounds of the [`Histogram`] buckets, in microseconds: 0.25 ms to 30 s.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    2_000_000, 5_000_000, 10_000_000, 30_000_000,
];

/// A latency histogram with the fixed buckets of [`LATENCY_BUCKETS_US`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Histogram {
    /// Samples.
    pub count: u64,
    /// Their sum, in microseconds.
    pub sum_us: u64,
    /// Samples per bucket (not cumulative): `buckets[i]` counts those at most
    /// `LATENCY_BUCKETS_US[i]` and above the bound before; longer ones are only in `count`.
    pub buckets: [u64; LATENCY_BUCKETS_US.len()],
}

impl Histogram {
    /// Adds one sample.
    pub fn record(&mut self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|b| us <= *b) {
            self.buckets[i] += 1;
        }
    }

    /// The bucket bound (in microseconds) at or below which the fraction `q` of the samples
    /// lie, or `None` without samples or beyond the last bucket.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let want = (self.count as f64 * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(LATENCY_BUCKETS_US[i]);
            }
        }
        None
    }
}

/// Adds one to `method`'s count, keeping at most [`MAX_METHODS`] names.
pub(crate) fn count_method(map: &mut BTreeMap<String, u64>, method: &str) {
    if let Some(n) = map.get_mut(method) {
        *n += 1;
    } else if map.len() < MAX_METHODS - 1 {
        map.insert(method.to_owned(), 1);
    } else {
        *map.entry("other".to_owned()).or_insert(0) += 1;
    }
}

/// Counters since the node started. Every dropped remote input is counted under its reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Messages received (decoded or typed).
    pub messages_in: u64,
    /// Messages handed out to be sent.
    pub messages_out: u64,
    /// Requests received and answered.
    pub requests_in: u64,
    /// Requests sent.
    pub requests_out: u64,
    /// Responses (and error answers) matched to a request of ours.
    pub responses_in: u64,
    /// Requests that reached their hard timeout.
    pub timeouts: u64,
    /// Dropped: bytes that did not decode.
    pub dropped_malformed: u64,
    /// Dropped: failed authentication in a codec that gives no finer reason.
    pub dropped_auth: u64,
    /// Dropped: the signature did not verify (or the key was not a valid point).
    pub dropped_bad_signature: u64,
    /// Dropped: the MAC of a version 2 native message did not verify (or the key was not a
    /// valid point).
    pub dropped_bad_mac: u64,
    /// Dropped: a native message without signature or MAC that did not come over a connection
    /// proving its sender (or whose sender is another node than the one the connection proved).
    pub dropped_unproven: u64,
    /// Dropped: the sender's id is not the hash of its public key.
    pub dropped_id_mismatch: u64,
    /// Dropped: the timestamp was outside the window (`Config::max_clock_skew`).
    pub dropped_stale: u64,
    /// Dropped: a (sender, nonce) pair seen before within the window.
    pub dropped_replay: u64,
    /// Dropped: addressed to another node id.
    pub dropped_wrong_recipient: u64,
    /// Dropped: a response to no request of ours (unknown transaction id, or from another address).
    pub dropped_unknown_txn: u64,
    /// Dropped: a response from a node other than the one asked.
    pub dropped_wrong_peer: u64,
    /// Dropped before decoding: the runtime's inbox was full, or the source address already had
    /// its share queued (a flood). Set by the tokio runtime; 0 for a bare engine.
    pub dropped_overload: u64,
    /// Dropped before parsing: the source exceeded its rate limit in the codec.
    pub dropped_rate_limited: u64,
    /// Replies held back because they were larger than the request and went to a UDP address
    /// not yet proven (see [`Config::amplification_guard`](crate::Config::amplification_guard)).
    pub replies_deferred: u64,
    /// Deferred replies dropped: no room, or the address never answered the proving PING.
    pub replies_deferred_dropped: u64,
    /// PINGs sent to prove an address before answering it in full.
    pub proving_pings: u64,
    /// PINGs sent to new contacts that had only sent us requests: a contact is handed out to
    /// other nodes only once it has answered one of our requests.
    pub verify_pings: u64,
    /// Requests not answered because the node is read-only (`Config::answer_requests` false).
    pub ignored_read_only: u64,
    /// Responses accepted from the address asked although they carry another id
    /// (`Config::accept_id_change`); the old id was removed from the routing table.
    pub id_changes: u64,
    /// Requests sent again because their answer did not come in time (`Config::retransmits`).
    pub retransmits: u64,
    /// Joins started by the engine itself because the routing table was empty
    /// (`Config::rejoin_min`).
    pub rejoins: u64,
    /// Dropped: a message that claims our own id.
    pub dropped_self: u64,
    /// Dropped: a request refused by a plugin's filter.
    pub dropped_filtered: u64,
    /// Requests not sent because the in-flight table was full.
    pub in_flight_full: u64,
    /// Queries refused because too many were running.
    pub queries_refused: u64,
    /// Records stored on behalf of peers.
    pub records_stored: u64,
    /// Own records republished (the node's puts, and records adopted by a plugin).
    pub republished: u64,
    /// Republishes that stored the record nowhere (tried again later).
    pub republish_failures: u64,
    /// Records refused (validator, size, expiry, quota).
    pub records_rejected: u64,
    /// Values a lookup received that failed validation.
    pub values_rejected: u64,
    /// Records removed because they expired.
    pub records_expired: u64,
    /// Queries started.
    pub queries_started: u64,
    /// Queries finished.
    pub queries_done: u64,
    /// Contacts in the routing table now. Gauges like this one and the two below are read
    /// when the stats are asked for through the runtime ([`Dht::stats`](crate::Dht::stats));
    /// a bare engine's [`Node::stats`](crate::Node::stats) leaves them 0.
    pub routing_table_size: u64,
    /// Records held in the record store now (a gauge; see `routing_table_size`).
    pub records_held: u64,
    /// Bytes the record store holds now, as it counts them (a gauge; see `routing_table_size`).
    pub store_bytes: u64,
    /// Requests received and answered, by method (`PING`, `FIND_NODE`, `pubsub.NOTIFY`, ...).
    /// A method no plugin of this node owns is counted as `"unknown"`; at most [`MAX_METHODS`]
    /// names are kept apart.
    pub rpc_in: BTreeMap<String, u64>,
    /// Requests sent, by method (at most [`MAX_METHODS`] names).
    pub rpc_out: BTreeMap<String, u64>,
    /// How long finished queries took, by kind: `find_node`, `bootstrap`, `refresh`, `get`,
    /// `put`, `ping`, `call`, `plugin_lookup`, `command`.
    pub query_latency: BTreeMap<&'static str, Histogram>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_us(0.5), None);
        for ms in [0, 1, 1, 3, 40] {
            h.record(Duration::from_millis(ms));
        }
        h.record(Duration::from_secs(60)); // beyond the last bucket: counted, in no bucket
        assert_eq!(h.count, 6);
        assert_eq!(h.sum_us, 60_045_000);
        assert_eq!(h.buckets[0], 1); // 0 ms <= 0.25 ms
        assert_eq!(h.buckets[2], 2); // 1 ms <= 1 ms
        assert_eq!(h.buckets[4], 1); // 3 ms <= 5 ms
        assert_eq!(h.buckets[7], 1); // 40 ms <= 50 ms
        assert_eq!(h.quantile_us(0.5), Some(1_000));
        assert_eq!(h.quantile_us(0.8), Some(50_000));
        assert_eq!(h.quantile_us(1.0), None);
    }

    #[test]
    fn method_counts_are_bounded() {
        let mut m = BTreeMap::new();
        for i in 0..1000 {
            count_method(&mut m, &format!("junk.M{i}"));
        }
        count_method(&mut m, "junk.M0");
        assert_eq!(m.len(), MAX_METHODS);
        assert_eq!(m["junk.M0"], 2);
        assert_eq!(m["other"], 1000 - (MAX_METHODS as u64 - 1));
    }
}
