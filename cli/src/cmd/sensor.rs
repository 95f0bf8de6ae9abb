//! `kad sensor` (the DHT-of-Things reference nodes) and `kad pubsub` (named topics).
//!
//! A sensor is an ed25519 key; each reading is a BEP44 mutable item whose value is the JSON
//! `{"t": SEND_UNIX_MS, "v": "VALUE"}` (bencoded as a byte string), so subscribers can measure
//! end-to-end latency. On the native network readings are pushed by rendezvous nodes
//! (kad-plugin-pubsub); with `--mainline` they are stored with BEP44 `put` and polled with `get`.

use std::io::BufRead as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use kad_core::SystemClock;
use kad_plugin_bep44::item::{self, MutableItem};
use kad_plugin_pubsub::{Delivery, Pubsub, PubsubError, WireItem, mainline::PollConfig};
use serde_json::{Value, json};

use crate::net::{self, ClientArgs};
use crate::transports::TlsArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum SensorCommand {
    /// Publish readings of a sensor: synthetic ones every --every, or one per stdin line.
    ///
    /// Prints, for each reading: the public key (base58 and hex), the target (the topic key,
    /// SHA-1 of key and salt), seq, diff (ms until stored) and n (nodes that stored it).
    Publish(PublishArgs),
    /// Print a sensor's readings as they arrive: seq, value and end-to-end latency. With --web,
    /// also serve a page with a live chart of the readings and the latency.
    Subscribe(SubscribeArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum PubsubCommand {
    /// Post a message to a named topic, signed with this node's key.
    Publish(TopicPublishArgs),
    /// Print a named topic's messages as they arrive (each once, verified).
    Subscribe(TopicSubscribeArgs),
}

/// How a pub/sub command reaches its network.
#[derive(Args, Debug, Clone)]
pub(crate) struct NetOpts {
    /// Nodes to join through. Native network: udp://IP:PORT, quic://IP:PORT, ws://... (comma-
    /// separated or repeated). With --mainline: HOST:PORT,...; without it there, the public
    /// Mainline routers (the live network: an explicit choice of the user).
    #[arg(long, value_name = "ADDRS")]
    bootstrap: Vec<String>,
    /// Use the BitTorrent Mainline DHT (BEP44 put, and polling get with seq) instead of the
    /// native network.
    #[arg(long)]
    mainline: bool,
    /// IP address to bind with --mainline.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    bind: IpAddr,
    /// Key file of this node's identity on the native network (created if missing); fresh by
    /// default. Named-topic messages are signed with it.
    #[arg(long, value_name = "FILE")]
    node_key_file: Option<PathBuf>,
    /// Seconds allowed to join the network and for each operation.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    timeout: f64,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

impl NetOpts {
    fn client_args(&self) -> ClientArgs {
        ClientArgs {
            bootstrap: self.bootstrap.clone(),
            prefer: None,
            tls: TlsArgs::default(),
            key_file: self.node_key_file.clone(),
            id_work: 0,
            timeout: self.timeout,
            json: self.json,
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    net: NetOpts,
    /// The sensor's ed25519 seed: a file of 64 hex characters, created (mode 0600) if missing.
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// Salt: several sensors (or channels) under one key. UTF-8, at most 64 bytes.
    #[arg(long, default_value = "")]
    salt: String,
    /// Time between synthetic readings, e.g. 1s, 250ms, 0.5s.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    every: String,
    /// Read one reading per line of stdin instead (e.g. piped from a serial port).
    #[arg(long, conflicts_with = "every")]
    stdin: bool,
    /// Stop after this many readings (0: never).
    #[arg(long, default_value_t = 0)]
    count: u64,
}

#[derive(Args, Debug)]
pub(crate) struct SubscribeArgs {
    #[command(flatten)]
    net: NetOpts,
    /// The sensor's public key: 64 hex characters or base58.
    #[arg(long, value_name = "KEY")]
    pubkey: String,
    /// The salt the sensor publishes under.
    #[arg(long, default_value = "")]
    salt: String,
    /// Serve a live chart on this address (e.g. 127.0.0.1:8080; port 0 picks one). The page's
    /// URL is printed first.
    #[arg(long, value_name = "ADDR")]
    web: Option<SocketAddr>,
    /// Exit after this many readings (0: never).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Exit after this many seconds (0: never).
    #[arg(long = "for", default_value_t = 0.0, value_name = "SECONDS")]
    for_secs: f64,
    /// The seq of the last reading already had (e.g. printed before a restart): the readings
    /// after it that the rendezvous nodes kept (the last 16 by default) come first, oldest
    /// first, each once, then new ones. Without it, the latest reading, then new ones.
    #[arg(long, value_name = "SEQ", conflicts_with = "mainline")]
    since: Option<i64>,
}

#[derive(Args, Debug)]
pub(crate) struct TopicPublishArgs {
    #[command(flatten)]
    net: NetOpts,
    /// The topic's name (1 to 256 bytes).
    topic: String,
    /// The message (UTF-8, at most 4096 bytes).
    message: String,
    /// Seconds the message stays valid (new subscribers get it meanwhile).
    #[arg(long, default_value_t = 300)]
    ttl: u32,
}

#[derive(Args, Debug)]
pub(crate) struct TopicSubscribeArgs {
    #[command(flatten)]
    net: NetOpts,
    /// The topic's name.
    topic: String,
    /// Exit after this many messages (0: never).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Exit after this many seconds (0: never).
    #[arg(long = "for", default_value_t = 0.0, value_name = "SECONDS")]
    for_secs: f64,
}

impl SensorCommand {
    pub(crate) fn json(&self) -> bool {
        match self {
            Self::Publish(a) => a.net.json,
            Self::Subscribe(a) => a.net.json,
        }
    }
}

impl PubsubCommand {
    pub(crate) fn json(&self) -> bool {
        match self {
            Self::Publish(a) => a.net.json,
            Self::Subscribe(a) => a.net.json,
        }
    }
}

/// Parses `1s`, `250ms`, `0.5s`, `2m` or a bare number of seconds.
pub(crate) fn parse_duration(field: &str, s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .with_context(|| format!("{field} {s:?}: expected a positive duration like 1s or 250ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => bail!("{field} {s:?}: unknown unit {unit:?} (use ms, s or m)"),
    };
    if !(0.01..=86_400.0).contains(&secs) {
        bail!("{field} {s:?} is out of range: it must be between 10ms and 24h");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_salt(s: &str) -> Result<Bytes> {
    if s.len() > item::MAX_SALT {
        bail!(
            "--salt is {} bytes, the limit is {}",
            s.len(),
            item::MAX_SALT
        );
    }
    Ok(Bytes::copy_from_slice(s.as_bytes()))
}

/// Reads the sensor seed from `path`, creating it (mode 0600) when missing.
fn load_or_create_seed(path: &Path) -> Result<([u8; 32], bool)> {
    net::load_or_create_secret(path, "an ed25519 seed", || {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(kad::keys::KeyFileError::Random)?;
        Ok(seed)
    })
}

/// Parses a public key given as 64 hex characters or base58.
pub(crate) fn parse_pubkey(s: &str) -> Result<[u8; 32]> {
    let mut k = [0u8; 32];
    if s.len() == 64 && hex::decode_to_slice(s, &mut k).is_ok() {
        return Ok(k);
    }
    let b = bs58::decode(s)
        .into_vec()
        .ok()
        .filter(|b| b.len() == 32)
        .with_context(|| {
            format!("--pubkey {s:?}: expected 64 hex characters or base58 of 32 bytes")
        })?;
    k.copy_from_slice(&b);
    Ok(k)
}

/// The reading's value: `{"t": SEND_UNIX_MS, "v": VALUE}`.
fn reading_value(value: &str, sent_ms: u64) -> Result<Vec<u8>> {
    let v = item::bencode_bytes(json!({"t": sent_ms, "v": value}).to_string().as_bytes());
    item::check_value(&v).map_err(|_| {
        anyhow::anyhow!(
            "a reading is {} bytes encoded, the limit is {} (shorten the value)",
            v.len(),
            item::MAX_V
        )
    })?;
    Ok(v)
}

/// The value and the send time of a reading (the whole text when it is not our JSON).
fn parse_reading(item: &WireItem) -> (String, Option<u64>) {
    let text = item.value_text();
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.get("v").is_some() => (
            v["v"]
                .as_str()
                .map_or_else(|| v["v"].to_string(), str::to_owned),
            v["t"].as_u64(),
        ),
        _ => (text, None),
    }
}

fn synthetic(i: u64) -> String {
    // A smooth daily-like curve with a little texture: easy to see on the chart.
    let x = i as f64;
    format!(
        "{:.2}",
        21.0 + 3.0 * (x / 20.0).sin() + 0.4 * (x * 1.7).sin()
    )
}

async fn native_pubsub(net: &NetOpts) -> Result<Pubsub> {
    let (dht, _, _) = net::joined_with(&net.client_args(), None).await?;
    Ok(dht.pubsub()?.clone())
}

fn mainline_bootstrap(net: &NetOpts) -> Option<String> {
    if net.bootstrap.is_empty() {
        return None;
    }
    Some(
        net.bootstrap
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().trim_start_matches("udp://"))
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn within(net: &NetOpts) -> Result<Duration> {
    net::timeout(&net.client_args())
}

pub(crate) async fn sensor(cmd: SensorCommand) -> Result<()> {
    match cmd {
        SensorCommand::Publish(a) => publish(a).await,
        SensorCommand::Subscribe(a) => subscribe(a).await,
    }
}

enum Sink {
    Native(Pubsub),
    Mainline(kad_plugin_bep44::Mainline),
}

async fn publish(a: PublishArgs) -> Result<()> {
    let every = if a.stdin {
        None
    } else {
        Some(parse_duration("--every", &a.every)?)
    };
    let salt = parse_salt(&a.salt)?;
    let limit = within(&a.net)?;
    let (seed, created) = load_or_create_seed(&a.key_file)?;
    let pubkey = item::public_key(&seed);
    let target = item::mutable_target(&pubkey, &salt);
    let sink = if a.net.mainline {
        Sink::Mainline(
            crate::cmd::mainline::read_only_node(mainline_bootstrap(&a.net), a.net.bind).await?,
        )
    } else {
        Sink::Native(native_pubsub(&a.net).await?)
    };
    let base = json!({
        "pubkey": hex::encode(pubkey),
        "pubkey_base58": bs58::encode(pubkey).into_string(),
        "target": target.to_hex(),
        "salt": a.salt,
        "network": if a.net.mainline { "mainline" } else { "native" },
    });
    if created && !a.net.json {
        eprintln!("created sensor key {}", a.key_file.display());
    }
    let mut lines = a.stdin.then(|| {
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        rx
    });
    let mut ticker = every.map(|d| {
        let mut t = tokio::time::interval(d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut last_seq: i64 = 0;
    let mut i = 0u64;
    loop {
        if a.count > 0 && i >= a.count {
            return Ok(());
        }
        let value = match (&mut lines, &mut ticker) {
            (Some(rx), _) => match rx.recv().await {
                Some(l) => l.trim_end().to_owned(),
                None => return Ok(()),
            },
            (None, Some(t)) => {
                t.tick().await;
                synthetic(i)
            }
            (None, None) => return Ok(()),
        };
        i += 1;
        let sent_ms = SystemClock::now_ms();
        // seq follows the wall clock (ms), so a restarted sensor still goes up.
        let seq = (sent_ms as i64).max(last_seq + 1);
        let v = match reading_value(&value, sent_ms) {
            Ok(v) => v,
            Err(e) => {
                report_error(a.net.json, &base, seq, &format!("{e:#}"));
                continue;
            }
        };
        let it = MutableItem::sign(&seed, &salt, seq, &v)?;
        let t0 = Instant::now();
        let r: Result<(usize, usize), String> = match &sink {
            Sink::Native(p) => match tokio::time::timeout(limit, p.publish(it.into())).await {
                Ok(Ok(o)) => Ok((o.stored_on, o.asked)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("timed out after {} s", a.net.timeout)),
            },
            Sink::Mainline(m) => {
                match tokio::time::timeout(limit, m.put_mutable(&it, None)).await {
                    Ok(Ok(o)) => Ok((o.stored_on, o.asked)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("timed out after {} s", a.net.timeout)),
                }
            }
        };
        let diff = t0.elapsed().as_secs_f64() * 1e3;
        last_seq = seq;
        match r {
            Ok((n, asked)) => {
                let mut out = base.clone();
                let o = out.as_object_mut().expect("object");
                o.insert("ok".into(), true.into());
                o.insert("seq".into(), seq.into());
                o.insert("value".into(), value.clone().into());
                o.insert("diff".into(), ((diff * 10.0).round() / 10.0).into());
                o.insert("n".into(), n.into());
                o.insert("asked".into(), asked.into());
                net::emit(a.net.json, &out, || {
                    format!(
                        "{} {} target={} seq={seq} value={value} diff={diff:.1}ms n={n}",
                        out["pubkey_base58"].as_str().unwrap_or_default(),
                        out["pubkey"].as_str().unwrap_or_default(),
                        out["target"].as_str().unwrap_or_default(),
                    )
                });
            }
            Err(e) => report_error(a.net.json, &base, seq, &e),
        }
    }
}

fn report_error(json_out: bool, base: &Value, seq: i64, e: &str) {
    let mut out = base.clone();
    if let Some(o) = out.as_object_mut() {
        o.insert("ok".into(), false.into());
        o.insert("seq".into(), seq.into());
        o.insert("error".into(), e.into());
    }
    net::emit(json_out, &out, || format!("seq={seq} not stored: {e}"));
}

async fn subscribe(a: SubscribeArgs) -> Result<()> {
    let pubkey = parse_pubkey(&a.pubkey)?;
    let salt = parse_salt(&a.salt)?;
    let limit = within(&a.net)?;
    if !(a.for_secs >= 0.0 && a.for_secs.is_finite()) {
        bail!("--for = {} must be a number of seconds >= 0", a.for_secs);
    }
    let target = item::mutable_target(&pubkey, &salt);
    let web = match a.web {
        Some(addr) => {
            let title = format!("sensor {}", bs58::encode(pubkey).into_string());
            let (bound, feed) = crate::server::web::serve(addr, title).await?;
            let url = format!("http://{bound}/");
            net::emit(a.net.json, &json!({"event": "web", "url": url}), || {
                format!("live chart: {url}")
            });
            Some(feed)
        }
        None => None,
    };
    let deadline = (a.for_secs > 0.0).then(|| Instant::now() + Duration::from_secs_f64(a.for_secs));
    let mut got = 0u64;
    let mut show = |item: &WireItem, extra: Value| {
        let now = SystemClock::now_ms();
        let (value, sent) = parse_reading(item);
        let latency = sent.map(|t| now.saturating_sub(t) as f64);
        if let Some(feed) = &web {
            feed.send(crate::server::web::WebReading {
                seq: item.seq,
                value: value.clone(),
                latency_ms: latency,
                received_ms: now,
            });
        }
        let mut out = json!({
            "seq": item.seq,
            "value": value,
            "latency_ms": latency,
            "target": target.to_hex(),
        });
        if let (Some(o), Some(e)) = (out.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        net::emit(a.net.json, &out, || {
            format!(
                "seq={} value={} latency={}",
                item.seq,
                out["value"].as_str().unwrap_or_default(),
                latency.map_or("?".into(), |l| format!("{l:.0}ms"))
            )
        });
        got += 1;
        a.count > 0 && got >= a.count
    };
    let remaining = |d: Option<Instant>| d.map(|d| d.saturating_duration_since(Instant::now()));
    if a.net.mainline {
        let node =
            crate::cmd::mainline::read_only_node(mainline_bootstrap(&a.net), a.net.bind).await?;
        let mut rx = kad_plugin_pubsub::mainline::poll_sensor(
            node,
            pubkey,
            salt.clone(),
            PollConfig::default(),
        );
        net::emit(
            a.net.json,
            &json!({"event": "subscribed", "target": target.to_hex(), "network": "mainline"}),
            || format!("polling {} on Mainline", target.to_hex()),
        );
        loop {
            let next = match remaining(deadline) {
                Some(d) => match tokio::time::timeout(d, rx.recv()).await {
                    Ok(n) => n,
                    Err(_) => return Ok(()),
                },
                None => rx.recv().await,
            };
            let Some(p) = next else { return Ok(()) };
            if show(&p.item, json!({"polls": p.polls})) {
                return Ok(());
            }
        }
    }
    let pubsub = native_pubsub(&a.net).await?;
    let mut sub =
        match tokio::time::timeout(limit, pubsub.subscribe_sensor_since(pubkey, &salt, a.since))
            .await
        {
            Ok(r) => r.map_err(pubsub_err)?,
            Err(_) => bail!("subscribe timed out after {} s", a.net.timeout),
        };
    let o = &sub.outcome;
    net::emit(
        a.net.json,
        &json!({"event": "subscribed", "target": target.to_hex(), "network": "native",
                "rendezvous": o.rendezvous, "pushers": o.pushers, "latest_seq": o.latest_seq,
                "asked": o.asked, "failed": o.failed}),
        || {
            format!(
                "subscribed to {} at {} rendezvous nodes ({} pushing)",
                target.to_hex(),
                o.rendezvous,
                o.pushers
            )
        },
    );
    loop {
        let next = match remaining(deadline) {
            Some(d) => match tokio::time::timeout(d, sub.next()).await {
                Ok(n) => n,
                Err(_) => return Ok(()),
            },
            None => sub.next().await,
        };
        match next {
            Some(Delivery::Reading(r)) => {
                if show(&r.item, json!({"from": r.from.to_hex()})) {
                    return Ok(());
                }
            }
            Some(_) => {}
            None => return Ok(()),
        }
    }
}

fn pubsub_err(e: PubsubError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

pub(crate) async fn pubsub(cmd: PubsubCommand) -> Result<()> {
    match cmd {
        PubsubCommand::Publish(a) => {
            if a.net.mainline {
                bail!("--mainline: named topics need the native network (Mainline has no pub/sub)");
            }
            let limit = within(&a.net)?;
            if a.message.len() > kad_plugin_pubsub::wire::MAX_MESSAGE_DATA {
                bail!(
                    "MESSAGE is {} bytes, the limit is {}",
                    a.message.len(),
                    kad_plugin_pubsub::wire::MAX_MESSAGE_DATA
                );
            }
            let p = native_pubsub(&a.net).await?;
            let t0 = Instant::now();
            let o = match tokio::time::timeout(limit, p.post(&a.topic, &a.message, a.ttl)).await {
                Ok(r) => r.map_err(pubsub_err)?,
                Err(_) => bail!("publish timed out after {} s", a.net.timeout),
            };
            let out = json!({
                "ok": true, "topic": a.topic, "key": o.topic.to_hex(), "n": o.stored_on,
                "asked": o.asked, "pushed": o.pushed,
                "diff": (t0.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            });
            net::emit(a.net.json, &out, || {
                format!(
                    "posted to {} ({}): stored on {} of {} nodes, pushed to {} subscriptions",
                    a.topic,
                    o.topic.to_hex(),
                    o.stored_on,
                    o.asked,
                    o.pushed
                )
            });
            Ok(())
        }
        PubsubCommand::Subscribe(a) => {
            if a.net.mainline {
                bail!("--mainline: named topics need the native network (Mainline has no pub/sub)");
            }
            let limit = within(&a.net)?;
            let p = native_pubsub(&a.net).await?;
            let mut sub = match tokio::time::timeout(limit, p.subscribe_topic(&a.topic)).await {
                Ok(r) => r.map_err(pubsub_err)?,
                Err(_) => bail!("subscribe timed out after {} s", a.net.timeout),
            };
            net::emit(
                a.net.json,
                &json!({"event": "subscribed", "topic": a.topic, "key": sub.topic().to_hex(),
                        "rendezvous": sub.outcome.rendezvous, "asked": sub.outcome.asked,
                        "failed": sub.outcome.failed}),
                || {
                    format!(
                        "subscribed to {} at {} nodes",
                        a.topic, sub.outcome.rendezvous
                    )
                },
            );
            let deadline =
                (a.for_secs > 0.0).then(|| Instant::now() + Duration::from_secs_f64(a.for_secs));
            let mut got = 0u64;
            loop {
                let next = match deadline {
                    Some(d) => {
                        match tokio::time::timeout(
                            d.saturating_duration_since(Instant::now()),
                            sub.next(),
                        )
                        .await
                        {
                            Ok(n) => n,
                            Err(_) => return Ok(()),
                        }
                    }
                    None => sub.next().await,
                };
                match next {
                    Some(Delivery::Message(m)) => {
                        let latency = SystemClock::now_ms().saturating_sub(m.message.ts);
                        let out = json!({
                            "topic": m.name, "data": m.message.data,
                            "publisher": m.publisher.to_hex(), "ts": m.message.ts,
                            "latency_ms": latency,
                        });
                        net::emit(a.net.json, &out, || {
                            format!(
                                "[{}] {}: {}",
                                m.name,
                                &m.publisher.to_hex()[..8],
                                m.message.data
                            )
                        });
                        got += 1;
                        if a.count > 0 && got >= a.count {
                            return Ok(());
                        }
                    }
                    Some(_) => {}
                    None => return Ok(()),
                }
            }
        }
    }
}
