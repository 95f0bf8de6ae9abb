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
//! content (up to 45,000 bytes: one record; `kad_plugin_storage::put_file` chunks larger files)
//! instead of a short text. At each start it prints `node ID: N record(s) on disk`; then the
//! key stored, what the peer fetched, and finally `ok: storage_node KEY survived the restart`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use kad_core::{
    Bytes, Config, Dht, MAX_NATIVE_VALUE, NativeCodec, NativeIdentity, Node, StoreLimits,
    SystemClock, content_key,
};
use kad_plugin_storage::{ContentValidator, RedbStore, StoragePlugin};
use kad_transport_udp::UdpTransport;

#[derive(Parser)]
struct Args {
    /// Directory of the node's key and records (default: a temporary one).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Store this file's content instead of a short text.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

/// The node's key, kept in `DIR/node.key` (64 hex digits) so a restart has the same id.
fn load_or_create_identity(dir: &Path) -> Result<NativeIdentity> {
    let path = dir.join("node.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut secret = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut secret).context("node.key: expected 64 hex")?;
        return Ok(NativeIdentity::from_secret(&secret)?);
    }
    let identity = NativeIdentity::generate(&mut rand::rng());
    // A real node creates this file readable by its owner only (`kad node --data-dir` does).
    std::fs::write(&path, hex::encode(identity.secret_bytes()))?;
    Ok(identity)
}

/// Starts a node on 127.0.0.1 whose records live in `DIR/records.redb`.
async fn spawn_storage_node(dir: &Path) -> Result<Dht> {
    let identity = Arc::new(load_or_create_identity(dir)?);
    let path = dir.join("records.redb");
    let limits = StoreLimits::default();
    // Opening drops what expired while the node was down. (`Dht::shutdown` returns once the
    // node has released its store, so a restart in the same process can reopen it at once.)
    let store = RedbStore::open(&path, identity.id(), limits, SystemClock::now_ms())?;
    let held = store.open_stats().loaded;
    println!("node {}: {held} record(s) on disk", identity.id());
    spawn(identity, Some(store)).await
}

/// A native node on UDP; with a store, it serves `storage.FETCH` too.
async fn spawn(identity: Arc<NativeIdentity>, store: Option<RedbStore>) -> Result<Dht> {
    let udp = UdpTransport::bind("127.0.0.1:0".parse()?).await?;
    let mut config = Config::default();
    config.max_value_len = MAX_NATIVE_VALUE;
    let mut builder = Node::builder(config)
        .identity(identity.clone())
        .codec(Box::new(NativeCodec::new(identity)))
        .validator(Arc::new(ContentValidator));
    if let Some(store) = store {
        builder = builder
            .store(Box::new(store))
            .plugin(Box::new(StoragePlugin::new(MAX_NATIVE_VALUE)));
    }
    Ok(Dht::spawn(builder, vec![Arc::new(udp)])?)
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
    let addr = node.contact().addrs[0].clone();

    // A fresh peer (in-memory store, content validation) joins it and fetches the blob.
    let peer = spawn(Arc::new(NativeIdentity::generate(&mut rand::rng())), None).await?;
    peer.bootstrap(vec![addr]).await?;
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
