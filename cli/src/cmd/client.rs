//! `kad ping`, `kad lookup`, `kad put`, `kad get`: one-shot clients of the native network.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use base64::Engine as _;
use clap::Args;
use kad_core::{DhtError, QueryError};
use serde_json::json;

use crate::net::{
    ClientArgs, NOT_FOUND, client, client_max_message, contact_json, emit, joined, joined_with, ms,
    native_config, parse_id, timeout, value_limit, within,
};
use crate::transports::parse_addrs;

/// `kad ping` flags.
#[derive(Args, Debug)]
pub(crate) struct PingArgs {
    /// The node to ping: udp://IP:PORT, quic://IP:PORT, ws://HOST:PORT/PATH or wss://....
    addr: String,
    /// How many pings to send, one after the other.
    #[arg(long, default_value_t = 1)]
    count: u32,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

pub(crate) async fn ping(a: PingArgs) -> Result<()> {
    let target = parse_addrs("ADDR", std::slice::from_ref(&a.addr))?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("ADDR: an address is needed"))?;
    if !(1..=100_000).contains(&a.count) {
        bail!("--count = {} is out of range: 1 to 100000", a.count);
    }
    let dht = client(&a.client, std::slice::from_ref(&target), None).await?;
    for seq in 0..a.count {
        let o = within(&a.client, dht.ping(target.clone())).await?;
        emit(
            a.client.json,
            &json!({"seq": seq, "id": o.contact.id.to_string(), "addrs": contact_json(&o.contact)["addrs"], "rtt_ms": ms(o.rtt)}),
            || {
                format!(
                    "pong from {} ({}): rtt {:.3} ms",
                    target,
                    o.contact.id,
                    ms(o.rtt)
                )
            },
        );
    }
    dht.shutdown().await;
    Ok(())
}

/// `kad lookup` flags.
#[derive(Args, Debug)]
pub(crate) struct LookupArgs {
    /// The id to look for, 40 hex digits.
    id: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

pub(crate) async fn lookup(a: LookupArgs) -> Result<()> {
    let target = parse_id("ID", &a.id)?;
    let (dht, join) = joined(&a.client).await?;
    let o = within(&a.client, dht.find_node(target)).await?;
    emit(
        a.client.json,
        &json!({"target": target.to_string(), "closest": o.closest.iter().map(|c| {
                    let mut v = contact_json(c);
                    v["distance"] = hex::encode(c.id.distance(&target).0).into();
                    v
                }).collect::<Vec<_>>(),
                "hops": o.stats.hops, "rpcs": o.stats.rpcs, "failures": o.stats.failures,
                "elapsed_ms": ms(o.elapsed), "join_ms": ms(join)}),
        || {
            let mut s = format!(
                "{} closest to {target} ({} hops, {} RPCs, {:.1} ms; joined in {:.1} ms):",
                o.closest.len(),
                o.stats.hops,
                o.stats.rpcs,
                ms(o.elapsed),
                ms(join)
            );
            for c in &o.closest {
                s.push_str(&format!("\n  {}  {}", c.id, c.addrs[0]));
            }
            s
        },
    );
    dht.shutdown().await;
    Ok(())
}

/// `kad put` flags.
#[derive(Args, Debug)]
pub(crate) struct PutArgs {
    /// The value: UTF-8 text as given (at most 45000 bytes over UDP, about 750 KB over QUIC or
    /// WebSocket). Its key is RIPEMD-160(SHA-256(value)) unless --key names one. Give VALUE or
    /// --file.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    value: Option<String>,
    /// Store under this key (40 hex digits) instead of the value's content hash: a named
    /// record, which only nodes running with --records any accept.
    #[arg(long, conflicts_with = "file")]
    key: Option<String>,
    /// Store a whole file: split into chunks sized to the transport's message limit, each
    /// stored content-addressed, then an index and a manifest; prints one key for the file.
    /// --timeout then bounds joining only; the transfer runs until done.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Encrypt the file (XChaCha20-Poly1305, a fresh key) and print a capability
    /// kad:KEY#SECRET: whoever holds it can read the file; nobody else can.
    #[arg(long, requires = "file")]
    encrypt: bool,
    /// Encrypt the file and split its key into N Shamir shares of which any T decrypt
    /// (`T/N`, e.g. 3/5); prints the file's key and the shares, never the key itself.
    #[arg(
        long,
        requires = "file",
        conflicts_with = "encrypt",
        value_name = "T/N"
    )]
    shares: Option<String>,
    /// Plaintext bytes per chunk (default: the largest that fits one message of the transport:
    /// 35 KiB over UDP, 756 KiB over QUIC or WebSocket).
    #[arg(long, requires = "file", value_name = "BYTES")]
    chunk_size: Option<u32>,
    /// Chunks stored at once (default: about 2 MiB of chunks in flight, at most 16; more
    /// overloads the storing nodes, each of which receives every chunk).
    #[arg(long, value_name = "N")]
    parallel: Option<usize>,
    /// Lifetime of the records in seconds (storing nodes cap it at their own maximum, 24 h by
    /// default).
    #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
    ttl: u64,
    /// Also hand every record to the node at this address (udp://, quic://, ws://), which keeps
    /// it and republishes it before it expires, across its restarts when it runs with
    /// --data-dir: the value or file outlives --ttl and this client. The node must run with
    /// --pin-from naming this client's id: give the client a --key-file and read its id with
    /// `kad id --key-file FILE`. A refusal fails the put.
    #[arg(long, value_name = "ADDR")]
    pin_to: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// `kad id` flags.
#[derive(Args, Debug)]
pub(crate) struct IdArgs {
    /// The key file (created with mode 0600, holding a fresh secp256k1 key, if missing).
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// Work in the id of a key created now, as with `kad node --id-work` (0 to 32); a loaded
    /// key with less is an error.
    #[arg(long, default_value_t = 0, value_name = "BITS")]
    id_work: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `kad id`: the node id of a key file, e.g. for `kad node --pin-from`.
pub(crate) fn id(a: IdArgs) -> Result<()> {
    if a.id_work > 32 {
        bail!("--id-work = {} is out of range: 0 to 32", a.id_work);
    }
    let (identity, created) = kad::keys::load_or_create_identity(&a.key_file, a.id_work)
        .map_err(|e| crate::net::flag_error(kad::BuildError::KeyFile(e)))?;
    let id = kad_core::Identity::node_id(&identity);
    emit(
        a.json,
        &json!({"id": id.to_string(), "key_file": a.key_file.display().to_string(), "created": created}),
        || id.to_string(),
    );
    Ok(())
}

pub(crate) async fn put(a: PutArgs) -> Result<()> {
    if !(1..=10 * 365 * 86_400).contains(&a.ttl) {
        bail!("--ttl = {} is out of range: 1 second to 10 years", a.ttl);
    }
    let ttl = Duration::from_secs(a.ttl);
    if let Some(file) = &a.file {
        return crate::storage::put_file(
            &a.client,
            file,
            a.encrypt,
            a.shares.as_deref(),
            a.chunk_size,
            a.parallel,
            ttl,
            a.pin_to.as_deref(),
        )
        .await;
    }
    let value = a.value.clone().unwrap_or_default();
    let (key, named) = match &a.key {
        Some(k) => (parse_id("--key", k)?, true),
        None => (kad_core::content_key(value.as_bytes()), false),
    };
    let limit = value_limit(client_max_message(&a.client)?);
    if value.len() > limit {
        bail!(
            "VALUE is {} bytes: the limit is {limit} bytes on this transport (use --file for more)",
            value.len()
        );
    }
    let (dht, join, _) = joined_with(&a.client, None).await?;
    let record = kad_core::Record::new(
        key,
        value.clone().into_bytes(),
        Some(dht.id()),
        kad_core::SystemClock::now_ms(),
        ttl.as_millis() as u64,
    );
    let r = within(&a.client, dht.put_record(record.clone())).await;
    let pinned_by = match (&r, &a.pin_to) {
        (Ok(o), Some(addr)) if o.stored > 0 => {
            let pinned = async {
                let to = crate::storage::pin_node(&a.client, &dht, addr).await?;
                crate::storage::pin_record(&a.client, &dht, &to, &record, ttl).await?;
                anyhow::Ok(to.id)
            }
            .await;
            match pinned {
                Ok(id) => Some(id),
                Err(e) => {
                    dht.shutdown().await;
                    return Err(e);
                }
            }
        }
        _ => None,
    };
    dht.shutdown().await;
    let o = r?;
    // A record on one or two nodes is lost with them: say so (the node the client joined
    // through may not have joined the network itself).
    let warning = (o.stored > 0 && o.stored < FEW_REPLICAS).then(|| {
        format!(
            "stored at {} node(s) only (k = {}): the network reached was that small",
            o.stored,
            native_config().k
        )
    });
    emit(
        a.client.json,
        &json!({"key": key.to_string(), "content_addressed": !named, "stored": o.stored,
                "tried": o.tried, "rpcs": o.stats.rpcs, "elapsed_ms": ms(o.elapsed),
                "join_ms": ms(join), "warning": warning,
                "pinned_by": pinned_by.map(|id| id.to_string())}),
        || {
            format!(
                "stored at {} of {} nodes in {:.1} ms{}\nkey: {key}",
                o.stored,
                o.tried,
                ms(o.elapsed),
                warning
                    .as_deref()
                    .map(|w| format!("\nwarning: {w}"))
                    .unwrap_or_default()
            ) + &pinned_by
                .map(|id| format!("\npinned: node {id} keeps it and republishes it"))
                .unwrap_or_default()
        },
    );
    if o.stored == 0 {
        bail!("no node stored the record");
    }
    Ok(())
}

/// Below this many storing nodes, `kad put` warns.
const FEW_REPLICAS: usize = 3;

/// `kad get` flags.
#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// The key (40 hex digits), or a capability kad:KEY#SECRET printed by `kad put --encrypt`.
    key: String,
    /// Write the file stored under KEY to this path, fetching chunks in parallel from any
    /// holder and verifying each; data lands in OUT.part first, and a rerun after an
    /// interruption keeps the chunks already there. --timeout then bounds joining only.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// A key share printed by `kad put --shares` (repeat it: at least the threshold of them).
    #[arg(long = "share", value_name = "SHARE", requires = "out")]
    shares: Vec<String>,
    /// Chunk fetches in flight at once (with --out).
    #[arg(long, default_value_t = 16, value_name = "N")]
    parallel: usize,
    /// Which values to trust: `content` (only a value whose RIPEMD-160(SHA-256) is the key;
    /// a forged answer is dropped and the next holder asked) or `any` (named records, as
    /// stored with `kad put --key`).
    #[arg(long, default_value = "content", value_parser = ["content", "any"])]
    records: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

pub(crate) async fn get(a: GetArgs) -> Result<Option<u8>> {
    if let Some(out) = &a.out {
        return crate::storage::get_file(&a.client, &a.key, out, &a.shares, a.parallel).await;
    }
    if a.key.starts_with("kad:") {
        bail!("KEY is a capability: a file's; give --out FILE to fetch and decrypt it");
    }
    let key = parse_id("KEY", &a.key)?;
    let validator = crate::storage::validator(&a.records);
    let (dht, join, _) = joined_with(&a.client, Some(validator)).await?;
    let r = tokio::time::timeout(timeout(&a.client)?, dht.get(key)).await;
    let rejected = dht.stats().await.map(|s| s.values_rejected).unwrap_or(0);
    dht.shutdown().await;
    let o = match r {
        Err(_) => bail!("timed out after {} s", a.client.timeout),
        Ok(Err(DhtError::Query(QueryError::NotFound))) => {
            let hint = if rejected > 0 && a.records == "content" {
                format!(
                    " ({rejected} answers were dropped: their values do not hash to the key; a named record needs --records any)"
                )
            } else {
                String::new()
            };
            emit(
                a.client.json,
                &json!({"ok": false, "key": key.to_string(), "error": "not found", "rejected": rejected}),
                || format!("{key}: not found{hint}"),
            );
            return Ok(Some(NOT_FOUND));
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(o)) => o,
    };
    let is_file = kad_plugin_storage::Manifest::from_bytes(&o.record.value).is_ok();
    let text = std::str::from_utf8(&o.record.value).ok();
    emit(
        a.client.json,
        &json!({"key": key.to_string(), "value": text,
                "value_base64": base64::engine::general_purpose::STANDARD.encode(&o.record.value),
                "file_manifest": is_file,
                "publisher": o.record.publisher.map(|p| p.to_string()),
                "expires_at_ms": o.record.expires_at_ms, "hops": o.stats.hops, "rpcs": o.stats.rpcs,
                "elapsed_ms": ms(o.elapsed), "join_ms": ms(join)}),
        || match text {
            Some(t) if is_file => {
                format!("{t}\n(this is a file's manifest: add --out FILE to fetch the file)")
            }
            Some(t) => t.to_owned(),
            None => format!(
                "(binary, base64) {}",
                base64::engine::general_purpose::STANDARD.encode(&o.record.value)
            ),
        },
    );
    Ok(None)
}
