//! The engine side of NAT traversal (sans-IO): the external-address vote, the reachability check
//! and the client/server switch. Sockets and the gateway live in [`crate::Nat`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kad_core::{
    Contact, NodeId, PeerAddr, Plugin, PluginCx, PluginData, PluginResponse, QueryError, QueryId,
    Reply, Request, RequestId, RpcError,
};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::vote::{AddrVote, is_global};

/// Method names (PROTOCOL.md section 5.3).
pub const CHECK: &str = "nat.CHECK";
/// Asks a third node to probe the requester (sent by the node that got `nat.CHECK`).
pub const DIAL: &str = "nat.DIAL";
/// The unsolicited probe itself, sent from a fresh port.
pub const PROBE: &str = "nat.PROBE";

/// Tunables of [`NatPlugin`], every default documented.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatConfig {
    /// Distinct peer IPs that must report the same external address before it is adopted.
    /// Default 3.
    pub min_votes: usize,
    /// Voters remembered (newest kept). Default 32.
    pub max_voters: usize,
    /// Peers asked per reachability check. Default 3.
    pub check_helpers: usize,
    /// How long a check waits for a probe. Default 5 s.
    pub probe_timeout: Duration,
    /// Next check after a positive verdict. Default 10 min.
    pub recheck_reachable: Duration,
    /// Next check after a negative verdict. Default 2 min.
    pub recheck_unreachable: Duration,
    /// Next check when no peer could help. Default 30 s.
    pub retry_unknown: Duration,
    /// Run as a client (read-only: others don't add us) while not reachable. Default true.
    pub client_when_unreachable: bool,
    /// Send probes for other nodes (needs [`crate::Nat`] running beside the node, which sends
    /// them from a fresh socket). Default false; [`crate::Nat::spawn`] requires it.
    pub serve_probes: bool,
    /// Checks and dials served per requester IP: one per this interval, bursts of 3. Default 2 s.
    pub per_ip_interval: Duration,
    /// Probes sent for others, per second, all requesters together (bursts of twice that).
    /// Default 10.
    pub max_probes_per_sec: u32,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            min_votes: 3,
            max_voters: 32,
            check_helpers: 3,
            probe_timeout: Duration::from_secs(5),
            recheck_reachable: Duration::from_secs(600),
            recheck_unreachable: Duration::from_secs(120),
            retry_unknown: Duration::from_secs(30),
            client_when_unreachable: true,
            serve_probes: false,
            per_ip_interval: Duration::from_secs(2),
            max_probes_per_sec: 10,
        }
    }
}

/// What the node knows about being reachable from the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// Not known yet (no external address, or no peer could check).
    Unknown,
    /// Peers see us at an address we listen on: no NAT in the way.
    Direct,
    /// A peer we never sent anything to reached our external address.
    Reachable,
    /// Peers probed our external address and nothing arrived.
    Unreachable,
}

/// Counters of the NAT plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatStats {
    /// Checks this node started.
    pub checks_started: u64,
    /// Helpers that accepted one of our checks (they probe us).
    pub checks_accepted: u64,
    /// Probes that proved reachability.
    pub probes_proving: u64,
    /// Probes from an address we had sent to lately (a NAT lets those in): no proof.
    pub probes_inconclusive: u64,
    /// Probes with no check of ours behind them.
    pub probes_unsolicited: u64,
    /// `nat.CHECK` requests served for others.
    pub checks_served: u64,
    /// `nat.DIAL` requests served for others.
    pub dials_served: u64,
    /// Requests refused (rate limit, address not the requester's, no prober here).
    pub refused: u64,
    /// Requests whose parameters did not parse.
    pub malformed: u64,
}

/// The plugin's view, as `{"op":"status"}` returns it and the `status` event carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatStatus {
    /// Reachability verdict.
    pub reachability: Reachability,
    /// `server` (others add us) or `client` (read-only).
    pub mode: String,
    /// The external address a majority of peers report, if any.
    pub external: Option<PeerAddr>,
    /// Distinct peer IPs that reported an address.
    pub voters: usize,
    /// External addresses mapped on the gateway (UPnP).
    pub mapped: Vec<PeerAddr>,
    /// The addresses this node advertises now.
    pub advertised: Vec<PeerAddr>,
    /// The address the last check was about.
    pub checked: Option<PeerAddr>,
    /// When the last check ended (Unix ms).
    pub checked_at_ms: Option<u64>,
    /// What proved the last positive verdict: `stranger_ip` (a probe from an IP we never sent
    /// to: proof behind any NAT) or `new_port` (a fresh port of an IP we talk to: proof behind
    /// port-restricted and symmetric NATs, not behind address-restricted ones).
    pub proof: Option<String>,
    /// Counters.
    pub stats: NatStats,
}

/// A probe the runtime must send (the `probe` event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeOrder {
    /// Where to send it.
    pub to: PeerAddr,
    /// The node that must be there.
    pub id: NodeId,
    /// The nonce of its check.
    pub nonce: String,
}

#[derive(Serialize, Deserialize)]
struct CheckParams {
    addr: PeerAddr,
    nonce: String,
}

#[derive(Serialize, Deserialize)]
struct DialParams {
    id: NodeId,
    addr: PeerAddr,
    nonce: String,
}

#[derive(Serialize, Deserialize)]
struct ProbeParams {
    nonce: String,
}

/// A command for [`NatPlugin`], given through `Dht::command("nat", PluginData::new(command))`;
/// each answers the [`NatStatus`] after it. The [`Nat`](crate::Nat) runtime and
/// [`status`](crate::status) build these.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatCommand {
    /// Only the status.
    Status,
    /// The addresses a gateway maps to this node (UPnP), advertised first and checked.
    Mapped {
        /// The mapped addresses.
        addrs: Vec<PeerAddr>,
    },
    /// Run a reachability check now.
    Check,
}

#[derive(Debug)]
struct Check {
    nonce: String,
    addr: PeerAddr,
    deadline: Instant,
    requests: Vec<RequestId>,
    accepted: usize,
    proof: Option<&'static str>,
}

/// Per-IP and global token buckets, bounded.
#[derive(Debug)]
struct Limiter {
    per_ip: HashMap<IpAddr, (f64, Instant)>,
    global: (f64, Instant),
}

impl Limiter {
    const MAX_IPS: usize = 4096;
    const BURST: f64 = 3.0;

    fn new(now: Instant, rate: u32) -> Self {
        Self {
            per_ip: HashMap::new(),
            global: (2.0 * f64::from(rate), now),
        }
    }

    fn take(bucket: &mut (f64, Instant), now: Instant, per_sec: f64, burst: f64) -> bool {
        let dt = now.saturating_duration_since(bucket.1).as_secs_f64();
        bucket.0 = (bucket.0 + dt * per_sec).min(burst);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }

    fn allow(&mut self, now: Instant, ip: IpAddr, cfg: &NatConfig, probe: bool) -> bool {
        if self.per_ip.len() >= Self::MAX_IPS && !self.per_ip.contains_key(&ip) {
            let interval = cfg.per_ip_interval.mul_f64(Self::BURST);
            self.per_ip
                .retain(|_, (_, t)| now.saturating_duration_since(*t) < interval);
            if self.per_ip.len() >= Self::MAX_IPS {
                return false;
            }
        }
        let per_sec = 1.0 / cfg.per_ip_interval.as_secs_f64().max(0.001);
        let b = self.per_ip.entry(ip).or_insert((Self::BURST, now));
        if !Self::take(b, now, per_sec, Self::BURST) {
            return false;
        }
        let rate = f64::from(cfg.max_probes_per_sec.max(1));
        !probe || Self::take(&mut self.global, now, rate, 2.0 * rate)
    }
}

/// NAT traversal inside the engine: votes on the external address from the `seen`/`ip` field of
/// answers, checks reachability by asking peers to probe that address from a fresh port, runs
/// the node as a client while it is unreachable, and advertises mapped or observed addresses.
#[derive(Debug)]
pub struct NatPlugin {
    cfg: NatConfig,
    listen: Option<Vec<PeerAddr>>,
    mapped: Vec<PeerAddr>,
    vote4: AddrVote,
    vote6: AddrVote,
    external: Option<SocketAddr>,
    /// Helpers that accepted checks which brought no probe, since the last verdict.
    misses: usize,
    /// Checks in a row that no helper accepted (backs the retry off).
    unhelped: u32,
    proof: Option<&'static str>,
    reach: Reachability,
    we_set_ro: bool,
    check: Option<Check>,
    next_check: Option<Instant>,
    checked: Option<PeerAddr>,
    checked_at_ms: Option<u64>,
    src: Option<PeerAddr>,
    limiter: Option<Limiter>,
    stats: NatStats,
    dirty: bool,
}

impl NatPlugin {
    /// A plugin with `cfg`.
    pub fn new(cfg: NatConfig) -> Self {
        Self {
            vote4: AddrVote::new(cfg.max_voters, cfg.min_votes),
            vote6: AddrVote::new(cfg.max_voters, cfg.min_votes),
            misses: 0,
            unhelped: 0,
            proof: None,
            cfg,
            listen: None,
            mapped: Vec::new(),
            external: None,
            reach: Reachability::Unknown,
            we_set_ro: false,
            check: None,
            next_check: None,
            checked: None,
            checked_at_ms: None,
            src: None,
            limiter: None,
            stats: NatStats::default(),
            dirty: false,
        }
    }

    fn init(&mut self, cx: &PluginCx<'_>) {
        if self.listen.is_none() {
            self.listen = Some(cx.local().addrs.to_vec());
        }
        if self.limiter.is_none() {
            self.limiter = Some(Limiter::new(cx.now(), self.cfg.max_probes_per_sec));
        }
    }

    fn listen(&self) -> &[PeerAddr] {
        self.listen.as_deref().unwrap_or(&[])
    }

    /// Whether the voted external address is one we listen on (no translation in the way).
    fn is_direct(&self) -> bool {
        self.external
            .is_some_and(|e| self.listen().contains(&PeerAddr::Udp(e)))
    }

    /// Mapped addresses that can work: on the IP peers see us at (behind a second NAT, or a
    /// carrier-grade one, the gateway's "external" IP is not ours on the internet).
    fn usable_mapped(&self) -> impl Iterator<Item = &PeerAddr> {
        self.mapped
            .iter()
            .filter(|a| match (a.socket_addr(), self.external) {
                (Some(m), Some(e)) => m.ip() == e.ip(),
                _ => true,
            })
    }

    /// The address a check is about: a mapped UDP address, else the voted one behind a NAT.
    fn candidate(&self) -> Option<PeerAddr> {
        self.usable_mapped()
            .find(|a| matches!(a, PeerAddr::Udp(_)))
            .cloned()
            .or_else(|| {
                self.external
                    .filter(|_| !self.is_direct())
                    .map(PeerAddr::Udp)
            })
    }

    fn advertised(&self) -> Vec<PeerAddr> {
        let mut out: Vec<PeerAddr> = Vec::new();
        let mut push = |a: PeerAddr| {
            if !out.contains(&a) {
                out.push(a);
            }
        };
        for a in self.usable_mapped() {
            push(a.clone());
        }
        // A port-preserving NAT: the observed address may work without a mapping, and costs
        // nothing to advertise; the check decides whether the node serves.
        if let Some(e) = self.external.filter(|_| !self.is_direct()) {
            push(PeerAddr::Udp(e));
        }
        for a in self.listen() {
            push(a.clone());
        }
        out
    }

    /// The current status.
    pub fn status(&self, read_only: bool, advertised: &[PeerAddr]) -> NatStatus {
        NatStatus {
            reachability: self.reach,
            mode: if read_only { "client" } else { "server" }.into(),
            external: self.external.map(PeerAddr::Udp),
            voters: self.vote4.voters() + self.vote6.voters(),
            mapped: self.mapped.clone(),
            advertised: advertised.to_vec(),
            checked: self.checked.clone(),
            checked_at_ms: self.checked_at_ms,
            proof: self.proof.map(str::to_owned),
            stats: self.stats.clone(),
        }
    }

    /// Applies addresses, mode and the status event after a change.
    fn settle(&mut self, cx: &mut PluginCx<'_>) {
        let adv = self.advertised();
        if !adv.is_empty() && *adv != *cx.local().addrs {
            cx.set_local_addrs(adv.clone());
            self.dirty = true;
        }
        let mut read_only = cx.read_only();
        match self.reach {
            Reachability::Reachable | Reachability::Direct | Reachability::Unknown
                if read_only && self.we_set_ro =>
            {
                cx.set_read_only(false);
                self.we_set_ro = false;
                read_only = false;
                self.dirty = true;
            }
            Reachability::Unreachable if self.cfg.client_when_unreachable && !read_only => {
                cx.set_read_only(true);
                self.we_set_ro = true;
                read_only = true;
                self.dirty = true;
            }
            _ => {}
        }
        if std::mem::take(&mut self.dirty) {
            let st = self.status(read_only, &adv);
            tracing::info!(
                reachability = ?st.reachability,
                mode = %st.mode,
                external = ?st.external,
                advertised = ?st.advertised,
                "nat status"
            );
            cx.emit("status", PluginData::new(st));
        }
    }

    fn start_check(&mut self, cx: &mut PluginCx<'_>) {
        let Some(addr) = self.candidate() else {
            self.next_check = None;
            return;
        };
        let mut target = [0u8; 20];
        cx.rng().fill_bytes(&mut target);
        let ours = addr.socket_addr().map(|s| s.ip());
        let mut ips = Vec::new();
        let mut helpers = Vec::new();
        for c in cx.closest(&NodeId::from_bytes(target), 4 * cx.k()) {
            // Over UDP whatever the transport preference: the helper must see our UDP source.
            let Some(udp) = udp_only(&c) else { continue };
            let ip = udp.addrs[0].socket_addr().map(|s| s.ip());
            if ip == ours || ips.contains(&ip) {
                continue;
            }
            ips.push(ip);
            helpers.push(udp);
            if helpers.len() >= self.cfg.check_helpers {
                break;
            }
        }
        if helpers.is_empty() {
            self.next_check = Some(cx.now() + self.unknown_wait());
            return;
        }
        let nonce = format!("{:016x}", cx.rng().next_u64());
        let params = serde_json::to_vec(&CheckParams {
            addr: addr.clone(),
            nonce: nonce.clone(),
        })
        .unwrap_or_default();
        let requests = helpers
            .into_iter()
            .map(|h| cx.send_request(h, CHECK, Bytes::from(params.clone())))
            .collect();
        self.stats.checks_started += 1;
        tracing::debug!(%addr, "nat: reachability check");
        self.check = Some(Check {
            nonce,
            addr,
            deadline: cx.now() + self.cfg.probe_timeout,
            requests,
            accepted: 0,
            proof: None,
        });
        self.next_check = None;
    }

    fn finish_check(&mut self, cx: &mut PluginCx<'_>) {
        let Some(check) = self.check.take() else {
            return;
        };
        self.misses += check.accepted;
        let (reach, again) = if check.proof.is_some() {
            self.misses = 0;
            self.unhelped = 0;
            self.proof = check.proof;
            (Reachability::Reachable, self.cfg.recheck_reachable)
        } else if self.misses >= 2 {
            // Two helpers (in one check or two) probed and nothing came: one lost datagram or
            // one helper that says yes and does nothing is not enough.
            self.misses = 0;
            self.unhelped = 0;
            self.proof = None;
            (Reachability::Unreachable, self.cfg.recheck_unreachable)
        } else if check.accepted > 0 {
            (self.reach, Duration::from_millis(500))
        } else {
            self.unhelped = self.unhelped.saturating_add(1);
            (self.reach, self.unknown_wait())
        };
        if reach != self.reach || self.checked.as_ref() != Some(&check.addr) {
            self.dirty = true;
        }
        self.reach = reach;
        self.checked = Some(check.addr);
        self.checked_at_ms = Some(cx.unix_ms());
        self.next_check = Some(cx.now() + again);
    }

    /// The wait before retrying a check no helper took: `retry_unknown`, doubling up to 10 min
    /// (a network whose peers don't speak `nat.*`, such as Mainline, is not asked forever).
    fn unknown_wait(&self) -> Duration {
        self.cfg
            .retry_unknown
            .saturating_mul(1 << self.unhelped.min(5))
            .min(Duration::from_secs(600))
    }

    /// Whether probes may go to `target`: never port 0, multicast, broadcast or unspecified;
    /// private and loopback targets only when this node itself is on such a network.
    fn dialable(&self, target: SocketAddr) -> bool {
        let ip = target.ip();
        let special = match ip {
            IpAddr::V4(v) => v.is_multicast() || v.is_broadcast() || v.is_unspecified(),
            IpAddr::V6(v) => v.is_multicast() || v.is_unspecified(),
        };
        let we_are_global = self
            .listen()
            .iter()
            .filter_map(PeerAddr::socket_addr)
            .any(|a| is_global(a.ip()));
        target.port() != 0 && !special && (is_global(ip) || !we_are_global)
    }

    /// Re-evaluates after the external address or the mappings changed.
    fn addresses_changed(&mut self, cx: &mut PluginCx<'_>) {
        self.dirty = true;
        if self.is_direct() && self.mapped.is_empty() {
            self.reach = Reachability::Direct;
            self.check = None;
            self.next_check = None;
        } else if self.candidate().is_some() {
            if matches!(self.reach, Reachability::Direct) {
                self.reach = Reachability::Unknown;
            }
            self.check = None;
            self.misses = 0;
            self.unhelped = 0;
            self.next_check = Some(cx.now());
        } else {
            self.reach = Reachability::Unknown;
            self.check = None;
            self.next_check = None;
        }
    }

    /// One more probe for `ip` (its /64 for IPv6), within the per-IP and global limits.
    fn admit(&mut self, now: Instant, ip: IpAddr) -> bool {
        let cfg = &self.cfg;
        self.limiter
            .as_mut()
            .is_some_and(|l| l.allow(now, limit_key(ip), cfg, true))
    }

    fn refuse(&mut self, why: &str) -> Reply {
        self.stats.refused += 1;
        Reply::Error(RpcError::new(RpcError::REFUSED, why))
    }

    fn bad_params(&mut self, what: &str) -> Reply {
        self.stats.malformed += 1;
        Reply::Error(RpcError::new(RpcError::INVALID_PARAMS, what))
    }

    fn probe(&mut self, cx: &mut PluginCx<'_>, order: &ProbeOrder) {
        cx.emit("probe", PluginData::new(order.clone()));
    }

    fn ok() -> Reply {
        Reply::Result(Bytes::from_static(b"{\"ok\":true}"))
    }

    fn on_check(
        &mut self,
        cx: &mut PluginCx<'_>,
        from: &Contact,
        src: Option<SocketAddr>,
        params: &Bytes,
    ) -> Reply {
        let Ok(p) = serde_json::from_slice::<CheckParams>(params) else {
            return self.bad_params("nat.CHECK takes {addr, nonce}");
        };
        let (Some(src), PeerAddr::Udp(target)) = (src, &p.addr) else {
            return self.refuse("nat.CHECK: only UDP addresses are checked");
        };
        if target.ip() != src.ip() || p.nonce.len() > 32 || !self.dialable(*target) {
            // Never a tool to aim packets at someone else.
            return self.refuse("nat.CHECK: addr must have the IP you send from");
        }
        if !self.cfg.serve_probes {
            return self.refuse("nat.CHECK: this node sends no probes");
        }
        if !self.admit(cx.now(), src.ip()) {
            return self.refuse("nat.CHECK: rate limited");
        }
        self.stats.checks_served += 1;
        let order = ProbeOrder {
            to: p.addr.clone(),
            id: from.id,
            nonce: p.nonce.clone(),
        };
        self.probe(cx, &order);
        // A third node on another IP probes too: behind an address-restricted NAT only a
        // stranger's IP proves anything.
        let mut target = [0u8; 20];
        cx.rng().fill_bytes(&mut target);
        let others: Vec<Contact> = cx
            .closest(&NodeId::from_bytes(target), 16)
            .into_iter()
            .filter(|c| {
                c.id != from.id
                    && c.addrs
                        .iter()
                        .filter_map(PeerAddr::socket_addr)
                        .all(|a| a.ip() != src.ip())
            })
            .collect();
        let others: Vec<Contact> = others.iter().filter_map(udp_only).collect();
        if !others.is_empty() {
            let i = cx.rng().random_range(0..others.len());
            let params = serde_json::to_vec(&DialParams {
                id: from.id,
                addr: p.addr,
                nonce: p.nonce,
            })
            .unwrap_or_default();
            cx.send_request(others[i].clone(), DIAL, Bytes::from(params));
        }
        Self::ok()
    }

    fn on_dial(&mut self, cx: &mut PluginCx<'_>, src: Option<SocketAddr>, params: &Bytes) -> Reply {
        let Ok(p) = serde_json::from_slice::<DialParams>(params) else {
            return self.bad_params("nat.DIAL takes {id, addr, nonce}");
        };
        let PeerAddr::Udp(target) = p.addr else {
            return self.refuse("nat.DIAL: only UDP addresses are probed");
        };
        if !self.cfg.serve_probes || src.is_none() || p.nonce.len() > 32 {
            return self.refuse("nat.DIAL: this node sends no probes");
        }
        if !self.dialable(target) {
            return self.refuse("nat.DIAL: not an address probes go to");
        }
        // Limited per target: a liar can aim one small probe per interval at an address.
        if !self.admit(cx.now(), target.ip()) {
            return self.refuse("nat.DIAL: rate limited");
        }
        self.stats.dials_served += 1;
        self.probe(
            cx,
            &ProbeOrder {
                to: p.addr,
                id: p.id,
                nonce: p.nonce,
            },
        );
        Self::ok()
    }

    fn on_probe(
        &mut self,
        cx: &mut PluginCx<'_>,
        src: Option<SocketAddr>,
        params: &Bytes,
    ) -> Reply {
        let Ok(p) = serde_json::from_slice::<ProbeParams>(params) else {
            return self.bad_params("nat.PROBE takes {nonce}");
        };
        let Some(check) = self.check.as_mut().filter(|c| c.nonce == p.nonce) else {
            self.stats.probes_unsolicited += 1;
            return Reply::Drop;
        };
        match src {
            Some(s) if !cx.sent_to_recently(s) => {
                self.stats.probes_proving += 1;
                check.proof = Some(if cx.sent_to_ip_recently(s.ip()) {
                    "new_port"
                } else {
                    "stranger_ip"
                });
                self.finish_check(cx);
                self.settle(cx);
            }
            _ => self.stats.probes_inconclusive += 1,
        }
        // No answer: the prober's throwaway socket is gone by now.
        Reply::Drop
    }
}

/// The contact with its UDP address only (requests to it then go over UDP).
fn udp_only(c: &Contact) -> Option<Contact> {
    let a = c.addrs.iter().find(|a| matches!(a, PeerAddr::Udp(_)))?;
    Some(Contact::new(c.id, a.clone()))
}

/// The rate-limit key of an IP: itself for IPv4, its /64 for IPv6 (one host gets a whole /64).
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v) => {
            let mut o = v.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
    }
}

impl Plugin for NatPlugin {
    fn namespace(&self) -> &'static str {
        "nat"
    }

    fn allow(&mut self, from: &PeerAddr, _sender: &Contact, request: &Request) -> bool {
        if let Request::Custom { method, .. } = request {
            if method.starts_with("nat.") {
                self.src = Some(from.clone());
            }
        }
        true
    }

    fn on_request(
        &mut self,
        cx: &mut PluginCx<'_>,
        from: &Contact,
        method: &str,
        params: &Bytes,
    ) -> Reply {
        self.init(cx);
        let src = self.src.take().and_then(|a| match a {
            PeerAddr::Udp(s) => Some(s),
            _ => None,
        });
        match method {
            CHECK => self.on_check(cx, from, src, params),
            DIAL => self.on_dial(cx, src, params),
            PROBE => self.on_probe(cx, src, params),
            _ => Reply::Error(RpcError::new(
                RpcError::METHOD_NOT_FOUND,
                format!("unknown method {method}"),
            )),
        }
    }

    fn on_response(&mut self, cx: &mut PluginCx<'_>, id: RequestId, response: PluginResponse) {
        self.init(cx);
        if let Some(check) = self.check.as_mut().filter(|c| c.requests.contains(&id)) {
            if matches!(response, PluginResponse::Ok { .. }) {
                check.accepted += 1;
                self.stats.checks_accepted += 1;
            }
        }
    }

    fn on_observed(
        &mut self,
        cx: &mut PluginCx<'_>,
        _responder: &Contact,
        from: &PeerAddr,
        observed: &PeerAddr,
    ) {
        self.init(cx);
        let (PeerAddr::Udp(seen), Some(voter)) = (observed, from.socket_addr()) else {
            return;
        };
        // One vote per family: IPv6 peers see our IPv6 address, which says nothing about IPv4.
        match seen {
            SocketAddr::V4(_) => self.vote4.vote(voter.ip(), *seen),
            SocketAddr::V6(_) => self.vote6.vote(voter.ip(), *seen),
        }
        let winner = self.vote4.winner().or_else(|| self.vote6.winner());
        if winner.is_some() && winner != self.external {
            self.external = winner;
            self.addresses_changed(cx);
            self.settle(cx);
        }
    }

    fn on_command(&mut self, cx: &mut PluginCx<'_>, query: QueryId, input: PluginData) {
        self.init(cx);
        let cmd = match input.downcast_ref::<NatCommand>() {
            Some(c) => c.clone(),
            None => {
                let msg = format!(
                    "nat command: expected a kad_plugin_nat::NatCommand, got {}",
                    input.type_name()
                );
                cx.complete(
                    query,
                    Err(QueryError::Remote(RpcError::new(
                        RpcError::INVALID_PARAMS,
                        msg,
                    ))),
                );
                return;
            }
        };
        match cmd {
            NatCommand::Status => {}
            NatCommand::Mapped { addrs } => {
                if addrs != self.mapped {
                    self.mapped = addrs.into_iter().take(16).collect();
                    self.addresses_changed(cx);
                }
                self.settle(cx);
            }
            NatCommand::Check => {
                self.check = None;
                self.next_check = Some(cx.now());
            }
        }
        let adv = self.advertised();
        let st = self.status(cx.read_only(), &adv);
        cx.complete(query, Ok(PluginData::new(st)));
    }

    fn on_timeout(&mut self, cx: &mut PluginCx<'_>) {
        self.init(cx);
        let now = cx.now();
        if self.check.as_ref().is_some_and(|c| now >= c.deadline) {
            self.finish_check(cx);
        }
        if self.check.is_none() && self.next_check.is_some_and(|t| now >= t) {
            self.start_check(cx);
        }
        self.settle(cx);
    }

    fn next_timeout(&self) -> Option<Instant> {
        match &self.check {
            Some(c) => Some(c.deadline),
            None => self.next_check,
        }
    }
}
