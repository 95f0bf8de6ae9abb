//! The QUIC transport passes the transport conformance suite.

use std::any::Any;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kad_core::{NativeIdentity, PeerAddr, Transport};
use kad_testkit::conformance::{Harness, guard};
use kad_transport_quic::{QuicConfig, QuicTransport};

#[derive(Default)]
struct Quic {
    next: AtomicU64,
    /// The identity bound at each address, so a restart keeps it.
    identities: Mutex<HashMap<SocketAddr, Arc<NativeIdentity>>>,
}

impl Quic {
    fn identity(&self) -> Arc<NativeIdentity> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut secret = [0x42u8; 32];
        secret[..8].copy_from_slice(&n.to_be_bytes());
        Arc::new(NativeIdentity::from_secret(&secret).unwrap())
    }

    fn config() -> QuicConfig {
        // Short dial timeouts keep the stalled-peer case quick.
        QuicConfig::default().connect_timeout(Duration::from_secs(2))
    }

    fn bind_with(&self, addr: SocketAddr, config: QuicConfig) -> Arc<dyn Transport> {
        let id = self.identity();
        let t = QuicTransport::bind(addr, id.clone(), config).unwrap();
        self.identities.lock().unwrap().insert(t.socket_addr(), id);
        Arc::new(t)
    }
}

fn sock(addr: &PeerAddr) -> SocketAddr {
    addr.socket_addr().expect("a quic:// address")
}

#[async_trait]
impl Harness for Quic {
    fn name(&self) -> &'static str {
        "quic"
    }
    fn reliable(&self) -> bool {
        true
    }
    async fn bind(&self) -> Arc<dyn Transport> {
        self.bind_with("127.0.0.1:0".parse().unwrap(), Self::config())
    }
    async fn bind_with_max_len(&self, max: usize) -> Arc<dyn Transport> {
        self.bind_with(
            "127.0.0.1:0".parse().unwrap(),
            Self::config().max_message_len(max),
        )
    }
    async fn rebind(&self, addr: &PeerAddr) -> Arc<dyn Transport> {
        let a = sock(addr);
        let id = self.identities.lock().unwrap()[&a].clone();
        for _ in 0..100 {
            if let Ok(t) = QuicTransport::bind(a, id.clone(), Self::config()) {
                return Arc::new(t);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("could not bind {addr} again");
    }
    async fn bind_with_connection_limit(&self, n: usize) -> Option<Arc<dyn Transport>> {
        Some(self.bind_with(
            "127.0.0.1:0".parse().unwrap(),
            Self::config().max_connections(n),
        ))
    }
    async fn send_garbage(&self, to: &PeerAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let junk: Vec<u8> = (0..1200u32).map(|i| (i * 7919 % 251) as u8).collect();
        let _ = s.send_to(&junk, sock(to));
        // A long-header packet claiming QUIC v1 with nonsense inside.
        let mut fake = vec![0xc0, 0, 0, 0, 1, 8];
        fake.extend_from_slice(&[9; 1194]);
        let _ = s.send_to(&fake, sock(to));
    }
    async fn stall_towards(&self, to: &PeerAddr) -> Box<dyn Any + Send> {
        // A real peer that connects, sends one message, and never reads again.
        let t = self.bind().await;
        let _ = t.send(to, Bytes::from_static(b"hello, then silence")).await;
        guard(t)
    }
    async fn stalled_peer(&self) -> (PeerAddr, Box<dyn Any + Send>) {
        // A socket that never answers: handshakes time out.
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        (PeerAddr::Quic(s.local_addr().unwrap()), guard(s))
    }
}

kad_testkit::conformance_tests!(quic, Quic::default());
