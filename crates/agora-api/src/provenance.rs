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
//!
//! `GET /agora/v1/provenance?digest=HEX`: was a text produced on this network? The receipts
//! whose text digest (SHA-256 of the normalised text, `agora_core::text`) is `HEX`, with their
//! log entries and the verdicts logged on them. The client sends only the digest, never the
//! text, and checks every entry itself. `?fingerprint=HEX[&min=0.3]` instead finds receipts
//! that carry a fingerprint (opt-in) at least `min` similar to the given one: edited copies. At
//! most one lookup runs at a time (others get 429).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// The similarity a fingerprint lookup asks for by default (estimated Jaccard similarity of
/// the texts' word triples: an answer with about a tenth of its words changed scores about 0.5,
/// unrelated texts under 0.1).
pub const DEFAULT_MIN_SIMILARITY: f64 = 0.3;
/// The lowest similarity a lookup may ask for.
pub const MIN_SIMILARITY_FLOOR: f64 = 0.1;

/// What the provenance route serves. Blocking: called on a blocking thread.
pub trait ProvenanceSource: Send + Sync + 'static {
    /// The provenance of the model with these weights (`sha256:HEX` or `HEX`).
    fn provenance(&self, digest: &str) -> Result<Value, ApiError>;
    /// The receipts whose text digest is `digest` (64 hex digits), with their verdicts.
    fn text(&self, digest: &str) -> Result<Value, ApiError>;
    /// The fingerprinted receipts at least `min` similar to `fingerprint` (256 hex digits).
    fn similar(&self, fingerprint: &str, min: f64) -> Result<Value, ApiError>;
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
        .route("/agora/v1/provenance", get(text))
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

async fn text(
    State(s): State<Source>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    enum Lookup {
        Digest(String),
        Similar(String, f64),
    }
    let lookup = match (q.get("digest"), q.get("fingerprint")) {
        (Some(d), None) => Lookup::Digest(d.clone()),
        (None, Some(f)) => {
            let min = match q.get("min").map(|m| m.parse::<f64>()) {
                None => DEFAULT_MIN_SIMILARITY,
                Some(Ok(m)) if (MIN_SIMILARITY_FLOOR..=1.0).contains(&m) => m,
                Some(_) => {
                    return ApiError::invalid(
                        format!("min is a similarity between {MIN_SIMILARITY_FLOOR} and 1"),
                        Some("min"),
                    )
                    .into_response();
                }
            };
            Lookup::Similar(f.clone(), min)
        }
        _ => {
            return ApiError::invalid(
                "give either the text's digest (?digest=HEX, SHA-256 of the normalised text) \
                 or its fingerprint (?fingerprint=HEX)",
                Some("digest"),
            )
            .into_response();
        }
    };
    let Ok(permit) = Arc::clone(&s.busy).try_acquire_owned() else {
        return ApiError::overloaded("another lookup is being made; retry", 1).into_response();
    };
    crate::datasets::blocking(move || {
        let _permit = permit;
        match lookup {
            Lookup::Digest(d) => s.inner.text(&d),
            Lookup::Similar(f, min) => s.inner.similar(&f, min),
        }
    })
    .await
}

async fn locate(State(s): State<Source>, Path(leaf): Path<String>) -> Response {
    crate::datasets::blocking(move || s.inner.locate(&leaf)).await
}
