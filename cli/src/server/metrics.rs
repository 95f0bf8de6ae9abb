//! `kad node --metrics ADDR`: the node's counters in the Prometheus text format.
//!
//! `GET /metrics` reads the node's state at that moment (engine counters and gauges, the pubsub
//! plugin's counters, the NAT report, the process's memory) and encodes it with the
//! `prometheus-client` crate; nothing is kept between scrapes, so the endpoint costs nothing
//! when nobody scrapes it. The HTTP side is the live page's (an axum router on the server of
//! [`super::http`]): request heads capped at 8 KiB, at most [`MAX_SCRAPERS`] connections at once,
//! 10 s to send a request, `Connection: close`.
//!
//! The metrics (counters end in `_total`):
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `kad_rpc_requests_received_total` | `method` | requests answered, by method (`unknown` for methods no plugin owns) |
//! | `kad_rpc_requests_sent_total` | `method` | requests sent, by method |
//! | `kad_messages_received_total`, `kad_messages_sent_total` | | every message |
//! | `kad_rpc_responses_received_total`, `kad_rpc_timeouts_total` | | answers matched to our requests; requests that timed out |
//! | `kad_rpc_retransmits_total`, `kad_rejoins_total` | | requests sent again for want of an answer; joins the node started itself, its table being empty |
//! | `kad_dropped_total` | `reason` | remote input dropped, by reason (`malformed`, `bad_signature`, `replay`, `overload`, ...) |
//! | `kad_query_duration_seconds` | `kind` | histogram of finished queries (`get`, `put`, `find_node`, `bootstrap`, `refresh`, ...) |
//! | `kad_queries_started_total`, `kad_queries_finished_total` | | |
//! | `kad_routing_table_contacts` | | contacts in the routing table |
//! | `kad_store_records`, `kad_store_bytes` | | what the record store holds |
//! | `kad_records_total` | `event` | `stored`, `rejected`, `expired`, `rejected_value` |
//! | `kad_pubsub_subscriptions` | `role` | `held` (as a rendezvous node) and `own` (this node's) |
//! | `kad_pubsub_topics` | | topics held as a rendezvous node |
//! | `kad_pubsub_total` | `event` | `accepted`, `delivered`, `notifies_sent`, `duplicates`, ... |
//! | `kad_nat_mappings` | | UPnP port mappings held |
//! | `kad_nat_reachable` | | 1 reachable (directly or through the NAT), 0 unreachable, -1 not known yet |
//! | `kad_nat_voters` | | peers whose view of our address was counted |
//! | `kad_transport_datagrams_total` | `direction` | the UDP transport's datagrams |
//! | `process_resident_memory_bytes` | | the process's resident memory |

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kad_core::{Dht, LATENCY_BUCKETS_US, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::http::{self, TEXT};

/// Scrapes served at once; more get a 503.
const MAX_SCRAPERS: usize = 8;
/// The content type of the Prometheus text format.
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scrape reads.
#[derive(Clone)]
pub(crate) struct Sources {
    pub(crate) dht: Dht,
    pub(crate) nat: Option<tokio::sync::watch::Receiver<kad_plugin_nat::NatReport>>,
    pub(crate) udp: Option<Arc<kad_transport_udp::UdpTransport>>,
}

/// Serves `GET /metrics` on `bind` until the runtime shuts down; returns the bound address.
pub(crate) async fn serve(bind: SocketAddr, sources: Sources) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("--metrics {bind}: cannot listen"))?;
    let addr = listener.local_addr().context("--metrics: local address")?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .fallback(http::not_found)
        .with_state(sources);
    http::serve(listener, MAX_SCRAPERS, app);
    Ok(addr)
}

async fn metrics(State(sources): State<Sources>) -> Response {
    match scrape(&sources).await {
        Ok(body) => ([(header::CONTENT_TYPE, PROMETHEUS)], body).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            format!("the node did not answer: {e}\n"),
        )
            .into_response(),
    }
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, TEXT)],
        "kad node metrics: GET /metrics (Prometheus text format)\n",
    )
}

/// One scrape's readings.
#[derive(Debug, Default)]
struct Snapshot {
    stats: Stats,
    pubsub: Option<kad_plugin_pubsub::PubsubStats>,
    nat: Option<kad_plugin_nat::NatReport>,
    udp: Option<(u64, u64)>,
    rss_bytes: Option<u64>,
}

/// Reads the node and encodes everything in the Prometheus text format.
pub(crate) async fn scrape(sources: &Sources) -> anyhow::Result<String> {
    let stats = sources.dht.stats().await?;
    let pubsub = match kad_plugin_pubsub::Pubsub::attach(sources.dht.clone()).await {
        Ok(p) => p.stats().await.ok(),
        Err(_) => None,
    };
    let nat = sources.nat.as_ref().map(|w| w.borrow().clone());
    let udp = sources.udp.as_ref().map(|u| {
        let s = u.stats();
        (s.sent, s.received)
    });
    let snapshot = Snapshot {
        stats,
        pubsub,
        nat,
        udp,
        rss_bytes: rss_bytes(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The resident memory of this process (`VmRSS` of `/proc/self/status`), where there is one.
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A labelled family of values of one type.
fn family<'a>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (l, v) in values {
        let labels = [(label, l)];
        let fm = m.encode_family(&labels)?;
        if matches!(kind, MetricType::Counter) {
            ConstCounter::new(v).encode(fm)?;
        } else {
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(fm)?;
        }
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.stats;
        family(
            &mut e,
            "kad_rpc_requests_received",
            "Requests answered, by method (unknown: a method no plugin of this node owns).",
            MetricType::Counter,
            "method",
            s.rpc_in.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        family(
            &mut e,
            "kad_rpc_requests_sent",
            "Requests sent, by method.",
            MetricType::Counter,
            "method",
            s.rpc_out.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        counter(
            &mut e,
            "kad_messages_received",
            "Messages received and decoded.",
            s.messages_in,
        )?;
        counter(
            &mut e,
            "kad_messages_sent",
            "Messages sent.",
            s.messages_out,
        )?;
        counter(
            &mut e,
            "kad_rpc_responses_received",
            "Answers matched to a request of this node.",
            s.responses_in,
        )?;
        counter(
            &mut e,
            "kad_rpc_timeouts",
            "Requests that timed out.",
            s.timeouts,
        )?;
        counter(
            &mut e,
            "kad_rpc_retransmits",
            "Requests sent again because their answer did not come in time.",
            s.retransmits,
        )?;
        counter(
            &mut e,
            "kad_rejoins",
            "Joins started by the node itself because its routing table was empty.",
            s.rejoins,
        )?;
        // Every `dropped_*` counter of the engine, plus the requests not served for a reason.
        let json = serde_json::to_value(s).unwrap_or_default();
        let mut drops: Vec<(String, u64)> = json
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.strip_prefix("dropped_")?.to_owned(), v.as_u64()?)))
            .collect();
        drops.push(("read_only".into(), s.ignored_read_only));
        drops.push(("in_flight_full".into(), s.in_flight_full));
        drops.push(("queries_refused".into(), s.queries_refused));
        family(
            &mut e,
            "kad_dropped",
            "Input dropped or work refused, by reason.",
            MetricType::Counter,
            "reason",
            drops.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        {
            let mut m = e.encode_descriptor(
                "kad_query_duration_seconds",
                "How long finished queries took, by kind.",
                None,
                MetricType::Histogram,
            )?;
            for (kind, h) in &s.query_latency {
                let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
                    .iter()
                    .zip(h.buckets.iter())
                    .map(|(b, n)| (*b as f64 / 1e6, *n))
                    .collect();
                let in_buckets: u64 = h.buckets.iter().sum();
                buckets.push((f64::INFINITY, h.count.saturating_sub(in_buckets)));
                let labels = [("kind", *kind)];
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    h.sum_us as f64 / 1e6,
                    h.count,
                    &buckets,
                    None,
                )?;
            }
        }
        counter(
            &mut e,
            "kad_queries_started",
            "Queries started.",
            s.queries_started,
        )?;
        counter(
            &mut e,
            "kad_queries_finished",
            "Queries finished.",
            s.queries_done,
        )?;
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut e,
            "kad_routing_table_contacts",
            "Contacts in the routing table.",
            g(s.routing_table_size),
        )?;
        gauge(
            &mut e,
            "kad_store_records",
            "Records in the record store.",
            g(s.records_held),
        )?;
        gauge(
            &mut e,
            "kad_store_bytes",
            "Bytes in the record store.",
            g(s.store_bytes),
        )?;
        family(
            &mut e,
            "kad_records",
            "Records stored for peers, refused, expired; values a lookup got that failed validation.",
            MetricType::Counter,
            "event",
            [
                ("stored", s.records_stored),
                ("rejected", s.records_rejected),
                ("expired", s.records_expired),
                ("rejected_value", s.values_rejected),
            ],
        )?;
        if let Some(p) = &self.pubsub {
            family(
                &mut e,
                "kad_pubsub_subscriptions",
                "Subscriptions: held as a rendezvous node, and this node's own.",
                MetricType::Gauge,
                "role",
                [
                    ("held", p.subscriptions_held as u64),
                    ("own", p.my_subscriptions as u64),
                ],
            )?;
            gauge(
                &mut e,
                "kad_pubsub_topics",
                "Topics held as a rendezvous node.",
                p.topics as i64,
            )?;
            family(
                &mut e,
                "kad_pubsub",
                "Pub/sub events.",
                MetricType::Counter,
                "event",
                [
                    ("accepted", p.accepted),
                    ("refused", p.refused),
                    ("limited", p.limited),
                    ("malformed", p.malformed),
                    ("notifies_sent", p.notifies_sent),
                    ("notifies_failed", p.notifies_failed),
                    ("notifies_skipped", p.notifies_skipped),
                    ("subscribers_dropped", p.subscribers_dropped),
                    ("delivered", p.delivered),
                    ("duplicates", p.duplicates),
                    ("gaps", p.gaps),
                    ("rejected", p.rejected),
                ],
            )?;
        }
        if let Some(n) = &self.nat {
            let mappings = n.gateway.as_ref().map_or(0, |g| g.mappings.len());
            gauge(
                &mut e,
                "kad_nat_mappings",
                "UPnP port mappings held.",
                mappings as i64,
            )?;
            let reachable = match n.status.as_ref().map(|s| s.reachability) {
                Some(
                    kad_plugin_nat::Reachability::Reachable | kad_plugin_nat::Reachability::Direct,
                ) => 1,
                Some(kad_plugin_nat::Reachability::Unreachable) => 0,
                _ => -1,
            };
            gauge(
                &mut e,
                "kad_nat_reachable",
                "1 reachable from the internet, 0 not, -1 not known yet.",
                reachable,
            )?;
            let voters = n.status.as_ref().map_or(0, |s| s.voters);
            gauge(
                &mut e,
                "kad_nat_voters",
                "Peers whose view of this node's address was counted.",
                voters as i64,
            )?;
        }
        if let Some((sent, received)) = self.udp {
            family(
                &mut e,
                "kad_transport_datagrams",
                "UDP datagrams, by direction.",
                MetricType::Counter,
                "direction",
                [("sent", sent), ("received", received)],
            )?;
        }
        if let Some(rss) = self.rss_bytes {
            gauge(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory of this process.",
                g(rss),
            )?;
        }
        Ok(())
    }
}
