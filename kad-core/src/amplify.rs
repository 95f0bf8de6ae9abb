//! Anti-amplification for datagram transports: a node never sends a reply larger than the request
//! to a UDP address that has not shown it receives what is sent to it.
//!
//! The source address of a UDP datagram can be forged, so a small request could aim a large reply
//! (twenty contacts, a 64 KiB value) at a victim. An address is **proven** once a response to one
//! of our own requests came from it (it saw our transaction id), and it stays so while it keeps
//! answering. A reply to an unproven address that is larger than the request it answers is
//! **deferred**: the node sends a PING to that address instead, and sends the deferred replies,
//! re-encoded, when a PONG comes back (one PING per deferred reply, so a lost PING or PONG costs
//! only the request it was sent for). The requester sees one extra round trip, once per peer;
//! a victim of a forged source sees one PING per forged request, which is never larger than the
//! forged request itself by more than the difference between the two nodes' own addresses.
//!
//! Addresses we are ourselves waiting on (a request of ours to them is in flight, a proving PING
//! excluded) are not victims, and are answered in full: two nodes that first meet with requests
//! crossing each other cannot wait on each other.
//!
//! Every table here is bounded; what does not fit is dropped and counted.

use std::collections::HashMap;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::addr::PeerAddr;
use crate::message::Message;

/// Most proven addresses remembered (the set starts afresh when full).
pub(crate) const PROVEN_CAP: usize = 65_536;
/// Most addresses we track as "asked by us" (older ones are forgotten first).
pub(crate) const ASKED_CAP: usize = 16_384;
/// Most deferred replies held in all, and per address.
pub(crate) const DEFERRED_CAP: usize = 1024;
pub(crate) const DEFERRED_PER_ADDR: usize = 8;

/// Whether the guard applies to messages to `to` (UDP only: QUIC and WebSocket verify the peer's
/// address in their handshakes, in-memory addresses cannot be forged).
pub(crate) fn guarded(to: &PeerAddr) -> bool {
    matches!(to, PeerAddr::Udp(_))
}

#[derive(Debug, Default)]
pub(crate) struct Guard {
    // Keyed by addresses peers choose: std's randomly keyed hasher, not Fx.
    proven: HashSet<PeerAddr>,
    asked: HashMap<PeerAddr, Instant>,
    deferred: HashMap<PeerAddr, Vec<Message>>,
    deferred_len: usize,
    /// Proving PINGs in flight per address (at most one per deferred reply, so bounded like
    /// `deferred`).
    proving: HashMap<PeerAddr, u8>,
}

/// What to do with a reply that does not fit.
pub(crate) enum Defer {
    /// Deferred; send a proving PING to the address (one per deferred reply: a lost PING or
    /// PONG then costs one request, which its sender asks again, never every reply held).
    Ping,
    /// No room: dropped.
    Full,
}

impl Guard {
    /// Whether replies to `to` may be larger than the request.
    pub(crate) fn trusted(&self, now: Instant, to: &PeerAddr, patience: Duration) -> bool {
        self.proven.contains(to) || self.awaiting(now, to, patience)
    }

    /// Whether a request of ours went to `to` less than `patience` ago (UDP only).
    pub(crate) fn awaiting(&self, now: Instant, to: &PeerAddr, patience: Duration) -> bool {
        self.asked
            .get(to)
            .is_some_and(|t| now.saturating_duration_since(*t) < patience)
    }

    /// A (non-proving) request of ours went to `to`.
    pub(crate) fn asked(&mut self, now: Instant, to: &PeerAddr, patience: Duration) {
        if !guarded(to) {
            return;
        }
        if self.asked.len() >= ASKED_CAP && !self.asked.contains_key(to) {
            self.asked
                .retain(|_, t| now.saturating_duration_since(*t) < patience);
            if self.asked.len() >= ASKED_CAP {
                self.asked.clear();
            }
        }
        self.asked.insert(to.clone(), now);
    }

    /// A response to one of our requests came from `from`.
    pub(crate) fn proven(&mut self, from: &PeerAddr) {
        if !guarded(from) || self.proven.contains(from) {
            return;
        }
        if self.proven.len() >= PROVEN_CAP {
            self.proven.clear();
        }
        self.proven.insert(from.clone());
    }

    /// Whether a response to one of our requests came from `from` (UDP only; since the set
    /// last started afresh).
    pub(crate) fn is_proven(&self, from: &PeerAddr) -> bool {
        self.proven.contains(from)
    }

    /// Holds `msg` until `to` is proven.
    pub(crate) fn defer(&mut self, to: &PeerAddr, msg: Message) -> Defer {
        if self.deferred_len >= DEFERRED_CAP {
            return Defer::Full;
        }
        let q = self.deferred.entry(to.clone()).or_default();
        if q.len() >= DEFERRED_PER_ADDR {
            return Defer::Full;
        }
        q.push(msg);
        self.deferred_len += 1;
        Defer::Ping
    }

    /// Whether a proving PING to `to` is in flight.
    pub(crate) fn proving(&self, to: &PeerAddr) -> bool {
        self.proving.contains_key(to)
    }

    /// A proving PING went to `to`.
    pub(crate) fn proof_sent(&mut self, to: &PeerAddr) {
        let n = self.proving.entry(to.clone()).or_default();
        *n = n.saturating_add(1);
    }

    /// A proving PING to `to` timed out; returns whether it was the last one in flight (then
    /// the replies held for `to` are given up).
    pub(crate) fn proof_failed(&mut self, to: &PeerAddr) -> bool {
        match self.proving.get_mut(to) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.proving.remove(to);
                true
            }
        }
    }

    /// A proving PING to `to` was answered (the address is proven; later answers or timeouts of
    /// the others find nothing held).
    pub(crate) fn proof_answered(&mut self, to: &PeerAddr) {
        if let Some(n) = self.proving.get_mut(to) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.proving.remove(to);
            }
        }
    }

    /// The replies deferred for `to` (now proven, or given up on).
    pub(crate) fn take(&mut self, to: &PeerAddr) -> Vec<Message> {
        let v = self.deferred.remove(to).unwrap_or_default();
        self.deferred_len -= v.len();
        v
    }
}
