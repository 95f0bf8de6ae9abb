//! # kad-testkit
//!
//! Helpers for testing code built on `kad-core`:
//!
//! - [`conformance`]: the suite of cases every [`Transport`](kad_core::Transport) must pass;
//!   a transport crate implements [`conformance::Harness`] and expands
//!   [`conformance_tests!`] in one of its test files.
//! - [`memory_network`]: a network of [`Dht`] nodes on one [`MemoryNetwork`], joined through
//!   the first node, for tests of plugins and applications that need no sockets.
//! - `netlab` (feature `netlab`, Linux): network namespaces joined by a userspace link
//!   emulator (delay, jitter, loss), for tests and benchmarks on a realistic network.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use kad_core::{Bytes, MemoryNetwork, Node, NodeId};
//! use kad_testkit::{memory_network, seeded_config};
//!
//! let net = MemoryNetwork::new();
//! let nodes = memory_network(&net, 5, |i| {
//!     Node::builder(seeded_config(i as u8 + 1)).id(NodeId::from_bytes([i as u8 + 1; 20]))
//! })
//! .await
//! .expect("the network joins");
//! let key = NodeId::from_bytes([0xAB; 20]);
//! nodes[1].put(key, Bytes::from_static(b"21.5")).await.expect("put");
//! let got = nodes[4].get(key).await.expect("get");
//! assert_eq!(&got.record.value[..], b"21.5");
//! # }
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod conformance;
#[cfg(all(feature = "netlab", target_os = "linux"))]
pub mod netlab;

use std::sync::Arc;

use kad_core::{Config, Dht, DhtError, MemoryNetwork, NodeBuilder, SpawnError};

/// A default [`Config`] whose RNG is seeded with `[seed; 32]`, so that runs repeat.
pub fn seeded_config(seed: u8) -> Config {
    let mut c = Config::default();
    c.set_rng_seed([seed; 32]);
    c
}

/// Why [`memory_network`] could not build its network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// A node could not be spawned (an invalid configuration).
    #[error("node {index} could not be spawned: {source}")]
    Spawn {
        /// The node's index.
        index: usize,
        /// The cause.
        source: SpawnError,
    },
    /// A node could not join through the first node.
    #[error("node {index} could not join: {source}")]
    Join {
        /// The node's index.
        index: usize,
        /// The cause.
        source: DhtError,
    },
}

/// Spawns `n` nodes on `net`, node `i` built by `build(i)` with one in-memory transport (message
/// limit 4096 bytes queued per peer), then bootstraps every node after the first through the
/// first, in order. The nodes stop when their last handle is dropped.
pub async fn memory_network(
    net: &MemoryNetwork,
    n: usize,
    mut build: impl FnMut(usize) -> NodeBuilder,
) -> Result<Vec<Dht>, NetworkError> {
    let mut nodes = Vec::with_capacity(n);
    for index in 0..n {
        let dht = Dht::spawn(build(index), vec![Arc::new(net.transport(4096))])
            .map_err(|source| NetworkError::Spawn { index, source })?;
        nodes.push(dht);
    }
    if let Some(first) = nodes.first() {
        let seed = first.contact().addrs[0].clone();
        for (index, d) in nodes.iter().enumerate().skip(1) {
            d.bootstrap(vec![seed.clone()])
                .await
                .map_err(|source| NetworkError::Join { index, source })?;
        }
    }
    Ok(nodes)
}

/// The Rust example of the guide's architecture page (docs/architecture.md), run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../docs/architecture.md")]
struct ArchitectureDoctests;
