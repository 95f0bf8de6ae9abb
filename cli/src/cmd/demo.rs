//! `kad demo`: a local network on 127.0.0.1 showing each part at work, then a summary table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use kad_core::{Dht, PeerAddr, SystemClock};
use kad_plugin_bep44::{MutableItem, item};
use kad_plugin_pubsub::{Delivery, Pubsub};
use kad_plugin_storage::{GetOptions, Protection, PutOptions, combine_shares};
use serde_json::{Value, json};

use crate::net::{emit, flag_error, listening, ms, node_builder, value_limit};

/// `kad demo` flags.
#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Native nodes in the local network (a third listen on UDP only, a third on UDP and QUIC,
    /// a third on UDP and WebSocket).
    #[arg(long, default_value_t = 30, value_name = "N")]
    nodes: usize,
    /// Mainline-mode nodes (BitTorrent DHT wire format, their own network on 127.0.0.1).
    #[arg(long, default_value_t = 6, value_name = "N")]
    mainline_nodes: usize,
    /// Sensor readings published (default 10; 45 with --web).
    #[arg(long, value_name = "N")]
    readings: Option<u32>,
    /// Pause between readings, in ms (default 100; 1000 with --web, so the chart can be watched).
    #[arg(long, value_name = "MS")]
    interval_ms: Option<u64>,
    /// Serve the live sensor page (a chart of the readings one subscriber receives, with their
    /// latencies) at http://ADDR/, e.g. 127.0.0.1:8080; open it in a browser while the demo
    /// runs. The page stops with the demo.
    #[arg(long, value_name = "ADDR")]
    web: Option<std::net::SocketAddr>,
    /// Do the BEP44 step on the real BitTorrent Mainline DHT instead of local Mainline-mode
    /// nodes: two nodes join through the public bootstrap routers (router.bittorrent.com and
    /// others), one puts a mutable item signed with a fresh key, the other gets it. Needs
    /// internet access (UDP); never used by the tests.
    #[arg(long)]
    live: bool,
    /// Subscribers of the sensor.
    #[arg(long, default_value_t = 5, value_name = "N")]
    subscribers: usize,
    /// Size of the file stored, in MB.
    #[arg(long, default_value_t = 2.0, value_name = "MB")]
    file_mb: f64,
    /// Print one JSON object per step, then the summary, instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

struct Step {
    name: &'static str,
    ok: bool,
    ms: f64,
    detail: String,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub(crate) async fn run(a: DemoArgs) -> Result<()> {
    if !(3..=300).contains(&a.nodes) {
        bail!("--nodes = {} is out of range: 3 to 300", a.nodes);
    }
    if !(2..=50).contains(&a.mainline_nodes) {
        bail!(
            "--mainline-nodes = {} is out of range: 2 to 50",
            a.mainline_nodes
        );
    }
    let readings = a.readings.unwrap_or(if a.web.is_some() { 45 } else { 10 });
    if !(1..=1000).contains(&readings) {
        bail!("--readings = {readings} is out of range: 1 to 1000");
    }
    let interval = a
        .interval_ms
        .unwrap_or(if a.web.is_some() { 1000 } else { 100 });
    if interval > 60_000 {
        bail!("--interval-ms = {interval} is out of range: 0 to 60000");
    }
    if a.subscribers == 0 || a.subscribers + 2 > a.nodes {
        bail!(
            "--subscribers = {} is out of range: 1 to {} (--nodes minus 2)",
            a.subscribers,
            a.nodes - 2
        );
    }
    crate::check_range("file-mb", a.file_mb, 0.001, 64.0)?;
    let mut steps = Vec::new();
    let total = Instant::now();

    // 1. The native network.
    let t0 = Instant::now();
    let mut nodes: Vec<Dht> = Vec::new();
    let mut kinds = HashMap::new();
    for i in 0..a.nodes {
        let mut listen = vec!["udp://127.0.0.1:0".parse::<PeerAddr>()?];
        match i % 3 {
            1 => listen.push("quic://127.0.0.1:0".parse()?),
            2 => listen.push("ws://127.0.0.1:0/kad".parse()?),
            _ => {}
        }
        for l in &listen {
            *kinds.entry(l.kind().scheme()).or_insert(0) += 1;
        }
        let node = listening(node_builder(), &listen)
            .storage_in_memory()
            .validator(Arc::new(kad_core::AcceptAll))
            .build()
            .await
            .map_err(flag_error)?;
        nodes.push(node.dht().clone());
    }
    let seed = nodes[0].contact().addrs[0].clone();
    for n in &nodes[1..] {
        n.bootstrap(vec![seed.clone()]).await.context("joining")?;
    }
    let joined = t0.elapsed();
    let kinds_text = format!(
        "{} on UDP, {} also on QUIC, {} also on WebSocket",
        kinds.get("udp").unwrap_or(&0),
        kinds.get("quic").unwrap_or(&0),
        kinds.get("ws").unwrap_or(&0)
    );
    emit(
        a.json,
        &json!({"step": "network", "nodes": a.nodes, "udp": kinds.get("udp"), "quic": kinds.get("quic"),
                "ws": kinds.get("ws"), "elapsed_ms": ms(joined)}),
        || {
            format!(
                "1. network: {} native nodes ({kinds_text}) joined in {:.0} ms",
                a.nodes,
                ms(joined)
            )
        },
    );
    steps.push(Step {
        name: "network",
        ok: true,
        ms: ms(joined),
        detail: format!("{} nodes: {kinds_text}", a.nodes),
    });

    // 2. A sensor and its subscribers.
    steps.push(sensor(&a, &nodes, readings, Duration::from_millis(interval)).await?);

    // 3. A file: encrypted, key split into shares, fetched back through other nodes.
    steps.push(file(&a, &nodes).await?);

    // 4. BEP44 among Mainline-mode nodes.
    steps.push(if a.live {
        live_mainline(&a).await?
    } else {
        mainline(&a).await?
    });

    for n in &nodes {
        n.shutdown().await;
    }
    let all_ok = steps.iter().all(|s| s.ok);
    let summary: Vec<Value> = steps
        .iter()
        .map(|s| json!({"step": s.name, "ok": s.ok, "ms": s.ms, "detail": s.detail}))
        .collect();
    emit(
        a.json,
        &json!({"ok": all_ok, "summary": summary, "elapsed_ms": ms(total.elapsed())}),
        || {
            let mut t = String::from("\nsummary\n");
            t += &format!(
                "  {:<9} {:<4} {:>9}  {}\n",
                "step", "ok", "ms", "what happened"
            );
            for s in &steps {
                t += &format!(
                    "  {:<9} {:<4} {:>9.1}  {}\n",
                    s.name,
                    if s.ok { "yes" } else { "NO" },
                    s.ms,
                    s.detail
                );
            }
            t += &format!(
                "  total {:.1} s, everything on 127.0.0.1, nothing left running",
                total.elapsed().as_secs_f64()
            );
            t
        },
    );
    if !all_ok {
        bail!("a step failed (see the summary)");
    }
    Ok(())
}

async fn sensor(a: &DemoArgs, nodes: &[Dht], readings: u32, interval: Duration) -> Result<Step> {
    let t0 = Instant::now();
    // The live page shows what the first subscriber receives.
    let web = match a.web {
        Some(addr) => {
            let (bound, feed) =
                crate::server::web::serve(addr, "kad demo: temperature sensor".into()).await?;
            let url = format!("http://{bound}/");
            emit(a.json, &json!({"step": "web", "url": url}), || {
                format!(
                    "2. sensor: live chart at {url} (open it now; one reading every {} ms)",
                    interval.as_millis()
                )
            });
            Some(feed)
        }
        None => None,
    };
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    let pubkey = item::public_key(&seed);
    let salt = b"demo/temperature";
    // Subscribers on the last nodes, the sensor on node 1.
    let mut subs = Vec::new();
    for n in &nodes[nodes.len() - a.subscribers..] {
        let s = Pubsub::attach(n.clone())
            .await?
            .subscribe_sensor(pubkey, salt)
            .await
            .context("subscribing")?;
        subs.push(s);
    }
    let publisher = Pubsub::attach(nodes[1].clone()).await?;
    let sent: Arc<std::sync::Mutex<HashMap<i64, Instant>>> = Arc::default();
    // Each subscriber reports (seq, latency) as readings arrive.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, i64, f64)>();
    let mut tasks = Vec::new();
    for (i, mut s) in subs.into_iter().enumerate() {
        let tx = tx.clone();
        let sent = sent.clone();
        let web = web.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(d) = s.next().await {
                if let Delivery::Reading(r) = d {
                    let at = sent.lock().ok().and_then(|m| m.get(&r.item.seq).copied());
                    if let Some(at) = at {
                        let latency = ms(at.elapsed());
                        if let (0, Some(feed)) = (i, &web) {
                            feed.send(crate::server::web::WebReading {
                                seq: r.item.seq,
                                value: celsius(&r.item.value_text()).unwrap_or_default(),
                                latency_ms: Some(latency),
                                received_ms: SystemClock::now_ms(),
                            });
                        }
                        let _ = tx.send((i, r.item.seq, latency));
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut latencies = Vec::new();
    let mut delivered = 0usize;
    for i in 0..readings {
        let seq = SystemClock::now_ms() as i64 + i64::from(i);
        let temp = 20.0 + f64::from(i % 7) * 0.3;
        let v = item::bencode_bytes(format!("{{\"celsius\":{temp:.1}}}").as_bytes());
        let it = MutableItem::sign(&seed, salt, seq, &v)?;
        sent.lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .insert(seq, Instant::now());
        let o = publisher.publish(it.into()).await.context("publishing")?;
        // Wait for every subscriber (or 2 s).
        let mut got = Vec::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(2);
        while got.len() < a.subscribers {
            match tokio::time::timeout_at(end, rx.recv()).await {
                Ok(Some((_, s, l))) if s == seq => got.push(l),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        delivered += got.len();
        let p50 = pct(&mut got.clone(), 0.5);
        emit(
            a.json,
            &json!({"step": "sensor", "seq": seq, "celsius": temp, "stored_on": o.stored_on,
                    "delivered": got.len(), "subscribers": a.subscribers, "latency_ms_p50": p50}),
            || {
                format!(
                    "2. sensor reading {:>2}: {temp:.1} C, held by {} nodes, pushed to {}/{} subscribers, p50 {p50:.1} ms",
                    i + 1,
                    o.stored_on,
                    got.len(),
                    a.subscribers
                )
            },
        );
        latencies.extend(got);
        tokio::time::sleep(interval).await;
    }
    for t in tasks {
        t.abort();
    }
    let expected = readings as usize * a.subscribers;
    let p50 = pct(&mut latencies, 0.5);
    let p99 = pct(&mut latencies, 0.99);
    Ok(Step {
        name: "sensor",
        ok: delivered == expected,
        ms: ms(t0.elapsed()),
        detail: format!(
            "{delivered}/{expected} readings delivered, latency p50 {p50:.1} ms, p99 {p99:.1} ms"
        ),
    })
}

async fn file(a: &DemoArgs, nodes: &[Dht]) -> Result<Step> {
    let t0 = Instant::now();
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("demo.bin");
    let size = (a.file_mb * 1e6) as usize;
    let mut data = vec![0u8; size];
    getrandom::fill(&mut data).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    std::fs::write(&src, &data)?;
    let max_value = value_limit(kad_core::MAX_DATAGRAM);
    let protection = Protection::Shared {
        threshold: 2,
        shares: 3,
    };
    let chunk = kad_plugin_storage::default_chunk_size(kad_core::MAX_DATAGRAM, protection);
    let opts = PutOptions {
        chunk_size: chunk,
        parallel: kad_plugin_storage::put_parallelism(chunk),
        max_value_len: max_value,
        protection,
        ..PutOptions::default()
    };
    let pb = crate::storage::bar(a.json, "3. file: store");
    let put =
        kad_plugin_storage::put_file(&nodes[2], &src, &opts, &crate::storage::progress(&pb)).await;
    pb.finish_and_clear();
    let put = put.context("storing the file")?;
    emit(
        a.json,
        &json!({"step": "file_put", "key": put.key.to_string(), "size": size, "chunks": put.chunks,
                "min_replicas": put.min_replicas, "shares": put.shares.len(), "elapsed_ms": ms(put.elapsed)}),
        || {
            format!(
                "3. file: {:.1} MB encrypted, {} chunks each on at least {} nodes, key split into {} shares (any 2 decrypt), stored in {:.0} ms as {}",
                size as f64 / 1e6,
                put.chunks,
                put.min_replicas,
                put.shares.len(),
                ms(put.elapsed),
                put.key
            )
        },
    );
    // Another node fetches it with 2 of the 3 shares.
    let key = combine_shares(&put.shares[1..3]).context("combining 2 shares")?;
    let out = dir.path().join("fetched.bin");
    let opts = GetOptions {
        max_reply_bytes: max_value,
        max_in_flight_bytes: crate::storage::in_flight_budget(kad_core::MAX_DATAGRAM),
        ..GetOptions::default()
    };
    let getter = &nodes[nodes.len() / 2];
    let pb = crate::storage::bar(a.json, "3. file: fetch");
    let got = kad_plugin_storage::get_file(
        getter,
        put.key,
        Some(&key),
        &out,
        &opts,
        &crate::storage::progress(&pb),
    )
    .await;
    pb.finish_and_clear();
    let got = got.context("fetching the file")?;
    let same = std::fs::read(&out)? == data;
    emit(
        a.json,
        &json!({"step": "file_get", "verified": same, "elapsed_ms": ms(got.elapsed)}),
        || {
            format!(
                "3. file: fetched by another node with 2 of the 3 shares in {:.0} ms, {}",
                ms(got.elapsed),
                if same {
                    "identical to the original"
                } else {
                    "DIFFERENT from the original"
                }
            )
        },
    );
    Ok(Step {
        name: "file",
        ok: same,
        ms: ms(t0.elapsed()),
        detail: format!(
            "{:.1} MB, encrypted, 2-of-3 key shares: put {:.0} ms, get {:.0} ms, verified",
            size as f64 / 1e6,
            ms(put.elapsed),
            ms(got.elapsed)
        ),
    })
}

async fn mainline(a: &DemoArgs) -> Result<Step> {
    let t0 = Instant::now();
    let nodes = crate::cmd::mainline::local_network(a.mainline_nodes, |_| {}).await?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    let v = item::bencode_bytes(b"hello from kad demo");
    let it = MutableItem::sign(&seed, b"demo", 1, &v)?;
    let tp = Instant::now();
    let put = nodes[1].put_mutable(&it, None).await?;
    let put_ms = ms(tp.elapsed());
    let tg = Instant::now();
    let got = nodes[nodes.len() - 1]
        .get_mutable(it.pubkey, b"demo", None)
        .await;
    let get_ms = ms(tg.elapsed());
    let ok = matches!(&got, Ok(g) if g.v == it.v);
    emit(
        a.json,
        &json!({"step": "mainline", "nodes": a.mainline_nodes, "stored_on": put.stored_on,
                "put_ms": put_ms, "get_ms": get_ms, "found": ok}),
        || {
            format!(
                "4. mainline: {} Mainline-mode nodes; BEP44 mutable put stored on {} in {put_ms:.1} ms, get from another node {} in {get_ms:.1} ms",
                a.mainline_nodes,
                put.stored_on,
                if ok { "found it" } else { "did NOT find it" }
            )
        },
    );
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(Step {
        name: "mainline",
        ok,
        ms: ms(t0.elapsed()),
        detail: format!(
            "{} nodes, BEP44 put {put_ms:.1} ms (stored on {}), get {get_ms:.1} ms",
            a.mainline_nodes, put.stored_on
        ),
    })
}

/// The temperature in a reading's value text (`{"celsius":21.5}`).
fn celsius(text: &str) -> Option<String> {
    let j: Value = serde_json::from_str(text).ok()?;
    Some(j["celsius"].as_f64()?.to_string())
}

/// `--live`: the BEP44 step on the public Mainline DHT (two fresh read-only nodes).
async fn live_mainline(a: &DemoArgs) -> Result<Step> {
    let t0 = Instant::now();
    let any = std::net::IpAddr::from([0, 0, 0, 0]);
    let work = async {
        let (putter, getter) = tokio::try_join!(
            crate::cmd::mainline::read_only_node(None, any),
            crate::cmd::mainline::read_only_node(None, any)
        )?;
        let joined = ms(t0.elapsed());
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
        let v = item::bencode_bytes(b"hello from kad demo --live");
        let it = MutableItem::sign(&seed, b"kad-demo", 1, &v)?;
        let tp = Instant::now();
        let put = putter.put_mutable(&it, None).await?;
        let put_ms = ms(tp.elapsed());
        let tg = Instant::now();
        let got = getter.get_mutable(it.pubkey, b"kad-demo", None).await;
        let get_ms = ms(tg.elapsed());
        let ok = matches!(&got, Ok(g) if g.v == it.v);
        putter.shutdown().await;
        getter.shutdown().await;
        anyhow::Ok((joined, put.stored_on, put_ms, get_ms, ok))
    };
    let (joined, stored_on, put_ms, get_ms, ok) =
        match tokio::time::timeout(Duration::from_secs(90), work).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => bail!("--live: the public Mainline DHT step failed: {e:#}"),
            Err(_) => bail!("--live: the public Mainline DHT step took over 90 s"),
        };
    emit(
        a.json,
        &json!({"step": "mainline", "live": true, "joined_ms": joined, "stored_on": stored_on,
                "put_ms": put_ms, "get_ms": get_ms, "found": ok}),
        || {
            format!(
                "4. mainline (live): joined the public DHT in {joined:.0} ms; BEP44 put stored on {stored_on} nodes in {put_ms:.0} ms; get from another node {} in {get_ms:.0} ms",
                if ok { "found it" } else { "did NOT find it" }
            )
        },
    );
    Ok(Step {
        name: "mainline",
        ok,
        ms: ms(t0.elapsed()),
        detail: format!(
            "public DHT: joined {joined:.0} ms, BEP44 put {put_ms:.0} ms (stored on {stored_on}), get {get_ms:.0} ms"
        ),
    })
}
