//! Engine configuration, with every default documented, and the wall-clock hook.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::TransportKind;
use crate::record::StoreLimits;

/// Gives wall-clock time (milliseconds since the Unix epoch) for record timestamps.
///
/// The engine never reads the OS clock itself: the tokio runtime installs [`SystemClock`], the
/// simulator a [`VirtualClock`] driven by virtual time.
pub trait WallClock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch at the engine instant `now`.
    fn unix_ms(&self, now: Instant) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    /// Milliseconds since the Unix epoch, now (for code outside the engine that stamps
    /// records: publish and expiry times).
    #[allow(clippy::disallowed_methods)] // the one place the OS wall clock is read
    pub fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

impl WallClock for SystemClock {
    fn unix_ms(&self, _now: Instant) -> u64 {
        Self::now_ms()
    }
}

/// A clock that maps engine instants onto wall time: `epoch_ms + (now - base)`.
#[derive(Debug, Clone, Copy)]
pub struct VirtualClock {
    /// The instant that corresponds to `epoch_ms`.
    pub base: Instant,
    /// Wall time at `base`.
    pub epoch_ms: u64,
}

impl WallClock for VirtualClock {
    fn unix_ms(&self, now: Instant) -> u64 {
        self.epoch_ms + now.saturating_duration_since(self.base).as_millis() as u64
    }
}

/// Why a configuration value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is outside its allowed range.
    #[error("{field} = {value} is out of range: {limit}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// The allowed range, in words.
        limit: &'static str,
    },
    /// The builder was given no codec, and the crate was built without the `json` feature
    /// that provides the default one, `PlainCodec`.
    #[error(
        "no codec: give one with NodeBuilder::codec, or enable kad-core's `json` feature for PlainCodec"
    )]
    NoCodec,
}

/// Engine configuration. Construct with `Config::default()` and adjust fields or use the setters
/// that validate.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// Bucket size and the number of closest nodes a lookup converges on. Default 20
    /// (the Mainline plugin uses 8).
    pub k: usize,
    /// Parallel requests per lookup while it makes progress. Default 3.
    pub alpha: usize,
    /// Upper bound of the adaptive request timeout. Default 5 s.
    pub request_timeout: Duration,
    /// Lower bound of the adaptive (hard) request timeout. Default 250 ms.
    pub min_request_timeout: Duration,
    /// Lower bound of the soft timeout after which a lookup stops counting a silent request
    /// against its parallelism and widens the search (the request stays valid until its hard
    /// timeout). Default 20 ms.
    pub min_soft_timeout: Duration,
    /// RTT assumed before any sample arrives. Default 250 ms.
    pub initial_rtt: Duration,
    /// Attempts a lookup makes per candidate among the `alpha` closest (the head of its result)
    /// before giving it up; the head is asked again at each soft deadline. Other candidates get
    /// at most 2 attempts (3 in the lookup before a STORE). Default 5.
    pub max_attempts: u8,
    /// Answers in a row that bring nothing closer before a lookup asks all of the k closest it
    /// knows at once. Default 1, latency first: about a round trip less per lookup than `alpha`
    /// (3), for about 60% more requests. See the simulator's measurements in BENCHMARKS.md.
    pub lookup_patience: usize,
    /// A node among the `alpha` closest that is silent past the soft deadline of its last
    /// attempt stops holding a lookup open (a late answer still counts). Default false; the
    /// Mainline plugin turns it on (deployed Mainline is full of departed nodes).
    pub lookup_skip_silent_head: bool,
    /// A put whose routing table likely holds every node near the key (a key near the local
    /// id, any key of a network of about `k` nodes:
    /// [`RoutingTable::knows_neighbourhood`](crate::RoutingTable::knows_neighbourhood)) skips
    /// its lookup: it sends its STOREs to the k
    /// closest it knows at once, each asking its node for the closest contacts it knows, until
    /// the k closest have all answered; a closer node named there gets the record too (a record
    /// over 512 bytes only once it has answered a FIND_NODE and is among the k closest).
    /// One round trip instead of about three. A put with a quorum, of a value over 64 KiB, or
    /// with disjoint paths always searches first. Default true.
    pub direct_put: bool,
    /// Sybil defence: most contacts from one subnet ([`PeerAddr::subnet`](crate::PeerAddr::subnet):
    /// a public IPv4 /24 or IPv6 /64) in one bucket, and most candidates from one subnet in one
    /// lookup; a contact over it is ignored. Loopback, private and link-local addresses are never
    /// limited. 0: no limit. Default 0, because a network whose nodes share one public /24 would
    /// be capped: turn it on (2) for a node on an open network (`kad sim sybil` measures it).
    /// The Mainline plugin uses 2, as libtorrent restricts its routing table and lookups.
    pub subnet_limit: usize,
    /// Sybil and eclipse defence (S/Kademlia): a lookup runs this many paths that never share a
    /// node; a node's answer only feeds its own path, so colluding nodes that name only each
    /// other capture at most the paths that reached them. Each path asks `alpha` at a time and
    /// ends on its own k closest: 2 to 4 times the requests of one path and a round trip or two
    /// more, measured by `kad sim sybil`. 1: one ordinary lookup. Range 1..=16 and at most `k`.
    /// Default 1.
    pub disjoint_paths: usize,
    /// Most requests in flight at once; lookups wait for room. Default 4096.
    pub max_in_flight: usize,
    /// Most concurrent queries (lookups, puts, pings, calls). Default 1024.
    pub max_queries: usize,
    /// Replacement-cache entries per bucket. Default 8.
    pub replacement_cache: usize,
    /// A contact heard from within this window is good. Default 15 min.
    pub liveness_window: Duration,
    /// Failures in a row after which a contact is bad and replaced. Default 2.
    pub max_failures: u8,
    /// A bucket with no activity for this long gets a refresh lookup. Default 15 min.
    pub refresh_interval: Duration,
    /// Time to live of records this node publishes, and the longest it keeps anyone's. Default 24 h.
    pub record_ttl: Duration,
    /// How often held records are re-replicated to the current k closest. Default 1 h.
    pub replicate_interval: Duration,
    /// How often this node republishes its own records (its puts, and records adopted by a
    /// plugin such as pins), or when a tenth of a record's lifetime is left (a quarter, up to 60 s,
    /// for a short one) if that comes first. Default 22 h.
    pub republish_interval: Duration,
    /// How often the engine runs maintenance (expiry, refresh, replication checks). Default 60 s.
    pub maintenance_interval: Duration,
    /// Largest record value accepted, in bytes. Default 64 KiB.
    pub max_value_len: usize,
    /// Records published more than this far in the future are refused. Default 60 s.
    pub max_clock_skew: Duration,
    /// Transports this node may use, in order of preference; a contact's address is picked by it.
    /// Default: UDP, QUIC, WebSocket, memory.
    pub transport_preference: Vec<TransportKind>,
    /// Transport kinds whose connections prove the peer's node id (QUIC, whose TLS certificates
    /// are bound to the node keys): the codec may send and accept messages on them without a
    /// signature or MAC of their own. The runtime sets it from
    /// [`Transport::proves_peer_ids`](crate::Transport::proves_peer_ids); a bare engine fed by
    /// other means leaves it empty. Default: empty.
    pub proven_kinds: Vec<TransportKind>,
    /// Add nodes that send us requests to the routing table. Default true.
    pub accept_requesters: bool,
    /// Read-only (client) mode: mark outgoing messages so others don't add us. Default false.
    pub read_only: bool,
    /// Accept a response from the address we asked even when it carries another node id than
    /// expected, and replace the old id in the routing table. Default false (signed networks
    /// drop such responses); the Mainline plugin turns it on, because deployed nodes change ids.
    pub accept_id_change: bool,
    /// Never send a reply larger than its request to a UDP address that has not yet answered one
    /// of our requests: such a reply waits for a PING to that address to come back (one extra
    /// round trip, once per peer), so a forged source address cannot aim large answers at a
    /// victim. Default true; the Mainline plugin turns it off (deployed Mainline nodes expect
    /// immediate answers, and KRPC has its own per-IP limits and reply budget). See
    /// [docs/limits.md](https://example.invalid/kad/docs/limits.md) and the `amplify` notes in
    /// PROTOCOL.md.
    pub amplification_guard: bool,
    /// Datagrams per second the tokio runtime accepts from one source IP this node has not sent
    /// a request to recently and that has not answered one of its requests, counted before anything is parsed or verified (0: no limit). All ports of
    /// one IP share it. Over it, datagrams are dropped and counted in
    /// [`Stats::dropped_rate_limited`](crate::Stats::dropped_rate_limited). Default 1000.
    pub per_ip_rate: u32,
    /// Burst allowed above [`per_ip_rate`](Self::per_ip_rate), in datagrams. Default 2000.
    pub per_ip_burst: u32,
    /// Answer peers' requests. Default true. Mainline read-only nodes (BEP43) answer nothing;
    /// unanswered requests are counted in `Stats::ignored_read_only`.
    pub answer_requests: bool,
    /// After the bootstrap lookup, refresh up to this many of the farthest non-full buckets, down
    /// to the bucket of the closest contact, with a lookup of a random id in each (Kademlia's
    /// join: the node fills its table and enters other nodes' tables across the id space, so
    /// its later lookups take fewer hops and meet fewer strangers). Default 0; the `kad`
    /// crate's nodes use 16, its clients 0.
    pub bootstrap_refresh: usize,
    /// Times a PING, STORE, call or plugin request is sent again when its answer does not come
    /// within the adaptive timeout, which doubles with each retransmission (up to
    /// [`request_timeout`](Self::request_timeout)). Lookup requests are not retransmitted: a
    /// lookup asks again or asks another node itself ([`max_attempts`](Self::max_attempts)).
    /// Default 3 (four sends: a round trip at 10% loss each way then fails once in 750). The
    /// Mainline plugin uses 1. A joining node's PING to a bootstrap address is sent up to seven
    /// times (unless this is 0), at a constant interval: it is the only thing the node has to
    /// do. A request to a contact whose own RTT is known is also sent once more, early, at that
    /// contact's timeout ([`Entry::resend_after`](crate::Entry::resend_after), about
    /// 1.25 to 1.5 round trips) when that comes before half the adaptive timeout; the early send
    /// is not counted here.
    pub retransmits: u8,
    /// A node whose routing table is empty (its join failed, or every contact went silent)
    /// joins again through its bootstrap addresses and the contacts it last knew, after this
    /// delay, doubling up to [`rejoin_max`](Self::rejoin_max) while it stays alone. Default 1 s.
    pub rejoin_min: Duration,
    /// Longest wait between two joins of a node that stays alone. Default 60 s.
    pub rejoin_max: Duration,
    /// Seed of the engine's ChaCha RNG (transaction ids, refresh targets). `None`: the tokio
    /// runtime draws one from the OS; a hand-driven engine derives one from its id.
    pub rng_seed: Option<[u8; 32]>,
    /// Quotas of the default in-memory record store.
    pub store_limits: StoreLimits,
    /// Wall clock for record times. Default [`SystemClock`].
    pub wall_clock: Arc<dyn WallClock>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            k: 20,
            alpha: 3,
            request_timeout: Duration::from_secs(5),
            min_request_timeout: Duration::from_millis(250),
            min_soft_timeout: Duration::from_millis(20),
            initial_rtt: Duration::from_millis(250),
            max_attempts: 5,
            lookup_patience: 1,
            lookup_skip_silent_head: false,
            direct_put: true,
            subnet_limit: 0,
            disjoint_paths: 1,
            max_in_flight: 4096,
            max_queries: 1024,
            replacement_cache: 8,
            liveness_window: Duration::from_secs(15 * 60),
            max_failures: 2,
            refresh_interval: Duration::from_secs(15 * 60),
            record_ttl: Duration::from_secs(24 * 3600),
            replicate_interval: Duration::from_secs(3600),
            republish_interval: Duration::from_secs(22 * 3600),
            maintenance_interval: Duration::from_secs(60),
            max_value_len: 64 * 1024,
            max_clock_skew: Duration::from_secs(60),
            proven_kinds: Vec::new(),
            transport_preference: vec![
                TransportKind::Udp,
                TransportKind::Quic,
                TransportKind::Ws,
                TransportKind::Mem,
            ],
            accept_requesters: true,
            read_only: false,
            answer_requests: true,
            accept_id_change: false,
            amplification_guard: true,
            per_ip_rate: 1000,
            per_ip_burst: 2000,
            bootstrap_refresh: 0,
            retransmits: 3,
            rejoin_min: Duration::from_secs(1),
            rejoin_max: Duration::from_secs(60),
            rng_seed: None,
            store_limits: StoreLimits::default(),
            wall_clock: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("k", &self.k)
            .field("alpha", &self.alpha)
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("max_in_flight", &self.max_in_flight)
            .field("record_ttl", &self.record_ttl)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Sets `k` (1..=256).
    pub fn set_k(&mut self, k: usize) -> Result<&mut Self, ConfigError> {
        if !(1..=256).contains(&k) {
            return Err(ConfigError::OutOfRange {
                field: "k",
                value: k.to_string(),
                limit: "1..=256",
            });
        }
        self.k = k;
        Ok(self)
    }

    /// Sets `alpha` (1..=64).
    pub fn set_alpha(&mut self, alpha: usize) -> Result<&mut Self, ConfigError> {
        if !(1..=64).contains(&alpha) {
            return Err(ConfigError::OutOfRange {
                field: "alpha",
                value: alpha.to_string(),
                limit: "1..=64",
            });
        }
        self.alpha = alpha;
        Ok(self)
    }

    /// Sets the RNG seed.
    pub fn set_rng_seed(&mut self, seed: [u8; 32]) -> &mut Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Checks every field's range; [`NodeBuilder::build`](crate::NodeBuilder::build) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, value: String, limit| {
            Err(ConfigError::OutOfRange {
                field,
                value,
                limit,
            })
        };
        if !(1..=256).contains(&self.k) {
            return bad("k", self.k.to_string(), "1..=256");
        }
        if !(1..=64).contains(&self.alpha) {
            return bad("alpha", self.alpha.to_string(), "1..=64");
        }
        if !(1..=16).contains(&self.disjoint_paths) || self.disjoint_paths > self.k {
            return bad(
                "disjoint_paths",
                self.disjoint_paths.to_string(),
                "1..=16 and at most k",
            );
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "0".into(), "at least 1");
        }
        if self.max_failures == 0 {
            return bad("max_failures", "0".into(), "at least 1");
        }
        if self.retransmits > 8 {
            return bad("retransmits", self.retransmits.to_string(), "0..=8");
        }
        if self.rejoin_min.is_zero() || self.rejoin_min > self.rejoin_max {
            return bad(
                "rejoin_min",
                format!("{:?}", self.rejoin_min),
                "more than 0 and at most rejoin_max",
            );
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "0".into(), "at least 1");
        }
        if self.max_queries == 0 {
            return bad("max_queries", "0".into(), "at least 1");
        }
        if self.min_request_timeout > self.request_timeout {
            return bad(
                "min_request_timeout",
                format!("{:?}", self.min_request_timeout),
                "at most request_timeout",
            );
        }
        if self.maintenance_interval.is_zero() {
            return bad("maintenance_interval", "0".into(), "greater than zero");
        }
        if self.transport_preference.is_empty() {
            return bad(
                "transport_preference",
                "[]".into(),
                "at least one transport kind",
            );
        }
        Ok(())
    }
}
