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
    pub fn winner(&self) -> Option<SocketAddr> {
        if self.votes.len() < self.min_votes {
            return None;
        }
        let mut tally: Vec<(SocketAddr, usize)> = Vec::new();
        for (_, seen) in &self.votes {
            match tally.iter_mut().find(|(a, _)| a == seen) {
                Some((_, n)) => *n += 1,
                None => tally.push((*seen, 1)),
            }
        }
        let (addr, n) = tally.into_iter().max_by_key(|(a, n)| (*n, *a))?;
        (n * 2 > self.votes.len() && n >= self.min_votes).then_some(addr)
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
