//! A tiny live-chart web server for sensor readings (`--web ADDR`).
//!
//! An axum router on the shared HTTP/1.1 server of [`super::http`]. Every reading given to
//! [`WebFeed::send`] is kept in a ring of the last [`RING`] readings and pushed to every open
//! page. Routes:
//!
//! - `GET /`: a self-contained page (inline JS, CSS and SVG; `web_page.html`) charting the
//!   numeric values and the latencies live;
//! - `GET /readings`: the ring as a JSON array of [`WebReading`], oldest first; its
//!   `X-Last-Id` header is the feed id of the last one (0 when empty);
//! - `GET /events`: a Server-Sent Events stream, one event (`id` the feed id, `data` a
//!   [`WebReading`]) per new reading and a keepalive comment every 15 s. With `?after=N` (or the
//!   `Last-Event-ID` header a reconnecting `EventSource` sends) it first replays the readings
//!   of the ring after feed id `N`, so a page that loaded `/readings` misses nothing;
//! - anything else: 404 (405 for methods other than GET and HEAD on the routes above).
//!
//! Memory is bounded: at most 64 connections at once, request heads of at most 8 KiB, 10 s for
//! a head to arrive and for a client to take what it is sent (see [`super::http`]), and an event
//! stream more than [`STREAM_BACKLOG`] readings behind is closed (its page reconnects and is
//! replayed from the ring).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use super::http;

/// How many readings the ring keeps (and `/readings` returns).
pub(crate) const RING: usize = 1000;
/// Connections served at once; more are refused.
const MAX_CONNECTIONS: usize = 64;
/// The interval of the event stream's keepalive comments.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events queued for one slow event stream before it is closed.
const STREAM_BACKLOG: usize = 1024;
/// The page, with `{{TITLE}}` placeholders.
const PAGE: &str = include_str!("web_page.html");
const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";

/// One reading as the page receives it (also the JSON the CLI prints).
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct WebReading {
    /// The reading's sequence number (from its publisher).
    pub(crate) seq: i64,
    /// The reading's value as text (e.g. "21.5").
    pub(crate) value: String,
    /// End-to-end latency in ms (publisher send time to receipt), if the reading carried its
    /// send time.
    pub(crate) latency_ms: Option<f64>,
    /// Receipt time, ms since the Unix epoch.
    pub(crate) received_ms: u64,
}

/// The sending side of a web server started by [`serve`]: cheap to clone, never blocks.
#[derive(Clone)]
pub(crate) struct WebFeed {
    shared: Arc<Shared>,
}

/// A reading serialised once, with its feed id (1, 2, ... in order of [`WebFeed::send`]).
#[derive(Clone)]
struct Entry {
    id: u64,
    json: Arc<str>,
}

struct Shared {
    /// The ring; its lock is also held while broadcasting, so that a subscriber taking a
    /// snapshot of the ring under it sees every reading exactly once.
    ring: Mutex<Ring>,
    events: broadcast::Sender<Entry>,
}

struct Ring {
    entries: VecDeque<Entry>,
    last_id: u64,
}

impl Shared {
    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl WebFeed {
    /// Keeps `r` in the ring (dropping the oldest beyond [`RING`]) and pushes it to every open
    /// page.
    pub(crate) fn send(&self, r: WebReading) {
        let Ok(json) = serde_json::to_string(&r) else {
            return;
        };
        let mut ring = self.shared.ring();
        ring.last_id += 1;
        let entry = Entry {
            id: ring.last_id,
            json: json.into(),
        };
        if ring.entries.len() >= RING {
            ring.entries.pop_front();
        }
        ring.entries.push_back(entry.clone());
        // No receiver (no open page) is fine.
        let _ = self.shared.events.send(entry);
    }
}

/// Serves the live page on `bind` (e.g. 127.0.0.1:8080; port 0 picks one). Returns the bound
/// address and a sender: every [`WebReading`] sent is kept in a ring of the last 1000 and pushed
/// to every open page.
///
/// The server runs as tasks of the current tokio runtime until the runtime shuts down; `title`
/// is shown (HTML-escaped) as the page's title.
pub(crate) async fn serve(
    bind: SocketAddr,
    title: String,
) -> anyhow::Result<(SocketAddr, WebFeed)> {
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("web: cannot listen on {bind}"))?;
    let addr = listener.local_addr().context("web: local address")?;
    let (sender, _) = broadcast::channel(STREAM_BACKLOG);
    let shared = Arc::new(Shared {
        ring: Mutex::new(Ring {
            entries: VecDeque::with_capacity(RING),
            last_id: 0,
        }),
        events: sender,
    });
    let page = Bytes::from(PAGE.replace("{{TITLE}}", &html_escape(&title)));
    let app = Router::new()
        .route("/", get(page_of))
        .route("/index.html", get(page_of))
        .route("/readings", get(readings))
        .route("/events", get(events))
        .fallback(http::not_found)
        .with_state(App {
            shared: Arc::clone(&shared),
            page,
        });
    http::serve(listener, MAX_CONNECTIONS, app);
    Ok((addr, WebFeed { shared }))
}

/// What the handlers share.
#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    page: Bytes,
}

async fn page_of(State(app): State<App>) -> Response {
    ([(header::CONTENT_TYPE, HTML)], app.page).into_response()
}

async fn readings(State(app): State<App>) -> Response {
    let (body, last_id) = readings_json(&app.shared);
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(JSON)),
        (
            HeaderName::from_static("x-last-id"),
            HeaderValue::from(last_id),
        ),
    ];
    (headers, body).into_response()
}

/// `after=N` of a query string.
fn after_param(query: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("after="))
        .and_then(|v| v.parse().ok())
}

/// The ring as a JSON array, and the feed id of its last reading.
fn readings_json(shared: &Shared) -> (String, u64) {
    let ring = shared.ring();
    let len: usize = ring.entries.iter().map(|e| e.json.len() + 1).sum();
    let mut body = String::with_capacity(len + 2);
    body.push('[');
    for (i, e) in ring.entries.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&e.json);
    }
    body.push(']');
    (body, ring.last_id)
}

/// Streams the readings after the feed id given (by `Last-Event-ID`, else `?after=`) still in
/// the ring, then every new reading, until the client leaves or falls [`STREAM_BACKLOG`]
/// readings behind.
async fn events(
    State(app): State<App>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| query.as_deref().and_then(after_param));
    let (rx, replay) = {
        // Subscribing under the ring's lock: each reading is in the replay or in `rx`, once.
        let ring = app.shared.ring();
        let rx = app.shared.events.subscribe();
        let replay: Vec<Entry> = match after {
            Some(after) => ring
                .entries
                .iter()
                .filter(|e| e.id > after)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (rx, replay)
    };
    // A page that loses the stream reconnects after a second.
    let first = Event::default().retry(Duration::from_secs(1));
    let replay = std::iter::once(first).chain(replay.iter().map(event_of));
    let live = futures_util::stream::unfold(rx, |mut rx| async move {
        // Too slow (lagged) or the feed is gone: the stream ends; an EventSource reconnects
        // with Last-Event-ID and is replayed from the ring.
        let e = rx.recv().await.ok()?;
        Some((event_of(&e), rx))
    });
    let stream = futures_util::stream::iter(replay.collect::<Vec<_>>())
        .chain(live)
        .map(Ok);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEPALIVE).text("keepalive"))
}

fn event_of(e: &Entry) -> Event {
    // The JSON of a reading is one line (serde_json escapes newlines in strings).
    Event::default().id(e.id.to_string()).data(&*e.json)
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn escapes_the_title_and_reads_after() {
        assert_eq!(html_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
        assert_eq!(after_param("x=1&after=42"), Some(42));
        assert_eq!(after_param("after=x"), None);
    }

    fn reading(seq: i64) -> WebReading {
        WebReading {
            seq,
            value: seq.to_string(),
            latency_ms: None,
            received_ms: 0,
        }
    }

    /// Sends `req` (if any) and reads until the server closes.
    async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_the_routes_and_refuses_the_rest() {
        let (addr, feed) = serve("127.0.0.1:0".parse().unwrap(), "t<".into())
            .await
            .unwrap();
        for i in 1..=3 {
            feed.send(reading(i));
        }
        let r = exchange(addr, b"GET /readings HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let lower = r.to_ascii_lowercase();
        assert!(lower.contains("x-last-id: 3\r\n"), "{r}");
        assert!(lower.contains("cache-control: no-store\r\n"), "{r}");
        assert!(lower.contains("x-content-type-options: nosniff\r\n"), "{r}");
        let body = r.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(3), "{body}");

        let r = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("t&lt;"), "{r}");
        let r = exchange(addr, b"HEAD / HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200") && !r.contains("<html"), "{r}");
        let r = exchange(addr, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let r = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = exchange(addr, b"\x16\x03\x01binary\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        // A head that fills the 8 KiB buffer without ending (exactly, so that nothing unread
        // turns the close into a reset).
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(http::MAX_HEAD, b'a');
        let r = exchange(addr, &big).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    }

    #[tokio::test]
    async fn the_event_stream_replays_after_an_id_then_follows_the_feed() {
        let (addr, feed) = serve("127.0.0.1:0".parse().unwrap(), "t".into())
            .await
            .unwrap();
        for i in 1..=3 {
            feed.send(reading(i));
        }
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /events?after=1 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        let ids = |text: &str| -> Vec<u64> {
            text.lines()
                .filter_map(|l| l.strip_prefix("id:"))
                .filter_map(|v| v.trim().parse().ok())
                .collect()
        };
        let mut buf = [0u8; 4096];
        let mut sent = false;
        while ids(&text) != [2, 3, 4] {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("events in time")
                .unwrap();
            assert!(n > 0, "the stream ended: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if !sent && ids(&text) == [2, 3] {
                feed.send(reading(4));
                sent = true;
            }
            assert!(ids(&text).len() <= 3, "{text}");
        }
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("text/event-stream"),
            "{text}"
        );
        assert!(text.contains("retry:"), "{text}");
    }

    #[tokio::test]
    async fn one_connection_over_the_cap_gets_a_503() {
        let (addr, _feed) = serve("127.0.0.1:0".parse().unwrap(), "t".into())
            .await
            .unwrap();
        // Connections that send nothing hold their places (up to the 10 s head timeout).
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // Accepted in order: this one is over the cap. It sends nothing, so the server's close
        // cannot turn into a reset.
        let r = exchange(addr, b"").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        drop(held);
        // The places come back as the held connections close.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r = exchange(addr, b"GET /readings HTTP/1.1\r\n\r\n").await;
            if r.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{r}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
