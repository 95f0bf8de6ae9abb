//! The engine hooks NAT traversal relies on, driven by hand (no sockets): answers say where the
//! responder saw the requester, plugins hear it only for answers to their node's own requests,
//! and a plugin can change the advertised addresses and read-only mode at run time.
#![allow(clippy::disallowed_methods)] // tests read the clock

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kad_core::{
    Body, Config, Contact, Input, Message, Node, NodeId, Output, PeerAddr, Plugin, PluginCx,
    PluginData, Reply, Request, StaticIdentity,
};

#[derive(Default)]
struct Seen {
    observed: Vec<(PeerAddr, PeerAddr)>,
    sent_to_b: Vec<bool>,
}

/// Records `on_observed`, and on command "ro"/"addrs" changes the node.
struct Probe(Arc<Mutex<Seen>>, PeerAddr);

impl Plugin for Probe {
    fn namespace(&self) -> &'static str {
        "probe"
    }
    fn on_request(&mut self, _: &mut PluginCx<'_>, _: &Contact, _: &str, _: &Bytes) -> Reply {
        Reply::Drop
    }
    fn on_observed(
        &mut self,
        cx: &mut PluginCx<'_>,
        _responder: &Contact,
        from: &PeerAddr,
        observed: &PeerAddr,
    ) {
        let mut s = self.0.lock().unwrap();
        s.observed.push((from.clone(), observed.clone()));
        s.sent_to_b
            .push(cx.sent_to_recently(self.1.socket_addr().unwrap()));
    }
    fn on_command(&mut self, cx: &mut PluginCx<'_>, query: kad_core::QueryId, input: PluginData) {
        match input.downcast_ref::<&str>().copied() {
            Some("ro") => cx.set_read_only(true),
            Some("server") => cx.set_read_only(false),
            _ => {
                let a = input.downcast_ref::<PeerAddr>().unwrap();
                cx.set_local_addrs(vec![a.clone()]);
            }
        }
        cx.complete(query, Ok(PluginData::new(())));
    }
}

fn node(id: u8, addr: &PeerAddr, plugin: Option<Probe>, now: Instant) -> Node {
    let mut b = Node::builder(Config::default())
        .identity(Arc::new(StaticIdentity(NodeId::from_bytes([id; 20]))))
        .addrs(vec![addr.clone()]);
    if let Some(p) = plugin {
        b = b.plugin(Box::new(p));
    }
    b.build(now).unwrap()
}

fn sends(n: &mut Node) -> Vec<(PeerAddr, Message)> {
    let mut out = Vec::new();
    while let Some(o) = n.poll_output() {
        if let Output::Send { to, msg } = o {
            out.push((to, msg));
        }
    }
    out
}

#[test]
fn answers_carry_the_observed_address_and_plugins_steer_the_node() {
    let now = Instant::now();
    let a_listen: PeerAddr = "udp://192.168.1.2:4000".parse().unwrap();
    let a_outside: PeerAddr = "udp://45.45.45.1:4000".parse().unwrap();
    let b_addr: PeerAddr = "udp://45.45.45.3:4000".parse().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut a = node(1, &a_listen, Some(Probe(seen.clone(), b_addr.clone())), now);
    let mut b = node(2, &b_addr, None, now);

    // A pings B; B sees the request come from A's NAT.
    a.ping(now, b_addr.clone()).unwrap();
    let out = sends(&mut a);
    assert_eq!(out.len(), 1);
    let (to, req) = out.into_iter().next().unwrap();
    assert_eq!(to, b_addr);
    assert_eq!(
        req.observed, None,
        "requests say nothing about the recipient"
    );
    assert!(!req.read_only);
    b.handle_input(
        now,
        Input::Message {
            from: a_outside.clone(),
            msg: req,
        },
    );
    let (to, rsp) = sends(&mut b).into_iter().next().unwrap();
    assert_eq!(to, a_outside);
    assert_eq!(
        rsp.observed.as_ref(),
        Some(&a_outside),
        "the answer says where B saw A"
    );

    // The same answer, unsolicited (a replay), is not heard by plugins; the real one is.
    let mut forged = rsp.clone();
    forged.txn = kad_core::TxnId::from_bytes(vec![9, 9, 9, 9]);
    a.handle_input(
        now,
        Input::Message {
            from: b_addr.clone(),
            msg: forged,
        },
    );
    assert!(seen.lock().unwrap().observed.is_empty());
    a.handle_input(
        now,
        Input::Message {
            from: b_addr.clone(),
            msg: rsp,
        },
    );
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.observed, vec![(b_addr.clone(), a_outside.clone())]);
        assert_eq!(s.sent_to_b, vec![true], "A just sent to B");
    }

    // The plugin turns the node read-only: its next request says so.
    a.command(now, "probe", PluginData::new("ro")).unwrap();
    sends(&mut a);
    assert!(a.config().read_only);
    a.ping(now, b_addr.clone()).unwrap();
    let (_, req) = sends(&mut a).into_iter().next().unwrap();
    assert!(req.read_only);

    // ... and advertises its outside address instead.
    a.command(now, "probe", PluginData::new(a_outside.clone()))
        .unwrap();
    sends(&mut a);
    assert_eq!(&*a.contact().addrs, std::slice::from_ref(&a_outside));
    a.command(now, "probe", PluginData::new("server")).unwrap();
    sends(&mut a);
    a.ping(now + Duration::from_millis(1), b_addr.clone())
        .unwrap();
    let (_, req) = sends(&mut a).into_iter().last().unwrap();
    assert!(!req.read_only);
    assert_eq!(&*req.sender.addrs, std::slice::from_ref(&a_outside));
    assert!(matches!(req.body, Body::Request(Request::Ping)));
}
