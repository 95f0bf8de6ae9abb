//! The CLI's HTTP servers: the live chart page (`--web`) and the Prometheus metrics (`--metrics`).

pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod web;
