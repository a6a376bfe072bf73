//! HTTP for Agora. Only this crate knows HTTP and OpenAI JSON (DESIGN.md invariant).
//!
//! - [`openai`]: `/v1/chat/completions`, `/v1/completions`, `/v1/models`
//! - `/health`, `/metrics` (Prometheus text)
//! - [`client`]: the small HTTP client the CLI uses (`agora chat`, `agora bench`)
//! - [`tlog`]: the transparency log and witness (C2SP tlog-tiles, tlog-witness), and clients
//!
//! The server ([`HttpServer::serve`]) is hyper's HTTP/1 connection loop with the limits a
//! public endpoint needs: at most [`ApiConfig::max_connections`] connections at once (a
//! newcomer beyond gets 503 and is closed), [`ApiConfig::header_timeout`] to send a request's
//! headers (slowloris clients and idle keep-alive connections are cut off), and
//! [`ApiConfig::body_timeout`] to send its body (then 408).

pub mod backend;
pub mod client;
pub mod community;
pub mod dashboard;
pub mod datasets;
pub mod error;
pub mod keepalive;
pub mod metrics;
pub mod openai;
pub mod provenance;
pub mod tlog;
pub mod trace;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

pub use backend::{Backend, LocalBackend, ModelCard, PrepareLimiter, Started};
pub use error::ApiError;
pub use metrics::Metrics;

/// Reported as `system_fingerprint`.
pub const FINGERPRINT: &str = concat!("agora-", env!("CARGO_PKG_VERSION"));

/// Default limit on request bodies (bytes).
pub const DEFAULT_BODY_LIMIT: usize = 4 << 20;

/// Default cap on open HTTP connections. With the node's 256 peer-to-peer connections, the
/// model file and the log's database it stays under the common soft limit of 1,024 open files,
/// and it is far more than the engine's slots and queue can serve at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Default time a client has to send a request's headers (from the connection's start, or the
/// end of the previous response). Ample for any real client, even on a slow link; it is also
/// how long an idle keep-alive connection is kept.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time a client has to send a request's body once its headers are in: 4 MiB (the
/// default body limit) at about 1 Mbit/s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request head (request line and headers) read into memory, per connection.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Connections refused at once beyond the cap that are still being answered (503, then a
/// short drain); beyond that a newcomer is closed without a word.
const REFUSALS_IN_FLIGHT: usize = 64;

/// Time a refused connection gets to take its 503 (written, then its request drained).
const REFUSAL_GRACE: Duration = Duration::from_secs(2);

/// Shared by every handler.
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub metrics: Metrics,
}

/// HTTP settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Largest request body, in bytes (413 beyond, from the declared length when there is one).
    pub body_limit: usize,
    /// Connections served at once; a newcomer beyond is answered 503 with `Retry-After` and
    /// closed.
    pub max_connections: usize,
    /// Time to send a request's headers; then the connection is closed.
    pub header_timeout: Duration,
    /// Time to send a request's body once its headers are in; then 408 and the connection is
    /// closed.
    pub body_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: DEFAULT_BODY_LIMIT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// The OpenAI API plus health and metrics.
pub fn router(state: Arc<AppState>, cfg: &ApiConfig) -> Router {
    let limit = cfg.body_limit;
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/agora/v1/nodes", get(nodes))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(openai::BodyLimit(limit)))
        .layer(axum::Extension(openai::BodyTimeout(cfg.body_timeout)))
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let load = state.backend.load();
    let cards = state.backend.models();
    let kv_bytes: u64 = cards.iter().map(|m| m.kv_bytes).sum();
    let models: Vec<String> = cards.into_iter().map(|m| m.id).collect();
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "models": models,
        "slots": load.slots, "slots_in_use": load.slots_busy, "queue_depth": load.queued,
        "kv_cache_bytes": kv_bytes,
    }))
    .into_response()
}

async fn nodes(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.count("nodes", 200);
    Json(state.backend.nodes()).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render(state.backend.load());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "No such route; the API lives under /v1 (chat/completions, completions, models).",
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method_not_allowed(&method, uri.path())
}

/// An API bound to its address, not yet serving.
pub struct HttpServer {
    pub addr: SocketAddr,
    listener: TcpListener,
    router: Router,
    cfg: ApiConfig,
    /// Connections refused beyond the cap, and open now.
    refused: prometheus_client::metrics::counter::Counter,
    open: prometheus_client::metrics::gauge::Gauge,
}

/// Binds the API for `backend` on `addr` (port 0 picks a free port; see [`HttpServer::addr`]).
pub async fn bind(
    addr: SocketAddr,
    backend: Arc<dyn Backend>,
    cfg: &ApiConfig,
) -> std::io::Result<HttpServer> {
    bind_with_log(addr, backend, cfg, None).await
}

/// Like [`bind`], also serving a transparency log under `/log` (tlog-tiles: `/log/add`,
/// `/log/checkpoint`, `/log/tile/…`).
pub async fn bind_with_log(
    addr: SocketAddr,
    backend: Arc<dyn Backend>,
    cfg: &ApiConfig,
    log: Option<agora_log::Log>,
) -> std::io::Result<HttpServer> {
    let state = Arc::new(AppState {
        backend,
        metrics: Metrics::new(),
    });
    let mut router = router(Arc::clone(&state), cfg);
    if let Some(log) = log {
        router = Router::new()
            .nest("/log", tlog::log_router(log))
            .merge(router);
    }
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    Ok(HttpServer {
        addr,
        listener,
        router,
        cfg: cfg.clone(),
        refused: state.metrics.connections_refused.clone(),
        open: state.metrics.connections_open.clone(),
    })
}

/// Serves a transparency log's routes alone (`agora log serve`) on `listener`, with the same
/// connection cap and timeouts as the API, until `shutdown` resolves.
pub async fn serve_log(
    listener: TcpListener,
    log: agora_log::Log,
    cfg: &ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    HttpServer::from_router(listener, tlog::log_router(log), cfg)?
        .serve(shutdown)
        .await
}

/// Serves a witness's routes alone (`agora witness serve`), like [`serve_log`].
pub async fn serve_witness(
    listener: TcpListener,
    witness: Arc<agora_log::Witness>,
    cfg: &ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    HttpServer::from_router(listener, tlog::witness_router(witness), cfg)?
        .serve(shutdown)
        .await
}

impl HttpServer {
    /// Serves `routes` too (e.g. [`datasets::datasets_router`]), before the API's own.
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.router = routes.merge(self.router);
        self
    }

    /// A server for any `router` on an already bound `listener` (its own connection metrics).
    fn from_router(
        listener: TcpListener,
        router: Router,
        cfg: &ApiConfig,
    ) -> std::io::Result<Self> {
        Ok(HttpServer {
            addr: listener.local_addr()?,
            listener,
            router,
            cfg: cfg.clone(),
            refused: Default::default(),
            open: Default::default(),
        })
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets the responses in flight
    /// (streams included) finish, closes idle connections, and returns once every connection
    /// is closed.
    ///
    /// Each connection is served by hyper's HTTP/1 state machine; handlers see the peer's
    /// address as `ConnectInfo<SocketAddr>`. Beyond [`ApiConfig::max_connections`] open
    /// connections, a newcomer is still accepted (so the kernel's backlog never fills, which
    /// would leave clients waiting on SYN retries with no answer) and answered at once with a
    /// fixed 503 (OpenAI JSON, `Retry-After: 1`, `Connection: close`) by one of at most 64
    /// short tasks, each with a 2 s deadline; when all 64 are busy, it is closed at once. So
    /// memory is bounded by the cap whatever the number of clients.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let HttpServer {
            listener,
            router,
            cfg,
            refused,
            open: open_gauge,
            ..
        } = self;
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(cfg.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true);
        let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
        let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
        let refusal = Bytes::from(refusal_response(cfg.max_connections.max(1)));
        // Connection tasks hold a receiver: `send` asks them to finish, `closed` waits for them.
        let (stop_tx, stop_rx) = watch::channel(());
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait instead of spinning.
                        tracing::warn!("accepting an HTTP connection failed: {e}");
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                },
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                refused.inc();
                refuse(stream, &refusals, refusal.clone());
                continue;
            };
            let _ = stream.set_nodelay(true);
            let router = router.clone();
            let body_timeout = cfg.body_timeout;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                // What `into_make_service_with_connect_info::<SocketAddr>` provided.
                req.extensions_mut().insert(ConnectInfo(peer));
                let req = req.map(|body| DeadlineBody::new(body, body_timeout));
                let mut router = router.clone();
                router.call(req)
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let mut stop = stop_rx.clone();
            let open = open_gauge.clone();
            open.inc();
            tokio::spawn(async move {
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        conn.as_mut().await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, "HTTP connection ended: {e}");
                }
                open.dec();
                drop(slot);
                drop(stop);
            });
        }
        drop(listener);
        let _ = stop_tx.send(());
        drop(stop_rx);
        stop_tx.closed().await;
        Ok(())
    }
}

/// Errors of one connection that must not stop the accept loop.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

/// The bytes sent to a connection refused beyond the cap.
fn refusal_response(max: usize) -> Vec<u8> {
    let body = ApiError::unavailable(
        format!("The server has too many open connections (the limit is {max}); retry shortly."),
        1,
    )
    .body_json();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a connection beyond the cap with `refusal` and closes it, in a bounded task; or
/// closes it at once when [`REFUSALS_IN_FLIGHT`] are already being answered.
fn refuse(mut stream: TcpStream, refusals: &Arc<Semaphore>, refusal: Bytes) {
    let Ok(permit) = Arc::clone(refusals).try_acquire_owned() else {
        return; // dropped: closed
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_GRACE, async {
            stream.write_all(&refusal).await?;
            stream.shutdown().await?;
            // Read what the client sent until it closes: closing a socket with unread bytes
            // sends a reset, which can destroy the 503 before the client reads it.
            let mut sink = [0u8; 1024];
            let mut left = 64usize << 10;
            while left > 0 {
                let n = stream.read(&mut sink).await?;
                if n == 0 {
                    break;
                }
                left = left.saturating_sub(n);
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// The error a request body yields when it is not in within [`ApiConfig::body_timeout`].
#[derive(Debug, Clone, Copy)]
pub struct BodyTimedOut(pub Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body was not received within {} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// A request body that fails with [`BodyTimedOut`] once its deadline (set when the headers
/// arrived) has passed, whichever route reads it.
struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Instant,
    /// Armed on the first read that has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Instant::now() + timeout,
            sleep: None,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
