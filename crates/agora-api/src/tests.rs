//! The server's limits over real loopback connections, with the echo engine.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_engine::{EchoEngine, Event, Finish, FinishReason, JobSpec, Load, TokenEvent};
use axum::extract::ConnectInfo;
use axum::routing::get;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::backend::BoxFuture;

fn cfg() -> ApiConfig {
    ApiConfig {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        ..ApiConfig::default()
    }
}

/// Serves `backend` until the returned sender fires (or is dropped); the handle ends when the
/// server has finished.
async fn start(
    backend: Arc<dyn Backend>,
    cfg: &ApiConfig,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let server = bind("127.0.0.1:0".parse().unwrap(), backend, cfg)
        .await
        .unwrap();
    let addr = server.addr;
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        server
            .serve(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, tx, handle)
}

fn echo() -> Arc<dyn Backend> {
    Arc::new(LocalBackend::new(Arc::new(EchoEngine::new("echo", 4096))))
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Reads one response with a `content-length` (or up to EOF) from `s`.
async fn read_response(s: &mut TcpStream) -> Raw {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            let raw = Raw {
                status,
                head,
                body: Vec::new(),
            };
            if let Some(len) = raw.header("content-length") {
                let len: usize = len.parse().unwrap();
                while buf.len() < i + 4 + len {
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "EOF inside the body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Raw {
                    body: buf[i + 4..i + 4 + len].to_vec(),
                    ..raw
                };
            }
            // No length: to EOF (SSE with Connection: close).
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            return Raw {
                body: buf[i + 4..].to_vec(),
                ..raw
            };
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "EOF before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Raw {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s).await
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn assert_openai_error(v: &Value) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_method_not_allowed_are_openai_json() {
    let (addr, _stop, _h) = start(echo(), &cfg()).await;
    let r = request(addr, "GET", "/v2/nothing", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_openai_error(&r.json());
    for (method, path) in [
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/completions"),
        ("POST", "/health"),
        ("PUT", "/v1/models"),
    ] {
        let r = request(addr, method, path, "").await;
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        let v = r.json();
        assert_openai_error(&v);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(method),
            "{v}"
        );
    }
    // and the API still works
    let r = request(
        addr,
        "POST",
        "/v1/completions",
        r#"{"model":"echo","prompt":"hi","max_tokens":2}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["choices"][0]["text"], "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused_over_http() {
    let (addr, _stop, _h) = start(echo(), &cfg()).await;
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"echo","messages":[{"role":"user","content":"x"}],"min_p":0.1}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["param"], "min_p", "{v}");
    assert_eq!(
        v["error"]["message"],
        "Unrecognized request argument supplied: min_p"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_gets_408_json_and_the_connection_closes() {
    let (addr, _stop, _h) = start(echo(), &cfg()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"model\": ",
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
        .await
        .expect("no answer to a stalled body");
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let v = r.json();
    assert_openai_error(&v);
    assert_eq!(v["error"]["code"], "request_timeout");
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413_json() {
    let c = ApiConfig {
        body_limit: 1000,
        ..cfg()
    };
    let (addr, _stop, _h) = start(echo(), &c).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_openai_error(&r.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_while_health_answers() {
    let (addr, _stop, _h) = start(echo(), &cfg()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let t0 = Instant::now();
    let dribble = async {
        for b in b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let watch = async {
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut b)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "the slow client was not cut off: {n:?}"
        );
        t0.elapsed()
    };
    let health = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        let r = request(addr, "GET", "/health", "").await;
        assert_eq!(r.status, 200);
        t.elapsed()
    };
    let ((), cut, h) = tokio::join!(dribble, watch, health);
    assert!(
        cut >= Duration::from_millis(450) && cut < Duration::from_secs(3),
        "{cut:?}"
    );
    assert!(h < Duration::from_secs(1), "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_header_timeout() {
    let (addr, _stop, _h) = start(echo(), &cfg()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_and_room_comes_back() {
    let c = ApiConfig {
        max_connections: 3,
        header_timeout: Duration::from_secs(30),
        ..cfg()
    };
    let (addr, _stop, _h) = start(echo(), &c).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the server accept them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..20 {
        let r = request(addr, "GET", "/health", "").await;
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
        let v = r.json();
        assert_openai_error(&v);
        assert!(v["error"]["message"].as_str().unwrap().contains("3"), "{v}");
    }
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = request(addr, "GET", "/health", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    // the refusals are counted
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = request(addr, "GET", "/metrics", "").await;
    let text = String::from_utf8_lossy(&m.body).to_string();
    assert!(
        text.contains("agora_http_connections_refused_total 20"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_the_peer_address() {
    let router = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = HttpServer::from_router(listener, router, &cfg()).unwrap();
    let addr = server.addr;
    tokio::spawn(server.serve(std::future::pending()));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(String::from_utf8_lossy(&r.body), me.to_string());
}

/// A backend whose generations emit one token every 50 ms.
struct Slow;

impl Backend for Slow {
    fn models(&self) -> Vec<ModelCard> {
        vec![ModelCard {
            id: "slow".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            n_ctx: 100,
            workers: 1,
            kv_bytes: 0,
        }]
    }

    fn start(&self, model: String, _job: JobSpec) -> BoxFuture<'_, Result<Started, ApiError>> {
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                for i in 0..10u32 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let t = TokenEvent {
                        id: i,
                        index: i,
                        text: "a".into(),
                        hidden: None,
                        logits: None,
                    };
                    if tx.send(Event::Token(t)).await.is_err() {
                        return;
                    }
                }
                let _ = tx
                    .send(Event::Done(Finish {
                        reason: FinishReason::Length,
                        prompt_tokens: 1,
                        completion_tokens: 10,
                        tail: String::new(),
                        tokens: Vec::new(),
                        attestation: None,
                    }))
                    .await;
            });
            Ok(Started { model, events: rx })
        })
    }

    fn load(&self) -> Load {
        Load::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_streams_in_flight() {
    let (addr, stop, handle) = start(Arc::new(Slow), &cfg()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = r#"{"model":"slow","messages":[{"role":"user","content":"x"}],"stream":true}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // The response has begun: then shut down.
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // New connections are no longer accepted.
    assert!(TcpStream::connect(addr).await.is_err());
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("[DONE]"), "the stream was cut: {text}");
    assert_eq!(text.matches("\"content\":\"a\"").count(), 10, "{text}");
    tokio::time::timeout(Duration::from_secs(2), handle)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_limiter_refuses_beyond_its_limit() {
    let limiter = PrepareLimiter::new(1).with_wait(Duration::from_millis(200));
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let l = limiter.clone();
    let first = tokio::spawn(async move { l.run(move || go_rx.recv().is_ok()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The slot stays taken past the wait: refused.
    let e = limiter.run(|| ()).await.unwrap_err();
    assert_eq!(e.status.as_u16(), 429);
    assert_eq!(e.retry_after, Some(1));
    // A waiter is served as soon as the slot frees within its wait.
    let l = limiter.clone();
    let waiter = tokio::spawn(async move { l.run(|| 7).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    go_tx.send(()).unwrap();
    assert!(first.await.unwrap().unwrap());
    assert_eq!(waiter.await.unwrap().unwrap(), 7);
    limiter.run(|| ()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_body_deadline_is_a_408_too() {
    // The handler's own timeout is far away: the 408 comes from the connection's deadline on
    // the body, recognised through the extractor's error.
    let router = Router::new()
        .route(
            "/echo",
            axum::routing::post(
                |body: Result<openai::OpenAiJson<Value>, ApiError>| async move {
                    match body {
                        Ok(openai::OpenAiJson(v)) => Json(v).into_response(),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .layer(axum::Extension(openai::BodyTimeout(Duration::from_secs(
            60,
        ))));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = HttpServer::from_router(listener, router, &cfg()).unwrap();
    let addr = server.addr;
    tokio::spawn(server.serve(std::future::pending()));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
        .await
        .unwrap();
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "request_timeout");
}
