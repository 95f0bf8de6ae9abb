//! The addresses a node sent to recently (for plugins that must not answer strangers in full).

use std::time::{Duration, Instant};

use crate::addr::PeerAddr;

/// The socket addresses a node sent to within the last 5 to 10 minutes, in two generations of
/// at most [`RecentAddrs::CAP`] each (a full generation rotates early, so memory stays bounded).
#[derive(Debug)]
pub(crate) struct RecentAddrs {
    // Keyed by addresses peers choose: std's randomly keyed hasher, not Fx.
    current: std::collections::HashSet<std::net::SocketAddr>,
    previous: std::collections::HashSet<std::net::SocketAddr>,
    current_ips: std::collections::HashSet<std::net::IpAddr>,
    previous_ips: std::collections::HashSet<std::net::IpAddr>,
    rotated: Instant,
}

impl RecentAddrs {
    const CAP: usize = 1 << 14;
    /// Longer than the UDP timeouts of common NATs (Linux conntrack: 30 s, 120 s once replied).
    const WINDOW: Duration = Duration::from_secs(300);

    pub(crate) fn new(now: Instant) -> Self {
        Self {
            current: Default::default(),
            previous: Default::default(),
            current_ips: Default::default(),
            previous_ips: Default::default(),
            rotated: now,
        }
    }

    pub(crate) fn note(&mut self, now: Instant, to: &PeerAddr) {
        let Some(sa) = to.socket_addr() else { return };
        if now.saturating_duration_since(self.rotated) >= Self::WINDOW
            || self.current.len() >= Self::CAP
        {
            self.previous = std::mem::take(&mut self.current);
            self.previous_ips = std::mem::take(&mut self.current_ips);
            self.rotated = now;
        }
        self.current.insert(sa);
        self.current_ips.insert(sa.ip());
    }

    pub(crate) fn contains_ip(&self, now: Instant, ip: std::net::IpAddr) -> bool {
        let age = now.saturating_duration_since(self.rotated);
        self.current_ips.contains(&ip) || (age < Self::WINDOW && self.previous_ips.contains(&ip))
    }

    pub(crate) fn contains(&self, now: Instant, addr: std::net::SocketAddr) -> bool {
        let age = now.saturating_duration_since(self.rotated);
        self.current.contains(&addr) || (age < Self::WINDOW && self.previous.contains(&addr))
    }
}
