//! The UDP anti-amplification guard (PROTOCOL.md section 9), driven by hand with the native codec:
//! a large answer to an address that never answered us waits for a PING round trip, a forged
//! source gets only a PING no larger than what it sent, and nothing is lost.
#![allow(clippy::disallowed_methods)] // tests read the OS clock for the engine's `now`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kad_core::{
    Body, Config, Event, Input, NativeCodec, NativeIdentity, Node, NodeId, Output, PeerAddr,
    QueryId, QueryResult, Request, Response,
};

fn node(secret: u8, port: u16, now: Instant) -> Node {
    node_with(secret, port, now, Config::default())
}

fn node_with(secret: u8, port: u16, now: Instant, config: Config) -> Node {
    let addr = PeerAddr::Udp(format!("127.0.0.1:{port}").parse().unwrap());
    node_at(secret, addr, now, config)
}

fn node_at(secret: u8, addr: PeerAddr, now: Instant, config: Config) -> Node {
    let mut s = [0u8; 32];
    s[31] = secret;
    let id = Arc::new(NativeIdentity::from_secret(&s).unwrap());
    Node::builder(config)
        .identity(id.clone())
        .codec(Box::new(NativeCodec::new(id)))
        .addrs(vec![addr])
        .build(now)
        .unwrap()
}

/// Gives `b` `count` contacts (so its FIND_NODE answers carry 20 of them, far larger than a
/// request): nodes at 127.0.0.(10 + i):5000 that answer a PING of `b`'s (a node hands out only
/// contacts that have answered it).
fn with_contacts(b: &mut Node, now: Instant, count: u8) {
    for i in 0..count {
        let at = PeerAddr::Udp(format!("127.0.0.{}:5000", i + 10).parse().unwrap());
        let mut c = node_at(100 + i, at.clone(), now, Config::default());
        b.ping(now, at.clone()).unwrap();
        // Deliver what each sends to the other (the PING, c's proving PING, their answers)
        // until both are quiet.
        loop {
            let (to_c, _) = drain(b);
            let (to_b, _) = drain(&mut c);
            if to_c.is_empty() && to_b.is_empty() {
                break;
            }
            for (_, data, _) in to_c {
                c.handle_input(
                    now,
                    Input::Datagram {
                        from: addr(b),
                        data,
                    },
                );
            }
            for (_, data, _) in to_b {
                let from = at.clone();
                b.handle_input(now, Input::Datagram { from, data });
            }
        }
    }
    // A full bucket may have left one or two in its replacement cache.
    assert!(b.routing_table().closest_answered(&NodeId::ZERO, 64).len() >= 20);
}

/// Starts a lookup on `a` whose only contact is `b`: the query and its signed FIND_NODE to `b`.
fn find_node_request(a: &mut Node, b: &Node, now: Instant) -> (QueryId, Bytes) {
    a.add_contact(now, b.contact().clone());
    let q = a.find_node(now, NodeId::from_bytes([9; 20])).unwrap();
    let (sent, _) = drain(a);
    assert_eq!(sent.len(), 1, "one request, to b");
    assert_eq!(sent[0].0, addr(b));
    (q, sent[0].1.clone())
}

/// Drains `n`'s outputs: encoded datagrams with their destinations, and events.
fn drain(n: &mut Node) -> (Vec<(PeerAddr, Bytes, Body)>, Vec<Event>) {
    let (mut sent, mut events) = (Vec::new(), Vec::new());
    while let Some(o) = n.poll_output() {
        match o {
            Output::Send { to, msg } => {
                let b = n.encode_to(&to, &msg).unwrap();
                sent.push((to, b, msg.body));
            }
            Output::Event(e) => events.push(e),
            _ => {}
        }
    }
    (sent, events)
}

fn addr(n: &Node) -> PeerAddr {
    n.contact().addrs[0].clone()
}

/// Delivers `data` to `to` as a datagram from `from`'s address.
fn datagram(to: &mut Node, from: &Node, data: Bytes, now: Instant) {
    let from = addr(from);
    to.handle_input(now, Input::Datagram { from, data });
}

#[test]
fn a_large_answer_to_an_unproven_address_waits_for_a_ping_round_trip() {
    let now = Instant::now();
    let mut a = node(1, 4001, now);
    let mut b = node(2, 4002, now);
    with_contacts(&mut b, now, 40);
    let (q, req) = find_node_request(&mut a, &b, now);
    datagram(&mut b, &a, req.clone(), now);
    // B does not answer yet: it sends a PING, no larger than the request.
    let (sent, _) = drain(&mut b);
    assert_eq!(sent.len(), 1, "one PING, no answer: {sent:?}");
    let (to, ping, body) = &sent[0];
    assert_eq!(to, &addr(&a));
    assert!(matches!(body, Body::Request(Request::Ping)), "{body:?}");
    assert!(
        ping.len() <= req.len(),
        "PING {} > request {}",
        ping.len(),
        req.len()
    );
    // It names A, whose key came with the request: MAC'd (64 hex digits), not signed (128).
    let text = std::str::from_utf8(ping).unwrap();
    let to_a = format!("\"to\":\"{}\"", a.contact().id.to_hex());
    assert!(text.contains(&to_a), "the PING names the requester: {text}");
    let auth = text.rsplit(",\"").next().unwrap();
    assert_eq!(auth.len(), 64 + 2, "the PING is MAC'd: {text}");
    assert_eq!(b.stats().replies_deferred, 1);
    assert_eq!(b.stats().proving_pings, 1);
    // A answers the PING in full (it is waiting on B), which proves A's address to B ...
    datagram(&mut a, &b, ping.clone(), now);
    let (sent, _) = drain(&mut a);
    assert_eq!(sent.len(), 1);
    datagram(&mut b, &a, sent[0].1.clone(), now);
    // ... and B sends the held answer: 20 contacts, larger than the request.
    let (sent, _) = drain(&mut b);
    assert_eq!(sent.len(), 1);
    let (_, answer, body) = &sent[0];
    assert!(answer.len() > req.len());
    let Body::Response(r) = body else {
        panic!("{body:?}")
    };
    assert_eq!(r.nodes().len(), 20);
    datagram(&mut a, &b, answer.clone(), now);
    // Later answers to A are immediate.
    let (more, _) = drain(&mut a);
    let (b_addr, a_addr) = (addr(&b), addr(&a));
    for (_, bytes, _) in more.iter().filter(|(to, ..)| *to == b_addr) {
        b.handle_input(
            now,
            Input::Datagram {
                from: a_addr.clone(),
                data: bytes.clone(),
            },
        );
    }
    assert_eq!(b.stats().replies_deferred, 1, "A is proven now");
    assert_eq!(b.stats().replies_deferred_dropped, 0);
    // The lookup itself finishes (the other contacts never answer; let it time out).
    let mut t = now;
    let mut done = false;
    for _ in 0..200 {
        t += Duration::from_millis(100);
        a.handle_input(t, Input::Timeout);
        let (_, ev) = drain(&mut a);
        done |= ev.iter().any(|e| {
            matches!(e, Event::QueryDone { id, result: QueryResult::FindNode(Ok(o)) }
                if *id == q && o.closest.iter().any(|c| c.id == b.id()))
        });
        if done {
            break;
        }
    }
    assert!(done, "the lookup finished with B's answer");
}

#[test]
fn a_forged_source_gets_one_small_ping_and_the_held_answer_is_dropped() {
    let now = Instant::now();
    let mut a = node(1, 4001, now);
    let mut b = node(2, 4002, now);
    with_contacts(&mut b, now, 20);
    let (_, req) = find_node_request(&mut a, &b, now);
    // The request arrives "from" a victim that never asked anything.
    let victim = PeerAddr::Udp("127.9.9.9:6881".parse().unwrap());
    let mut bytes_to_victim = 0;
    b.handle_input(
        now,
        Input::Datagram {
            from: victim.clone(),
            data: req.clone(),
        },
    );
    let (sent, _) = drain(&mut b);
    for (to, bytes, body) in &sent {
        assert_eq!(to, &victim);
        assert!(matches!(body, Body::Request(Request::Ping)));
        bytes_to_victim += bytes.len();
    }
    assert!(
        bytes_to_victim <= req.len(),
        "{bytes_to_victim} > {}",
        req.len()
    );
    // The victim never answers: the held answer is dropped at the PING's deadline.
    let mut t = now;
    for _ in 0..100 {
        t += Duration::from_millis(100);
        b.handle_input(t, Input::Timeout);
        let (sent, _) = drain(&mut b);
        assert!(
            sent.iter().all(|(to, ..)| *to != victim),
            "nothing more to the victim"
        );
    }
    assert_eq!(b.stats().replies_deferred_dropped, 1);
}

#[test]
fn the_guard_can_be_turned_off() {
    let now = Instant::now();
    let mut a = node(1, 4001, now);
    let mut cfg = Config::default();
    cfg.amplification_guard = false;
    let mut b = node_with(2, 4002, now, cfg);
    with_contacts(&mut b, now, 20);
    let (_, req) = find_node_request(&mut a, &b, now);
    datagram(&mut b, &a, req, now);
    let (sent, _) = drain(&mut b);
    assert!(matches!(sent[0].2, Body::Response(_)), "answered at once");
    assert_eq!(b.stats().replies_deferred, 0);
    assert_eq!(b.stats().proving_pings, 0);
}

/// A lost proving PING costs only the request it was sent for: the requester asks again, that
/// request gets a PING of its own, and its answer comes once that PING is answered (before, the
/// second request waited on the lost PING and was dropped with it, which on a lossy link cost a
/// lookup one node in five).
#[test]
fn a_lost_proving_ping_costs_only_its_own_request() {
    let now = Instant::now();
    let mut a = node(1, 4001, now);
    let mut b = node(2, 4002, now);
    with_contacts(&mut b, now, 40);
    let (_, first) = find_node_request(&mut a, &b, now);
    let (_, second) = find_node_request(&mut a, &b, now);
    // First request: a PING that is lost on the way.
    datagram(&mut b, &a, first, now);
    let (sent, _) = drain(&mut b);
    assert_eq!(sent.len(), 1);
    // Second request: a PING of its own, which A answers.
    let t = now + Duration::from_millis(100);
    b.handle_input(
        t,
        Input::Datagram {
            from: addr(&a),
            data: second,
        },
    );
    let (sent, _) = drain(&mut b);
    assert_eq!(sent.len(), 1, "one more PING, for the second request");
    assert!(matches!(sent[0].2, Body::Request(Request::Ping)));
    assert_eq!(b.stats().proving_pings, 2);
    // The first PING times out (250 ms, the least hard timeout: B's PINGs to its contacts
    // were answered at once): nothing held is dropped while the second one is in flight.
    let t2 = now + Duration::from_millis(300);
    b.handle_input(t2, Input::Timeout);
    let _ = drain(&mut b);
    assert_eq!(b.stats().timeouts, 1, "the first PING timed out");
    assert_eq!(b.stats().replies_deferred_dropped, 0);
    a.handle_input(
        t2,
        Input::Datagram {
            from: addr(&b),
            data: sent[0].1.clone(),
        },
    );
    let (pong, _) = drain(&mut a);
    b.handle_input(
        t2,
        Input::Datagram {
            from: addr(&a),
            data: pong[0].1.clone(),
        },
    );
    let (answers, _) = drain(&mut b);
    let answered = answers
        .iter()
        .filter(|(to, _, body)| *to == addr(&a) && matches!(body, Body::Response(_)))
        .count();
    assert_eq!(answered, 2, "both held answers go out once A is proven");
    assert_eq!(b.stats().replies_deferred_dropped, 0);
}

#[test]
fn a_store_answer_naming_contacts_is_trimmed_to_the_request_not_held() {
    let now = Instant::now();
    let mut a = node(1, 4001, now);
    let mut b = node(2, 4002, now);
    with_contacts(&mut b, now, 40);
    // A's only contact is b, which has answered a PING of a's: a's put stores at once, asking
    // b for the closest contacts it knows.
    a.ping(now, addr(&b)).unwrap();
    let (sent, _) = drain(&mut a);
    datagram(&mut b, &a, sent[0].1.clone(), now);
    let (sent, _) = drain(&mut b);
    let pong = sent
        .iter()
        .find(|(to, _, body)| to == &addr(&a) && matches!(body, Body::Response(Response::Pong)));
    datagram(&mut a, &b, pong.expect("b answers the PING").1.clone(), now);
    let _ = drain(&mut a);
    a.put(now, NodeId::from_bytes([9; 20]), Bytes::from_static(b"v"))
        .unwrap();
    let (sent, _) = drain(&mut a);
    let [
        (
            to,
            req,
            Body::Request(Request::Store {
                want_nodes: true, ..
            }),
        ),
    ] = &sent[..]
    else {
        panic!("one STORE asking for contacts: {sent:?}");
    };
    assert_eq!(to, &addr(&b));
    datagram(&mut b, &a, req.clone(), now);
    // B knows 20 contacts to name, far more than fit in the size of the request: it answers at
    // once, with the closest that fit, instead of holding the answer for a proving PING (it
    // still PINGs a, as any requester new to it, before a enters its table).
    let (sent, _) = drain(&mut b);
    let [
        (to, answer, Body::Response(Response::Stored { nodes })),
        rest @ ..,
    ] = &sent[..]
    else {
        panic!("the answer first: {sent:?}");
    };
    assert!(
        rest.iter()
            .all(|(_, _, body)| matches!(body, Body::Request(Request::Ping))),
        "{rest:?}"
    );
    assert_eq!(to, &addr(&a));
    assert!(
        answer.len() <= req.len(),
        "{} > {}",
        answer.len(),
        req.len()
    );
    assert!(!nodes.is_empty() && nodes.len() < 20, "{}", nodes.len());
    let closest = b
        .routing_table()
        .closest_answered(&NodeId::from_bytes([9; 20]), nodes.len());
    let named: Vec<NodeId> = nodes.iter().map(|c| c.id).collect();
    let expected: Vec<NodeId> = closest.iter().map(|c| c.id).collect();
    assert_eq!(named, expected, "the closest are kept");
    assert_eq!(b.stats().replies_deferred, 0);
    assert_eq!(b.stats().proving_pings, 0);
}

/// A requester new to the table is PINGed before it is handed out, unless a request of ours to
/// its address is already out: that request's answer verifies it just as well, so the PING
/// would only cost both nodes a round trip.
#[test]
fn a_requester_we_are_waiting_on_gets_no_verifying_ping() {
    for waiting in [false, true] {
        let now = Instant::now();
        let mut a = node(1, 4001, now);
        let mut b = node(2, 4002, now);
        if waiting {
            // A asks B's address (a bare PING, B not in A's table); the answer is still out.
            a.ping(now, addr(&b)).unwrap();
            let (sent, _) = drain(&mut a);
            assert_eq!(sent.len(), 1);
        }
        // B, which knows A, sends A a request naming it.
        b.add_contact(now, a.contact().clone());
        b.find_node(now, NodeId::from_bytes([9; 20])).unwrap();
        let (sent, _) = drain(&mut b);
        assert_eq!(sent.len(), 1, "one request, to a");
        datagram(&mut a, &b, sent[0].1.clone(), now);
        let (sent, _) = drain(&mut a);
        let pings = sent
            .iter()
            .filter(|(_, _, body)| matches!(body, Body::Request(Request::Ping)))
            .count();
        assert!(
            sent.iter()
                .any(|(_, _, body)| matches!(body, Body::Response(_))),
            "a answers: {sent:?}"
        );
        assert!(
            a.routing_table().get(&b.contact().id).is_some(),
            "b is in a's table"
        );
        if waiting {
            assert_eq!(pings, 0, "no PING: {sent:?}");
            assert_eq!(a.stats().verify_pings, 0);
        } else {
            assert_eq!(pings, 1, "a verifying PING: {sent:?}");
            assert_eq!(a.stats().verify_pings, 1);
        }
    }
}
