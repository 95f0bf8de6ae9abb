//! `kad soak`: a long run of real `kad` processes on a realistic network. Two sites in network
//! namespaces joined through a router namespace whose userspace link emulator
//! (`kad_testkit::netlab`) delays, jitters and drops the frames between them; `kad node`
//! processes on UDP and QUIC with data directories at both; a steady workload of puts and gets
//! (`kad put`, `kad get`), files (one pinned to a node with a TTL shorter than the run), a
//! sensor publishing every second to subscribers at both sites (one of them killed and brought
//! back with `--since`); kill -9 and restart of a share of the nodes at intervals; then
//! requesters that never answer (forged contacts) and a final check of everything acknowledged.
//! One JSON report, and an SVG plot with `--plot`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use kad_testkit::netlab::{LinkShape, Wan};
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

use crate::cmd::bench::loss::client;
use crate::cmd::bench::wan::site_node;
use crate::cmd::bench::{pct, round};

/// `kad soak` flags.
#[derive(Args, Debug)]
pub(crate) struct SoakArgs {
    /// The CI-sized run: 8 nodes per site, 3 minutes, one kill round, a 45 s TTL for the pinned
    /// file (each given flag still wins).
    #[arg(long)]
    quick: bool,
    /// `kad node` processes at each of the two sites (2 to 40; default 16, 8 with --quick).
    #[arg(long, value_name = "N")]
    nodes_per_site: Option<usize>,
    /// Minutes of workload (1 to 600; default 20, 3 with --quick).
    #[arg(long, value_name = "MIN")]
    minutes: Option<f64>,
    /// Minutes between kill rounds (default 10; with --quick, one round at 40% of the run).
    #[arg(long, value_name = "MIN")]
    kill_every: Option<f64>,
    /// Share of the nodes killed (SIGKILL) in each round and restarted on their data
    /// directories a few seconds later (0 to 0.9).
    #[arg(long, default_value_t = 0.3, value_name = "FRACTION")]
    kill_fraction: f64,
    /// Round-trip time between the sites in milliseconds (40 to 300).
    #[arg(long, default_value_t = 80.0, value_name = "MS")]
    rtt_ms: f64,
    /// Jitter of each one-way delay, milliseconds (0 to a quarter of --rtt-ms).
    #[arg(long, default_value_t = 8.0, value_name = "MS")]
    jitter_ms: f64,
    /// Percent of the datagrams lost each way between the sites (0 to 10).
    #[arg(long, default_value_t = 2.0, value_name = "PCT")]
    loss: f64,
    /// Lifetime in seconds of the pinned file's records, and of an unpinned control file
    /// (default 300, 45 with --quick; at most half the run).
    #[arg(long, value_name = "SECONDS")]
    pin_ttl: Option<u64>,
    /// Megabytes of each file put (0.1 to 16; default 2, 1 with --quick).
    #[arg(long, value_name = "MB")]
    file_mb: Option<f64>,
    /// Seed of the choices (which nodes die, which node a client goes through).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Draw RSS per node, gets over time and reading latency into this SVG file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The subnet of the two sites (site i is `NET.(i+1)`).
const NET: [u8; 3] = [10, 216, 0];
/// Ports of node i: UDP `UDP_PORT + i`, QUIC `QUIC_PORT + i`.
const UDP_PORT: u16 = 4000;
const QUIC_PORT: u16 = 4400;
/// Ports of the forgers (site 0) and of the in-process checking clients.
const FORGER_PORT: u16 = 6000;
const CHECK_PORT: u16 = 5100;
/// Requesters that never answer, sent to every node at the end.
const FORGERS: usize = 24;
/// Readings a rendezvous node keeps (`PubsubConfig::max_history`'s default).
const HISTORY: usize = 16;
/// Seconds a killed node stays down before its restart.
const DOWN_S: f64 = 5.0;

struct Plan {
    per_site: usize,
    minutes: f64,
    kill_at: Vec<f64>,
    pin_ttl: u64,
    file_bytes: usize,
    outage_at: f64,
    outage_s: f64,
}

impl SoakArgs {
    fn plan(&self) -> Result<Plan> {
        let per_site = self
            .nodes_per_site
            .unwrap_or(if self.quick { 8 } else { 16 });
        crate::check_range("nodes-per-site", per_site, 2, 40)?;
        let minutes = self.minutes.unwrap_or(if self.quick { 3.0 } else { 20.0 });
        crate::check_range("minutes", minutes, 1.0, 600.0)?;
        crate::check_range("kill-fraction", self.kill_fraction, 0.0, 0.9)?;
        crate::check_range("rtt-ms", self.rtt_ms, 40.0, 300.0)?;
        crate::check_range("jitter-ms", self.jitter_ms, 0.0, self.rtt_ms / 4.0)?;
        crate::check_range("loss", self.loss, 0.0, 10.0)?;
        let secs = minutes * 60.0;
        let kill_at = match (self.kill_every, self.quick) {
            (Some(every), _) => {
                crate::check_range("kill-every", every, 0.5, 600.0)?;
                (1..)
                    .map(|k| f64::from(k) * every * 60.0)
                    .take_while(|t| *t < secs - 30.0)
                    .collect()
            }
            (None, true) => vec![secs * 0.4],
            (None, false) => (1..)
                .map(|k| f64::from(k) * 600.0)
                .take_while(|t| *t < secs - 30.0)
                .collect(),
        };
        let pin_ttl = self.pin_ttl.unwrap_or(if self.quick { 45 } else { 300 });
        if pin_ttl < 10 || pin_ttl as f64 > secs / 2.0 {
            bail!(
                "--pin-ttl = {pin_ttl} is out of range: 10 seconds to half the run ({} s)",
                secs / 2.0
            );
        }
        let mb = self.file_mb.unwrap_or(if self.quick { 1.0 } else { 2.0 });
        crate::check_range("file-mb", mb, 0.1, 16.0)?;
        Ok(Plan {
            per_site,
            minutes,
            kill_at,
            pin_ttl,
            file_bytes: (mb * 1e6) as usize,
            outage_at: secs * 0.6,
            // Well inside the history at a reading a second.
            outage_s: 8.0,
        })
    }
}

/// One node of the soak: where it listens, its directory, its current process.
struct Slot {
    site: usize,
    index: usize,
    killable: bool,
    args: Vec<String>,
    child: Option<Child>,
    starts: u32,
    /// (seconds since the workload started, RSS MB) of every sample, and the restarts.
    rss: Vec<(f64, f64)>,
    restarted_at: Vec<f64>,
    table: Arc<Mutex<usize>>,
}

impl Slot {
    fn udp(&self, wan: &Wan) -> String {
        format!(
            "udp://{}:{}",
            wan.addr(self.site),
            UDP_PORT + self.index as u16
        )
    }

    fn start(&mut self, wan: &Wan, exe: &Path, dir: &Path, boot: Option<&str>) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("node-{}-{}.log", self.site, self.index)))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", wan.site(self.site)])
            .arg(exe)
            .args(&self.args);
        if let Some(b) = boot {
            cmd.args(["--bootstrap", b]);
        }
        let mut child = cmd
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting kad node")?;
        let out = child.stdout.take().context("stdout")?;
        let table = self.table.clone();
        *table.lock().unwrap_or_else(PoisonError::into_inner) = 0;
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["event"] == "stats" {
                    *table.lock().unwrap_or_else(PoisonError::into_inner) =
                        v["routing_table"].as_u64().unwrap_or(0) as usize;
                }
            }
        });
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A long-running `kad` process at a site whose JSON lines are collected with the time they
/// arrived (seconds since `t0`).
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<(f64, Value)>>>,
}

impl Proc {
    fn spawn(wan: &Wan, exe: &Path, site: usize, args: &[&str], t0: Instant) -> Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", wan.site(site)])
            .arg(exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a kad client")?;
        let out = child.stdout.take().context("stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    l.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((t0.elapsed().as_secs_f64(), v));
                }
            }
        });
        Ok(Self { child, lines })
    }

    fn lines(&self) -> Vec<(f64, Value)> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the workload thread did.
#[derive(Default)]
struct Workload {
    /// (key, value) of every acknowledged put.
    acked: Vec<(String, String)>,
    puts: u64,
    put_errors: Vec<Value>,
    /// (seconds, found) of every get during the run.
    gets: Vec<(f64, bool)>,
    get_errors: Vec<Value>,
}

pub(crate) fn run(a: SoakArgs) -> Result<()> {
    let plan = a.plan()?;
    let exe = std::env::current_exe()?;
    let shape = LinkShape::new(Duration::from_secs_f64(a.rtt_ms / 2000.0))
        .jitter(Duration::from_secs_f64(a.jitter_ms / 1000.0))
        .loss(a.loss / 100.0);
    let tag = format!("ks{}", std::process::id() % 100_000);
    let wan = Wan::up(&tag, NET, shape)
        .context("kad soak builds network namespaces: it needs root, iproute2 and ethtool")?;
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let mut slots = Vec::new();
    let mut procs = Vec::new();
    let r = soak(&a, &plan, &exe, &wan, dir.path(), &mut slots, &mut procs);
    for s in &mut slots {
        s.kill();
    }
    drop(procs);
    let link = wan.stats();
    drop(wan);
    let mut r = r?;
    r["link"] = json!({
        "forward": {"forwarded": link.forward.forwarded, "dropped": link.forward.dropped},
        "backward": {"forwarded": link.backward.forwarded, "dropped": link.backward.dropped},
    });
    r["panics"] = json!(panics(dir.path()));
    if let Some(p) = &a.plot {
        std::fs::write(p, plot(&r))
            .with_context(|| format!("--plot {}: writing the SVG", p.display()))?;
    }
    // The per-node series are for the plot; the report keeps their summary.
    if let Some(o) = r.as_object_mut() {
        o.remove("series");
    }
    if a.json {
        println!("{r}");
    } else {
        println!(
            "{} nodes, {} min, {} kills, {} ms round trip, {}% loss\n\
             records retrievable {} ({} of {}); pinned file after its TTL {}\n\
             readings delivered {}, replayed after an outage {}\n\
             forged contacts handed out {}; RSS second half / first {}; panics {}",
            r["nodes"],
            r["minutes"],
            r["kills"],
            a.rtt_ms,
            a.loss,
            r["records_retrievable"],
            r["records"]["found"],
            r["records"]["acknowledged"],
            r["pinned_retrievable_after_ttl"],
            r["readings_delivered"],
            r["history_replayed"],
            r["forged_contacts_handed_out"],
            r["rss_growth_second_half"],
            r["panics"],
        );
    }
    Ok(())
}

/// Lines of the nodes' logs that report a panic.
fn panics(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|s| s.matches("panicked at").count())
        .sum()
}

#[allow(clippy::too_many_lines)]
fn soak(
    a: &SoakArgs,
    plan: &Plan,
    exe: &Path,
    wan: &Wan,
    dir: &Path,
    slots: &mut Vec<Slot>,
    procs: &mut Vec<Proc>,
) -> Result<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let secs = plan.minutes * 60.0;
    // The nodes stop by themselves long after the run (the final checks included), should this
    // process die before it kills them.
    let life = secs * 2.0 + 1800.0;
    // The user's client key, and the node that pins for it.
    let key_file = dir.join("client.key");
    let out = Command::new(exe)
        .args(["id", "--json", "--key-file"])
        .arg(&key_file)
        .output()?;
    let client_id = serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .context("kad id did not print the client's id")?;
    for site in 0..2 {
        for index in 0..plan.per_site {
            let ip = wan.addr(site);
            let mut args: Vec<String> = [
                "node".to_owned(),
                "--listen".to_owned(),
                format!(
                    "udp://{ip}:{},quic://{ip}:{}",
                    UDP_PORT + index as u16,
                    QUIC_PORT + index as u16
                ),
                "--json".to_owned(),
                "--stats-every".to_owned(),
                "5".to_owned(),
                "--for".to_owned(),
                life.to_string(),
                "--data-dir".to_owned(),
                dir.join(format!("data-{site}-{index}"))
                    .display()
                    .to_string(),
            ]
            .into();
            let pinner = (site, index) == (0, 0);
            if pinner {
                args.extend(["--pin-from".to_owned(), client_id.clone()]);
            }
            slots.push(Slot {
                site,
                index,
                killable: !pinner,
                args,
                child: None,
                starts: 0,
                rss: Vec::new(),
                restarted_at: Vec::new(),
                table: Arc::new(Mutex::new(0)),
            });
        }
    }
    let boot = slots[0].udp(wan);
    let t_boot = Instant::now();
    for (i, s) in slots.iter_mut().enumerate() {
        s.start(wan, exe, dir, (i > 0).then_some(boot.as_str()))?;
    }
    // Joined: every routing table holds a few contacts (or a minute passed).
    while t_boot.elapsed() < Duration::from_secs(60) {
        if slots
            .iter()
            .all(|s| *s.table.lock().unwrap_or_else(PoisonError::into_inner) >= 3)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    let joined_s = t_boot.elapsed().as_secs_f64();
    let live: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(vec![true; slots.len()]));
    let udp_addrs: Vec<String> = slots.iter().map(|s| s.udp(wan)).collect();
    let via = |rng: &mut rand::rngs::StdRng, site: usize, live: &[bool]| -> String {
        let choices: Vec<usize> = (0..live.len())
            .filter(|&i| live[i] && i / plan.per_site == site)
            .collect();
        let i = choices[rng.random_range(0..choices.len())];
        udp_addrs[i].clone()
    };
    let t0 = Instant::now();

    // Files: one pinned with a TTL shorter than the run, one not pinned with the same TTL (the
    // control: gone at the end), one not pinned with a long TTL.
    // Each file its own random bytes: no chunk is shared between them.
    let files: Vec<(&str, PathBuf)> = ["pinned", "short", "long"]
        .iter()
        .map(|name| {
            let mut b = vec![0u8; plan.file_bytes];
            rand::RngCore::fill_bytes(&mut rng, &mut b);
            let p = dir.join(format!("file-{name}"));
            std::fs::write(&p, &b).map(|()| (*name, p))
        })
        .collect::<std::io::Result<_>>()?;
    let pin_ttl = plan.pin_ttl.to_string();
    let mut file_keys: BTreeMap<&str, (String, Value)> = BTreeMap::new();
    for (name, path) in &files {
        let path = path.display().to_string();
        let v = via(&mut rng, 0, &lock(&live));
        let mut args = vec!["put", "--file", &path, "--bootstrap", &v, "--json"];
        let kf = key_file.display().to_string();
        if *name != "long" {
            args.extend(["--ttl", &pin_ttl]);
        }
        if *name == "pinned" {
            args.extend(["--pin-to", &boot, "--key-file", &kf]);
        }
        let p = client(wan.site(0), exe, &args)?;
        let key = p["key"].as_str().unwrap_or_default().to_owned();
        file_keys.insert(name, (key, p));
    }
    let files_put_s = t0.elapsed().as_secs_f64();

    // The sensor, and its subscribers: two at the far site, one at its own.
    let sensor_key = dir.join("sensor.key").display().to_string();
    let pv = via(&mut rng, 0, &lock(&live));
    let publisher = Proc::spawn(
        wan,
        exe,
        0,
        &[
            "sensor",
            "publish",
            "--key-file",
            &sensor_key,
            "--every",
            "1s",
            "--bootstrap",
            &pv,
            "--json",
        ],
        t0,
    )?;
    let pubkey = {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(k) = publisher
                .lines()
                .iter()
                .find_map(|(_, v)| v["pubkey"].as_str().map(str::to_owned))
            {
                break k;
            }
            if Instant::now() > end {
                bail!("the sensor publisher printed no reading in 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    procs.push(publisher);
    let subscribe = |rng: &mut rand::rngs::StdRng, site: usize, since: Option<i64>| {
        let v = via(rng, site, &lock(&live));
        let since = since.map(|s| s.to_string());
        let mut args = vec![
            "sensor",
            "subscribe",
            "--pubkey",
            &pubkey,
            "--bootstrap",
            &v,
            "--json",
        ];
        if let Some(s) = &since {
            args.extend(["--since", s]);
        }
        Proc::spawn(wan, exe, site, &args, t0)
    };
    // Subscriber sessions: the process index in `procs`, since, and when it was killed.
    let mut sessions: Vec<Session> = Vec::new();
    for site in [1, 1, 0] {
        procs.push(subscribe(&mut rng, site, None)?);
        sessions.push(Session {
            site,
            proc: procs.len() - 1,
            since: None,
            end: None,
        });
    }

    // The steady workload: a put at one site, a get of an earlier value at the other.
    let stop = Arc::new(AtomicBool::new(false));
    let work = {
        let (stop, live, udp_addrs, exe) = (
            stop.clone(),
            live.clone(),
            udp_addrs.clone(),
            exe.to_owned(),
        );
        let sites = [wan.site(0).to_owned(), wan.site(1).to_owned()];
        let per_site = plan.per_site;
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 0x5eed);
        std::thread::spawn(move || {
            let mut w = Workload::default();
            let pick = |rng: &mut rand::rngs::StdRng, site: usize| {
                let l = lock(&live);
                let c: Vec<usize> = (0..l.len())
                    .filter(|&i| l[i] && i / per_site == site)
                    .collect();
                udp_addrs[c[rng.random_range(0..c.len())]].clone()
            };
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let site = (i % 2) as usize;
                i += 1;
                let value = format!("kad soak {} value {i}", std::process::id());
                let v = pick(&mut rng, site);
                let p = client(
                    &sites[site],
                    &exe,
                    &["put", &value, "--bootstrap", &v, "--json"],
                )
                .unwrap_or_default();
                w.puts += 1;
                match p["key"].as_str() {
                    Some(k) if p["stored"].as_u64().unwrap_or(0) > 0 => {
                        w.acked.push((k.to_owned(), value));
                    }
                    _ => w.put_errors.push(p),
                }
                if w.acked.is_empty() {
                    continue;
                }
                let (k, value) = w.acked[rng.random_range(0..w.acked.len())].clone();
                let v = pick(&mut rng, 1 - site);
                let g = client(
                    &sites[1 - site],
                    &exe,
                    &["get", &k, "--bootstrap", &v, "--json"],
                )
                .unwrap_or_default();
                let ok = g["value"].as_str() == Some(value.as_str());
                w.gets.push((t0.elapsed().as_secs_f64(), ok));
                if !ok {
                    w.get_errors.push(g);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            w
        })
    };

    // The clock: RSS samples every 5 s, kill rounds, the subscriber's outage.
    let mut kills = 0u32;
    let mut kill_at = plan.kill_at.clone();
    let mut outage: Option<(f64, i64)> = None; // (killed at, last seq it had)
    let mut outage_done = false;
    let mut next_sample = 0.0;
    while t0.elapsed().as_secs_f64() < secs {
        let now = t0.elapsed().as_secs_f64();
        if now >= next_sample {
            next_sample += 5.0;
            for s in slots.iter_mut() {
                if let Some(pid) = s.pid() {
                    let mb = crate::proc_status_mb(&pid.to_string(), "VmRSS:");
                    if mb > 0.0 {
                        s.rss.push((now, mb));
                    }
                }
            }
        }
        if kill_at.first().is_some_and(|t| now >= *t) {
            kill_at.remove(0);
            let mut killable: Vec<usize> =
                (0..slots.len()).filter(|&i| slots[i].killable).collect();
            killable.shuffle(&mut rng);
            let n = (slots.len() as f64 * a.kill_fraction).round() as usize;
            // Never every node of a site: clients and restarts go through a live one.
            let mut doomed: Vec<usize> = Vec::new();
            let mut left = [plan.per_site, plan.per_site];
            for i in killable {
                if doomed.len() < n && left[slots[i].site] > 1 {
                    left[slots[i].site] -= 1;
                    doomed.push(i);
                }
            }
            {
                let mut l = lock(&live);
                for &i in &doomed {
                    l[i] = false;
                }
            }
            for &i in &doomed {
                slots[i].kill();
                kills += 1;
            }
            std::thread::sleep(Duration::from_secs_f64(DOWN_S));
            for &i in &doomed {
                let b = via(&mut rng, slots[i].site, &lock(&live));
                slots[i].start(wan, exe, dir, Some(&b))?;
                slots[i].restarted_at.push(t0.elapsed().as_secs_f64());
            }
            // Let them join before clients go through them.
            std::thread::sleep(Duration::from_secs(3));
            let mut l = lock(&live);
            for &i in &doomed {
                l[i] = true;
            }
        }
        if !outage_done && outage.is_none() && now >= plan.outage_at {
            // The first far subscriber goes away (SIGKILL) ...
            let idx = sessions[0].proc;
            procs[idx].kill();
            sessions[0].end = Some(now);
            // What it printed is all read.
            std::thread::sleep(Duration::from_millis(300));
            let last = procs[idx]
                .lines()
                .iter()
                .filter_map(|(_, v)| v["seq"].as_i64())
                .max()
                .unwrap_or(0);
            outage = Some((now, last));
        }
        if let Some((at, last)) = outage {
            if now >= at + plan.outage_s {
                // ... and comes back with the last seq it printed.
                procs.push(subscribe(&mut rng, 1, Some(last))?);
                sessions.push(Session {
                    site: 1,
                    proc: procs.len() - 1,
                    since: Some(last),
                    end: None,
                });
                outage = None;
                outage_done = true;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let w = work
        .join()
        .map_err(|_| anyhow::anyhow!("the workload thread panicked"))?;
    // The last readings reach the subscribers, then everything stops.
    std::thread::sleep(Duration::from_secs(3));
    procs[0].kill();
    std::thread::sleep(Duration::from_secs(3));
    let end_s = t0.elapsed().as_secs_f64();
    for s in &mut sessions {
        if s.end.is_none() {
            procs[s.proc].kill();
            s.end = Some(end_s);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let (readings, latency_series) = readings(procs, &sessions);

    // Requesters that never answer, then lookups of their ids from the far site.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let forged = forged(&rt, wan, &udp_addrs, &slots_ids(&rt, wan, &udp_addrs)?)?;

    // Everything acknowledged, got at the site it was not put at (the files at the far site).
    let records = rt.block_on(async {
        let node = site_node("udp", wan, 1, CHECK_PORT, &udp_addrs[plan.per_site], true).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut found = 0usize;
        let mut missing = Vec::new();
        for (k, v) in &w.acked {
            let key: kad_core::Key = k.parse()?;
            match node.get(key).await {
                Ok(g) if g.record.value[..] == *v.as_bytes() => found += 1,
                _ => missing.push(k.clone()),
            }
        }
        node.shutdown().await;
        anyhow::Ok((found, missing))
    })?;
    let mut file_report = serde_json::Map::new();
    let mut intact = BTreeMap::new();
    for (name, path) in &files {
        let (key, put) = &file_keys[name];
        let expect = std::fs::read(path)?;
        let out = dir.join(format!("got-{name}"));
        let v = udp_addrs[plan.per_site + 1].clone();
        let g = client(
            wan.site(1),
            exe,
            &[
                "get",
                key,
                "--out",
                &out.display().to_string(),
                "--bootstrap",
                &v,
                "--json",
            ],
        )?;
        let ok = !key.is_empty() && std::fs::read(&out).is_ok_and(|b| b == expect);
        intact.insert(*name, ok);
        file_report.insert(
            (*name).to_owned(),
            json!({"key": key, "put_ok": !key.is_empty(), "min_replicas": put["min_replicas"],
                   "pinned": put["pinned"], "put_error": put["error"], "intact_at_end": ok,
                   "get_error": g["error"]}),
        );
    }
    let acked = w.acked.len() + 1; // the long-lived file
    let found = records.0 + usize::from(intact["long"]);

    // RSS: nodes never killed, mean over the second half of the workload (from 10 s after the
    // files were put to the end) over the first.
    let from = files_put_s + 10.0;
    let half = from + (secs - from) / 2.0;
    let mut growth = Vec::new();
    let mut growth_by_node = Vec::new();
    let mut series = Vec::new();
    for s in slots.iter() {
        series.push(
            json!({"node": format!("{}-{}", s.site, s.index), "rss": s.rss,
                           "restarts": s.restarted_at}),
        );
        if s.starts != 1 {
            continue;
        }
        let mean = |f: &dyn Fn(f64) -> bool| {
            let v: Vec<f64> = s
                .rss
                .iter()
                .filter(|(t, _)| f(*t))
                .map(|(_, m)| *m)
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        if let (Some(first), Some(second)) =
            (mean(&|t| t >= from && t < half), mean(&|t| t >= half))
        {
            growth.push(second / first);
            growth_by_node.push(json!({"node": format!("{}-{}", s.site, s.index),
                "first_mb": round(first, 1), "second_mb": round(second, 1),
                "ratio": round(second / first, 3)}));
        }
    }
    let rss_end: Vec<f64> = slots
        .iter()
        .filter_map(|s| s.rss.last().map(|(_, m)| *m))
        .collect();
    let gets_ok = w.gets.iter().filter(|(_, ok)| *ok).count();
    Ok(json!({
        "soak": if a.quick { "quick" } else { "full" },
        "nodes": slots.len(),
        "minutes": plan.minutes,
        "kills": kills,
        "records_retrievable": round(found as f64 / acked.max(1) as f64, 4),
        "pinned_retrievable_after_ttl": if intact["pinned"] { 1.0 } else { 0.0 },
        "readings_delivered": readings["delivered_fraction"],
        "history_replayed": readings["replayed_fraction"],
        "forged_contacts_handed_out": forged["handed_out"],
        "rss_growth_second_half": growth.iter().copied().fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g)))).map(|g| round(g, 3)),
        "rss_growth_median": round(pct(&mut growth.clone(), 0.5), 3),
        "rss_growth_by_node": growth_by_node,
        "rss_mb_end_p50": pct(&mut rss_end.clone(), 0.5),
        "rss_mb_end_max": rss_end.iter().copied().fold(0.0, f64::max),
        "records": {"acknowledged": acked, "found": found, "missing": records.1,
                    "puts": w.puts, "put_errors": w.put_errors.iter().take(5).collect::<Vec<_>>()},
        "gets_during_run": {"gets": w.gets.len(), "found": gets_ok,
                            "errors": w.get_errors.iter().take(5).collect::<Vec<_>>()},
        "files": file_report,
        "short_ttl_file_gone": !intact["short"],
        "readings": readings,
        "forged": forged,
        "link_shape": {"rtt_ms": a.rtt_ms, "jitter_ms": a.jitter_ms, "loss_pct": a.loss},
        "timeline_s": {"joined": round(joined_s, 1), "files_put": round(files_put_s, 1),
                       "kills_at": plan.kill_at, "outage_at": plan.outage_at,
                       "outage_s": plan.outage_s, "end": round(end_s, 1),
                       "pin_ttl": plan.pin_ttl},
        "series": {"nodes": series, "gets": w.gets, "latency": latency_series},
    }))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One run of a `kad sensor subscribe` process.
struct Session {
    site: usize,
    /// Its index in the soak's processes.
    proc: usize,
    /// The `--since` it was started with.
    since: Option<i64>,
    /// When it was killed (seconds since the workload started).
    end: Option<f64>,
}

/// The readings the publisher stored and what each subscriber session got.
fn readings(procs: &[Proc], sessions: &[Session]) -> (Value, Vec<Value>) {
    // seq -> when it was stored (seconds since t0).
    let published: BTreeMap<i64, f64> = procs[0]
        .lines()
        .iter()
        .filter(|(_, v)| v["ok"] == true)
        .filter_map(|(t, v)| v["seq"].as_i64().map(|s| (s, *t)))
        .collect();
    let not_stored = procs[0]
        .lines()
        .iter()
        .filter(|(_, v)| v["ok"] == false)
        .count();
    let (mut expected, mut delivered) = (0usize, 0usize);
    let (mut missed, mut replayed) = (0usize, 0usize);
    let mut out_of_order = 0usize;
    let mut duplicates = 0usize;
    let mut latency = Vec::new();
    let mut series = Vec::new();
    let mut per = Vec::new();
    for s in sessions {
        let (site, since) = (s.site, s.since);
        let lines = procs[s.proc].lines();
        let Some((t_sub, sub)) = lines.iter().find(|(_, v)| v["event"] == "subscribed") else {
            per.push(json!({"site": site, "subscribed": false}));
            continue;
        };
        let got: Vec<(f64, i64, Option<f64>)> = lines
            .iter()
            .filter_map(|(t, v)| v["seq"].as_i64().map(|s| (*t, s, v["latency_ms"].as_f64())))
            .collect();
        // Owed: what was stored while it was subscribed, but for the last 2 s before it died.
        let last_t = s.end.unwrap_or(f64::MAX);
        let seqs: BTreeSet<i64> = got.iter().map(|(_, s, _)| *s).collect();
        duplicates += got.len() - seqs.len();
        out_of_order += got.windows(2).filter(|w| w[1].1 <= w[0].1).count();
        // Readings stored while it was subscribed (up to its last line) are owed to it.
        let from = match since {
            Some(s) => s,
            None => sub["latest_seq"].as_i64().unwrap_or(0),
        };
        let first_live = published
            .iter()
            .find(|(_, t)| **t >= *t_sub)
            .map_or(i64::MAX, |(s, _)| *s);
        let owed: Vec<i64> = published
            .iter()
            .filter(|(s, t)| **s > from && **t <= last_t - 2.0)
            .map(|(s, _)| *s)
            .collect();
        let mut this_expected = 0;
        let mut this_delivered = 0;
        // Readings stored before a restarted session subscribed: the ones it missed while it was
        // away, of which the last `HISTORY` are kept to be replayed.
        let gap: Vec<i64> = owed
            .iter()
            .copied()
            .filter(|s| since.is_some() && *s < first_live)
            .collect();
        let kept = &gap[gap.len().saturating_sub(HISTORY)..];
        missed += kept.len();
        replayed += kept.iter().filter(|s| seqs.contains(s)).count();
        for s in owed.iter().filter(|s| !gap.contains(s)) {
            this_expected += 1;
            this_delivered += usize::from(seqs.contains(s));
        }
        expected += this_expected;
        delivered += this_delivered;
        for (t, s, l) in &got {
            if since.is_none_or(|_| *s >= first_live) {
                if let Some(l) = l {
                    latency.push(*l);
                    series.push(json!([round(*t, 1), l]));
                }
            }
        }
        per.push(json!({"site": site, "since": since, "owed": this_expected,
                        "delivered": this_delivered, "received": got.len(),
                        "missed_while_away": gap.len(),
                        "replayed": kept.iter().filter(|s| seqs.contains(s)).count()}));
    }
    let report = json!({
        "published": published.len(),
        "not_stored": not_stored,
        "expected": expected,
        "delivered": delivered,
        "delivered_fraction": if expected > 0 { round(delivered as f64 / expected as f64, 5) } else { 0.0 },
        "missed_in_outage": missed,
        "replayed": replayed,
        "replayed_fraction": if missed > 0 { round(replayed as f64 / missed as f64, 4) } else { 0.0 },
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "latency_ms_p50": pct(&mut latency.clone(), 0.5),
        "latency_ms_p99": pct(&mut latency.clone(), 0.99),
        "sessions": per,
    });
    (report, series)
}

/// The node ids behind `addrs`, by pinging each from site 0.
fn slots_ids(
    rt: &tokio::runtime::Runtime,
    wan: &Wan,
    addrs: &[String],
) -> Result<Vec<(kad_core::NodeId, SocketAddr)>> {
    rt.block_on(async {
        let node = site_node("udp", wan, 0, CHECK_PORT + 1, &addrs[0], true).await?;
        let mut out = Vec::new();
        for a in addrs {
            let peer: kad_core::PeerAddr = a.parse()?;
            if let (Ok(p), Some(sa)) = (node.ping(peer.clone()).await, peer.socket_addr()) {
                out.push((p.contact.id, sa));
            }
        }
        node.shutdown().await;
        anyhow::Ok(out)
    })
}

/// Requesters that never answer: `FORGERS` identities at site 0, each sending a signed
/// FIND_NODE from its own address to every node and never reading a reply. Then a client at site 1 looks
/// each forger's id up: a node that handed a forger out would show it among the closest.
fn forged(
    rt: &tokio::runtime::Runtime,
    wan: &Wan,
    addrs: &[String],
    nodes: &[(kad_core::NodeId, SocketAddr)],
) -> Result<Value> {
    let mut forger_ids = Vec::new();
    let mut sent = 0u64;
    let mut sockets = Vec::new();
    for i in 0..FORGERS {
        let ip = wan.addr(0);
        let port = FORGER_PORT + i as u16;
        let sock = wan
            .in_site(0, || UdpSocket::bind((ip, port)))?
            .with_context(|| format!("binding a forger at {ip}:{port}"))?;
        let src = SocketAddr::from((ip, port));
        let identity = Arc::new(kad::keys::fresh_identity()?);
        forger_ids.push(kad_core::Identity::node_id(&*identity));
        // One signed FIND_NODE of its own id to every node: an engine that knows only that node.
        for (id, addr) in nodes {
            let now = Instant::now();
            let mut engine = kad_core::Node::builder(kad_core::Config::default())
                .identity(identity.clone())
                .codec(Box::new(kad_core::NativeCodec::new(identity.clone())))
                .addrs(vec![kad_core::PeerAddr::Udp(src)])
                .build(now)?;
            engine.add_contact(
                now,
                kad_core::Contact::new(*id, kad_core::PeerAddr::Udp(*addr)),
            );
            let me = kad_core::Identity::node_id(&*identity);
            let _ = engine.find_node(now, me);
            while let Some(o) = engine.poll_output() {
                if let kad_core::Output::Send { to, msg } = o {
                    if let (Ok(bytes), Some(dst)) = (engine.encode_to(&to, &msg), to.socket_addr())
                    {
                        if sock.send_to(&bytes, dst).is_ok() {
                            sent += 1;
                        }
                    }
                }
            }
        }
        sockets.push(sock); // open, never read: no answer ever comes back
    }
    // The nodes' verifying pings go unanswered meanwhile.
    std::thread::sleep(Duration::from_secs(6));
    let (handed_out, lookups) = rt.block_on(async {
        let node = site_node("udp", wan, 1, CHECK_PORT + 2, &addrs[addrs.len() - 1], true).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let forgers: BTreeSet<kad_core::NodeId> = forger_ids.iter().copied().collect();
        let mut seen = BTreeSet::new();
        let mut lookups = 0;
        for id in &forger_ids {
            if let Ok(o) = node.find_node(*id).await {
                lookups += 1;
                for c in &o.closest {
                    if forgers.contains(&c.id) {
                        seen.insert(c.id);
                    }
                }
            }
        }
        node.shutdown().await;
        anyhow::Ok((seen.len(), lookups))
    })?;
    drop(sockets);
    Ok(
        json!({"forgers": FORGERS, "requests_sent": sent, "lookups": lookups,
              "handed_out": handed_out}),
    )
}

/// The report drawn as an SVG: RSS per node over time, gets found over time, reading latency.
fn plot(r: &Value) -> String {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1300, 420)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let panels = root.split_evenly((1, 3));
        let end = r["timeline_s"]["end"].as_f64().unwrap_or(60.0).max(1.0);
        let pairs = |v: &Value| -> Vec<(f64, f64)> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                .collect()
        };
        // RSS per node.
        let nodes = r["series"]["nodes"].as_array().cloned().unwrap_or_default();
        let max_rss = nodes
            .iter()
            .flat_map(|n| pairs(&n["rss"]))
            .map(|(_, m)| m)
            .fold(10.0, f64::max);
        if let Ok(mut c) = ChartBuilder::on(&panels[0])
            .caption("RSS per node (MB)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(0.0..end, 0.0..max_rss * 1.1)
        {
            let _ = c.configure_mesh().x_desc("seconds").draw();
            for (i, n) in nodes.iter().enumerate() {
                let color = Palette99::pick(i).mix(0.7);
                let _ = c.draw_series(LineSeries::new(pairs(&n["rss"]), color));
            }
        }
        // Gets found, per 30 s window.
        let gets: Vec<(f64, bool)> = r["series"]["gets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_bool()?)))
            .collect();
        let mut windows: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
        for (t, ok) in &gets {
            let e = windows.entry((*t / 30.0) as u64).or_default();
            e.0 += u32::from(*ok);
            e.1 += 1;
        }
        if let Ok(mut c) = ChartBuilder::on(&panels[1])
            .caption("gets found (per 30 s)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(0.0..end, 0.0..1.05)
        {
            let _ = c.configure_mesh().x_desc("seconds").draw();
            let pts: Vec<(f64, f64)> = windows
                .iter()
                .map(|(w, (ok, n))| (*w as f64 * 30.0 + 15.0, f64::from(*ok) / f64::from(*n)))
                .collect();
            let _ = c.draw_series(LineSeries::new(pts.clone(), &BLUE));
            let _ = c.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, BLUE.filled())));
            for k in r["timeline_s"]["kills_at"].as_array().into_iter().flatten() {
                if let Some(x) = k.as_f64() {
                    let _ = c.draw_series(LineSeries::new([(x, 0.0), (x, 1.05)], &RED));
                }
            }
        }
        // Reading latency.
        let lat = pairs(&r["series"]["latency"]);
        let max_lat = lat.iter().map(|(_, l)| *l).fold(100.0, f64::max);
        if let Ok(mut c) = ChartBuilder::on(&panels[2])
            .caption("reading latency (ms)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..end, 0.0..max_lat * 1.1)
        {
            let _ = c.configure_mesh().x_desc("seconds").draw();
            let _ = c.draw_series(lat.into_iter().map(|p| Circle::new(p, 2, GREEN.filled())));
        }
        let _ = root.present();
    }
    svg
}
