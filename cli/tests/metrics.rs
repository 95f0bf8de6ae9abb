//! `kad node --metrics`: a real node process on 127.0.0.1 serves the Prometheus text format,
//! and the numbers follow what peers did to it.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

mod common;
use common::{NodeProc, kad_json};

/// `GET path` over HTTP/1.1; the status line and the body.
fn http_get(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut s = TcpStream::connect(host).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The value of the sample `name` (with its labels, as printed), if present.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn node_serves_prometheus_metrics_that_follow_the_traffic() {
    let mut node = NodeProc::start(&["--metrics", "127.0.0.1:0"]);
    let url = node.next_event("metrics")["url"]
        .as_str()
        .expect("metrics url")
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let (status, body) = http_get(&url);
    assert_eq!(status, "HTTP/1.1 200 OK");
    // Declared families, before any traffic.
    for family in [
        "# TYPE kad_rpc_requests_received counter",
        "# TYPE kad_dropped counter",
        "# TYPE kad_rpc_retransmits counter",
        "# TYPE kad_rejoins counter",
        "# TYPE kad_query_duration_seconds histogram",
        "# TYPE kad_routing_table_contacts gauge",
        "# TYPE kad_store_records gauge",
        "# TYPE kad_pubsub_subscriptions gauge",
        "# TYPE kad_nat_mappings gauge",
        "# TYPE process_resident_memory_bytes gauge",
    ] {
        assert!(body.contains(family), "missing {family:?} in\n{body}");
    }
    assert_eq!(sample(&body, "kad_store_records"), Some(0.0));
    assert!(sample(&body, "process_resident_memory_bytes").unwrap() > 1e6);

    // Three pings, a put (a lookup and a STORE) and two garbage datagrams.
    for _ in 0..3 {
        let (code, v) = kad_json(&["ping", &node.addr]);
        assert_eq!(code, 0, "{v}");
    }
    let (code, v) = kad_json(&["put", "--bootstrap", &node.addr, "metrics test value"]);
    assert_eq!(code, 0, "{v}");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = node.addr.strip_prefix("udp://").unwrap();
    udp.send_to(b"not json at all", to).unwrap();
    udp.send_to(b"{\"jsonrpc\":\"2.0\"", to).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let (_, body) = http_get(&url);
    let pings = sample(&body, "kad_rpc_requests_received_total{method=\"PING\"}");
    assert!(pings.is_some_and(|n| n >= 3.0), "{body}");
    assert_eq!(
        sample(&body, "kad_rpc_requests_received_total{method=\"STORE\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(sample(&body, "kad_store_records"), Some(1.0), "{body}");
    assert!(sample(&body, "kad_store_bytes").unwrap() > 0.0, "{body}");
    assert_eq!(
        sample(&body, "kad_records_total{event=\"stored\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "kad_dropped_total{reason=\"malformed\"}"),
        Some(2.0),
        "{body}"
    );
    let received = sample(
        &body,
        "kad_transport_datagrams_total{direction=\"received\"}",
    );
    assert!(received.is_some_and(|n| n >= 6.0), "{body}");

    // Anything but /metrics and / is a 404; other methods a 405.
    assert_eq!(
        http_get(&url.replace("/metrics", "/nope")).0,
        "HTTP/1.1 404 Not Found"
    );
    let host = url
        .strip_prefix("http://")
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
}

#[test]
fn query_latencies_reach_the_histogram() {
    // A second node joins through the first: its bootstrap is a query, timed in its histogram.
    let seed = NodeProc::start(&[]);
    let mut joiner = NodeProc::start(&["--metrics", "127.0.0.1:0", "--bootstrap", &seed.addr]);
    let url = joiner.next_event("metrics")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    joiner.next_event("bootstrapped");
    let (_, body) = http_get(&url);
    let n = sample(
        &body,
        "kad_query_duration_seconds_count{kind=\"bootstrap\"}",
    );
    assert_eq!(n, Some(1.0), "{body}");
    let inf = sample(
        &body,
        "kad_query_duration_seconds_bucket{le=\"+Inf\",kind=\"bootstrap\"}",
    );
    assert_eq!(inf, Some(1.0), "{body}");
    let sent = sample(&body, "kad_rpc_requests_sent_total{method=\"FIND_NODE\"}");
    assert!(sent.is_some_and(|n| n >= 1.0), "{body}");
    assert!(
        sample(&body, "kad_routing_table_contacts").unwrap() >= 1.0,
        "{body}"
    );
}
