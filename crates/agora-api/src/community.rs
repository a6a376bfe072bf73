//! A community's proposals, live tallies and credit over HTTP (served by nodes that keep the
//! community's log): `GET /agora/v1/proposals`, `GET /agora/v1/proposals/{id}` (an index in the
//! log, or the proposal's sha256 id) and `GET /agora/v1/credit?period=FROM..TO`. What they
//! answer is what `agora tally` and `agora credit` compute, for programs and pages; a client that
//! must not trust the node recomputes it from the log itself. A tally or ledger reads the whole
//! log: one runs at a time (others get 429), and an answer is reused until the log grows.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// What the community routes serve. Blocking: called on a blocking thread.
pub trait CommunityService: Send + Sync + 'static {
    /// The proposals in the log that follow the rules.
    fn proposals(&self) -> Result<Value, ApiError>;
    /// The live (or final) tally of a proposal, by index or sha256 id.
    fn proposal(&self, id: &str) -> Result<Value, ApiError>;
    /// The credit ledger of entries `from..to` (`to` default: the latest checkpoint).
    fn credit(&self, from: u64, to: Option<u64>) -> Result<Value, ApiError>;
}

#[derive(Clone)]
struct Svc {
    inner: Arc<dyn CommunityService>,
    busy: Arc<Semaphore>,
}

/// The community routes over `service`.
pub fn community_router(service: Arc<dyn CommunityService>) -> Router {
    Router::new()
        .route("/agora/v1/proposals", get(list))
        .route("/agora/v1/proposals/{id}", get(one))
        .route("/agora/v1/credit", get(credit))
        .with_state(Svc {
            inner: service,
            busy: Arc::new(Semaphore::new(1)),
        })
}

async fn list(State(s): State<Svc>) -> Response {
    crate::datasets::blocking(move || s.inner.proposals()).await
}

async fn one(State(s): State<Svc>, Path(id): Path<String>) -> Response {
    let Ok(permit) = Arc::clone(&s.busy).try_acquire_owned() else {
        return ApiError::overloaded("another tally or ledger is being computed; retry", 1)
            .into_response();
    };
    crate::datasets::blocking(move || {
        let _permit = permit;
        s.inner.proposal(&id)
    })
    .await
}

/// `FROM..TO`, `FROM..` or `..TO`.
pub fn parse_period(p: &str) -> Result<(u64, Option<u64>), String> {
    let (a, b) = p
        .split_once("..")
        .ok_or_else(|| format!("period {p:?} is not FROM..TO (entry indices)"))?;
    let num = |s: &str| -> Result<Option<u64>, String> {
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse()
                .map(Some)
                .map_err(|_| format!("{s:?} is not an entry index"))
        }
    };
    let (from, to) = (num(a)?.unwrap_or(0), num(b)?);
    if to.is_some_and(|t| t < from) {
        return Err(format!("period {p:?} ends before it starts"));
    }
    Ok((from, to))
}

async fn credit(
    State(s): State<Svc>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let (from, to) = match q.get("period").map(|p| parse_period(p)) {
        None => (0, None),
        Some(Ok(p)) => p,
        Some(Err(e)) => return ApiError::invalid(e, Some("period")).into_response(),
    };
    let Ok(permit) = Arc::clone(&s.busy).try_acquire_owned() else {
        return ApiError::overloaded("another tally or ledger is being computed; retry", 1)
            .into_response();
    };
    crate::datasets::blocking(move || {
        let _permit = permit;
        s.inner.credit(from, to)
    })
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn periods() {
        assert_eq!(super::parse_period("3..10"), Ok((3, Some(10))));
        assert_eq!(super::parse_period("..10"), Ok((0, Some(10))));
        assert_eq!(super::parse_period("5.."), Ok((5, None)));
        assert!(super::parse_period("10..3").is_err());
        assert!(super::parse_period("x..3").is_err());
        assert!(super::parse_period("7").is_err());
    }
}
