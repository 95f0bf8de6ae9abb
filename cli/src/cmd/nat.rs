//! NAT traversal in the CLI: `kad node --upnp` and `kad nat status`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kad_plugin_nat::{Nat, NatConfig, NatReport, Reachability, UpnpConfig};
use serde_json::json;

use crate::net::{emit, flag_error, listening};
use crate::transports::parse_addrs;

/// NAT flags of `kad node`.
#[derive(Args, Debug, Clone)]
pub(crate) struct NatArgs {
    /// Map the listening ports on the UPnP gateway (UDP for udp:// and quic://, TCP for ws://),
    /// advertise the mapped external addresses, renew the leases at half-life and remove the
    /// mappings when stopping. Without a gateway the node runs on and retries with backoff.
    #[arg(long)]
    pub(crate) upnp: bool,
    /// Lease asked for each UPnP mapping, in seconds (renewed at half of it).
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub(crate) upnp_lease: u64,
    /// How long the UPnP gateway search waits, in seconds.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub(crate) upnp_timeout: f64,
    /// Keep serving (others add this node to their tables) even when reachability checks say
    /// peers cannot reach it. By default an unreachable node runs as a client (read-only) and
    /// switches back to server when a check succeeds.
    #[arg(long)]
    pub(crate) stay_server: bool,
}

impl NatArgs {
    pub(crate) fn upnp_config(&self) -> Result<Option<UpnpConfig>> {
        if !self.upnp {
            return Ok(None);
        }
        upnp_config(self.upnp_lease, self.upnp_timeout).map(Some)
    }

    pub(crate) fn plugin_config(&self) -> NatConfig {
        let mut c = NatConfig::default();
        c.serve_probes = true;
        c.client_when_unreachable = !self.stay_server;
        c
    }
}

fn upnp_config(lease: u64, timeout: f64) -> Result<UpnpConfig> {
    if !(2..=604_800).contains(&lease) {
        bail!(
            "--upnp-lease = {lease} is out of range: 2 to 604800 seconds (7 days, the IGDv2 maximum)"
        );
    }
    if !(0.1..=60.0).contains(&timeout) {
        bail!("--upnp-timeout = {timeout} is out of range: 0.1 to 60 seconds");
    }
    let mut c = UpnpConfig::default();
    c.lease = Duration::from_secs(lease);
    c.search_timeout = Duration::from_secs_f64(timeout);
    Ok(c)
}

fn reach_word(r: Reachability) -> &'static str {
    match r {
        Reachability::Unknown => "unknown",
        Reachability::Direct => "direct (no NAT seen)",
        Reachability::Reachable => "reachable",
        Reachability::Unreachable => "unreachable",
    }
}

fn report_json(r: &NatReport) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["event"] = json!("nat");
    v
}

fn report_text(r: &NatReport) -> String {
    let mut out = String::from("nat:");
    if let Some(s) = &r.status {
        out += &format!(
            " {} ({}), external {}, advertising {}",
            reach_word(s.reachability),
            s.mode,
            s.external
                .as_ref()
                .map_or("unknown".into(), ToString::to_string),
            s.advertised
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if r.upnp {
        match &r.gateway {
            Some(g) if g.gateway.is_some() => {
                out += &format!(
                    "; UPnP gateway {}, external IP {}, mapped {}",
                    g.gateway.map_or(String::new(), |a| a.to_string()),
                    g.external_ip.map_or("?".into(), |a| a.to_string()),
                    g.mappings
                        .iter()
                        .map(|m| format!(
                            "{} -> {} ({} s lease)",
                            m.advertised, m.internal, m.lease_secs
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Some(g) => {
                out += &format!("; UPnP: {}", g.last_error.as_deref().unwrap_or("searching"));
            }
            None => out += "; UPnP: searching",
        }
    }
    out
}

/// Prints a `nat` line whenever the reachability, the addresses or the mappings change.
pub(crate) fn print_changes(nat: &Nat, json_out: bool) {
    let mut rx = nat.watch();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let r = rx.borrow_and_update().clone();
            if r.status.is_none() && r.gateway.is_none() {
                continue;
            }
            emit(json_out, &report_json(&r), || report_text(&r));
        }
    });
}

/// Removes the mappings and says so.
pub(crate) async fn stop(nat: Nat, json_out: bool) {
    let upnp = nat.watch().borrow().upnp;
    let errors = nat.shutdown().await;
    if upnp {
        emit(
            json_out,
            &json!({"event": "nat_stopped", "mappings_removed": errors.is_empty(), "errors": errors}),
            || {
                if errors.is_empty() {
                    "nat: UPnP mappings removed".into()
                } else {
                    format!(
                        "nat: some UPnP mappings were not removed (they expire with their lease): {}",
                        errors.join("; ")
                    )
                }
            },
        );
    }
}

/// `kad nat` commands.
#[derive(Subcommand, Debug)]
pub(crate) enum NatCommand {
    /// Report the UPnP gateway, its external IP and its port mappings (ours are those whose
    /// description starts with "kad"); with --bootstrap, also join the network with a short-lived
    /// node and report the external address peers see and whether they can reach it.
    Status(StatusArgs),
}

impl NatCommand {
    pub(crate) fn json(&self) -> bool {
        match self {
            Self::Status(a) => a.json,
        }
    }
}

/// `kad nat status` flags.
#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Nodes to join through (any transport URI), comma-separated or repeated. Without it only
    /// the gateway is asked.
    #[arg(long, value_name = "ADDRS")]
    bootstrap: Vec<String>,
    /// Where the short-lived node listens (with --bootstrap).
    #[arg(long, default_value = "udp://0.0.0.0:0", value_name = "ADDR")]
    listen: String,
    /// Map the short-lived node's port on the gateway while checking (removed afterwards).
    #[arg(long)]
    upnp: bool,
    /// How long the UPnP gateway search waits, in seconds.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    upnp_timeout: f64,
    /// Longest wait for the reachability verdict, in seconds (with --bootstrap).
    #[arg(long, default_value_t = 20.0, value_name = "SECONDS")]
    timeout: f64,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn run(cmd: NatCommand) -> Result<()> {
    let NatCommand::Status(a) = cmd;
    crate::check_range("timeout", a.timeout, 0.5, 600.0)?;
    let cfg = upnp_config(3600, a.upnp_timeout)?;
    let t0 = Instant::now();
    let gateway = match kad_plugin_nat::survey(&cfg).await {
        Ok(s) => {
            let entries: Vec<serde_json::Value> = s
                .entries
                .iter()
                .map(|e| {
                    let mut v = serde_json::to_value(e).unwrap_or_default();
                    v["ours"] = json!(e.description.starts_with(&cfg.description));
                    v
                })
                .collect();
            json!({"found": true, "address": s.gateway, "external_ip": s.external_ip, "mappings": entries})
        }
        Err(e) => json!({"found": false, "error": e}),
    };
    let mut out = json!({"ok": true, "gateway": gateway});
    if !a.bootstrap.is_empty() {
        let seeds = parse_addrs("--bootstrap", &a.bootstrap)?;
        let listen = parse_addrs("--listen", std::slice::from_ref(&a.listen))?;
        let mut nc = NatConfig::default();
        nc.serve_probes = true;
        nc.retry_unknown = Duration::from_secs(2);
        // The NAT runtime maps the ports the transports listen on.
        let mut node = listening(kad::NativeNode::builder().pubsub(), &listen)
            .nat(nc, a.upnp.then(|| cfg.clone()))
            .build()
            .await
            .map_err(flag_error)?;
        let nat = node.take_nat().context("the NAT runtime")?;
        let dht = node.dht().clone();
        let joined = dht.bootstrap(seeds).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.timeout);
        let mut rx = nat.watch();
        let mut last = nat.report().await;
        loop {
            let done = last.status.as_ref().is_some_and(|s| {
                s.reachability != Reachability::Unknown || (s.external.is_none() && s.voters >= 3)
            });
            if done {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => last = rx.borrow_and_update().clone(),
                _ => break,
            }
        }
        last = nat.report().await;
        let _ = nat.shutdown().await;
        dht.shutdown().await;
        out["joined"] = json!(joined.is_ok());
        out["node"] = serde_json::to_value(&last).unwrap_or_default();
    }
    out["elapsed_ms"] = json!(t0.elapsed().as_secs_f64() * 1000.0);
    emit(a.json, &out, || {
        let g = &out["gateway"];
        let mut s = if g["found"] == json!(true) {
            let maps: Vec<String> = g["mappings"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    format!(
                        "  {} {} -> {}:{} '{}' lease {} s{}",
                        m["protocol"].as_str().unwrap_or(""),
                        m["external_port"],
                        m["internal_client"].as_str().unwrap_or(""),
                        m["internal_port"],
                        m["description"].as_str().unwrap_or(""),
                        m["lease_secs"],
                        if m["ours"] == json!(true) {
                            " (ours)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            format!(
                "gateway {} external IP {}, {} mappings\n{}",
                g["address"].as_str().unwrap_or(""),
                g["external_ip"].as_str().unwrap_or(""),
                maps.len(),
                maps.join("\n")
            )
        } else {
            format!(
                "no UPnP gateway: {}",
                g["error"].as_str().unwrap_or("not found")
            )
        };
        if let Some(node) = out.get("node") {
            if let Ok(r) = serde_json::from_value::<NatReport>(node.clone()) {
                s += &format!("\n{}", report_text(&r));
            }
        }
        s
    });
    Ok(())
}
