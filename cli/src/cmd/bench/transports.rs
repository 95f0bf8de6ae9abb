//! `kad bench transports`: every transport measured side by side on loopback, in one run.
//!
//! For each transport, a server process (`kad bench transport-server`, an echo responder on the
//! transport) and this process as the client:
//! 1. round-trip latency with one request in flight (64-byte messages), median and p99;
//! 2. round trips per second with 64 requests in flight;
//! 3. MB/s of 64 KiB requests (each answered by an 8-byte ack; UDP carries at most 65,507);
//! 4. connection setup: the first round trip of a fresh client (handshakes included);
//! 5. memory per idle connection: a fresh server process's RSS before and after N clients
//!    connected and went idle (WebSocket: 5,000 by default, the target's figure).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use kad_core::{PeerAddr, Transport};
use kad_transport_quic::{QuicConfig, QuicTransport};
use kad_transport_udp::UdpTransport;
use kad_transport_ws::{WsConfig, WsTransport};
use serde_json::json;

use crate::cmd::bench::pct;
use crate::net::{emit, fresh_identity};

/// `kad bench transports` flags.
#[derive(Args, Debug)]
pub(crate) struct TransportsArgs {
    /// Transports to measure, comma-separated: udp, quic, quic-dgram (QUIC sending small
    /// messages as datagrams), quic-lo (QUIC with path-MTU discovery allowed up to 64 KiB, as on
    /// loopback or jumbo frames), ws, wss.
    #[arg(long, default_value = "udp,quic,quic-dgram,quic-lo,ws,wss")]
    kinds: String,
    /// Seconds per rate measurement (round trips per second, MB/s).
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Idle connections opened to measure memory per connection (QUIC and WebSocket).
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Concurrent WebSocket client connections held by one server process (the target: 5,000
    /// under 500 MB RSS). 0 skips it.
    #[arg(long, default_value_t = 5000)]
    ws_connections: usize,
    /// Print exactly one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `kad bench transport-server` flags (a helper process).
#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    /// The transport: udp, quic, quic-dgram, quic-lo, ws, wss.
    #[arg(long)]
    kind: String,
}

const KINDS: [&str; 6] = ["udp", "quic", "quic-dgram", "quic-lo", "ws", "wss"];

fn quic_config(kind: &str) -> QuicConfig {
    let c = QuicConfig::default().max_connections(20_000);
    match kind {
        "quic-dgram" => c.datagrams(true),
        "quic-lo" => c.max_udp_payload(65_527),
        _ => c,
    }
}

/// A transport for `kind`: listening on 127.0.0.1 (server), or a client one.
async fn open(kind: &str, server: bool, cert_pem: Option<&str>) -> Result<Arc<dyn Transport>> {
    let lo = "127.0.0.1:0".parse()?;
    Ok(match kind {
        "udp" => Arc::new(UdpTransport::bind(lo).await?),
        k if k.starts_with("quic") => Arc::new(QuicTransport::bind(
            lo,
            Arc::new(fresh_identity()?),
            quic_config(k),
        )?),
        "ws" | "wss" => {
            let mut c = WsConfig::default().max_connections(20_000);
            if kind == "wss" {
                let pem = cert_pem.context("wss needs the server's certificate")?;
                let roots = kad_transport_ws::tls::certs_from_pem(pem.as_bytes())?;
                c = c.tls_client(kad_transport_ws::tls::client_config(&roots));
            }
            if server {
                if kind == "wss" {
                    bail!("a wss server is opened by the server helper");
                }
                Arc::new(WsTransport::bind(lo, c).await?)
            } else {
                Arc::new(WsTransport::client(c))
            }
        }
        other => bail!("--kinds {other:?}: expected some of {}", KINDS.join(", ")),
    })
}

/// The helper: an echo server on one transport. Prints `{"addr": ..., "cert_pem": ...}` and
/// serves until stdin closes. Messages over 1 KiB are answered with an 8-byte ack.
pub(crate) fn server(a: ServerArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (t, cert): (Arc<dyn Transport>, Option<String>) = if a.kind == "wss" {
            let key = rcgen::KeyPair::generate()?;
            let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
            let cert = params.self_signed(&key)?;
            let tls = kad_transport_ws::tls::server_config_from_pem(
                cert.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
            )?;
            let c = WsConfig::default().max_connections(20_000).tls_server(tls);
            (
                Arc::new(WsTransport::bind("127.0.0.1:0".parse()?, c).await?),
                Some(cert.pem()),
            )
        } else {
            (open(&a.kind, true, None).await?, None)
        };
        println!(
            "{}",
            json!({"addr": t.local_addr().to_string(), "cert_pem": cert})
        );
        let echo = {
            let t = t.clone();
            tokio::spawn(async move {
                let ack = Bytes::from_static(b"ack.ack.");
                while let Ok((from, m)) = t.recv().await {
                    let reply = if m.len() > 1024 { ack.clone() } else { m };
                    let _ = t.send(&from, reply).await;
                }
            })
        };
        // Until the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await;
        echo.abort();
        t.close().await;
        Ok(())
    })
}

/// A server helper process, killed when dropped.
struct ServerProc {
    child: Child,
    addr: PeerAddr,
    cert: Option<String>,
}

impl ServerProc {
    fn start(kind: &str) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "transport-server", "--kind", kind])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start the server helper")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("helper stdout")?).read_line(&mut line)?;
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("helper said {line:?}"))?;
        Ok(Self {
            addr: v["addr"].as_str().unwrap_or("").parse()?,
            cert: v["cert_pem"].as_str().map(str::to_owned),
            child,
        })
    }
    fn rss_mb(&self) -> f64 {
        crate::proc_status_mb(&self.child.id().to_string(), "VmRSS:")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// One request at a time: latencies in microseconds.
async fn latency(t: &Arc<dyn Transport>, to: &PeerAddr, n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(n);
    let mut msg = vec![0u8; 64];
    for i in 0..n {
        msg[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let m = Bytes::copy_from_slice(&msg);
        let t0 = Instant::now();
        if t.send(to, m.clone()).await.is_err() {
            continue;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok((_, r))) = tokio::time::timeout_at(deadline, t.recv()).await {
            if r == m {
                v.push(t0.elapsed().as_secs_f64() * 1e6);
                break;
            }
        }
    }
    v
}

/// `window` requests of `size` bytes kept in flight for `secs`: answers per second.
async fn rate(t: &Arc<dyn Transport>, to: &PeerAddr, size: usize, window: usize, secs: f64) -> f64 {
    let msg = Bytes::from(vec![0x5au8; size]);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let mut inflight = 0usize;
    let mut done = 0u64;
    while Instant::now() < end {
        while inflight < window {
            match t.send(to, msg.clone()).await {
                Ok(()) => inflight += 1,
                Err(_) => break,
            }
        }
        match tokio::time::timeout(Duration::from_millis(200), t.recv()).await {
            Ok(Ok(_)) => {
                inflight = inflight.saturating_sub(1);
                done += 1;
            }
            // Datagrams lost (UDP under load): refill the window.
            _ => inflight = 0,
        }
    }
    done as f64 / t0.elapsed().as_secs_f64()
}

/// The first round trip of `n` fresh clients, in milliseconds.
async fn setup(kind: &str, srv: &ServerProc, n: usize) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    for _ in 0..n {
        let c = open(kind, false, srv.cert.as_deref()).await?;
        let m = Bytes::from_static(b"hello, first message");
        let t0 = Instant::now();
        c.send(&srv.addr, m.clone()).await?;
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), c.recv()).await {
            v.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        c.close().await;
    }
    Ok(v)
}

/// A fresh server; `n` clients each complete one round trip and stay connected, idle.
/// Returns (RSS before MB, RSS after MB, connected).
async fn idle_connections(kind: &str, n: usize) -> Result<(f64, f64, usize)> {
    let srv = ServerProc::start(kind)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = srv.rss_mb();
    let mut clients = Vec::with_capacity(n);
    let mut ok = 0;
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = open(kind, false, srv.cert.as_deref()).await?;
        let to = srv.addr.clone();
        let c2 = c.clone();
        pending.spawn(async move {
            let m = Bytes::from((i as u64).to_be_bytes().to_vec());
            if c2.send(&to, m).await.is_err() {
                return false;
            }
            matches!(
                tokio::time::timeout(Duration::from_secs(20), c2.recv()).await,
                Ok(Ok(_))
            )
        });
        clients.push(c);
        // Keep the handshakes in flight bounded.
        while pending.len() >= 64 {
            if let Some(Ok(true)) = pending.join_next().await {
                ok += 1;
            }
        }
    }
    while let Some(r) = pending.join_next().await {
        if matches!(r, Ok(true)) {
            ok += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = srv.rss_mb();
    for c in &clients {
        c.close().await;
    }
    Ok((before, after, ok))
}

async fn measure(kind: &str, a: &TransportsArgs) -> Result<serde_json::Value> {
    let srv = ServerProc::start(kind)?;
    let client = open(kind, false, srv.cert.as_deref()).await?;
    let to = srv.addr.clone();
    // Warm up (and open the connection).
    let _ = latency(&client, &to, 50).await;
    let mut lat = latency(&client, &to, 2000).await;
    let rtt_rate = rate(&client, &to, 64, 64, a.secs).await;
    let big = if kind == "udp" {
        kad_transport_udp::MAX_DATAGRAM
    } else {
        64 * 1024
    };
    let msgs = rate(&client, &to, big, 16, a.secs).await;
    let mbps = msgs * big as f64 / 1e6;
    client.close().await;
    drop(srv);
    let srv = ServerProc::start(kind)?;
    let mut set = setup(kind, &srv, 20).await?;
    drop(srv);
    let idle = if kind == "udp" || a.idle == 0 {
        json!(null)
    } else {
        let (before, after, ok) = idle_connections(kind, a.idle).await?;
        json!({"connections": ok, "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1),
               "kb_per_connection": round((after - before) * 1024.0 / ok.max(1) as f64, 1)})
    };
    Ok(json!({
        "transport": kind,
        "rtt_us_p50": round(pct(&mut lat, 0.5), 1),
        "rtt_us_p99": round(pct(&mut lat, 0.99), 1),
        "round_trips_per_s": rtt_rate.round(),
        "message_bytes": big,
        "mb_per_s": round(mbps, 1),
        "setup_ms_p50": round(pct(&mut set, 0.5), 3),
        "idle": idle,
    }))
}

/// Runs the benchmark.
pub(crate) fn run(a: TransportsArgs) -> Result<()> {
    if !(0.2..=60.0).contains(&a.secs) {
        bail!("--secs = {} is out of range: 0.2 to 60", a.secs);
    }
    if a.idle > 10_000 || a.ws_connections > 15_000 {
        bail!("--idle is at most 10000 and --ws-connections at most 15000 (file descriptors)");
    }
    let kinds: Vec<&str> = a
        .kinds
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    for k in &kinds {
        if !KINDS.contains(k) {
            bail!("--kinds {k:?}: expected some of {}", KINDS.join(", "));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut rows = Vec::new();
        for k in &kinds {
            if !a.json {
                eprintln!("measuring {k} ...");
            }
            rows.push(
                measure(k, &a)
                    .await
                    .with_context(|| format!("transport {k}"))?,
            );
        }
        let ws_hold = if a.ws_connections > 0 && kinds.contains(&"ws") {
            let (before, after, ok) = idle_connections("ws", a.ws_connections).await?;
            json!({"target_connections": a.ws_connections, "connected": ok,
                   "server_rss_before_mb": round(before, 1), "server_rss_mb": round(after, 1),
                   "target_rss_mb": 500, "met": ok == a.ws_connections && after < 500.0})
        } else {
            json!(null)
        };
        let quic_mbps = rows
            .iter()
            .filter(|r| {
                r["transport"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("quic"))
            })
            .filter_map(|r| r["mb_per_s"].as_f64())
            .fold(0.0, f64::max);
        let out = json!({
            "bench": "transports",
            "transports": rows,
            "ws_5000_connections": ws_hold,
            "quic_target_mb_per_s": 200,
            "quic_best_mb_per_s": quic_mbps,
        });
        emit(a.json, &out, || {
            let mut s = format!(
                "{:<11} {:>10} {:>10} {:>12} {:>9} {:>9} {:>12}\n",
                "transport",
                "rtt p50 us",
                "rtt p99 us",
                "round trips/s",
                "MB/s",
                "setup ms",
                "KB/idle conn"
            );
            for r in out["transports"].as_array().into_iter().flatten() {
                s.push_str(&format!(
                    "{:<11} {:>10} {:>10} {:>12} {:>9} {:>9} {:>12}\n",
                    r["transport"].as_str().unwrap_or(""),
                    r["rtt_us_p50"],
                    r["rtt_us_p99"],
                    r["round_trips_per_s"],
                    r["mb_per_s"],
                    r["setup_ms_p50"],
                    r["idle"]["kb_per_connection"]
                ));
            }
            s.push_str(&format!(
                "websocket connections held: {}",
                out["ws_5000_connections"]
            ));
            s
        });
        Ok(())
    })
}
