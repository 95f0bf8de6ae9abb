//! A node that keeps its records on disk, and finds them again after a restart.
//!
//! The node stores its records in a redb database (`kad-plugin-storage`'s `RedbStore`) in
//! `--data DIR`, with its key next to it, so a restart brings back the same node with the same
//! records. Values are content-addressed: the key is RIPEMD-160(SHA-256(value)), and the
//! `ContentValidator` refuses any record whose value does not hash to its key.
//!
//! The example stores a blob, shuts the node down, starts it again from the same directory,
//! and lets a fresh peer fetch the blob from it over UDP on 127.0.0.1.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p kad-examples --example storage_node -- --data ./storage-demo
//! cargo run -p kad-examples --example storage_node -- --data ./storage-demo --file notes.txt
//! ```
//!
//! Without `--data` it uses a temporary directory, removed at exit. `--file` stores that file's
//! content (up to 45,000 bytes: one record; `NativeNode::put_file` chunks larger files)
//! instead of a short text. At each start it prints `node ID: N record(s) on disk`; then the
//! key stored, what the peer fetched, and finally `ok: storage_node KEY survived the restart`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use kad::storage::ContentValidator;
use kad::{Bytes, NativeNode, content_key};

#[derive(Parser)]
struct Args {
    /// Directory of the node's key and records (default: a temporary one).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Store this file's content instead of a short text.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

/// Starts a node on 127.0.0.1 whose key (`DIR/node.key`), records (`DIR/records.redb`) and
/// routing table live in `dir`. Opening drops what expired while the node was down.
/// (`shutdown` returns once the node has released its store, so a restart in the same process
/// can reopen it at once.)
async fn spawn_storage_node(dir: &Path) -> Result<NativeNode> {
    let node = NativeNode::builder()
        .udp("127.0.0.1:0")
        .storage(dir)
        .build()
        .await?;
    let held = node.store_opened().map_or(0, |(_, s)| s.loaded);
    println!("node {}: {held} record(s) on disk", node.id());
    Ok(node)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?; // used only without --data
    let dir = args.data.as_deref().unwrap_or(temp.path());
    std::fs::create_dir_all(dir)?;
    let blob = match &args.file {
        Some(f) => Bytes::from(std::fs::read(f).with_context(|| f.display().to_string())?),
        None => Bytes::from_static(b"a blob that outlives its node"),
    };
    let key = content_key(&blob);

    // First run: store the blob. Alone in its network, the node keeps it itself.
    let node = spawn_storage_node(dir).await?;
    let put = node.put(key, blob.clone()).await?;
    println!(
        "stored {} bytes under {key} on {} node(s)",
        blob.len(),
        put.stored
    );
    node.shutdown().await;
    println!("node stopped");

    // Second run, same directory: same id, same records.
    let node = spawn_storage_node(dir).await?;

    // A fresh peer (in-memory store, content validation) joins it and fetches the blob.
    let peer = NativeNode::builder()
        .udp("127.0.0.1:0")
        .validator(Arc::new(ContentValidator))
        .bootstrap([node.addr()])
        .build()
        .await?;
    let got = peer.get(key).await?;
    ensure!(got.record.value == blob, "the peer fetched another value");
    println!(
        "peer fetched {key}: {} bytes, verified against the key",
        got.record.value.len()
    );

    peer.shutdown().await;
    node.shutdown().await;
    println!("ok: storage_node {key} survived the restart");
    Ok(())
}
