//! The WebSocket transport passes the transport conformance suite, over `ws://` and over
//! `wss://` (a self-signed certificate for `localhost` and 127.0.0.1, trusted as an extra root).

use std::any::Any;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use kad_core::{PeerAddr, Transport};
use kad_testkit::conformance::{Harness, guard};
use kad_transport_ws::{WsConfig, WsTransport, tls};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The socket address of a `ws://IP:PORT/...` or `wss://IP:PORT/...` address.
fn sock(addr: &PeerAddr) -> SocketAddr {
    let s = addr.to_string();
    let rest = s.split_once("://").expect("a URL").1;
    let hostport = rest.split('/').next().expect("an authority");
    hostport.parse().expect("an IP:PORT authority")
}

/// Server and client TLS configurations sharing one self-signed certificate.
fn tls_pair() -> &'static (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    static PAIR: OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("a self-signed certificate");
        let server = tls::server_config_from_pem(
            ck.cert.pem().as_bytes(),
            ck.signing_key.serialize_pem().as_bytes(),
        )
        .expect("a server config");
        let client = tls::client_config(&[ck.cert.der().clone()]);
        (server, client)
    })
}

struct Ws {
    tls: bool,
}

impl Ws {
    fn config(&self) -> WsConfig {
        let c = WsConfig::default();
        if self.tls {
            let (server, client) = tls_pair();
            c.tls_server(server.clone()).tls_client(client.clone())
        } else {
            c
        }
    }

    async fn bind_with(&self, config: WsConfig) -> Arc<dyn Transport> {
        Arc::new(
            WsTransport::bind("127.0.0.1:0".parse().unwrap(), config)
                .await
                .unwrap(),
        )
    }
}

#[async_trait]
impl Harness for Ws {
    fn name(&self) -> &'static str {
        if self.tls { "wss" } else { "ws" }
    }
    fn reliable(&self) -> bool {
        true
    }
    async fn bind(&self) -> Arc<dyn Transport> {
        self.bind_with(self.config()).await
    }
    async fn bind_with_max_len(&self, max: usize) -> Arc<dyn Transport> {
        self.bind_with(self.config().max_message_len(max)).await
    }
    async fn rebind(&self, addr: &PeerAddr) -> Arc<dyn Transport> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match WsTransport::bind(sock(addr), self.config()).await {
                Ok(t) => return Arc::new(t),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("could not bind {addr} again: {e}"),
            }
        }
    }
    async fn bind_with_connection_limit(&self, n: usize) -> Option<Arc<dyn Transport>> {
        Some(self.bind_with(self.config().max_connections(n)).await)
    }
    async fn send_garbage(&self, to: &PeerAddr) {
        if let Ok(mut s) = TcpStream::connect(sock(to)).await {
            let junk: Vec<u8> = (0..700u32).map(|i| (i * 7919 % 251) as u8).collect();
            let _ = s.write_all(&junk).await;
            let _ = s.shutdown().await;
        }
    }
    async fn stall_towards(&self, to: &PeerAddr) -> Box<dyn Any + Send> {
        let mut s = TcpStream::connect(sock(to)).await.expect("tcp connect");
        // Half an upgrade request (for wss, junk in place of a TLS ClientHello), then silence.
        let _ = s
            .write_all(b"GET /kad HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs")
            .await;
        guard(s)
    }
    async fn stalled_peer(&self) -> (PeerAddr, Box<dyn Any + Send>) {
        // Nobody accepts: the kernel completes TCP connections, nothing ever answers.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if self.tls { "wss" } else { "ws" };
        let addr = format!("{scheme}://{}/kad", l.local_addr().unwrap());
        (addr.parse().unwrap(), guard(l))
    }
}

kad_testkit::conformance_tests!(ws, Ws { tls: false });
kad_testkit::conformance_tests!(wss, Ws { tls: true });
