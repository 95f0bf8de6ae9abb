//! Why a node could not be built.

use std::time::Duration;

use kad_core::{DhtError, SpawnError};

use crate::keys::KeyFileError;

/// Why [`NativeNodeBuilder::build`](crate::NativeNodeBuilder::build) failed. Each message names
/// the builder setting at fault and, for bad input, the limit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is invalid.
    #[error("{field} {value:?}: {reason}")]
    Field {
        /// The builder method (and `kad` CLI flag without its dashes).
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong, with the limit.
        reason: String,
    },
    /// The node has nothing to talk over.
    #[error(
        "no transport: listen on an address (udp, quic, ws) or, for a client, give bootstrap addresses"
    )]
    NoTransport,
    /// The key file could not be used.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// A transport could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The record store could not be opened.
    #[error("data dir {dir}: {source}")]
    Store {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The engine refused the configuration.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The node started but could not join through its bootstrap addresses.
    #[error("joining through the bootstrap addresses failed after {:.1} s: {source}", .tried_for.as_secs_f64())]
    Join {
        /// How long it tried.
        tried_for: Duration,
        /// The last failure.
        #[source]
        source: DhtError,
    },
}

/// A part of the node that was not enabled on its builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this node has no {what}: enable it with NativeNodeBuilder::{method}")]
pub struct NotEnabled {
    /// What is missing.
    pub what: &'static str,
    /// The builder method that enables it.
    pub method: &'static str,
}
