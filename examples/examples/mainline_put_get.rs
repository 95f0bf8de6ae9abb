//! BEP44 mutable items among a few Mainline-mode nodes on 127.0.0.1.
//!
//! `kad-plugin-bep44` turns the engine into a BitTorrent Mainline DHT node: KRPC (bencode) on
//! the wire, k = 8, and the BEP44 `put`/`get` of items signed with an ed25519 key. A mutable
//! item lives at SHA-1(public key + salt); a newer one has a higher `seq`, and storing nodes
//! refuse an older one (error 302).
//!
//! This example starts 5 nodes in this process (the first starts the network, the others join
//! through it; none talks to the public DHT), puts two versions of an item from one node,
//! reads it from another, and shows a stale version being refused.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p kad-examples --example mainline_put_get
//! ```
//!
//! It prints the nodes, each put (target, nodes that stored it), each get (seq and value), the
//! refusal, and finally `ok: mainline_put_get read seq=2 "second version"`.

use anyhow::{Result, bail, ensure};
use kad::item::{bencode_bytes, public_key};
use kad::{Mainline, MainlineError, MutableItem};

/// Starts `n` Mainline nodes on 127.0.0.1, all joined through the first.
async fn local_network(n: usize) -> Result<Vec<Mainline>> {
    let mut nodes: Vec<Mainline> = Vec::new();
    for _ in 0..n {
        // The first node has no one to join: it starts the network. The others join through
        // it (`Mainline::client()` and `Mainline::server()` join the live DHT instead).
        let node = Mainline::builder()
            .bind("127.0.0.1:0".parse()?)
            .bootstrap(nodes.first().map(Mainline::local_addr))
            .build()
            .await?;
        println!("node {} at {}", node.id(), node.local_addr());
        nodes.push(node);
    }
    // Join again: the early joiners now learn about the nodes that came after them.
    for node in &nodes[1..] {
        node.bootstrap().await?;
    }
    Ok(nodes)
}

#[tokio::main]
async fn main() -> Result<()> {
    let nodes = local_network(5).await?;
    let (writer, reader) = (&nodes[1], &nodes[4]);

    // The item's owner: an ed25519 key (its 32-byte seed), fresh each run.
    let seed: [u8; 32] = rand::random();
    let salt = b"example";
    println!("owner key {}", hex::encode(public_key(&seed)));

    for (seq, text) in [(1, "first version"), (2, "second version")] {
        // The value is any bencoded value of at most 1000 bytes; here a byte string.
        let item = MutableItem::sign(&seed, salt, seq, &bencode_bytes(text.as_bytes()))?;
        let put = writer.put_mutable(&item, None).await?;
        println!(
            "put seq={seq} at {}: stored on {} of {} node(s)",
            put.target, put.stored_on, put.asked
        );

        let got = reader.get_mutable(public_key(&seed), salt, None).await?;
        // `v` is bencoded, as it was signed (`13:first version`); `value` is it decoded.
        let v = got.value.as_deref().map(String::from_utf8_lossy);
        let v = v.unwrap_or_default();
        println!("get from another node: seq={} value={v:?}", got.seq);
        ensure!(got.seq == seq, "read seq {} after putting {seq}", got.seq);
    }

    // Replaying the first version: every node holding seq 2 refuses it (302).
    let stale = MutableItem::sign(&seed, salt, 1, &bencode_bytes(b"first version"))?;
    match writer.put_mutable(&stale, None).await {
        Err(MainlineError::NotStored { errors, .. }) => {
            println!("stale put refused: {errors:?}");
        }
        Err(e) => bail!("stale put failed in another way: {e}"),
        Ok(put) => bail!("a stale put was stored on {} node(s)", put.stored_on),
    }

    let latest = reader.get_mutable(public_key(&seed), salt, None).await?;
    ensure!(
        latest.v == bencode_bytes(b"second version"),
        "the latest value changed"
    );
    for node in &nodes {
        node.shutdown().await;
    }
    println!(
        "ok: mainline_put_get read seq={} \"second version\"",
        latest.seq
    );
    Ok(())
}
