//! What the CLI's two HTTP servers share: an axum [`Router`] served over HTTP/1.1 by hyper,
//! with bounds a public-facing port needs.
//!
//! - At most `max` connections at once; one more gets an immediate `503` with `Retry-After: 1`
//!   and is closed.
//! - A request head (request line and headers) is at most [`MAX_HEAD`] bytes (`431` beyond,
//!   hyper's answer) and must arrive within [`READ_TIMEOUT`].
//! - A client that takes no bytes for [`WRITE_TIMEOUT`] (say, a page that stopped reading its
//!   event stream) is dropped.
//! - One request per connection (`Connection: close`), and every response says
//!   `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

/// The largest request head accepted (hyper's smallest allowed read buffer).
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// How long a request head may take to arrive.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to accept any of what it is sent.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of plain-text answers.
pub(crate) const TEXT: &str = "text/plain; charset=utf-8";

/// Serves `app` on `listener` in a task of its own until the runtime shuts down, each connection
/// in a task of its own, at most `max` at once.
pub(crate) fn serve(listener: TcpListener, max: usize, app: Router) {
    let app = app.layer(axum::middleware::map_response(common_headers));
    let limit = Arc::new(Semaphore::new(max));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::debug!("http: accept: {e}");
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
            let mut io = TimeoutStream::new(stream);
            io.set_write_timeout(Some(WRITE_TIMEOUT));
            let io = TokioIo::new(Box::pin(io));
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(READ_TIMEOUT)
                    .max_buf_size(MAX_HEAD)
                    .keep_alive(false)
                    .serve_connection(io, service);
                if let Err(e) = conn.await {
                    tracing::debug!("http: connection: {e}");
                }
                drop(permit);
            });
        }
    });
}

async fn common_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// A plain-text `404` for every path a router does not serve.
pub(crate) async fn not_found() -> impl axum::response::IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, TEXT)],
        "not found\n",
    )
}
