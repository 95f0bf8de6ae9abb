//! The `Transport` hook: moves whole messages to and from [`PeerAddr`]s.

use async_trait::async_trait;
use bytes::Bytes;

use crate::addr::{PeerAddr, TransportKind};
use crate::id::NodeId;

/// Why a transport could not send or receive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The message is larger than [`Transport::max_message_len`].
    #[error("message of {len} bytes exceeds the transport limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The address belongs to another kind of transport.
    #[error("address {0} is not for this transport")]
    WrongKind(PeerAddr),
    /// The send queue is full; the message was dropped.
    #[error("send queue full")]
    QueueFull,
    /// The peer is unknown or unreachable.
    #[error("peer {0} unreachable")]
    Unreachable(PeerAddr),
    /// The transport was closed.
    #[error("transport closed")]
    Closed,
    /// A new connection would exceed the transport's connection limit.
    #[error("connection limit of {0} reached")]
    ConnectionLimit(usize),
    /// The peer proved another identity than the one expected at this address.
    #[error("peer at {addr} is {found}, not the expected {expected}")]
    WrongPeer {
        /// The address.
        addr: PeerAddr,
        /// The node id expected there.
        expected: NodeId,
        /// The node id the peer proved.
        found: NodeId,
    },
    /// An operating-system error.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

/// Moves whole messages between this node and peers.
///
/// Contract:
/// - `send` enqueues and returns; it never waits for the peer to answer, and a full queue drops
///   the message (`QueueFull`) rather than blocking the engine.
/// - `recv` yields one whole message at a time with the address it came from, in a form that can
///   be used to answer it.
/// - Connection-oriented transports manage their connections internally: the address a message
///   arrives from is one that an answer can be sent to (for a connection the peer opened, it
///   names that connection and may stop working when it closes).
/// - A message larger than [`max_message_len`](Self::max_message_len) is refused by `send`
///   with `TooLarge`; one arriving from a peer is dropped and counted, never delivered in part.
/// - After [`close`](Self::close), `recv` returns `Closed` and `send` fails.
/// - Usable as `Arc<dyn Transport>`, so a node can run several at once.
///
/// Every transport of the workspace passes the same conformance suite
/// (`kad_testkit::conformance`).
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The kind of addresses this transport serves.
    fn kind(&self) -> TransportKind;
    /// The address peers reach this transport at (for a transport that only dials out, the
    /// placeholder it reports as its own; see [`listen_addr`](Self::listen_addr)).
    fn local_addr(&self) -> PeerAddr;
    /// The address to advertise in the node's contact, if peers can reach this transport at all.
    /// Default: `Some(local_addr())`.
    fn listen_addr(&self) -> Option<PeerAddr> {
        Some(self.local_addr())
    }
    /// Largest message this transport carries, in bytes.
    fn max_message_len(&self) -> usize;
    /// Enqueues `msg` for `to`.
    async fn send(&self, to: &PeerAddr, msg: Bytes) -> Result<(), TransportError>;
    /// Like [`send`](Self::send), naming the node expected at `to` when it is known.
    /// Transports that authenticate peers (QUIC) refuse to deliver to a peer that proves
    /// another id. Default: `send`.
    async fn send_to_node(
        &self,
        to: &PeerAddr,
        node: Option<NodeId>,
        msg: Bytes,
    ) -> Result<(), TransportError> {
        let _ = node;
        self.send(to, msg).await
    }
    /// Waits for the next message.
    async fn recv(&self) -> Result<(PeerAddr, Bytes), TransportError>;
    /// Whether this transport proves the node id of every peer it carries messages to and from
    /// (QUIC: TLS with certificates bound to the node keys). Such a transport must name the
    /// proven sender of every message in [`recv_from_node`](Self::recv_from_node), and deliver a
    /// [`send_to_node`](Self::send_to_node) naming a node only to a peer that proved that id.
    /// The native codec then sends messages on it without a per-message signature or MAC.
    /// Default: false.
    fn proves_peer_ids(&self) -> bool {
        false
    }
    /// Like [`recv`](Self::recv), with the node id the transport proved for the sender, if it
    /// proves any. Default: `recv`, proving nothing.
    async fn recv_from_node(&self) -> Result<(PeerAddr, Option<NodeId>, Bytes), TransportError> {
        let (from, data) = self.recv().await?;
        Ok((from, None, data))
    }
    /// Closes the transport: connections are closed cleanly, pending `recv`s return `Closed`.
    /// Calling it again is harmless. Default: nothing to close.
    async fn close(&self) {}
}

#[cfg(feature = "tokio")]
pub use memory::{MemoryNetwork, MemoryTransport};

#[cfg(feature = "tokio")]
mod memory {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use tokio::sync::mpsc;

    type Inbox = mpsc::Sender<(PeerAddr, Bytes)>;

    /// An in-process network of [`MemoryTransport`]s, for tests and examples. Addresses are `mem://N`.
    #[derive(Clone, Default)]
    pub struct MemoryNetwork {
        inner: Arc<Mutex<Net>>,
    }

    #[derive(Default)]
    struct Net {
        next: u64,
        peers: HashMap<u64, Inbox>,
        /// Endpoints cut off by [`MemoryNetwork::cut`]: what they send and what is sent to them
        /// is lost.
        cut: std::collections::HashSet<u64>,
        /// One-way delays of endpoints set by [`MemoryNetwork::delay`].
        delay: HashMap<u64, std::time::Duration>,
    }

    impl MemoryNetwork {
        /// A new, empty network.
        pub fn new() -> Self {
            Self::default()
        }

        /// A transport on a fresh address, with a receive queue of `queue` messages
        /// (messages beyond it are dropped, as a UDP socket buffer would).
        pub fn transport(&self, queue: usize) -> MemoryTransport {
            let n = {
                let mut net = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                net.next += 1;
                net.next
            };
            self.transport_at(n, queue)
        }

        /// A transport on the address `mem://n` (a peer restarting on its old address). An
        /// endpoint already there is replaced: messages go to the new one from now on.
        pub fn transport_at(&self, n: u64, queue: usize) -> MemoryTransport {
            let (tx, rx) = mpsc::channel(queue.max(1));
            let mut net = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            net.next = net.next.max(n);
            net.peers.insert(n, tx.clone());
            MemoryTransport {
                addr: PeerAddr::Mem(n),
                net: self.clone(),
                rx: tokio::sync::Mutex::new(rx),
                me: tx,
                closed: AtomicBool::new(false),
                closing: tokio::sync::watch::channel(false).0,
                max_len: 64 * 1024,
            }
        }

        /// Cuts an endpoint off (`true`, an outage: every message it sends or is sent is lost
        /// silently, as on a dead link) or brings it back (`false`).
        pub fn cut(&self, addr: &PeerAddr, off: bool) {
            if let PeerAddr::Mem(n) = addr {
                let mut net = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if off {
                    net.cut.insert(*n);
                } else {
                    net.cut.remove(n);
                }
            }
        }

        /// Delays every message `addr` sends or is sent by `one_way` (a peer far away: a
        /// message between two delayed endpoints takes both delays). `Duration::ZERO` removes
        /// the delay. Each delayed message travels in a task of its own and may arrive out of
        /// order, as datagrams do; one whose endpoint is cut off or gone by then is lost.
        pub fn delay(&self, addr: &PeerAddr, one_way: std::time::Duration) {
            if let PeerAddr::Mem(n) = addr {
                let mut net = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if one_way.is_zero() {
                    net.delay.remove(n);
                } else {
                    net.delay.insert(*n, one_way);
                }
            }
        }

        fn delay_between(&self, a: u64, b: u64) -> std::time::Duration {
            let net = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let d = |n| net.delay.get(&n).copied().unwrap_or_default();
            d(a) + d(b)
        }

        fn is_cut(&self, a: u64, b: u64) -> bool {
            let net = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            net.cut.contains(&a) || net.cut.contains(&b)
        }

        /// Removes an endpoint: messages to it are dropped from now on (a peer going away).
        pub fn disconnect(&self, addr: &PeerAddr) {
            if let PeerAddr::Mem(n) = addr {
                self.inner
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .peers
                    .remove(n);
            }
        }

        /// Removes the endpoint at `addr` only if it is still `me` (not a newer one there).
        fn disconnect_if(&self, n: u64, me: &Inbox) {
            let mut net = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if net.peers.get(&n).is_some_and(|tx| tx.same_channel(me)) {
                net.peers.remove(&n);
            }
        }

        fn inbox(&self, n: u64) -> Option<Inbox> {
            self.inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .peers
                .get(&n)
                .cloned()
        }
    }

    /// One endpoint of a [`MemoryNetwork`]. Messages of up to 64 KiB; a full receive queue
    /// drops, like a socket buffer.
    pub struct MemoryTransport {
        addr: PeerAddr,
        net: MemoryNetwork,
        rx: tokio::sync::Mutex<mpsc::Receiver<(PeerAddr, Bytes)>>,
        /// Our own inbox sender, to tell it apart from a newer endpoint at the same address.
        me: Inbox,
        closed: AtomicBool,
        closing: tokio::sync::watch::Sender<bool>,
        max_len: usize,
    }

    impl MemoryTransport {
        /// Sets the largest message sent or accepted (default 64 KiB); larger ones received
        /// are dropped.
        pub fn with_max_len(mut self, max: usize) -> Self {
            self.max_len = max.max(1);
            self
        }

        fn unregister(&self) {
            if let PeerAddr::Mem(n) = self.addr {
                self.net.disconnect_if(n, &self.me);
            }
        }
    }

    impl Drop for MemoryTransport {
        fn drop(&mut self) {
            self.unregister();
        }
    }

    #[async_trait]
    impl Transport for MemoryTransport {
        fn kind(&self) -> TransportKind {
            TransportKind::Mem
        }
        fn local_addr(&self) -> PeerAddr {
            self.addr.clone()
        }
        fn max_message_len(&self) -> usize {
            self.max_len
        }
        async fn send(&self, to: &PeerAddr, msg: Bytes) -> Result<(), TransportError> {
            if self.closed.load(Ordering::Acquire) {
                return Err(TransportError::Closed);
            }
            if msg.len() > self.max_len {
                return Err(TransportError::TooLarge {
                    len: msg.len(),
                    max: self.max_len,
                });
            }
            let PeerAddr::Mem(n) = to else {
                return Err(TransportError::WrongKind(to.clone()));
            };
            if let PeerAddr::Mem(me) = self.addr {
                if self.net.is_cut(me, *n) {
                    return Ok(()); // lost on the way
                }
            }
            let inbox = self
                .net
                .inbox(*n)
                .ok_or_else(|| TransportError::Unreachable(to.clone()))?;
            let delay = match self.addr {
                PeerAddr::Mem(me) => self.net.delay_between(me, *n),
                _ => std::time::Duration::ZERO,
            };
            if let (false, PeerAddr::Mem(me), Ok(rt)) = (
                delay.is_zero(),
                &self.addr,
                tokio::runtime::Handle::try_current(),
            ) {
                // On its way: a cut at arrival loses it, a full queue drops it, as a socket
                // buffer would.
                let (from, me, to, net) = (self.addr.clone(), *me, *n, self.net.clone());
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    if !net.is_cut(me, to) {
                        let _ = inbox.try_send((from, msg));
                    }
                });
                return Ok(());
            }
            inbox
                .try_send((self.addr.clone(), msg))
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => TransportError::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => TransportError::Unreachable(to.clone()),
                })
        }
        async fn recv(&self) -> Result<(PeerAddr, Bytes), TransportError> {
            let mut closing = self.closing.subscribe();
            let mut rx = self.rx.lock().await;
            loop {
                let m = tokio::select! {
                    biased;
                    _ = closing.wait_for(|c| *c) => return Err(TransportError::Closed),
                    m = rx.recv() => m.ok_or(TransportError::Closed)?,
                };
                // A sender with a higher limit may pass a message over ours: drop it.
                if m.1.len() <= self.max_len {
                    return Ok(m);
                }
            }
        }
        async fn close(&self) {
            if !self.closed.swap(true, Ordering::AcqRel) {
                self.unregister();
                self.closing.send_replace(true);
            }
        }
    }
}
