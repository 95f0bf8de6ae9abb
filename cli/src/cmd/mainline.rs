//! `kad mainline ...`: a BitTorrent Mainline DHT node and one-shot clients (BEP5/44), each
//! printing exactly one JSON line on stdout so that any harness can drive them.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kad_core::NodeId;
use kad_plugin_bep44::{
    Mainline, MainlineConfig, MainlineError, MainlineGetOutcome, MainlinePutOutcome, MutableItem,
    PUBLIC_ROUTERS, bencode, item,
};
use serde_json::{Value, json};

use crate::net::ms;

#[derive(Subcommand, Debug)]
pub(crate) enum MainlineCommand {
    /// Run a full Mainline node (answers ping, find_node, get_peers, announce_peer, get, put,
    /// sample_infohashes).
    ///
    /// Prints {"op":"server","event":"started","port":P,"id":"..."} once listening, joins
    /// through --bootstrap, serves for --duration seconds (0: until Ctrl-C), then prints its
    /// counters as JSON on stderr.
    Server(ServerArgs),
    /// Store an immutable BEP44 item (the string, bencoded) and print its target.
    PutImmutable(PutImmutableArgs),
    /// Fetch an immutable BEP44 item by target; only a value whose SHA-1 is the target counts.
    GetImmutable(GetImmutableArgs),
    /// Sign and store a mutable BEP44 item with an ed25519 seed.
    PutMutable(PutMutableArgs),
    /// Fetch the mutable item of a public key (and salt) with the highest valid seq.
    GetMutable(GetMutableArgs),
}

#[derive(Args, Debug, Clone)]
pub(crate) struct NetArgs {
    /// UDP port to bind (0 picks a free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// IP address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Nodes to join through, as HOST:PORT,HOST:PORT,... "none" starts alone. Without this flag
    /// the node joins the live Mainline DHT through the public bootstrap routers.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Our public IP, if known: the node id is derived from it (BEP42).
    #[arg(long)]
    public_ip: Option<IpAddr>,
    /// Answer queries from nodes whose id does not match their IP with error 203 and never
    /// store to them (BEP42 enforcement; loopback and private addresses are exempt).
    #[arg(long)]
    enforce_bep42: bool,
    /// Datagrams per second accepted from one source IP before parsing (0: no limit).
    #[arg(long, default_value_t = 1000)]
    rate_limit: u32,
    /// Accepted for uniformity with the other commands: output is always one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Seconds to serve before exiting (0: until Ctrl-C).
    #[arg(long, default_value_t = 0.0)]
    duration: f64,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Seconds allowed for the whole operation, joining included.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Run as a full node instead of read-only (BEP43: by default clients send ro=1, answer
    /// nothing and are not added to others' routing tables).
    #[arg(long)]
    not_read_only: bool,
}

#[derive(Args, Debug)]
pub(crate) struct PutImmutableArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The value: a UTF-8 string, stored as a bencoded byte string (at most 1000 bytes encoded).
    #[arg(long)]
    value: String,
}

#[derive(Args, Debug)]
pub(crate) struct GetImmutableArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The target: 40 hex characters (SHA-1 of the bencoded value).
    #[arg(long)]
    target: String,
}

#[derive(Args, Debug)]
pub(crate) struct PutMutableArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The 32-byte ed25519 secret seed, 64 hex characters.
    #[arg(long)]
    seed: String,
    /// Salt (UTF-8, at most 64 bytes); "" means no salt.
    #[arg(long, default_value = "")]
    salt: String,
    /// Sequence number (>= 0); storing nodes refuse one lower than theirs (302).
    #[arg(long)]
    seq: i64,
    /// The value: a UTF-8 string, stored as a bencoded byte string (at most 1000 bytes encoded).
    #[arg(long)]
    value: String,
    /// Compare-and-swap: nodes holding the item store only if their seq equals this (else 301).
    #[arg(long)]
    cas: Option<i64>,
}

#[derive(Args, Debug)]
pub(crate) struct GetMutableArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The ed25519 public key, 64 hex characters.
    #[arg(long)]
    pubkey: String,
    /// Salt (UTF-8, at most 64 bytes); "" means no salt.
    #[arg(long, default_value = "")]
    salt: String,
    /// Only accept values newer than this seq (nodes send the value only if theirs is greater).
    #[arg(long)]
    seq: Option<i64>,
}

/// Runs a mainline command; returns the exit status. Prints exactly one JSON line on stdout.
pub(crate) async fn run(cmd: MainlineCommand) -> u8 {
    let op = match &cmd {
        MainlineCommand::Server(_) => "server",
        MainlineCommand::PutImmutable(_) => "put-immutable",
        MainlineCommand::GetImmutable(_) => "get-immutable",
        MainlineCommand::PutMutable(_) => "put-mutable",
        MainlineCommand::GetMutable(_) => "get-mutable",
    };
    let r = match cmd {
        MainlineCommand::Server(a) => server(a).await,
        MainlineCommand::PutImmutable(a) => put_immutable(a).await,
        MainlineCommand::GetImmutable(a) => get_immutable(a).await,
        MainlineCommand::PutMutable(a) => put_mutable(a).await,
        MainlineCommand::GetMutable(a) => get_mutable(a).await,
    };
    match r {
        Ok((v, code)) => {
            if let Some(v) = v {
                println!("{v}");
            }
            code
        }
        Err(e) => {
            println!(
                "{}",
                json!({"ok": false, "op": op, "error": format!("{e:#}")})
            );
            2
        }
    }
}

/// The bootstrap nodes of `--bootstrap`: the public routers by default, none with `none`.
async fn resolve(list: &Option<String>) -> Result<Vec<SocketAddr>> {
    let names: Vec<&str> = match list.as_deref() {
        None => PUBLIC_ROUTERS.to_vec(),
        Some("none") | Some("") => return Ok(Vec::new()),
        Some(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
    };
    kad_plugin_bep44::resolve_bootstrap(&names)
        .await
        .map_err(|e| anyhow::anyhow!("--bootstrap: {e}"))
}

async fn spawn(net: &NetArgs, read_only: bool) -> Result<Mainline> {
    let mut cfg = MainlineConfig::default();
    cfg.bind = SocketAddr::new(net.bind, net.port);
    cfg.bootstrap = resolve(&net.bootstrap).await?;
    cfg.public_ip = net.public_ip;
    cfg.read_only = read_only;
    cfg.limits.enforce_bep42 = net.enforce_bep42;
    cfg.limits.per_ip_rate = net.rate_limit;
    cfg.limits.per_ip_burst = net.rate_limit.saturating_mul(2);
    Ok(Mainline::spawn(cfg).await?)
}

async fn server(a: ServerArgs) -> Result<(Option<Value>, u8)> {
    if !(a.duration >= 0.0 && a.duration.is_finite()) {
        bail!(
            "--duration must be a number of seconds >= 0, got {}",
            a.duration
        );
    }
    let node = spawn(&a.net, false).await?;
    println!(
        "{}",
        json!({"op": "server", "event": "started", "port": node.local_addr().port(), "id": node.id().to_hex()})
    );
    let end = (a.duration > 0.0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs_f64(a.duration));
    if !node_has_no_seeds(&a.net) {
        let n = node.clone();
        tokio::spawn(async move {
            if let Err(e) = n.bootstrap().await {
                tracing::warn!(error = %e, "bootstrap failed; serving anyway");
            }
        });
    }
    match end {
        Some(t) => tokio::select! {
            _ = tokio::time::sleep_until(t) => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    if let Ok(s) = node.stats().await {
        eprintln!(
            "{}",
            json!({"op": "server", "event": "stopped", "stats": s})
        );
    }
    node.shutdown().await;
    Ok((None, 0))
}

fn node_has_no_seeds(net: &NetArgs) -> bool {
    matches!(net.bootstrap.as_deref(), Some("none") | Some(""))
}

/// Runs `op` on a fresh node within --timeout (joining included).
async fn client<T>(
    c: &ClientArgs,
    op: impl AsyncFnOnce(&Mainline) -> Result<T, MainlineError>,
) -> Result<(Result<T, MainlineError>, Duration)> {
    if !(c.timeout > 0.0 && c.timeout.is_finite()) {
        bail!(
            "--timeout must be a number of seconds > 0, got {}",
            c.timeout
        );
    }
    let started = Instant::now();
    let node = spawn(&c.net, !c.not_read_only).await?;
    let work = async {
        if !node_has_no_seeds(&c.net) {
            // One-shot: ping the seeds and walk from them; a full join (a lookup of our own
            // id) would only delay the answer.
            node.connect().await?;
        }
        op(&node).await
    };
    let r = tokio::time::timeout(Duration::from_secs_f64(c.timeout), work).await;
    let elapsed = started.elapsed();
    node.shutdown().await;
    match r {
        Ok(r) => Ok((r, elapsed)),
        Err(_) => bail!("timed out after {} s (--timeout)", c.timeout),
    }
}

fn value_json(v: &[u8]) -> (Value, Value) {
    match bencode::parse(v) {
        Ok(bencode::Val::Bytes(b)) => (json!(String::from_utf8_lossy(b)), Value::Null),
        _ => (Value::Null, json!(hex::encode(v))),
    }
}

fn put_json(
    op: &str,
    r: Result<MainlinePutOutcome, MainlineError>,
    target: NodeId,
    extra: Value,
    elapsed: Duration,
) -> (Option<Value>, u8) {
    let mut v = match &r {
        Ok(p) => json!({
            "ok": true, "op": op, "target": target.to_hex(), "stored_on": p.stored_on,
            "asked": p.asked, "errors": errors_json(&p.errors), "elapsed_ms": ms(elapsed),
        }),
        Err(e) => {
            let (asked, errors) = match e {
                MainlineError::NotStored { asked, errors } => (*asked, errors_json(errors)),
                _ => (0, json!([])),
            };
            json!({
                "ok": false, "op": op, "target": target.to_hex(), "stored_on": 0, "asked": asked,
                "errors": errors, "error": e.to_string(), "elapsed_ms": ms(elapsed),
            })
        }
    };
    merge(&mut v, extra);
    let code = u8::from(r.is_err());
    (Some(v), code)
}

fn errors_json(errors: &[(i64, String)]) -> Value {
    Value::Array(
        errors
            .iter()
            .map(|(c, m)| json!({"code": c, "message": m}))
            .collect(),
    )
}

fn merge(v: &mut Value, extra: Value) {
    if let (Value::Object(a), Value::Object(b)) = (v, extra) {
        a.extend(b);
    }
}

fn get_json(
    op: &str,
    r: Result<MainlineGetOutcome, MainlineError>,
    target: NodeId,
    elapsed: Duration,
) -> (Option<Value>, u8) {
    match r {
        Ok(g) => {
            let (value, value_hex) = value_json(&g.v);
            let mut v = json!({
                "ok": true, "op": op, "target": target.to_hex(), "value": value,
                "seq": g.pubkey.map(|_| g.seq), "values": g.values, "rejected": g.rejected,
                "answered": g.answered, "elapsed_ms": ms(elapsed),
            });
            if !value_hex.is_null() {
                merge(&mut v, json!({"value_bencoded_hex": value_hex}));
            }
            if let Some(k) = g.pubkey {
                merge(&mut v, json!({"pubkey": hex::encode(k)}));
            }
            (Some(v), 0)
        }
        Err(e) => (
            Some(
                json!({"ok": false, "op": op, "target": target.to_hex(), "error": e.to_string(), "elapsed_ms": ms(elapsed)}),
            ),
            1,
        ),
    }
}

fn hex32(s: &str, field: &str) -> Result<[u8; 32]> {
    let b = hex::decode(s).with_context(|| format!("{field} must be 64 hex characters"))?;
    b.try_into()
        .map_err(|_| anyhow::anyhow!("{field} must be 64 hex characters (32 bytes)"))
}

async fn put_immutable(a: PutImmutableArgs) -> Result<(Option<Value>, u8)> {
    let v = item::bencode_bytes(a.value.as_bytes());
    item::check_value(&v).context("--value")?;
    let target = item::immutable_target(&v);
    let (r, elapsed) = client(&a.client, async |n| n.put_immutable(&v).await).await?;
    Ok(put_json(
        "put-immutable",
        r,
        target,
        json!({"value": a.value, "seq": null}),
        elapsed,
    ))
}

async fn get_immutable(a: GetImmutableArgs) -> Result<(Option<Value>, u8)> {
    let target = NodeId::from_hex(&a.target)
        .map_err(|_| anyhow::anyhow!("--target must be 40 hex characters"))?;
    let (r, elapsed) = client(&a.client, async |n| n.get_immutable(target).await).await?;
    Ok(get_json("get-immutable", r, target, elapsed))
}

async fn put_mutable(a: PutMutableArgs) -> Result<(Option<Value>, u8)> {
    let seed = hex32(&a.seed, "--seed")?;
    let v = item::bencode_bytes(a.value.as_bytes());
    let it =
        MutableItem::sign(&seed, a.salt.as_bytes(), a.seq, &v).context("--value/--salt/--seq")?;
    let target = it.target();
    let cas = a.cas;
    let (r, elapsed) = client(&a.client, async |n| n.put_mutable(&it, cas).await).await?;
    let extra =
        json!({"value": a.value, "seq": a.seq, "pubkey": hex::encode(it.pubkey), "salt": a.salt});
    Ok(put_json("put-mutable", r, target, extra, elapsed))
}

async fn get_mutable(a: GetMutableArgs) -> Result<(Option<Value>, u8)> {
    let pubkey = hex32(&a.pubkey, "--pubkey")?;
    if a.salt.len() > item::MAX_SALT {
        bail!(
            "--salt is {} bytes, the limit is {}",
            a.salt.len(),
            item::MAX_SALT
        );
    }
    let target = item::mutable_target(&pubkey, a.salt.as_bytes());
    let salt = a.salt.clone();
    let seq = a.seq;
    let (r, elapsed) = client(&a.client, async |n| {
        n.get_mutable(pubkey, salt.as_bytes(), seq).await
    })
    .await?;
    let (mut v, code) = get_json("get-mutable", r, target, elapsed);
    if let Some(v) = v.as_mut() {
        merge(
            v,
            json!({"pubkey": a.pubkey.to_lowercase(), "salt": a.salt}),
        );
    }
    Ok((v, code))
}

/// A read-only Mainline node for other commands (`kad sensor ... --mainline`): binds `bind`
/// on a free port and joins through `bootstrap` (HOST:PORT,...; `None`: the public routers).
pub(crate) async fn read_only_node(bootstrap: Option<String>, bind: IpAddr) -> Result<Mainline> {
    let net = NetArgs {
        port: 0,
        bind,
        bootstrap,
        public_ip: None,
        enforce_bep42: false,
        rate_limit: 0,
        json: true,
    };
    let node = spawn(&net, true).await?;
    if !node_has_no_seeds(&net) {
        node.bootstrap().await?;
    }
    Ok(node)
}

/// `n` Mainline-mode nodes on 127.0.0.1, all joined through the first (a second round of lookups
/// lets the early nodes learn the late ones). `tune` adjusts each node's settings.
pub(crate) async fn local_network(
    n: usize,
    tune: impl Fn(&mut MainlineConfig),
) -> Result<Vec<Mainline>> {
    let mut nodes: Vec<Mainline> = Vec::new();
    for i in 0..n {
        let mut cfg = MainlineConfig::default();
        cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        tune(&mut cfg);
        if i > 0 {
            cfg.bootstrap = vec![nodes[0].local_addr()];
        }
        let node = Mainline::spawn(cfg).await?;
        if i > 0 {
            node.bootstrap().await?;
        }
        nodes.push(node);
    }
    for node in nodes.iter().skip(1) {
        node.bootstrap().await?;
    }
    Ok(nodes)
}
