//! The plugin on running nodes (kad-core's runtime over its in-memory transport): subscriptions,
//! late subscribers, forged and replayed readings, named topics, limits.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kad_core::{Config, Dht, DhtError, MemoryNetwork, Node, QueryError, native::NativeIdentity};
use kad_plugin_bep44::item::{MutableItem, bencode_bytes, public_key};
use kad_plugin_pubsub::wire::{self, NotifyParams, PublishParams};
use kad_plugin_pubsub::{
    Delivery, Pubsub, PubsubConfig, PubsubError, PubsubPlugin, SEQ_NOT_NEWER, Subscription,
    WireItem,
};

struct Net {
    _net: MemoryNetwork,
    nodes: Vec<Dht>,
}

async fn network(n: usize, config: PubsubConfig) -> Net {
    let net = MemoryNetwork::new();
    let mut nodes: Vec<Dht> = Vec::new();
    for i in 0..n {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        let id = Arc::new(NativeIdentity::from_secret(&secret).unwrap());
        let plugin = PubsubPlugin::new(config.clone(), Some(id.clone()));
        let b = Node::builder(Config::default())
            .id(id.id())
            .plugin(Box::new(plugin));
        let d = Dht::spawn(b, vec![Arc::new(net.transport(4096))]).unwrap();
        if let Some(first) = nodes.first() {
            d.bootstrap(vec![first.contact().addrs[0].clone()])
                .await
                .unwrap();
        }
        nodes.push(d);
    }
    // Let the first nodes learn the later ones.
    for d in &nodes {
        d.bootstrap(vec![nodes[0].contact().addrs[0].clone()])
            .await
            .ok();
    }
    Net { _net: net, nodes }
}

fn reading(seed: &[u8; 32], salt: &[u8], seq: i64, v: &str) -> WireItem {
    MutableItem::sign(seed, salt, seq, &bencode_bytes(v.as_bytes()))
        .unwrap()
        .into()
}

async fn next_reading(sub: &mut Subscription) -> Option<(i64, String)> {
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        Ok(Some(Delivery::Reading(r))) => Some((r.item.seq, r.item.value_text())),
        _ => None,
    }
}

async fn nothing_more(sub: &mut Subscription) -> bool {
    tokio::time::timeout(Duration::from_millis(500), sub.next())
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_each_reading_once_in_order_and_late_ones_get_the_latest() {
    let net = network(12, PubsubConfig::default()).await;
    let seed = [3u8; 32];
    let pk = public_key(&seed);
    let mut subs = Vec::new();
    for d in &net.nodes[8..11] {
        let s = Pubsub::attach(d.clone())
            .await
            .unwrap()
            .subscribe_sensor(pk, b"t")
            .await
            .unwrap();
        assert!(s.outcome.rendezvous >= 3, "{:?}", s.outcome);
        assert_eq!(s.outcome.latest_seq, None);
        subs.push(s);
    }
    let publisher = Pubsub::attach(net.nodes[11].clone()).await.unwrap();
    for seq in 1..=10 {
        let o = publisher
            .publish(reading(&seed, b"t", seq, &format!("r{seq}")))
            .await
            .unwrap();
        assert!(o.stored_on >= 3, "{o:?}");
        assert_eq!(
            o.lookup,
            seq == 1,
            "only the first publish looks the rendezvous up"
        );
    }
    for s in &mut subs {
        for seq in 1..=10 {
            assert_eq!(next_reading(s).await, Some((seq, format!("r{seq}"))));
        }
        assert!(nothing_more(s).await, "a reading was delivered twice");
    }
    let st = Pubsub::attach(net.nodes[8].clone())
        .await
        .unwrap()
        .stats()
        .await
        .unwrap();
    assert_eq!(st.delivered, 10);
    assert!(
        st.duplicates > 0,
        "several pushers: copies are dropped, {st:?}"
    );

    // A late subscriber gets the latest reading at once, and only it.
    let mut late = Pubsub::attach(net.nodes[7].clone())
        .await
        .unwrap()
        .subscribe_sensor(pk, b"t")
        .await
        .unwrap();
    assert_eq!(late.outcome.latest_seq, Some(10));
    assert_eq!(next_reading(&mut late).await, Some((10, "r10".into())));
    assert!(nothing_more(&mut late).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_readings_are_refused() {
    let net = network(6, PubsubConfig::default()).await;
    let seed = [4u8; 32];
    let pk = public_key(&seed);
    let subscriber = Pubsub::attach(net.nodes[4].clone()).await.unwrap();
    let mut sub = subscriber.subscribe_sensor(pk, b"").await.unwrap();
    let publisher = Pubsub::attach(net.nodes[5].clone()).await.unwrap();
    publisher
        .publish(reading(&seed, b"", 5, "five"))
        .await
        .unwrap();
    assert_eq!(next_reading(&mut sub).await, Some((5, "five".into())));

    // Replayed: an older reading, and the same one again.
    let old = publisher.publish(reading(&seed, b"", 4, "four")).await;
    match old {
        Err(PubsubError::Dht(DhtError::Query(QueryError::Remote(e)))) => {
            assert_eq!(e.code, SEQ_NOT_NEWER, "{e:?}")
        }
        other => panic!("an older seq must be refused, got {other:?}"),
    }
    // Forged: a valid reading with its value changed.
    let mut forged = reading(&seed, b"", 6, "six");
    forged.v = Bytes::from(bencode_bytes(b"666"));
    let r = publisher.publish(forged.clone()).await;
    assert!(r.is_err(), "the publisher's own check refuses it: {r:?}");
    // Sent straight to a rendezvous node and to the subscriber, past the publisher's checks.
    let rendezvous = net.nodes[0].contact().clone();
    let params = Bytes::from(
        serde_json::to_vec(&PublishParams {
            prev: None,
            item: forged.clone(),
            live: None,
        })
        .unwrap(),
    );
    let r = net.nodes[5].call(rendezvous, wire::PUBLISH, params).await;
    assert!(
        matches!(&r, Err(DhtError::Query(QueryError::Remote(e))) if e.message.contains("bad signature")),
        "{r:?}"
    );
    let notify = |item: WireItem| {
        Bytes::from(
            serde_json::to_vec(&NotifyParams {
                prev: None,
                topic: item.topic(),
                item: Some(item),
                message: None,
            })
            .unwrap(),
        )
    };
    let to_sub = net.nodes[4].contact().clone();
    net.nodes[5]
        .call(to_sub.clone(), wire::NOTIFY, notify(forged))
        .await
        .unwrap();
    // A replayed older reading pushed straight to the subscriber.
    net.nodes[5]
        .call(
            to_sub,
            wire::NOTIFY,
            notify(reading(&seed, b"", 3, "three")),
        )
        .await
        .unwrap();
    assert!(
        nothing_more(&mut sub).await,
        "a forged or replayed reading was delivered"
    );
    let st = subscriber.stats().await.unwrap();
    assert_eq!(st.rejected, 1, "{st:?}");
    assert!(st.duplicates >= 1, "{st:?}");
    // The genuine next reading still arrives.
    publisher
        .publish(reading(&seed, b"", 6, "six"))
        .await
        .unwrap();
    assert_eq!(next_reading(&mut sub).await, Some((6, "six".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_topics_deliver_each_message_once_and_recent_ones_to_late_subscribers() {
    let net = network(8, PubsubConfig::default()).await;
    let a = Pubsub::attach(net.nodes[6].clone()).await.unwrap();
    let mut sub = a.subscribe_topic("weather/oslo").await.unwrap();
    let poster = Pubsub::attach(net.nodes[7].clone()).await.unwrap();
    poster.post("weather/oslo", "rain", 60).await.unwrap();
    poster.post("weather/oslo", "sun", 60).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(Delivery::Message(m))) => {
                assert_eq!(m.publisher, net.nodes[7].id());
                got.push(m.message.data);
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    got.sort();
    assert_eq!(got, ["rain", "sun"]);
    assert!(nothing_more(&mut sub).await);
    // A late subscriber gets the recent messages.
    let mut late = Pubsub::attach(net.nodes[5].clone())
        .await
        .unwrap()
        .subscribe_topic("weather/oslo")
        .await
        .unwrap();
    let mut n = 0;
    while let Ok(Some(Delivery::Message(_))) =
        tokio::time::timeout(Duration::from_millis(800), late.next()).await
    {
        n += 1;
    }
    assert_eq!(n, 2);
    // Bad input names the field and the limit.
    let e = poster
        .post("weather/oslo", &"x".repeat(5000), 60)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the limit is 4096"), "{e}");
    let e = poster.post("", "x", 60).await.unwrap_err();
    assert!(e.to_string().contains("topic name"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_limits_are_enforced() {
    let mut cfg = PubsubConfig::default();
    cfg.max_subscribers_per_topic = 2;
    let net = network(6, cfg).await;
    let pk = public_key(&[5u8; 32]);
    // Held to the end: dropping a subscription unsubscribes.
    let mut held = Vec::new();
    for d in &net.nodes[3..5] {
        let s = Pubsub::attach(d.clone())
            .await
            .unwrap()
            .subscribe_sensor(pk, b"")
            .await
            .unwrap();
        assert_eq!(s.outcome.rendezvous, 5, "{:?}", s.outcome);
        held.push(s);
    }
    // A third subscriber is refused by every rendezvous node (each holds 2 already).
    let r = Pubsub::attach(net.nodes[5].clone())
        .await
        .unwrap()
        .subscribe_sensor(pk, b"")
        .await;
    match r {
        Ok(s) => assert!(s.outcome.rendezvous <= 2, "{:?}", s.outcome),
        Err(e) => assert!(e.to_string().contains("subscription"), "{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_peers_is_answered_with_errors_and_counted() {
    let net = network(2, PubsubConfig::default()).await;
    let target = net.nodes[0].contact().clone();
    // xorshift64: reproducible junk without another dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let methods = [
        wire::FIND,
        wire::SUBSCRIBE,
        wire::PUBLISH,
        wire::POST,
        wire::NOTIFY,
    ];
    let mut sent = 0u64;
    for i in 0..60 {
        let len = next() % 300;
        let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            // Valid JSON of the wrong shape, half of the time.
            junk = format!("{{\"topic\": {}, \"ttl\": -1}}", next() as u32).into_bytes();
        }
        let m = methods[i % methods.len()];
        let r = net.nodes[1]
            .call(target.clone(), m, Bytes::from(junk))
            .await;
        assert!(r.is_err(), "{m}: {r:?}");
        sent += 1;
    }
    // An oversized rendezvous list is refused, naming the limit.
    let pk = public_key(&[9u8; 32]);
    let kind = kad_plugin_pubsub::TopicKind::Sensor {
        k: pk,
        salt: Bytes::new(),
    };
    let big = serde_json::json!({
        "topic": kind.key(), "kind": kind, "ttl": 60, "push": true,
        "ranked": vec![net.nodes[0].id(); 100],
    });
    let r = net.nodes[1]
        .call(target, wire::SUBSCRIBE, Bytes::from(big.to_string()))
        .await;
    match r {
        Err(DhtError::Query(QueryError::Remote(e))) => {
            assert!(e.message.contains("the limit is"), "{e:?}")
        }
        other => panic!("{other:?}"),
    }
    let st = Pubsub::attach(net.nodes[0].clone())
        .await
        .unwrap()
        .stats()
        .await
        .unwrap();
    assert_eq!(st.malformed, sent + 1, "{st:?}");
    assert_eq!(st.topics, 0, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_rounds_cannot_be_replayed_into_floods() {
    let net = network(6, PubsubConfig::default()).await;
    let seed = [6u8; 32];
    let mut sub = Pubsub::attach(net.nodes[4].clone())
        .await
        .unwrap()
        .subscribe_sensor(public_key(&seed), b"")
        .await
        .unwrap();
    let it = reading(&seed, b"", 1, "one");
    Pubsub::attach(net.nodes[5].clone())
        .await
        .unwrap()
        .publish(it.clone())
        .await
        .unwrap();
    assert_eq!(next_reading(&mut sub).await, Some((1, "one".into())));
    // Anyone may resend the reading with any `live` list; each node pushes it to a subscriber
    // at most once.
    let mut pushed = 0;
    for (i, d) in net.nodes[..4].iter().enumerate() {
        for live in [
            vec![],
            vec![d.id()],
            net.nodes.iter().map(|n| n.id()).collect(),
        ] {
            let params = PublishParams {
                prev: None,
                item: it.clone(),
                live: Some(live),
            };
            let r = net.nodes[5]
                .call(
                    d.contact().clone(),
                    wire::PUBLISH,
                    Bytes::from(serde_json::to_vec(&params).unwrap()),
                )
                .await
                .unwrap_or_else(|e| panic!("node {i}: {e}"));
            let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
            pushed += v["pushed"].as_u64().unwrap();
        }
    }
    // Nodes that had not pushed it (standbys) may push it once now; nothing more.
    assert!(pushed <= 4, "{pushed} repeat pushes");
    assert!(nothing_more(&mut sub).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_go_to_the_subscribers_own_host_not_to_a_claimed_address() {
    let net = network(4, PubsubConfig::default()).await;
    // A node that claims the address of node 1 as its own.
    let id = Arc::new(NativeIdentity::from_secret(&[0xee; 32]).unwrap());
    let b = Node::builder(Config::default())
        .id(id.id())
        .addrs(vec![net.nodes[1].contact().addrs[0].clone()])
        .plugin(Box::new(PubsubPlugin::new(PubsubConfig::default(), None)));
    let liar = Dht::spawn(b, vec![Arc::new(net._net.transport(4096))]).unwrap();
    liar.bootstrap(vec![net.nodes[0].contact().addrs[0].clone()])
        .await
        .unwrap();
    let seed = [8u8; 32];
    let mut sub = Pubsub::attach(liar.clone())
        .await
        .unwrap()
        .subscribe_sensor(public_key(&seed), b"")
        .await
        .unwrap();
    Pubsub::attach(net.nodes[3].clone())
        .await
        .unwrap()
        .publish(reading(&seed, b"", 1, "x"))
        .await
        .unwrap();
    // The reading reaches the liar where it really is; node 1 receives no push.
    assert_eq!(next_reading(&mut sub).await, Some((1, "x".into())));
    let victim = Pubsub::attach(net.nodes[1].clone())
        .await
        .unwrap()
        .stats()
        .await
        .unwrap();
    assert_eq!(
        victim.rejected + victim.duplicates + victim.delivered,
        0,
        "{victim:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_recent_messages_still_fit_a_subscribe_answer() {
    let net = network(4, PubsubConfig::default()).await;
    let poster = Pubsub::attach(net.nodes[3].clone()).await.unwrap();
    for i in 0..16 {
        poster
            .post("big", &format!("{i}{}", "\"".repeat(4000)), 600)
            .await
            .unwrap();
    }
    let mut late = Pubsub::attach(net.nodes[2].clone())
        .await
        .unwrap()
        .subscribe_topic("big")
        .await
        .unwrap();
    assert!(late.outcome.rendezvous >= 2, "{:?}", late.outcome);
    // The newest recent messages arrive (as many as fit), the last one among them.
    let mut last = None;
    while let Ok(Some(Delivery::Message(m))) =
        tokio::time::timeout(Duration::from_millis(800), late.next()).await
    {
        last = Some(m.message.data);
    }
    assert!(last.is_some_and(|d| d.starts_with("15")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_subscription_of_a_topic_unsubscribes() {
    let net = network(6, PubsubConfig::default()).await;
    let seed = [9u8; 32];
    let pk = public_key(&seed);
    let sub_node = Pubsub::attach(net.nodes[4].clone()).await.unwrap();
    let mut a = sub_node.subscribe_sensor(pk, b"").await.unwrap();
    let mut b = sub_node.subscribe_sensor(pk, b"").await.unwrap();
    assert_ne!(a.outcome.holder, b.outcome.holder);
    let publisher = Pubsub::attach(net.nodes[5].clone()).await.unwrap();
    let first = publisher
        .publish(reading(&seed, b"", 1, "one"))
        .await
        .unwrap();
    assert!(first.pushed >= 1, "{first:?}");
    assert_eq!(next_reading(&mut a).await, Some((1, "one".into())));
    assert_eq!(next_reading(&mut b).await, Some((1, "one".into())));

    // One of two holders gone: the node stays subscribed, the other still receives.
    drop(a);
    publisher
        .publish(reading(&seed, b"", 2, "two"))
        .await
        .unwrap();
    assert_eq!(next_reading(&mut b).await, Some((2, "two".into())));
    assert_eq!(sub_node.stats().await.unwrap().my_subscriptions, 1);

    // The last one gone: the node unsubscribes and its rendezvous nodes stop pushing to it.
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seq = 3;
    loop {
        let mine = sub_node.stats().await.unwrap().my_subscriptions;
        let out = publisher
            .publish(reading(&seed, b"", seq, "more"))
            .await
            .unwrap();
        if mine == 0 && out.pushed == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still subscribed 5 s after the drop: {mine} subscription(s), pushed to {}",
            out.pushed
        );
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Closing waits for the release; a node without the plugin has no pub/sub handle.
    let c = sub_node.subscribe_sensor(pk, b"").await.unwrap();
    c.close().await.unwrap();
    assert_eq!(sub_node.stats().await.unwrap().my_subscriptions, 0);
    let bare = Dht::spawn(
        Node::builder(Config::default()).id(kad_core::NodeId::from_bytes([1; 20])),
        vec![Arc::new(net._net.transport(4096))],
    )
    .unwrap();
    assert!(matches!(
        Pubsub::attach(bare).await,
        Err(PubsubError::NoPlugin)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_two_node_network_the_subscriber_is_a_rendezvous_node_and_still_receives() {
    // Each node is the other's only rendezvous node: the subscription is held by the
    // publisher, and the publisher's reading goes to the subscriber, which delivers it to
    // itself (no node pushes to itself).
    let net = network(2, PubsubConfig::default()).await;
    let seed = [11u8; 32];
    let subscriber = Pubsub::attach(net.nodes[0].clone()).await.unwrap();
    let publisher = Pubsub::attach(net.nodes[1].clone()).await.unwrap();
    let mut sub = subscriber
        .subscribe_sensor(public_key(&seed), b"")
        .await
        .unwrap();
    let mut topic = subscriber.subscribe_topic("small").await.unwrap();
    for seq in 1..=3 {
        publisher
            .publish(reading(&seed, b"", seq, "v"))
            .await
            .unwrap();
        assert_eq!(next_reading(&mut sub).await, Some((seq, "v".into())));
    }
    publisher.post("small", "hello", 60).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), topic.next())
        .await
        .expect("the message within 5 s");
    assert!(
        matches!(got, Some(Delivery::Message(m)) if m.message.data == "hello"),
        "no message"
    );
    assert!(nothing_more(&mut sub).await, "a reading delivered twice");
}

/// A subscriber cut off while readings 3 to 14 go out, then back: the readings it gets after
/// coming back (each checked to arrive once, in order), then a live one.
async fn readings_after_an_outage(config: PubsubConfig) -> Vec<i64> {
    let net = network(10, config).await;
    let seed = [5u8; 32];
    let pk = public_key(&seed);
    let subscriber = net.nodes[9].clone();
    let mut sub = Pubsub::attach(subscriber.clone())
        .await
        .unwrap()
        .subscribe_sensor(pk, b"h")
        .await
        .unwrap();
    let publisher = Pubsub::attach(net.nodes[8].clone()).await.unwrap();
    let publish = async |seq: i64| {
        publisher
            .publish(reading(&seed, b"h", seq, &format!("r{seq}")))
            .await
            .unwrap()
    };
    for seq in 1..=2 {
        publish(seq).await;
        assert_eq!(next_reading(&mut sub).await, Some((seq, format!("r{seq}"))));
    }
    // The outage: everything to and from the subscriber is lost while 12 readings go out.
    let addr = subscriber.contact().addrs[0].clone();
    net._net.cut(&addr, true);
    for seq in 3..=14 {
        let o = publish(seq).await;
        assert!(o.stored_on >= 3, "{o:?}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    net._net.cut(&addr, false);
    // Back: its next renewal (or the first push after it) brings what it missed that is still
    // kept, oldest first, then the latest.
    let mut got = Vec::new();
    while let Some((seq, v)) = next_reading(&mut sub).await {
        assert_eq!(v, format!("r{seq}"));
        assert!(
            got.last().is_none_or(|l| *l < seq),
            "out of order: {got:?} then {seq}"
        );
        got.push(seq);
        if seq == 14 {
            break;
        }
    }
    // Live again.
    publish(15).await;
    assert_eq!(next_reading(&mut sub).await, Some((15, "r15".into())));
    assert!(
        nothing_more(&mut sub).await,
        "a reading was delivered twice"
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_back_from_an_outage_gets_the_kept_readings_it_missed_in_order_once() {
    let mut config = PubsubConfig::default();
    config.subscription_ttl = Duration::from_secs(3); // renewed every second
    config.max_history = 8;
    // The rendezvous nodes keep the last 8 readings (seqs 7 to 14).
    let got = readings_after_an_outage(config.clone()).await;
    assert_eq!(
        got,
        (7..=14).collect::<Vec<_>>(),
        "the kept readings, in order"
    );
    // Kept history is bounded in bytes too: here three readings' worth (each counts its value,
    // salt and 256), so 11 to 13 are kept besides the latest.
    let size = "3:r10".len() + "h".len() + 256;
    config.max_history_bytes = 3 * size;
    let got = readings_after_an_outage(config.clone()).await;
    assert_eq!(got, (11..=14).collect::<Vec<_>>(), "three kept, in order");
    // Without history, only the latest.
    config.max_history = 0;
    let got = readings_after_an_outage(config).await;
    assert_eq!(got, vec![14]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscriber_given_the_last_seq_it_had_gets_the_kept_readings_after_it() {
    let net = network(10, PubsubConfig::default()).await;
    let seed = [6u8; 32];
    let pk = public_key(&seed);
    let publisher = Pubsub::attach(net.nodes[8].clone()).await.unwrap();
    for seq in 1..=12 {
        let o = publisher
            .publish(reading(&seed, b"s", seq, &format!("r{seq}")))
            .await
            .unwrap();
        assert!(o.stored_on >= 3, "{o:?}");
    }
    // A subscriber that had readings up to 9 before it restarted: 10, 11, 12, in order, once.
    let p = Pubsub::attach(net.nodes[9].clone()).await.unwrap();
    let mut sub = p.subscribe_sensor_since(pk, b"s", Some(9)).await.unwrap();
    let mut got = Vec::new();
    while let Some((seq, v)) = next_reading(&mut sub).await {
        assert_eq!(v, format!("r{seq}"));
        got.push(seq);
        if seq == 12 {
            break;
        }
    }
    assert_eq!(got, vec![10, 11, 12]);
    assert!(
        nothing_more(&mut sub).await,
        "a reading was delivered twice"
    );
    // Without `since`, the latest only.
    let p = Pubsub::attach(net.nodes[7].clone()).await.unwrap();
    let mut sub = p.subscribe_sensor(pk, b"s").await.unwrap();
    assert_eq!(next_reading(&mut sub).await, Some((12, "r12".into())));
    assert!(nothing_more(&mut sub).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_subscriber_gets_every_reading_any_rendezvous_node_kept_not_only_the_first_answers()
 {
    let mut config = PubsubConfig::default();
    config.holder_cache = Duration::from_secs(1);
    let net = network(10, config).await;
    let seed = [7u8; 32];
    let pk = public_key(&seed);
    let publisher = Pubsub::attach(net.nodes[8].clone()).await.unwrap();
    let publish = async |seq: i64| {
        publisher
            .publish(reading(&seed, b"g", seq, &format!("r{seq}")))
            .await
            .unwrap()
    };
    for seq in 1..=9 {
        assert!(publish(seq).await.stored_on >= 3);
    }
    // Readings 10 and 11 reach only node 3 (and the publisher's own node): every other
    // rendezvous node is cut off, then back for 12 to 14. Their histories skip 10 and 11.
    let cut: Vec<_> = [0, 1, 2, 4, 5, 6, 7, 9]
        .iter()
        .map(|i| net.nodes[*i].contact().addrs[0].clone())
        .collect();
    for a in &cut {
        net._net.cut(a, true);
    }
    for seq in 10..=11 {
        assert!(publish(seq).await.stored_on >= 1);
    }
    for a in &cut {
        net._net.cut(a, false);
    }
    // The publisher looks the rendezvous nodes up again once its set is a second old.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for seq in 12..=14 {
        publish(seq).await;
    }
    let o = publish(15).await;
    assert!(o.stored_on >= 8, "the cut nodes are back: {o:?}");
    // A subscriber that had 9: whichever node answers first, it gets 10 to 15, in order, once.
    let p = Pubsub::attach(net.nodes[9].clone()).await.unwrap();
    let mut sub = p.subscribe_sensor_since(pk, b"g", Some(9)).await.unwrap();
    let mut got = Vec::new();
    while let Some((seq, _)) = next_reading(&mut sub).await {
        got.push(seq);
        if seq == 15 {
            break;
        }
    }
    assert_eq!(got, (10..=15).collect::<Vec<_>>());
    assert!(
        nothing_more(&mut sub).await,
        "a reading was delivered twice"
    );
}
