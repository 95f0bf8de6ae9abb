//! The in-memory transport passes the transport conformance suite.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use kad_core::{MemoryNetwork, PeerAddr, Transport};
use kad_testkit::conformance::{Harness, guard};

struct Mem {
    net: MemoryNetwork,
}

#[async_trait]
impl Harness for Mem {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn reliable(&self) -> bool {
        true
    }
    async fn bind(&self) -> Arc<dyn Transport> {
        Arc::new(self.net.transport(4096))
    }
    async fn bind_with_max_len(&self, max: usize) -> Arc<dyn Transport> {
        Arc::new(self.net.transport(4096).with_max_len(max))
    }
    async fn rebind(&self, addr: &PeerAddr) -> Arc<dyn Transport> {
        let PeerAddr::Mem(n) = addr else {
            panic!("not a memory address: {addr}")
        };
        Arc::new(self.net.transport_at(*n, 4096))
    }
    async fn bind_with_connection_limit(&self, _n: usize) -> Option<Arc<dyn Transport>> {
        None // no connections
    }
    async fn send_garbage(&self, to: &PeerAddr) {
        let t = self.net.transport(1);
        let _ = t.send(to, Bytes::from_static(b"\xff\x00garbage")).await;
    }
    async fn stall_towards(&self, _to: &PeerAddr) -> Box<dyn Any + Send> {
        guard(self.net.transport(1)) // exists and never reads
    }
    async fn stalled_peer(&self) -> (PeerAddr, Box<dyn Any + Send>) {
        let t = self.net.transport(16);
        (t.local_addr(), guard(t))
    }
}

kad_testkit::conformance_tests!(
    memory,
    Mem {
        net: MemoryNetwork::new()
    }
);
