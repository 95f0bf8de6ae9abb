//! Sending: requests with their timeouts and retransmissions, replies, and deferred replies to unproven addresses.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tracing::trace;

use super::{Event, Node, Output, Pending, PendingKind};
use crate::addr::{Contact, PeerAddr};
use crate::id::NodeId;
use crate::message::{Body, Message, Request, Response, TxnId};

/// Values up to this size (64 KiB) take no longer to send, store and serve than a small
/// message, as far as timeouts go.
pub(super) const SMALL_VALUE: usize = 64 * 1024;

/// Times a bootstrap PING is sent again (at a constant interval, the hard timeout) when
/// retransmissions are on at all ([`Config::retransmits`](crate::Config::retransmits) > 0).
pub(super) const BOOTSTRAP_RETRANSMITS: u8 = 6;

impl Node {
    pub(super) fn hard_timeout(&self) -> Duration {
        (self.rtt.rto() * 3).clamp(self.config.min_request_timeout, self.config.request_timeout)
    }

    /// Extra time for a request that carries or may bring back a value larger than [`SMALL_VALUE`]:
    /// 1 ms per KiB beyond 64 KiB (a 750 KB chunk over QUIC gets about 0.7 s more), so a busy
    /// peer storing or serving a large value is not taken for a dead one: an RTT measured on
    /// small messages says nothing about the time to decode, verify and commit a megabyte.
    pub(super) fn size_allowance(&self, req: &Request) -> Duration {
        let bytes = match req {
            Request::Store { record, .. } => record.value.len(),
            Request::FindValue { .. } | Request::Custom { .. } => self.config.max_value_len,
            Request::Ping | Request::FindNode { .. } => 0,
        };
        Duration::from_millis((bytes.saturating_sub(SMALL_VALUE) / 1024) as u64)
    }

    pub(super) fn soft_timeout(&self) -> Duration {
        self.rtt
            .rto()
            .clamp(self.config.min_soft_timeout, self.config.request_timeout)
    }

    pub(super) fn send_request(
        &mut self,
        now: Instant,
        to: PeerAddr,
        expected: Option<NodeId>,
        req: Request,
        kind: PendingKind,
    ) -> bool {
        if self.in_flight.len() >= self.config.max_in_flight {
            self.stats.in_flight_full += 1;
            return false;
        }
        let mut txn;
        loop {
            txn = TxnId(Bytes::copy_from_slice(
                &self.rng.random::<u32>().to_be_bytes(),
            ));
            if !self.in_flight.contains_key(&(txn.clone(), to.clone())) {
                break;
            }
        }
        let plugin_resends = match &kind {
            PendingKind::Plugin { plugin, .. } => self
                .plugins
                .get(*plugin)
                .is_some_and(|p| p.retransmit_requests()),
            _ => true,
        };
        let resend = (kind.retransmitted() && plugin_resends && self.config.retransmits > 0)
            .then(|| req.clone());
        // A peer whose RTT is known gets one early retransmission at its own timeout when that
        // comes well before the adaptive one: on a long path with loss, a lost datagram then
        // costs about one and a half round trips instead of the network-wide timeout.
        let early = resend
            .is_some()
            .then(|| self.early_deadline(&req, expected))
            .flatten();
        let deadline = match early {
            Some(after) => {
                let d = (now + after, self.seq);
                self.seq += 1;
                d
            }
            None => self.request_deadline(now, &req, 0),
        };
        self.in_flight.insert(
            (txn.clone(), to.clone()),
            Pending {
                kind,
                sent_at: now,
                deadline,
                expected,
                resend,
                sends: 1,
                early: early.is_some(),
                bonus: 0,
            },
        );
        crate::stats::count_method(&mut self.stats.rpc_out, req.method());
        self.stats.requests_out += 1;
        self.transmit_request(now, to, txn, expected, req);
        true
    }

    /// When to send a request to `peer` again early: its own retransmission timeout (at least
    /// the minimum soft timeout, plus the size allowance), if it is known and at most half the
    /// adaptive hard timeout.
    fn early_deadline(&self, req: &Request, peer: Option<NodeId>) -> Option<Duration> {
        let rto = self.routing.get(&peer?)?.resend_after()?;
        let rto = rto.max(self.config.min_soft_timeout);
        (rto * 2 <= self.hard_timeout()).then(|| rto + self.size_allowance(req))
    }

    /// The hard deadline of a request's `attempt`-th retransmission (0: the first send): the
    /// adaptive timeout doubled per retransmission, at most [`Config::request_timeout`], plus
    /// the size allowance. Registers it in `deadlines` against the request's key later.
    pub(super) fn request_deadline(
        &mut self,
        now: Instant,
        req: &Request,
        attempt: u8,
    ) -> (Instant, u64) {
        let base = self.hard_timeout();
        let backoff = (base * (1u32 << attempt.min(8))).min(self.config.request_timeout.max(base));
        let deadline = (now + backoff + self.size_allowance(req), self.seq);
        self.seq += 1;
        deadline
    }

    /// Hands one request datagram out (first send or retransmission), registering its deadline.
    pub(super) fn transmit_request(
        &mut self,
        now: Instant,
        to: PeerAddr,
        txn: TxnId,
        expected: Option<NodeId>,
        req: Request,
    ) {
        let proving = matches!(
            self.in_flight.get(&(txn.clone(), to.clone())),
            Some(Pending {
                kind: PendingKind::Prove { .. },
                ..
            })
        );
        if let Some(p) = self.in_flight.get(&(txn.clone(), to.clone())) {
            self.deadlines.insert(p.deadline, (txn.clone(), to.clone()));
        }
        if !proving {
            let patience = self.hard_timeout() * 2;
            self.guard.asked(now, &to, patience);
        }
        let msg = Message {
            txn,
            sender: self.local.clone(),
            recipient: expected,
            read_only: self.config.read_only,
            observed: None,
            body: Body::Request(req),
        };
        self.stats.messages_out += 1;
        self.sent_to.note(now, &to);
        self.outputs.push_back(Output::Send { to, msg });
    }

    /// A request's deadline passed: sends it again with a doubled timeout while retransmits
    /// remain (same transaction id, so a late answer to an earlier copy still counts). Returns
    /// the pending entry when it is given up.
    pub(super) fn retransmit(
        &mut self,
        now: Instant,
        key: (TxnId, PeerAddr),
        mut p: Pending,
    ) -> Option<Pending> {
        let Some(req) = p.resend.take() else {
            return Some(p);
        };
        // A joining node's PING to a bootstrap address is all it has to do: it is sent again
        // at a constant interval, and more often, so that a lossy first hop costs seconds, not
        // a failed join (at 10% loss each way, four sends all fail once in 750 joins; seven,
        // once in 110,000).
        // The early send is extra: the adaptive schedule starts after it, with every
        // retransmission it had.
        if std::mem::take(&mut p.early) {
            p.bonus += 1;
        }
        let counted = p.sends - p.bonus;
        let bootstrap = matches!(p.kind, PendingKind::BootstrapPing { .. });
        let (attempt, retransmits) = if bootstrap {
            (0, self.config.retransmits.max(BOOTSTRAP_RETRANSMITS))
        } else {
            (counted, self.config.retransmits)
        };
        p.deadline = self.request_deadline(now, &req, attempt);
        p.sent_at = now;
        p.sends += 1;
        if p.sends - p.bonus <= retransmits {
            p.resend = Some(req.clone());
        }
        let expected = p.expected;
        trace!(peer = %key.1, sends = p.sends, "retransmitting a request");
        self.in_flight.insert(key.clone(), p);
        self.stats.retransmits += 1;
        self.transmit_request(now, key.1, key.0, expected, req);
        None
    }

    pub(super) fn send_to_contact(
        &mut self,
        now: Instant,
        to: &Contact,
        req: Request,
        kind: PendingKind,
    ) -> bool {
        let Some(addr) = to.addr_for(&self.config.transport_preference).cloned() else {
            return false;
        };
        self.send_request(now, addr, Some(to.id), req, kind)
    }

    pub(super) fn reply(&mut self, to: PeerAddr, txn: TxnId, recipient: NodeId, body: Body) {
        let msg = Message {
            txn,
            sender: self.local.clone(),
            recipient: Some(recipient),
            read_only: self.config.read_only,
            // Tell the requester where we see it (its address outside its NAT).
            observed: matches!(to, PeerAddr::Udp(_) | PeerAddr::Quic(_)).then(|| to.clone()),
            body,
        };
        let now = self.now;
        if self.config.amplification_guard
            && self.request_len > 0
            && crate::amplify::guarded(&to)
            && !self.guard.trusted(now, &to, self.hard_timeout() * 2)
        {
            // Measure it: the codec decides the size. The bytes are kept for `encode_to`.
            if let Ok(bytes) = self.encode_to(&to, &msg) {
                if bytes.len() > self.request_len {
                    if let Some((msg, bytes)) = self.trim_stored(&to, &msg) {
                        self.encoded = Some((msg.clone(), to.clone(), bytes));
                        return self.send_reply(now, to, msg);
                    }
                    self.defer_reply(now, to, msg);
                    return;
                }
                self.encoded = Some((msg.clone(), to.clone(), bytes));
            }
        }
        self.send_reply(now, to, msg);
    }

    /// A STORE's answer that names contacts, trimmed to the size of the request (the closest
    /// contacts kept): the record is kept, and its putter hears so in one round trip even from
    /// an address not yet proven, instead of waiting for a proof. `None` for other answers.
    fn trim_stored(&mut self, to: &PeerAddr, msg: &Message) -> Option<(Message, Bytes)> {
        let Body::Response(Response::Stored { nodes }) = &msg.body else {
            return None;
        };
        let mut n = nodes.len();
        while n > 0 {
            n /= 2;
            let trimmed = Message {
                body: Body::Response(Response::Stored {
                    nodes: nodes[..n].to_vec(),
                }),
                ..msg.clone()
            };
            match self.encode_to(to, &trimmed) {
                Ok(bytes) if bytes.len() <= self.request_len => return Some((trimmed, bytes)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    pub(super) fn send_reply(&mut self, now: Instant, to: PeerAddr, msg: Message) {
        self.stats.messages_out += 1;
        self.sent_to.note(now, &to);
        self.outputs.push_back(Output::Send { to, msg });
    }

    /// Holds a reply too large for an unproven address, and PINGs the address (once).
    pub(super) fn defer_reply(&mut self, now: Instant, to: PeerAddr, msg: Message) {
        self.stats.replies_deferred += 1;
        // The PING names the requester: a node whose key we hold gets it MAC'd, not signed,
        // and only that node can answer it.
        let requester = msg.recipient;
        match self.guard.defer(&to, msg) {
            crate::amplify::Defer::Ping => {
                let kind = PendingKind::Prove { addr: to.clone() };
                if self.send_request(now, to.clone(), requester, Request::Ping, kind) {
                    self.stats.proving_pings += 1;
                    self.guard.proof_sent(&to);
                } else if !self.guard.proving(&to) {
                    let n = self.guard.take(&to).len() as u64;
                    self.stats.replies_deferred_dropped += n;
                }
            }
            crate::amplify::Defer::Full => self.stats.replies_deferred_dropped += 1,
        }
    }

    /// Whether `from` (a UDP address) has answered one of our requests, a proving PING
    /// included: it is no forged source, and the runtime serves its datagrams with those of
    /// the peers we asked.
    pub(crate) fn answered_us(&self, from: &PeerAddr) -> bool {
        self.guard.is_proven(from)
    }

    /// `from` answered one of our requests: it receives what is sent to it.
    pub(super) fn address_proven(&mut self, now: Instant, from: &PeerAddr) {
        if !crate::amplify::guarded(from) {
            return;
        }
        self.guard.proven(from);
        for mut msg in self.guard.take(from) {
            // Re-stamped when encoded; still answers the requester's transaction.
            msg.read_only = self.config.read_only;
            self.send_reply(now, from.clone(), msg);
        }
    }

    pub(super) fn emit(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }
}
