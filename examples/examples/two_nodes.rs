//! Two nodes on 127.0.0.1 over UDP: the smallest complete network.
//!
//! Node `b` joins through node `a`, stores a value, `a` reads it back, and `b` pings `a`. Both
//! nodes speak the native protocol: signed JSON-RPC over UDP, each with a fresh secp256k1 key.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p kad-examples --example two_nodes
//! ```
//!
//! It prints both nodes (id and address), how many nodes stored the value, the value `a` read
//! back, the ping's round-trip time, and finally `ok: two_nodes read back "hello, kad"`.

use std::sync::Arc;

use anyhow::{Result, ensure};
use kad_core::{
    Bytes, Config, Dht, MAX_NATIVE_VALUE, NativeCodec, NativeIdentity, Node, content_key,
};
use kad_transport_udp::UdpTransport;

/// Starts a native node on a free UDP port of 127.0.0.1, with a fresh identity.
async fn spawn_node() -> Result<Dht> {
    // The node id is the hash of the public key, so a fresh key is a fresh id.
    let identity = Arc::new(NativeIdentity::generate(&mut rand::rng()));
    let udp = UdpTransport::bind("127.0.0.1:0".parse()?).await?;

    let mut config = Config::default();
    // A record travels in one signed datagram: keep values within what fits.
    config.max_value_len = MAX_NATIVE_VALUE;

    let builder = Node::builder(config)
        .identity(identity.clone())
        .codec(Box::new(NativeCodec::new(identity)));
    // The node advertises the address the transport is bound to.
    Ok(Dht::spawn(builder, vec![Arc::new(udp)])?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = spawn_node().await?;
    let b = spawn_node().await?;
    let a_addr = a.contact().addrs[0].clone();
    println!("node a: {} at {a_addr}", a.id());
    println!("node b: {} at {}", b.id(), b.contact().addrs[0]);

    // b knows only a's address; joining pings it, then looks up b's own id.
    let joined = b.bootstrap(vec![a_addr.clone()]).await?;
    println!("b joined: {} node(s) found", joined.closest.len());

    // Any 160-bit id can be a key. Here: the hash of the value (content addressing).
    let value = Bytes::from_static(b"hello, kad");
    let key = content_key(&value);
    let put = b.put(key, value.clone()).await?;
    println!("b stored {key} on {} node(s)", put.stored);

    // Both nodes are among the k closest to any key in a two-node network, so both keep a copy.
    let got = a.get(key).await?;
    let text = String::from_utf8_lossy(&got.record.value).into_owned();
    println!("a read {key}: {text:?}");
    ensure!(got.record.value == value, "a read back another value");

    let pong = b.ping(a_addr).await?;
    println!(
        "b pinged a ({}): round trip {:?}",
        pong.contact.id, pong.rtt
    );
    ensure!(
        pong.contact.id == a.id(),
        "the ping was answered by another node"
    );

    b.shutdown().await;
    a.shutdown().await;
    println!("ok: two_nodes read back {text:?}");
    Ok(())
}
