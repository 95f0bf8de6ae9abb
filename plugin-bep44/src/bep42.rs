//! BEP42: node ids bound to the node's external IP, and the vote that learns that IP.
//!
//! The top 21 bits of a secure id are a CRC32C of the masked IP and 3 random bits `r`; the last
//! byte carries `r`. Local and private addresses are exempt (any id is valid for them).

use std::collections::HashMap;
use std::net::IpAddr;

use kad_core::NodeId;
use rand::Rng;

fn crc_for(ip: IpAddr, r: u8) -> u32 {
    let r = u64::from(r & 7);
    match ip {
        IpAddr::V4(v4) => {
            let x = (u32::from(v4) & 0x030f_3fff) | ((r as u32) << 29);
            crc32c::crc32c(&x.to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let hi = u64::from_be_bytes(v6.octets()[..8].try_into().unwrap_or([0; 8]));
            let x = (hi & 0x0103_070f_1f3f_7fff) | (r << 61);
            crc32c::crc32c(&x.to_be_bytes())
        }
    }
}

/// A BEP42 id for `ip`, with `rand` as its last byte and the other free bits from `rng`.
pub fn secure_id<R: Rng + ?Sized>(ip: IpAddr, rand: u8, rng: &mut R) -> NodeId {
    let crc = crc_for(ip, rand);
    let mut id = [0u8; 20];
    rng.fill(&mut id[..]);
    id[0] = (crc >> 24) as u8;
    id[1] = (crc >> 16) as u8;
    id[2] = ((crc >> 8) as u8 & 0xf8) | (id[2] & 0x07);
    id[19] = rand;
    NodeId::from_bytes(id)
}

/// Whether BEP42 exempts `ip` (loopback, private, link-local, carrier-grade NAT, unique local).
pub fn is_exempt(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_exempt(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xff0f) == 0xff02 // link-local multicast
                || (s[0] & 0xff0f) == 0xff05 // site-local multicast
        }
    }
}

/// Whether `id` is a valid BEP42 id for a node seen at `ip` (always true for exempt addresses).
pub fn is_secure(id: &NodeId, ip: IpAddr) -> bool {
    if is_exempt(ip) {
        return true;
    }
    let b = id.as_bytes();
    let crc = crc_for(ip, b[19]);
    b[0] == (crc >> 24) as u8
        && b[1] == (crc >> 16) as u8
        && (b[2] & 0xf8) == ((crc >> 8) as u8 & 0xf8)
}

/// Learns our external IP from the `ip` field of responses: one vote per responder IP, the
/// address most responders agree on wins once at least `quorum` distinct responders voted.
#[derive(Debug)]
pub struct IpVoter {
    votes: HashMap<IpAddr, IpAddr>,
    cap: usize,
    quorum: usize,
}

impl IpVoter {
    /// A voter remembering at most `cap` responders, deciding after `quorum` distinct ones.
    pub fn new(cap: usize, quorum: usize) -> Self {
        Self {
            votes: HashMap::new(),
            cap: cap.max(1),
            quorum: quorum.max(1),
        }
    }
    /// Records that `responder` saw us at `seen`.
    pub fn vote(&mut self, responder: IpAddr, seen: IpAddr) {
        if self.votes.len() >= self.cap && !self.votes.contains_key(&responder) {
            // Forget an arbitrary earlier voter: old votes may be stale anyway.
            if let Some(k) = self.votes.keys().next().copied() {
                self.votes.remove(&k);
            }
        }
        self.votes.insert(responder, seen);
    }
    /// The winning address, if enough distinct responders voted and it has a strict majority.
    pub fn external_ip(&self) -> Option<IpAddr> {
        if self.votes.len() < self.quorum {
            return None;
        }
        let mut tally: HashMap<IpAddr, usize> = HashMap::new();
        for seen in self.votes.values() {
            *tally.entry(*seen).or_default() += 1;
        }
        let (ip, n) = tally.into_iter().max_by_key(|(ip, n)| (*n, *ip))?;
        (n * 2 > self.votes.len()).then_some(ip)
    }
    /// How many distinct responders voted.
    pub fn voters(&self) -> usize {
        self.votes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The five vectors of BEP42 (also in MAINLINE.md section 4.3).
    const VECTORS: [(&str, u8, &str); 5] = [
        (
            "124.31.75.21",
            1,
            "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401",
        ),
        (
            "21.75.31.124",
            86,
            "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256",
        ),
        (
            "65.23.51.170",
            22,
            "a5d43220bc8f112a3d426c84764f8c2a1150e616",
        ),
        (
            "84.124.73.14",
            65,
            "1b0321dd1bb1fe518101ceef99462b947a01ff41",
        ),
        (
            "43.213.53.83",
            90,
            "e56f6cbf5b7c4be0237986d5243b87aa6d51305a",
        ),
    ];

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn bep42_vectors_verify_and_generate() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for (ip, rand, id) in VECTORS {
            let ip: IpAddr = ip.parse().unwrap();
            let id = NodeId::from_hex(id).unwrap();
            assert!(is_secure(&id, ip), "{ip}");
            let mine = secure_id(ip, rand, &mut rng);
            assert_eq!(mine.as_bytes()[..2], id.as_bytes()[..2], "{ip}");
            assert_eq!(mine.as_bytes()[2] & 0xf8, id.as_bytes()[2] & 0xf8, "{ip}");
            assert_eq!(mine.as_bytes()[19], rand);
            assert!(is_secure(&mine, ip));
        }
        let first = NodeId::from_hex(VECTORS[0].2).unwrap();
        assert!(!is_secure(&first, "124.31.75.22".parse().unwrap()));
        // Exempt ranges accept anything.
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
        ] {
            assert!(is_secure(&first, ip.parse().unwrap()), "{ip}");
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let id6 = secure_id(v6, 7, &mut rng);
        assert!(is_secure(&id6, v6));
        assert!(!is_secure(&id6, "2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn the_voter_needs_a_quorum_and_a_majority() {
        let mut v = IpVoter::new(100, 3);
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "198.51.100.9".parse().unwrap();
        v.vote("1.1.1.1".parse().unwrap(), a);
        v.vote("1.1.1.1".parse().unwrap(), a); // the same responder counts once
        v.vote("2.2.2.2".parse().unwrap(), a);
        assert_eq!(v.external_ip(), None);
        v.vote("3.3.3.3".parse().unwrap(), b);
        assert_eq!(v.external_ip(), Some(a));
        v.vote("4.4.4.4".parse().unwrap(), b);
        assert_eq!(v.external_ip(), None, "2 against 2 is no majority");
    }
}
