//! The UDP anti-amplification guard (PROTOCOL.md section 9), driven by hand with the native codec:
//! a large answer to an address that never answered us waits for a PING round trip, a forged
//! source gets only a PING no larger than what it sent, and nothing is lost.
#![allow(clippy::disallowed_methods)] // tests read the OS clock for the engine's `now`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kad_core::{
    Body, Config, Contact, Event, Input, NativeCodec, NativeIdentity, Node, NodeId, Output,
    PeerAddr, QueryResult, Request,
};

fn node(secret: u8, port: u16, now: Instant) -> Node {
    let mut s = [0u8; 32];
    s[31] = secret;
    let id = Arc::new(NativeIdentity::from_secret(&s).unwrap());
    let addr = PeerAddr::Udp(format!("127.0.0.1:{port}").parse().unwrap());
    Node::builder(Config::default())
        .identity(id.clone())
        .codec(Box::new(NativeCodec::new(id)))
        .addrs(vec![addr])
        .build(now)
        .unwrap()
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

#[test]
fn a_large_answer_to_an_unproven_address_waits_for_a_ping_round_trip() {
    let now = Instant::now();
    let mut a = node(1, 4001, now);
    let mut b = node(2, 4002, now);
    // B knows 20 contacts, so its FIND_NODE answer is far larger than the request.
    for i in 0..40u8 {
        let mut id = [0u8; 20];
        id[0] = i;
        id[19] = 7;
        let c = Contact::with_addrs(
            NodeId::from_bytes(id),
            vec![PeerAddr::Udp(
                format!("127.0.0.{}:{}", i + 10, 5000).parse().unwrap(),
            )],
        );
        b.add_contact(now, c);
    }
    a.add_contact(now, b.contact().clone());
    let q = a.find_node(now, NodeId::from_bytes([9; 20])).unwrap();
    let (sent, _) = drain(&mut a);
    let (to, req, _) = sent.into_iter().next().unwrap();
    assert_eq!(to, addr(&b));
    b.handle_input(
        now,
        Input::Datagram {
            from: addr(&a),
            data: req.clone(),
        },
    );
    // B does not answer yet: it sends a PING, no larger than the request.
    let (sent, _) = drain(&mut b);
    assert_eq!(sent.len(), 1, "one PING, no answer");
    let (to, ping, body) = &sent[0];
    assert_eq!(to, &addr(&a));
    assert!(matches!(body, Body::Request(Request::Ping)), "{body:?}");
    assert!(
        ping.len() <= req.len(),
        "PING {} > request {}",
        ping.len(),
        req.len()
    );
    assert_eq!(b.stats().replies_deferred, 1);
    assert_eq!(b.stats().proving_pings, 1);
    // A answers the PING in full (it is waiting on B), which proves A's address to B ...
    a.handle_input(
        now,
        Input::Datagram {
            from: addr(&b),
            data: ping.clone(),
        },
    );
    let (sent, _) = drain(&mut a);
    assert_eq!(sent.len(), 1);
    b.handle_input(
        now,
        Input::Datagram {
            from: addr(&a),
            data: sent[0].1.clone(),
        },
    );
    // ... and B sends the held answer: 20 contacts, larger than the request.
    let (sent, _) = drain(&mut b);
    assert_eq!(sent.len(), 1);
    let (_, answer, body) = &sent[0];
    assert!(answer.len() > req.len());
    let Body::Response(r) = body else {
        panic!("{body:?}")
    };
    assert_eq!(r.nodes().len(), 20);
    a.handle_input(
        now,
        Input::Datagram {
            from: addr(&b),
            data: answer.clone(),
        },
    );
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
    for i in 0..20u8 {
        let mut id = [0u8; 20];
        id[0] = i;
        b.add_contact(
            now,
            Contact::with_addrs(NodeId::from_bytes(id), vec![addr(&a)]),
        );
    }
    a.add_contact(now, b.contact().clone());
    let _ = a.find_node(now, NodeId::from_bytes([9; 20])).unwrap();
    let (sent, _) = drain(&mut a);
    let req = sent[0].1.clone();
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
    let mut s = [0u8; 32];
    s[31] = 2;
    let id = Arc::new(NativeIdentity::from_secret(&s).unwrap());
    let mut cfg = Config::default();
    cfg.amplification_guard = false;
    let mut b = Node::builder(cfg)
        .identity(id.clone())
        .codec(Box::new(NativeCodec::new(id)))
        .addrs(vec![PeerAddr::Udp("127.0.0.1:4002".parse().unwrap())])
        .build(now)
        .unwrap();
    for i in 0..20u8 {
        let mut nid = [0u8; 20];
        nid[0] = i;
        b.add_contact(
            now,
            Contact::with_addrs(NodeId::from_bytes(nid), vec![addr(&a)]),
        );
    }
    a.add_contact(now, b.contact().clone());
    let _ = a.find_node(now, NodeId::from_bytes([9; 20])).unwrap();
    let (sent, _) = drain(&mut a);
    b.handle_input(
        now,
        Input::Datagram {
            from: addr(&a),
            data: sent[0].1.clone(),
        },
    );
    let (sent, _) = drain(&mut b);
    assert!(matches!(sent[0].2, Body::Response(_)), "answered at once");
    assert_eq!(b.stats().replies_deferred, 0);
}
