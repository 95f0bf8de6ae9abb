//! The ids and errors of queries, shared by the engine and its plugins (a leaf module).

use crate::message::RpcError;

/// Identifies a query (lookup, get, put, ping, call) started by a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct QueryId(pub u64);

/// Why a query failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// No peer answered: the routing table was empty and no seed answered, or every node a
    /// lookup asked stayed silent.
    #[error("no peers to ask")]
    NoPeers,
    /// No valid value was found under the key.
    #[error("no value found under the key")]
    NotFound,
    /// The peer did not answer in time.
    #[error("request timed out")]
    Timeout,
    /// The peer answered with an error.
    #[error(transparent)]
    Remote(#[from] RpcError),
    /// Nobody accepted the record.
    #[error("no node stored the record")]
    NotStored,
}
