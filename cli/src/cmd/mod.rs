//! The `kad` subcommands, one module each.

pub(crate) mod bench;
pub(crate) mod client;
pub(crate) mod demo;
pub(crate) mod mainline;
pub(crate) mod nat;
pub(crate) mod node;
pub(crate) mod sensor;
pub(crate) mod sim;
pub(crate) mod soak;
