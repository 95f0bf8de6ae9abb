//! NAT traversal against a real UPnP gateway: miniupnpd (nftables backend) in network namespaces
//! this test creates (`tests/nat/netns.sh`), our node in a "LAN" namespace behind it, peers in a
//! "WAN" namespace.
//!
//! Checked: without a gateway the node says so within seconds and runs on; behind the NAT without
//! a mapping peers report its external address and reachability checks find it unreachable, so it
//! runs as a client; with UPnP the port is mapped (`upnpc -l` lists it), renewed before its lease
//! runs out, reachable from the WAN through the mapped port, and the node serves; a gateway that
//! disappears is logged and the mapping comes back when it returns; stopping removes the mapping.
//!
//! Needs root (network namespaces) and the tools above, which `scripts/test` installs; without
//! them the test fails, naming what is missing.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KAD, json_lines};
use serde_json::Value;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nat/netns.sh")
}

/// The namespaces; torn down (processes killed by PID, namespaces deleted) when dropped.
struct Topology {
    prefix: String,
    vars: Vec<(String, String)>,
}

impl Topology {
    fn up() -> Self {
        let check = Command::new("bash")
            .arg(script())
            .arg("check")
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "the NAT test needs network namespaces (root, iproute2, nftables, miniupnpd, \
             miniupnpc; `scripts/test` installs them): {}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
        let prefix = format!("kn{}", std::process::id() % 100_000);
        // Leftovers of a crashed run with the same PID would make `up` refuse.
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &prefix])
            .status();
        let out = Command::new("bash")
            .arg(script())
            .args(["up", &prefix])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "netns.sh up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { prefix, vars }
    }

    fn var(&self, k: &str) -> &str {
        self.vars
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("netns.sh printed no {k}"))
    }

    fn ns(&self, which: &str) -> String {
        format!("{}-{which}", self.prefix)
    }

    fn igd(&self, what: &str) {
        let out = Command::new("bash")
            .arg(script())
            .args([what, &self.prefix])
            .env("FLUSH_MAPPINGS", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "netns.sh {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Our UDP mappings on the gateway as `upnpc -l` lists them: (external port, internal
    /// address, description, lease seconds left).
    fn upnpc_list(&self) -> Vec<(u16, String, String, u64)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("lan"), "upnpc", "-l"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                // " 0 UDP 4200->192.168.77.2:4200 'kad' '' 3598"
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() < 6 || f[1] != "UDP" {
                    return None;
                }
                let (ext, int) = f[2].split_once("->")?;
                Some((
                    ext.parse().ok()?,
                    int.to_owned(),
                    f[3].trim_matches('\'').to_owned(),
                    f.last()?.parse().ok()?,
                ))
            })
            .collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.prefix])
            .status();
    }
}

/// A `kad` process inside a namespace, reading its JSON lines; killed by PID when dropped.
struct NsProc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl NsProc {
    fn spawn(ns: &str, args: &[&str]) -> Self {
        // `ip netns exec` replaces itself with kad: the PID is kad's.
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, KAD])
            .args(args)
            .arg("--json")
            .env("RUST_LOG", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kad in a namespace");
        let lines = json_lines(&mut child);
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn until(&mut self, limit: Duration, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + limit;
        loop {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if want(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "{what}: not seen within {limit:?}; lines so far:\n{}",
                    self.seen
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    /// Ctrl-C, then every line until it exits.
    fn interrupt(&mut self) -> Vec<Value> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let mut rest = Vec::new();
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(20)) {
            rest.push(v);
        }
        let _ = self.child.wait();
        rest
    }
}

impl Drop for NsProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reach(v: &Value) -> (&str, &str) {
    (
        v["status"]["reachability"].as_str().unwrap_or(""),
        v["status"]["mode"].as_str().unwrap_or(""),
    )
}

/// A `nat` line whose gateway state holds a mapping advertised as `addr`.
fn has_mapping(v: &Value, addr: &str) -> bool {
    v["event"] == "nat"
        && v["gateway"]["mappings"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["advertised"] == addr))
}

/// `kad ping` from the WAN namespace: the id that answered, if any.
fn ping_from_wan(t: &Topology, addr: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns("wan"), KAD, "ping", addr])
        .args(["--count", "1", "--timeout", "3", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.lines().last()?).ok()?;
    (v["ok"] != false)
        .then(|| v["id"].as_str().map(str::to_owned))
        .flatten()
}

#[test]
fn netns_behind_a_real_upnp_gateway() {
    let t = Topology::up();
    let gw = t.var("WAN_GW").to_owned();
    let lan_ip = t.var("LAN_IP").to_owned();
    let peers: Vec<String> = t
        .var("WAN_PEERS")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(peers.len() >= 4, "{peers:?}");
    // The gateway's UPnP daemon is down at first: "no gateway".
    t.igd("stop-igd");

    // Four peers on the WAN side, on four IPs.
    let seed = format!("udp://{}:4000", peers[0]);
    let mut wan = Vec::new();
    for (i, ip) in peers.iter().enumerate() {
        let listen = format!("udp://{ip}:4000");
        let mut args = vec!["node", "--listen", &listen, "--for", "600"];
        if i > 0 {
            args.extend(["--bootstrap", &seed]);
        }
        let mut p = NsProc::spawn(&t.ns("wan"), &args);
        p.until(Duration::from_secs(20), "WAN node listening", |v| {
            v["event"] == "listening"
        });
        if i > 0 {
            p.until(Duration::from_secs(20), "WAN node joined", |v| {
                v["event"] == "bootstrapped"
            });
        }
        wan.push(p);
    }

    // 1. Behind the NAT, UPnP asked for but no gateway answering.
    let l1_listen = format!("udp://{lan_ip}:4100");
    let mut l1 = NsProc::spawn(
        &t.ns("lan"),
        &[
            "node",
            "--listen",
            &l1_listen,
            "--bootstrap",
            &seed,
            "--upnp",
            "--upnp-timeout",
            "1",
            "--for",
            "120",
        ],
    );
    let t0 = Instant::now();
    let no_gw = l1.until(Duration::from_secs(15), "a UPnP failure report", |v| {
        v["event"] == "nat" && v["gateway"]["last_error"].is_string()
    });
    let said_after = t0.elapsed();
    assert!(
        no_gw["gateway"]["last_error"]
            .as_str()
            .unwrap()
            .contains("gateway search"),
        "{no_gw}"
    );
    eprintln!("no gateway: reported after {said_after:?}: {no_gw}");
    // Peers still tell it where they see it (the NAT keeps its port), and the check finds it
    // unreachable: it runs as a client.
    let v = l1.until(Duration::from_secs(30), "unreachable verdict", |v| {
        v["event"] == "nat" && reach(v) == ("unreachable", "client")
    });
    eprintln!(
        "behind the NAT, no mapping: client {:?} after start",
        t0.elapsed()
    );
    let external = format!("udp://{gw}:4100");
    assert_eq!(v["status"]["external"], external.as_str(), "{v}");
    assert!(v["status"]["voters"].as_u64().unwrap() >= 3, "{v}");
    assert!(
        v["status"]["stats"]["checks_accepted"].as_u64().unwrap() >= 1,
        "{v}"
    );
    assert_eq!(
        ping_from_wan(&t, &external),
        None,
        "an unmapped port must not be reachable from the WAN"
    );
    let rest = l1.interrupt();
    assert!(
        rest.iter().any(|v| v["event"] == "stopped"),
        "l1 stops cleanly: {rest:?}"
    );

    // `kad nat status --bootstrap` finds the same with a short-lived node.
    let l3_listen = format!("udp://{lan_ip}:4300");
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns("lan"), KAD, "nat", "status"])
        .args([
            "--bootstrap",
            &seed,
            "--listen",
            &l3_listen,
            "--upnp-timeout",
            "1",
        ])
        .args(["--timeout", "20", "--json"])
        .output()
        .unwrap();
    let st: Value = serde_json::from_slice(&out.stdout).expect("kad nat status prints JSON");
    assert_eq!(st["gateway"]["found"], false, "{st}");
    assert_eq!(st["joined"], true, "{st}");
    assert_eq!(st["node"]["status"]["reachability"], "unreachable", "{st}");
    assert_eq!(
        st["node"]["status"]["external"],
        format!("udp://{gw}:4300").as_str(),
        "{st}"
    );

    // 2. The gateway is back: map, renew, reach, serve.
    t.igd("start-igd");
    let l2_listen = format!("udp://{lan_ip}:4200");
    let mut l2 = NsProc::spawn(
        &t.ns("lan"),
        &[
            "node",
            "--listen",
            &l2_listen,
            "--bootstrap",
            &seed,
            "--upnp",
            "--upnp-lease",
            "6",
            "--for",
            "180",
        ],
    );
    let listening = l2.until(Duration::from_secs(20), "listening", |v| {
        v["event"] == "listening"
    });
    let l2_id = listening["id"].as_str().unwrap().to_owned();
    let mapped_addr = format!("udp://{gw}:4200");
    let l2_start = Instant::now();
    let v = l2.until(Duration::from_secs(20), "the mapping", |v| {
        has_mapping(v, &mapped_addr)
    });
    assert_eq!(v["gateway"]["external_ip"], gw.as_str(), "{v}");
    let mapped_at = Instant::now();
    eprintln!("UPnP mapping {:?} after start", l2_start.elapsed());
    let listed = t.upnpc_list();
    let ours = listed
        .iter()
        .find(|(p, ..)| *p == 4200)
        .unwrap_or_else(|| panic!("upnpc -l does not list port 4200: {listed:?}"));
    assert_eq!(ours.1, format!("{lan_ip}:4200"));
    assert_eq!(ours.2, "kad");
    assert!(ours.3 <= 6, "lease asked was 6 s: {ours:?}");
    let v = l2.until(Duration::from_secs(30), "reachable verdict", |v| {
        v["event"] == "nat" && reach(v) == ("reachable", "server")
    });
    eprintln!(
        "mapped: reachable {:?} after the mapping; proof {}",
        mapped_at.elapsed(),
        v["status"]["proof"]
    );
    assert_eq!(v["status"]["checked"], mapped_addr.as_str(), "{v}");
    assert_eq!(v["status"]["advertised"][0], mapped_addr.as_str(), "{v}");
    // A peer in the WAN reaches it through the mapped port.
    assert_eq!(ping_from_wan(&t, &mapped_addr).as_deref(), Some(&*l2_id));
    // Renewed at half-life: still there after more than the 6 s lease.
    std::thread::sleep(Duration::from_secs(9).saturating_sub(mapped_at.elapsed()));
    let listed = t.upnpc_list();
    assert!(
        listed.iter().any(|(p, ..)| *p == 4200),
        "the mapping expired instead of being renewed: {listed:?}"
    );
    // `kad nat status` from the same LAN host sees the gateway and our mapping.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.ns("lan"),
            KAD,
            "nat",
            "status",
            "--json",
        ])
        .output()
        .unwrap();
    let st: Value = serde_json::from_slice(&out.stdout).expect("kad nat status prints JSON");
    assert_eq!(st["gateway"]["found"], true, "{st}");
    assert_eq!(st["gateway"]["external_ip"], gw.as_str(), "{st}");
    assert!(
        st["gateway"]["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| { m["external_port"] == 4200 && m["ours"] == true && m["protocol"] == "UDP" }),
        "{st}"
    );

    // 3. The gateway disappears (its rules with it): logged within seconds, node runs on.
    t.igd("stop-igd");
    let gone = Instant::now();
    let v = l2.until(Duration::from_secs(20), "the lost gateway", |v| {
        v["event"] == "nat" && v["gateway"]["last_error"].is_string()
    });
    eprintln!("gateway gone: reported after {:?}: {v}", gone.elapsed());
    // ... and comes back: the node maps again on its own.
    t.igd("start-igd");
    let back = Instant::now();
    l2.until(Duration::from_secs(40), "the mapping again", |v| {
        has_mapping(v, &mapped_addr)
    });
    eprintln!(
        "mapped again {:?} after the gateway came back",
        back.elapsed()
    );
    assert!(t.upnpc_list().iter().any(|(p, ..)| *p == 4200));

    // 4. Stopping removes the mapping.
    let rest = l2.interrupt();
    let stopped = rest
        .iter()
        .find(|v| v["event"] == "nat_stopped")
        .unwrap_or_else(|| panic!("no nat_stopped line: {rest:?}"));
    assert_eq!(stopped["mappings_removed"], true, "{stopped}");
    let listed = t.upnpc_list();
    assert!(
        !listed.iter().any(|(p, ..)| *p == 4200),
        "the mapping outlived the node: {listed:?}"
    );
    drop(wan);
}
