//! A tiny live-chart web server for sensor readings (`--web ADDR`).
//!
//! A hand-written, minimal HTTP/1.1 server on tokio's `TcpListener` (no web framework). Every
//! reading given to [`WebFeed::send`] is kept in a ring of the last [`RING`] readings and pushed
//! to every open page. Routes:
//!
//! - `GET /`: a self-contained page (inline JS, CSS and SVG; `web_page.html`) charting the
//!   numeric values and the latencies live;
//! - `GET /readings`: the ring as a JSON array of [`WebReading`], oldest first; its
//!   `X-Last-Id` header is the feed id of the last one (0 when empty);
//! - `GET /events`: a Server-Sent Events stream, one `id: N` + `data: {WebReading}` event per
//!   new reading and a `: keepalive` comment every 15 s. With `?after=N` (or the
//!   `Last-Event-ID` header a reconnecting `EventSource` sends) it first replays the readings
//!   of the ring after feed id `N`, so a page that loaded `/readings` misses nothing;
//! - anything else: 404 (405 for methods other than GET and HEAD).
//!
//! Memory is bounded: request heads are capped at 8 KiB (431 beyond), at most 64 connections
//! are served at once (more get an immediate 503 and are closed), a request head must arrive
//! within 10 s, and a client that does not take what it is sent within 10 s is dropped. Every
//! response but the event stream closes its connection (`Connection: close`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, broadcast};

/// How many readings the ring keeps (and `/readings` returns).
pub(crate) const RING: usize = 1000;
/// The largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; more are refused.
const MAX_CONNECTIONS: usize = 64;
/// How long a request head may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to accept one write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The interval of the event stream's keepalive comments.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events queued for one slow event stream before it is dropped (its page then reconnects and
/// is replayed from the ring).
const STREAM_BACKLOG: usize = 1024;
/// The page, with `{{TITLE}}` placeholders.
const PAGE: &str = include_str!("web_page.html");

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
    let (events, _) = broadcast::channel(STREAM_BACKLOG);
    let shared = Arc::new(Shared {
        ring: Mutex::new(Ring {
            entries: VecDeque::with_capacity(RING),
            last_id: 0,
        }),
        events,
    });
    let page: Arc<str> = PAGE.replace("{{TITLE}}", &html_escape(&title)).into();
    let server = Arc::clone(&shared);
    accept(listener, MAX_CONNECTIONS, move |stream| {
        let (shared, page) = (Arc::clone(&server), Arc::clone(&page));
        async move { handle(stream, &shared, &page).await }
    });
    Ok((addr, WebFeed { shared }))
}

/// The parts of a request the server uses.
#[derive(Debug, PartialEq)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    /// `after=N` of the query string.
    after: Option<u64>,
    /// The `Last-Event-ID` header, if a number.
    last_event_id: Option<u64>,
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq)]
enum HeadError {
    /// Larger than [`MAX_HEAD`].
    TooLarge,
    /// Not a request line and headers.
    Malformed,
    /// The connection closed or failed first.
    Closed,
}

/// Accepts connections on `listener` in a task of its own, serving each with `serve` in a task
/// of its own, at most `max` at once (more get an immediate 503 and are closed).
pub(crate) fn accept<F, Fut>(listener: TcpListener, max: usize, serve: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::debug!("web: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                // A fresh socket's send buffer is empty: this cannot block (and may fail).
                let _ = stream.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                      Retry-After: 1\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let _ = stream.set_nodelay(true);
            let work = serve(stream);
            tokio::spawn(async move {
                work.await;
                drop(permit);
            });
        }
    });
}

/// Reads a request head within [`READ_TIMEOUT`] and returns it with whether it is a HEAD
/// request. Anything but a GET or HEAD is answered here (431, 400, 405) and gives `None`, as
/// does a client that sends nothing in time or goes away.
pub(crate) async fn read_get(stream: &mut TcpStream) -> Option<(Request, bool)> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(stream)).await {
        Ok(Ok(head)) => Some(head),
        Ok(Err(HeadError::TooLarge)) => {
            let _ = respond(
                stream,
                "431 Request Header Fields Too Large",
                TEXT,
                b"",
                false,
            )
            .await;
            return None;
        }
        Ok(Err(HeadError::Malformed)) => None,
        // Idle for too long, or gone.
        Ok(Err(HeadError::Closed)) | Err(_) => return None,
    };
    let Some(req) = head.as_deref().and_then(parse_head) else {
        let _ = respond(stream, "400 Bad Request", TEXT, b"bad request\n", false).await;
        return None;
    };
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        let _ = respond(stream, "405 Method Not Allowed", TEXT, b"only GET\n", false).await;
        return None;
    }
    Some((req, head_only))
}

async fn handle(mut stream: TcpStream, shared: &Shared, page: &str) {
    let Some((req, head_only)) = read_get(&mut stream).await else {
        return;
    };
    match req.path.as_str() {
        "/" | "/index.html" => {
            let _ = respond(&mut stream, "200 OK", HTML, page.as_bytes(), head_only).await;
        }
        "/readings" => {
            let (body, last_id) = readings_json(shared);
            let extra = format!("X-Last-Id: {last_id}\r\n");
            let _ = respond_with(
                &mut stream,
                "200 OK",
                JSON,
                &extra,
                body.as_bytes(),
                head_only,
            )
            .await;
        }
        "/events" if !head_only => events(stream, shared, req.last_event_id.or(req.after)).await,
        "/events" => {
            let _ = respond(&mut stream, "200 OK", EVENT_STREAM, b"", true).await;
        }
        _ => {
            let _ = respond(
                &mut stream,
                "404 Not Found",
                TEXT,
                b"not found\n",
                head_only,
            )
            .await;
        }
    }
}

/// Reads up to the end of the request head (the empty line), at most [`MAX_HEAD`] bytes.
/// Whatever follows the head (a body) is ignored.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let chunk_len = chunk.len();
    loop {
        let room = MAX_HEAD - buf.len();
        if room == 0 {
            return Err(HeadError::TooLarge);
        }
        let n = match stream.read(&mut chunk[..room.min(chunk_len)]).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(n) => n,
        };
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf[from..]) {
            buf.truncate(from + end);
            return Ok(buf);
        }
        if buf.first().is_some_and(|b| !b.is_ascii_alphabetic()) {
            return Err(HeadError::Malformed);
        }
    }
}

/// The length of the head in `buf` (before its empty line), if `buf` holds its end.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find(|&i| buf[i..].starts_with(b"\r\n\r\n") || buf[i..].starts_with(b"\n\n"))
}

/// Parses a request head (without its empty line); `None` when it is not one.
fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut parts = lines.next()?.split_ascii_whitespace();
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let after = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("after="))
        .and_then(|v| v.parse().ok());
    let mut last_event_id = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("last-event-id") {
            last_event_id = value.trim().parse().ok();
        }
    }
    Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        after,
        last_event_id,
    })
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

/// Streams the readings after feed id `after` still in the ring (none when `None`), then every
/// new reading, until the client leaves or falls [`STREAM_BACKLOG`] readings behind.
async fn events(stream: TcpStream, shared: &Shared, after: Option<u64>) {
    let (mut rx, mut out) = {
        // Subscribing under the ring's lock: each reading is in the replay or in `rx`, once.
        let ring = shared.ring();
        let rx = shared.events.subscribe();
        let mut out = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\nretry: 1000\n\n",
        );
        if let Some(after) = after {
            for e in ring.entries.iter().filter(|e| e.id > after) {
                push_event(&mut out, e);
            }
        }
        (rx, out)
    };
    let (mut rd, mut wr) = stream.into_split();
    let start = tokio::time::Instant::now() + KEEPALIVE;
    let mut keepalive = tokio::time::interval_at(start, KEEPALIVE);
    let mut scratch = [0u8; 512];
    loop {
        if !out.is_empty() {
            if write_all(&mut wr, out.as_bytes()).await.is_err() {
                return;
            }
            out.clear();
        }
        tokio::select! {
            r = rx.recv() => match r {
                Ok(e) => {
                    push_event(&mut out, &e);
                    // Batch what else is already queued.
                    while out.len() < 64 * 1024 {
                        match rx.try_recv() {
                            Ok(e) => push_event(&mut out, &e),
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                }
                // Too slow (or the feed is gone): close; an EventSource reconnects with
                // Last-Event-ID and is replayed from the ring.
                Err(_) => return,
            },
            _ = keepalive.tick() => out.push_str(": keepalive\n\n"),
            // Anything the client sends is discarded; EOF or an error means it left.
            n = rd.read(&mut scratch) => if matches!(n, Ok(0) | Err(_)) {
                return;
            },
        }
    }
}

fn push_event(out: &mut String, e: &Entry) {
    // The JSON of a reading is one line (serde_json escapes newlines in strings).
    out.push_str("id: ");
    out.push_str(&e.id.to_string());
    out.push_str("\ndata: ");
    out.push_str(&e.json);
    out.push_str("\n\n");
}

pub(crate) const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";

pub(crate) async fn respond<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    respond_with(w, status, content_type, "", body, head_only).await
}

/// Writes a whole response (`extra`: more header lines, each ending in CRLF) and flushes it.
async fn respond_with<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: &str,
    content_type: &str,
    extra: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{extra}\
         Connection: close\r\n\r\n",
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    if !head_only {
        out.extend_from_slice(body);
    }
    write_all(w, &out).await?;
    // Half-close, so the client sees the end even if it keeps its side open.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, w.shutdown()).await;
    Ok(())
}

/// Writes `bytes` within [`WRITE_TIMEOUT`].
async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
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

    #[test]
    fn parses_request_heads() {
        let r = parse_head(b"GET /events?x=1&after=42 HTTP/1.1\r\nHost: a\r\nLast-Event-ID: 7")
            .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/events");
        assert_eq!(r.after, Some(42));
        assert_eq!(r.last_event_id, Some(7));
        assert!(parse_head(b"GET / HTTP/1.1\r\nno colon").is_none());
        assert!(parse_head(b"GET /").is_none());
        assert!(parse_head(b"get / HTTP/1.1").is_none());
        assert!(parse_head(b"GET / SPDY/3").is_none());
        assert!(parse_head(&[0xff, 0xfe]).is_none());
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn escapes_the_title() {
        assert_eq!(html_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }

    #[tokio::test]
    async fn caps_the_request_head() {
        let big = vec![b'A'; MAX_HEAD + 10];
        let mut r = &big[..];
        assert_eq!(read_head(&mut r).await, Err(HeadError::TooLarge));
        let mut r = &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..];
        assert_eq!(
            read_head(&mut r).await.unwrap(),
            b"GET / HTTP/1.1\r\nHost: x"
        );
        let mut r = &b"\x16\x03\x01binary"[..];
        assert_eq!(read_head(&mut r).await, Err(HeadError::Malformed));
        let mut r = &b"GET / HTT"[..];
        assert_eq!(read_head(&mut r).await, Err(HeadError::Closed));
    }
}
