//! QUIC transport for the kad framework (quinn), with TLS bound to node identities.
//!
//! - **Connections**: one cached connection per peer address, opened on the first send and
//!   closed after [`QuicConfig::idle_timeout`] without traffic (default 30 s). One UDP socket
//!   serves both directions, so a peer's address is the same whether it dialed us or we dialed
//!   it, and answers travel back on the connection the request came in on.
//! - **Messages**: each message travels on its own unidirectional stream, so a message may be far
//!   larger than a datagram: up to [`QuicConfig::max_message_len`] (default 1 MiB, at most
//!   [`MAX_MESSAGE_LEN`]). A larger send fails with `TooLarge`; a peer's larger message is cut off
//!   (the stream is stopped), counted in [`QuicStats::oversize`], and never delivered in part.
//!   With [`QuicConfig::datagrams`], messages that fit one QUIC datagram go as datagrams instead
//!   (unreliable, like UDP; cheaper for small RPCs).
//! - **Identity**: TLS 1.3 with a fresh self-signed certificate whose key is signed by the node's
//!   secp256k1 key (see [`tls`]); both sides present one. When the engine names the node it
//!   expects at an address (`Transport::send_to_node`), a peer that proves another id is refused
//!   (the handshake fails, or `WrongPeer` when the cached connection proves another id).
//!   ALPN is [`tls::ALPN`] (`kad/1`). The transport therefore proves every peer's node id
//!   (`Transport::proves_peer_ids`): each message is handed up with the id its sender proved
//!   (`Transport::recv_from_node`), and a message for a named node is never written to a
//!   connection that proved another, even one queued while the connection was being made. The
//!   native codec sends version 2 messages on it without a signature or MAC of their own.
//!   There is no TLS session resumption: every connection runs a full handshake, and an
//!   endpoint keeps no session state per peer.
//! - **Restarts**: a new connection from an address replaces the cached one, so a restarted node
//!   that contacts its peers is reached again at once. A peer that sends nothing at all, not
//!   even an acknowledgement, for [`QuicConfig::liveness_timeout`] (default 3 s) after a message
//!   was sent to it is taken for dead: the connection is closed (counted in
//!   [`QuicStats::dead_peers`]) and the next message dials again, reaching the peer if it
//!   restarted on its port. The stateless-reset key is derived from the node's secret key, so a
//!   node restarting with the same identity can also reset stale connections of its previous
//!   run, but only when they send it packets large enough to allow a smaller reset: small
//!   messages draw none, and the liveness timeout is what ends those connections.
//! - **Congestion**: per connection, Cubic on a path whose lowest round trip is under
//!   [`LOCAL_RTT`] (5 ms: a LAN, the same host) and BBR beyond it, where random loss would keep a
//!   loss-based window too small for large messages ([`QuicConfig::congestion`]). Loss is
//!   detected by time alone (a packet unacknowledged 5/4 of a round trip after it was sent, while
//!   a later one was acknowledged), so jitter that reorders packets is not taken for loss.
//! - **Bounds**: at most [`QuicConfig::max_connections`] connections (default 10,000; more are
//!   refused and counted); a queue of [`QuicConfig::send_queue`] messages per connection (a full
//!   queue fails the send with `QueueFull`, never blocking the engine); per connection at most
//!   128 incoming streams at once and a receive window of `max(4 MiB, 2 x max_message_len)`, so a
//!   connection holds at most that much unread data; a stream that stalls for
//!   [`QuicConfig::stream_timeout`] (default 10 s) is dropped; failed dials back off (100 ms
//!   doubling to 30 s) and sends to that address fail fast with `Unreachable` meanwhile.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kad_core::{NativeIdentity, Transport};
//! use kad_transport_quic::{QuicConfig, QuicTransport};
//! let a = QuicTransport::bind("127.0.0.1:0".parse()?, Arc::new(NativeIdentity::from_secret(&[1; 32])?), QuicConfig::default())?;
//! let b_identity = Arc::new(NativeIdentity::from_secret(&[2; 32])?);
//! let b = QuicTransport::bind("127.0.0.1:0".parse()?, b_identity.clone(), QuicConfig::default())?;
//! // Naming the expected node: the TLS handshake checks that b proves this id.
//! a.send_to_node(&b.local_addr(), Some(b_identity.id()), bytes::Bytes::from(vec![7; 200_000])).await?;
//! let (from, msg) = b.recv().await?;
//! assert_eq!((from, msg.len()), (a.local_addr(), 200_000));
//! a.close().await;
//! b.close().await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kad_core::{NativeIdentity, NodeId, PeerAddr, Transport, TransportError, TransportKind};
use quinn::{Connection, Endpoint, VarInt};
use tokio::sync::{mpsc, watch};
use tracing::{debug, trace};

pub mod tls;
pub use congestion::{Congestion, LOCAL_RTT};
mod congestion;

/// Largest message size that can be configured: 64 MiB.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// Incoming streams a peer may have open at once on one connection.
const MAX_STREAMS: u32 = 128;

/// Messages received but not yet taken by `recv`; readers wait (back-pressuring their peer).
const INBOX: usize = 4096;

/// Most addresses whose failed dials are remembered for backoff.
const BACKOFF_CAP: usize = 65_536;

/// Settings of a [`QuicTransport`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QuicConfig {
    /// Largest message sent or accepted (default 1 MiB, at most [`MAX_MESSAGE_LEN`]).
    pub max_message_len: usize,
    /// Most connections open at once, both directions (default 10,000).
    pub max_connections: usize,
    /// A connection with no traffic for this long is closed (default 30 s).
    pub idle_timeout: Duration,
    /// Longest a dial (QUIC and TLS handshake) may take (default 5 s).
    pub connect_timeout: Duration,
    /// An incoming stream that does not finish within this time is dropped (default 10 s).
    pub stream_timeout: Duration,
    /// Messages queued per connection (default 1024).
    pub send_queue: usize,
    /// Send messages that fit one QUIC datagram as datagrams (unreliable) instead of on a
    /// stream (default false).
    pub datagrams: bool,
    /// Largest UDP payload path-MTU discovery may try (default 1452, right for the internet;
    /// loopback and jumbo-frame networks go faster with more, up to 65,527).
    pub max_udp_payload: u16,
    /// A connection whose peer sends nothing at all (not even an acknowledgement) for this
    /// long after we sent it a message is closed as dead, so that the next message dials again
    /// (default 3 s; `None`: only the idle timeout ends it). A live peer acknowledges within
    /// about a round trip; one that crashed, or restarted and lost the connection, never does.
    pub liveness_timeout: Option<Duration>,
    /// The congestion controller (default [`Congestion::Adaptive`]: Cubic on paths with a
    /// round trip under [`LOCAL_RTT`], BBR on longer ones, where random loss would keep a
    /// loss-based window too small for large messages).
    pub congestion: Congestion,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            max_message_len: 1024 * 1024,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            stream_timeout: Duration::from_secs(10),
            send_queue: 1024,
            datagrams: false,
            max_udp_payload: 1452,
            liveness_timeout: Some(Duration::from_secs(3)),
            congestion: Congestion::Adaptive,
        }
    }
}

impl QuicConfig {
    /// Sets [`max_message_len`](Self::max_message_len).
    pub fn max_message_len(mut self, n: usize) -> Self {
        self.max_message_len = n;
        self
    }
    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }
    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Sets [`stream_timeout`](Self::stream_timeout).
    pub fn stream_timeout(mut self, d: Duration) -> Self {
        self.stream_timeout = d;
        self
    }
    /// Sets [`send_queue`](Self::send_queue).
    pub fn send_queue(mut self, n: usize) -> Self {
        self.send_queue = n;
        self
    }
    /// Sets [`datagrams`](Self::datagrams).
    pub fn datagrams(mut self, on: bool) -> Self {
        self.datagrams = on;
        self
    }
    /// Sets [`max_udp_payload`](Self::max_udp_payload).
    pub fn max_udp_payload(mut self, n: u16) -> Self {
        self.max_udp_payload = n;
        self
    }
    /// Sets [`liveness_timeout`](Self::liveness_timeout).
    pub fn liveness_timeout(mut self, d: Option<Duration>) -> Self {
        self.liveness_timeout = d;
        self
    }
    /// Sets [`congestion`](Self::congestion).
    pub fn congestion(mut self, c: Congestion) -> Self {
        self.congestion = c;
        self
    }
}

/// Why a [`QuicTransport`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// Binding the UDP socket failed.
    #[error("cannot bind: {0}")]
    Io(#[from] io::Error),
    /// Making the certificate failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS configuration was refused.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
}

/// Counters of a [`QuicTransport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuicStats {
    /// Messages handed to QUIC (streams and datagrams).
    pub sent: u64,
    /// Messages received and passed on.
    pub received: u64,
    /// Of `sent`, messages sent as datagrams.
    pub datagrams_sent: u64,
    /// Connections we opened.
    pub dialed: u64,
    /// Connections peers opened that we accepted.
    pub accepted: u64,
    /// Incoming connections refused at the connection limit.
    pub refused_limit: u64,
    /// Dials or handshakes that failed (timeouts, bad certificates, refusals).
    pub failed: u64,
    /// Dials refused because the peer proved another id than expected.
    pub wrong_peer: u64,
    /// Sends refused because the connection's queue was full.
    pub queue_full: u64,
    /// Incoming messages over `max_message_len`, dropped.
    pub oversize: u64,
    /// Incoming streams that stalled past `stream_timeout` or failed, dropped.
    pub stream_errors: u64,
    /// Connections closed because the peer sent nothing for `liveness_timeout` after we sent to
    /// it.
    pub dead_peers: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    datagrams_sent: AtomicU64,
    dialed: AtomicU64,
    accepted: AtomicU64,
    refused_limit: AtomicU64,
    failed: AtomicU64,
    wrong_peer: AtomicU64,
    queue_full: AtomicU64,
    oversize: AtomicU64,
    stream_errors: AtomicU64,
    dead_peers: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A connection (or one being dialed) to a peer address.
struct Entry {
    /// Which connection this is (entries are replaced; a task only removes its own).
    serial: u64,
    /// Messages, each with the node it is for when the sender named one.
    queue: mpsc::Sender<(Bytes, Option<NodeId>)>,
    /// The node id the peer proved, once the handshake is done.
    peer: Option<NodeId>,
}

struct Backoff {
    until: Instant,
    next: Duration,
}

struct Shared {
    endpoint: Endpoint,
    config: QuicConfig,
    client: quinn::ClientConfig,
    local: SocketAddr,
    conns: Mutex<HashMap<SocketAddr, Entry>>,
    backoff: Mutex<HashMap<SocketAddr, Backoff>>,
    /// Connections open or being set up.
    live: AtomicUsize,
    serial: AtomicU64,
    inbox: mpsc::Sender<(PeerAddr, Option<NodeId>, Bytes)>,
    closing: watch::Sender<bool>,
    counters: Counters,
}

impl Shared {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Entry>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }
}

/// A QUIC transport. Cheap to share as `Arc<dyn Transport>`; `close` (or dropping it) closes
/// every connection and the endpoint.
pub struct QuicTransport {
    shared: Arc<Shared>,
    rx: tokio::sync::Mutex<mpsc::Receiver<(PeerAddr, Option<NodeId>, Bytes)>>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("local", &self.shared.local)
            .finish_non_exhaustive()
    }
}

/// The stateless-reset key of a node: derived from its secret key, so a restarted node can
/// reset connections its previous run had open.
fn reset_key(identity: &NativeIdentity) -> ring::hmac::Key {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"kad-quic-reset/1");
    h.update(identity.secret_bytes());
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &h.finalize())
}

fn transport_config(c: &QuicConfig) -> Result<quinn::TransportConfig, QuicError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(c.idle_timeout).map_err(|_| {
        QuicError::Config(format!("idle_timeout = {:?} is too long", c.idle_timeout))
    })?;
    t.max_idle_timeout(Some(idle));
    let window = (c.max_message_len as u64).max(64 * 1024);
    let conn_window = (2 * c.max_message_len as u64).max(4 * 1024 * 1024);
    t.stream_receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX));
    t.receive_window(VarInt::from_u64(conn_window).unwrap_or(VarInt::MAX));
    t.send_window(conn_window);
    t.max_concurrent_uni_streams(VarInt::from_u32(MAX_STREAMS));
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(Some(1024 * 1024));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(c.max_udp_payload.clamp(1200, 65_527));
    t.mtu_discovery_config(Some(mtu));
    t.congestion_controller_factory(c.congestion.factory());
    // Loss is detected by time alone: a packet is lost when it is still unacknowledged 5/4 of
    // a round trip after it was sent while a later one was acknowledged (RFC 9002's time
    // threshold, widened from 9/8). The packet-count rule (three later packets acknowledged)
    // is off: on a path whose jitter reorders packets, it takes each reordered packet for a
    // lost one, and a window of them cuts throughput tenfold.
    t.packet_threshold(u32::MAX);
    t.time_threshold(1.25);
    Ok(t)
}

impl QuicTransport {
    /// Binds `addr` (port 0 picks a free port) as `identity`. Must be called within a tokio
    /// runtime.
    pub fn bind(
        addr: SocketAddr,
        identity: Arc<NativeIdentity>,
        config: QuicConfig,
    ) -> Result<Self, QuicError> {
        let socket = std::net::UdpSocket::bind(addr)?;
        Self::from_socket(socket, identity, config)
    }

    /// Uses a UDP socket bound elsewhere (e.g. with options set through `socket2`).
    pub fn from_socket(
        socket: std::net::UdpSocket,
        identity: Arc<NativeIdentity>,
        mut config: QuicConfig,
    ) -> Result<Self, QuicError> {
        if config.max_message_len == 0 || config.max_message_len > MAX_MESSAGE_LEN {
            return Err(QuicError::Config(format!(
                "max_message_len = {} is out of range: 1 to {MAX_MESSAGE_LEN}",
                config.max_message_len
            )));
        }
        config.send_queue = config.send_queue.max(1);
        config.max_connections = config.max_connections.max(1);
        let creds = tls::credentials(&identity)?;
        let (server_tls, client_tls) = tls::configs(&creds)?;
        let transport = Arc::new(transport_config(&config)?);
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| QuicError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
            .map_err(|e| QuicError::Config(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        let endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key(&identity)));
        let runtime = quinn::default_runtime()
            .ok_or_else(|| io::Error::other("not within a tokio runtime"))?;
        let endpoint = Endpoint::new(endpoint_config, Some(server), socket, runtime)?;
        let local = endpoint.local_addr()?;
        let (inbox, rx) = mpsc::channel(INBOX);
        let shared = Arc::new(Shared {
            endpoint,
            config,
            client,
            local,
            conns: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            live: AtomicUsize::new(0),
            serial: AtomicU64::new(0),
            inbox,
            closing: watch::channel(false).0,
            counters: Counters::default(),
        });
        tokio::spawn(accept_loop(
            Arc::downgrade(&shared),
            shared.endpoint.clone(),
        ));
        Ok(Self {
            shared,
            rx: tokio::sync::Mutex::new(rx),
        })
    }

    /// The socket address this transport is bound to.
    pub fn socket_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Connections open or being set up now.
    pub fn connections(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Counters since the transport was created.
    pub fn stats(&self) -> QuicStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QuicStats {
            sent: l(&c.sent),
            received: l(&c.received),
            datagrams_sent: l(&c.datagrams_sent),
            dialed: l(&c.dialed),
            accepted: l(&c.accepted),
            refused_limit: l(&c.refused_limit),
            failed: l(&c.failed),
            wrong_peer: l(&c.wrong_peer),
            queue_full: l(&c.queue_full),
            oversize: l(&c.oversize),
            stream_errors: l(&c.stream_errors),
            dead_peers: l(&c.dead_peers),
        }
    }

    fn enqueue(
        &self,
        addr: SocketAddr,
        node: Option<NodeId>,
        msg: Bytes,
    ) -> Result<(), TransportError> {
        let s = &self.shared;
        let peer_addr = || PeerAddr::Quic(addr);
        let mut conns = s.conns();
        if let Some(e) = conns.get(&addr) {
            if let (Some(expected), Some(found)) = (node, e.peer) {
                if expected != found {
                    bump(&s.counters.wrong_peer);
                    return Err(TransportError::WrongPeer {
                        addr: peer_addr(),
                        expected,
                        found,
                    });
                }
            }
            return match e.queue.try_send((msg, node)) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    bump(&s.counters.queue_full);
                    Err(TransportError::QueueFull)
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // Its connection just ended; the next send dials again.
                    conns.remove(&addr);
                    Err(TransportError::Unreachable(peer_addr()))
                }
            };
        }
        {
            let backoff = s.backoff.lock().unwrap_or_else(|e| e.into_inner());
            if backoff.get(&addr).is_some_and(|b| b.until > tokio_now()) {
                return Err(TransportError::Unreachable(peer_addr()));
            }
        }
        if s.live.load(Ordering::Relaxed) >= s.config.max_connections {
            return Err(TransportError::ConnectionLimit(s.config.max_connections));
        }
        let (tx, rx) = mpsc::channel(s.config.send_queue);
        let _ = tx.try_send((msg, node));
        let serial = s.serial.fetch_add(1, Ordering::Relaxed);
        conns.insert(
            addr,
            Entry {
                serial,
                queue: tx,
                peer: None,
            },
        );
        s.live.fetch_add(1, Ordering::Relaxed);
        drop(conns);
        tokio::spawn(dial(self.shared.clone(), addr, node, serial, rx));
        Ok(())
    }
}

/// Resolves once the transport is closing.
async fn closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

#[allow(clippy::disallowed_methods)] // time through tokio, so paused-time tests work
fn tokio_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.shared.closing.send_replace(true);
        self.shared.endpoint.close(VarInt::from_u32(0), b"closed");
    }
}

/// Dials `addr`, then runs the connection.
async fn dial(
    shared: Arc<Shared>,
    addr: SocketAddr,
    expected: Option<NodeId>,
    serial: u64,
    queue: mpsc::Receiver<(Bytes, Option<NodeId>)>,
) {
    let name = tls::server_name_for(expected);
    let attempt = async {
        let connecting = shared
            .endpoint
            .connect_with(shared.client.clone(), addr, &name)
            .map_err(|e| e.to_string())?;
        connecting.await.map_err(|e| e.to_string())
    };
    let r = tokio::time::timeout(shared.config.connect_timeout, attempt).await;
    let conn = match r {
        Ok(Ok(c)) => c,
        failure => {
            let why = match failure {
                Ok(Err(e)) => e,
                _ => "timed out".to_owned(),
            };
            debug!(peer = %addr, error = %why, "quic dial failed");
            if why.contains("NotValidForName") || why.contains("not valid for name") {
                bump(&shared.counters.wrong_peer);
            }
            bump(&shared.counters.failed);
            remove_entry(&shared, addr, serial);
            shared.live.fetch_sub(1, Ordering::Relaxed);
            let mut b = shared.backoff.lock().unwrap_or_else(|e| e.into_inner());
            if b.len() >= BACKOFF_CAP {
                b.clear();
            }
            let next = b.get(&addr).map_or(Duration::from_millis(100), |o| {
                (o.next * 2).min(Duration::from_secs(30))
            });
            b.insert(
                addr,
                Backoff {
                    until: tokio_now() + next,
                    next,
                },
            );
            return;
        }
    };
    shared
        .backoff
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&addr);
    bump(&shared.counters.dialed);
    let peer = peer_of(&conn);
    if let Some(e) = shared.conns().get_mut(&addr).filter(|e| e.serial == serial) {
        e.peer = peer;
    }
    run(shared, conn, addr, serial, queue).await;
}

fn remove_entry(shared: &Shared, addr: SocketAddr, serial: u64) {
    let mut conns = shared.conns();
    if conns.get(&addr).is_some_and(|e| e.serial == serial) {
        conns.remove(&addr);
    }
}

fn peer_of(conn: &Connection) -> Option<NodeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::peer_id(certs.first()?).ok()
}

async fn accept_loop(shared: std::sync::Weak<Shared>, endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(s) = shared.upgrade() else { break };
        if s.is_closing() {
            incoming.refuse();
            break;
        }
        if s.live.load(Ordering::Relaxed) >= s.config.max_connections {
            bump(&s.counters.refused_limit);
            incoming.refuse();
            continue;
        }
        s.live.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(accept_one(s, incoming));
    }
}

async fn accept_one(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let addr = incoming.remote_address();
    let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
    let handshake = async {
        let connecting = incoming.accept().map_err(|e| e.to_string())?;
        connecting.await.map_err(|e| e.to_string())
    };
    let conn = match tokio::time::timeout(shared.config.connect_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(peer = %addr, error = %e, "quic handshake failed");
            bump(&shared.counters.failed);
            shared.live.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            bump(&shared.counters.failed);
            shared.live.fetch_sub(1, Ordering::Relaxed);
            return;
        }
    };
    bump(&shared.counters.accepted);
    // A new connection from an address replaces the cached one (the peer may have restarted).
    let (tx, rx) = mpsc::channel(shared.config.send_queue);
    let serial = shared.serial.fetch_add(1, Ordering::Relaxed);
    let replaced = shared.conns().insert(
        addr,
        Entry {
            serial,
            queue: tx,
            peer: peer_of(&conn),
        },
    );
    drop(replaced);
    run(shared, conn, addr, serial, rx).await;
}

/// Runs an established connection: writes queued messages, reads incoming streams and
/// datagrams, until the connection ends.
async fn run(
    shared: Arc<Shared>,
    conn: Connection,
    addr: SocketAddr,
    serial: u64,
    mut queue: mpsc::Receiver<(Bytes, Option<NodeId>)>,
) {
    let from = PeerAddr::Quic(addr);
    let proven = peer_of(&conn);
    let reader = tokio::spawn(read_loop(shared.clone(), conn.clone(), from, proven));
    let live = Arc::new(Liveness::default());
    let watchdog = shared.config.liveness_timeout.map(|t| {
        tokio::spawn(watch_liveness(
            shared.clone(),
            conn.clone(),
            live.clone(),
            t,
        ))
    });
    let armed = watchdog.is_some();
    let datagrams = shared.config.datagrams;
    loop {
        let (msg, node) = tokio::select! {
            m = queue.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = conn.closed() => break,
        };
        // A message for a named node goes only to a peer that proved that id (it may have been
        // queued while the connection was still being made, for another expectation).
        if node.is_some() && node != proven {
            bump(&shared.counters.wrong_peer);
            continue;
        }
        let fits = conn.max_datagram_size().is_some_and(|max| msg.len() <= max);
        if datagrams && fits {
            if conn.send_datagram(msg).is_ok() {
                bump(&shared.counters.sent);
                bump(&shared.counters.datagrams_sent);
                if armed {
                    live.sent(&conn);
                }
            }
            continue;
        }
        let mut stream = match conn.open_uni().await {
            Ok(s) => s,
            Err(e) => {
                trace!(peer = %addr, error = %e, "quic open stream failed");
                break;
            }
        };
        if armed {
            live.sent(&conn);
        }
        if stream.write_chunk(msg).await.is_err() || stream.finish().is_err() {
            break;
        }
        bump(&shared.counters.sent);
    }
    // The queue closed (our entry was replaced, or the transport closed) or the connection
    // failed: stop sending, but keep reading until the connection ends.
    remove_entry(&shared, addr, serial);
    drop(queue);
    let _ = reader.await;
    if let Some(w) = watchdog {
        w.abort();
    }
    shared.live.fetch_sub(1, Ordering::Relaxed);
}

/// What the liveness watchdog of a connection waits on.
#[derive(Default)]
struct Liveness {
    /// Whether a send is being watched.
    watching: AtomicBool,
    /// The connection's count of received datagrams when that send was made.
    heard: AtomicU64,
    /// Wakes the watchdog.
    wake: tokio::sync::Notify,
}

impl Liveness {
    /// A message is about to be sent: unless an earlier send is being watched, the watchdog
    /// waits for the peer to send anything after this one.
    fn sent(&self, conn: &Connection) {
        if !self.watching.swap(true, Ordering::AcqRel) {
            self.heard
                .store(conn.stats().udp_rx.datagrams, Ordering::Release);
            self.wake.notify_one();
        }
    }
}

/// Closes `conn` when its peer sends nothing at all for `timeout` after a message was sent on
/// it. Asleep while no send is watched; while one is, it looks at the connection's count of
/// received datagrams four times per `timeout`.
async fn watch_liveness(
    shared: Arc<Shared>,
    conn: Connection,
    live: Arc<Liveness>,
    timeout: Duration,
) {
    let tick = (timeout / 4).max(Duration::from_millis(1));
    loop {
        live.wake.notified().await;
        let since = tokio::time::Instant::now();
        let heard = live.heard.load(Ordering::Acquire);
        loop {
            tokio::time::sleep(tick).await;
            if conn.stats().udp_rx.datagrams > heard {
                live.watching.store(false, Ordering::Release);
                break;
            }
            if since.elapsed() >= timeout {
                bump(&shared.counters.dead_peers);
                debug!(peer = %conn.remote_address(), "quic peer silent: connection closed");
                conn.close(VarInt::from_u32(3), b"peer silent");
                return;
            }
        }
    }
}

/// Reads a connection's streams and datagrams; `node` is the id the peer proved in the handshake.
async fn read_loop(shared: Arc<Shared>, conn: Connection, from: PeerAddr, node: Option<NodeId>) {
    let max = shared.config.max_message_len;
    let stream_timeout = shared.config.stream_timeout;
    let mut closing = shared.closing.subscribe();
    loop {
        tokio::select! {
            s = conn.accept_uni() => {
                let Ok(mut stream) = s else { break };
                let shared = shared.clone();
                let from = from.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(stream_timeout, stream.read_to_end(max)).await {
                        Ok(Ok(data)) => {
                            bump(&shared.counters.received);
                            let _ = shared.inbox.send((from, node, Bytes::from(data))).await;
                        }
                        Ok(Err(quinn::ReadToEndError::TooLong)) => {
                            bump(&shared.counters.oversize);
                            let _ = stream.stop(VarInt::from_u32(1));
                        }
                        Ok(Err(_)) | Err(_) => {
                            bump(&shared.counters.stream_errors);
                            let _ = stream.stop(VarInt::from_u32(2));
                        }
                    }
                });
            }
            d = conn.read_datagram() => {
                let Ok(data) = d else { break };
                if data.len() > max {
                    bump(&shared.counters.oversize);
                    continue;
                }
                bump(&shared.counters.received);
                if shared.inbox.send((from.clone(), node, data)).await.is_err() {
                    break;
                }
            }
            () = closed(&mut closing) => break,
        }
    }
}

#[async_trait]
impl Transport for QuicTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Quic
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr::Quic(self.shared.local)
    }

    fn max_message_len(&self) -> usize {
        self.shared.config.max_message_len
    }

    async fn send(&self, to: &PeerAddr, msg: Bytes) -> Result<(), TransportError> {
        self.send_to_node(to, None, msg).await
    }

    async fn send_to_node(
        &self,
        to: &PeerAddr,
        node: Option<NodeId>,
        msg: Bytes,
    ) -> Result<(), TransportError> {
        let PeerAddr::Quic(addr) = to else {
            return Err(TransportError::WrongKind(to.clone()));
        };
        if self.shared.is_closing() {
            return Err(TransportError::Closed);
        }
        let max = self.shared.config.max_message_len;
        if msg.len() > max {
            return Err(TransportError::TooLarge {
                len: msg.len(),
                max,
            });
        }
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        self.enqueue(addr, node, msg)
    }

    async fn recv(&self) -> Result<(PeerAddr, Bytes), TransportError> {
        let (from, _, data) = self.recv_from_node().await?;
        Ok((from, data))
    }

    /// Every peer proves its node id in the TLS handshake (its certificate is bound to its node
    /// key), and a send naming a node goes only to a peer that proved it.
    fn proves_peer_ids(&self) -> bool {
        true
    }

    async fn recv_from_node(&self) -> Result<(PeerAddr, Option<NodeId>, Bytes), TransportError> {
        let mut closing = self.shared.closing.subscribe();
        let mut rx = self.rx.lock().await;
        tokio::select! {
            biased;
            () = closed(&mut closing) => Err(TransportError::Closed),
            m = rx.recv() => m.ok_or(TransportError::Closed),
        }
    }

    /// Closes every connection (peers see a clean close at once) and the endpoint, waiting
    /// briefly (at most 1 s) for the close to reach them.
    async fn close(&self) {
        if self.shared.closing.send_replace(true) {
            return;
        }
        self.shared.endpoint.close(VarInt::from_u32(0), b"closed");
        self.shared.conns().clear();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
    }
}
