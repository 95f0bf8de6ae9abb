//! # kad
//!
//! A pluggable Kademlia DHT for peer-to-peer networks: a node of a native network of your own
//! (signed JSON-RPC over UDP, QUIC and WebSocket; records, pub/sub sensor topics, chunked and
//! encrypted files), or a node of the BitTorrent Mainline DHT (BEP5/32/42/43/44/51).
//!
//! ## Quick start: two nodes, a put and a get
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kad::{Bytes, NativeNode, content_key};
//!
//! let a = NativeNode::builder().udp("127.0.0.1:0").build().await?;
//! let b = NativeNode::builder().udp("127.0.0.1:0").bootstrap([a.addr()]).build().await?;
//!
//! let value = Bytes::from_static(b"hello, kad");
//! let key = content_key(&value); // any 160-bit key will do; this one is the value's hash
//! b.put(key, value.clone()).await?;
//! assert_eq!(a.get(key).await?.record.value, value);
//! # b.shutdown().await; a.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The builder takes the identity once ([`key_file`](NativeNodeBuilder::key_file) keeps it
//! across restarts), speaks the native protocol (every message authenticated by the node's
//! secp256k1 key: signed to strangers, MAC'd between nodes that know each other), and derives the largest value from its transports (45,000 bytes on UDP,
//! about 750 KB on QUIC or WebSocket). A bad setting is an error of
//! [`build`](NativeNodeBuilder::build) naming it.
//!
//! ## A sensor and a subscriber
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kad::item::{bencode_bytes, public_key};
//! use kad::{Delivery, MutableItem, NativeNode};
//!
//! let a = NativeNode::builder().udp("127.0.0.1:0").pubsub().build().await?;
//! let b = NativeNode::builder().udp("127.0.0.1:0").pubsub().bootstrap([a.addr()]).build().await?;
//!
//! let seed = [7u8; 32]; // the sensor's ed25519 key; its public key names the topic
//! let mut sub = a.pubsub()?.subscribe_sensor(public_key(&seed), b"kitchen").await?;
//! let reading = MutableItem::sign(&seed, b"kitchen", 1, &bencode_bytes(b"21.5"))?;
//! b.pubsub()?.publish(reading.into()).await?; // the rendezvous nodes push it to subscribers
//! let Some(Delivery::Reading(r)) = sub.next().await else { panic!("no reading") };
//! assert_eq!((r.item.seq, r.item.value_text()), (1, "21.5".to_owned()));
//! # drop(sub); b.shutdown().await; a.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Files on storage nodes
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kad::NativeNode;
//!
//! let dir = tempfile::tempdir()?; // each node keeps its key, records and table in a data dir
//! let a = NativeNode::builder().udp("127.0.0.1:0").storage(dir.path().join("a")).build().await?;
//! let b = NativeNode::builder().udp("127.0.0.1:0").storage(dir.path().join("b"))
//!     .bootstrap([a.addr()]).build().await?;
//!
//! let (file, copy) = (dir.path().join("report.txt"), dir.path().join("copy.txt"));
//! std::fs::write(&file, "chunked, verified, replicated")?;
//! let put = a.put_file(&file).await?; // its key is the manifest's
//! b.get_file(put.key, &copy).await?;
//! assert_eq!(std::fs::read(&copy)?, std::fs::read(&file)?);
//! # b.shutdown().await; a.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## The BitTorrent Mainline DHT
//!
//! [`Mainline::client`] and [`Mainline::server`] join the public DHT through its routers; a
//! network of your own joins through [`MainlineBuilder::bootstrap`]. Values come back verified,
//! and decoded in [`MainlineGetOutcome::value`]. Here a client on a local network:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kad::{Mainline, MutableItem, item::bencode_bytes};
//!
//! let local = || Mainline::builder().bind("127.0.0.1:0".parse().unwrap());
//! let first = local().build().await?; // no bootstrap: it starts a network
//! let second = local().bootstrap([first.local_addr()]).build().await?;
//! let client = local().bootstrap([first.local_addr(), second.local_addr()]).read_only().build().await?;
//!
//! let seed = [9u8; 32]; // the item's ed25519 key
//! let item = MutableItem::sign(&seed, b"status", 1, &bencode_bytes(b"online"))?;
//! client.put_mutable(&item, None).await?;
//! let got = client.get_mutable(item.pubkey, b"status", None).await?;
//! assert_eq!((got.seq, got.value.as_deref()), (1, Some(&b"online"[..])));
//! # client.shutdown().await; second.shutdown().await; first.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `udp` | yes | [`NativeNodeBuilder::udp`] |
//! | `quic` | yes | [`NativeNodeBuilder::quic`] (quinn; TLS with the node key) |
//! | `ws` | no | `NativeNodeBuilder::ws` (`ws://` and `wss://`) |
//! | `pubsub` | yes | [`NativeNodeBuilder::pubsub`], [`Pubsub`] |
//! | `storage` | yes | [`NativeNodeBuilder::storage`]: records on disk, chunked files |
//! | `mainline` | yes | [`Mainline`] and BEP44 items |
//! | `nat` | no | `NativeNodeBuilder::nat`: address votes, reachability, UPnP |
//!
//! The crates underneath are re-exported whole ([`core`], [`pubsub`], [`storage`],
//! [`mainline`]...) for what the front door does not cover: custom transports, codecs, plugins,
//! record stores and validators, the sans-IO engine.

mod addr;
mod error;
pub mod keys;
mod native;
pub mod transports;

pub use addr::{AddrArg, SocketArg};
pub use error::{BuildError, NotEnabled};
pub use native::{NativeNode, NativeNodeBuilder};
pub use transports::Transports;

pub use kad_core as core;
pub use kad_core::{
    Bytes, Config, Contact, Dht, DhtError, Event, GetOutcome, Key, LookupOutcome, NativeIdentity,
    NodeId, PeerAddr, PingOutcome, PutOutcome, Quorum, Record, RecordStore, RecordValidator, Stats,
    StoreLimits, content_key,
};

#[cfg(feature = "udp")]
pub use kad_transport_udp as udp;

#[cfg(feature = "quic")]
pub use kad_transport_quic as quic;

#[cfg(feature = "ws")]
pub use kad_transport_ws as ws;

#[cfg(feature = "mainline")]
pub use kad_plugin_bep44 as mainline;
#[cfg(feature = "mainline")]
pub use kad_plugin_bep44::{
    Mainline, MainlineBuilder, MainlineConfig, MainlineError, MainlineGetOutcome,
    MainlinePutOutcome, MutableItem, item,
};

#[cfg(feature = "pubsub")]
pub use kad_plugin_pubsub as pubsub;
#[cfg(feature = "pubsub")]
pub use kad_plugin_pubsub::{Delivery, Pubsub, PubsubError, Subscription};

#[cfg(feature = "storage")]
pub use kad_plugin_storage as storage;

#[cfg(feature = "nat")]
pub use kad_plugin_nat as nat;

/// The workspace README's Rust examples, run as doctests so they stay correct.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
