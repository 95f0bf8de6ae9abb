//! UPnP IGD port mapping with igd-next: find the gateway, read its external IP, map each
//! listening port, renew at half-life, remove on shutdown.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{AddAnyPortError, AddPortError, PortMappingProtocol, SearchOptions};
use kad_core::PeerAddr;
use serde::{Deserialize, Serialize};

/// Settings of the UPnP port mapper.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpnpConfig {
    /// How long the SSDP search waits for a gateway. Default 3 s.
    pub search_timeout: Duration,
    /// Time limit of each call to the gateway (SOAP over HTTP). Default 5 s.
    pub request_timeout: Duration,
    /// Lease asked for each mapping, renewed at half of it. Default 1 h.
    pub lease: Duration,
    /// First wait after a failure; doubled on each failure in a row up to `max_backoff`.
    /// Default 5 s.
    pub backoff: Duration,
    /// Longest wait between attempts. Default 5 min.
    pub max_backoff: Duration,
    /// Description of our mappings on the gateway (`upnpc -l` shows it). Default `kad`.
    pub description: String,
    /// Where to send the SSDP search. Default the standard multicast group
    /// 239.255.255.250:1900.
    pub broadcast: SocketAddr,
    /// The addresses the node's transports listen on, whose ports are mapped. Empty (the
    /// default): the node's contact addresses at spawn, which are the same unless the node was
    /// told to advertise others.
    pub listen: Vec<PeerAddr>,
}

impl Default for UpnpConfig {
    fn default() -> Self {
        Self {
            search_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(3600),
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            description: "kad".into(),
            broadcast: SocketAddr::from(([239, 255, 255, 250], 1900)),
            listen: Vec::new(),
        }
    }
}

/// The transport protocol of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// For `udp://` and `quic://` addresses.
    Udp,
    /// For `ws://` addresses.
    Tcp,
}

impl Protocol {
    fn igd(self) -> PortMappingProtocol {
        match self {
            Self::Udp => PortMappingProtocol::UDP,
            Self::Tcp => PortMappingProtocol::TCP,
        }
    }
}

/// One port mapping on the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mapping {
    /// UDP or TCP.
    pub protocol: Protocol,
    /// The listening address it forwards to (LAN side).
    pub internal: SocketAddr,
    /// The external address peers use.
    pub external: SocketAddr,
    /// The address to advertise (scheme of the listening address, external IP and port).
    pub advertised: PeerAddr,
    /// The lease asked for, seconds (0 = the gateway only grants permanent ones).
    pub lease_secs: u32,
    /// When it was last added or renewed (Unix ms).
    pub renewed_at_ms: u64,
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UpnpState {
    /// The gateway's control address, once found.
    pub gateway: Option<SocketAddr>,
    /// Its external IP.
    pub external_ip: Option<IpAddr>,
    /// Our mappings.
    pub mappings: Vec<Mapping>,
    /// The last failure, in words.
    pub last_error: Option<String>,
}

/// A listening address to map.
#[derive(Debug, Clone)]
struct Want {
    protocol: Protocol,
    listen: PeerAddr,
    port: u16,
}

/// Keeps mappings on one gateway. Drive it with [`PortMapper::refresh`].
pub struct PortMapper {
    cfg: UpnpConfig,
    wants: Vec<Want>,
    gateway: Option<Gateway<Tokio>>,
    local_ip: Option<IpAddr>,
    /// External port held for each (protocol, internal port): kept across failures, so a
    /// renewal after an outage asks for the same port and the advertised address stays put.
    held: Vec<((Protocol, u16), u16)>,
    /// Mappings made before the gateway stopped answering (it may still hold them).
    stale: Vec<Mapping>,
    /// The state after the last attempt.
    pub state: UpnpState,
}

impl std::fmt::Debug for PortMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortMapper")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    kad_core::SystemClock::now_ms()
}

/// Which mapping a listening address needs: UDP for `udp://` and `quic://`, TCP for `ws://`
/// (a `wss://` or host-named address, none).
pub fn wanted(addr: &PeerAddr) -> Option<(Protocol, SocketAddr)> {
    match addr {
        PeerAddr::Udp(s) | PeerAddr::Quic(s) => Some((Protocol::Udp, *s)),
        PeerAddr::Ws(u) => {
            let rest = u.strip_prefix("ws://")?;
            let host = rest.split('/').next()?;
            host.parse::<SocketAddr>().ok().map(|s| (Protocol::Tcp, s))
        }
        _ => None,
    }
}

fn external_addr(listen: &PeerAddr, ext: SocketAddr) -> PeerAddr {
    match listen {
        PeerAddr::Quic(_) => PeerAddr::Quic(ext),
        PeerAddr::Ws(u) => {
            let path = u
                .strip_prefix("ws://")
                .and_then(|r| r.find('/').map(|i| &r[i..]))
                .unwrap_or("");
            PeerAddr::Ws(format!("ws://{ext}{path}").into())
        }
        _ => PeerAddr::Udp(ext),
    }
}

async fn timed<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {limit:?}")),
    }
}

/// Finds the gateway by SSDP, within `search_timeout` (plus a second of slack).
async fn find_gateway(cfg: &UpnpConfig) -> Result<Gateway<Tokio>, String> {
    let opts = SearchOptions {
        timeout: Some(cfg.search_timeout),
        broadcast_address: cfg.broadcast,
        ..Default::default()
    };
    timed(
        cfg.search_timeout + Duration::from_secs(1),
        "gateway search",
        igd_next::aio::tokio::search_gateway(opts),
    )
    .await
}

impl PortMapper {
    /// A mapper for these listening addresses (those that need no mapping are skipped).
    pub fn new(cfg: UpnpConfig, listen: &[PeerAddr]) -> Self {
        let mut wants: Vec<Want> = Vec::new();
        for a in listen {
            let Some((protocol, s)) = wanted(a) else {
                continue;
            };
            // udp://0.0.0.0:P and udp://[::]:P (or udp:// and quic:// on one port) need one
            // mapping.
            if wants
                .iter()
                .any(|w| w.protocol == protocol && w.port == s.port())
            {
                continue;
            }
            wants.push(Want {
                protocol,
                listen: a.clone(),
                port: s.port(),
            });
        }
        Self {
            cfg,
            wants,
            gateway: None,
            local_ip: None,
            held: Vec::new(),
            stale: Vec::new(),
            state: UpnpState::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &UpnpConfig {
        &self.cfg
    }

    /// Finds the gateway if needed, then adds or renews every mapping. On failure the gateway
    /// is forgotten (searched again next time) and the error is kept in the state.
    pub async fn refresh(&mut self) -> Result<(), String> {
        let r = self.try_refresh().await;
        match &r {
            Ok(()) => self.state.last_error = None,
            Err(e) => {
                // The gateway is searched again next time; the mappings it may still hold are
                // remembered (removed at shutdown if it answers again, else they expire).
                self.state.last_error = Some(e.clone());
                self.gateway = None;
                self.state.gateway = None;
                let mut all = std::mem::take(&mut self.state.mappings);
                all.append(&mut self.stale);
                for m in all {
                    self.stale
                        .retain(|s| !(s.protocol == m.protocol && s.external == m.external));
                    self.stale.push(m);
                }
            }
        }
        r
    }

    async fn try_refresh(&mut self) -> Result<(), String> {
        if self.gateway.is_none() {
            let gw = find_gateway(&self.cfg).await?;
            // The LAN address the gateway sees us at: what its mappings must point to.
            let probe = tokio::net::UdpSocket::bind(match gw.addr {
                SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
                SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
            })
            .await
            .map_err(|e| format!("local address: {e}"))?;
            probe
                .connect(gw.addr)
                .await
                .map_err(|e| format!("local address: {e}"))?;
            self.local_ip = Some(
                probe
                    .local_addr()
                    .map_err(|e| format!("local address: {e}"))?
                    .ip(),
            );
            self.state.gateway = Some(gw.addr);
            self.gateway = Some(gw);
        }
        let Some(gw) = self.gateway.clone() else {
            return Err("no gateway".into());
        };
        let limit = self.cfg.request_timeout;
        let ext_ip = timed(limit, "external IP", gw.get_external_ip()).await?;
        self.state.external_ip = Some(ext_ip);
        let lease = u32::try_from(self.cfg.lease.as_secs()).unwrap_or(u32::MAX);
        let Some(local_ip) = self.local_ip else {
            return Err("no local address".into());
        };
        for w in self.wants.clone() {
            let internal = SocketAddr::new(local_ip, w.port);
            // Keep the external port we had; else ask for the same port as inside (a NAT that
            // keeps source ports then shows peers the mapped address on our outgoing traffic).
            let key = (w.protocol, w.port);
            let prev = self.held.iter().find(|(k, _)| *k == key).map(|(_, p)| *p);
            let (port, lease) = self
                .add(&gw, w.protocol, prev.unwrap_or(w.port), internal, lease)
                .await?;
            self.held.retain(|(k, _)| *k != key);
            self.held.push((key, port));
            let external = SocketAddr::new(ext_ip, port);
            // Recorded as soon as it exists, so a failure further on cannot orphan it.
            self.state
                .mappings
                .retain(|m| !(m.protocol == w.protocol && m.internal.port() == w.port));
            self.stale
                .retain(|m| !(m.protocol == w.protocol && m.external.port() == port));
            self.state.mappings.push(Mapping {
                protocol: w.protocol,
                internal,
                external,
                advertised: external_addr(&w.listen, external),
                lease_secs: lease,
                renewed_at_ms: now_ms(),
            });
        }
        Ok(())
    }

    /// Adds (or renews) a mapping on `port`, falling back to a port the gateway picks when that
    /// one is taken, and to a permanent lease when only those are allowed.
    async fn add(
        &self,
        gw: &Gateway<Tokio>,
        proto: Protocol,
        port: u16,
        internal: SocketAddr,
        lease: u32,
    ) -> Result<(u16, u32), String> {
        let limit = self.cfg.request_timeout;
        let desc = &self.cfg.description;
        let first =
            tokio::time::timeout(limit, gw.add_port(proto.igd(), port, internal, lease, desc))
                .await
                .map_err(|_| format!("add {proto:?} port {port}: no answer within {limit:?}"))?;
        match first {
            Ok(()) => Ok((port, lease)),
            Err(AddPortError::OnlyPermanentLeasesSupported) if lease != 0 => {
                timed(
                    limit,
                    "add port (permanent lease)",
                    gw.add_port(proto.igd(), port, internal, 0, desc),
                )
                .await?;
                Ok((port, 0))
            }
            Err(AddPortError::PortInUse) => {
                tracing::info!(
                    port,
                    ?proto,
                    "UPnP: external port taken by another host, asking for another"
                );
                let r = tokio::time::timeout(
                    limit,
                    gw.add_any_port(proto.igd(), internal, lease, desc),
                )
                .await
                .map_err(|_| format!("add any {proto:?} port: no answer within {limit:?}"))?;
                match r {
                    Ok(p) => Ok((p, lease)),
                    Err(AddAnyPortError::OnlyPermanentLeasesSupported) => timed(
                        limit,
                        "add any port (permanent lease)",
                        gw.add_any_port(proto.igd(), internal, 0, desc),
                    )
                    .await
                    .map(|p| (p, 0)),
                    Err(e) => Err(format!("add any {proto:?} port: {e}")),
                }
            }
            Err(e) => Err(format!("add {proto:?} port {port}: {e}")),
        }
    }

    /// When the mappings must be renewed: at half of the granted lease (permanent ones are
    /// still checked at half of the asked lease, in case the gateway rebooted).
    pub fn renew_in(&self) -> Duration {
        let secs = self
            .state
            .mappings
            .iter()
            .map(|m| {
                if m.lease_secs == 0 {
                    self.cfg.lease.as_secs()
                } else {
                    u64::from(m.lease_secs)
                }
            })
            .min()
            .unwrap_or(self.cfg.lease.as_secs());
        Duration::from_secs(secs / 2).max(Duration::from_secs(1))
    }

    /// The mappings in force after the last attempt: none while the gateway does not answer.
    pub fn live_mappings(&self) -> &[Mapping] {
        &self.state.mappings
    }

    /// Removes every mapping of ours (best effort, each call bounded in time). If the gateway
    /// stopped answering, it is searched for once more first.
    pub async fn remove_all(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.gateway.is_none() && !self.stale.is_empty() {
            if let Ok(gw) = find_gateway(&self.cfg).await {
                self.gateway = Some(gw);
            }
        }
        if let Some(gw) = self.gateway.clone() {
            let mut all = std::mem::take(&mut self.state.mappings);
            all.append(&mut self.stale);
            for m in all {
                if let Err(e) = timed(
                    self.cfg.request_timeout,
                    "remove mapping",
                    gw.remove_port(m.protocol.igd(), m.external.port()),
                )
                .await
                {
                    errors.push(format!("{}: {e}", m.external));
                }
            }
        }
        errors
    }
}

/// One entry of the gateway's port mapping table, as `survey` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayEntry {
    /// UDP or TCP.
    pub protocol: Protocol,
    /// External port.
    pub external_port: u16,
    /// The LAN host it forwards to.
    pub internal_client: String,
    /// The LAN port.
    pub internal_port: u16,
    /// Its description (ours start with the configured description, `kad` by default).
    pub description: String,
    /// Seconds left of its lease, as the gateway reports it (0: permanent).
    pub lease_secs: u32,
}

/// What [`survey`] found on the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Survey {
    /// The gateway's control address.
    pub gateway: SocketAddr,
    /// Its external IP.
    pub external_ip: IpAddr,
    /// The port mapping table (at most 1024 entries are read).
    pub entries: Vec<GatewayEntry>,
}

/// Finds the gateway and reads its external IP and port mapping table (for `kad nat status`).
pub async fn survey(cfg: &UpnpConfig) -> Result<Survey, String> {
    let gw = find_gateway(cfg).await?;
    let external_ip = timed(cfg.request_timeout, "external IP", gw.get_external_ip()).await?;
    let mut entries = Vec::new();
    for i in 0..1024 {
        let e =
            match tokio::time::timeout(cfg.request_timeout, gw.get_generic_port_mapping_entry(i))
                .await
            {
                Ok(Ok(e)) => e,
                // The end of the table (713 SpecifiedArrayIndexInvalid), or a gateway that does not
                // list its table.
                Ok(Err(_)) => break,
                Err(_) => {
                    return Err(format!(
                        "mapping entry {i}: no answer within {:?}",
                        cfg.request_timeout
                    ));
                }
            };
        entries.push(GatewayEntry {
            protocol: match e.protocol {
                PortMappingProtocol::UDP => Protocol::Udp,
                PortMappingProtocol::TCP => Protocol::Tcp,
            },
            external_port: e.external_port,
            internal_client: e.internal_client,
            internal_port: e.internal_port,
            description: e.port_mapping_description,
            lease_secs: e.lease_duration,
        });
    }
    Ok(Survey {
        gateway: gw.addr,
        external_ip,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_addresses_need_which_mapping() {
        let u: PeerAddr = "udp://192.168.1.5:4000".parse().unwrap();
        let q: PeerAddr = "quic://192.168.1.5:4001".parse().unwrap();
        let w: PeerAddr = "ws://192.168.1.5:4002/kad".parse().unwrap();
        assert_eq!(wanted(&u).unwrap().0, Protocol::Udp);
        assert_eq!(wanted(&q).unwrap().0, Protocol::Udp);
        assert_eq!(
            wanted(&w).unwrap(),
            (Protocol::Tcp, "192.168.1.5:4002".parse().unwrap())
        );
        let ext: SocketAddr = "45.45.45.1:5002".parse().unwrap();
        assert_eq!(
            external_addr(&w, ext).to_string(),
            "ws://45.45.45.1:5002/kad"
        );
        assert_eq!(external_addr(&q, ext).to_string(), "quic://45.45.45.1:5002");
    }
}
