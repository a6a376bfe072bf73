//! The dataset routes: `GET /agora/v1/datasets`, `/agora/v1/datasets/{name}` (`name` or
//! `name@version`) and `/agora/v1/datasets/{name}/proof?id=…[&absent]` (a proof file, the same
//! as `agora dataset prove` writes). Read-only; what they serve comes from a
//! [`DatasetCatalog`] (the node's dataset store). Proofs read the dataset's leaf files, so at
//! most [`PROOFS_AT_ONCE`] are made at once and a request beyond is refused (429).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Proofs made at once.
pub const PROOFS_AT_ONCE: usize = 2;

/// What the dataset routes serve. Blocking: called on a blocking thread.
pub trait DatasetCatalog: Send + Sync + 'static {
    /// Every dataset with its latest version's manifest.
    fn list(&self) -> Result<Value, ApiError>;
    /// A version's manifest and signed statement (`name` or `name@version`).
    fn show(&self, dataset: &str) -> Result<Value, ApiError>;
    /// A proof file for the record with id `id` (or, `absent`, that no record has it).
    fn proof(&self, dataset: &str, id: &str, absent: bool) -> Result<Value, ApiError>;
}

#[derive(Clone)]
struct Catalog {
    inner: Arc<dyn DatasetCatalog>,
    proofs: Arc<Semaphore>,
}

/// The dataset routes over `catalog`.
pub fn datasets_router(catalog: Arc<dyn DatasetCatalog>) -> Router {
    let state = Catalog {
        inner: catalog,
        proofs: Arc::new(Semaphore::new(PROOFS_AT_ONCE)),
    };
    Router::new()
        .route("/agora/v1/datasets", get(list))
        .route("/agora/v1/datasets/{name}", get(show))
        .route("/agora/v1/datasets/{name}/proof", get(proof))
        .with_state(state)
}

pub(crate) async fn blocking(
    f: impl FnOnce() -> Result<Value, ApiError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::internal("the dataset store failed").into_response(),
    }
}

async fn list(State(c): State<Catalog>) -> Response {
    blocking(move || c.inner.list()).await
}

async fn show(State(c): State<Catalog>, Path(name): Path<String>) -> Response {
    blocking(move || c.inner.show(&name)).await
}

async fn proof(
    State(c): State<Catalog>,
    Path(name): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(id) = q.get("id").cloned() else {
        return ApiError::invalid("`id` is required: ?id=RECORD_ID[&absent]", Some("id"))
            .into_response();
    };
    let absent = q.contains_key("absent");
    let Ok(permit) = Arc::clone(&c.proofs).try_acquire_owned() else {
        return ApiError::overloaded("proofs are being made for other requests; retry", 1)
            .into_response();
    };
    blocking(move || {
        let _permit = permit;
        c.inner.proof(&name, &id, absent)
    })
    .await
}
