//! The metrics HTTP server: `GET /metrics` (Prometheus text) and `GET /healthz`
//! (`ok`, or 503 `draining` once shutdown has begun, or 503 `socket lost` while the
//! socket path is not served) over HTTP/1.1, `HEAD` alike, with bounded connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long open scrapes may finish after the server is told to stop.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. out of file descriptors) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections served at once; a connection beyond them is closed as soon as it is
/// accepted. Scrapers need one or two: the cap keeps any local process from taking the
/// file descriptors boundary's connections need, or memory, through this port.
pub const MAX_METRICS_CONNECTIONS: usize = 64;
/// A request's head must arrive within this (a stalled client is dropped).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed (gracefully: an answer under way is finished) after this,
/// keep-alive or not, so an idle one cannot hold its slot for good.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// The most a connection may buffer of a request (hyper's minimum; its default is
/// about 400 KB, which a client sending a long unfinished header would pin).
const MAX_REQUEST_BUFFER: usize = 8192;

/// Starting the metrics server failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsServerError {
    /// The address could not be bound.
    #[error("metrics address {addr}: {source}")]
    Bind {
        /// The `--metrics-addr` value.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What `/healthz` reports. Shared between the server and whoever runs shutdown.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
    /// The proxy's `socket_bound` gauge, once [`Health::watch_socket`] gave it.
    socket_bound: std::sync::OnceLock<prometheus::IntGauge>,
}

impl Health {
    /// Healthy, not draining.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// From now on `/healthz` answers 503 `draining`.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// From now on `/healthz` answers 503 `socket lost` while `socket_bound` is 0
    /// (the socket file was deleted or replaced and the path is not served).
    pub fn watch_socket(&self, socket_bound: prometheus::IntGauge) {
        let _ = self.socket_bound.set(socket_bound);
    }

    /// Whether the socket path is known not to be served.
    pub fn is_socket_lost(&self) -> bool {
        self.socket_bound
            .get()
            .is_some_and(|bound| bound.get() == 0)
    }
}

/// Binds the metrics address (call before serving, so a bad address fails start-up).
pub async fn bind_metrics(addr: SocketAddr) -> Result<TcpListener, MetricsServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsServerError::Bind { addr, source })
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` completes, then
/// stops accepting, lets open requests finish (up to a second) and returns.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Registry,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if connections.len() >= MAX_METRICS_CONNECTIONS => {
                    tracing::debug!(%peer, "metrics server: {MAX_METRICS_CONNECTIONS} connections open; closing a new one");
                    drop(stream);
                }
                Ok((stream, _peer)) => {
                    let registry = registry.clone();
                    let health = Arc::clone(&health);
                    let stop = stop_rx.clone();
                    connections.spawn(serve_connection(stream, registry, health, stop));
                }
                Err(error) => {
                    crate::events::accept_failed(crate::events::Listener::Metrics, &error);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(CLOSE_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    registry: Registry,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let response = respond(&request, &registry, &health);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BUFFER)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "metrics server: connection ended with an error");
            }
            return;
        }
        _ = async { stop.wait_for(|&stopped| stopped).await.is_ok() } => {}
        () = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
    }
    connection.as_mut().graceful_shutdown();
    // An answer under way is finished; a client that does not read it is not waited for.
    let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
}

fn respond<B>(request: &Request<B>, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz") {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    // HEAD as GET: hyper sends the head without the body (health checkers use it).
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => metrics_response(registry),
        _ if health.is_draining() => plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        _ if health.is_socket_lost() => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "socket lost: the socket file was deleted or replaced; waiting for the path to be free\n",
        ),
        _ => plain(StatusCode::OK, "ok\n"),
    }
}

fn metrics_response(registry: &Registry) -> Response<Full<Bytes>> {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(error) = encoder.encode(&registry.gather(), &mut body) {
        tracing::error!(%error, "metrics server: encoding metrics failed");
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if let Ok(content_type) = header::HeaderValue::from_str(encoder.format_type()) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn healthz_turns_503_when_draining() {
        let registry = Registry::new();
        let health = Health::new();
        assert_eq!(respond(&get("/healthz"), &registry, &health).status(), 200);
        health.set_draining();
        assert_eq!(respond(&get("/healthz"), &registry, &health).status(), 503);
    }

    #[test]
    fn healthz_turns_503_while_the_socket_is_lost() {
        let registry = Registry::new();
        let health = Health::new();
        let bound = prometheus::IntGauge::new("bound", "test").unwrap();
        bound.set(1);
        health.watch_socket(bound.clone());
        assert_eq!(respond(&get("/healthz"), &registry, &health).status(), 200);
        bound.set(0);
        assert_eq!(respond(&get("/healthz"), &registry, &health).status(), 503);
        bound.set(1);
        assert_eq!(respond(&get("/healthz"), &registry, &health).status(), 200);
    }

    #[test]
    fn unknown_paths_are_404_and_other_methods_405() {
        let registry = Registry::new();
        let health = Health::new();
        assert_eq!(respond(&get("/"), &registry, &health).status(), 404);
        let post = Request::post("/metrics").body(()).unwrap();
        assert_eq!(respond(&post, &registry, &health).status(), 405);
        let head = Request::head("/healthz").body(()).unwrap();
        assert_eq!(respond(&head, &registry, &health).status(), 200);
    }
}
