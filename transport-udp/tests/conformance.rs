//! The UDP transport passes the transport conformance suite.

use std::any::Any;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kad_core::{PeerAddr, Transport};
use kad_testkit::conformance::{Harness, guard};
use kad_transport_udp::{UdpConfig, UdpTransport};

struct Udp;

fn sock(addr: &PeerAddr) -> SocketAddr {
    addr.socket_addr().expect("a udp:// address")
}

#[async_trait]
impl Harness for Udp {
    fn name(&self) -> &'static str {
        "udp"
    }
    fn reliable(&self) -> bool {
        false
    }
    async fn bind(&self) -> Arc<dyn Transport> {
        Arc::new(
            UdpTransport::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap(),
        )
    }
    async fn bind_with_max_len(&self, max: usize) -> Arc<dyn Transport> {
        let c = UdpConfig::default().max_message_len(max);
        Arc::new(
            UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), c)
                .await
                .unwrap(),
        )
    }
    async fn rebind(&self, addr: &PeerAddr) -> Arc<dyn Transport> {
        // The old socket is released when its writer task notices the last handle is gone.
        for _ in 0..100 {
            if let Ok(t) = UdpTransport::bind(sock(addr)).await {
                return Arc::new(t);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("could not bind {addr} again");
    }
    async fn bind_with_connection_limit(&self, _n: usize) -> Option<Arc<dyn Transport>> {
        None // connectionless
    }
    async fn send_garbage(&self, to: &PeerAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let junk: Vec<u8> = (0..700u32).map(|i| (i * 7919 % 251) as u8).collect();
        let _ = s.send_to(&junk, sock(to));
        let _ = s.send_to(&[], sock(to));
    }
    async fn stall_towards(&self, to: &PeerAddr) -> Box<dyn Any + Send> {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let _ = s.send_to(b"d1:ad2:id20:", sock(to)); // half a KRPC message, then silence
        guard(s)
    }
    async fn stalled_peer(&self) -> (PeerAddr, Box<dyn Any + Send>) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        (PeerAddr::Udp(s.local_addr().unwrap()), guard(s))
    }
}

kad_testkit::conformance_tests!(udp, Udp);
