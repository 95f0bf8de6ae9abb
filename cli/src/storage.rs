//! Storage on the native network: the persistent record store behind `kad node --data-dir`,
//! content-addressed `kad put VALUE`, and whole files with `kad put --file` / `kad get --out`
//! (chunked, verified, optionally encrypted or protected by key shares).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kad_core::{AcceptAll, NodeId, RecordValidator, StoreLimits};
use kad_plugin_storage::{
    Capability, ContentValidator, FileKey, GetOptions, Protection, PutOptions, Share,
    TransferError, combine_shares, get_file_with, get_manifest,
};
use serde_json::json;

use crate::net::{ClientArgs, emit, joined_for_files, ms, value_limit};

/// `kad node` flags for what the node stores.
#[derive(Args, Debug, Clone)]
pub(crate) struct StoreArgs {
    /// Directory of the node's persistent state: its records (records.redb; each STORE is
    /// committed to disk before it is acknowledged, and expiry times are wall-clock so they
    /// hold across restarts), its routing table (for warm restarts: a node restarted without
    /// --bootstrap rejoins through the contacts it saved), and its key (node.key, unless
    /// --key-file is given). Without it, records live in memory and die with the process.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Which records the node accepts: `content` (the key must be RIPEMD-160(SHA-256(value)):
    /// forged values are refused) or `any` (any key, e.g. for `kad put --key`).
    #[arg(long, default_value = "content", value_parser = ["content", "any"])]
    pub(crate) records: String,
    /// Most records held.
    #[arg(long, default_value_t = 65_536, value_name = "N")]
    pub(crate) max_records: usize,
    /// Most megabytes of records held (values plus 64 bytes each). When full, a record closer
    /// to this node's id evicts the farthest ones; a farther one is refused with "store full".
    /// Default: 64 in memory, 1024 with --data-dir.
    #[arg(long, value_name = "MB")]
    pub(crate) max_store_mb: Option<f64>,
    /// Most megabytes held for any one publisher (default: a quarter of --max-store-mb).
    #[arg(long, value_name = "MB")]
    pub(crate) max_publisher_mb: Option<f64>,
    /// Keep records for this client (its node id, 40 hex digits: `kad id --key-file FILE`
    /// prints it; repeat or separate with commas for several): `kad put --pin-to` hands this
    /// node every record it stores, and the node republishes them before they expire, across
    /// restarts with --data-dir, so they outlive their TTL and the client. Pins from other
    /// nodes are refused. Messages are signed, so the id is proven.
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub(crate) pin_from: Vec<String>,
    /// Most megabytes of pinned records (values plus 64 bytes each), this node's own puts
    /// included. Default: the store's size (--max-store-mb).
    #[arg(long, value_name = "MB", requires = "pin_from")]
    pub(crate) max_pin_mb: Option<f64>,
    /// How often the node republishes its own records (its pins): every this many seconds, or
    /// when a tenth of a record's lifetime is left (a quarter, up to 60 s, for a short one) if
    /// that comes first. 1 to 315360000.
    #[arg(long, default_value_t = 79_200, value_name = "SECONDS")]
    pub(crate) republish_every: u64,
}

fn mb(field: &str, v: f64) -> Result<usize> {
    if !(v > 0.0 && v <= 1e7) {
        bail!("{field} = {v} is out of range: more than 0 and at most 10000000 MB");
    }
    Ok((v * 1024.0 * 1024.0) as usize)
}

/// The validator for `--records`.
pub(crate) fn validator(records: &str) -> Arc<dyn RecordValidator> {
    if records == "any" {
        Arc::new(AcceptAll)
    } else {
        Arc::new(ContentValidator)
    }
}

impl StoreArgs {
    /// The store settings of a `kad node`: its records on disk with --data-dir (and its key
    /// there unless --key-file is given), in memory without; the limits; the validator.
    pub(crate) fn apply(&self, b: kad::NativeNodeBuilder) -> Result<kad::NativeNodeBuilder> {
        if self.max_records == 0 {
            bail!("--max-records must be at least 1");
        }
        if !(1..=10 * 365 * 86_400).contains(&self.republish_every) {
            bail!(
                "--republish-every = {} is out of range: 1 second to 10 years",
                self.republish_every
            );
        }
        let republish = Duration::from_secs(self.republish_every);
        let b = b.configure(|c| c.republish_interval = republish);
        let default_mb = if self.data_dir.is_some() {
            1024.0
        } else {
            64.0
        };
        let max_bytes = mb("--max-store-mb", self.max_store_mb.unwrap_or(default_mb))?;
        let per = match self.max_publisher_mb {
            Some(v) => mb("--max-publisher-mb", v)?,
            None => max_bytes / 4,
        };
        let limits = StoreLimits::new(self.max_records, max_bytes).publisher_bytes(per);
        let mut b = match &self.data_dir {
            Some(dir) => b.storage(dir),
            None => b.storage_in_memory(),
        };
        if !self.pin_from.is_empty() {
            let from = self
                .pin_from
                .iter()
                .map(|s| crate::net::parse_id("--pin-from", s))
                .collect::<Result<Vec<_>>>()?;
            let max_pin = match self.max_pin_mb {
                Some(v) => mb("--max-pin-mb", v)?,
                None => max_bytes,
            };
            b = b.allow_pins(from, max_pin);
        }
        Ok(b.store_limits(limits).validator(validator(&self.records)))
    }
}

/// What opening the store found, as JSON (null without a data dir).
pub(crate) fn opened_json(node: &kad::NativeNode) -> serde_json::Value {
    match node.store_opened() {
        Some((dir, s)) => {
            json!({"path": dir.join("records.redb").display().to_string(), "loaded": s.loaded,
                   "expired": s.expired, "evicted": s.evicted, "corrupt": s.corrupt,
                   "own": s.own})
        }
        None => json!(null),
    }
}

/// Answer bytes a reader keeps in flight: 1 MiB on datagram-sized transports (within the 4 MiB
/// socket buffer the UDP transport asks for, and well past the 208 KiB many kernels give),
/// unlimited on stream transports, whose flow control paces the holders.
pub(crate) fn in_flight_budget(max_message: usize) -> usize {
    if max_message <= kad_core::MAX_DATAGRAM {
        1 << 20
    } else {
        usize::MAX
    }
}

/// Whether a file client reaches nodes on a stream transport (QUIC, WebSocket) first, where
/// flow control paces the holders' answers.
fn streams_first(a: &ClientArgs) -> bool {
    crate::transports::parse_preference(a.prefer.as_deref().unwrap_or(crate::net::FILE_PREFER))
        .is_ok_and(|p| p.first() != Some(&kad_core::TransportKind::Udp))
}

/// A progress bar on stderr (hidden with --json or when stderr is not a terminal).
pub(crate) fn bar(json: bool, what: &str) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

pub(crate) fn progress(pb: &ProgressBar) -> impl Fn(u64, u64) + Sync + '_ {
    move |done, total| {
        if pb.length() != Some(total) {
            pb.set_length(total);
        }
        pb.set_position(done);
    }
}

/// Parses `--shares T/N`.
fn parse_shares(s: &str) -> Result<(u8, u8)> {
    let err = || {
        anyhow::anyhow!(
            "--shares {s:?}: expected T/N, e.g. 3/5 (any T of N shares decrypt; 1 <= T <= N <= 255)"
        )
    };
    let (t, n) = s.split_once('/').ok_or_else(err)?;
    let t: u8 = t.trim().parse().map_err(|_| err())?;
    let n: u8 = n.trim().parse().map_err(|_| err())?;
    if t == 0 || t > n {
        return Err(err());
    }
    Ok((t, n))
}

/// `kad put --file`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn put_file(
    client: &ClientArgs,
    path: &Path,
    encrypt: bool,
    shares: Option<&str>,
    chunk_size: Option<u32>,
    parallel: Option<usize>,
    ttl: Duration,
    pin_to: Option<&str>,
) -> Result<()> {
    let protection = match (encrypt, shares) {
        (_, Some(s)) => {
            let (threshold, shares) = parse_shares(s)?;
            Protection::Shared { threshold, shares }
        }
        (true, None) => Protection::Encrypted,
        (false, None) => Protection::Plain,
    };
    if let Some(p) = parallel.filter(|p| !(1..=256).contains(p)) {
        bail!("--parallel = {p} is out of range: 1 to 256");
    }
    std::fs::metadata(path).with_context(|| format!("--file {}", path.display()))?;
    let (dht, join, max_message) = joined_for_files(client, None).await?;
    let pin_to = match pin_to {
        Some(addr) => Some(pin_node(client, &dht, addr).await?),
        None => None,
    };
    let max_value = value_limit(max_message);
    let tag = if protection == Protection::Plain {
        0
    } else {
        kad_plugin_storage::TAG_LEN
    };
    let chunk_size = match chunk_size {
        Some(c) if c == 0 || c as usize + tag > max_value => bail!(
            "--chunk-size = {c} is out of range: 1 to {} bytes on this transport",
            max_value - tag
        ),
        Some(c) => c,
        None => kad_plugin_storage::default_chunk_size(max_message, protection),
    };
    let opts = PutOptions {
        chunk_size,
        parallel: parallel.unwrap_or_else(|| kad_plugin_storage::put_parallelism(chunk_size)),
        max_value_len: max_value,
        protection,
        ttl,
        pin_to: pin_to.clone(),
        ..PutOptions::default()
    };
    let pb = bar(client.json, "put");
    // --timeout bounds joining; the transfer runs until done or a chunk fails for good.
    let r = kad_plugin_storage::put_file(&dht, path, &opts, &progress(&pb)).await;
    pb.finish_and_clear();
    dht.shutdown().await;
    let r = r?;
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let cap = r.capability.as_ref().map(ToString::to_string);
    let shares: Vec<String> = r.shares.iter().map(ToString::to_string).collect();
    emit(
        client.json,
        &json!({"ok": true, "key": r.key.to_string(), "capability": cap, "shares": shares,
                "size": r.size, "chunks": r.chunks, "chunk_size": chunk_size,
                "index_blobs": r.index_blobs, "min_replicas": r.min_replicas, "retries": r.retries,
                "elapsed_ms": ms(r.elapsed), "mb_per_s": r.size as f64 / 1e6 / secs,
                "join_ms": ms(join), "pinned": r.pinned,
                "pinned_by": pin_to.as_ref().map(|c| c.id.to_string())}),
        || {
            let mut s = format!(
                "stored {} bytes as {} chunks of {} bytes (each on at least {} nodes) in {:.1} s, {:.1} MB/s",
                r.size,
                r.chunks,
                chunk_size,
                r.min_replicas,
                secs,
                r.size as f64 / 1e6 / secs
            );
            if let Some(c) = &pin_to {
                s.push_str(&format!(
                    "\npinned: node {} keeps all {} records and republishes them",
                    c.id, r.pinned
                ));
            }
            match (&cap, shares.is_empty()) {
                (Some(c), _) => s.push_str(&format!(
                    "\ncapability (keep it secret: it reads the file):\n{c}"
                )),
                (None, false) => {
                    s.push_str(&format!(
                        "\nkey: {}\nshares (give each to a different holder; the threshold of them decrypt):",
                        r.key
                    ));
                    for sh in &shares {
                        s.push_str(&format!("\n{sh}"));
                    }
                }
                (None, true) => s.push_str(&format!("\nkey: {}", r.key)),
            }
            s
        },
    );
    Ok(())
}

/// The node at `--pin-to` ADDR, asked for its contact (its id and all its addresses).
pub(crate) async fn pin_node(
    client: &ClientArgs,
    dht: &kad::NativeNode,
    addr: &str,
) -> Result<kad_core::Contact> {
    let target = crate::transports::parse_addrs("--pin-to", &[addr.to_owned()])?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("--pin-to: an address is needed"))?;
    match crate::net::within(client, dht.ping(target)).await {
        Ok(o) => Ok(o.contact),
        Err(e) => bail!("--pin-to {addr}: the node did not answer a ping: {e}"),
    }
}

/// Hands `record` to the pinning node `to` (`storage.PIN`); the node's refusal is the error.
pub(crate) async fn pin_record(
    client: &ClientArgs,
    dht: &kad::NativeNode,
    to: &kad_core::Contact,
    record: &kad_core::Record,
    ttl: Duration,
) -> Result<()> {
    let pinned = kad_plugin_storage::pin(
        dht,
        to,
        "the record",
        record.key,
        record.value.clone(),
        ttl,
        3,
    );
    match tokio::time::timeout(crate::net::timeout(client)?, pinned).await {
        Ok(r) => r.context("--pin-to")?,
        Err(_) => bail!("--pin-to: no answer within {} s", client.timeout),
    };
    Ok(())
}

/// `kad get KEY --out FILE` (KEY may be a capability; `shares` rebuild the key).
pub(crate) async fn get_file(
    client: &ClientArgs,
    key_arg: &str,
    out: &Path,
    shares: &[String],
    parallel: usize,
) -> Result<Option<u8>> {
    if !(1..=256).contains(&parallel) {
        bail!("--parallel = {parallel} is out of range: 1 to 256");
    }
    let (key, mut file_key) = parse_key_or_capability(key_arg)?;
    if !shares.is_empty() {
        if file_key.is_some() {
            bail!("--share: KEY is already a capability with its secret; give one or the other");
        }
        let parsed = shares
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<Share>()
                    .map_err(|e| anyhow::anyhow!("--share #{}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>>>()?;
        file_key = Some(combine_shares(&parsed).context("--share")?);
    }
    let (dht, join, max_message) =
        joined_for_files(client, Some(Arc::new(ContentValidator))).await?;
    // Answers come on the transport asked first: QUIC's carry many chunks each, and its flow
    // control paces them; a datagram's carry one message's worth, 1 MiB in flight at most.
    let answer_message = if streams_first(client) {
        dht.transports().max_message_len()
    } else {
        max_message
    };
    let opts = GetOptions {
        parallel,
        max_reply_bytes: value_limit(answer_message),
        max_in_flight_bytes: in_flight_budget(answer_message),
        max_value_len: value_limit(dht.transports().max_message_len()),
        ..GetOptions::default()
    };
    let t0 = Instant::now();
    let pb = bar(client.json, "get");
    let r: Result<_, TransferError> = async {
        let manifest = get_manifest(&dht, key).await?;
        get_file_with(
            &dht,
            key,
            &manifest,
            file_key.as_ref(),
            out,
            &opts,
            &progress(&pb),
            t0,
        )
        .await
    }
    .await;
    pb.finish_and_clear();
    dht.shutdown().await;
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            if let TransferError::NotFound { .. } = e {
                emit(
                    client.json,
                    &json!({"ok": false, "key": key.to_string(), "error": format!("{e:#}")}),
                    || format!("{e:#}"),
                );
                return Ok(Some(crate::net::NOT_FOUND));
            }
            return Err(e.into());
        }
    };
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    emit(
        client.json,
        &json!({"ok": true, "key": key.to_string(), "out": out.display().to_string(),
                "name": r.name, "size": r.size, "chunks": r.chunks, "resumed_chunks": r.resumed,
                "fetches": r.fetches, "bad_chunks": r.bad_chunks, "failed_fetches": r.failed_fetches,
                "lookups": r.lookups, "holders": r.holders_used, "elapsed_ms": ms(r.elapsed),
                "mb_per_s": r.size as f64 / 1e6 / secs, "join_ms": ms(join)}),
        || {
            format!(
                "wrote {} bytes to {} in {:.2} s ({:.1} MB/s) from {} holders{}{}",
                r.size,
                out.display(),
                secs,
                r.size as f64 / 1e6 / secs,
                r.holders_used,
                if r.resumed > 0 {
                    format!(", resuming with {} chunks already there", r.resumed)
                } else {
                    String::new()
                },
                if r.bad_chunks > 0 {
                    format!(", {} bad chunks refetched", r.bad_chunks)
                } else {
                    String::new()
                }
            )
        },
    );
    Ok(None)
}

/// `KEY` as 40 hex digits, or a capability `kad:KEY#SECRET`.
pub(crate) fn parse_key_or_capability(s: &str) -> Result<(NodeId, Option<FileKey>)> {
    if s.starts_with("kad:") {
        let c: Capability = s.parse().map_err(|e| anyhow::anyhow!("KEY {e}"))?;
        return Ok((c.manifest, Some(c.key)));
    }
    let k = s.parse::<NodeId>().map_err(|_| {
        anyhow::anyhow!("KEY {s:?}: expected 40 hex digits or a capability kad:KEY#SECRET")
    })?;
    Ok((k, None))
}
