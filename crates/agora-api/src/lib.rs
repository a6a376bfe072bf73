//! HTTP for Agora. Only this crate knows HTTP and OpenAI JSON (DESIGN.md invariant).
//!
//! - [`openai`]: `/v1/chat/completions`, `/v1/completions`, `/v1/models`
//! - `/health`, `/metrics` (Prometheus text)
//! - [`client`]: the small HTTP client the CLI uses (`agora chat`, `agora bench`)
//! - [`tlog`]: the transparency log and witness (C2SP tlog-tiles, tlog-witness), and clients

pub mod backend;
pub mod client;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod tlog;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

pub use backend::{Backend, LocalBackend, ModelCard, Started};
pub use error::ApiError;
pub use metrics::Metrics;

/// Reported as `system_fingerprint`.
pub const FINGERPRINT: &str = concat!("agora-", env!("CARGO_PKG_VERSION"));

/// Default limit on request bodies (bytes).
pub const DEFAULT_BODY_LIMIT: usize = 4 << 20;

/// Shared by every handler.
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub metrics: Metrics,
}

/// HTTP settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub body_limit: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: DEFAULT_BODY_LIMIT,
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
        .fallback(not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(openai::BodyLimit(limit)))
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

/// An API bound to its address, not yet serving.
pub struct HttpServer {
    pub addr: SocketAddr,
    listener: TcpListener,
    router: Router,
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
    let mut router = router(state, cfg);
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
    })
}

impl HttpServer {
    /// Serves until `shutdown` resolves; responses in flight are finished first.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
}
