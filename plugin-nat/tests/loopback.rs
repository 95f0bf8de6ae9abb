//! The NAT plugin over real UDP sockets on loopback, each node on its own 127.0.0.x address (one
//! vote per IP): external address votes, reachability checks that succeed and fail, the switch to
//! client mode and back, and what a peer may not make us do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kad_core::{
    Config, Dht, DhtError, NativeCodec, NativeIdentity, Node, PeerAddr, QueryError, RpcError,
};
use kad_plugin_nat::{Nat, NatCommand, NatConfig, NatPlugin, NatReport, NatStatus, Reachability};
use kad_transport_udp::UdpTransport;

struct Peer {
    dht: Dht,
    nat: Nat,
}

async fn node(ip: [u8; 4], seed: u8) -> Peer {
    let identity = Arc::new(NativeIdentity::from_secret(&[seed; 32]).unwrap());
    let udp = UdpTransport::bind(SocketAddr::from((ip, 0))).await.unwrap();
    let mut cfg = NatConfig::default();
    cfg.serve_probes = true;
    cfg.probe_timeout = Duration::from_secs(2);
    cfg.retry_unknown = Duration::from_millis(500);
    let builder = Node::builder(Config::default())
        .identity(identity.clone())
        .codec(Box::new(NativeCodec::new(identity.clone())))
        .plugin(Box::new(NatPlugin::new(cfg)));
    let dht = Dht::spawn(builder, vec![Arc::new(udp)]).unwrap();
    let nat = Nat::spawn(dht.clone(), identity, None);
    Peer { dht, nat }
}

async fn command(dht: &Dht, cmd: NatCommand) -> NatStatus {
    kad_plugin_nat::command(dht, cmd).await.unwrap()
}

/// Waits (bounded) until the report satisfies `want`.
async fn until(nat: &Nat, what: &str, want: impl Fn(&NatStatus) -> bool) -> NatStatus {
    let mut rx = nat.watch();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = nat.report().await.status.filter(|s| want(s)) {
            return s;
        }
        let r: NatReport = rx.borrow_and_update().clone();
        if let Some(s) = r.status.filter(|s| want(s)) {
            return s;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("{what}: not within 15 s; last {:?}", nat.report().await);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_checks_and_client_mode() {
    let mut peers = Vec::new();
    for i in 2..7u8 {
        peers.push(node([127, 0, 0, i], i).await);
    }
    let seed = peers[0].dht.contact().addrs[0].clone();
    for p in &peers[1..] {
        p.dht.bootstrap(vec![seed.clone()]).await.unwrap();
    }
    let me = node([127, 0, 0, 9], 9).await;
    let my_addr = me.dht.contact().addrs[0].clone();
    me.dht.bootstrap(vec![seed.clone()]).await.unwrap();

    // Peers on 5 IPs saw us where we listen: no NAT, nothing to check.
    let st = until(&me.nat, "the vote", |s| {
        s.voters >= 3 && s.external.is_some()
    })
    .await;
    assert_eq!(st.external.as_ref(), Some(&my_addr));
    assert_eq!(st.reachability, Reachability::Direct);
    assert_eq!(st.mode, "server");
    assert_eq!(st.advertised, vec![my_addr.clone()]);

    // A mapping on a port where nothing listens: helpers probe it, nothing arrives, so the node
    // is unreachable and turns client.
    let dead = std::net::UdpSocket::bind("127.0.0.9:0").unwrap();
    let dead_addr = PeerAddr::Udp(dead.local_addr().unwrap());
    drop(dead);
    command(
        &me.dht,
        NatCommand::Mapped {
            addrs: vec![dead_addr.clone()],
        },
    )
    .await;
    let st = until(&me.nat, "unreachable", |s| {
        s.reachability == Reachability::Unreachable
    })
    .await;
    assert_eq!(st.mode, "client");
    assert_eq!(st.checked.as_ref(), Some(&dead_addr));
    assert_eq!(st.advertised[0], dead_addr, "mapped addresses come first");
    assert!(st.stats.checks_accepted >= 1, "{st:?}");

    // The real port "mapped": a probe from a fresh port reaches it, back to server.
    command(
        &me.dht,
        NatCommand::Mapped {
            addrs: vec![my_addr.clone()],
        },
    )
    .await;
    let st = until(&me.nat, "reachable", |s| {
        s.reachability == Reachability::Reachable
    })
    .await;
    assert_eq!(st.mode, "server");
    assert!(st.stats.probes_proving >= 1, "{st:?}");
    // The probe came from 127.0.0.1, an IP this node never sent to.
    assert_eq!(st.proof.as_deref(), Some("stranger_ip"));

    // Helpers: probes were sent by others, each from a fresh port.
    let mut served = 0;
    for p in &peers {
        served += p.nat.report().await.status.unwrap().stats.checks_served;
    }
    assert!(served >= 2, "checks served: {served}");

    // What a peer may not make us do: probe an address that is not its own.
    let helper = peers[1].dht.contact().clone();
    let victim = serde_json::json!({"addr": "udp://127.0.0.77:9", "nonce": "00"});
    let r = me
        .dht
        .call(helper.clone(), "nat.CHECK", Bytes::from(victim.to_string()))
        .await;
    assert!(
        matches!(&r, Err(DhtError::Query(QueryError::Remote(e))) if e.code == RpcError::REFUSED),
        "{r:?}"
    );
    // ... nor at multicast (SSDP here), nor at port 0, through nat.DIAL.
    for addr in ["udp://239.255.255.250:1900", "udp://127.0.0.5:0"] {
        let dial = serde_json::json!({"id": helper.id, "addr": addr, "nonce": "02"});
        let r = me
            .dht
            .call(helper.clone(), "nat.DIAL", Bytes::from(dial.to_string()))
            .await;
        assert!(
            matches!(&r, Err(DhtError::Query(QueryError::Remote(e))) if e.code == RpcError::REFUSED),
            "{addr}: {r:?}"
        );
    }
    // Garbage parameters: an error, counted.
    let r = me
        .dht
        .call(helper.clone(), "nat.CHECK", Bytes::from_static(b"[1,2,3]"))
        .await;
    assert!(
        matches!(&r, Err(DhtError::Query(QueryError::Remote(e))) if e.code == RpcError::INVALID_PARAMS),
        "{r:?}"
    );
    // Checks flooded from one IP: refused after the burst.
    let mine = serde_json::json!({"addr": my_addr, "nonce": "01"});
    let mut refused = 0;
    for _ in 0..10 {
        if let Err(DhtError::Query(QueryError::Remote(e))) = me
            .dht
            .call(helper.clone(), "nat.CHECK", Bytes::from(mine.to_string()))
            .await
        {
            assert_eq!(e.code, RpcError::REFUSED);
            refused += 1;
        }
    }
    assert!(refused >= 6, "only {refused} of 10 refused");
    let hs = peers[1].nat.report().await.status.unwrap().stats;
    assert!(hs.malformed >= 1 && hs.refused >= 9, "{hs:?}");
}
