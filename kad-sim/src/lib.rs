//! # kad-sim
//!
//! The deterministic simulator for `kad-core`: many engines on one thread, a virtual clock, an event heap and a
//! seeded link model (latency, jitter, loss, partitions), plus churn.
//!
//! Identical seeds and arguments give identical results, bit for bit: every random draw comes
//! from ChaCha RNGs seeded from the simulation seed, events are ordered by `(time, sequence)`, and
//! nothing iterates a randomly ordered map. [`Sim::digest`] is a hash of every delivery and event.
//!
//! ```
//! use kad_sim::{LookupScenario, run_lookup_scenario};
//! let mut sc = LookupScenario::default();
//! sc.nodes = 200;
//! sc.lookups = 50;
//! let report = run_lookup_scenario(&sc, |_, _| {});
//! assert!(report.success_rate > 0.95);
//! assert_eq!(report.digest, run_lookup_scenario(&sc, |_, _| {}).digest);
//! ```
//!
//! Scenarios, each a report type and a `run_*` function, same arguments same report:
//!
//! - [`run_lookup_scenario`]: a network grows, then random lookups and puts/gets; success rate,
//!   hops, latency and messages per lookup (`kad sim`).
//! - [`churn`]: a day of steady churn; records stay retrievable and per-node state stays flat
//!   (`kad sim churn`).
//! - [`sybil`]: Sybil and eclipse attacks against the engine's defences (`kad sim sybil`).
//! - [`pubsub`]: one sensor, many subscribers, optional churn of the rendezvous nodes
//!   (`kad sim pubsub`).

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod sim;

pub mod churn;
pub mod pubsub;
pub mod sybil;

pub use sim::*;
