//! Connections: the state shared by a transport and its tasks, dialing, the accept loop, and
//! the two tasks of every open connection (a writer, which also owns timers and closing, and a
//! reader).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use kad_core::PeerAddr;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{StatusCode, Uri};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, trace};

use crate::WsConfig;

/// How long closing a connection may take: sending our Close frame and waiting for the peer's.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Inbound connections still in their handshake, beyond the free connection slots, before new
/// TCP connections are dropped unanswered.
const HANDSHAKE_SLACK: usize = 64;
/// Remembered dial failures (for backoff) at most; expired ones are pruned first.
const MAX_BACKOFF_ENTRIES: usize = 16_384;
/// Messages and bytes written in one batch before flushing.
const BATCH_MESSAGES: usize = 64;
const BATCH_BYTES: usize = 256 * 1024;

/// Counters, shared with the tasks.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) dialed: AtomicU64,
    pub(crate) refused_limit: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) oversize: AtomicU64,
    pub(crate) non_binary: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) pings_sent: AtomicU64,
    pub(crate) timeouts: AtomicU64,
}

/// Resolves once the transport closes (or its closing flag is gone, which means the same).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A token every task holds; the transport's `close` waits until all of them are dropped.
#[derive(Clone)]
pub(crate) struct Alive(#[allow(dead_code)] mpsc::Sender<()>);

impl Alive {
    pub(crate) fn new() -> (Self, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel(1);
        (Self(tx), rx)
    }
}

/// The sending side of one connection, as found in the map.
pub(crate) struct ConnHandle {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<Bytes>,
}

/// A recent dial failure of one URL.
pub(crate) struct Backoff {
    pub(crate) until: Instant,
    pub(crate) delay: Duration,
}

/// The mutable state of a transport, behind one lock (never held across an await).
pub(crate) struct State {
    /// Open connections and connections being dialed, by the address messages to them use.
    pub(crate) conns: HashMap<PeerAddr, ConnHandle>,
    /// URLs whose last dial failed, until their backoff has passed.
    pub(crate) backoff: HashMap<PeerAddr, Backoff>,
    /// `None` once the transport is closed: no task may start any more.
    pub(crate) alive: Option<Alive>,
}

/// What a transport shares with its tasks.
pub(crate) struct Shared {
    /// Normalized configuration.
    pub(crate) config: WsConfig,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) tls_client: Arc<ClientConfig>,
    pub(crate) state: Mutex<State>,
    /// Connection slots in use (outbound from the first send, inbound from the upgrade request).
    pub(crate) open: AtomicUsize,
    /// Inbound TCP connections still in their TLS or WebSocket handshake.
    pub(crate) pending: AtomicUsize,
    pub(crate) next_id: AtomicU64,
    pub(crate) counters: Counters,
    pub(crate) inbox: mpsc::Sender<(PeerAddr, Bytes)>,
    pub(crate) closing: watch::Sender<bool>,
    epoch: Instant,
}

impl Shared {
    pub(crate) fn new(
        config: WsConfig,
        inbox: mpsc::Sender<(PeerAddr, Bytes)>,
        alive: Alive,
    ) -> Self {
        let max = config.max_message_len;
        let write_buffer = 8 * 1024;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(write_buffer)
            // One whole message (plus headers and a queued control frame) must fit.
            .max_write_buffer_size(write_buffer + max + 1024)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let tls_client = config
            .tls_client
            .clone()
            .unwrap_or_else(|| crate::tls::client_config(&[]));
        Self {
            config,
            ws_config,
            tls_client,
            state: Mutex::new(State {
                conns: HashMap::new(),
                backoff: HashMap::new(),
                alive: Some(alive),
            }),
            open: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            inbox,
            closing: watch::channel(false).0,
            epoch: Instant::now(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at_ms(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Removes `addr` from the map if it still names connection `id`.
    fn unregister(&self, addr: &PeerAddr, id: u64) {
        let mut st = self.lock();
        if st.conns.get(addr).is_some_and(|c| c.id == id) {
            st.conns.remove(addr);
        }
    }

    /// Records a failed dial of `addr`: its backoff doubles (from the minimum) and it is
    /// removed from the map if it still names connection `id`, both at once so that no send
    /// starts a new dial in between.
    fn dial_failed(&self, addr: &PeerAddr, id: u64) {
        let now = Instant::now();
        let (min, max) = (
            self.config.reconnect_backoff_min,
            self.config.reconnect_backoff_max,
        );
        let mut st = self.lock();
        if st.conns.get(addr).is_some_and(|c| c.id == id) {
            st.conns.remove(addr);
        }
        let delay = st
            .backoff
            .get(addr)
            .map_or(min, |b| b.delay.saturating_mul(2).clamp(min, max));
        if st.backoff.len() >= MAX_BACKOFF_ENTRIES && !st.backoff.contains_key(addr) {
            st.backoff.retain(|_, b| b.until > now);
            if st.backoff.len() >= MAX_BACKOFF_ENTRIES {
                return; // too many failing peers at once: this one is retried without delay
            }
        }
        st.backoff.insert(
            addr.clone(),
            Backoff {
                until: now + delay,
                delay,
            },
        );
    }
}

/// One connection slot; released when dropped.
pub(crate) struct Slot(Arc<Shared>);

impl Slot {
    /// Takes a slot if fewer than `max_connections` are in use.
    pub(crate) fn acquire(shared: &Arc<Shared>) -> Option<Self> {
        let max = shared.config.max_connections;
        shared
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(shared.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An inbound connection in its handshake; counted in `pending` while it lives.
struct Pending(Arc<Shared>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TCP stream, with or without TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

type Ws = WebSocketStream<Stream>;

/// Where a `ws://` or `wss://` URL points.
pub(crate) struct Target {
    tls: bool,
    /// Host name or IP literal, without IPv6 brackets.
    host: String,
    port: u16,
    /// The URL to request, with a path of at least `/`.
    uri: Uri,
}

impl Target {
    /// Parses a `ws://` or `wss://` URL; `None` if it is not one this transport can dial.
    pub(crate) fn parse(url: &str) -> Option<Self> {
        let uri: Uri = url.parse().ok()?;
        let tls = match uri.scheme_str()?.to_ascii_lowercase().as_str() {
            "ws" => false,
            "wss" => true,
            _ => return None,
        };
        let raw_host = uri.host()?;
        let host = raw_host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(raw_host);
        if host.is_empty() {
            return None;
        }
        // `Uri::port` ignores a port that does not fit in 16 bits: read it from the authority.
        let authority = uri.authority()?.as_str();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let port = match host_port.strip_prefix(raw_host)?.strip_prefix(':') {
            Some(p) => p.parse::<u16>().ok()?,
            None if tls => 443,
            None => 80,
        };
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/");
        let uri = Uri::builder()
            .scheme(if tls { "wss" } else { "ws" })
            .authority(uri.authority()?.as_str())
            .path_and_query(path)
            .build()
            .ok()?;
        Some(Self {
            tls,
            host: host.to_owned(),
            port,
            uri,
        })
    }
}

/// Why a dial failed (for logs).
enum DialError {
    Io(io::Error),
    ServerName,
    Ws(WsError),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::ServerName => f.write_str("the host is not a valid TLS server name"),
            Self::Ws(e) => write!(f, "{e}"),
        }
    }
}

/// TCP connect, TLS for `wss://`, then the WebSocket handshake (the caller bounds the time).
async fn dial(shared: &Shared, target: &Target) -> Result<Ws, DialError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(DialError::Io)?;
    let _ = tcp.set_nodelay(true);
    let stream = if target.tls {
        let name = ServerName::try_from(target.host.clone()).map_err(|_| DialError::ServerName)?;
        let tls = tokio_rustls::TlsConnector::from(shared.tls_client.clone())
            .connect(name, tcp)
            .await
            .map_err(DialError::Io)?;
        Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)))
    } else {
        Stream::Plain(tcp)
    };
    let (ws, _response) = tokio_tungstenite::client_async_with_config(
        target.uri.clone(),
        stream,
        Some(shared.ws_config),
    )
    .await
    .map_err(DialError::Ws)?;
    Ok(ws)
}

/// Drops what is left in a connection's queue (it is no longer in the map, so nothing more
/// arrives), counting it.
fn drain(shared: &Shared, rx: &mut mpsc::Receiver<Bytes>) {
    rx.close();
    let mut n = 0u64;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    if n > 0 {
        shared.counters.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// An outbound connection: dials `addr`, then runs it. Spawned by the first send to `addr`.
pub(crate) async fn outbound(
    shared: Arc<Shared>,
    addr: PeerAddr,
    target: Target,
    id: u64,
    mut rx: mpsc::Receiver<Bytes>,
    slot: Slot,
    _alive: Alive,
) {
    let mut closing = shared.closing.subscribe();
    let dialed = tokio::select! {
        biased;
        () = closed(&mut closing) => None,
        r = tokio::time::timeout(shared.config.connect_timeout, dial(&shared, &target)) => Some(r),
    };
    match dialed {
        Some(Ok(Ok(ws))) => {
            bump(&shared.counters.dialed);
            shared.lock().backoff.remove(&addr);
            trace!(peer = %addr, "dialed");
            run(shared, ws, addr, id, rx, slot).await;
        }
        None => {
            shared.unregister(&addr, id);
            drain(&shared, &mut rx);
            drop(slot);
        }
        Some(r) => {
            bump(&shared.counters.failed);
            match r {
                Ok(Err(e)) => debug!(peer = %addr, error = %e, "websocket dial failed"),
                _ => debug!(peer = %addr, "websocket dial timed out"),
            }
            shared.dial_failed(&addr, id);
            drain(&shared, &mut rx);
            drop(slot);
        }
    }
}

/// Accepts TCP connections until the transport closes; each handshakes in its own task.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, alive: Alive) {
    let mut closing = shared.closing.subscribe();
    loop {
        let accepted = tokio::select! {
            biased;
            () = closed(&mut closing) => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let open = shared.open.load(Ordering::Acquire);
        let pending = shared.pending.load(Ordering::Acquire);
        if open + pending >= shared.config.max_connections + HANDSHAKE_SLACK {
            bump(&shared.counters.refused_limit);
            trace!(%peer, "dropped a connection: too many open or in handshake");
            continue;
        }
        shared.pending.fetch_add(1, Ordering::AcqRel);
        let pending = Pending(shared.clone());
        tokio::spawn(inbound(shared.clone(), tcp, peer, pending, alive.clone()));
    }
    // The port is free before `close` (waiting for every `Alive`) returns.
    drop(listener);
    drop(alive);
    trace!("listener stopped");
}

/// The outcome of the upgrade-request check of an inbound connection.
enum Verdict {
    Undecided,
    Refused,
    Accepted(Slot),
}

fn refusal(status: StatusCode, text: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(text.to_owned()));
    *r.status_mut() = status;
    r
}

/// An inbound connection: TLS and WebSocket handshake within `handshake_timeout`, then run.
async fn inbound(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    pending: Pending,
    _alive: Alive,
) {
    let _ = tcp.set_nodelay(true);
    let verdict = Arc::new(Mutex::new(Verdict::Undecided));
    let handshake = async {
        let stream = match &shared.config.tls_server {
            Some(tls) => {
                let s = tokio_rustls::TlsAcceptor::from(tls.clone())
                    .accept(tcp)
                    .await
                    .map_err(WsError::Io)?;
                Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(s)))
            }
            None => Stream::Plain(tcp),
        };
        // The error type is tungstenite's (an HTTP response), not ours to shrink.
        #[allow(clippy::result_large_err)]
        let check = {
            let shared = shared.clone();
            let verdict = verdict.clone();
            move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                let mut v = verdict.lock().unwrap_or_else(|e| e.into_inner());
                if req.uri().path() != shared.config.path {
                    bump(&shared.counters.handshake_failures);
                    *v = Verdict::Refused;
                    return Err(refusal(StatusCode::NOT_FOUND, "no websocket endpoint here"));
                }
                match Slot::acquire(&shared).filter(|_| !shared.is_closing()) {
                    Some(slot) => {
                        *v = Verdict::Accepted(slot);
                        Ok(resp)
                    }
                    None => {
                        bump(&shared.counters.refused_limit);
                        *v = Verdict::Refused;
                        Err(refusal(StatusCode::SERVICE_UNAVAILABLE, "connection limit"))
                    }
                }
            }
        };
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(shared.ws_config)).await
    };
    let mut closing = shared.closing.subscribe();
    let result = tokio::select! {
        biased;
        () = closed(&mut closing) => return,
        r = tokio::time::timeout(shared.config.handshake_timeout, handshake) => r,
    };
    drop(pending);
    let verdict = std::mem::replace(
        &mut *verdict.lock().unwrap_or_else(|e| e.into_inner()),
        Verdict::Refused,
    );
    let (ws, slot) = match (result, verdict) {
        (Ok(Ok(ws)), Verdict::Accepted(slot)) => (ws, slot),
        (r, v) => {
            if !matches!(v, Verdict::Refused) {
                bump(&shared.counters.handshake_failures);
            }
            match r {
                Ok(Err(e)) => trace!(%peer, error = %e, "inbound handshake failed"),
                _ => trace!(%peer, "inbound handshake timed out"),
            }
            return;
        }
    };
    let scheme = if shared.config.tls_server.is_some() {
        "wss"
    } else {
        "ws"
    };
    let canonical = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let Ok(from) = format!("{scheme}://{canonical}").parse::<PeerAddr>() else {
        return;
    };
    let (tx, rx) = mpsc::channel(shared.config.send_queue);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    {
        let mut st = shared.lock();
        if st.alive.is_none() {
            return;
        }
        // A connection already known by this address is replaced: its queue's sender is
        // dropped here, so it closes once it has sent what it holds.
        st.conns.insert(from.clone(), ConnHandle { id, tx });
    }
    bump(&shared.counters.accepted);
    trace!(peer = %from, "accepted");
    run(shared, ws, from, id, rx, slot).await;
}

/// Per-connection activity, written by the reader and read by the writer.
struct Liveness {
    /// Milliseconds (since the transport's epoch) of the last frame of any kind received.
    last_rx: AtomicU64,
    /// Milliseconds of the last data message sent or received.
    last_msg: AtomicU64,
    /// The reader waits for room in the transport's inbox (the application is slow, not the
    /// peer): timeouts do not apply meanwhile.
    blocked: AtomicBool,
}

/// Why a reader stopped.
enum ReadEnd {
    /// Close frame, end of stream, or the transport's inbox is gone.
    Closed,
    /// The peer sent a message over the limit.
    Oversize,
    /// A protocol or I/O error.
    Error,
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy)]
enum End {
    Shutdown,
    PeerClosed,
    Oversize,
    Replaced,
    Timeout,
    WriteFailed,
}

async fn read_loop(
    shared: Arc<Shared>,
    mut stream: SplitStream<Ws>,
    from: PeerAddr,
    live: Arc<Liveness>,
) -> ReadEnd {
    while let Some(item) = stream.next().await {
        let now = shared.now_ms();
        live.last_rx.store(now, Ordering::Relaxed);
        match item {
            Ok(Message::Binary(msg)) => {
                if msg.len() > shared.config.max_message_len {
                    bump(&shared.counters.oversize);
                    return ReadEnd::Oversize;
                }
                live.last_msg.store(now, Ordering::Relaxed);
                live.blocked.store(true, Ordering::Relaxed);
                bump(&shared.counters.received);
                let delivered = shared.inbox.send((from.clone(), msg)).await;
                let now = shared.now_ms();
                live.last_rx.store(now, Ordering::Relaxed);
                live.blocked.store(false, Ordering::Relaxed);
                if delivered.is_err() {
                    return ReadEnd::Closed;
                }
            }
            Ok(Message::Text(_)) => {
                bump(&shared.counters.non_binary);
                trace!(peer = %from, "dropped a text frame");
            }
            Ok(Message::Close(_)) => return ReadEnd::Closed,
            // Pings are answered by tungstenite (the pong goes out with the next read or write).
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(WsError::Capacity(e)) => {
                bump(&shared.counters.oversize);
                debug!(peer = %from, error = %e, "peer sent an oversize message");
                return ReadEnd::Oversize;
            }
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => return ReadEnd::Closed,
            Err(e) => {
                debug!(peer = %from, error = %e, "websocket read failed");
                return ReadEnd::Error;
            }
        }
    }
    ReadEnd::Closed
}

/// Writes `first` and whatever else is queued (up to a batch), then flushes.
async fn write_batch(
    sink: &mut SplitSink<Ws, Message>,
    first: Bytes,
    rx: &mut mpsc::Receiver<Bytes>,
) -> Result<u64, WsError> {
    let mut bytes = first.len();
    sink.feed(Message::Binary(first)).await?;
    let mut n = 1u64;
    while (n as usize) < BATCH_MESSAGES && bytes < BATCH_BYTES {
        let Ok(m) = rx.try_recv() else { break };
        bytes += m.len();
        sink.feed(Message::Binary(m)).await?;
        n += 1;
    }
    sink.flush().await?;
    Ok(n)
}

/// Runs `fut` (a write) unless the transport closes first or it takes longer than `limit`
/// (the peer stopped reading: counted as a timeout).
async fn guarded<F, T>(
    shared: &Shared,
    closing: &mut watch::Receiver<bool>,
    limit: Duration,
    fut: F,
) -> Result<T, End>
where
    F: Future<Output = Result<T, WsError>>,
{
    tokio::select! {
        biased;
        () = closed(closing) => Err(End::Shutdown),
        r = tokio::time::timeout(limit, fut) => match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                trace!(error = %e, "websocket write failed");
                Err(End::WriteFailed)
            }
            Err(_) => {
                bump(&shared.counters.timeouts);
                Err(End::Timeout)
            }
        },
    }
}

/// Runs an open connection until it ends: this task writes (queued messages, pings, the
/// Close frame) and watches the timers; a second task reads.
async fn run(
    shared: Arc<Shared>,
    ws: Ws,
    addr: PeerAddr,
    id: u64,
    mut rx: mpsc::Receiver<Bytes>,
    slot: Slot,
) {
    let (mut sink, stream) = ws.split();
    let now = shared.now_ms();
    let live = Arc::new(Liveness {
        last_rx: AtomicU64::new(now),
        last_msg: AtomicU64::new(now),
        blocked: AtomicBool::new(false),
    });
    let mut reader = tokio::spawn(read_loop(
        shared.clone(),
        stream,
        addr.clone(),
        live.clone(),
    ));
    let mut reader_done = false;
    let mut closing = shared.closing.subscribe();
    let cfg = &shared.config;
    let dead_after = cfg.ping_interval.saturating_add(cfg.pong_timeout);
    let mut next_ping = Instant::now() + cfg.ping_interval;

    // When the connection counts as dead (nothing received) and as idle (no message either way).
    let deadlines = || {
        (
            shared.at_ms(live.last_rx.load(Ordering::Relaxed)) + dead_after,
            shared.at_ms(live.last_msg.load(Ordering::Relaxed)) + cfg.idle_timeout,
        )
    };

    let end = loop {
        let (dead_at, idle_at) = deadlines();
        let wake = if live.blocked.load(Ordering::Relaxed) {
            // Timers are suspended while the application catches up: look again soon.
            next_ping.min(Instant::now() + Duration::from_millis(200))
        } else {
            next_ping.min(dead_at).min(idle_at)
        };
        tokio::select! {
            biased;
            () = closed(&mut closing) => break End::Shutdown,
            r = &mut reader => {
                reader_done = true;
                break match r {
                    Ok(ReadEnd::Oversize) => End::Oversize,
                    _ => End::PeerClosed,
                };
            }
            // Timers first: a queue that never empties must not starve pings and timeouts.
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                let (dead_at, idle_at) = deadlines();
                let blocked = live.blocked.load(Ordering::Relaxed);
                if !blocked && (now >= dead_at || now >= idle_at) {
                    bump(&shared.counters.timeouts);
                    debug!(peer = %addr, idle = now >= idle_at, "websocket connection timed out");
                    break End::Timeout;
                }
                if now >= next_ping {
                    next_ping = now + cfg.ping_interval;
                    let ping = sink.send(Message::Ping(Bytes::new()));
                    if let Err(end) = guarded(&shared, &mut closing, dead_after, ping).await {
                        break end;
                    }
                    bump(&shared.counters.pings_sent);
                }
            }
            m = rx.recv() => {
                let Some(m) = m else { break End::Replaced };
                let batch = write_batch(&mut sink, m, &mut rx);
                match guarded(&shared, &mut closing, dead_after, batch).await {
                    Ok(n) => {
                        shared.counters.sent.fetch_add(n, Ordering::Relaxed);
                        live.last_msg.store(shared.now_ms(), Ordering::Relaxed);
                    }
                    Err(end) => break end,
                }
            }
        }
    };

    // Sends from now on start a new connection; what this one still holds is dropped.
    shared.unregister(&addr, id);
    drain(&shared, &mut rx);
    trace!(peer = %addr, ?end, "websocket connection ends");

    let deadline = Instant::now() + CLOSE_WAIT;
    let frame = |code: CloseCode, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    let goodbye = match end {
        End::Shutdown => Some(frame(CloseCode::Away, "shutting down")),
        End::Oversize => Some(frame(CloseCode::Size, "message too big")),
        End::Replaced => Some(frame(CloseCode::Normal, "")),
        End::Timeout => Some(frame(CloseCode::Away, "timeout")),
        End::PeerClosed | End::WriteFailed => None,
    };
    match goodbye {
        Some(msg) => {
            let _ = tokio::time::timeout_at(deadline, sink.send(msg)).await;
        }
        // The peer's Close frame is answered by tungstenite: flush that answer out.
        None if matches!(end, End::PeerClosed) => {
            let _ = tokio::time::timeout_at(deadline, sink.close()).await;
        }
        None => {}
    }
    if !reader_done {
        // Wait for the peer's answer to our Close frame, then stop reading regardless.
        let answered = !matches!(end, End::WriteFailed | End::Timeout)
            && tokio::time::timeout_at(deadline, &mut reader).await.is_ok();
        if !answered {
            reader.abort();
            // Wait until the reader's half of the stream is dropped too, so that the socket
            // is closed before the slot is released (and before `close` returns).
            let _ = reader.await;
        }
    }
    drop(sink);
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn parse_targets() {
        let t = Target::parse("ws://example.org/kad").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (false, "example.org", 80));
        assert_eq!(t.uri.to_string(), "ws://example.org/kad");
        let t = Target::parse("WSS://example.org:8443/a/b?x=1").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port),
            (true, "example.org", 8443)
        );
        assert_eq!(t.uri.path_and_query().unwrap().as_str(), "/a/b?x=1");
        let t = Target::parse("wss://[::1]:4000").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "::1", 4000));
        assert_eq!(t.uri.path(), "/");
        let t = Target::parse("ws://127.0.0.1:9").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9));
        for bad in [
            "http://example.org/kad",
            "ws://",
            "ws://bad host/kad",
            "ws://h:99999/kad",
            "ws://h:/kad",
            "example.org",
        ] {
            assert!(Target::parse(bad).is_none(), "{bad}");
        }
    }
}
