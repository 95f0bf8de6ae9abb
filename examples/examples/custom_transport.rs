//! Adding a transport: a hand-written UDP transport that counts its traffic, talking to a node
//! on the stock `kad-transport-udp`.
//!
//! A `kad::core::Transport` moves whole messages to and from `PeerAddr`s: `send` enqueues and
//! never waits, `recv` yields one message and where it came from, `close` makes `recv` return
//! `Closed`. The engine does the rest (retries, timeouts, the codec's signatures). Here the
//! transport wraps a `tokio::net::UdpSocket`. `TransportKind` is a closed enum, so it says
//! `Udp` and uses `udp://` addresses: on the wire it is plain UDP, so it interoperates with
//! every other UDP node.
//!
//! Node `a` runs on the stock UDP transport, node `b` on this one. `b` joins `a`, stores a
//! value, `a` reads it back with a get that waits for `b`'s copy too, and `b` pings `a`.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p kad-examples --example custom_transport
//! ```
//!
//! It prints each step, the transport's counters (`b's transport: sent 6 datagrams (3329
//! bytes), received 6 (2992 bytes)`), and finally
//! `ok: custom_transport interoperated with kad-transport-udp`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{Result, ensure};
use async_trait::async_trait;
use kad::NativeNode;
use kad::core::{
    Bytes, MAX_DATAGRAM, PeerAddr, Quorum, Transport, TransportError, TransportKind, content_key,
};
use kad::udp::UdpTransport;
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, watch};

/// UDP with counters.
struct CountingUdp {
    /// Receives (tokio waits for datagrams).
    socket: UdpSocket,
    /// Sends: the same socket, non-blocking, written to directly (see `send`).
    sender: std::net::UdpSocket,
    local: SocketAddr,
    /// The receive buffer: the runtime reads each transport from one task, so no contention.
    buf: Mutex<Vec<u8>>,
    closed: watch::Sender<bool>,
    count: Counters,
}

/// What went through the transport.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    received: AtomicU64,
    received_bytes: AtomicU64,
}

impl CountingUdp {
    /// Binds `addr` (call it within a tokio runtime).
    fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            local: socket.local_addr()?,
            sender: socket.try_clone()?,
            socket: UdpSocket::from_std(socket)?,
            buf: Mutex::new(vec![0; 65_536]),
            closed: watch::Sender::new(false),
            count: Counters::default(),
        })
    }
}

#[async_trait]
impl Transport for CountingUdp {
    fn kind(&self) -> TransportKind {
        TransportKind::Udp
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr::Udp(self.local)
    }

    fn max_message_len(&self) -> usize {
        MAX_DATAGRAM
    }

    async fn send(&self, to: &PeerAddr, msg: Bytes) -> Result<(), TransportError> {
        let PeerAddr::Udp(addr) = to else {
            return Err(TransportError::WrongKind(to.clone()));
        };
        if *self.closed.borrow() {
            return Err(TransportError::Closed);
        }
        if msg.len() > MAX_DATAGRAM {
            return Err(TransportError::TooLarge {
                len: msg.len(),
                max: MAX_DATAGRAM,
            });
        }
        // Never wait (the contract): a full socket buffer drops the datagram. The send goes
        // straight to the OS: tokio's `try_send_to` would report WouldBlock until its reactor
        // first saw the new socket writable, losing the first datagrams of a busy process.
        match self.sender.send_to(&msg, addr) {
            Ok(_) => {
                self.count.sent.fetch_add(1, Relaxed);
                self.count.sent_bytes.fetch_add(msg.len() as u64, Relaxed);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(TransportError::QueueFull),
            Err(e) => Err(TransportError::Io(e)),
        }
    }

    async fn recv(&self) -> Result<(PeerAddr, Bytes), TransportError> {
        let mut closed = self.closed.subscribe();
        let mut buf = self.buf.lock().await;
        loop {
            tokio::select! {
                _ = closed.wait_for(|c| *c) => return Err(TransportError::Closed),
                r = self.socket.recv_from(&mut buf[..]) => match r {
                    Ok((n, from)) => {
                        self.count.received.fetch_add(1, Relaxed);
                        self.count.received_bytes.fetch_add(n as u64, Relaxed);
                        return Ok((PeerAddr::Udp(from), Bytes::copy_from_slice(&buf[..n])));
                    }
                    // An ICMP error for an earlier send (a peer gone away) lands here on some
                    // systems: it is not the end of the socket.
                    Err(_) => continue,
                },
            }
        }
    }

    async fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// A native node on `transport`, with a fresh identity; the value limit follows the
/// transport's largest message.
async fn spawn_node(transport: Arc<dyn Transport>) -> Result<NativeNode> {
    Ok(NativeNode::builder().transport(transport).build().await?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let localhost: SocketAddr = "127.0.0.1:0".parse()?;

    let a = spawn_node(Arc::new(UdpTransport::bind(localhost).await?)).await?;
    let custom = Arc::new(CountingUdp::bind(localhost)?);
    let b = spawn_node(custom.clone()).await?;
    let a_addr = a.contact().addrs[0].clone();
    println!(
        "a (kad-transport-udp) at {a_addr}, b (CountingUdp) at {}",
        b.contact().addrs[0]
    );

    b.bootstrap(vec![a_addr.clone()]).await?;
    println!("b joined through a");

    let value = Bytes::from_static(b"sent through a hand-made transport");
    let key = content_key(&value);
    let put = b.put(key, value.clone()).await?;
    println!("b stored {key} on {} node(s)", put.stored);

    // Quorum 2: a's own copy is not enough, the get waits for b's answer too.
    let got = a.get_quorum(key, Quorum::n(2)).await?;
    ensure!(got.record.value == value, "a read another value");
    ensure!(got.answers >= 2, "b's copy did not arrive");
    println!(
        "a read it back from {} node(s): {:?}",
        got.answers,
        String::from_utf8_lossy(&got.record.value)
    );

    let pong = b.ping(a_addr).await?;
    println!("b pinged a: round trip {:?}", pong.rtt);

    b.shutdown().await;
    a.shutdown().await;
    println!(
        "b's transport: sent {} datagrams ({} bytes), received {} ({} bytes)",
        custom.count.sent.load(Relaxed),
        custom.count.sent_bytes.load(Relaxed),
        custom.count.received.load(Relaxed),
        custom.count.received_bytes.load(Relaxed),
    );
    println!("ok: custom_transport interoperated with kad-transport-udp");
    Ok(())
}
