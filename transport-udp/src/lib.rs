//! UDP transport for the kad framework: one tokio `UdpSocket`, IPv4 or IPv6.
//!
//! - **Message size**: one message is one datagram of at most [`MAX_DATAGRAM`] bytes (65,507, the
//!   IPv4 UDP payload limit); larger sends fail with `TooLarge`. The receive buffer holds any
//!   datagram the OS can deliver (64 KiB), so nothing is silently truncated; datagrams over the
//!   configured limit are dropped and counted.
//! - **Send queue**: a send first tries the socket directly; when the socket buffer is full the
//!   datagram waits in a bounded queue (default 1024) drained by a writer task, and when that is
//!   full too the send fails with `QueueFull`. Nothing ever blocks the engine.
//! - **OS errors** (unreachable hosts, ICMP port unreachable reported on receive, ...) are
//!   counted and logged; they never stop the transport.
//! - **Dual stack**: a socket bound to `[::]` reaches IPv4 peers through IPv4-mapped addresses,
//!   and reports them as plain IPv4 addresses.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use kad_core::Transport;
//! use kad_transport_udp::UdpTransport;
//! let a = UdpTransport::bind("127.0.0.1:0".parse().unwrap()).await?;
//! let b = UdpTransport::bind("127.0.0.1:0".parse().unwrap()).await?;
//! a.send(&b.local_addr(), bytes::Bytes::from_static(b"hi")).await.unwrap();
//! let (from, msg) = b.recv().await.unwrap();
//! assert_eq!((from, &msg[..]), (a.local_addr(), &b"hi"[..]));
//! # Ok(()) }
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use kad_core::{PeerAddr, Transport, TransportError, TransportKind};
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, trace};

/// Largest datagram this transport sends: the IPv4 UDP payload limit (65,535 - 8 - 20).
pub const MAX_DATAGRAM: usize = 65_507;

/// Size of the receive buffer: larger than any UDP payload, so no datagram is truncated.
const RECV_BUF: usize = 65_536;

/// Settings of a [`UdpTransport`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UdpConfig {
    /// Datagrams waiting for the socket when its buffer is full (default 1024).
    pub send_queue: usize,
    /// Largest datagram sent or accepted (default and maximum [`MAX_DATAGRAM`]).
    pub max_message_len: usize,
    /// Kernel receive buffer asked for at bind (`SO_RCVBUF`), default 4 MiB: room for dozens of
    /// full-size datagrams arriving at once (the usual 208 KiB holds three). The kernel caps it
    /// at `net.core.rmem_max`; 0 keeps the system default.
    pub recv_buffer: usize,
    /// Kernel send buffer asked for at bind (`SO_SNDBUF`), default 1 MiB; 0 keeps the default.
    pub send_buffer: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            send_queue: 1024,
            max_message_len: MAX_DATAGRAM,
            recv_buffer: 4 << 20,
            send_buffer: 1 << 20,
        }
    }
}

impl UdpConfig {
    /// Sets [`send_queue`](Self::send_queue).
    pub fn send_queue(mut self, n: usize) -> Self {
        self.send_queue = n;
        self
    }
    /// Sets [`max_message_len`](Self::max_message_len).
    pub fn max_message_len(mut self, n: usize) -> Self {
        self.max_message_len = n;
        self
    }
}

/// Counters of a [`UdpTransport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpStats {
    /// Datagrams handed to the OS.
    pub sent: u64,
    /// Datagrams received and passed on.
    pub received: u64,
    /// Datagrams that waited in the send queue.
    pub queued: u64,
    /// Sends refused because the queue was full.
    pub queue_full: u64,
    /// Send errors reported by the OS.
    pub send_errors: u64,
    /// Receive errors reported by the OS (e.g. ICMP port unreachable).
    pub recv_errors: u64,
    /// Received datagrams over `max_message_len`, dropped.
    pub oversize: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    queued: AtomicU64,
    queue_full: AtomicU64,
    send_errors: AtomicU64,
    recv_errors: AtomicU64,
    oversize: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A UDP transport. Cheap to share as `Arc<dyn Transport>`; dropping the last handle stops its
/// writer task.
pub struct UdpTransport {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    config: UdpConfig,
    queue: mpsc::Sender<(SocketAddr, Bytes)>,
    buf: Mutex<Vec<u8>>,
    counters: Arc<Counters>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for UdpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpTransport")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl UdpTransport {
    /// Binds `addr` (port 0 picks a free port) with the default [`UdpConfig`].
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, UdpConfig::default()).await
    }

    /// Binds `addr` with `config`. Must be called within a tokio runtime.
    pub async fn bind_with(addr: SocketAddr, config: UdpConfig) -> io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        // Best effort: a kernel that refuses a size keeps its default.
        if config.recv_buffer > 0 {
            let _ = s.set_recv_buffer_size(config.recv_buffer);
        }
        if config.send_buffer > 0 {
            let _ = s.set_send_buffer_size(config.send_buffer);
        }
        s.bind(&addr.into())?;
        Self::from_std(s.into(), config)
    }

    /// Wraps a socket bound elsewhere (e.g. with options set through `socket2`).
    pub fn from_std(socket: std::net::UdpSocket, config: UdpConfig) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self::from_socket(
            Arc::new(UdpSocket::from_std(socket)?),
            config,
        ))
    }

    fn from_socket(socket: Arc<UdpSocket>, mut config: UdpConfig) -> Self {
        config.max_message_len = config.max_message_len.clamp(1, MAX_DATAGRAM);
        config.send_queue = config.send_queue.max(1);
        let local = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (queue, rx) = mpsc::channel(config.send_queue);
        let counters = Arc::new(Counters::default());
        tokio::spawn(writer(socket.clone(), rx, counters.clone()));
        Self {
            socket,
            local,
            config,
            queue,
            buf: Mutex::new(vec![0; RECV_BUF]),
            counters,
            closing: tokio::sync::watch::channel(false).0,
        }
    }

    /// The socket address this transport is bound to.
    pub fn socket_addr(&self) -> SocketAddr {
        self.local
    }

    /// Counters since the transport was created.
    pub fn stats(&self) -> UdpStats {
        let c = &*self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UdpStats {
            sent: l(&c.sent),
            received: l(&c.received),
            queued: l(&c.queued),
            queue_full: l(&c.queue_full),
            send_errors: l(&c.send_errors),
            recv_errors: l(&c.recv_errors),
            oversize: l(&c.oversize),
        }
    }

    /// The address to hand the OS for `to`: IPv4 peers of an IPv6 socket go IPv4-mapped.
    fn target(&self, to: SocketAddr) -> SocketAddr {
        match (self.local, to) {
            (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => to,
        }
    }
}

async fn writer(
    socket: Arc<UdpSocket>,
    mut rx: mpsc::Receiver<(SocketAddr, Bytes)>,
    counters: Arc<Counters>,
) {
    while let Some((to, msg)) = rx.recv().await {
        match socket.send_to(&msg, to).await {
            Ok(_) => bump(&counters.sent),
            Err(e) => {
                bump(&counters.send_errors);
                debug!(peer = %to, error = %e, "udp send failed");
            }
        }
    }
}

#[async_trait]
impl Transport for UdpTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Udp
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr::Udp(self.local)
    }

    fn max_message_len(&self) -> usize {
        self.config.max_message_len
    }

    async fn send(&self, to: &PeerAddr, msg: Bytes) -> Result<(), TransportError> {
        let PeerAddr::Udp(addr) = to else {
            return Err(TransportError::WrongKind(to.clone()));
        };
        if *self.closing.borrow() {
            return Err(TransportError::Closed);
        }
        if msg.len() > self.config.max_message_len {
            return Err(TransportError::TooLarge {
                len: msg.len(),
                max: self.config.max_message_len,
            });
        }
        let target = self.target(*addr);
        match self.socket.try_send_to(&msg, target) {
            Ok(_) => {
                bump(&self.counters.sent);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match self.queue.try_send((target, msg)) {
                    Ok(()) => {
                        bump(&self.counters.queued);
                        Ok(())
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        bump(&self.counters.queue_full);
                        Err(TransportError::QueueFull)
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(TransportError::Closed),
                }
            }
            Err(e) => {
                bump(&self.counters.send_errors);
                Err(TransportError::Io(e))
            }
        }
    }

    async fn recv(&self) -> Result<(PeerAddr, Bytes), TransportError> {
        let mut closing = self.closing.subscribe();
        let mut buf = self.buf.lock().await;
        loop {
            let r = tokio::select! {
                biased;
                _ = closing.wait_for(|c| *c) => return Err(TransportError::Closed),
                r = self.socket.recv_from(&mut buf[..]) => r,
            };
            match r {
                Ok((n, from)) => {
                    if n > self.config.max_message_len {
                        bump(&self.counters.oversize);
                        trace!(peer = %from, len = n, "dropped an oversize datagram");
                        continue;
                    }
                    bump(&self.counters.received);
                    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                    return Ok((PeerAddr::Udp(from), Bytes::copy_from_slice(&buf[..n])));
                }
                Err(e) => {
                    // ICMP errors surface here on some systems; none of them stops the socket.
                    bump(&self.counters.recv_errors);
                    debug!(error = %e, "udp receive error");
                    if matches!(e.kind(), io::ErrorKind::Unsupported) {
                        return Err(TransportError::Io(e));
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    /// Stops receiving and sending; the socket is released when the last handle is dropped.
    async fn close(&self) {
        self.closing.send_replace(true);
    }
}
