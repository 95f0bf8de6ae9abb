//! Unit tests of the engine.

use super::*;
use crate::message::{Body, Response};
use crate::record::{MemoryStore, Rejected};

/// The default config with a wall clock that reads `epoch_ms` at `base`.
fn virtual_config(base: Instant, epoch_ms: u64) -> Config {
    Config {
        wall_clock: Arc::new(crate::config::VirtualClock { base, epoch_ms }),
        ..Config::default()
    }
}

fn node(b: u8, cfg: Config) -> Node {
    Node::builder(cfg)
        .id(NodeId([b; 20]))
        .addrs(vec![PeerAddr::Mem(u64::from(b))])
        .build(Instant::now())
        .unwrap()
}

fn sends(n: &mut Node) -> Vec<(PeerAddr, Message)> {
    let mut v = Vec::new();
    while let Some(o) = n.poll_output() {
        if let Output::Send { to, msg } = o {
            v.push((to, msg));
        }
    }
    v
}

/// Delivers a STORE of `rec` from `peer` (at `mem://2`) to `a` and returns the answer.
fn store_from(a: &mut Node, now: Instant, peer: &Contact, rec: Record) -> Result<(), RpcError> {
    let body = Body::Request(Request::Store {
        record: rec,
        want_nodes: false,
    });
    let msg = Message {
        txn: TxnId::from_bytes(vec![7]),
        sender: peer.clone(),
        recipient: None,
        read_only: false,
        observed: None,
        body,
    };
    a.handle_input(
        now,
        Input::Message {
            from: PeerAddr::Mem(2),
            msg,
        },
    );
    match sends(a).pop().map(|(_, m)| m.body) {
        Some(Body::Response(Response::Stored { .. })) => Ok(()),
        Some(Body::Error(e)) => Err(e),
        other => panic!("unexpected answer {other:?}"),
    }
}

fn deliver(a: &mut Node, now: Instant, from: u64, msg: Message) {
    a.handle_input(
        now,
        Input::Message {
            from: PeerAddr::Mem(from),
            msg,
        },
    );
}

fn answer(msg: &Message, from: &Contact, body: Body) -> Message {
    Message {
        txn: msg.txn.clone(),
        sender: from.clone(),
        recipient: Some(msg.sender.id),
        read_only: false,
        observed: None,
        body,
    }
}

#[test]
fn a_lookup_skips_contacts_no_transport_reaches_and_asks_the_next() {
    // This node speaks only mem://; its closest contacts to the target speak only ws://.
    let now = Instant::now();
    let cfg = Config {
        transport_preference: vec![crate::addr::TransportKind::Mem],
        ..Config::default()
    };
    let mut a = node(1, cfg);
    for b in 10..17u8 {
        let ws = format!("ws://127.0.0.1:{}/kad", 4000 + u16::from(b));
        a.add_contact(now, Contact::new(NodeId([b; 20]), ws.parse().unwrap()));
    }
    a.add_contact(now, Contact::new(NodeId([40; 20]), PeerAddr::Mem(40)));
    let _ = sends(&mut a);
    a.find_node(now, NodeId([10; 20])).unwrap();
    let asked: Vec<PeerAddr> = sends(&mut a).into_iter().map(|(to, _)| to).collect();
    assert_eq!(
        asked,
        vec![PeerAddr::Mem(40)],
        "the reachable contact is asked at once"
    );
}

#[test]
fn a_changed_id_is_accepted_from_the_address_asked_only_when_configured() {
    let now = Instant::now();
    let cfg = Config {
        accept_id_change: true,
        ..Config::default()
    };
    let mut a = node(1, cfg);
    let old = Contact::new(NodeId([2; 20]), PeerAddr::Mem(2));
    a.add_contact(now, old.clone());
    let q = a.call(now, &old, "x.Y", Bytes::new()).unwrap();
    let (_, req) = sends(&mut a).pop().unwrap();
    let renamed = Contact::new(NodeId([3; 20]), PeerAddr::Mem(2));
    let empty = Body::Response(Response::Custom {
        result: Bytes::new(),
        nodes: vec![],
    });
    deliver(&mut a, now, 2, answer(&req, &renamed, empty));
    let done = std::iter::from_fn(|| a.poll_output()).any(|o| matches!(o, Output::Event(Event::QueryDone { id, result: QueryResult::Call(Ok(_)) }) if id == q));
    assert!(done, "the answer completes the call");
    assert_eq!((a.stats().id_changes, a.stats().dropped_wrong_peer), (1, 0));
    assert!(
        a.routing_table().get(&old.id).is_none(),
        "the old id is forgotten"
    );
    assert!(
        a.routing_table().get(&renamed.id).is_some(),
        "the new one is learned"
    );
}

#[test]
fn responses_must_come_from_the_peer_asked() {
    let now = Instant::now();
    let mut a = node(1, Config::default());
    let b = Contact::new(NodeId([2; 20]), PeerAddr::Mem(2));
    let q = a.call(now, &b, "x.Y", Bytes::new()).unwrap();
    let (to, req) = sends(&mut a).pop().unwrap();
    assert_eq!(to, PeerAddr::Mem(2));
    // From the right address but claiming another id.
    let impostor = Contact::new(NodeId([3; 20]), PeerAddr::Mem(2));
    let empty = Body::Response(Response::Custom {
        result: Bytes::new(),
        nodes: vec![],
    });
    let rsp = answer(&req, &impostor, empty.clone());
    deliver(&mut a, now, 2, rsp);
    assert_eq!(a.stats().dropped_wrong_peer, 1);
    // The right id from another address.
    let rsp = answer(&req, &b, empty);
    deliver(&mut a, now, 9, rsp.clone());
    assert_eq!(a.stats().dropped_unknown_txn, 1);
    // The real answer still completes the call; a replay of it is then unknown.
    deliver(&mut a, now, 2, rsp.clone());
    let done = std::iter::from_fn(|| a.poll_output()).any(|o| matches!(o, Output::Event(Event::QueryDone { id, result: QueryResult::Call(Ok(_)) }) if id == q));
    assert!(done);
    deliver(&mut a, now, 2, rsp);
    assert_eq!(a.stats().dropped_unknown_txn, 2);
    // Undecodable bytes are counted too.
    a.handle_input(
        now,
        Input::Datagram {
            from: PeerAddr::Mem(2),
            data: Bytes::from_static(b"\xff\x00garbage"),
        },
    );
    assert_eq!(a.stats().dropped_malformed, 1);
}

struct NoBad;
impl RecordValidator for NoBad {
    fn validate(&self, r: &Record) -> Result<(), Rejected> {
        if r.value.starts_with(b"bad") {
            Err(Rejected("value starts with bad".into()))
        } else {
            Ok(())
        }
    }
}

#[test]
fn inbound_store_is_validated() {
    let now = Instant::now();
    let cfg = Config {
        max_value_len: 16,
        ..virtual_config(now, 1_000_000)
    };
    let mut a = Node::builder(cfg)
        .id(NodeId([1; 20]))
        .addrs(vec![PeerAddr::Mem(1)])
        .validator(Arc::new(NoBad))
        .build(now)
        .unwrap();
    let peer = Contact::new(NodeId([2; 20]), PeerAddr::Mem(2));
    let key = NodeId([7; 20]);
    let store = |a: &mut Node, rec: Record| store_from(a, now, &peer, rec);
    let day = 86_400_000;
    assert_eq!(
        store(
            &mut a,
            Record::new(key, "x".repeat(17), None, 1_000_000, day)
        )
        .unwrap_err()
        .code,
        RpcError::INVALID_PARAMS
    );
    assert_eq!(
        store(&mut a, Record::new(key, "bad value", None, 1_000_000, day))
            .unwrap_err()
            .code,
        RpcError::REJECTED
    );
    assert!(
        store(&mut a, Record::new(key, "old", None, 0, 10))
            .unwrap_err()
            .message
            .contains("expired")
    );
    assert!(
        store(
            &mut a,
            Record::new(key, "future", None, 1_000_000 + 3_600_000, day)
        )
        .unwrap_err()
        .message
        .contains("future")
    );
    // A record that asks to live longer than our TTL is clipped to it.
    store(&mut a, Record::new(key, "v2", None, 1_000_000, 10 * day)).unwrap();
    assert_eq!(a.store().get(&key).unwrap().expires_at_ms, 1_000_000 + day);
    // The default validator keeps the most recently published value.
    assert!(store(&mut a, Record::new(key, "v1", None, 999_000, day)).is_err());
    store(&mut a, Record::new(key, "v3", None, 1_000_500, day)).unwrap();
    assert_eq!(&a.store().get(&key).unwrap().value[..], b"v3");
    assert_eq!(a.stats().records_stored, 2);
    assert_eq!(a.stats().records_rejected, 5);
    // User errors name the field and the limit.
    let e = a.put(now, key, Bytes::from(vec![0; 17])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "value is 17 bytes, larger than max_value_len = 16"
    );
}

#[test]
fn query_and_in_flight_limits_hold() {
    let now = Instant::now();
    let cfg = Config {
        max_queries: 2,
        max_in_flight: 3,
        ..Config::default()
    };
    let mut a = node(1, cfg);
    for i in 2..40u8 {
        a.add_contact(
            now,
            Contact::new(NodeId([i; 20]), PeerAddr::Mem(u64::from(i))),
        );
    }
    let q1 = a.find_node(now, NodeId([9; 20])).unwrap();
    let q2 = a.find_node(now, NodeId([19; 20])).unwrap();
    assert_eq!(
        a.find_node(now, NodeId([29; 20])).unwrap_err(),
        CommandError::TooManyQueries { limit: 2 }
    );
    assert!(a.in_flight() <= 3);
    // Time passes with no answers: both lookups end (sharing 3 in-flight slots), and the
    // in-flight table never exceeds its limit.
    let mut t = now;
    let mut done = Vec::new();
    for _ in 0..20_000 {
        t += Duration::from_millis(50);
        a.handle_input(t, Input::Timeout);
        while let Some(o) = a.poll_output() {
            if let Output::Event(Event::QueryDone {
                id,
                result: QueryResult::FindNode(Ok(r)),
            }) = o
            {
                assert!(r.closest.is_empty());
                done.push(id);
            }
        }
        assert!(a.in_flight() <= 3);
        if done.len() == 2 {
            break;
        }
    }
    assert_eq!(done.len(), 2);
    assert!(done.contains(&q1) && done.contains(&q2));
    assert!(a.stats().timeouts > 0);
}

#[test]
fn held_records_are_replicated_hourly_unless_recently_restored() {
    let t0 = Instant::now();
    let mut a = node(1, virtual_config(t0, 1_000_000_000));
    for i in 2..10u8 {
        a.add_contact(
            t0,
            Contact::new(NodeId([i; 20]), PeerAddr::Mem(u64::from(i))),
        );
    }
    let peer = Contact::new(NodeId([2; 20]), PeerAddr::Mem(2));
    let store = |a: &mut Node, now: Instant, key: NodeId| {
        let rec = Record::new(key, "v", Some(peer.id), a.unix_ms(now), 86_400_000);
        store_from(a, now, &peer, rec).unwrap();
    };
    let (k1, k2) = (NodeId([0x71; 20]), NodeId([0x72; 20]));
    store(&mut a, t0, k1);
    store(&mut a, t0, k2);
    // k2 is stored again half an hour later by another holder replicating it.
    store(&mut a, t0 + Duration::from_secs(1800), k2);
    // Drive maintenance past the hour; watch which keys our puts look up or store at once (a
    // table of 8 contacts knows every node).
    let mut looked_up = std::collections::BTreeSet::new();
    let mut t = t0;
    while t < t0 + Duration::from_secs(3600 + 180) {
        t += Duration::from_secs(30);
        a.handle_input(t, Input::Timeout);
        for (_, m) in sends(&mut a) {
            match m.body {
                Body::Request(Request::FindNode { target }) => {
                    looked_up.insert(target);
                }
                Body::Request(Request::Store { record, .. }) => {
                    looked_up.insert(record.key);
                }
                _ => {}
            }
        }
    }
    assert!(
        looked_up.contains(&k1),
        "k1, stored an hour ago, is re-replicated"
    );
    assert!(
        !looked_up.contains(&k2),
        "k2 was re-stored within the hour: another holder replicates it"
    );
}

#[test]
fn a_ping_without_recipient_is_answered_but_teaches_nothing() {
    let t0 = Instant::now();
    let mut a = node(1, Config::default());
    let peer = Contact::new(NodeId([0x42; 20]), PeerAddr::Mem(42));
    for (recipient, learned) in [(None, false), (Some(a.id()), true)] {
        let msg = Message {
            txn: TxnId::from_bytes(vec![1]),
            sender: peer.clone(),
            recipient,
            read_only: false,
            observed: None,
            body: Body::Request(Request::Ping),
        };
        deliver(&mut a, t0, 42, msg);
        let out = sends(&mut a);
        assert!(matches!(
            out[0],
            (
                _,
                Message {
                    body: Body::Response(Response::Pong),
                    ..
                }
            )
        ));
        // A null-recipient PING may be a third party's replay: no routing-table change. A new
        // contact is asked for a PING of its own before it is handed out.
        assert_eq!(a.routing_table().get(&peer.id).is_some(), learned);
        assert_eq!(out.len(), 1 + usize::from(learned), "{out:?}");
        if learned {
            assert!(matches!(out[1].1.body, Body::Request(Request::Ping)));
        }
    }
}

#[test]
fn a_full_bucket_pings_its_stalest_contact_before_evicting_it() {
    let t0 = Instant::now();
    let mut a = node(
        1,
        Config {
            k: 1,
            ..Config::default()
        },
    );
    // 0x81.. and 0x82.. fall in the same bucket (159) of 0x01..: with k = 1 it holds one.
    let old = Contact::new(NodeId([0x81; 20]), PeerAddr::Mem(81));
    let new = Contact::new(NodeId([0x82; 20]), PeerAddr::Mem(82));
    let ping_from = |a: &mut Node, now: Instant, c: &Contact| {
        let PeerAddr::Mem(from) = c.addrs[0] else {
            unreachable!()
        };
        let body = Body::Request(Request::Ping);
        let msg = Message {
            txn: TxnId::from_bytes(vec![5]),
            sender: c.clone(),
            recipient: Some(a.id()),
            read_only: false,
            observed: None,
            body,
        };
        deliver(a, now, from, msg);
        sends(a)
    };
    ping_from(&mut a, t0, &old);
    assert!(a.routing_table().get(&old.id).is_some());
    // Twenty minutes later `old` is questionable; a newcomer makes the node ping it.
    let t1 = t0 + Duration::from_secs(20 * 60);
    let out = ping_from(&mut a, t1, &new);
    let pings: Vec<_> = out
        .iter()
        .filter(|(_, m)| matches!(m.body, Body::Request(Request::Ping)))
        .collect();
    // One to the stalest contact, one verifying the newcomer.
    let to: Vec<&PeerAddr> = pings.iter().map(|(to, _)| to).collect();
    assert_eq!(to, [&PeerAddr::Mem(81), &PeerAddr::Mem(82)]);
    assert!(
        a.routing_table().get(&new.id).is_none(),
        "the newcomer waits in the replacement cache"
    );
    // `old` answers: it stays, the newcomer stays a replacement.
    let pong = answer(&pings[0].1, &old, Body::Response(Response::Pong));
    deliver(&mut a, t1, 81, pong);
    assert!(a.routing_table().get(&old.id).is_some() && a.routing_table().get(&new.id).is_none());
    // Later it goes silent: the next newcomer's ping times out twice (max_failures), and the
    // freshest replacement takes its place.
    let t2 = t1 + Duration::from_secs(20 * 60);
    let out = ping_from(&mut a, t2, &new);
    assert!(
        out.iter()
            .any(|(to, m)| *to == PeerAddr::Mem(81)
                && matches!(m.body, Body::Request(Request::Ping)))
    );
    let mut t = t2;
    for _ in 0..200 {
        t += Duration::from_millis(100);
        a.handle_input(t, Input::Timeout);
        // Each further request from `new` re-offers it, which pings `old` again if needed.
        ping_from(&mut a, t, &new);
        if a.routing_table().get(&new.id).is_some() {
            break;
        }
    }
    assert!(a.routing_table().get(&old.id).is_none());
    assert!(a.routing_table().get(&new.id).is_some());
    assert!(a.stats().timeouts >= 2);
}

/// Refresh lookups after a bootstrap go to the farthest non-full buckets, down to the bucket
/// of the closest contact: nearer than that no node is known to exist.
#[test]
fn bootstrap_refresh_looks_up_the_farthest_non_full_buckets() {
    // The seed is in bucket 159; `near` (named by the seed) differs from us in the last bits
    // only, bucket 1. With `near`: buckets 159, 158 and 157; with only the seed: 159 alone.
    for with_near in [true, false] {
        let t0 = Instant::now();
        let mut a = node(
            1,
            Config {
                bootstrap_refresh: 3,
                ..Config::default()
            },
        );
        let seed = Contact::new(NodeId([0x80; 20]), PeerAddr::Mem(80));
        let mut near_id = [1u8; 20];
        near_id[19] = 3;
        let near = Contact::new(NodeId(near_id), PeerAddr::Mem(81));
        let named = if with_near {
            vec![near.clone()]
        } else {
            vec![]
        };
        a.bootstrap_with(t0, vec![seed.clone()]).unwrap();
        let (_, req) = sends(&mut a).pop().unwrap();
        let body = Body::Response(Response::Nodes {
            nodes: named.clone(),
        });
        deliver(&mut a, t0, 80, answer(&req, &seed, body));
        // Every contact answers every lookup request, naming `named` (the seed's answer).
        let mut done = Vec::new();
        let mut targets = Vec::new();
        let mut t = t0;
        for _ in 0..20 {
            while let Some(o) = a.poll_output() {
                match o {
                    Output::Event(Event::QueryDone { result, .. }) => done.push(result),
                    Output::Send { to, msg } => {
                        if let Body::Request(Request::FindNode { target }) = msg.body {
                            if target != a.id() && to == seed.addrs[0] {
                                targets.push(target);
                            }
                            let (from, at) = if to == seed.addrs[0] {
                                (&seed, 80)
                            } else {
                                (&near, 81)
                            };
                            let body = Body::Response(Response::Nodes {
                                nodes: named.clone(),
                            });
                            deliver(&mut a, t, at, answer(&msg, from, body));
                        }
                    }
                    _ => {}
                }
            }
            t += Duration::from_millis(100);
            a.handle_input(t, Input::Timeout);
        }
        assert!(matches!(done[0], QueryResult::Bootstrap(Ok(_))), "{done:?}");
        // (A table this thin also gets lookups of the node's own id, with backoff: not counted.)
        let me = a.id();
        let mut buckets: Vec<_> = done
            .iter()
            .filter_map(|r| match r {
                QueryResult::Refresh(o) if o.target != me => a.id().bucket_index(&o.target),
                _ => None,
            })
            .collect();
        buckets.sort_unstable();
        let want = if with_near {
            vec![157, 158, 159]
        } else {
            vec![159]
        };
        assert_eq!(buckets, want, "{done:?}");
        assert_eq!(
            targets.len(),
            want.len(),
            "one request to the seed per refresh"
        );
    }
}

#[test]
fn a_bootstrap_ping_to_a_silent_seed_is_sent_seven_times_at_a_constant_interval() {
    let t0 = Instant::now();
    let mut a = node(1, Config::default());
    a.bootstrap(t0, &[PeerAddr::Mem(80)]).unwrap();
    let mut pings = Vec::new();
    let mut done = None;
    let mut t = t0;
    while t < t0 + Duration::from_secs(60) && done.is_none() {
        while let Some(o) = a.poll_output() {
            match o {
                Output::Send { to, msg }
                    if to == PeerAddr::Mem(80)
                        && matches!(msg.body, Body::Request(Request::Ping)) =>
                {
                    pings.push(t - t0);
                }
                Output::Event(Event::QueryDone { result, .. }) => done = Some(result),
                _ => {}
            }
        }
        t += Duration::from_millis(50);
        a.handle_input(t, Input::Timeout);
    }
    assert_eq!(pings.len(), 7, "{pings:?}");
    // The hard timeout before any round trip was measured (2.25 s by default), every time:
    // no doubling.
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    for g in &gaps {
        assert!(g.abs_diff(gaps[0]) <= Duration::from_millis(50), "{gaps:?}");
    }
    assert!(
        gaps[0] >= Duration::from_secs(2) && gaps[0] <= Duration::from_millis(2300),
        "{gaps:?}"
    );
    assert!(
        matches!(done, Some(QueryResult::Bootstrap(Err(_)))),
        "{done:?}"
    );
}

/// A request from `from` (from its first address, in memory) to `a`; returns what `a` sends.
fn request_from(
    a: &mut Node,
    now: Instant,
    from: &Contact,
    req: Request,
) -> Vec<(PeerAddr, Message)> {
    let msg = Message {
        txn: TxnId::from_bytes(vec![from.id.0[0], 1]),
        sender: from.clone(),
        recipient: Some(a.id()),
        read_only: false,
        observed: None,
        body: Body::Request(req),
    };
    let PeerAddr::Mem(at) = from.addrs[0] else {
        panic!("an in-memory contact")
    };
    deliver(a, now, at, msg);
    sends(a)
}

/// The nodes named in `a`'s answer to a FIND_NODE of `asker` for `target`.
fn named_by(a: &mut Node, now: Instant, asker: &Contact, target: NodeId) -> Vec<NodeId> {
    request_from(a, now, asker, Request::FindNode { target })
        .into_iter()
        .find_map(|(_, m)| match m.body {
            Body::Response(Response::Nodes { nodes }) => {
                Some(nodes.into_iter().map(|c| c.id).collect())
            }
            _ => None,
        })
        .expect("an answer")
}

/// A node that has only sent us requests is not handed out (it may be a client about to
/// leave, a forged source, or an id its node never answers to): it is PINGed, and named in
/// answers once it has answered. One that never answers is never named.
#[test]
fn a_requester_is_handed_out_only_once_it_has_answered_a_ping() {
    let now = Instant::now();
    let mut a = node(1, Config::default());
    let (p, q, silent) = (
        Contact::new(NodeId([0x10; 20]), PeerAddr::Mem(0x10)),
        Contact::new(NodeId([0x80; 20]), PeerAddr::Mem(0x80)),
        Contact::new(NodeId([0x11; 20]), PeerAddr::Mem(0x11)),
    );
    for c in [&p, &silent] {
        let out = request_from(&mut a, now, c, Request::Ping);
        assert_eq!(out.len(), 2, "a PONG and a PING of our own: {out:?}");
        assert!(matches!(out[1].1.body, Body::Request(Request::Ping)));
        assert_eq!(out[1].0, c.addrs[0]);
        if *c == p {
            deliver(
                &mut a,
                now,
                0x10,
                answer(&out[1].1, &p, Body::Response(Response::Pong)),
            );
        }
    }
    assert_eq!(a.stats().verify_pings, 2);
    assert!(
        a.routing_table().get(&silent.id).is_some(),
        "kept in the table"
    );
    assert_eq!(
        named_by(&mut a, now, &q, p.id),
        vec![p.id],
        "only the one that answered"
    );
    // Asking again changes nothing: no second PING for a known contact.
    let out = request_from(&mut a, now, &silent, Request::Ping);
    assert_eq!(out.len(), 1, "only the PONG: {out:?}");
    assert_eq!(named_by(&mut a, now, &q, silent.id), vec![p.id]);
}

/// Mainline: a node that pings us under an id it never answers to (the `mainline` crate does)
/// answers our PING under its own id; the id it used is forgotten, never handed out.
#[test]
fn an_id_never_answered_to_is_forgotten_when_the_ping_comes_back_under_another() {
    let now = Instant::now();
    let cfg = Config {
        accept_id_change: true,
        ..Config::default()
    };
    let mut a = node(1, cfg);
    let real = Contact::new(NodeId([0x10; 20]), PeerAddr::Mem(0x10));
    let phantom = Contact::new(NodeId([0x12; 20]), PeerAddr::Mem(0x10));
    let asker = Contact::new(NodeId([0x80; 20]), PeerAddr::Mem(0x80));
    let out = request_from(&mut a, now, &phantom, Request::Ping);
    let ping = &out[1].1;
    deliver(
        &mut a,
        now,
        0x10,
        answer(ping, &real, Body::Response(Response::Pong)),
    );
    assert!(
        a.routing_table().get(&phantom.id).is_none(),
        "{:?}",
        a.stats()
    );
    assert_eq!(named_by(&mut a, now, &asker, phantom.id), vec![real.id]);
}

#[test]
fn a_request_to_a_peer_of_known_rtt_is_sent_again_early_then_on_the_usual_schedule() {
    let t0 = Instant::now();
    let mut a = node(1, Config::default());
    let b = Contact::new(NodeId([2; 20]), PeerAddr::Mem(2));
    // One round trip of 80 ms measured with b.
    a.ping(t0, PeerAddr::Mem(2)).unwrap();
    let ping = sends(&mut a).pop().unwrap().1;
    let t1 = t0 + Duration::from_millis(80);
    deliver(
        &mut a,
        t1,
        2,
        answer(&ping, &b, Body::Response(Response::Pong)),
    );
    let srtt = a.routing.get(&b.id).map(|e| e.srtt_us);
    assert!(
        srtt.is_some_and(|us| (79_000..=80_000).contains(&us)),
        "{srtt:?}"
    );
    sends(&mut a);

    a.call(t1, &b, "x.y", Bytes::from_static(b"{}")).unwrap();
    let mut at = Vec::new();
    let mut t = t1;
    while t < t1 + Duration::from_secs(30) {
        for (to, msg) in sends(&mut a) {
            if to == PeerAddr::Mem(2) && matches!(msg.body, Body::Request(Request::Custom { .. })) {
                at.push(t - t1);
            }
        }
        t += Duration::from_millis(5);
        a.handle_input(t, Input::Timeout);
    }
    // Sent, then again at b's own timeout (1.5 round trips), then the adaptive schedule with
    // all of its retransmissions (3 by default): five sends in all.
    assert_eq!(at.len(), 5, "{at:?}");
    assert!(
        (Duration::from_millis(115)..=Duration::from_millis(130)).contains(&at[1]),
        "{at:?}"
    );
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[1] >= a.hard_timeout(), "{gaps:?}");
    assert!(gaps[2] > gaps[1] && gaps[3] > gaps[2], "backoff: {gaps:?}");
}

/// What a node sent, and the puts it finished.
type SendsAndPuts = (
    Vec<(PeerAddr, Message)>,
    Vec<Result<PutOutcome, QueryError>>,
);

/// Outputs of `a` until now: the messages sent and the puts finished.
fn sends_and_puts(a: &mut Node) -> SendsAndPuts {
    let (mut sent, mut puts) = (Vec::new(), Vec::new());
    while let Some(o) = a.poll_output() {
        match o {
            Output::Send { to, msg } => sent.push((to, msg)),
            Output::Event(Event::QueryDone {
                result: QueryResult::Put(r),
                ..
            }) => puts.push(r),
            _ => {}
        }
    }
    (sent, puts)
}

#[test]
fn a_put_that_knows_the_neighbourhood_stores_at_once_and_at_every_closer_node_named() {
    let now = Instant::now();
    let mut a = node(1, Config::default());
    let peers: Vec<Contact> = (2..6u8)
        .map(|b| Contact::new(NodeId([b; 20]), PeerAddr::Mem(u64::from(b))))
        .collect();
    for c in &peers {
        a.add_contact(now, c.clone());
        // Each has answered a request of ours before.
        a.routing.on_answer(&c.id);
    }
    let _ = sends(&mut a);
    let key = NodeId([9; 20]);
    // A record larger than a lookup's request.
    let value = Bytes::from(vec![7u8; query::DIRECT_STORE_ANY + 1]);
    a.put(now, key, value).unwrap();
    let (sent, _) = sends_and_puts(&mut a);
    // Four known nodes, fewer than k: every one is asked to store at once, nothing is looked up
    // first, and each STORE asks for the closest contacts its node knows.
    let mut asked: Vec<PeerAddr> = sent.iter().map(|(to, _)| to.clone()).collect();
    asked.sort_by_key(|a| a.to_string());
    assert_eq!(asked, (2..6).map(PeerAddr::Mem).collect::<Vec<_>>());
    assert!(sent.iter().all(|(_, m)| matches!(
        m.body,
        Body::Request(Request::Store {
            want_nodes: true,
            ..
        })
    )));
    // The first storer names a node this one never heard from: it is asked a FIND_NODE, not
    // sent the record (a name in an answer must not aim our large records at an address).
    let new = Contact::new(NodeId([8; 20]), PeerAddr::Mem(8));
    let (to, first) = &sent[0];
    let PeerAddr::Mem(n) = to else { unreachable!() };
    let who = peers
        .iter()
        .find(|c| c.id == NodeId([*n as u8; 20]))
        .unwrap();
    let body = Body::Response(Response::Stored {
        nodes: vec![new.clone()],
    });
    deliver(&mut a, now, *n, answer(first, who, body));
    let (more, puts) = sends_and_puts(&mut a);
    assert!(puts.is_empty(), "three STOREs are unanswered");
    let [(to, find)] = &more[..] else {
        panic!("{more:?}")
    };
    assert_eq!(to, &PeerAddr::Mem(8));
    assert!(matches!(find.body, Body::Request(Request::FindNode { target }) if target == key));
    let mut rest: Vec<(PeerAddr, Message)> = sent[1..].to_vec();
    rest.push((PeerAddr::Mem(8), find.clone()));
    // The other three are slow: past their soft deadline each is asked again, and each then
    // answers both STOREs (a node storing twice counts once).
    let mut t = now;
    while rest.len() < 8 && t < now + Duration::from_secs(10) {
        t += Duration::from_millis(50);
        a.handle_input(t, Input::Timeout);
        rest.extend(sends_and_puts(&mut a).0);
    }
    assert!(rest.len() >= 7, "{rest:?}");
    let mut last = Vec::new();
    for (to, m) in rest {
        let PeerAddr::Mem(n) = to else { unreachable!() };
        let from = Contact::new(NodeId([n as u8; 20]), to.clone());
        let body = if n == 8 {
            Body::Response(Response::Nodes { nodes: vec![] })
        } else {
            Body::Response(Response::Stored { nodes: vec![] })
        };
        deliver(&mut a, t, n, answer(&m, &from, body));
        let (sent, puts) = sends_and_puts(&mut a);
        assert!(puts.is_empty(), "{puts:?}");
        last.extend(sent);
    }
    // The lookup is over: the new node is among the k closest, and now gets the record.
    let [(to, store)] = &last[..] else {
        panic!("{last:?}")
    };
    assert_eq!(to, &PeerAddr::Mem(8));
    assert!(matches!(
        store.body,
        Body::Request(Request::Store {
            want_nodes: false,
            ..
        })
    ));
    deliver(
        &mut a,
        t,
        8,
        answer(
            store,
            &new,
            Body::Response(Response::Stored { nodes: vec![] }),
        ),
    );
    let (_, puts) = sends_and_puts(&mut a);
    // Five nodes stored it, and this one (among the k closest of a network of six).
    let [Ok(out)] = &puts[..] else {
        panic!("{puts:?}")
    };
    assert_eq!((out.stored, out.tried), (6, 6), "{out:?}");
    assert!(a.store.get(&key).is_some());
}

#[test]
fn a_put_that_stores_at_once_asks_a_silent_node_again_at_its_own_timeout() {
    let now = Instant::now();
    let mut a = node(1, Config::default());
    let rtt = Duration::from_millis(80);
    for b in 2..6u8 {
        let c = Contact::new(NodeId([b; 20]), PeerAddr::Mem(u64::from(b)));
        a.add_contact(now, c.clone());
        a.routing.on_answer(&c.id);
        // A steady 80 ms round trip to each.
        for _ in 0..8 {
            a.routing.record_rtt(&c.id, rtt);
        }
    }
    let rto = a
        .routing
        .get(&NodeId([2; 20]))
        .unwrap()
        .resend_after()
        .unwrap();
    assert!(rto > rtt && rto <= rtt * 3 / 2, "{rto:?}");
    let _ = sends(&mut a);
    a.put(now, NodeId([9; 20]), Bytes::from_static(b"v"))
        .unwrap();
    let (first, _) = sends_and_puts(&mut a);
    assert_eq!(first.len(), 4, "{first:?}");
    // Every STORE is lost: each node is asked again at its retransmission timeout (1.25 to 1.5
    // of its RTT), not at twice its RTT, so that one lost datagram costs about 2.4 round trips.
    let mut t = now;
    let mut again = Vec::new();
    while again.is_empty() && t < now + rtt * 4 {
        t += Duration::from_millis(2);
        a.handle_input(t, Input::Timeout);
        again = sends_and_puts(&mut a).0;
    }
    let waited = t - now;
    assert!(
        waited >= rto && waited < rtt * 2,
        "asked again after {waited:?}"
    );
    assert_eq!(again.len(), 4, "{again:?}");
    assert!(again.iter().all(|(_, m)| matches!(
        m.body,
        Body::Request(Request::Store {
            want_nodes: true,
            ..
        })
    )));
}

#[test]
fn a_put_looks_up_first_where_the_table_may_not_know_every_close_node() {
    let now = Instant::now();
    // The table knows 20 nodes near its own id, and 20 spread over the far half of the id
    // space, where the key is: nodes near the key may be missing from it.
    let mut a = node(1, Config::default());
    for b in 0..20u8 {
        let mut near = [1; 20];
        near[19] = 2 + b;
        a.add_contact(
            now,
            Contact::new(NodeId(near), PeerAddr::Mem(200 + u64::from(b))),
        );
        let far = NodeId([0x80 | (b * 6); 20]);
        a.add_contact(now, Contact::new(far, PeerAddr::Mem(100 + u64::from(b))));
    }
    assert_eq!(a.routing.len(), 40);
    assert!(a.routing.knows_neighbourhood(&NodeId([1; 20]), 20));
    let _ = sends(&mut a);
    a.put(now, NodeId([0xff; 20]), Bytes::from_static(b"v"))
        .unwrap();
    let sent = sends(&mut a);
    assert!(!sent.is_empty());
    assert!(
        sent.iter()
            .all(|(_, m)| matches!(m.body, Body::Request(Request::FindNode { .. }))),
        "{sent:?}"
    );
    // Where the table does know the neighbourhood, the setting turns the shortcut off.
    let cfg = Config {
        direct_put: false,
        ..Config::default()
    };
    let mut b = node(1, cfg);
    b.add_contact(now, Contact::new(NodeId([2; 20]), PeerAddr::Mem(2)));
    b.routing.on_answer(&NodeId([2; 20]));
    let _ = sends(&mut b);
    b.put(now, NodeId([9; 20]), Bytes::from_static(b"v"))
        .unwrap();
    let sent = sends(&mut b);
    assert!(
        matches!(&sent[..], [(_, m)] if matches!(m.body, Body::Request(Request::FindNode { .. }))),
        "{sent:?}"
    );
}

#[test]
fn a_small_record_goes_to_a_node_named_in_an_answer_at_once() {
    let now = Instant::now();
    let mut a = node(1, Config::default());
    let b = Contact::new(NodeId([2; 20]), PeerAddr::Mem(2));
    a.add_contact(now, b.clone());
    a.routing.on_answer(&b.id);
    let _ = sends(&mut a);
    let small = Bytes::from(vec![7u8; query::DIRECT_STORE_ANY]);
    a.put(now, NodeId([9; 20]), small).unwrap();
    let (sent, _) = sends_and_puts(&mut a);
    let [(_, first)] = &sent[..] else {
        panic!("{sent:?}")
    };
    let new = Contact::new(NodeId([8; 20]), PeerAddr::Mem(8));
    let body = Body::Response(Response::Stored { nodes: vec![new] });
    deliver(&mut a, now, 2, answer(first, &b, body));
    let (more, _) = sends_and_puts(&mut a);
    assert!(
        matches!(&more[..], [(PeerAddr::Mem(8), m)] if matches!(m.body, Body::Request(Request::Store { want_nodes: true, .. }))),
        "{more:?}"
    );
}

/// A store whose own records live in a map shared with the next store made from it: a node
/// restarted "on the same disk".
struct KeepsOwn {
    cache: MemoryStore,
    own: Arc<std::sync::Mutex<BTreeMap<Key, Record>>>,
}

impl RecordStore for KeepsOwn {
    fn get(&self, key: &Key) -> Option<Record> {
        self.cache.get(key)
    }
    fn put(&mut self, record: Record) -> Result<Vec<Record>, crate::record::StoreError> {
        self.cache.put(record)
    }
    fn remove(&mut self, key: &Key) -> Option<Record> {
        self.cache.remove(key)
    }
    fn remove_expired(&mut self, now_ms: u64) -> usize {
        self.cache.remove_expired(now_ms)
    }
    fn keys(&self) -> Vec<Key> {
        self.cache.keys()
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn size_bytes(&self) -> usize {
        self.cache.size_bytes()
    }
    fn keep_own(&mut self, record: &Record) -> Result<bool, crate::record::StoreError> {
        self.own.lock().unwrap().insert(record.key, record.clone());
        Ok(true)
    }
    fn own(&self, key: &Key) -> Option<Record> {
        self.own.lock().unwrap().get(key).cloned()
    }
    fn own_entries(&self) -> Vec<crate::record::OwnEntry> {
        self.own
            .lock()
            .unwrap()
            .values()
            .map(crate::record::OwnEntry::of)
            .collect()
    }
    fn forget_own(&mut self, key: &Key) -> bool {
        self.own.lock().unwrap().remove(key).is_some()
    }
}

/// Drives `a` from `from` to `to` in 5 s steps; the publish times of the STOREs of `key` sent.
/// The peers (`mem://N`, id `[N; 20]`) answer every FIND_NODE and STORE when `answer` is set.
fn stores_of(a: &mut Node, key: Key, from: Instant, to: Instant, answering: bool) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut t = from;
    while t < to {
        t += Duration::from_secs(5);
        a.handle_input(t, Input::Timeout);
        let mut pending = sends(a);
        while let Some((to_addr, m)) = pending.pop() {
            let body = match &m.body {
                Body::Request(Request::Store { record, .. }) => {
                    if record.key == key && !seen.contains(&record.published_at_ms) {
                        seen.push(record.published_at_ms);
                    }
                    Body::Response(Response::Stored { nodes: Vec::new() })
                }
                Body::Request(Request::FindNode { .. }) => {
                    Body::Response(Response::Nodes { nodes: Vec::new() })
                }
                _ => continue,
            };
            let PeerAddr::Mem(n) = to_addr else { continue };
            if answering {
                let peer = Contact::new(NodeId([n as u8; 20]), PeerAddr::Mem(n));
                deliver(a, t, n, answer(&m, &peer, body));
                pending.extend(sends(a));
            }
        }
    }
    seen
}

#[test]
fn own_records_are_republished_before_they_expire_and_again_by_a_restarted_node() {
    let t0 = Instant::now();
    let epoch = 1_000_000_000;
    let own = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let build = |at: Instant| {
        let mut cfg = virtual_config(t0, epoch);
        cfg.record_ttl = Duration::from_secs(100);
        let store = KeepsOwn {
            cache: MemoryStore::new(NodeId([1; 20]), cfg.store_limits.clone()),
            own: own.clone(),
        };
        let mut a = Node::builder(cfg)
            .id(NodeId([1; 20]))
            .addrs(vec![PeerAddr::Mem(1)])
            .store(Box::new(store))
            .build(at)
            .unwrap();
        for i in 2..10u8 {
            a.add_contact(
                at,
                Contact::new(NodeId([i; 20]), PeerAddr::Mem(u64::from(i))),
            );
        }
        a
    };
    let key = NodeId([0x55; 20]);
    let mut a = build(t0);
    a.put(t0, key, Bytes::from_static(b"mine")).unwrap();
    // A 100 s record is republished with 25 s of its life left (long before the 22 h interval),
    // between the 60 s maintenance ticks, each time with a fresh publish time.
    let published = stores_of(&mut a, key, t0, t0 + Duration::from_secs(200), true);
    assert_eq!(
        published,
        vec![epoch, epoch + 75_000, epoch + 150_000],
        "put, then republished at 75 s and 150 s"
    );
    assert_eq!(a.stats().republished, 2);
    assert_eq!(a.stats().republish_failures, 0);
    assert_eq!(a.own_keys(), vec![key]);
    assert_eq!(own.lock().unwrap()[&key].published_at_ms, epoch + 150_000);
    drop(a);

    // Restarted at 200 s on the same store: it takes the record up and republishes it when due.
    let t1 = t0 + Duration::from_secs(200);
    let mut b = build(t1);
    assert_eq!(b.own_keys(), vec![key]);
    assert_eq!(
        b.own_bytes(),
        Record::new(key, &b"mine"[..], None, 0, 0).size()
    );
    let again = stores_of(&mut b, key, t1, t1 + Duration::from_secs(80), true);
    assert_eq!(again, vec![epoch + 225_000], "due at 150 s + 75 s");
    // Nobody answers the next one: it fails (stored here only), and the silent contacts drop
    // out of the table; with none left, the node waits instead of republishing to nobody.
    let t2 = t1 + Duration::from_secs(80);
    let silent = stores_of(&mut b, key, t2, t2 + Duration::from_secs(130), false);
    assert_eq!(silent.first(), Some(&(epoch + 300_000)), "{silent:?}");
    assert!(b.stats().republish_failures >= 1, "{:?}", b.stats());
    // Contacts again: the failed record goes out within seconds, not at the 75 s schedule.
    let t3 = t2 + Duration::from_secs(130);
    for i in 2..10u8 {
        b.add_contact(
            t3,
            Contact::new(NodeId([i; 20]), PeerAddr::Mem(u64::from(i))),
        );
    }
    let back = stores_of(&mut b, key, t3, t3 + Duration::from_secs(100), true);
    let first = *back.first().expect("republished once contacts are back");
    assert!(
        first <= epoch + 490_000 + 15_000,
        "retried soon after the contacts came back: {back:?}"
    );
    assert!(b.unpublish(&key));
    assert!(own.lock().unwrap().is_empty());
    let after = t3 + Duration::from_secs(100);
    let none = stores_of(&mut b, key, after, after + Duration::from_secs(200), true);
    assert!(none.is_empty(), "no republish once unpublished: {none:?}");
}
