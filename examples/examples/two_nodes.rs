//! Two nodes on 127.0.0.1 over UDP: the smallest complete network.
//!
//! Node `b` joins through node `a`, stores a value, `a` reads it back, and `b` pings `a`. Both
//! nodes speak the native protocol: signed JSON-RPC over UDP, each with a fresh secp256k1 key
//! (the node id is its hash). The value limit follows the transport (45,000 bytes on UDP).
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p kad-examples --example two_nodes
//! ```
//!
//! It prints both nodes (id and address), how many nodes stored the value, the value `a` read
//! back, the ping's round-trip time, and finally `ok: two_nodes read back "hello, kad"`.

use anyhow::{Result, ensure};
use kad::{Bytes, NativeNode, content_key};

#[tokio::main]
async fn main() -> Result<()> {
    let a = NativeNode::builder().udp("127.0.0.1:0").build().await?;
    println!("node a: {} at {}", a.id(), a.addr());
    // b knows only a's address; building it pings a, then looks up b's own id.
    let b = NativeNode::builder()
        .udp("127.0.0.1:0")
        .bootstrap([a.addr()])
        .build()
        .await?;
    println!("node b: {} at {}", b.id(), b.addr());

    // Any 160-bit id can be a key. Here: the hash of the value (content addressing).
    let value = Bytes::from_static(b"hello, kad");
    let key = content_key(&value);
    let put = b.put(key, value.clone()).await?;
    println!("b stored {key} on {} node(s)", put.stored);

    // Both nodes are among the k closest to any key in a two-node network: both keep a copy.
    let got = a.get(key).await?;
    let text = String::from_utf8_lossy(&got.record.value).into_owned();
    println!("a read {key}: {text:?}");
    ensure!(got.record.value == value, "a read back another value");

    let pong = b.ping(a.addr()).await?;
    println!(
        "b pinged a ({}): round trip {:?}",
        pong.contact.id, pong.rtt
    );
    b.shutdown().await;
    a.shutdown().await;
    println!("ok: two_nodes read back {text:?}");
    Ok(())
}
