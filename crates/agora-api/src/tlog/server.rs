//! axum routers for the log (`POST /add`, `GET /checkpoint`, `GET /tile/...`) and the witness
//! (`POST /add-checkpoint`, `GET /evidence`, `GET /evidence/{id}`).
//!
//! `POST /add` answers 400 for an entry the log does not take (not a signed statement), 413 above
//! 65,535 bytes, 429 with `Retry-After` when the client's address or a signer is over its quota,
//! 503 with `Retry-After` when the append queue is full, and 507 when the disk budget is spent.
//! The client's address comes from `ConnectInfo<SocketAddr>` when the server provides it
//! (`into_make_service_with_connect_info`); without it no per-address quota applies.

use std::net::SocketAddr;
use std::sync::Arc;

use agora_log::{Error as LogError, Log, Witness};
use agora_tlog::tile::{MAX_ENTRY_LEN, TilePath};
use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

const TEXT: &str = "text/plain; charset=utf-8";
const OCTETS: &str = "application/octet-stream";
/// Tiles and entry bundles never change once they exist.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// The checkpoint changes every interval.
const MUTABLE: &str = "no-cache";

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body = msg.into();
    body.push('\n');
    (status, [(header::CONTENT_TYPE, TEXT)], body).into_response()
}

/// The log's HTTP API. `POST /add` answers with the entry's index once it is durable.
pub fn log_router(log: Log) -> Router {
    Router::new()
        .route(
            "/add",
            post(add).layer(DefaultBodyLimit::max(MAX_ENTRY_LEN)),
        )
        .route("/checkpoint", get(checkpoint))
        .route("/checkpoints/{size}", get(checkpoint_history))
        .route("/tile/{*path}", get(tile))
        .with_state(log)
        // A log is public: any page may read it (a dashboard served by another node checks
        // its receipts against this log's tiles from the visitor's browser).
        .layer(axum::middleware::map_response(allow_any_origin))
}

async fn allow_any_origin(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

fn retry_after(mut r: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

async fn add(
    State(log): State<Log>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    match log.submit(body.to_vec(), peer).await {
        Ok(i) => text(StatusCode::OK, i.to_string()),
        Err(LogError::EntryTooLarge { len }) => text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("entry is {len} bytes; the limit is {MAX_ENTRY_LEN}"),
        ),
        Err(e @ LogError::Rejected(_)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ LogError::Quota { retry_after: d, .. }) => retry_after(
            text(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            agora_log::retry_secs(&d),
        ),
        Err(e @ LogError::Full { .. }) => text(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        Err(e @ (LogError::Overloaded | LogError::ShuttingDown)) => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "append failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "append failed")
        }
    }
}

async fn checkpoint(State(log): State<Log>) -> Response {
    match log.checkpoint() {
        Some(p) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, TEXT),
                (header::CACHE_CONTROL, MUTABLE),
            ],
            p.bytes.as_ref().clone(),
        )
            .into_response(),
        None => {
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no checkpoint published yet",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

/// `GET /checkpoints/{size}` (an Agora extension of tlog-tiles): the first checkpoint the log
/// published of tree size at least `size`, so that anyone can find the checkpoint a community's
/// vote closed at.
async fn checkpoint_history(State(log): State<Log>, Path(size): Path<String>) -> Response {
    let Ok(size) = size.parse::<u64>() else {
        return text(
            StatusCode::BAD_REQUEST,
            "the size must be a decimal integer",
        );
    };
    let store = log.clone();
    let r = tokio::task::spawn_blocking(move || store.store().checkpoint_at_or_after(size)).await;
    match r {
        Ok(Ok(Some(bytes))) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, TEXT),
                (header::CACHE_CONTROL, MUTABLE),
            ],
            bytes,
        )
            .into_response(),
        Ok(Ok(None)) => text(StatusCode::NOT_FOUND, "no checkpoint of that size yet"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "checkpoint history read failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "checkpoint history read failed",
            )
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "checkpoint history read failed",
        ),
    }
}

async fn tile(State(log): State<Log>, Path(path): Path<String>) -> Response {
    let Ok(t) = TilePath::parse(&format!("tile/{path}")) else {
        return text(StatusCode::NOT_FOUND, "not a tile path");
    };
    match log.read_tile(&t) {
        Ok(Some(data)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, OCTETS),
                (header::CACHE_CONTROL, IMMUTABLE),
            ],
            data,
        )
            .into_response(),
        Ok(None) => text(StatusCode::NOT_FOUND, "no such tile"),
        Err(e) => {
            tracing::error!(error = %e, "tile read failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "tile read failed")
        }
    }
}

/// The witness's HTTP API.
pub fn witness_router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route(
            "/add-checkpoint",
            post(add_checkpoint).layer(DefaultBodyLimit::max(1 << 20)),
        )
        .route("/evidence", get(evidence_count))
        .route("/evidence/{id}", get(evidence))
        .with_state(witness)
}

async fn add_checkpoint(State(w): State<Arc<Witness>>, body: Bytes) -> Response {
    let now = agora_log::unix_now();
    let r = tokio::task::spawn_blocking(move || w.add_checkpoint(&body, now)).await;
    match r {
        Ok(r) => {
            let status =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let resp = (status, [(header::CONTENT_TYPE, r.content_type)], r.body).into_response();
            match r.retry_after {
                Some(s) => retry_after(resp, s),
                None => resp,
            }
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

async fn evidence_count(State(w): State<Arc<Witness>>) -> Response {
    match w.evidence_count() {
        Ok(n) => text(StatusCode::OK, n.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn evidence(State(w): State<Arc<Witness>>, Path(id): Path<u64>) -> Response {
    match w.evidence(id) {
        Ok(Some(env)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, IMMUTABLE),
            ],
            env,
        )
            .into_response(),
        Ok(None) => text(StatusCode::NOT_FOUND, "no such evidence"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
