//! The routes of a node that holds a log, for following statements through it.
//!
//! `GET /agora/v1/log/entries/{leaf}`: the index of the entry whose RFC 6962 leaf hash is `leaf`
//! (hex), if logged — how a client finds where its receipt went (`agora chat --save`).
//!
//! `GET /agora/v1/models/{digest}/provenance`: where a model's knowledge came from, as the
//! statements of the node's log say — its manifest, base model, datasets and what they were
//! derived from — with every statement's log entry, so that the client checks each one's
//! signature, links and inclusion itself instead of trusting the node. Served by nodes that
//! hold a log; at most one answer is made at a time (others get 429).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// What the provenance route serves. Blocking: called on a blocking thread.
pub trait ProvenanceSource: Send + Sync + 'static {
    /// The provenance of the model with these weights (`sha256:HEX` or `HEX`).
    fn provenance(&self, digest: &str) -> Result<Value, ApiError>;
    /// `{"index", "log"}` of the entry with this leaf hash (hex), or not found.
    fn locate(&self, leaf: &str) -> Result<Value, ApiError>;
}

#[derive(Clone)]
struct Source {
    inner: Arc<dyn ProvenanceSource>,
    busy: Arc<Semaphore>,
}

/// The provenance route over `source`.
pub fn provenance_router(source: Arc<dyn ProvenanceSource>) -> Router {
    Router::new()
        .route("/agora/v1/models/{digest}/provenance", get(provenance))
        .route("/agora/v1/log/entries/{leaf}", get(locate))
        .with_state(Source {
            inner: source,
            busy: Arc::new(Semaphore::new(1)),
        })
}

async fn provenance(State(s): State<Source>, Path(digest): Path<String>) -> Response {
    let Ok(permit) = Arc::clone(&s.busy).try_acquire_owned() else {
        return ApiError::overloaded("another provenance is being made; retry", 1).into_response();
    };
    crate::datasets::blocking(move || {
        let _permit = permit;
        s.inner.provenance(&digest)
    })
    .await
}

async fn locate(State(s): State<Source>, Path(leaf): Path<String>) -> Response {
    crate::datasets::blocking(move || s.inner.locate(&leaf)).await
}
