//! `kad bench wan`: two sites a real round trip apart. Real `kad node` processes in two network
//! namespaces joined through a router namespace whose userspace link emulator
//! (`kad_testkit::netlab`) delays, jitters and drops the frames between them; puts through a
//! client at the first site, gets through a client at the second, latency in milliseconds and
//! in round trips.

use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use kad_testkit::netlab::{DirectionStats, LinkShape, Wan};
use serde_json::{Value, json};

use super::loss::{client, joined, start_node, wait_joined};
use super::{pct, round};

/// `kad bench wan` flags.
#[derive(Args, Debug)]
pub(crate) struct WanBenchArgs {
    /// Round-trip time between the sites in milliseconds (half of it added each way; 0 to
    /// 2000).
    #[arg(long, default_value_t = 80.0, value_name = "MS")]
    rtt_ms: f64,
    /// Jitter in milliseconds: each frame's one-way delay is moved by a uniform draw in
    /// [-J, +J] (at most half the round trip). Frames stay in order unless --reorder.
    #[arg(long, default_value_t = 8.0, value_name = "MS")]
    jitter_ms: f64,
    /// Let jitter reorder frames (each frame leaves at its own time).
    #[arg(long)]
    reorder: bool,
    /// Percent of the IP datagrams lost in each direction between the sites (0 to 50).
    #[arg(long, default_value_t = 3.0, value_name = "PCT")]
    loss: f64,
    /// The nodes' and clients' transport: udp, quic, or mixed (nodes listen on UDP and QUIC,
    /// clients join over UDP with their default preferences: a file client moves chunks on
    /// QUIC).
    #[arg(long, default_value = "udp", value_name = "KIND")]
    transport: String,
    /// `kad node` processes at each site (1 to 20).
    #[arg(long, default_value_t = 5, value_name = "N")]
    nodes_per_site: usize,
    /// Values put at the first site, then got at the second (1 to 500).
    #[arg(long, default_value_t = 20, value_name = "N")]
    ops: usize,
    /// Seconds the nodes get to join before the puts start (1 to 600).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    settle: f64,
    /// Megabytes of a file put (`kad put --file`) at the first site and got (`kad get --out`)
    /// at the second, with both sites up, then again after the second site's nodes stop (0 for
    /// none, at most 64).
    #[arg(long, default_value_t = 0.0, value_name = "MB")]
    file_mb: f64,
    /// Keep each `kad` process's log (standard error) in a file of its own under DIR, named
    /// by start order, role and namespace; the log level follows RUST_LOG (e.g.
    /// `RUST_LOG=debug`). Without it, the processes' logs are discarded.
    #[arg(long, value_name = "DIR")]
    logs: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

impl WanBenchArgs {
    /// Milliseconds in round trips of the link (null without delay).
    fn rtts(&self, ms: f64) -> Value {
        if self.rtt_ms > 0.0 {
            Value::from(round(ms / self.rtt_ms, 2))
        } else {
            Value::Null
        }
    }
}

/// The subnet of the two sites (site i is `NET.(i+1)`).
const NET: [u8; 3] = [10, 214, 0];
/// The UDP port of the long-running member node of each site.
const MEMBER_PORT: u16 = 4100;
/// Round trips a put and a get should take at most (medians).
const PUT_RTTS_TARGET: f64 = 3.0;
const GET_RTTS_TARGET: f64 = 2.0;

fn dir_json(d: DirectionStats) -> Value {
    json!({"received": d.received, "forwarded": d.forwarded, "dropped": d.dropped,
           "overflowed": d.overflowed})
}

pub(crate) fn run(a: WanBenchArgs) -> Result<()> {
    if let Some(dir) = &a.logs {
        super::loss::keep_logs(dir)?;
    }
    crate::check_range("nodes-per-site", a.nodes_per_site, 1, 20)?;
    crate::check_range("ops", a.ops, 1, 500)?;
    if !(0.0..=2000.0).contains(&a.rtt_ms) {
        bail!("--rtt-ms = {} is out of range: 0 to 2000", a.rtt_ms);
    }
    if !(0.0..=a.rtt_ms / 2.0).contains(&a.jitter_ms) {
        bail!(
            "--jitter-ms = {} is out of range: 0 to half of --rtt-ms ({})",
            a.jitter_ms,
            a.rtt_ms / 2.0
        );
    }
    if !(0.0..=50.0).contains(&a.loss) {
        bail!("--loss = {} is out of range: 0 to 50 percent", a.loss);
    }
    if !(0.0..=64.0).contains(&a.file_mb) {
        bail!("--file-mb = {} is out of range: 0 to 64", a.file_mb);
    }
    if !(1.0..=600.0).contains(&a.settle) {
        bail!("--settle = {} is out of range: 1 to 600 seconds", a.settle);
    }
    let kind = match a.transport.as_str() {
        k @ ("udp" | "quic" | "mixed") => k,
        other => bail!("--transport = {other:?}: udp, quic or mixed"),
    };
    let exe = std::env::current_exe()?;
    let mut shape = LinkShape::new(Duration::from_secs_f64(a.rtt_ms / 2000.0))
        .jitter(Duration::from_secs_f64(a.jitter_ms / 1000.0))
        .loss(a.loss / 100.0);
    if a.reorder {
        shape = shape.reordering();
    }
    let tag = format!("kw{}", std::process::id() % 100_000);
    let wan = Wan::up(&tag, NET, shape)
        .context("kad bench wan builds network namespaces: it needs root, iproute2 and ethtool")?;
    let mut children: Vec<Child> = Vec::new();
    let r = measure(&a, kind, &exe, &wan, &mut children);
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let link = wan.stats();
    drop(wan);
    let mut r = r?;
    r["link"] = json!({"forward": dir_json(link.forward), "backward": dir_json(link.backward)});
    if a.json {
        println!("{r}");
    } else {
        println!(
            "{} nodes over {kind}, {} ms round trip +-{} ms, {}% loss each way: {}/{} joined\n\
             put p50 {} ms = {} round trips (target <= {PUT_RTTS_TARGET}), p90 {} ms; {}/{} ok, stored median {}\n\
             get p50 {} ms = {} round trips (target <= {GET_RTTS_TARGET}), p90 {} ms; {}/{} found\n\
             long-running nodes: put p50 {} ms = {} round trips, p90 {} ms; get p50 {} ms; {}/{} found\n\
             gets across the link (values at the first site only): p50 {} ms = {} round trips (target <= {GET_RTTS_TARGET}), {}/{} found; \
             a long-running client's p50 {} ms = {} round trips, {}/{} found\n\
             measured ping between the sites: p50 {} ms",
            r["nodes"],
            a.rtt_ms,
            a.jitter_ms,
            a.loss,
            r["joined"],
            r["nodes"],
            r["put_ms_p50"],
            r["put_rtts_p50"],
            r["put_ms_p90"],
            r["puts_ok"],
            r["puts"],
            r["stored_median"],
            r["get_ms_p50"],
            r["get_rtts_p50"],
            r["get_ms_p90"],
            r["found"],
            r["gets"],
            r["members"]["put_ms_p50"],
            r["members"]["put_rtts_p50"],
            r["members"]["put_ms_p90"],
            r["members"]["get_ms_p50"],
            r["members"]["found"],
            r["gets"],
            r["far_get"]["get_ms_p50"],
            r["far_get"]["get_rtts_p50"],
            r["far_get"]["found"],
            r["far_get"]["gets"],
            r["far_get"]["member"]["get_ms_p50"],
            r["far_get"]["member"]["get_rtts_p50"],
            r["far_get"]["member"]["found"],
            r["far_get"]["gets"],
            r["ping_ms_p50"],
        );
    }
    Ok(())
}

fn measure(
    a: &WanBenchArgs,
    kind: &str,
    exe: &std::path::Path,
    wan: &Wan,
    children: &mut Vec<Child>,
) -> Result<Value> {
    let n = a.nodes_per_site;
    let life = a.settle + a.ops as f64 * 60.0 + 60.0;
    let scheme = if kind == "mixed" { "udp" } else { kind };
    let addr = |site: usize, i: usize| format!("{scheme}://{}:{}", wan.addr(site), 4000 + i);
    let boot = addr(0, 0);
    let mut nodes = Vec::new();
    let t0 = Instant::now();
    for site in 0..2 {
        for i in 0..n {
            let b = (site, i) != (0, 0);
            let mut listen = addr(site, i);
            if kind == "mixed" {
                listen.push_str(&format!(",quic://{}:{}", wan.addr(site), 4400 + i));
            }
            nodes.push(start_node(
                children,
                exe,
                wan.site(site),
                &listen,
                b.then_some(boot.as_str()),
                life,
            )?);
        }
    }
    let all_joined_s = wait_joined(&nodes, t0, a.settle);
    let joined_n = joined(&nodes);

    // The round trip as the nodes see it: pings from a client at site 0 to a node at site 1.
    let mut ping_ms = Vec::new();
    if let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "exec", wan.site(0)])
        .arg(exe)
        .args([
            "ping",
            &addr(1, 0),
            "--count",
            "10",
            "--json",
            "--timeout",
            "10",
        ])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(ms) = serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v["rtt_ms"].as_f64())
            {
                ping_ms.push(ms);
            }
        }
    }

    let (put_via, get_via) = (addr(0, n.min(2) - 1), addr(1, n.min(2) - 1));
    let (mut put_ms, mut get_ms, mut join_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut stored, mut put_ok, mut found, mut put_errors, mut get_errors) =
        (Vec::new(), 0, 0, Vec::new(), Vec::new());
    let at_site = |site: usize, verb: &str, arg: &str, via: &str| {
        at_site(wan, exe, kind, site, verb, arg, via, &[])
    };
    let tag = std::process::id();
    let mut fetched = Vec::new();
    for i in 0..a.ops {
        let value = format!("kad bench wan {tag} value {i}");
        let p = at_site(0, "put", &value, &put_via)?;
        let Some(key) = p["key"].as_str().map(str::to_owned) else {
            stored.push(0);
            put_errors.push(p["error"].clone());
            continue;
        };
        put_ok += 1;
        stored.push(p["stored"].as_u64().unwrap_or(0));
        put_ms.push(p["elapsed_ms"].as_f64().unwrap_or(0.0));
        join_ms.push(p["join_ms"].as_f64().unwrap_or(0.0));
        let g = at_site(1, "get", &key, &get_via)?;
        if g["value"].as_str() == Some(value.as_str()) {
            found += 1;
            fetched.push((key, value));
            get_ms.push(g["elapsed_ms"].as_f64().unwrap_or(0.0));
            join_ms.push(g["join_ms"].as_f64().unwrap_or(0.0));
        } else {
            get_errors.push(g["error"].clone());
        }
    }
    stored.sort_unstable();
    let files = FileRun::new(a.file_mb)?;
    let file = match &files {
        Some(f) => f.put_and_get(wan, exe, kind, &put_via, &get_via)?,
        None => Value::Null,
    };
    // The in-process nodes of the members and far gets run here.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let members = members(&rt, a, kind, wan)?;
    // Gets that must cross the link: the second site's nodes stop (killed by their PIDs), so the
    // values put above live at the first site only.
    for c in children.iter_mut().skip(n).take(n) {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut far = far_gets(&rt, a, kind, wan, &fetched, &put_via)?;
    if let (Some(f), Some(key)) = (&files, file["key"].as_str()) {
        far["file"] = f.get(wan, exe, kind, key, &put_via)?;
    }
    // The nodes' own counters, summed: what they dropped and why, what they sent again.
    let mut counters = serde_json::Map::new();
    for node in &nodes {
        let c = node.lock().map(|s| s.counters.clone()).unwrap_or_default();
        for (k, v) in c.as_object().into_iter().flatten() {
            if let Some(n) = v.as_u64().filter(|_| {
                k.starts_with("dropped_")
                    || matches!(
                        k.as_str(),
                        "retransmits"
                            | "timeouts"
                            | "proving_pings"
                            | "replies_deferred"
                            | "replies_deferred_dropped"
                            | "requests_in"
                            | "requests_out"
                    )
            }) {
                let e = counters.entry(k.clone()).or_insert(Value::from(0u64));
                *e = Value::from(e.as_u64().unwrap_or(0) + n);
            }
        }
        // QUIC connections: opened, failed, and closed because the peer fell silent.
        let t = node
            .lock()
            .map(|s| s.transports.clone())
            .unwrap_or_default();
        for quic in t
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|v| v.get("dead_peers").is_some())
        {
            for k in ["dialed", "accepted", "failed", "dead_peers"] {
                let e = counters
                    .entry(format!("quic_{k}"))
                    .or_insert(Value::from(0u64));
                *e = Value::from(e.as_u64().unwrap_or(0) + quic[k].as_u64().unwrap_or(0));
            }
        }
    }
    let (put_p50, get_p50) = (pct(&mut put_ms.clone(), 0.5), pct(&mut get_ms.clone(), 0.5));
    Ok(json!({
        "bench": "wan",
        "transport": kind,
        "rtt_ms": a.rtt_ms,
        "jitter_ms": a.jitter_ms,
        "reorder": a.reorder,
        "loss_pct": a.loss,
        "nodes": 2 * n,
        "joined": joined_n,
        "all_joined_s": all_joined_s,
        "ping_ms_p50": pct(&mut ping_ms.clone(), 0.5),
        "pings_answered": ping_ms.len(),
        "puts": a.ops,
        "puts_ok": put_ok,
        "stored_min": stored.first().copied().unwrap_or(0),
        "stored_median": stored.get(stored.len() / 2).copied().unwrap_or(0),
        "put_ms_p50": put_p50,
        "put_ms_p90": pct(&mut put_ms.clone(), 0.9),
        "put_rtts_p50": a.rtts(put_p50),
        "gets": a.ops,
        "found": found,
        "get_ms_p50": get_p50,
        "get_ms_p90": pct(&mut get_ms.clone(), 0.9),
        "get_rtts_p50": a.rtts(get_p50),
        "join_ms_p50": pct(&mut join_ms, 0.5),
        "members": members,
        "file": file,
        "far_get": far,
        "node_counters": counters,
        "targets": {"put_rtts_p50": PUT_RTTS_TARGET, "get_rtts_p50": GET_RTTS_TARGET},
        "put_errors": put_errors,
        "get_errors": get_errors,
        "samples": {"put_ms": put_ms, "get_ms": get_ms, "ping_ms": ping_ms},
    }))
}

/// Puts and gets by long-running nodes of the network, one at each site, running in this
/// process (their sockets opened in the sites): what an application embedding a node sees,
/// without a fresh client's join and first contacts.
fn members(rt: &tokio::runtime::Runtime, a: &WanBenchArgs, kind: &str, wan: &Wan) -> Result<Value> {
    rt.block_on(async {
        let mut nodes = Vec::new();
        for site in 0..2 {
            let scheme = if kind == "quic" { "quic" } else { "udp" };
            let boot = format!("{scheme}://{}:4000", wan.addr(site));
            let node = site_node(kind, wan, site, MEMBER_PORT, &boot, false).await?;
            nodes.push(node);
        }
        // Let both meet the rest of the network (and each other) before timing anything.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (mut put_ms, mut get_ms, mut found) = (Vec::new(), Vec::new(), 0);
        for i in 0..a.ops {
            let value = format!("kad bench wan member {} value {i}", std::process::id());
            let key = kad_core::content_key(value.as_bytes());
            let t = Instant::now();
            if nodes[0]
                .put(key, bytes::Bytes::from(value.clone().into_bytes()))
                .await
                .is_ok_and(|o| o.stored > 0)
            {
                put_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            let t = Instant::now();
            if let Ok(g) = nodes[1].get(key).await {
                if g.record.value[..] == *value.as_bytes() {
                    found += 1;
                    get_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        for n in nodes {
            n.shutdown().await;
        }
        let (put_p50, get_p50) = (pct(&mut put_ms.clone(), 0.5), pct(&mut get_ms.clone(), 0.5));
        Ok(json!({
            "puts_ok": put_ms.len(),
            "put_ms_p50": put_p50,
            "put_ms_p90": pct(&mut put_ms.clone(), 0.9),
            "put_rtts_p50": a.rtts(put_p50),
            "found": found,
            "get_ms_p50": get_p50,
            "get_ms_p90": pct(&mut get_ms.clone(), 0.9),
            "get_rtts_p50": a.rtts(get_p50),
            "samples": {"put_ms": put_ms, "get_ms": get_ms},
        }))
    })
}

/// Gets from the second site of values that live at the first site only (its own nodes
/// stopped): through fresh `kad get` clients joining through a node at the first site, then
/// through one long-running read-only node at the second site (in this process).
fn far_gets(
    rt: &tokio::runtime::Runtime,
    a: &WanBenchArgs,
    kind: &str,
    wan: &Wan,
    values: &[(String, String)],
    via: &str,
) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let (mut get_ms, mut errors) = (Vec::new(), Vec::new());
    for (key, value) in values {
        let g = at_site(wan, &exe, kind, 1, "get", key, via, &[])?;
        if g["value"].as_str() == Some(value.as_str()) {
            get_ms.push(g["elapsed_ms"].as_f64().unwrap_or(0.0));
        } else {
            errors.push(g["error"].clone());
        }
    }
    let member_ms = rt.block_on(async {
        let node = site_node(kind, wan, 1, MEMBER_PORT + 1, via, true).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut ms = Vec::new();
        for (key, value) in values {
            let key: kad_core::Key = key.parse()?;
            let t = Instant::now();
            if let Ok(g) = node.get(key).await {
                if g.record.value[..] == *value.as_bytes() {
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        node.shutdown().await;
        anyhow::Ok(ms)
    })?;
    let p50 = pct(&mut get_ms.clone(), 0.5);
    let member_p50 = pct(&mut member_ms.clone(), 0.5);
    Ok(json!({
        "gets": values.len(),
        "found": get_ms.len(),
        "get_ms_p50": p50,
        "get_ms_p90": pct(&mut get_ms.clone(), 0.9),
        "get_rtts_p50": a.rtts(p50),
        "errors": errors,
        "member": {
            "found": member_ms.len(),
            "get_ms_p50": member_p50,
            "get_ms_p90": pct(&mut member_ms.clone(), 0.9),
            "get_rtts_p50": a.rtts(member_p50),
        },
        "samples": {"get_ms": get_ms, "member_get_ms": member_ms},
    }))
}

/// A node of this process at `site` (its socket opened there, on `port`), joining through
/// `boot`; a read-only client if `client`.
pub(crate) async fn site_node(
    kind: &str,
    wan: &Wan,
    site: usize,
    port: u16,
    boot: &str,
    client: bool,
) -> Result<kad::NativeNode> {
    let identity = Arc::new(kad::keys::fresh_identity()?);
    let addr = wan.addr(site);
    let socket = wan
        .in_site(site, || std::net::UdpSocket::bind((addr, port)))?
        .with_context(|| format!("binding {addr}:{port} in site {site}"))?;
    let t: Arc<dyn kad_core::Transport> = if kind == "quic" {
        Arc::new(kad::quic::QuicTransport::from_socket(
            socket,
            identity.clone(),
            kad::quic::QuicConfig::default(),
        )?)
    } else {
        Arc::new(kad::udp::UdpTransport::from_std(
            socket,
            kad::udp::UdpConfig::default(),
        )?)
    };
    let mut b = kad::NativeNode::builder()
        .identity(identity)
        .transport(t)
        .bootstrap([boot]);
    if client {
        b = b.client();
    }
    Ok(b.build().await?)
}

/// A file of random bytes put at the first site and got back at the second.
struct FileRun {
    dir: tempfile::TempDir,
    bytes: Vec<u8>,
}

impl FileRun {
    fn new(mb: f64) -> Result<Option<Self>> {
        if mb <= 0.0 {
            return Ok(None);
        }
        let mut bytes = vec![0u8; (mb * 1e6) as usize];
        rand::RngCore::fill_bytes(&mut rand::rngs::ThreadRng::default(), &mut bytes);
        let dir = tempfile::tempdir().context("a temporary directory for the file")?;
        std::fs::write(dir.path().join("put"), &bytes)?;
        Ok(Some(Self { dir, bytes }))
    }

    /// `kad put --file` at the first site, then a get at the second.
    fn put_and_get(
        &self,
        wan: &Wan,
        exe: &std::path::Path,
        kind: &str,
        put_via: &str,
        get_via: &str,
    ) -> Result<Value> {
        let put = self.dir.path().join("put");
        let p = at_site(
            wan,
            exe,
            kind,
            0,
            "put",
            "--file",
            put_via,
            &[&put.to_string_lossy()],
        )?;
        let mut r = json!({
            "bytes": self.bytes.len(),
            "put_ok": p["ok"].as_bool() == Some(true),
            "put_ms": p["elapsed_ms"],
            "min_replicas": p["min_replicas"],
            "chunk_size": p["chunk_size"],
            "put_error": p["error"],
        });
        if let Some(key) = p["key"].as_str() {
            r["key"] = Value::from(key);
            r["get"] = self.get(wan, exe, kind, key, get_via)?;
        }
        Ok(r)
    }

    /// `kad get KEY --out` at the second site: whether the bytes came back intact.
    fn get(
        &self,
        wan: &Wan,
        exe: &std::path::Path,
        kind: &str,
        key: &str,
        via: &str,
    ) -> Result<Value> {
        let out = self.dir.path().join("got");
        let _ = std::fs::remove_file(&out);
        let g = at_site(
            wan,
            exe,
            kind,
            1,
            "get",
            key,
            via,
            &["--out", &out.to_string_lossy()],
        )?;
        let intact = std::fs::read(&out).is_ok_and(|b| b == self.bytes);
        Ok(json!({
            "intact": intact,
            "get_ms": g["elapsed_ms"],
            "fetches": g["fetches"],
            "failed_fetches": g["failed_fetches"],
            "lookups": g["lookups"],
            "holders": g["holders"],
            "error": g["error"],
        }))
    }
}

/// One `kad put VALUE` or `kad get KEY` at `site` (`extra` arguments after the first), joining through `via`; its JSON line.
#[allow(clippy::too_many_arguments)]
fn at_site(
    wan: &Wan,
    exe: &std::path::Path,
    kind: &str,
    site: usize,
    verb: &str,
    arg: &str,
    via: &str,
    extra: &[&str],
) -> Result<Value> {
    let mut args = vec![verb, arg];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--bootstrap", via, "--json", "--timeout", "30"]);
    match kind {
        "quic" => args.extend_from_slice(&["--prefer", "quic,udp"]),
        "udp" => args.extend_from_slice(&["--prefer", "udp,quic"]),
        _ => {} // mixed: the client's own defaults
    }
    client(wan.site(site), exe, &args)
}
