//! The dashboard's routes: the page at `/`, its assets under `/ui/`, and `GET
//! /agora/v1/network` (which log this node's receipts go to, and the tlog-policy to check its
//! checkpoints with).
//!
//! Every response here carries a strict Content-Security-Policy (no inline script, scripts and
//! fetches only from this origin and the log's), `nosniff`, no referrer and no framing. The
//! routes are all reads: nothing the page can reach signs with the node's key on the page's
//! behalf (chatting is the OpenAI API any client already has; a worker signs its receipts as it
//! does for every client).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

/// The log the page checks receipts against.
#[derive(Clone, Debug)]
pub struct DashboardLog {
    /// Its tlog-tiles URL as the page reaches it (`/log` for the node's own).
    pub url: String,
    /// The tlog-policy its checkpoints are checked against: the log's key, its witnesses and
    /// their quorum.
    pub policy: String,
}

/// What the page is told about this node.
#[derive(Clone, Debug, Default)]
pub struct DashboardConfig {
    /// Where receipts are logged, when they are.
    pub log: Option<DashboardLog>,
}

struct Dash {
    csp: HeaderValue,
    network: Vec<u8>,
}

/// The dashboard's routes.
pub fn dashboard_router(cfg: DashboardConfig) -> Router {
    // The page may fetch the log's tiles and checkpoints where they are, if not from here.
    let connect: Vec<String> = cfg.log.iter().filter_map(|l| origin(&l.url)).collect();
    let csp = HeaderValue::from_str(&agora_web::content_security_policy(&connect))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    // The page computes the policy's fingerprint itself (it pins that, not the node's word).
    let network = serde_json::to_vec(&json!({
        "log": cfg.log.as_ref().map(|l| json!({"url": l.url, "policy": l.policy})),
    }))
    .unwrap_or_default();
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

/// A response with the dashboard's headers.
fn page(d: &Dash, status: StatusCode, ctype: &'static str, body: Body, cache: bool) -> Response {
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

/// An embedded asset, gzip-compressed when the browser accepts it (every browser does).
fn serve(d: &Dash, a: &'static agora_web::Asset, headers: &HeaderMap, cache: bool) -> Response {
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let ctype = agora_web::content_type(a.path);
    let body = Body::from(if gzip { a.gzip } else { a.bytes });
    let mut r = page(d, StatusCode::OK, ctype, body, cache);
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

fn missing(d: &Dash, what: &str) -> Response {
    let body = serde_json::to_vec(&json!({"error": {
        "message": format!("no dashboard asset {what:?}"), "type": "not_found_error"}}))
    .unwrap_or_default();
    page(
        d,
        StatusCode::NOT_FOUND,
        "application/json",
        Body::from(body),
        false,
    )
}

async fn index(State(d): State<Arc<Dash>>, headers: HeaderMap) -> Response {
    match agora_web::index() {
        Some(a) => serve(&d, a, &headers, false),
        None => missing(&d, "index.html"),
    }
}

async fn languages(State(d): State<Arc<Dash>>) -> Response {
    let body = serde_json::to_vec(&agora_web::languages()).unwrap_or_default();
    page(
        &d,
        StatusCode::OK,
        "application/json",
        Body::from(body),
        true,
    )
}

async fn asset(
    State(d): State<Arc<Dash>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    match agora_web::asset(&path) {
        Some(a) => serve(&d, a, &headers, true),
        None => missing(&d, &path),
    }
}

async fn network_info(State(d): State<Arc<Dash>>) -> Response {
    page(
        &d,
        StatusCode::OK,
        "application/json",
        Body::from(d.network.clone()),
        false,
    )
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
