//! The HTTP server's limits against hostile clients, on a real `agora node` with the real model:
//! slow headers, stalled bodies, too many connections, a megabyte of special tokens; and errors
//! in OpenAI's JSON whatever the route or method.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::{Node, chat, content};
use serde_json::{Value, json};

fn node(extra: &[&str]) -> Node {
    let mut args = vec!["--slots", "2", "--ctx", "1024", "--no-mdns"];
    args.extend_from_slice(extra);
    Node::start(&args)
}

/// Times one `GET /health` on a fresh connection.
fn health_time(n: &Node) -> Duration {
    let t = Instant::now();
    let (status, v) = n.get("/health");
    assert_eq!(status, 200, "{v}");
    t.elapsed()
}

/// A response read off a raw socket: status, head, body.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one response with a content-length; `None` if the server closed first.
fn read_response(s: &mut TcpStream) -> Option<Raw> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let status = head.split_whitespace().nth(1)?.parse().ok()?;
            let raw = Raw {
                status,
                head,
                body: Vec::new(),
            };
            let len: usize = raw.header("content-length")?.parse().ok()?;
            while buf.len() < i + 4 + len {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            return Some(Raw {
                body: buf[i + 4..i + 4 + len].to_vec(),
                ..raw
            });
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn raw_request(n: &Node, method: &str, path: &str, body: &str) -> Raw {
    try_raw_request(n, method, path, body).expect("no response")
}

/// `raw_request`, `None` when the server closed the connection without an answer.
fn try_raw_request(n: &Node, method: &str, path: &str, body: &str) -> Option<Raw> {
    let mut s = TcpStream::connect(&n.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        n.addr,
        body.len()
    )
    .unwrap();
    read_response(&mut s)
}

/// Whether the server closed `s` (EOF or reset) before `within` passed.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let t0 = Instant::now();
    let mut b = [0u8; 256];
    loop {
        let left = within.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn assert_openai_error(v: &Value) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

#[test]
fn slowloris_is_cut_off_while_health_answers() {
    let n = node(&["--header-timeout-secs", "2"]);
    let mut slow = TcpStream::connect(&n.addr).unwrap();
    let mut writer = slow.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    // One header byte per second, as a slowloris client does.
    let dribbler = std::thread::spawn(move || {
        let head =
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in head {
            if stop2.load(Ordering::Relaxed) || writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let cut = closed_within(&mut slow, Duration::from_secs(15));
        let _ = tx.send((cut, t0.elapsed()));
    });
    // Meanwhile, /health answers at once.
    let (cut, after) = loop {
        let h = health_time(&n);
        assert!(h < Duration::from_secs(1), "/health took {h:?}");
        if let Ok(r) = rx.recv_timeout(Duration::from_millis(250)) {
            break r;
        }
    };
    stop.store(true, Ordering::Relaxed);
    assert!(cut, "the slow client was not cut off within 15 s");
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(6),
        "cut off after {after:?} (header timeout 2 s)"
    );
    dribbler.join().unwrap();
    assert!(health_time(&n) < Duration::from_secs(1));
}

#[test]
fn a_stalled_body_gets_408_json_and_the_connection_closes() {
    let n = node(&["--body-timeout-secs", "1"]);
    let mut s = TcpStream::connect(&n.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":",
        n.addr
    )
    .unwrap(); // 10 of the 1000 bytes declared, then nothing
    let t0 = Instant::now();
    let r = read_response(&mut s).expect("no answer to a stalled body");
    let took = t0.elapsed();
    assert_eq!(r.status, 408, "{}", r.head);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let v = r.json();
    assert_openai_error(&v);
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert!(closed_within(&mut s, Duration::from_secs(3)));
    // The node is fine.
    let mut body = chat("Say hi.");
    body["max_tokens"] = json!(4);
    let (status, v) = n.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
}

#[test]
fn connections_beyond_the_cap_are_refused_and_memory_stays_bounded() {
    let n = node(&["--max-connections", "16", "--header-timeout-secs", "60"]);
    // Fill every slot with idle connections.
    let held: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(&n.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = n.rss();
    // Newcomers one at a time: each gets 503, OpenAI JSON, Retry-After.
    for _ in 0..50 {
        let r = raw_request(&n, "GET", "/health", "");
        assert_eq!(r.status, 503, "{}", r.head);
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
        assert_eq!(r.header("connection").as_deref(), Some("close"));
        let v = r.json();
        assert_openai_error(&v);
        assert!(
            v["error"]["message"].as_str().unwrap().contains("16"),
            "{v}"
        );
    }
    // A burst of 600 at once, held open: each gets its 503 or is closed; none is served, none
    // hangs, and the node's memory does not grow with them.
    let mut burst: Vec<TcpStream> = (0..600)
        .map(|_| {
            let mut s = TcpStream::connect(&n.addr).unwrap();
            let _ = write!(s, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = n.rss();
    let (mut refused, mut closed) = (0, 0);
    for s in &mut burst {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        match read_response(s) {
            Some(r) => {
                assert_eq!(r.status, 503, "{}", r.head);
                refused += 1;
            }
            None => closed += 1,
        }
    }
    assert!(refused > 0, "no 503 at all ({closed} closed)");
    drop(burst);
    assert!(
        rss1 < rss0 + (32 << 20),
        "RSS grew from {} to {} MiB with 600 refused connections",
        rss0 >> 20,
        rss1 >> 20
    );
    // Room comes back when the idle ones go.
    drop(held);
    let t0 = Instant::now();
    loop {
        // While the burst's refusals are still draining (at most 64 at once), a newcomer
        // beyond the cap may be closed without a word, as documented: try again.
        let r = try_raw_request(&n, "GET", "/health", "");
        if r.as_ref().is_some_and(|r| r.status == 200) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still {:?}",
            r.map(|r| r.status)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut body = chat("Say hi.");
    body["max_tokens"] = json!(4);
    let (status, v) = n.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    let metrics = n.get_text("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("agora_http_connections_refused_total ")),
        "{metrics}"
    );
}

#[test]
fn a_megabyte_of_special_tokens_does_not_stall_health() {
    let n = node(&[]);
    let text = "<|im_start|>".repeat((1 << 20) / "<|im_start|>".len());
    for (path, body) in [
        (
            "/v1/completions",
            json!({"model": common::MODEL, "prompt": text, "max_tokens": 4}),
        ),
        ("/v1/chat/completions", {
            let mut b = chat(&text);
            b["max_tokens"] = json!(4);
            b
        }),
    ] {
        let url = format!("{}{path}", n.url);
        let bytes = body.to_string();
        let t0 = Instant::now();
        let worker = std::thread::spawn(move || {
            let resp = common::ureq_agent()
                .post(&url)
                .header("content-type", "application/json")
                .send(bytes.as_bytes())
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.into_body().read_to_string().unwrap();
            (status, text)
        });
        let mut checks = 0;
        while !worker.is_finished() {
            let h = health_time(&n);
            assert!(h < Duration::from_secs(1), "{path}: /health took {h:?}");
            checks += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, text) = worker.join().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        eprintln!(
            "{path}: {status} after {:?} ({checks} health checks meanwhile)",
            t0.elapsed()
        );
        match status {
            200 => assert!(v["choices"][0].is_object(), "{v}"),
            400 => {
                assert_openai_error(&v);
                assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
            }
            s => panic!("{path}: unexpected {s}: {v}"),
        }
    }
    // Still serving normally.
    let mut body = chat("What is 2 + 2?");
    body["max_tokens"] = json!(8);
    let (status, v) = n.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    assert!(!content(&v).is_empty());
}

#[test]
fn errors_are_openai_json_on_every_route_and_method() {
    let n = node(&[]);
    let r = raw_request(&n, "GET", "/v1/nothing", "");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_openai_error(&r.json());
    for (method, path) in [
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/completions"),
        ("POST", "/v1/models"),
        ("DELETE", "/health"),
    ] {
        let r = raw_request(&n, method, path, "");
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_openai_error(&r.json());
    }
    // An argument the API does not know is refused, named.
    let mut body = chat("hi");
    body["min_p"] = json!(0.05);
    let (status, v) = n.post("/v1/chat/completions", &body);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "min_p");
    assert_eq!(
        v["error"]["message"],
        "Unrecognized request argument supplied: min_p"
    );
    // So is one it knows but does not support.
    let mut body = chat("hi");
    body["response_format"] = json!({"type": "json_object"});
    let (status, v) = n.post("/v1/chat/completions", &body);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "response_format");
    // A body over the limit: 413, OpenAI JSON.
    let (status, v) = n.post_declared_length("/v1/chat/completions", 64 << 20);
    assert_eq!(status, 413);
    assert_openai_error(&v);
}

#[test]
fn logit_bias_reaches_the_sampler() {
    let n = node(&[]);
    let mut body = chat("Write a long story.");
    body["max_tokens"] = json!(3);
    body["temperature"] = json!(0);
    let (status, plain) = n.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{plain}");
    // +100 on one ordinary token makes it the greedy choice at every step.
    let forced = 28;
    body["logit_bias"] = json!({ forced.to_string(): 100 });
    let (status, v) = n.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["agora"]["tokens"], json!([forced, forced, forced]), "{v}");
    assert_ne!(plain["agora"]["tokens"], v["agora"]["tokens"]);
    // Out of the vocabulary: 400 naming logit_bias.
    body["logit_bias"] = json!({ "4000000": 1 });
    let (status, v) = n.post("/v1/chat/completions", &body);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "logit_bias", "{v}");
}
