//! NAT traversal for kad-core nodes.
//!
//! Three parts, usable apart:
//!
//! - **UPnP port mapping** ([`upnp::PortMapper`], igd-next): finds the gateway by SSDP within a
//!   bounded time, reads its external IP, maps every listening port (UDP for `udp://` and
//!   `quic://`, TCP for `ws://`), takes another external port when the one asked for belongs to
//!   another host, asks a 1-hour lease and renews it at half-life with backoff on failure, and
//!   removes the mappings on shutdown.
//! - **External address discovery without UPnP** ([`NatPlugin`]): every answer on the native
//!   network says where the responder sees the requester (`kad.seen`; Mainline's `ip` is read
//!   the same way), and the node adopts the address a majority of at least 3 distinct peer IPs
//!   agree on.
//! - **Reachability** ([`NatPlugin`] and [`Nat`]): the node asks peers (`nat.CHECK`) to probe
//!   its external address unsolicited. Each helper probes from a fresh UDP port (so no NAT
//!   mapping made by our own traffic lets it in) and asks a third node on another IP to do the
//!   same (`nat.DIAL`). A probe from an address we never sent to proves the address works; when
//!   helpers accepted and nothing arrived, the node is unreachable and runs as a client
//!   (read-only: others don't add it to their tables) until a later check succeeds.
//!
//! [`Nat::spawn`] runs the I/O side beside a [`Dht`]: it sends the probes the plugin orders,
//! keeps the UPnP mappings and tells the plugin what to advertise.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kad_core::{Config, Dht, NativeCodec, NativeIdentity, Node};
//! use kad_plugin_nat::{Nat, NatConfig, NatPlugin, UpnpConfig};
//!
//! let identity = Arc::new(NativeIdentity::from_secret(&[7; 32])?);
//! let udp = kad_transport_udp::UdpTransport::bind("0.0.0.0:4000".parse()?).await?;
//! let mut nat = NatConfig::default();
//! nat.serve_probes = true; // Nat below sends the probes
//! let builder = Node::builder(Config::default())
//!     .identity(identity.clone())
//!     .codec(Box::new(NativeCodec::new(identity.clone())))
//!     .plugin(Box::new(NatPlugin::new(nat)));
//! let dht = Dht::spawn(builder, vec![Arc::new(udp)])?;
//! let nat = Nat::spawn(dht.clone(), identity, Some(UpnpConfig::default()));
//! let mut changes = nat.watch();
//! while changes.changed().await.is_ok() {
//!     let report = changes.borrow().clone();
//!     println!("{}", serde_json::to_string(&report)?);
//! }
//! nat.shutdown().await; // removes the mappings
//! # Ok(()) }
//! ```

mod plugin;
pub mod upnp;
mod vote;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use kad_core::{
    Body, Codec, CodecCx, Contact, Dht, DhtError, Event, Message, NativeCodec, NativeIdentity,
    PeerAddr, PluginData, Request, SystemClock, TxnId,
};
use rand::RngCore;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

pub use plugin::{
    CHECK, DIAL, NatCommand, NatConfig, NatPlugin, NatStats, NatStatus, PROBE, ProbeOrder,
    Reachability,
};

/// Gives `command` to the node's [`NatPlugin`] and returns the status after it.
pub async fn command(dht: &Dht, command: NatCommand) -> Result<NatStatus, DhtError> {
    let out = dht.command("nat", PluginData::new(command)).await?;
    // The plugin answers every command with its status; another plugin under its name may not.
    out.downcast_ref::<NatStatus>().cloned().ok_or_else(|| {
        DhtError::Query(kad_core::QueryError::Remote(kad_core::RpcError::new(
            kad_core::RpcError::INTERNAL,
            format!(
                "the nat plugin answered a {}, not a NatStatus",
                out.type_name()
            ),
        )))
    })
}

/// The node's NAT status now ([`NatCommand::Status`]).
pub async fn status(dht: &Dht) -> Result<NatStatus, DhtError> {
    command(dht, NatCommand::Status).await
}
pub use upnp::{
    GatewayEntry, Mapping, PortMapper, Protocol, Survey, UpnpConfig, UpnpState, survey,
};
pub use vote::{AddrVote, is_global};

/// Everything [`Nat`] knows: the plugin's status and the UPnP state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NatReport {
    /// The plugin's status (reachability, mode, external and advertised addresses), once known.
    pub status: Option<NatStatus>,
    /// Whether UPnP is on.
    pub upnp: bool,
    /// The gateway, external IP and mappings (when UPnP is on).
    pub gateway: Option<UpnpState>,
}

/// The I/O side of NAT traversal beside a running node: sends the probes [`NatPlugin`] orders
/// (from a fresh UDP socket each) and, with UPnP, keeps the port mappings and has the plugin
/// advertise them.
#[derive(Debug)]
pub struct Nat {
    dht: Dht,
    report: watch::Receiver<NatReport>,
    stop: mpsc::Sender<oneshot::Sender<Vec<String>>>,
}

impl Nat {
    /// Starts the probe sender and, with `upnp`, the port mapper, on the current tokio runtime.
    /// The node must carry a [`NatPlugin`] with `serve_probes` on.
    pub fn spawn(dht: Dht, identity: Arc<NativeIdentity>, upnp: Option<UpnpConfig>) -> Self {
        let (tx, report) = watch::channel(NatReport {
            upnp: upnp.is_some(),
            ..Default::default()
        });
        let tx = Arc::new(tx);
        let (stop, stop_rx) = mpsc::channel(1);
        tokio::spawn(probe_task(dht.clone(), identity, tx.clone()));
        match upnp {
            Some(cfg) => {
                let listen = if cfg.listen.is_empty() {
                    dht.contact().addrs.to_vec()
                } else {
                    cfg.listen.clone()
                };
                tokio::spawn(upnp_task(dht.clone(), cfg, listen, tx, stop_rx));
            }
            None => {
                tokio::spawn(async move {
                    let mut stop_rx = stop_rx;
                    if let Some(done) = stop_rx.recv().await {
                        let _ = done.send(Vec::new());
                    }
                });
            }
        }
        let me = Self { dht, report, stop };
        // The first status, without waiting for a change.
        let d = me.dht.clone();
        tokio::spawn(async move { drop(status(&d).await) });
        me
    }

    /// Changes of the report, as they happen.
    pub fn watch(&self) -> watch::Receiver<NatReport> {
        self.report.clone()
    }

    /// The report now (the plugin's status asked afresh).
    pub async fn report(&self) -> NatReport {
        let mut r = self.report.borrow().clone();
        if let Ok(st) = status(&self.dht).await {
            r.status = Some(st);
        }
        r
    }

    /// Runs a reachability check now (the result arrives through [`watch`](Self::watch)).
    pub async fn check_now(&self) {
        drop(command(&self.dht, NatCommand::Check).await);
    }

    /// Removes the UPnP mappings (each gateway call bounded in time); returns what failed.
    pub async fn shutdown(self) -> Vec<String> {
        let (tx, rx) = oneshot::channel();
        if self.stop.send(tx).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

fn set_status(tx: &watch::Sender<NatReport>, st: &NatStatus) {
    tx.send_if_modified(|r| {
        let changed = r.status.as_ref() != Some(st);
        r.status = Some(st.clone());
        changed
    });
}

async fn probe_task(dht: Dht, identity: Arc<NativeIdentity>, tx: Arc<watch::Sender<NatReport>>) {
    let mut events = dht.events();
    let mut codec = NativeCodec::new(identity.clone());
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        warn!("nat: no OS randomness; probes disabled");
        return;
    }
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(seed);
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!(missed = n, "nat: lagging behind the node's events");
                continue;
            }
            Err(_) => return,
        };
        let Event::Plugin {
            namespace: "nat",
            data,
            ..
        } = ev
        else {
            continue;
        };
        if let Some(st) = data.downcast_ref::<NatStatus>() {
            set_status(&tx, st);
        } else if let Some(order) = data.downcast_ref::<ProbeOrder>() {
            if let Err(e) = send_probe(&identity, &mut codec, &mut rng, order).await {
                warn!(to = %order.to, error = %e, "nat: probe not sent");
            }
        }
    }
}

/// Sends `nat.PROBE` to `order.to` from a fresh UDP socket, signed by `identity` and marked
/// read-only (the receiver must not learn the throwaway port as our address).
async fn send_probe(
    identity: &NativeIdentity,
    codec: &mut NativeCodec,
    rng: &mut rand_chacha::ChaCha8Rng,
    order: &ProbeOrder,
) -> Result<(), String> {
    let PeerAddr::Udp(to) = order.to else {
        return Err("only UDP addresses are probed".into());
    };
    let mut txn = [0u8; 4];
    rng.fill_bytes(&mut txn);
    let params = serde_json::to_vec(&serde_json::json!({ "nonce": order.nonce }))
        .map_err(|e| e.to_string())?;
    let msg = Message {
        txn: TxnId::from_bytes(txn.to_vec()),
        sender: Contact::with_addrs(identity.id(), Vec::new()),
        recipient: Some(order.id),
        read_only: true,
        observed: None,
        body: Body::Request(Request::Custom {
            method: PROBE.into(),
            params: Bytes::from(params),
        }),
    };
    let bytes = encode(codec, identity, rng, &msg, &order.to)?;
    let bind = match to {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.send_to(&bytes, to).await.map_err(|e| e.to_string())?;
    Ok(())
}

fn encode(
    codec: &mut NativeCodec,
    identity: &NativeIdentity,
    rng: &mut rand_chacha::ChaCha8Rng,
    msg: &Message,
    to: &PeerAddr,
) -> Result<Bytes, String> {
    let mut cx = CodecCx {
        unix_ms: SystemClock::now_ms(),
        local_id: identity.id(),
        max_skew_ms: 60_000,
        rng,
        peer: Some(to),
        proven: None,
    };
    codec.encode(msg, &mut cx).map_err(|e| e.to_string())
}

async fn tell_mapped(dht: &Dht, addrs: Vec<PeerAddr>, tx: &watch::Sender<NatReport>) {
    if let Ok(st) = command(dht, NatCommand::Mapped { addrs }).await {
        set_status(tx, &st);
    }
}

async fn upnp_task(
    dht: Dht,
    cfg: UpnpConfig,
    listen: Vec<PeerAddr>,
    tx: Arc<watch::Sender<NatReport>>,
    mut stop: mpsc::Receiver<oneshot::Sender<Vec<String>>>,
) {
    let mut mapper = PortMapper::new(cfg, &listen);
    let mut failures = 0u32;
    let mut advertised: Vec<PeerAddr> = Vec::new();
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            done = stop.recv() => {
                let errors = mapper.remove_all().await;
                if errors.is_empty() {
                    info!("UPnP: mappings removed");
                } else {
                    warn!(?errors, "UPnP: some mappings could not be removed (they expire with their lease)");
                }
                tx.send_modify(|r| r.gateway = Some(mapper.state.clone()));
                if let Some(done) = done {
                    let _ = done.send(errors);
                }
                return;
            }
            () = tokio::time::sleep_until(next) => {}
        }
        let result = mapper.refresh().await;
        let wait = match &result {
            Ok(()) => {
                failures = 0;
                let now: Vec<PeerAddr> = mapper
                    .live_mappings()
                    .iter()
                    .map(|m| m.advertised.clone())
                    .collect();
                if now != advertised {
                    info!(
                        gateway = ?mapper.state.gateway,
                        external_ip = ?mapper.state.external_ip,
                        mapped = ?now,
                        "UPnP: ports mapped"
                    );
                    advertised = now.clone();
                    tell_mapped(&dht, now, &tx).await;
                }
                mapper.renew_in()
            }
            Err(e) => {
                failures += 1;
                let c = mapper.config();
                let wait = c
                    .backoff
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(c.max_backoff);
                warn!(
                    "UPnP: {e}; the node keeps running without mappings, next attempt in {:.0} s",
                    wait.as_secs_f64()
                );
                if !advertised.is_empty() {
                    advertised.clear();
                    tell_mapped(&dht, Vec::new(), &tx).await;
                }
                wait
            }
        };
        tx.send_if_modified(|r| {
            let changed = r.gateway.as_ref() != Some(&mapper.state);
            r.gateway = Some(mapper.state.clone());
            changed
        });
        next = tokio::time::Instant::now() + wait;
    }
}
