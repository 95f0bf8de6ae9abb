//! A BitTorrent Mainline DHT node on kad-core: BEP5 (KRPC, `get_peers`, `announce_peer`),
//! BEP44 (`get`/`put` of immutable and ed25519-signed mutable items), BEP42 (secure ids),
//! BEP43 (read-only mode), BEP51 (`sample_infohashes`) and BEP32 (`nodes6`, `want`).
//!
//! Three parts plug into kad-core's hooks:
//! - [`KrpcCodec`] (the `Codec`): bencoded KRPC dictionaries <-> typed messages.
//! - [`Bep44Plugin`] (the `Plugin`, namespace `mainline`): the server side of the BEP5/44/51
//!   methods with bounded stores and write tokens, and the client side of get/put as lookups.
//! - [`Mainline`]: a running node on UDP with typed async methods.
//!
//! Two nodes on 127.0.0.1, one storing for the other:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kad_plugin_bep44::{Mainline, MainlineConfig, MutableItem, item};
//! let mut cfg = MainlineConfig::default();
//! cfg.bind = "127.0.0.1:0".parse()?;
//! let server = Mainline::spawn(cfg).await?; // no bootstrap list: it starts a network
//!
//! let mut cfg = MainlineConfig::default();
//! cfg.bind = "127.0.0.1:0".parse()?;
//! cfg.bootstrap = vec![server.local_addr()]; // without one: the public routers (users only)
//! let node = Mainline::spawn(cfg).await?;
//! node.bootstrap().await?;
//!
//! // Immutable: the target is SHA-1 of the bencoded value.
//! let put = node.put_immutable(&item::bencode_bytes(b"Hello World!")).await?;
//! assert_eq!(put.target.to_hex(), "e5f96f6f38320f0f33959cb4d3d656452117aadb");
//! let got = node.get_immutable(put.target).await?;
//! assert_eq!(&got.v[..], b"12:Hello World!");
//!
//! // Mutable: signed with an ed25519 seed; the highest valid seq wins.
//! let v1 = MutableItem::sign(&[7; 32], b"salt", 1, &item::bencode_bytes(b"reading 1"))?;
//! let v2 = MutableItem::sign(&[7; 32], b"salt", 2, &item::bencode_bytes(b"reading 2"))?;
//! node.put_mutable(&v1, None).await?;
//! node.put_mutable(&v2, None).await?;
//! assert!(node.put_mutable(&v1, None).await.is_err()); // 302: lower than what is stored
//! let latest = node.get_mutable(v1.pubkey, b"salt", None).await?;
//! assert_eq!((latest.seq, &latest.v[..]), (2, &b"9:reading 2"[..]));
//! # Ok(()) }
//! ```

pub mod bencode;
pub mod bep42;
mod builder;
pub mod item;
pub mod krpc;
mod plugin;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kad_core::{Config, Contact, Dht, DhtError, Node, NodeId, PeerAddr, StaticIdentity, Stats};
use kad_transport_udp::UdpTransport;
use serde::Serialize;

pub use builder::{MainlineBuilder, resolve_bootstrap};
pub use item::MutableItem;
pub use krpc::{KrpcCodec, KrpcLimits, KrpcShared};
pub use plugin::{Bep44Plugin, ItemStoreLimits, K, TOKEN_ROTATION};

use plugin::{Cmd, CmdResult};

/// The public Mainline bootstrap routers. Used only when a user asks for the live network.
pub const PUBLIC_ROUTERS: [&str; 4] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
    "dht.libtorrent.org:25401",
];

/// How a [`Mainline`] node runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MainlineConfig {
    /// UDP address to bind. Default `0.0.0.0:0` (any free port).
    pub bind: SocketAddr,
    /// Nodes to join through (`ip:port`).
    pub bootstrap: Vec<SocketAddr>,
    /// A fixed node id; by default a random one, or a BEP42 one for `public_ip`.
    pub node_id: Option<NodeId>,
    /// Our public IP, when known: the node id is derived from it (BEP42).
    pub public_ip: Option<IpAddr>,
    /// Read-only mode (BEP43): `ro=1` on our queries, no answers to anyone's.
    pub read_only: bool,
    /// Codec limits: per-IP rate, reply budget, BEP42 enforcement.
    pub limits: KrpcLimits,
    /// Server-side store bounds.
    pub store: ItemStoreLimits,
    /// Upper bound of the adaptive request timeout. Default 2 s (what deployed nodes use).
    pub request_timeout: Duration,
    /// Parallel requests per lookup. Default 4.
    pub alpha: usize,
}

impl Default for MainlineConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            bootstrap: Vec::new(),
            node_id: None,
            public_ip: None,
            read_only: false,
            limits: KrpcLimits::default(),
            store: ItemStoreLimits::default(),
            request_timeout: Duration::from_secs(2),
            alpha: 4,
        }
    }
}

/// Why a Mainline operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MainlineError {
    /// Binding the socket failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The node could not start or has stopped, or the engine refused the command.
    #[error(transparent)]
    Dht(#[from] DhtError),
    /// The item is invalid (names the field and the limit).
    #[error(transparent)]
    Item(#[from] item::ItemError),
    /// Nothing valid was found under the target.
    #[error("no valid item found under {0}")]
    NotFound(NodeId),
    /// No node accepted the put or announce, or as many refused it with 301/302 as stored it.
    #[error("not stored ({asked} asked){}", fmt_errors(.errors))]
    NotStored {
        /// Nodes asked.
        asked: usize,
        /// Their error answers (code, message).
        errors: Vec<(i64, String)>,
    },
    /// The bootstrap nodes could not be found or did not answer.
    #[error("no bootstrap: {reason}")]
    NoBootstrap {
        /// What failed (names the address).
        reason: String,
    },
    /// The engine refused the settings.
    #[error(transparent)]
    Config(#[from] kad_core::ConfigError),
    /// The node could not start.
    #[error(transparent)]
    Spawn(#[from] kad_core::SpawnError),
    /// The operating system's random source failed.
    #[error("the OS random source failed: {0}")]
    Random(getrandom::Error),
    /// A peer's answer is not valid bencode.
    #[error("unreadable answer: {0}")]
    BadAnswer(#[from] bencode::BencodeError),
    /// Another plugin registered under the `mainline` namespace answered.
    #[error("the mainline plugin answered a {got}")]
    UnexpectedAnswer {
        /// The type received.
        got: &'static str,
    },
}

fn fmt_errors(errors: &[(i64, String)]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let mut seen: Vec<(&(i64, String), usize)> = Vec::new();
    for e in errors {
        match seen.iter_mut().find(|(x, _)| *x == e) {
            Some((_, n)) => *n += 1,
            None => seen.push((e, 1)),
        }
    }
    let list: Vec<String> = seen
        .iter()
        .map(|((c, m), n)| format!("{c} {m} (x{n})"))
        .collect();
    format!(": {}", list.join("; "))
}

/// The result of a put or announce.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct MainlinePutOutcome {
    /// The item's target (or the info-hash).
    pub target: NodeId,
    /// Nodes that acknowledged it.
    pub stored_on: usize,
    /// Nodes it was sent to (the K closest that gave a write token).
    pub asked: usize,
    /// Error answers (code, message), e.g. 301 CAS mismatch, 302 sequence number too low.
    pub errors: Vec<(i64, String)>,
    /// Nodes that did not answer.
    pub timeouts: usize,
    /// Time from the start of the lookup to the last answer.
    pub elapsed: Duration,
}

/// The result of a successful get.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct MainlineGetOutcome {
    /// The target.
    pub target: NodeId,
    /// The bencoded value, exactly as received (and verified).
    pub v: Bytes,
    /// The value decoded, when `v` is a bencoded byte string (what items usually hold, e.g.
    /// `12:Hello World!` gives `Hello World!`); `None` for an integer, list or dictionary.
    pub value: Option<Bytes>,
    /// Mutable items: the highest valid sequence number.
    pub seq: i64,
    /// Mutable items: the public key.
    pub pubkey: Option<[u8; 32]>,
    /// Mutable items: the signature.
    #[serde(skip)]
    pub sig: Option<[u8; 64]>,
    /// Valid values received.
    pub values: usize,
    /// Values received that failed verification and were discarded.
    pub rejected: usize,
    /// Nodes that answered the lookup.
    pub answered: usize,
    /// Time to the result.
    pub elapsed: Duration,
}

/// The answer of one node to `sample_infohashes` (BEP51).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Samples {
    /// Seconds before the sample changes.
    pub interval: i64,
    /// Info-hashes the node stores.
    pub num: i64,
    /// A sample of them.
    pub samples: Vec<NodeId>,
    /// Nodes near the target.
    pub nodes: usize,
}

/// Counters of a node.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct MainlineStats {
    /// The engine's counters.
    pub engine: Stats,
    /// Routing-table size.
    pub routing: usize,
    /// Dropped by the per-IP limiter.
    pub rate_limited: u64,
    /// Replies not sent for the reply budget.
    pub budget_dropped: u64,
    /// Queries from ids that fail BEP42 for their address.
    pub insecure_ids: u64,
    /// Items stored or refreshed by peers.
    pub puts_stored: u64,
    /// Peers' puts refused.
    pub puts_refused: u64,
    /// Peers announced to us.
    pub announces: u64,
    /// Our external IP as voted by responders, once known.
    pub external_ip: Option<IpAddr>,
}

/// A running Mainline node: a cheap `Clone` handle.
#[derive(Clone, Debug)]
pub struct Mainline {
    dht: Dht,
    shared: Arc<KrpcShared>,
    local: SocketAddr,
    bootstrap: Vec<SocketAddr>,
}

impl Mainline {
    /// Binds the UDP socket and starts the node (it answers queries at once unless read-only).
    pub async fn spawn(cfg: MainlineConfig) -> Result<Self, MainlineError> {
        let udp = UdpTransport::bind(cfg.bind)
            .await
            .map_err(|source| MainlineError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let local = udp.socket_addr();
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(MainlineError::Random)?;
        let id = match (cfg.node_id, cfg.public_ip) {
            (Some(id), _) => id,
            (None, Some(ip)) => {
                let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::from_seed(seed);
                let r = rand::Rng::random::<u8>(&mut rng);
                bep42::secure_id(ip, r, &mut rng)
            }
            (None, None) => NodeId::from_bytes(seed[..20].try_into().unwrap_or([0; 20])),
        };
        let mut config = Config::default();
        config.set_k(K).and_then(|c| c.set_alpha(cfg.alpha))?;
        config.request_timeout = cfg.request_timeout;
        // Deployed Mainline is full of departed nodes: retry a silent node once, not four times,
        // and start from a modest RTT guess (it adapts with the first answers).
        config.max_attempts = 2;
        // Stores, pings and calls are sent twice before a node counts as silent: once covers a
        // lost datagram, more would wait on departed nodes.
        config.retransmits = 1;
        config.lookup_skip_silent_head = true;
        config.initial_rtt = Duration::from_millis(100);
        config.read_only = cfg.read_only;
        config.answer_requests = !cfg.read_only;
        config.accept_id_change = true;
        config.amplification_guard = false;
        // The public DHT: at most 2 contacts of one /24 (or /64) per bucket and per lookup.
        config.subnet_limit = 2;
        // The KRPC codec limits each IP itself (`KrpcLimits::per_ip_rate`), before parsing too.
        config.per_ip_rate = 0;
        config.rng_seed = Some(seed);
        let shared = KrpcShared::new(cfg.limits.clone());
        let builder = Node::builder(config)
            .identity(Arc::new(StaticIdentity(id)))
            .addrs(vec![PeerAddr::Udp(local)])
            .codec(Box::new(KrpcCodec::new(shared.clone())))
            .plugin(Box::new(Bep44Plugin::new(
                shared.clone(),
                cfg.store.clone(),
            )));
        let dht = Dht::spawn(builder, vec![Arc::new(udp)])?;
        Ok(Self {
            dht,
            shared,
            local,
            bootstrap: cfg.bootstrap,
        })
    }

    /// Joins the network through the configured bootstrap nodes (pings them, then looks up our
    /// own id). Returns how many nodes the routing table holds.
    pub async fn bootstrap(&self) -> Result<usize, MainlineError> {
        let seeds = self.bootstrap.iter().map(|a| PeerAddr::Udp(*a)).collect();
        let out = self.dht.bootstrap(seeds).await?;
        Ok(out.closest.len())
    }

    /// Joins quickly, for one-shot clients: pings the bootstrap nodes at once and keeps those
    /// that answer; the first lookup then walks from them (no lookup of our own id). Returns how
    /// many answered.
    pub async fn connect(&self) -> Result<usize, MainlineError> {
        let mut pings = tokio::task::JoinSet::new();
        for a in &self.bootstrap {
            let (dht, addr) = (self.dht.clone(), PeerAddr::Udp(*a));
            pings.spawn(async move { dht.ping(addr).await });
        }
        let mut n = 0;
        while let Some(r) = pings.join_next().await {
            if let Ok(Ok(p)) = r {
                self.dht.add_contact(p.contact).await?;
                n += 1;
            }
        }
        if n == 0 && !self.bootstrap.is_empty() {
            return Err(MainlineError::Dht(DhtError::Query(
                kad_core::QueryError::NoPeers,
            )));
        }
        Ok(n)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.dht.id()
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The kad-core handle underneath (events, stats, find_node, ping).
    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    /// Our external IP as most responders' `ip` fields report it (BEP42), once three agree.
    pub fn external_ip(&self) -> Option<IpAddr> {
        self.shared.external_ip()
    }

    /// Whether our id is a valid BEP42 id for the voted external IP (true while unknown).
    pub fn id_is_secure(&self) -> bool {
        self.external_ip()
            .is_none_or(|ip| bep42::is_secure(&self.id(), ip))
    }

    async fn run(&self, cmd: Cmd) -> Result<CmdResult, MainlineError> {
        let out = self
            .dht
            .command("mainline", kad_core::PluginData::new(cmd))
            .await?;
        out.downcast::<CmdResult>()
            .map(|r| CmdResult::clone(&r))
            .map_err(|other| MainlineError::UnexpectedAnswer {
                got: other.type_name(),
            })
    }

    fn put_outcome(
        target: NodeId,
        r: CmdResult,
        started: Instant,
    ) -> Result<MainlinePutOutcome, MainlineError> {
        // A put that most answering nodes refuse with 301/302 lost a race (another writer
        // got there first): report it, even if a node that held nothing accepted it.
        let races = r
            .errors
            .iter()
            .filter(|(c, _)| matches!(*c, 301 | 302))
            .count();
        if r.stored_on == 0 || races >= r.stored_on {
            return Err(MainlineError::NotStored {
                asked: r.asked,
                errors: r.errors,
            });
        }
        Ok(MainlinePutOutcome {
            target,
            stored_on: r.stored_on,
            asked: r.asked,
            errors: r.errors,
            timeouts: r.timeouts,
            elapsed: started.elapsed(),
        })
    }

    /// Stores an immutable item (its bencoded value) at the K closest nodes to SHA-1(v).
    pub async fn put_immutable(
        &self,
        v_bencoded: &[u8],
    ) -> Result<MainlinePutOutcome, MainlineError> {
        item::check_value(v_bencoded)?;
        let started = Instant::now();
        let target = item::immutable_target(v_bencoded);
        let r = self
            .run(Cmd::Put {
                v: Bytes::copy_from_slice(v_bencoded),
                mutable: None,
            })
            .await?;
        Self::put_outcome(target, r, started)
    }

    /// Stores a signed mutable item at the K closest nodes to its target; `cas` is sent to the
    /// nodes that hold the item (they refuse with 301 if their seq differs).
    pub async fn put_mutable(
        &self,
        it: &MutableItem,
        cas: Option<i64>,
    ) -> Result<MainlinePutOutcome, MainlineError> {
        item::check_value(&it.v)?;
        let started = Instant::now();
        let r = self
            .run(Cmd::Put {
                v: it.v.clone(),
                mutable: Some((it.clone(), cas)),
            })
            .await?;
        Self::put_outcome(it.target(), r, started)
    }

    fn get_outcome(
        target: NodeId,
        r: CmdResult,
        started: Instant,
    ) -> Result<MainlineGetOutcome, MainlineError> {
        let f = r.found.ok_or(MainlineError::NotFound(target))?;
        let value = bencode::parse(&f.v)
            .ok()
            .and_then(|v| v.bytes().map(Bytes::copy_from_slice));
        Ok(MainlineGetOutcome {
            target,
            value,
            v: f.v,
            seq: f.seq.unwrap_or(0),
            pubkey: f.k,
            sig: f.sig,
            values: r.values,
            rejected: r.rejected,
            answered: r.answered,
            elapsed: started.elapsed(),
        })
    }

    /// Gets an immutable item: the first value that hashes to `target` (others are discarded).
    pub async fn get_immutable(&self, target: NodeId) -> Result<MainlineGetOutcome, MainlineError> {
        let started = Instant::now();
        let r = self
            .run(Cmd::Get {
                target,
                mutable: None,
                seq: None,
            })
            .await?;
        Self::get_outcome(target, r, started)
    }

    /// Gets the mutable item of `pubkey` and `salt` with the highest valid seq, after the whole
    /// lookup. With `seq`, nodes send the value only if theirs is newer.
    pub async fn get_mutable(
        &self,
        pubkey: [u8; 32],
        salt: &[u8],
        seq: Option<i64>,
    ) -> Result<MainlineGetOutcome, MainlineError> {
        if salt.len() > item::MAX_SALT {
            return Err(item::ItemError::SaltTooLarge { len: salt.len() }.into());
        }
        let started = Instant::now();
        let target = item::mutable_target(&pubkey, salt);
        let r = self
            .run(Cmd::Get {
                target,
                mutable: Some((pubkey, Bytes::copy_from_slice(salt))),
                seq,
            })
            .await?;
        Self::get_outcome(target, r, started)
    }

    /// Peers announced for `info_hash` (BEP5 `get_peers` lookup).
    pub async fn get_peers(&self, info_hash: NodeId) -> Result<Vec<SocketAddr>, MainlineError> {
        let r = self.run(Cmd::GetPeers { info_hash }).await?;
        Ok(r.peers)
    }

    /// Announces that we have `info_hash` on `port` (`None`: the UDP source port, `implied_port`).
    pub async fn announce_peer(
        &self,
        info_hash: NodeId,
        port: Option<u16>,
    ) -> Result<MainlinePutOutcome, MainlineError> {
        let started = Instant::now();
        let r = self
            .run(Cmd::Announce {
                info_hash,
                port: port.unwrap_or(self.local.port()),
                implied_port: port.is_none(),
            })
            .await?;
        Self::put_outcome(info_hash, r, started)
    }

    /// Asks one node for a sample of the info-hashes it stores (BEP51).
    pub async fn sample_infohashes(
        &self,
        node: Contact,
        target: NodeId,
    ) -> Result<Samples, MainlineError> {
        let mut p = bencode::Dict::new();
        p.bytes(b"target", target.as_bytes());
        let raw = self
            .dht
            .call(node, "mainline.sample_infohashes", Bytes::from(p.finish()))
            .await?;
        let r = bencode::parse(&raw)?;
        let samples = r
            .get(b"samples")
            .and_then(bencode::Val::bytes)
            .unwrap_or_default();
        Ok(Samples {
            interval: r.get(b"interval").and_then(bencode::Val::int).unwrap_or(0),
            num: r.get(b"num").and_then(bencode::Val::int).unwrap_or(0),
            samples: samples
                .chunks_exact(20)
                .filter_map(NodeId::from_slice)
                .collect(),
            nodes: r
                .get(b"nodes")
                .and_then(bencode::Val::bytes)
                .map_or(0, |b| b.len() / 26),
        })
    }

    /// Counters of the engine, the codec and the stores.
    pub async fn stats(&self) -> Result<MainlineStats, MainlineError> {
        let engine = self.dht.stats().await?;
        let routing = self.dht.snapshot().await?.contacts.len();
        let s = &self.shared;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Ok(MainlineStats {
            engine,
            routing,
            rate_limited: g(&s.rate_limited),
            budget_dropped: g(&s.budget_dropped),
            insecure_ids: g(&s.insecure_ids),
            puts_stored: g(&s.puts_stored),
            puts_refused: g(&s.puts_refused),
            announces: g(&s.announces),
            external_ip: s.external_ip(),
        })
    }

    /// Stops the node.
    pub async fn shutdown(&self) {
        self.dht.shutdown().await;
    }
}
