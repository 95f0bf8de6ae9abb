//! External address discovery: peers say where they see us, a majority of distinct peers wins.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

/// Votes on our external address, one per peer IP (a host with many node ids still gets one
/// vote), newest kept, oldest forgotten beyond `cap`.
#[derive(Debug, Clone)]
pub struct AddrVote {
    votes: VecDeque<(IpAddr, SocketAddr)>,
    cap: usize,
    min_votes: usize,
}

impl AddrVote {
    /// A vote that keeps the last `cap` voters and needs at least `min_votes` of them.
    pub fn new(cap: usize, min_votes: usize) -> Self {
        Self {
            votes: VecDeque::new(),
            cap: cap.max(1),
            min_votes: min_votes.max(1),
        }
    }

    /// Records that the peer at `voter` sees us at `seen` (replacing its earlier vote).
    pub fn vote(&mut self, voter: IpAddr, seen: SocketAddr) {
        self.votes.retain(|(v, _)| *v != voter);
        if self.votes.len() >= self.cap {
            self.votes.pop_front();
        }
        self.votes.push_back((voter, seen));
    }

    /// Distinct voters so far.
    pub fn voters(&self) -> usize {
        self.votes.len()
    }

    /// The address more than half of the voters agree on, once at least `min_votes` voted.
    /// When some voters have global IPs, only they count: peers on our own LAN see our LAN
    /// address, which says nothing about the NAT.
    pub fn winner(&self) -> Option<SocketAddr> {
        let global = self.votes.iter().any(|(v, _)| is_global(*v));
        let votes: Vec<SocketAddr> = self
            .votes
            .iter()
            .filter(|(v, _)| !global || is_global(*v))
            .map(|(_, s)| *s)
            .collect();
        if votes.len() < self.min_votes {
            return None;
        }
        let mut tally: Vec<(SocketAddr, usize)> = Vec::new();
        for seen in &votes {
            match tally.iter_mut().find(|(a, _)| a == seen) {
                Some((_, n)) => *n += 1,
                None => tally.push((*seen, 1)),
            }
        }
        let (addr, n) = tally.into_iter().max_by_key(|(a, n)| (*n, *a))?;
        (n * 2 > votes.len() && n >= self.min_votes).then_some(addr)
    }
}

/// Whether `ip` is routable on the internet: not loopback, private, link-local, shared
/// (100.64/10, carrier-grade NAT), unique-local, documentation, multicast or unspecified.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            !(v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_multicast()
                || v.is_broadcast()
                || v.is_unspecified()
                || v.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0)
        }
        IpAddr::V6(v) => {
            let s = v.segments();
            !(v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn majority_of_distinct_ips() {
        let mut v = AddrVote::new(16, 3);
        let ext = sa("45.45.45.1:4000");
        v.vote(ip("1.0.0.1"), ext);
        v.vote(ip("1.0.0.2"), ext);
        assert_eq!(v.winner(), None, "two voters are below min_votes");
        // One host voting again and again stays one vote.
        for _ in 0..10 {
            v.vote(ip("1.0.0.2"), sa("9.9.9.9:1"));
        }
        assert_eq!(v.voters(), 2);
        v.vote(ip("1.0.0.3"), ext);
        v.vote(ip("1.0.0.4"), ext);
        assert_eq!(v.winner(), Some(ext), "3 of 4 agree");
        v.vote(ip("1.0.0.5"), sa("9.9.9.9:1"));
        v.vote(ip("1.0.0.6"), sa("9.9.9.9:1"));
        assert_eq!(v.winner(), None, "3 against 3 is no majority");
    }

    #[test]
    fn lan_voters_do_not_outvote_the_internet() {
        let mut v = AddrVote::new(16, 3);
        for i in 2..8u8 {
            v.vote(IpAddr::from([192, 168, 1, i]), sa("192.168.1.10:4000"));
        }
        assert_eq!(
            v.winner(),
            Some(sa("192.168.1.10:4000")),
            "a LAN-only network"
        );
        for i in 2..5u8 {
            v.vote(IpAddr::from([45, 0, 0, i]), sa("45.45.45.1:4000"));
        }
        assert_eq!(
            v.winner(),
            Some(sa("45.45.45.1:4000")),
            "global voters decide"
        );
        assert!(!is_global(ip("100.64.1.1")) && !is_global(ip("10.1.1.1")));
        assert!(is_global(ip("45.45.45.1")) && is_global(ip("2a00::1")));
        assert!(!is_global(ip("fd00::1")) && !is_global(ip("fe80::1")));
    }

    #[test]
    fn bounded_and_newest_wins() {
        let mut v = AddrVote::new(4, 2);
        for i in 0..100u8 {
            v.vote(IpAddr::from([10, 0, 0, i]), sa("45.45.45.1:1"));
        }
        assert_eq!(v.voters(), 4);
        for i in 0..4u8 {
            v.vote(IpAddr::from([11, 0, 0, i]), sa("45.45.45.1:2"));
        }
        assert_eq!(v.winner(), Some(sa("45.45.45.1:2")), "the port changed");
    }
}
