//! `POST /agora/v1/trace`: where did the model get this text? The body is an `agora-trace/1`
//! request (`{"text", "datasets"?, "min_tokens"?, "max_count"?}`, text at most 64 KiB); the
//! answer is a trace whose every span, record and statement the client checks itself
//! (`agora trace`). Served by nodes with datasets; one trace at a time (others get 429); the
//! body must arrive within the API's body timeout and is at most [`MAX_TRACE_BODY`] bytes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Largest request body (a 64 KiB text with every character escaped fits).
pub const MAX_TRACE_BODY: usize = 1 << 20;

/// What the trace route serves. Blocking: called on a blocking thread.
pub trait TraceService: Send + Sync + 'static {
    /// Parses the request body and traces it.
    fn trace(&self, body: &[u8]) -> Result<Value, ApiError>;
}

#[derive(Clone)]
struct Svc {
    inner: Arc<dyn TraceService>,
    busy: Arc<Semaphore>,
    body_timeout: Duration,
}

/// The trace route over `service`; a body must arrive within `body_timeout`.
pub fn trace_router(service: Arc<dyn TraceService>, body_timeout: Duration) -> Router {
    Router::new()
        .route("/agora/v1/trace", post(trace))
        .with_state(Svc {
            inner: service,
            busy: Arc::new(Semaphore::new(1)),
            body_timeout,
        })
        .layer(DefaultBodyLimit::max(MAX_TRACE_BODY))
}

async fn trace(State(s): State<Svc>, req: Request<Body>) -> Response {
    let Ok(permit) = Arc::clone(&s.busy).try_acquire_owned() else {
        return ApiError::overloaded("another trace is running; retry", 1).into_response();
    };
    let body = match tokio::time::timeout(
        s.body_timeout,
        axum::body::to_bytes(req.into_body(), MAX_TRACE_BODY),
    )
    .await
    {
        Err(_) => return ApiError::body_timeout(s.body_timeout).into_response(),
        Ok(Err(_)) => return ApiError::too_large(MAX_TRACE_BODY).into_response(),
        Ok(Ok(b)) => b,
    };
    crate::datasets::blocking(move || {
        let _permit = permit;
        s.inner.trace(&body)
    })
    .await
}
