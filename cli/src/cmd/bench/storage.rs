//! `kad bench storage`: the record stores alone (redb beside in-memory), then whole files
//! through loopback networks of `kad` nodes on QUIC and on UDP.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use kad_core::{Dht, MemoryStore, NodeId, Record, RecordStore, StoreLimits};
use kad_plugin_storage::{
    ContentValidator, GetOptions, Protection, PutOptions, RedbStore, get_file, put_file,
};
use serde_json::json;

use crate::net::{emit, flag_error, value_limit};

/// `kad bench storage` flags.
#[derive(Args, Debug)]
pub(crate) struct StorageArgs {
    /// Nodes in each loopback network.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Megabytes of the file put and got over QUIC.
    #[arg(long, default_value_t = 100.0)]
    mb: f64,
    /// Megabytes of the file over UDP with chunks sized to a datagram (35 KiB).
    #[arg(long, default_value_t = 20.0)]
    udp_mb: f64,
    /// Megabytes of the file over UDP with 1 KiB chunks (0 skips it).
    #[arg(long, default_value_t = 2.0)]
    small_mb: f64,
    /// Where the nodes keep records: `redb` (on disk, each STORE committed before its answer)
    /// or `memory`.
    #[arg(long, default_value = "redb", value_parser = ["redb", "memory"])]
    store: String,
    /// Seconds spent on each store measurement (puts, then gets, per store).
    #[arg(long, default_value_t = 3.0)]
    store_secs: f64,
    /// Chunks stored at once by the writer (default: about 2 MiB of chunks in flight, as
    /// `kad put --file` does).
    #[arg(long)]
    put_parallel: Option<usize>,
    /// Fetches in flight at once for the reader.
    #[arg(long, default_value_t = 16)]
    get_parallel: usize,
    /// Print exactly one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

fn round(v: f64, places: i32) -> f64 {
    let p = 10f64.powi(places);
    (v * p).round() / p
}

/// Puts of 1 KiB records for `secs`, then gets of them for `secs`, through `store` alone.
fn store_rates(store: &mut dyn RecordStore, secs: f64) -> serde_json::Value {
    let value = vec![0x5Au8; 1024];
    let now = kad_core::SystemClock::now_ms();
    let mut keys = Vec::new();
    let t0 = Instant::now();
    let budget = Duration::from_secs_f64(secs);
    let mut i = 0u64;
    let mut put_lat = Vec::new();
    while t0.elapsed() < budget {
        let mut k = [0u8; 20];
        k[..8].copy_from_slice(&i.to_be_bytes());
        k[8..16].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes());
        let key = NodeId(k);
        let t = Instant::now();
        if store
            .put(Record::new(key, value.clone(), None, now, 3_600_000))
            .is_ok()
        {
            keys.push(key);
        }
        put_lat.push(t.elapsed().as_secs_f64() * 1e6);
        i += 1;
    }
    let put_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut gets = 0u64;
    let mut found = 0u64;
    while t1.elapsed() < budget && !keys.is_empty() {
        let k = &keys[(gets as usize * 7919) % keys.len()];
        found += u64::from(store.get(k).is_some());
        gets += 1;
    }
    let get_s = t1.elapsed().as_secs_f64();
    put_lat.sort_by(f64::total_cmp);
    let p50 = put_lat.get(put_lat.len() / 2).copied().unwrap_or(0.0);
    json!({"puts": keys.len(), "puts_per_s": round(keys.len() as f64 / put_s, 0),
           "put_us_p50": round(p50, 1), "gets": gets, "found": found,
           "gets_per_s": round(gets as f64 / get_s, 0)})
}

fn mb_bytes(field: &str, mb: f64) -> Result<u64> {
    if !(0.0..=10_000.0).contains(&mb) {
        bail!("{field} = {mb} is out of range: 0 to 10000 MB");
    }
    Ok((mb * 1e6) as u64)
}

/// One loopback network of storing nodes, each on one transport of `kind`.
struct Net {
    nodes: Vec<Dht>,
    _dir: tempfile::TempDir,
}

/// A builder of a node listening on one transport of `kind` on 127.0.0.1.
fn on(kind: &str) -> kad::NativeNodeBuilder {
    let b = crate::net::node_builder().validator(Arc::new(ContentValidator));
    match kind {
        "quic" => b.quic("127.0.0.1:0"),
        _ => b.udp("127.0.0.1:0"),
    }
}

async fn network(kind: &str, n: usize, store: &str) -> Result<Net> {
    let dir = tempfile::tempdir().context("a temporary directory for the stores")?;
    let mut nodes = Vec::new();
    for i in 0..n {
        let limits = StoreLimits::new(1 << 20, 64 << 30).publisher_bytes(64 << 30);
        let b = if store == "redb" {
            on(kind).storage(dir.path().join(format!("node{i}")))
        } else {
            on(kind).storage_in_memory()
        };
        let node = b.store_limits(limits).build().await.map_err(flag_error)?;
        nodes.push(node.dht().clone());
    }
    let seed = nodes[0].contact().addrs[0].clone();
    for d in &nodes[1..] {
        d.bootstrap(vec![seed.clone()]).await?;
    }
    for d in &nodes {
        let _ = d.find_node(d.id()).await;
    }
    Ok(Net { nodes, _dir: dir })
}

async fn client(kind: &str, seed: &Dht) -> Result<(Dht, usize)> {
    let node = on(kind).client().build().await.map_err(flag_error)?;
    let max = node.transports().max_message_len();
    let dht = node.dht().clone();
    dht.bootstrap(vec![seed.contact().addrs[0].clone()]).await?;
    Ok((dht, max))
}

fn write_file(path: &Path, len: u64) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Puts a file of `bytes` through a fresh network and gets it back with a second client.
async fn file_round_trip(
    a: &StorageArgs,
    kind: &str,
    bytes: u64,
    chunk_size: Option<u32>,
    protection: Protection,
) -> Result<serde_json::Value> {
    let net = network(kind, a.nodes, &a.store).await?;
    let (writer, max_message) = client(kind, &net.nodes[0]).await?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("input.bin");
    write_file(&input, bytes)?;
    let chunk_size = chunk_size
        .unwrap_or_else(|| kad_plugin_storage::default_chunk_size(max_message, protection));
    let opts = PutOptions {
        chunk_size,
        parallel: a
            .put_parallel
            .unwrap_or_else(|| kad_plugin_storage::put_parallelism(chunk_size)),
        max_value_len: value_limit(max_message),
        protection,
        ..PutOptions::default()
    };
    let put = put_file(&writer, &input, &opts, &|_, _| {}).await?;
    writer.shutdown().await;
    let (reader, _) = client(kind, &net.nodes[a.nodes / 2]).await?;
    let out = dir.path().join("output.bin");
    let gopts = GetOptions {
        parallel: a.get_parallel,
        max_reply_bytes: value_limit(max_message),
        max_in_flight_bytes: crate::storage::in_flight_budget(max_message),
        ..GetOptions::default()
    };
    let key = put.capability.as_ref().map(|c| &c.key);
    let got = get_file(&reader, put.key, key, &out, &gopts, &|_, _| {}).await?;
    reader.shutdown().await;
    let same = std::fs::read(&input)? == std::fs::read(&out)?;
    if !same {
        bail!("{kind}: the file read back differs from the file put");
    }
    let ps = put.elapsed.as_secs_f64();
    let gs = got.elapsed.as_secs_f64();
    for d in &net.nodes {
        d.shutdown().await;
    }
    Ok(json!({
        "transport": kind, "nodes": a.nodes, "store": a.store, "bytes": bytes,
        "chunk_size": chunk_size, "chunks": put.chunks, "encrypted": protection != Protection::Plain,
        "replicas_min": put.min_replicas,
        "put_s": round(ps, 2), "put_mb_per_s": round(bytes as f64 / 1e6 / ps, 1),
        "get_s": round(gs, 2), "get_mb_per_s": round(bytes as f64 / 1e6 / gs, 1),
        "get_fetches": got.fetches, "get_holders": got.holders_used,
        "get_failed_fetches": got.failed_fetches, "verified": same,
    }))
}

/// Runs the benchmark.
pub(crate) fn run(a: StorageArgs) -> Result<()> {
    if !(2..=200).contains(&a.nodes) {
        bail!("--nodes = {} is out of range: 2 to 200", a.nodes);
    }
    if !(0.05..=600.0).contains(&a.store_secs) {
        bail!(
            "--store-secs = {} is out of range: 0.05 to 600",
            a.store_secs
        );
    }
    if a.put_parallel.is_some_and(|p| !(1..=256).contains(&p))
        || !(1..=256).contains(&a.get_parallel)
    {
        bail!("--put-parallel and --get-parallel must be 1 to 256");
    }
    let quic = mb_bytes("--mb", a.mb)?;
    let udp = mb_bytes("--udp-mb", a.udp_mb)?;
    let small = mb_bytes("--small-mb", a.small_mb)?;
    let t0 = Instant::now();

    // The stores alone, side by side.
    let dir = tempfile::tempdir()?;
    let local = NodeId([0x42; 20]);
    let limits = StoreLimits::new(10_000_000, 64 << 30).publisher_bytes(64 << 30);
    let mut mem = MemoryStore::new(local, limits.clone());
    let memory = store_rates(&mut mem, a.store_secs);
    drop(mem);
    let mut redb = RedbStore::open(
        &dir.path().join("bench.redb"),
        local,
        limits,
        kad_core::SystemClock::now_ms(),
    )?;
    let persistent = store_rates(&mut redb, a.store_secs);
    drop(redb);
    let ratio = |f: &str| {
        let m = memory[f].as_f64().unwrap_or(0.0);
        let r = persistent[f].as_f64().unwrap_or(0.0);
        round(if r > 0.0 { m / r } else { 0.0 }, 1)
    };
    let stores = json!({"record_bytes": 1024, "memory": memory, "redb": persistent,
        "memory_over_redb": {"puts": ratio("puts_per_s"), "gets": ratio("gets_per_s")}});

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let files = rt.block_on(async {
        let mut v = Vec::new();
        if quic > 0 {
            v.push(file_round_trip(&a, "quic", quic, None, Protection::Plain).await?);
            v.push(file_round_trip(&a, "quic", quic, None, Protection::Encrypted).await?);
        }
        if udp > 0 {
            v.push(file_round_trip(&a, "udp", udp, None, Protection::Plain).await?);
        }
        if small > 0 {
            v.push(file_round_trip(&a, "udp", small, Some(1024), Protection::Plain).await?);
        }
        anyhow::Ok(v)
    })?;
    let peak = crate::peak_rss_mb();
    let out = json!({"bench": "storage", "stores": stores, "files": files,
                     "peak_rss_mb": peak, "wall_s": round(t0.elapsed().as_secs_f64(), 1)});
    emit(a.json, &out, || {
        let mut s = format!(
            "1 KiB records: memory {} puts/s {} gets/s; redb {} puts/s {} gets/s\n",
            out["stores"]["memory"]["puts_per_s"],
            out["stores"]["memory"]["gets_per_s"],
            out["stores"]["redb"]["puts_per_s"],
            out["stores"]["redb"]["gets_per_s"]
        );
        for f in out["files"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "{} {} MB in {} B chunks{}: put {} MB/s, get {} MB/s\n",
                f["transport"],
                f["bytes"].as_f64().unwrap_or(0.0) / 1e6,
                f["chunk_size"],
                if f["encrypted"] == true {
                    " (encrypted)"
                } else {
                    ""
                },
                f["put_mb_per_s"],
                f["get_mb_per_s"]
            ));
        }
        s
    });
    Ok(())
}
