//! Two native nodes over real QUIC sockets: after the first exchange, their messages carry no
//! signature or MAC (protocol version 2 on a link that proves both node keys), and nothing is
//! dropped on the way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kad_core::{
    Config, Contact, Dht, NativeCodec, NativeIdentity, Node, NodeId, PeerAddr, Transport,
    TransportError, TransportKind,
};
use kad_transport_quic::{QuicConfig, QuicTransport};

/// The QUIC transport, keeping a copy of every message it is asked to send.
struct Recording {
    inner: QuicTransport,
    sent: Mutex<Vec<Bytes>>,
}

#[async_trait]
impl Transport for Recording {
    fn kind(&self) -> TransportKind {
        self.inner.kind()
    }
    fn local_addr(&self) -> PeerAddr {
        self.inner.local_addr()
    }
    fn max_message_len(&self) -> usize {
        self.inner.max_message_len()
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
        self.sent.lock().unwrap().push(msg.clone());
        self.inner.send_to_node(to, node, msg).await
    }
    async fn recv(&self) -> Result<(PeerAddr, Bytes), TransportError> {
        self.inner.recv().await
    }
    fn proves_peer_ids(&self) -> bool {
        self.inner.proves_peer_ids()
    }
    async fn recv_from_node(&self) -> Result<(PeerAddr, Option<NodeId>, Bytes), TransportError> {
        self.inner.recv_from_node().await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

fn node(n: u8) -> (Dht, Arc<Recording>, Contact) {
    let id = Arc::new(NativeIdentity::from_secret(&[n; 32]).unwrap());
    let t = Arc::new(Recording {
        inner: QuicTransport::bind(
            "127.0.0.1:0".parse().unwrap(),
            id.clone(),
            QuicConfig::default(),
        )
        .unwrap(),
        sent: Mutex::new(Vec::new()),
    });
    let contact = Contact::new(id.id(), t.local_addr());
    let builder = Node::builder(Config::default())
        .identity(id.clone())
        .codec(Box::new(NativeCodec::new(id)));
    let transports: Vec<Arc<dyn Transport>> = vec![t.clone()];
    (Dht::spawn(builder, transports).unwrap(), t, contact)
}

/// The trailer of a native datagram: `sig` (128 hex digits), `mac` (64) or `bare` (none).
fn form(msg: &[u8]) -> &'static str {
    if msg.ends_with(b",\"\"]") {
        "bare"
    } else if msg.len() > 68 && msg[msg.len() - 68..].starts_with(b",\"") {
        "mac"
    } else {
        "sig"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_quic_send_bare_messages_once_they_know_each_other() {
    let (a, ta, _) = node(1);
    let (b, tb, cb) = node(2);
    a.add_contact(cb.clone()).await.unwrap();
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), a.ping(cb.addrs[0].clone()))
            .await
            .expect("a PING answered within 10 s")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), a.find_node(cb.id))
            .await
            .expect("a lookup within 10 s")
            .unwrap();
    }
    let from_a: Vec<_> = ta.sent.lock().unwrap().iter().map(|m| form(m)).collect();
    let from_b: Vec<_> = tb.sent.lock().unwrap().iter().map(|m| form(m)).collect();
    // First contact is signed; once each has heard from the other, messages go bare.
    assert_eq!(from_a.first(), Some(&"sig"), "{from_a:?}");
    assert!(
        from_a.iter().filter(|f| **f == "bare").count() >= 4,
        "{from_a:?}"
    );
    assert!(
        from_b.iter().filter(|f| **f == "bare").count() >= 4,
        "{from_b:?}"
    );
    assert!(
        !from_a.contains(&"mac") && !from_b.contains(&"mac"),
        "{from_a:?} {from_b:?}"
    );
    for d in [&a, &b] {
        let s = d.stats().await.unwrap();
        assert_eq!(
            (
                s.dropped_unproven,
                s.dropped_bad_mac,
                s.dropped_bad_signature,
                s.dropped_malformed
            ),
            (0, 0, 0, 0),
            "{s:?}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
