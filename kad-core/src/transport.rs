//! The `Transport` hook: moves whole messages to and from [`PeerAddr`]s.

use async_trait::async_trait;
use bytes::Bytes;

use crate::addr::{PeerAddr, TransportKind};

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
/// - Connection-oriented transports manage their connections internally.
/// - Usable as `Arc<dyn Transport>`, so a node can run several at once.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The kind of addresses this transport serves.
    fn kind(&self) -> TransportKind;
    /// The address peers reach this transport at.
    fn local_addr(&self) -> PeerAddr;
    /// Largest message this transport carries, in bytes.
    fn max_message_len(&self) -> usize;
    /// Enqueues `msg` for `to`.
    async fn send(&self, to: &PeerAddr, msg: Bytes) -> Result<(), TransportError>;
    /// Waits for the next message.
    async fn recv(&self) -> Result<(PeerAddr, Bytes), TransportError>;
}

#[cfg(feature = "tokio")]
pub use memory::{MemoryNetwork, MemoryTransport};

#[cfg(feature = "tokio")]
mod memory {
    use std::collections::HashMap;
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
    }

    impl MemoryNetwork {
        /// A new, empty network.
        pub fn new() -> Self {
            Self::default()
        }

        /// A transport on a fresh address, with a receive queue of `queue` messages
        /// (messages beyond it are dropped, as a UDP socket buffer would).
        pub fn transport(&self, queue: usize) -> MemoryTransport {
            let (tx, rx) = mpsc::channel(queue.max(1));
            let mut net = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            net.next += 1;
            let n = net.next;
            net.peers.insert(n, tx);
            MemoryTransport {
                addr: PeerAddr::Mem(n),
                net: self.clone(),
                rx: tokio::sync::Mutex::new(rx),
                max_len: 64 * 1024,
            }
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

        fn inbox(&self, n: u64) -> Option<Inbox> {
            self.inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .peers
                .get(&n)
                .cloned()
        }
    }

    /// One endpoint of a [`MemoryNetwork`].
    pub struct MemoryTransport {
        addr: PeerAddr,
        net: MemoryNetwork,
        rx: tokio::sync::Mutex<mpsc::Receiver<(PeerAddr, Bytes)>>,
        max_len: usize,
    }

    impl Drop for MemoryTransport {
        fn drop(&mut self) {
            self.net.disconnect(&self.addr);
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
            if msg.len() > self.max_len {
                return Err(TransportError::TooLarge {
                    len: msg.len(),
                    max: self.max_len,
                });
            }
            let PeerAddr::Mem(n) = to else {
                return Err(TransportError::WrongKind(to.clone()));
            };
            let inbox = self
                .net
                .inbox(*n)
                .ok_or_else(|| TransportError::Unreachable(to.clone()))?;
            inbox
                .try_send((self.addr.clone(), msg))
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => TransportError::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => TransportError::Unreachable(to.clone()),
                })
        }
        async fn recv(&self) -> Result<(PeerAddr, Bytes), TransportError> {
            self.rx
                .lock()
                .await
                .recv()
                .await
                .ok_or(TransportError::Closed)
        }
    }
}
