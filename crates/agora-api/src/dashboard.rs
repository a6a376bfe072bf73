//! The dashboard's routes: the page at `/`, its assets under `/ui/`, and `GET
//! /agora/v1/network` (which log this node's receipts go to, and the tlog-policy to check its
//! checkpoints with).
//!
//! Every response here carries a strict Content-Security-Policy (no inline script, scripts and
//! fetches only from this origin and the log's), `nosniff`, no referrer and no framing. Nothing
//! reachable from the page signs with the node's key: the routes are all reads, and chatting is
//! the OpenAI API any client already has.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use sha2::Digest as _;
use std::sync::Arc;

use crate::error::ApiError;

/// What the page is told about this node.
#[derive(Clone, Debug, Default)]
pub struct DashboardConfig {
    /// The log receipts go to: its tlog-tiles URL as the page reaches it, and the tlog-policy
    /// (the log's key, its witnesses and their quorum) its checkpoints are checked against.
    pub log: Option<(String, String)>,
}

struct Dash {
    csp: HeaderValue,
    network: serde_json::Value,
}

/// The dashboard's routes.
pub fn dashboard_router(cfg: DashboardConfig) -> Router {
    // The page may fetch the log's tiles and checkpoints where they are, if not from here.
    let connect: Vec<String> = cfg.log.iter().filter_map(|(url, _)| origin(url)).collect();
    let csp = HeaderValue::from_str(&agora_web::content_security_policy(&connect))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    let network = json!({
        "log": cfg.log.as_ref().map(|(url, policy)| json!({
            "url": url,
            "policy": policy,
            "policy_sha256": hex::encode(sha2::Sha256::digest(policy.as_bytes())),
        })),
    });
    Router::new()
        .route("/", get(index))
        .route("/ui/i18n/index.json", get(languages))
        .route("/ui/{*path}", get(asset))
        .route("/agora/v1/network", get(network_info))
        .with_state(Arc::new(Dash { csp, network }))
}

/// `scheme://host[:port]` of `url`, if it is an http(s) URL.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| format!("{scheme}://{host}"))
}

fn page(d: &Dash, status: StatusCode, ctype: &'static str, body: Vec<u8>, cache: bool) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CONTENT_SECURITY_POLICY, d.csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if cache {
            "public, max-age=300"
        } else {
            "no-cache"
        }),
    );
    r
}

async fn index(State(d): State<Arc<Dash>>) -> Response {
    page(
        &d,
        StatusCode::OK,
        "text/html; charset=utf-8",
        agora_web::index().to_vec(),
        false,
    )
}

async fn languages(State(d): State<Arc<Dash>>) -> Response {
    let body = serde_json::to_vec(&agora_web::languages()).unwrap_or_default();
    page(&d, StatusCode::OK, "application/json", body, true)
}

async fn asset(State(d): State<Arc<Dash>>, Path(path): Path<String>) -> Response {
    match agora_web::asset(&path) {
        Some((bytes, ctype)) => page(&d, StatusCode::OK, ctype, bytes.to_vec(), true),
        None => ApiError::not_found(format!("no dashboard asset {path:?}")).into_response(),
    }
}

async fn network_info(State(d): State<Arc<Dash>>) -> Response {
    let body = serde_json::to_vec(&d.network).unwrap_or_default();
    page(&d, StatusCode::OK, "application/json", body, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin("http://127.0.0.1:8080/log").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            origin("https://log.example").as_deref(),
            Some("https://log.example")
        );
        assert_eq!(origin("ftp://x/"), None);
        assert_eq!(origin("http:///x"), None);
    }
}
