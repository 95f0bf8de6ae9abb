//! [`NodeBuilder`]: a node from its parts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;

use super::{Node, Rtt};
use crate::addr::{Contact, PeerAddr};
use crate::codec::{Codec, Identity, StaticIdentity};
use crate::config::{Config, ConfigError};
use crate::id::NodeId;
use crate::plugin::Plugin;
use crate::recent::RecentAddrs;
use crate::record::{AcceptAll, MemoryStore, RecordStore, RecordValidator};
use crate::routing::{RoutingParams, RoutingTable};
use crate::stats::Stats;

/// Builds a [`Node`] from its parts.
pub struct NodeBuilder {
    config: Config,
    identity: Option<Arc<dyn Identity>>,
    addrs: Vec<PeerAddr>,
    codec: Option<Box<dyn Codec>>,
    store: Option<Box<dyn RecordStore>>,
    validator: Option<Arc<dyn RecordValidator>>,
    plugins: Vec<Box<dyn Plugin>>,
}

impl NodeBuilder {
    /// The node's identity (its id, and its key for signing codecs).
    pub fn identity(mut self, identity: Arc<dyn Identity>) -> Self {
        self.identity = Some(identity);
        self
    }
    /// A fixed id with an unsigned identity.
    pub fn id(self, id: NodeId) -> Self {
        self.identity(Arc::new(StaticIdentity(id)))
    }
    /// The addresses this node listens on, advertised in its contact.
    pub fn addrs(mut self, addrs: Vec<PeerAddr>) -> Self {
        self.addrs = addrs;
        self
    }
    /// The wire codec. Default: `PlainCodec` (feature `json`); without that feature a codec
    /// must be given, or [`build`](Self::build) fails with [`ConfigError::NoCodec`].
    pub fn codec(mut self, codec: Box<dyn Codec>) -> Self {
        self.codec = Some(codec);
        self
    }
    /// The record store. Default a [`MemoryStore`] with `Config::store_limits`.
    pub fn store(mut self, store: Box<dyn RecordStore>) -> Self {
        self.store = Some(store);
        self
    }
    /// The record validator. Default [`AcceptAll`].
    pub fn validator(mut self, validator: Arc<dyn RecordValidator>) -> Self {
        self.validator = Some(validator);
        self
    }
    /// Adds a plugin. Plugins are consulted in the order they are added.
    pub fn plugin(mut self, plugin: Box<dyn Plugin>) -> Self {
        self.plugins.push(plugin);
        self
    }
    #[cfg(feature = "tokio")]
    pub(crate) fn addrs_is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
    #[cfg(feature = "tokio")]
    pub(crate) fn has_identity(&self) -> bool {
        self.identity.is_some()
    }
    /// The configuration, to adjust before building.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }
    /// Builds the node at time `now`. Without an identity, the id is drawn from the RNG seed.
    pub fn build(self, now: Instant) -> Result<Node, ConfigError> {
        self.config.validate()?;
        let seed = self.config.rng_seed.unwrap_or_else(|| {
            let mut s = [0u8; 32];
            if let Some(id) = &self.identity {
                s[..20].copy_from_slice(id.node_id().as_bytes());
            }
            s
        });
        let mut rng = ChaCha8Rng::from_seed(seed);
        let identity = self
            .identity
            .unwrap_or_else(|| Arc::new(StaticIdentity(NodeId::random(&mut rng))));
        let id = identity.node_id();
        let params = RoutingParams {
            k: self.config.k,
            replacement_cache: self.config.replacement_cache,
            liveness_window: self.config.liveness_window,
            max_failures: self.config.max_failures,
            subnet_limit: self.config.subnet_limit,
        };
        let store = self
            .store
            .unwrap_or_else(|| Box::new(MemoryStore::new(id, self.config.store_limits.clone())));
        let init = self.config.initial_rtt.as_micros() as u64;
        let codec = match self.codec {
            Some(c) => c,
            None => default_codec()?,
        };
        let mut node = Node {
            local: Contact::with_addrs(id, self.addrs),
            identity,
            codec,
            routing: RoutingTable::new(id, params),
            store,
            validator: self.validator.unwrap_or_else(|| Arc::new(AcceptAll)),
            plugins: self.plugins,
            rng,
            in_flight: FxHashMap::default(),
            deadlines: BTreeMap::new(),
            seq: 0,
            queries: BTreeMap::new(),
            next_query: 0,
            next_request: 0,
            starved: VecDeque::new(),
            outputs: VecDeque::new(),
            rtt: Rtt {
                srtt: init,
                rttvar: init / 2,
                sampled: false,
            },
            stats: Stats::default(),
            now,
            next_maintenance: now + self.config.maintenance_interval,
            next_replicate: now + self.config.replicate_interval,
            own_records: Default::default(),
            replicate_queue: VecDeque::new(),
            sent_to: RecentAddrs::new(now),
            guard: Default::default(),
            request_len: 0,
            encoded: None,
            join_addrs: Vec::new(),
            last_known: Vec::new(),
            rejoin_at: None,
            rejoin_wait: self.config.rejoin_min,
            config: self.config,
        };
        node.load_own(now);
        Ok(node)
    }
}

/// The codec of a builder that is given none.
#[cfg(feature = "json")]
fn default_codec() -> Result<Box<dyn Codec>, ConfigError> {
    Ok(Box::new(crate::codec::PlainCodec::new()))
}

/// Without the `json` feature there is no default codec.
#[cfg(not(feature = "json"))]
fn default_codec() -> Result<Box<dyn Codec>, ConfigError> {
    Err(ConfigError::NoCodec)
}

impl Node {
    /// Starts building a node with `config`.
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder {
            config,
            identity: None,
            addrs: Vec::new(),
            codec: None,
            store: None,
            validator: None,
            plugins: Vec::new(),
        }
    }
}
