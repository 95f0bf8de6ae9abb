//! [`NativeNode`]: a node of the native network (signed JSON-RPC over UDP, QUIC and WebSocket),
//! built in one expression.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kad_core::{
    Config, Dht, DhtError, LookupOutcome, NativeCodec, NativeIdentity, Node, NodeId, PeerAddr,
    Plugin, RecordStore, RecordValidator, StoreLimits, Transport,
};

use crate::addr::{AddrArg, SocketArg};
use crate::error::BuildError;
use crate::keys::{fresh_identity_with_work, load_or_create_identity};
use crate::transports::{self, Transports, WsTls};

/// Buckets a node refreshes after joining ([`Config::bootstrap_refresh`]).
const BOOTSTRAP_REFRESH: usize = 16;

/// Builds a [`NativeNode`]. Every setting has a default; [`build`](Self::build) checks them
/// all and names the one at fault.
///
/// ```no_run
/// # async fn run() -> Result<(), kad::BuildError> {
/// let node = kad::NativeNode::builder()
///     .key_file("node.key")
///     .udp("0.0.0.0:4000")
///     .quic("0.0.0.0:4001")
///     .bootstrap(["udp://192.0.2.7:4000"])
///     .pubsub()
///     .build()
///     .await?;
/// # let _ = node; Ok(()) }
/// ```
#[must_use]
pub struct NativeNodeBuilder {
    identity: Option<Arc<NativeIdentity>>,
    key_file: Option<PathBuf>,
    id_work: u32,
    listen: Vec<PeerAddr>,
    advertise: Vec<PeerAddr>,
    bootstrap: Vec<PeerAddr>,
    dial: Vec<PeerAddr>,
    client: bool,
    config: Config,
    tls: WsTls,
    extra: Vec<Arc<dyn Transport>>,
    plugins: Vec<Box<dyn Plugin>>,
    #[cfg(feature = "pubsub")]
    pubsub: Option<kad_plugin_pubsub::PubsubConfig>,
    #[cfg(feature = "nat")]
    nat: Option<(
        kad_plugin_nat::NatConfig,
        Option<kad_plugin_nat::UpnpConfig>,
    )>,
    #[cfg(feature = "storage")]
    storage: Option<Option<PathBuf>>,
    #[cfg(feature = "storage")]
    pins: Option<(Vec<NodeId>, usize)>,
    store_limits: Option<StoreLimits>,
    store: Option<Box<dyn RecordStore>>,
    validator: Option<Arc<dyn RecordValidator>>,
    join_timeout: Duration,
    rejoin: bool,
    /// The first setting found invalid, reported by `build`.
    error: Option<BuildError>,
}

impl std::fmt::Debug for NativeNodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeNodeBuilder")
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Default for NativeNodeBuilder {
    fn default() -> Self {
        Self {
            identity: None,
            key_file: None,
            id_work: 0,
            listen: Vec::new(),
            advertise: Vec::new(),
            bootstrap: Vec::new(),
            dial: Vec::new(),
            client: false,
            config: {
                let mut c = Config::default();
                c.bootstrap_refresh = BOOTSTRAP_REFRESH;
                c
            },
            tls: WsTls::default(),
            extra: Vec::new(),
            plugins: Vec::new(),
            #[cfg(feature = "pubsub")]
            pubsub: None,
            #[cfg(feature = "nat")]
            nat: None,
            #[cfg(feature = "storage")]
            storage: None,
            #[cfg(feature = "storage")]
            pins: None,
            store_limits: None,
            store: None,
            validator: None,
            join_timeout: Duration::from_secs(30),
            rejoin: true,
            error: None,
        }
    }
}

impl NativeNodeBuilder {
    fn fail(mut self, e: BuildError) -> Self {
        self.error.get_or_insert(e);
        self
    }

    fn push_listen(mut self, r: Result<PeerAddr, BuildError>) -> Self {
        match r {
            Ok(a) => {
                self.listen.push(a);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// The node's identity (its secp256k1 key; the node id is its hash). Default: the key file
    /// if one is set, else a fresh key.
    pub fn identity(mut self, identity: impl Into<Arc<NativeIdentity>>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// Keeps the identity in this file (64 hex digits, created with mode 0600 when missing), so
    /// the node keeps its id across restarts. With [`storage`](Self::storage) the default is
    /// `DIR/node.key`.
    pub fn key_file(mut self, path: impl AsRef<Path>) -> Self {
        self.key_file = Some(path.as_ref().to_owned());
        self
    }

    /// Sybil defence (S/Kademlia's static puzzle): peers' ids must have `bits` leading zero bits
    /// of SHA-256 (0 to 32), and a created key gets that much work (about 2^bits key
    /// generations). Every node of the network must use the same value. Default 0.
    pub fn id_work(mut self, bits: u32) -> Self {
        if bits > 32 {
            return self.fail(BuildError::Field {
                field: "id_work",
                value: bits.to_string(),
                reason: "out of range: 0 to 32 bits".into(),
            });
        }
        self.id_work = bits;
        self
    }

    /// Listens on UDP at `addr` (e.g. `"127.0.0.1:0"`; port 0 picks a free one). Messages up to
    /// one datagram: values up to 45,000 bytes.
    #[cfg(feature = "udp")]
    pub fn udp(self, addr: impl SocketArg) -> Self {
        let r = addr.socket("udp").map(PeerAddr::Udp);
        self.push_listen(r)
    }

    /// Listens on QUIC at `addr`, its TLS certificate made from the node key. Messages up to
    /// 1 MiB: values up to about 750 KB.
    #[cfg(feature = "quic")]
    pub fn quic(self, addr: impl SocketArg) -> Self {
        let r = addr.socket("quic").map(PeerAddr::Quic);
        self.push_listen(r)
    }

    /// Listens on WebSocket at `url`: `ws://IP:PORT/PATH`, or `wss://IP:PORT/PATH` with
    /// [`tls_pem`](Self::tls_pem).
    #[cfg(feature = "ws")]
    pub fn ws(self, url: impl AddrArg) -> Self {
        let r = url.addr("ws").and_then(|a| match a {
            PeerAddr::Ws(_) => Ok(a),
            other => Err(BuildError::Field {
                field: "ws",
                value: other.to_string(),
                reason: "expected ws://IP:PORT/PATH or wss://IP:PORT/PATH".into(),
            }),
        });
        self.push_listen(r)
    }

    /// Listens on an address of any kind (`udp://`, `quic://`, `ws://`, `wss://`).
    pub fn listen(self, addr: impl AddrArg) -> Self {
        let r = addr.addr("listen");
        self.push_listen(r)
    }

    /// Addresses to tell peers instead of the bound ones (e.g. the public address of a node
    /// listening on `0.0.0.0`, or `wss://example.org/kad` behind a reverse proxy).
    pub fn advertise<A: AddrArg>(mut self, addrs: impl IntoIterator<Item = A>) -> Self {
        match parse_all("advertise", addrs) {
            Ok(v) => {
                self.advertise.extend(v);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Joins the network through these nodes when built (see
    /// [`join_timeout`](Self::join_timeout)).
    pub fn bootstrap<A: AddrArg>(mut self, addrs: impl IntoIterator<Item = A>) -> Self {
        match parse_all("bootstrap", addrs) {
            Ok(v) => {
                self.bootstrap.extend(v);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// How long [`build`](Self::build) keeps trying to join (each bootstrap node pinged up to
    /// four times; a join that found nobody is tried again 1 s, 2 s, 4 s... later). Default
    /// 30 s.
    pub fn join_timeout(mut self, d: Duration) -> Self {
        if d.is_zero() || d > Duration::from_secs(3600) {
            return self.fail(BuildError::Field {
                field: "join_timeout",
                value: format!("{d:?}"),
                reason: "out of range: more than 0, at most 3600 s".into(),
            });
        }
        self.join_timeout = d;
        self
    }

    /// For a [`client`](Self::client) without listen addresses: open what it takes to reach
    /// these addresses, without joining through them (the application joins, e.g. with
    /// [`NativeNode::join`]).
    pub fn dial<A: AddrArg>(mut self, addrs: impl IntoIterator<Item = A>) -> Self {
        match parse_all("dial", addrs) {
            Ok(v) => {
                self.dial.extend(v);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Whether a node restarted from its data dir without bootstrap addresses rejoins through
    /// the contacts it saved, in the background (default true). Off, the application joins
    /// through [`NativeNode::warm_seeds`] itself.
    pub fn rejoin_saved(mut self, on: bool) -> Self {
        self.rejoin = on;
        self
    }

    /// A client: it reads and writes but never serves (peers do not add it to their tables).
    /// Without listen addresses or a [`transport`](Self::transport) of its own it opens what it
    /// needs to reach its bootstrap nodes (an ephemeral UDP socket, a QUIC endpoint, a
    /// dial-only WebSocket transport).
    pub fn client(mut self) -> Self {
        self.client = true;
        self
    }

    /// The engine's settings (k, alpha, timeouts, limits, defences). The value limit and
    /// `read_only` are set by the builder from the transports and [`client`](Self::client).
    /// The builder starts from [`Config::default`] with
    /// [`bootstrap_refresh`](Config::bootstrap_refresh) 16 (a node fills its table across the
    /// id space when it joins; a client never refreshes).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Changes the engine's settings in place (see [`config`](Self::config)).
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Certificate chain and private key (PEM) served on `wss://` listen addresses.
    pub fn tls_pem(mut self, cert_chain: Vec<u8>, key: Vec<u8>) -> Self {
        self.tls.server = Some((cert_chain, key));
        self
    }

    /// Extra certificates (PEM) trusted when dialing `wss://`, on top of the public web roots
    /// (e.g. a self-signed server's own certificate).
    pub fn trust_pem(mut self, pem: Vec<u8>) -> Self {
        self.tls.trusted.push(pem);
        self
    }

    /// Adds a transport built by the application (e.g. one of its own kind).
    pub fn transport(mut self, t: Arc<dyn Transport>) -> Self {
        self.extra.push(t);
        self
    }

    /// A plugin of the application's own (its own RPC methods; see
    /// [`Plugin`](kad_core::Plugin)). Plugins run in the order given, after the built-in ones
    /// (pub/sub, NAT, storage).
    pub fn plugin(mut self, plugin: Box<dyn Plugin>) -> Self {
        self.plugins.push(plugin);
        self
    }

    /// Topics and sensor subscriptions: the node serves as a rendezvous node (unless a client)
    /// and gets a [`Pubsub`](crate::Pubsub) handle ([`NativeNode::pubsub`]).
    #[cfg(feature = "pubsub")]
    pub fn pubsub(self) -> Self {
        self.pubsub_config(kad_plugin_pubsub::PubsubConfig::default())
    }

    /// [`pubsub`](Self::pubsub) with settings.
    #[cfg(feature = "pubsub")]
    pub fn pubsub_config(mut self, config: kad_plugin_pubsub::PubsubConfig) -> Self {
        self.pubsub = Some(config);
        self
    }

    /// External address votes and reachability checks (see
    /// [`kad_plugin_nat::status`]); with `upnp`, port mappings on the local gateway too. With
    /// UPnP or `config.serve_probes`, the node runs the NAT runtime ([`NativeNode::nat`]) that
    /// sends probes and keeps the mappings.
    #[cfg(feature = "nat")]
    pub fn nat(
        mut self,
        config: kad_plugin_nat::NatConfig,
        upnp: Option<kad_plugin_nat::UpnpConfig>,
    ) -> Self {
        self.nat = Some((config, upnp));
        self
    }

    /// Persistent storage in `dir`: records in `DIR/records.redb` (each STORE on disk before it
    /// is acknowledged; expiry in wall-clock time, so it holds across restarts), the routing
    /// table in `DIR` (saved every minute and at shutdown; a restart rejoins through it), the
    /// key in `DIR/node.key` unless one is given. The node serves file chunks
    /// (`storage.FETCH`) and accepts content-addressed records only, unless
    /// [`validator`](Self::validator) says otherwise. Store limits default to 1 GiB.
    #[cfg(feature = "storage")]
    pub fn storage(mut self, dir: impl AsRef<Path>) -> Self {
        self.storage = Some(Some(dir.as_ref().to_owned()));
        self
    }

    /// Like [`storage`](Self::storage), with records in memory (limits default to 64 MiB).
    #[cfg(feature = "storage")]
    pub fn storage_in_memory(mut self) -> Self {
        self.storage = Some(None);
        self
    }

    /// With [`storage`](Self::storage): keeps records for the nodes `from` (its user's clients,
    /// e.g. `kad put --pin-to`), up to `max_bytes` in all (`storage.PIN`, see
    /// [`StoragePlugin::allow_pins`](kad_plugin_storage::StoragePlugin::allow_pins)). A pinned
    /// record is republished before it expires and, with a data dir, across restarts, so a file
    /// outlives its TTL and the client that put it.
    #[cfg(feature = "storage")]
    pub fn allow_pins(mut self, from: impl IntoIterator<Item = NodeId>, max_bytes: usize) -> Self {
        self.pins = Some((from.into_iter().collect(), max_bytes));
        self
    }

    /// How much the node's record store holds.
    pub fn store_limits(mut self, limits: StoreLimits) -> Self {
        self.store_limits = Some(limits);
        self
    }

    /// A record store of the application's own (instead of the in-memory or storage one).
    pub fn store(mut self, store: Box<dyn RecordStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Which records the node accepts and returns. Default: any record, or content-addressed
    /// records only with [`storage`](Self::storage).
    pub fn validator(mut self, validator: Arc<dyn RecordValidator>) -> Self {
        self.validator = Some(validator);
        self
    }

    fn identity_now(&self) -> Result<(Arc<NativeIdentity>, bool), BuildError> {
        if let Some(id) = &self.identity {
            return Ok((id.clone(), false));
        }
        #[cfg(feature = "storage")]
        let default_file = self
            .storage
            .as_ref()
            .and_then(|d| d.as_ref().map(|d| d.join("node.key")));
        #[cfg(not(feature = "storage"))]
        let default_file: Option<PathBuf> = None;
        match self.key_file.clone().or(default_file) {
            Some(p) => {
                let (id, created) = load_or_create_identity(&p, self.id_work)?;
                Ok((Arc::new(id), created))
            }
            None => Ok((Arc::new(fresh_identity_with_work(self.id_work)?), false)),
        }
    }

    /// Opens the key, the store and the transports, spawns the node on the current tokio
    /// runtime and, with [`bootstrap`](Self::bootstrap) addresses, joins through them.
    pub async fn build(mut self) -> Result<NativeNode, BuildError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        #[cfg(feature = "storage")]
        if let Some(Some(dir)) = &self.storage {
            std::fs::create_dir_all(dir).map_err(|e| BuildError::Store {
                dir: dir.clone(),
                source: Box::new(e),
            })?;
        }
        let (identity, key_created) = self.identity_now()?;
        let targets: Vec<PeerAddr> = self.bootstrap.iter().chain(&self.dial).cloned().collect();
        let mut t = if self.listen.is_empty()
            && self.extra.is_empty()
            && self.client
            && !targets.is_empty()
        {
            transports::dialers(&targets, &identity, &self.tls).await?
        } else {
            transports::listen(&self.listen, &identity, &self.tls).await?
        };
        for x in std::mem::take(&mut self.extra) {
            t.push(x);
        }
        if t.all().is_empty() {
            return Err(BuildError::NoTransport);
        }
        let max_message = t.max_message_len();
        let max_value = kad_core::max_native_value_for(max_message);
        let mut config = self.config;
        config.max_value_len = max_value;
        config.read_only = self.client;
        if self.client {
            config.bootstrap_refresh = 0;
        }

        #[cfg_attr(not(feature = "storage"), allow(unused_mut))]
        let mut store = self.store.take();
        #[cfg_attr(not(feature = "storage"), allow(unused_mut))]
        let mut validator = self.validator.take();
        #[cfg(feature = "storage")]
        let mut storage_state = None;
        #[cfg(feature = "storage")]
        if let Some(dir) = &self.storage {
            validator.get_or_insert_with(|| Arc::new(kad_plugin_storage::ContentValidator));
            if store.is_none() {
                if let Some(dir) = dir {
                    let limits = self.store_limits.clone().unwrap_or_else(|| {
                        let mut l = StoreLimits::default();
                        l.max_bytes = 1 << 30;
                        l.max_publisher_bytes = 1 << 28;
                        l
                    });
                    let path = dir.join("records.redb");
                    let s = kad_plugin_storage::RedbStore::open(
                        &path,
                        identity.id(),
                        limits,
                        kad_core::SystemClock::now_ms(),
                    )
                    .map_err(|e| BuildError::Store {
                        dir: dir.clone(),
                        source: Box::new(e),
                    })?;
                    storage_state = Some(StorageState {
                        dir: dir.clone(),
                        opened: s.open_stats(),
                        routing: s.routing(),
                    });
                    store = Some(Box::new(s));
                }
            }
        }
        // Without a store of its own, the engine keeps records in memory within
        // `Config::store_limits`.
        if let Some(l) = self.store_limits.clone() {
            config.store_limits = l;
        }

        let mut builder = Node::builder(config)
            .identity(identity.clone())
            .codec(Box::new(
                NativeCodec::new(identity.clone())
                    .max_len(max_message)
                    .min_id_work(self.id_work),
            ));
        if !self.advertise.is_empty() {
            builder = builder.addrs(self.advertise.clone());
        }
        if let Some(s) = store {
            builder = builder.store(s);
        }
        if let Some(v) = validator {
            builder = builder.validator(v);
        }
        #[cfg(feature = "pubsub")]
        if let Some(c) = self.pubsub.clone() {
            builder = builder.plugin(Box::new(kad_plugin_pubsub::PubsubPlugin::new(
                c,
                Some(identity.clone()),
            )));
        }
        #[cfg(feature = "nat")]
        if let Some((c, _)) = &self.nat {
            builder = builder.plugin(Box::new(kad_plugin_nat::NatPlugin::new(c.clone())));
        }
        #[cfg(feature = "storage")]
        if self.storage.is_some() {
            let mut p = kad_plugin_storage::StoragePlugin::new(max_value);
            if let Some((from, max)) = self.pins.take() {
                p = p.allow_pins(from, max);
            }
            builder = builder.plugin(Box::new(p));
        }
        for p in std::mem::take(&mut self.plugins) {
            builder = builder.plugin(p);
        }
        let dht = Dht::spawn(builder, t.all().to_vec())?;

        #[cfg(feature = "pubsub")]
        let pubsub = match self.pubsub {
            Some(_) => Some(
                kad_plugin_pubsub::Pubsub::attach(dht.clone())
                    .await
                    .map_err(|e| BuildError::Field {
                        field: "pubsub",
                        value: String::new(),
                        reason: e.to_string(),
                    })?,
            ),
            None => None,
        };
        // The runtime sends the probes other nodes' checks ask for, and keeps UPnP mappings:
        // without either there is nothing for it to do (the plugin votes on its own).
        #[cfg(feature = "nat")]
        let nat = self
            .nat
            .take()
            .filter(|(c, upnp)| c.serve_probes || upnp.is_some())
            .map(|(_, upnp)| {
                let upnp = upnp.map(|mut u| {
                    // Map the ports the transports listen on (not the advertised ones).
                    u.listen = t.bound();
                    u
                });
                kad_plugin_nat::Nat::spawn(dht.clone(), identity.clone(), upnp)
            });

        let mut node = NativeNode {
            dht,
            identity,
            transports: t,
            key_created,
            joined: None,
            restored_contacts: 0,
            warm_seeds: Vec::new(),
            #[cfg(feature = "pubsub")]
            pubsub,
            #[cfg(feature = "nat")]
            nat,
            #[cfg(feature = "storage")]
            storage: storage_state.map(Arc::new),
            saver: None,
        };
        node.restore_routing(self.rejoin && self.bootstrap.is_empty())
            .await?;
        if !self.bootstrap.is_empty() {
            let o = node.join(&self.bootstrap, self.join_timeout).await?;
            node.joined = Some(o);
        }
        Ok(node)
    }
}

/// Every address of `addrs`; the first bad one is an error naming `field`.
fn parse_all<A: AddrArg>(
    field: &'static str,
    addrs: impl IntoIterator<Item = A>,
) -> Result<Vec<PeerAddr>, BuildError> {
    addrs.into_iter().map(|a| a.addr(field)).collect()
}

#[cfg(feature = "storage")]
#[derive(Debug)]
struct StorageState {
    dir: PathBuf,
    opened: kad_plugin_storage::OpenStats,
    routing: kad_plugin_storage::RoutingFile,
}

/// A running node of the native network: a [`Dht`] handle (it derefs to one: `put`, `get`,
/// `ping`, `find_node`, `events`, `stats`...), with its transports, and the pub/sub, NAT and
/// storage parts its builder enabled.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use kad::{Bytes, NativeNode, content_key};
///
/// let a = NativeNode::builder().udp("127.0.0.1:0").build().await?;
/// let b = NativeNode::builder().udp("127.0.0.1:0").bootstrap([a.addr()]).build().await?;
/// let value = Bytes::from_static(b"hello");
/// b.put(content_key(&value), value.clone()).await?;
/// assert_eq!(a.get(content_key(&value)).await?.record.value, value);
/// b.shutdown().await;
/// a.shutdown().await;
/// # Ok(()) }
/// ```
pub struct NativeNode {
    dht: Dht,
    identity: Arc<NativeIdentity>,
    transports: Transports,
    key_created: bool,
    joined: Option<LookupOutcome>,
    restored_contacts: usize,
    warm_seeds: Vec<PeerAddr>,
    #[cfg(feature = "pubsub")]
    pubsub: Option<kad_plugin_pubsub::Pubsub>,
    #[cfg(feature = "nat")]
    nat: Option<kad_plugin_nat::Nat>,
    #[cfg(feature = "storage")]
    storage: Option<Arc<StorageState>>,
    saver: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for NativeNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeNode")
            .field("contact", self.dht.contact())
            .field("transports", &self.transports)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for NativeNode {
    type Target = Dht;
    fn deref(&self) -> &Dht {
        &self.dht
    }
}

impl NativeNode {
    /// A builder with every setting at its default.
    pub fn builder() -> NativeNodeBuilder {
        NativeNodeBuilder::default()
    }

    /// The engine's handle (cheap to clone).
    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    /// The node's key.
    pub fn identity(&self) -> &Arc<NativeIdentity> {
        &self.identity
    }

    /// The first address the node advertises (what another node bootstraps from). A node with
    /// none (a client on a dial-only WebSocket transport) has `mem://0`, which no transport
    /// reaches; [`contact`](Dht::contact) lists every address.
    pub fn addr(&self) -> PeerAddr {
        self.dht
            .contact()
            .addrs
            .first()
            .cloned()
            .unwrap_or(PeerAddr::Mem(0))
    }

    /// The node's transports.
    pub fn transports(&self) -> &Transports {
        &self.transports
    }

    /// Whether the key file was created by this build.
    pub fn key_created(&self) -> bool {
        self.key_created
    }

    /// How the join through the bootstrap addresses went, when there were any.
    pub fn joined(&self) -> Option<&LookupOutcome> {
        self.joined.as_ref()
    }

    /// Contacts restored from the routing table saved in the data dir.
    pub fn restored_contacts(&self) -> usize {
        self.restored_contacts
    }

    /// Addresses of the first saved contacts (up to 16): what a restart without bootstrap
    /// addresses rejoins through.
    pub fn warm_seeds(&self) -> &[PeerAddr] {
        &self.warm_seeds
    }

    /// The largest record value the node takes (derived from its transports: 45,000 bytes on
    /// UDP, about 750 KB on QUIC or WebSocket).
    pub fn max_value_len(&self) -> usize {
        kad_core::max_native_value_for(self.transports.max_message_len())
    }

    /// The pub/sub handle, when the builder enabled [`pubsub`](NativeNodeBuilder::pubsub).
    #[cfg(feature = "pubsub")]
    pub fn pubsub(&self) -> Result<&kad_plugin_pubsub::Pubsub, crate::NotEnabled> {
        self.pubsub.as_ref().ok_or(crate::NotEnabled {
            what: "pub/sub",
            method: "pubsub()",
        })
    }

    /// The NAT runtime, when the builder enabled [`nat`](NativeNodeBuilder::nat) with UPnP or
    /// `serve_probes`.
    #[cfg(feature = "nat")]
    pub fn nat(&self) -> Result<&kad_plugin_nat::Nat, crate::NotEnabled> {
        self.nat.as_ref().ok_or(crate::NotEnabled {
            what: "NAT runtime",
            method: "nat(config with serve_probes, or Some(upnp))",
        })
    }

    /// Takes the NAT runtime out (to stop it with [`Nat::shutdown`](kad_plugin_nat::Nat::shutdown),
    /// which reports the port mappings it could not remove).
    #[cfg(feature = "nat")]
    pub fn take_nat(&mut self) -> Option<kad_plugin_nat::Nat> {
        self.nat.take()
    }

    /// What opening the persistent store found (records loaded, expired, evicted, corrupt).
    #[cfg(feature = "storage")]
    pub fn store_opened(&self) -> Option<(&Path, &kad_plugin_storage::OpenStats)> {
        self.storage.as_ref().map(|s| (s.dir.as_path(), &s.opened))
    }

    /// Options for [`put_file`](Self::put_file) sized to this node's transports.
    #[cfg(feature = "storage")]
    pub fn put_options(
        &self,
        protection: kad_plugin_storage::Protection,
    ) -> kad_plugin_storage::PutOptions {
        let max_message = self.transports.min_message_len();
        let chunk_size = kad_plugin_storage::default_chunk_size(max_message, protection);
        kad_plugin_storage::PutOptions {
            chunk_size,
            parallel: kad_plugin_storage::put_parallelism(chunk_size),
            max_value_len: kad_core::max_native_value_for(max_message),
            protection,
            ..Default::default()
        }
    }

    /// Options for [`get_file`](Self::get_file) sized to this node's transports.
    #[cfg(feature = "storage")]
    pub fn get_options(&self) -> kad_plugin_storage::GetOptions {
        let max_message = self.transports.min_message_len();
        kad_plugin_storage::GetOptions {
            max_reply_bytes: kad_core::max_native_value_for(max_message),
            // Datagram transports: within the socket's receive buffer.
            max_in_flight_bytes: if max_message <= kad_core::MAX_DATAGRAM {
                1 << 20
            } else {
                usize::MAX
            },
            ..Default::default()
        }
    }

    /// Stores a file, chunked and verified (unencrypted; see
    /// [`put_file_with`](kad_plugin_storage::put_file) for encryption and key shares). Its key
    /// is in the report.
    #[cfg(feature = "storage")]
    pub async fn put_file(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<kad_plugin_storage::PutReport, kad_plugin_storage::TransferError> {
        let opts = self.put_options(kad_plugin_storage::Protection::Plain);
        kad_plugin_storage::put_file(&self.dht, path.as_ref(), &opts, &|_, _| {}).await
    }

    /// Fetches the file stored under `key` into `out`, every chunk verified.
    #[cfg(feature = "storage")]
    pub async fn get_file(
        &self,
        key: kad_core::Key,
        out: impl AsRef<Path>,
    ) -> Result<kad_plugin_storage::GetReport, kad_plugin_storage::TransferError> {
        let opts = self.get_options();
        kad_plugin_storage::get_file(&self.dht, key, None, out.as_ref(), &opts, &|_, _| {}).await
    }

    /// Joins the network through `seeds`: every seed is pinged (each PING sent up to four
    /// times); a join that still found nobody is tried again 1 s, 2 s, 4 s... later, until
    /// `limit`.
    pub async fn join(
        &self,
        seeds: &[PeerAddr],
        limit: Duration,
    ) -> Result<LookupOutcome, BuildError> {
        let t0 = Instant::now();
        let mut wait = Duration::from_secs(1);
        loop {
            let left = limit.saturating_sub(t0.elapsed());
            match tokio::time::timeout(left, self.dht.bootstrap(seeds.to_vec())).await {
                Ok(Ok(o)) => return Ok(o),
                Ok(Err(e)) if t0.elapsed() + wait >= limit => {
                    return Err(BuildError::Join {
                        tried_for: t0.elapsed(),
                        source: e,
                    });
                }
                Ok(Err(_)) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(8));
                }
                Err(_) => {
                    return Err(BuildError::Join {
                        tried_for: t0.elapsed(),
                        source: DhtError::Query(kad_core::QueryError::Timeout),
                    });
                }
            }
        }
    }

    /// Saves the routing table in the data dir (a restart rejoins through it); returns how many
    /// contacts were saved. Without a data dir: 0.
    pub async fn save_routing(&self) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        #[cfg(feature = "storage")]
        if let Some(s) = &self.storage {
            return save_routing(&self.dht, s).await;
        }
        Ok(0)
    }

    /// A warm restart: the contacts saved last time go back into the table and, when no
    /// bootstrap address is given, the node joins through them in the background. Then the
    /// table is saved every minute.
    async fn restore_routing(&mut self, rejoin: bool) -> Result<(), BuildError> {
        let _ = rejoin;
        #[cfg(feature = "storage")]
        if let Some(s) = self.storage.clone() {
            let saved = s.routing.load().map_err(|e| BuildError::Store {
                dir: s.dir.clone(),
                source: Box::new(e),
            })?;
            self.restored_contacts = saved.len();
            let seeds: Vec<PeerAddr> = saved
                .iter()
                .take(16)
                .filter_map(|c| c.addrs.first().cloned())
                .collect();
            for contact in saved {
                let _ = self.dht.add_contact(contact).await;
            }
            self.warm_seeds.clone_from(&seeds);
            if rejoin && !seeds.is_empty() {
                let d = self.dht.clone();
                // The engine also rejoins by itself when its table stays empty.
                tokio::spawn(async move { drop(d.bootstrap(seeds).await) });
            }
            let d = self.dht.clone();
            self.saver = Some(tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                every.tick().await;
                loop {
                    every.tick().await;
                    match save_routing(&d, &s).await {
                        Ok(_) => {}
                        // A failed write leaves the previous file; the next one tries again.
                        Err(e) if e.is::<kad_core::StoreError>() => {}
                        Err(_) => return, // the node has shut down
                    }
                }
            }));
        }
        Ok(())
    }

    /// Stops the node: saves the routing table (with a data dir), removes UPnP mappings, and
    /// returns once the engine has released its store (so the same data dir can be opened
    /// again at once).
    pub async fn shutdown(mut self) {
        if let Some(s) = self.saver.take() {
            s.abort();
        }
        let _ = self.save_routing().await;
        #[cfg(feature = "nat")]
        if let Some(n) = self.nat.take() {
            let _ = n.shutdown().await;
        }
        self.dht.shutdown().await;
    }
}

#[cfg(feature = "storage")]
async fn save_routing(
    dht: &Dht,
    s: &StorageState,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let snap = dht.snapshot().await?;
    s.routing.save(&snap.contacts)?;
    Ok(snap.contacts.len())
}
