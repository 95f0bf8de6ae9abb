//! WebSocket transport for the kad framework: `ws://` and `wss://`, server and client, on tokio
//! with tungstenite, and TLS through rustls (*ring* provider only).
//!
//! A [`WsTransport`] made with [`bind`](WsTransport::bind) listens for WebSocket connections
//! and also dials out; one made with [`client`](WsTransport::client) only dials (a browser-like
//! node behind NAT). Addresses are URLs: `ws://host:port/path` or `wss://host:port/path`.
//!
//! - **Messages**: one message is one binary WebSocket message, of at most
//!   [`WsConfig::max_message_len`] bytes (default 1 MiB, at most [`MAX_MESSAGE_LEN`], 16 MiB).
//!   A larger `send` fails with `TooLarge`. A peer sending a larger message (or frame) has its
//!   connection closed with close code 1009 and the message is never delivered, not even in
//!   part (counted in [`WsStats::oversize`]). Text frames are dropped and counted
//!   ([`WsStats::non_binary`]).
//! - **Connections**: `send` never waits. It queues the message on the connection to the
//!   address (at most [`WsConfig::send_queue`] messages, default 1024, else `QueueFull`); with
//!   no connection yet, it opens one and queues the message while dialing. At most
//!   [`WsConfig::max_connections`] connections (default 10,000, inbound and outbound together)
//!   are open or being set up: past it, `send` to a new address fails with `ConnectionLimit`
//!   and inbound upgrade requests are refused with HTTP 503. TCP connections arriving while
//!   64 more than that are open or in their handshake are dropped unanswered.
//! - **Dialing**: TCP, TLS for `wss://` (SNI and certificate check against the URL's host,
//!   trusting [`WsConfig::tls_client`], default the webpki roots), then the WebSocket
//!   handshake, all within [`WsConfig::connect_timeout`] (default 5 s). If it fails, what was
//!   queued is dropped (counted in [`WsStats::dropped`]) and sends to that URL fail at once with
//!   `Unreachable` for a backoff that doubles from [`WsConfig::reconnect_backoff_min`]
//!   (100 ms) to [`WsConfig::reconnect_backoff_max`] (30 s) with each failure in a row, and is
//!   reset by a successful dial. Once it has passed, the next send dials again.
//! - **Serving**: the listener accepts upgrade requests for [`WsConfig::path`] only (default
//!   `/kad`; others get HTTP 404), serves `wss://` when [`WsConfig::tls_server`] is set, and
//!   gives each connection [`WsConfig::handshake_timeout`] (default 5 s) for its TLS and
//!   WebSocket handshakes, each in its own task, so a stalled client delays nobody.
//! - **Addresses**: messages on a connection this transport dialed come from the very address
//!   dialed, so answering them reuses the connection. Messages on a connection a peer opened
//!   come from `ws://IP:PORT` (`wss://` with TLS), the peer's side of that TCP connection;
//!   sends to it use the connection while it is open, and afterwards try to dial it, which
//!   normally fails (kad-core knows such sources are not dialable:
//!   `TransportKind::source_is_dialable`). The peer's own listening URL is the one to keep.
//! - **Liveness**: each connection sends a Ping every [`WsConfig::ping_interval`] (default
//!   20 s) and is closed when nothing at all arrives on it for `ping_interval` +
//!   [`WsConfig::pong_timeout`] (default 20 s), or when no message goes either way for
//!   [`WsConfig::idle_timeout`] (default 5 min). Pings from peers are answered.
//! - **Behind a reverse proxy**: set [`WsConfig::public_url`] (e.g. `wss://example.org/kad`) to
//!   advertise that URL instead of the bound address, and [`WsConfig::path`] to the path the
//!   proxy forwards.
//! - **Resources**: every queue is bounded; received messages wait in one inbox of 4,096
//!   messages (a full inbox stops reading from the connections that have more, which pushes
//!   back on those peers over TCP). A connection costs two small tasks and buffers of a few KiB
//!   (4 KiB to read, 8 KiB to write); its write buffer grows to the largest message it sent
//!   and keeps that capacity.
//! - **Closing**: [`close`](kad_core::Transport::close) stops the listener, sends a Close frame
//!   on every connection and waits for them (about a second at most); pending and later
//!   `recv`s return `Closed`, sends fail with `Closed`. Dropping the last handle also stops
//!   every task and releases the port.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use kad_core::Transport;
//! use kad_transport_ws::{WsConfig, WsTransport};
//! let a = WsTransport::bind("127.0.0.1:0".parse().unwrap(), WsConfig::default()).await?;
//! let b = WsTransport::bind("127.0.0.1:0".parse().unwrap(), WsConfig::default()).await?;
//! assert!(b.local_addr().to_string().ends_with("/kad"));
//! a.send(&b.local_addr(), bytes::Bytes::from_static(b"hi")).await.unwrap();
//! let (from, msg) = b.recv().await.unwrap();
//! assert_eq!(&msg[..], b"hi");
//! // `from` names the connection a opened: the answer travels back on it.
//! b.send(&from, bytes::Bytes::from_static(b"hello")).await.unwrap();
//! let (from, msg) = a.recv().await.unwrap();
//! assert_eq!((from, &msg[..]), (b.local_addr(), &b"hello"[..]));
//! a.close().await;
//! b.close().await;
//! # Ok(()) }
//! ```

mod conn;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kad_core::{PeerAddr, Transport, TransportError, TransportKind};
use tokio::net::TcpSocket;
use tokio::sync::{Mutex, mpsc};

use crate::conn::{Alive, ConnHandle, Shared, Slot, Target, bump};
pub use crate::tls::TlsError;

/// Largest message any [`WsTransport`] carries: [`WsConfig::max_message_len`] is clamped to it.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;

/// Received messages waiting for [`recv`](Transport::recv).
const INBOX: usize = 4096;

/// Backlog of the listening socket.
const BACKLOG: u32 = 1024;

/// What a transport that only dials reports as its address.
const PLACEHOLDER: &str = "ws://0.0.0.0:0";

/// Settings of a [`WsTransport`]. Build it with the setters from [`Default`]:
///
/// ```
/// use std::time::Duration;
/// let c = kad_transport_ws::WsConfig::default()
///     .max_message_len(64 * 1024)
///     .public_url("wss://example.org/kad")
///     .ping_interval(Duration::from_secs(30));
/// assert_eq!(c.path, "/kad");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WsConfig {
    /// Largest message sent or accepted, in bytes (default 1 MiB; clamped to 1 ..=
    /// [`MAX_MESSAGE_LEN`]). Also the largest WebSocket frame accepted.
    pub max_message_len: usize,
    /// Connections open or being set up at once, inbound and outbound together (default
    /// 10,000; at least 1).
    pub max_connections: usize,
    /// The URL path the server accepts upgrade requests on (default `/kad`); others get HTTP
    /// 404. A path without a leading `/` gets one.
    pub path: String,
    /// The URL to advertise as [`local_addr`](Transport::local_addr) instead of the bound
    /// address, e.g. `wss://example.org/kad` behind a reverse proxy (default none).
    pub public_url: Option<String>,
    /// Interval between Pings on each connection (default 20 s).
    pub ping_interval: Duration,
    /// A connection on which nothing arrives for `ping_interval + pong_timeout` is closed
    /// (default 20 s).
    pub pong_timeout: Duration,
    /// A connection with no message either way for this long is closed (default 5 min).
    pub idle_timeout: Duration,
    /// Time for TCP connect, TLS and WebSocket handshakes when dialing (default 5 s).
    pub connect_timeout: Duration,
    /// Time for TLS and WebSocket handshakes of inbound connections (default 5 s).
    pub handshake_timeout: Duration,
    /// Messages queued per connection (default 1024; at least 1).
    pub send_queue: usize,
    /// First backoff after a failed dial (default 100 ms).
    pub reconnect_backoff_min: Duration,
    /// Longest backoff after failed dials in a row (default 30 s).
    pub reconnect_backoff_max: Duration,
    /// TLS for the listener: when set, it serves `wss://` (default none: `ws://`). See
    /// [`tls::server_config_from_pem`].
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// TLS for dialing `wss://` (default: [`tls::client_config`] with no extra roots, i.e. the
    /// webpki roots).
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_message_len: 1024 * 1024,
            max_connections: 10_000,
            path: "/kad".to_owned(),
            public_url: None,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            send_queue: 1024,
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(30),
            tls_server: None,
            tls_client: None,
        }
    }
}

impl WsConfig {
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
    /// Sets [`path`](Self::path).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }
    /// Sets [`public_url`](Self::public_url).
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.public_url = Some(url.into());
        self
    }
    /// Sets [`ping_interval`](Self::ping_interval).
    pub fn ping_interval(mut self, d: Duration) -> Self {
        self.ping_interval = d;
        self
    }
    /// Sets [`pong_timeout`](Self::pong_timeout).
    pub fn pong_timeout(mut self, d: Duration) -> Self {
        self.pong_timeout = d;
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
    /// Sets [`handshake_timeout`](Self::handshake_timeout).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }
    /// Sets [`send_queue`](Self::send_queue).
    pub fn send_queue(mut self, n: usize) -> Self {
        self.send_queue = n;
        self
    }
    /// Sets [`reconnect_backoff_min`](Self::reconnect_backoff_min).
    pub fn reconnect_backoff_min(mut self, d: Duration) -> Self {
        self.reconnect_backoff_min = d;
        self
    }
    /// Sets [`reconnect_backoff_max`](Self::reconnect_backoff_max).
    pub fn reconnect_backoff_max(mut self, d: Duration) -> Self {
        self.reconnect_backoff_max = d;
        self
    }
    /// Sets [`tls_server`](Self::tls_server).
    pub fn tls_server(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls_server = Some(config);
        self
    }
    /// Sets [`tls_client`](Self::tls_client).
    pub fn tls_client(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls_client = Some(config);
        self
    }

    /// Brings every setting into its valid range.
    fn normalized(mut self) -> Self {
        let ms = Duration::from_millis(1);
        self.max_message_len = self.max_message_len.clamp(1, MAX_MESSAGE_LEN);
        self.max_connections = self.max_connections.max(1);
        self.send_queue = self.send_queue.max(1);
        if !self.path.starts_with('/') {
            self.path.insert(0, '/');
        }
        self.ping_interval = self.ping_interval.max(ms);
        self.pong_timeout = self.pong_timeout.max(ms);
        self.idle_timeout = self.idle_timeout.max(ms);
        self.connect_timeout = self.connect_timeout.max(ms);
        self.handshake_timeout = self.handshake_timeout.max(ms);
        self.reconnect_backoff_min = self.reconnect_backoff_min.max(ms);
        self.reconnect_backoff_max = self.reconnect_backoff_max.max(self.reconnect_backoff_min);
        self
    }
}

/// Counters of a [`WsTransport`], since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsStats {
    /// Messages written to connections.
    pub sent: u64,
    /// Messages received (whole binary messages within the limit), passed on to `recv`.
    pub received: u64,
    /// Inbound connections accepted (handshake completed).
    pub accepted: u64,
    /// Outbound connections established.
    pub dialed: u64,
    /// Connections refused at the connection limit: sends failing with `ConnectionLimit`,
    /// upgrade requests answered with HTTP 503, TCP connections dropped unanswered.
    pub refused_limit: u64,
    /// Dials that failed (TCP, TLS or WebSocket handshake, or timeout).
    pub failed: u64,
    /// Inbound connections whose handshake failed or timed out, or that asked for the wrong
    /// path.
    pub handshake_failures: u64,
    /// Connections closed because the peer sent a message over the limit.
    pub oversize: u64,
    /// Text frames received and dropped.
    pub non_binary: u64,
    /// Sends refused because the connection's queue was full.
    pub queue_full: u64,
    /// Queued messages dropped because their connection failed or closed before sending them.
    pub dropped: u64,
    /// Pings sent.
    pub pings_sent: u64,
    /// Connections closed by the pong or idle timeout, or because a write stalled.
    pub timeouts: u64,
}

/// A WebSocket transport (see the [crate documentation](crate) for its behaviour). Share it as
/// `Arc<dyn Transport>`; dropping the last handle stops its tasks.
pub struct WsTransport {
    shared: Arc<Shared>,
    local: PeerAddr,
    listening: bool,
    inbox: Mutex<mpsc::Receiver<(PeerAddr, Bytes)>>,
    /// Ends (`None`) once every task has finished.
    alive: Mutex<mpsc::Receiver<()>>,
}

impl std::fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTransport")
            .field("local", &self.local)
            .field("listening", &self.listening)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl WsTransport {
    /// Listens on `listen` (port 0 picks a free port) and dials out as needed. Its address is
    /// [`WsConfig::public_url`] if set, else `ws://IP:PORT/path` (`wss://` with
    /// [`WsConfig::tls_server`]). Fails if the port cannot be bound or `public_url` is not a
    /// `ws://` or `wss://` URL. Must be called within a tokio runtime.
    pub async fn bind(listen: SocketAddr, config: WsConfig) -> io::Result<Self> {
        let config = config.normalized();
        let public = match &config.public_url {
            Some(url) => match url.parse::<PeerAddr>() {
                Ok(addr @ PeerAddr::Ws(_)) => Some(addr),
                _ => return Err(invalid(format!("public_url {url:?} is not a ws:// URL"))),
            },
            None => None,
        };
        let socket = if listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // A restarted node gets its port back while old connections linger in TIME_WAIT.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(BACKLOG)?;
        let local = match public {
            Some(addr) => addr,
            None => {
                let scheme = if config.tls_server.is_some() {
                    "wss"
                } else {
                    "ws"
                };
                let url = format!("{scheme}://{}{}", listener.local_addr()?, config.path);
                url.parse()
                    .map_err(|e| invalid(format!("cannot make an address of {url:?}: {e}")))?
            }
        };
        let (transport, alive) = Self::new(config, local, true);
        tokio::spawn(conn::accept_loop(transport.shared.clone(), listener, alive));
        Ok(transport)
    }

    /// A transport that only dials out: it accepts no connection,
    /// [`listen_addr`](Transport::listen_addr) is `None` and
    /// [`local_addr`](Transport::local_addr) is the placeholder `ws://0.0.0.0:0`. Peers answer
    /// on the connections it opens.
    pub fn client(config: WsConfig) -> Self {
        let config = config.normalized();
        let local = PLACEHOLDER
            .parse()
            .unwrap_or_else(|_| PeerAddr::Ws(Arc::from(PLACEHOLDER)));
        Self::new(config, local, false).0
    }

    fn new(config: WsConfig, local: PeerAddr, listening: bool) -> (Self, Alive) {
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
        let (alive, alive_rx) = Alive::new();
        let shared = Arc::new(Shared::new(config, inbox_tx, alive.clone()));
        let transport = Self {
            shared,
            local,
            listening,
            inbox: Mutex::new(inbox_rx),
            alive: Mutex::new(alive_rx),
        };
        (transport, alive)
    }

    /// The configuration in use (after clamping).
    pub fn config(&self) -> &WsConfig {
        &self.shared.config
    }

    /// Connections open now or being set up (dialing, or inbound past the upgrade request).
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Counters since the transport was created.
    pub fn stats(&self) -> WsStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WsStats {
            sent: l(&c.sent),
            received: l(&c.received),
            accepted: l(&c.accepted),
            dialed: l(&c.dialed),
            refused_limit: l(&c.refused_limit),
            failed: l(&c.failed),
            handshake_failures: l(&c.handshake_failures),
            oversize: l(&c.oversize),
            non_binary: l(&c.non_binary),
            queue_full: l(&c.queue_full),
            dropped: l(&c.dropped),
            pings_sent: l(&c.pings_sent),
            timeouts: l(&c.timeouts),
        }
    }
}

impl Drop for WsTransport {
    fn drop(&mut self) {
        self.shared.closing.send_replace(true);
        self.shared.lock().alive = None;
    }
}

#[async_trait]
impl Transport for WsTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Ws
    }

    fn local_addr(&self) -> PeerAddr {
        self.local.clone()
    }

    fn listen_addr(&self) -> Option<PeerAddr> {
        self.listening.then(|| self.local.clone())
    }

    fn max_message_len(&self) -> usize {
        self.shared.config.max_message_len
    }

    async fn send(&self, to: &PeerAddr, msg: Bytes) -> Result<(), TransportError> {
        let PeerAddr::Ws(url) = to else {
            return Err(TransportError::WrongKind(to.clone()));
        };
        let shared = &self.shared;
        if shared.is_closing() {
            return Err(TransportError::Closed);
        }
        let max = shared.config.max_message_len;
        if msg.len() > max {
            return Err(TransportError::TooLarge {
                len: msg.len(),
                max,
            });
        }
        let mut st = shared.lock();
        if st.alive.is_none() {
            return Err(TransportError::Closed);
        }
        let msg = match st.conns.get(to) {
            Some(c) => match c.tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    bump(&shared.counters.queue_full);
                    return Err(TransportError::QueueFull);
                }
                // That connection has just ended: start a new one.
                Err(mpsc::error::TrySendError::Closed(msg)) => {
                    st.conns.remove(to);
                    msg
                }
            },
            None => msg,
        };
        if st
            .backoff
            .get(to)
            .is_some_and(|b| b.until > tokio::time::Instant::now())
        {
            return Err(TransportError::Unreachable(to.clone()));
        }
        let Some(target) = Target::parse(url) else {
            return Err(TransportError::Unreachable(to.clone()));
        };
        let Some(alive) = st.alive.clone() else {
            return Err(TransportError::Closed);
        };
        let Some(slot) = Slot::acquire(shared) else {
            bump(&shared.counters.refused_limit);
            return Err(TransportError::ConnectionLimit(
                shared.config.max_connections,
            ));
        };
        let (tx, rx) = mpsc::channel(shared.config.send_queue);
        if tx.try_send(msg).is_err() {
            return Err(TransportError::QueueFull); // unreachable: a new queue has room
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        st.conns.insert(to.clone(), ConnHandle { id, tx });
        drop(st);
        tokio::spawn(conn::outbound(
            shared.clone(),
            to.clone(),
            target,
            id,
            rx,
            slot,
            alive,
        ));
        Ok(())
    }

    async fn recv(&self) -> Result<(PeerAddr, Bytes), TransportError> {
        let mut closing = self.shared.closing.subscribe();
        tokio::select! {
            biased;
            _ = closing.wait_for(|c| *c) => Err(TransportError::Closed),
            m = async { self.inbox.lock().await.recv().await } => m.ok_or(TransportError::Closed),
        }
    }

    /// Stops the listener, sends a Close frame on every connection and waits (about a second
    /// at most) for every task to finish. Calling it again is harmless.
    async fn close(&self) {
        self.shared.closing.send_replace(true);
        let alive = self.shared.lock().alive.take();
        drop(alive);
        let mut tasks = self.alive.lock().await;
        // Each task ends within CLOSE_WAIT of seeing the flag; the margin covers a loaded host.
        let _ = tokio::time::timeout(conn::CLOSE_WAIT * 2, tasks.recv()).await;
    }
}
