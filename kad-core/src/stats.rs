//! Counters the engine keeps: traffic, drops by reason, queries.

use serde::Serialize;

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
    /// Requests not answered because the node is read-only (`Config::answer_requests` false).
    pub ignored_read_only: u64,
    /// Responses accepted from the address asked although they carry another id
    /// (`Config::accept_id_change`); the old id was removed from the routing table.
    pub id_changes: u64,
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
}
