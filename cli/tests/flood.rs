//! A `kad node` process under a flood on loopback: thousands of source addresses in 127.0.0.0/8
//! send garbage, near-64 KiB datagrams, valid signed queries from unproven addresses, forged
//! answers and bursts far over the per-IP rate, while honest nodes run lookups through it.
//! Checks: honest lookups succeed (>= 99%), no flood source is ever handed out to the honest
//! nodes, the per-IP limiter drops before parsing, no source ever receives more bytes than it
//! sent (no amplification), and the node's peak RSS stays under the cap documented in
//! docs/limits.md.
#![allow(clippy::disallowed_methods)] // tests read the OS clock

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::NodeProc;
use kad_core::{
    Bytes, Config, Contact, Dht, Input, MAX_NATIVE_VALUE, NativeCodec, NativeIdentity, Node,
    NodeId, Output, PeerAddr, content_key,
};
use kad_transport_udp::UdpTransport;

/// The documented cap (docs/limits.md, "Memory bound of one node"): peak RSS of a default
/// `kad node` under a flood.
const RSS_CAP_MB: u64 = 256;

fn vm_hwm_mb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Signed requests and answers made by a sans-IO engine that believes it lives at `src`.
struct Forger {
    node: Node,
}

impl Forger {
    fn new(src: SocketAddr, target: &Contact, guard: bool) -> Self {
        let id = Arc::new(NativeIdentity::generate(&mut rand::rng()));
        let mut config = Config::default();
        config.amplification_guard = guard;
        let mut node = Node::builder(config)
            .identity(id.clone())
            .codec(Box::new(NativeCodec::new(id)))
            .addrs(vec![PeerAddr::Udp(src)])
            .build(Instant::now())
            .unwrap();
        node.add_contact(Instant::now(), target.clone());
        Self { node }
    }

    /// A signed FIND_NODE (or FIND_VALUE) for the target, encoded.
    fn query(&mut self, value: Option<NodeId>) -> Vec<Bytes> {
        let now = Instant::now();
        match value {
            Some(k) => drop(self.node.get(now, k, 1)),
            None => drop(self.node.find_node(now, NodeId::random(&mut rand::rng()))),
        }
        let mut out = Vec::new();
        while let Some(o) = self.node.poll_output() {
            if let Output::Send { to, msg } = o {
                out.push(self.node.encode_to(&to, &msg).unwrap());
            }
        }
        out
    }
}

#[test]
fn a_node_under_a_flood_stays_bounded_answers_honest_peers_and_never_amplifies() {
    let target = NodeProc::start(&["--stats-every", "0.5", "--for", "120"]);
    let pid = target.child.id();
    let taddr: SocketAddr = target.addr.trim_start_matches("udp://").parse().unwrap();
    let tcontact = Contact::with_addrs(
        target.id.parse::<NodeId>().unwrap(),
        vec![PeerAddr::Udp(taddr)],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Honest nodes join through the target, one stores 20 records.
    let honest: Vec<Dht> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..6 {
            let id = Arc::new(NativeIdentity::generate(&mut rand::rng()));
            let udp = UdpTransport::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let mut config = Config::default();
            config.max_value_len = MAX_NATIVE_VALUE;
            let b = Node::builder(config)
                .identity(id.clone())
                .codec(Box::new(NativeCodec::new(id)));
            let d = Dht::spawn(b, vec![Arc::new(udp)]).unwrap();
            d.bootstrap(vec![PeerAddr::Udp(taddr)]).await.unwrap();
            v.push(d);
        }
        v
    });
    // A record the flood's FIND_VALUEs ask for: a value answer is the largest one a forged
    // source could aim at a victim.
    let key0 = rt.block_on(async {
        let value = Bytes::from_static(b"honest record");
        let key = content_key(&value);
        assert!(honest[0].put(key, value).await.unwrap().stored > 0);
        key
    });
    let rss_before = vm_hwm_mb(pid);
    let kdrops_before = kernel_drops(taddr);

    // The flood, on two threads, while the honest nodes look up.
    // Flood threads finished, and source addresses bound so far.
    let stop = Arc::new(AtomicU64::new(0));
    let bound = Arc::new(AtomicU64::new(0));
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let datagrams = Arc::new(AtomicU64::new(0));
    // (bytes sent, bytes received back, source) of the source that received the most.
    let worst = Arc::new(std::sync::Mutex::new((0usize, 0usize, String::new())));
    let sources = 3000u32;
    let flooders: Vec<_> = (0..2u32)
        .map(|t| {
            let (tcontact, stop, bound, sent_bytes, datagrams, worst) = (
                tcontact.clone(),
                stop.clone(),
                bound.clone(),
                sent_bytes.clone(),
                datagrams.clone(),
                worst.clone(),
            );
            std::thread::spawn(move || {
                let mut socks = Vec::new();
                for i in (t..sources).step_by(2) {
                    // 127.2.0.0 + i: a distinct source address each.
                    let ip = Ipv4Addr::from(0x7f02_0000u32 + i);
                    let Ok(s) = UdpSocket::bind((ip, 0)) else {
                        continue;
                    };
                    s.set_nonblocking(true).unwrap();
                    let src = s.local_addr().unwrap();
                    let mut forger = Forger::new(src, &tcontact, false);
                    let mut out: Vec<Bytes> = vec![
                        Bytes::from(i.to_be_bytes().repeat(60)), // garbage
                        Bytes::from(vec![b'['; 60_000 + i as usize % 5000]), // near-64 KiB
                    ];
                    // Valid signed queries from an address that never answered anything.
                    out.extend(forger.query(None));
                    out.extend(forger.query(Some(key0)));
                    // A forged answer: a response to a request the node never sent.
                    let mut me = Forger::new(src, &tcontact, false);
                    let mut other = Forger::new(src, me.node.contact(), false);
                    if let Some(q) = other.query(None).pop() {
                        me.node.handle_input(
                            Instant::now(),
                            Input::Datagram {
                                from: PeerAddr::Udp(src),
                                data: q,
                            },
                        );
                        while let Some(o) = me.node.poll_output() {
                            if let Output::Send { to, msg } = o {
                                out.push(me.node.encode_to(&to, &msg).unwrap());
                            }
                        }
                    }
                    let mut n = 0usize;
                    for d in &out {
                        if s.send_to(d, taddr_of(&tcontact)).is_ok() {
                            n += d.len();
                            datagrams.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Every 500th source bursts far over the per-IP rate.
                    if i % 500 == 0 {
                        let d = forger.query(None).pop().unwrap_or_default();
                        for _ in 0..6000 {
                            if s.send_to(&d, taddr_of(&tcontact)).is_ok() {
                                n += d.len();
                                datagrams.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    socks.push((s, n, 0usize));
                    bound.fetch_add(1, Ordering::Relaxed);
                }
                stop.fetch_add(1, Ordering::Relaxed);
                // Read what came back to every source, for a while.
                let end = Instant::now() + Duration::from_secs(3);
                let mut buf = vec![0u8; 65_536];
                while Instant::now() < end {
                    for (s, _, got) in &mut socks {
                        while let Ok((len, _)) = s.recv_from(&mut buf) {
                            *got += len;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let mut w = worst.lock().unwrap();
                for (s, sent, got) in &socks {
                    // Kept for the report: the source that got the most bytes back.
                    if *got > w.1 {
                        *w = (*sent, *got, s.local_addr().unwrap().to_string());
                    }
                    assert!(
                        got <= sent,
                        "{}: received {got} bytes, sent {sent}: amplification",
                        s.local_addr().unwrap()
                    );
                }
                socks.len()
            })
        })
        .collect();

    // Honest lookups during the flood: from when 200 sources are flooding until every flood
    // thread is done.
    while bound.load(Ordering::Relaxed) < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    // Honest lookups, six at a time: for the flooded node's id and for each honest node's id;
    // success is finding that node first. Each crosses the flooded node (every honest node knows
    // it, and it knows them all).
    let ids: Vec<NodeId> = std::iter::once(tcontact.id)
        .chain(honest.iter().map(|d| d.id()))
        .collect();
    let mut times = Vec::new();
    let mut unanswered = 0u64;
    let (ok, total) = rt.block_on(async {
        let (mut ok, mut total) = (0, 0);
        let mut round = 0usize;
        while round < 20 || stop.load(Ordering::Relaxed) < 2 {
            round += 1;
            let lookups = honest.iter().enumerate().map(|(i, d)| {
                // Any node but itself (a lookup never returns the node that runs it).
                let others: Vec<NodeId> = ids.iter().copied().filter(|x| *x != d.id()).collect();
                let want = others[(i + round) % others.len()];
                async move {
                    let t = Instant::now();
                    let o = d.find_node(want).await;
                    let ok = o
                        .as_ref()
                        .is_ok_and(|o| o.closest.first().is_some_and(|c| c.id == want));
                    // Requests this lookup sent that were never answered: a contact handed out
                    // that does not answer (a flood source) costs one each.
                    let silent = o
                        .as_ref()
                        .map_or(0, |o| o.stats.rpcs.saturating_sub(o.stats.responses));
                    if !ok {
                        // Which lookup missed, and what it saw (shown with a failure).
                        eprintln!(
                            "lookup by honest node {i} for {want} missed: {:?}",
                            o.map(|o| (o.closest.len(), o.stats))
                        );
                    }
                    (ok, t.elapsed(), silent)
                }
            });
            for (found, took, silent) in futures_util::future::join_all(lookups).await {
                unanswered += u64::from(silent);
                total += 1;
                ok += usize::from(found);
                times.push(took);
            }
        }
        (ok, total)
    });
    times.sort();
    let p50_ms = times
        .get(times.len() / 2)
        .map_or(0.0, |t| t.as_secs_f64() * 1e3);
    let max_ms = times.last().map_or(0.0, |t| t.as_secs_f64() * 1e3);
    let honest_s = t0.elapsed().as_secs_f64();
    let flooded: usize = flooders.into_iter().map(|h| h.join().unwrap()).sum();
    let rss_after = vm_hwm_mb(pid);
    let kdrops = kernel_drops(taddr) - kdrops_before;

    // The node's own counters.
    std::thread::sleep(Duration::from_millis(700));
    let mut stats = serde_json::Value::Null;
    #[allow(unused_mut)]
    let mut target = target;
    while let Ok(v) = target.lines.try_recv() {
        if v["event"] == "stats" {
            stats = v;
        }
    }
    let st = &stats["stats"];
    let n = |k: &str| st[k].as_u64().unwrap_or(0);
    let w = worst.lock().unwrap().clone();
    eprintln!(
        "flood: {flooded} sources, {} datagrams, {} MB; honest lookups {ok}/{total} in {honest_s:.1} s (p50 {p50_ms:.1} ms, max {max_ms:.0} ms, requests unanswered {unanswered}); \
         peak RSS {rss_before} -> {rss_after} MB (cap {RSS_CAP_MB}); rate_limited {}, malformed {}, \
         unknown_txn {}, wrong_recipient {}, overload {}, deferred {}, proving pings {}; \
         dropped by the kernel (receive buffer full) {kdrops}; largest return: {} bytes to {} (sent {})",
        datagrams.load(Ordering::Relaxed),
        sent_bytes.load(Ordering::Relaxed) / 1_000_000,
        n("dropped_rate_limited"),
        n("dropped_malformed"),
        n("dropped_unknown_txn"),
        n("dropped_wrong_recipient"),
        n("dropped_overload"),
        n("replies_deferred"),
        n("proving_pings"),
        w.1,
        w.2,
        w.0,
    );
    assert!(
        flooded >= 2000,
        "only {flooded} source addresses could be bound"
    );
    assert!(ok * 100 >= total * 99, "honest lookups: {ok} of {total}");
    // No flood source was handed out: a lookup asks every contact it is handed, and a flood
    // source never answers. With every requester handed out, 120 lookups sent 1,647 requests
    // that went unanswered; as built, 3,210 lookups sent none (one run each).
    assert!(
        unanswered * 10 <= total as u64,
        "honest lookups sent {unanswered} requests nobody answered ({total} lookups): flood \
         sources were handed out"
    );
    assert!(
        n("dropped_rate_limited") > 0,
        "the per-IP limit never engaged: {st}"
    );
    assert!(n("dropped_malformed") > 0, "{st}");
    assert!(n("dropped_wrong_recipient") > 0, "forged answers: {st}");
    assert!(
        n("replies_deferred") > 0,
        "no answer was held for an unproven source: {st}"
    );
    assert!(
        rss_after <= RSS_CAP_MB,
        "peak RSS {rss_after} MB over the {RSS_CAP_MB} MB cap"
    );
    rt.block_on(async {
        for d in honest {
            d.shutdown().await;
        }
    });
}

/// Datagrams the kernel dropped at the UDP socket bound to `addr` (its receive buffer was full),
/// from the `drops` column of /proc/net/udp: drops that happen before the node reads them.
fn kernel_drops(addr: SocketAddr) -> u64 {
    let SocketAddr::V4(a) = addr else { return 0 };
    let want = format!("{:08X}:{:04X}", u32::from(*a.ip()).swap_bytes(), a.port());
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&want.as_str())).then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

fn taddr_of(c: &Contact) -> SocketAddr {
    c.addrs[0].socket_addr().unwrap()
}
