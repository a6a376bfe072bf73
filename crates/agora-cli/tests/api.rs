//! The OpenAI API of a real `agora node` on loopback with the real SmolLM2 model.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{MODEL, Node, chat, content};
use serde_json::{Value, json};

/// A node for one test (nextest runs each test in its own process; the node dies with it).
fn node() -> Node {
    Node::start(&["--slots", "8", "--ctx", "1024"])
}

#[test]
fn chat_non_streaming() {
    let n = &node();
    let mut body = chat("What is the capital of France? Answer in one word.");
    body["max_tokens"] = json!(24);
    body["temperature"] = json!(0);
    let (status, v) = n.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let text = content(&v);
    assert!(!text.trim().is_empty());
    let u = &v["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 10 && (1..=24).contains(&c), "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + c);
    let reason = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(
        reason == "stop" || (reason == "length" && c == 24),
        "{reason} with {c} tokens"
    );
    assert!(v["seed"].is_u64());
}

#[test]
fn greedy_streaming_equals_non_streaming() {
    let n = &node();
    let mut body = chat("Tell me a short story about a robot.");
    body["max_tokens"] = json!(48);
    body["temperature"] = json!(0);
    let (_, v) = n.post("/v1/chat/completions", &body);
    let whole = content(&v);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (streamed, events) = n.stream("/v1/chat/completions", &body);
    assert_eq!(streamed, whole);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        events
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk")
    );
    // After the finish chunk: the usage chunk (asked for), then the receipt
    // chunk; both with no choices, which OpenAI clients skip.
    let n_ev = events.len();
    assert!(n_ev >= 3, "{events:?}");
    let (usage_chunk, receipt_chunk) = (&events[n_ev - 2], &events[n_ev - 1]);
    assert_eq!(
        usage_chunk["usage"], v["usage"],
        "usage chunk matches the non-streaming usage"
    );
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(receipt_chunk["choices"], json!([]));
    let (a, b) = (&receipt_chunk["agora"], &v["agora"]);
    assert!(
        a["receipt"].is_object(),
        "streamed answers carry a receipt: {a}"
    );
    assert!(a["proof"].as_str().is_some_and(|p| !p.is_empty()), "{a}");
    assert_eq!(a["tokens"], b["tokens"], "same greedy tokens either way");
    assert!(a["receipt"]["payload"].is_string(), "a DSSE envelope: {a}");
    assert!(a["receipt"]["signatures"][0]["sig"].is_string(), "{a}");
    let finish: Vec<&Value> = events
        .iter()
        .filter(|e| !e["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(
        finish[0]["choices"][0]["finish_reason"],
        v["choices"][0]["finish_reason"]
    );
}

#[test]
fn same_seed_same_text_and_different_seed_differs() {
    let n = &node();
    let mut body = chat("Write a sentence about the ocean.");
    body["max_tokens"] = json!(32);
    body["temperature"] = json!(0.9);
    body["seed"] = json!(1234);
    let a = content(&n.post("/v1/chat/completions", &body).1);
    let b = content(&n.post("/v1/chat/completions", &body).1);
    assert_eq!(a, b);
    let outputs: std::collections::HashSet<String> = (0..4)
        .map(|s| {
            body["seed"] = json!(s);
            content(&n.post("/v1/chat/completions", &body).1)
        })
        .collect();
    assert!(outputs.len() > 1, "four seeds all gave {outputs:?}");
}

#[test]
fn node_reports_the_seed_it_picked_and_it_reproduces() {
    let n = &node();
    let mut body = chat("Name three fruits.");
    body["max_tokens"] = json!(20);
    let (_, v) = n.post("/v1/chat/completions", &body);
    let seed = v["seed"].as_u64().unwrap();
    assert!(seed < (1 << 53));
    body["seed"] = json!(seed);
    assert_eq!(
        content(&n.post("/v1/chat/completions", &body).1),
        content(&v)
    );
}

#[test]
fn models_lists_the_model_with_its_digest() {
    let n = node();
    let (status, v) = n.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(
        v["data"][0]["agora"]["digest"],
        "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
}

#[test]
fn completions_endpoint() {
    let n = &node();
    let body = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0});
    let (status, v) = n.post("/v1/completions", &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (streamed, _) = n.stream("/v1/completions", &sbody);
    assert_eq!(streamed, text);
}

#[test]
fn stop_sequences_cut_the_output() {
    let n = &node();
    let mut body = json!({"model": MODEL, "prompt": "Count: one, two, three, four, five,", "max_tokens": 40, "temperature": 0});
    let (_, v) = n.post("/v1/completions", &body);
    let full = v["choices"][0]["text"].as_str().unwrap().to_string();
    let stop = ",";
    let Some(cut) = full.find(stop) else {
        panic!("reference output has no {stop:?}: {full:?}")
    };
    body["stop"] = json!([stop, "never-appears"]);
    let (_, v) = n.post("/v1/completions", &body);
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), &full[..cut]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // the same through the stream
    body["stream"] = json!(true);
    let (streamed, events) = n.stream("/v1/completions", &body);
    assert_eq!(streamed, &full[..cut]);
    assert!(
        events
            .iter()
            .any(|e| e["choices"][0]["finish_reason"] == "stop")
    );
    // a stop sequence spanning several tokens
    let long_stop = &full[..cut.min(full.len())];
    if long_stop.len() > 3 {
        body["stream"] = json!(false);
        body["stop"] = json!(long_stop[1..].to_string());
        let (_, v) = n.post("/v1/completions", &body);
        assert_eq!(v["choices"][0]["text"].as_str().unwrap(), &long_stop[..1]);
    }
}

fn expect_error(
    n: &Node,
    path: &str,
    body: &[u8],
    status: u16,
    param: Option<&str>,
    needle: &str,
) -> Value {
    let (s, _, v) = n.post_raw(path, body);
    assert_eq!(s, status, "{v}");
    let e = &v["error"];
    assert!(
        e["message"].as_str().unwrap().contains(needle),
        "{needle:?} not in {e}"
    );
    assert!(e["type"].is_string());
    assert!(e.get("code").is_some() && e.get("param").is_some(), "{e}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{e}");
    }
    v
}

#[test]
fn error_cases_get_openai_errors() {
    let n = &node();
    let path = "/v1/chat/completions";
    expect_error(n, path, b"{not json", 400, None, "parse the JSON");
    expect_error(n, path, b"[1,2]", 400, None, "JSON object");
    expect_error(
        n,
        path,
        json!({"model": MODEL}).to_string().as_bytes(),
        400,
        Some("messages"),
        "messages",
    );
    expect_error(
        n,
        path,
        json!({"model": MODEL, "messages": []})
            .to_string()
            .as_bytes(),
        400,
        Some("messages"),
        "at least one",
    );
    let mut b = chat("hi");
    b["temperature"] = json!("hot");
    expect_error(
        n,
        path,
        b.to_string().as_bytes(),
        400,
        Some("temperature"),
        "invalid type",
    );
    b["temperature"] = json!(3.5);
    expect_error(
        n,
        path,
        b.to_string().as_bytes(),
        400,
        Some("temperature"),
        "between 0 and 2",
    );
    let mut b = chat("hi");
    b["messages"][0]["content"] = json!(5);
    expect_error(
        n,
        path,
        b.to_string().as_bytes(),
        400,
        Some("messages[0].content"),
        "string",
    );
    let mut b = chat("hi");
    b["model"] = json!("no-such-model");
    let v = expect_error(
        n,
        path,
        b.to_string().as_bytes(),
        404,
        Some("model"),
        "no-such-model",
    );
    assert_eq!(v["error"]["code"], "model_not_found");
    let mut b = chat("hi");
    b["max_tokens"] = json!(0);
    expect_error(
        n,
        path,
        b.to_string().as_bytes(),
        400,
        Some("max_tokens"),
        "at least 1",
    );
    b["max_tokens"] = json!(-3);
    expect_error(
        n,
        path,
        b.to_string().as_bytes(),
        400,
        Some("max_tokens"),
        "at least 1",
    );
    b["max_tokens"] = json!(100_000);
    let v = expect_error(
        n,
        path,
        b.to_string().as_bytes(),
        400,
        Some("max_tokens"),
        "1024",
    );
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    // a prompt longer than the context: the message names both lengths
    let long = chat(&"hello ".repeat(2000));
    let v = expect_error(
        n,
        path,
        long.to_string().as_bytes(),
        400,
        Some("messages"),
        "maximum context length is 1024 tokens",
    );
    let msg = v["error"]["message"].as_str().unwrap();
    let prompt_len: u64 = msg
        .split("prompt is ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(prompt_len > 1024, "{msg}");
    // body over the limit: refused from its declared length, before it is read
    let (s, v) = n.post_declared_length(path, 5 << 20);
    assert_eq!(s, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than the limit"),
        "{v}"
    );
    let mut b = chat("hi");
    b["stop"] = json!(3);
    expect_error(n, path, b.to_string().as_bytes(), 400, Some("stop"), "stop");
    let b = json!({"model": MODEL, "prompt": 7});
    expect_error(
        n,
        "/v1/completions",
        b.to_string().as_bytes(),
        400,
        Some("prompt"),
        "string",
    );
    let (s, v) = n.get("/v1/nothing-here");
    assert_eq!(s, 404, "{v}");
    // the node is still healthy after all that
    let (s, h) = n.get("/health");
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));
}

#[test]
fn eight_concurrent_streams_finish_with_sensible_text() {
    let n = &node();
    let prompts = [
        "Describe a cat.",
        "What is rain?",
        "Name a famous scientist.",
        "Why is the sky blue?",
        "Give me a recipe idea.",
        "What is a computer?",
        "Describe the moon.",
        "What do bees make?",
    ];
    let handles: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let url = n.url.clone();
            let p = p.to_string();
            std::thread::spawn(move || {
                let client = agora_api::client::Client::new(&url);
                let mut body = chat(&p);
                body["stream"] = json!(true);
                body["max_tokens"] = json!(40);
                body["seed"] = json!(i);
                let mut text = String::new();
                let end = client
                    .stream("/v1/chat/completions", &body, |t| text.push_str(t))
                    .unwrap();
                (text, end.finish_reason)
            })
        })
        .collect();
    for h in handles {
        let (text, reason) = h.join().unwrap();
        assert!(
            reason.as_deref() == Some("stop") || reason.as_deref() == Some("length"),
            "{reason:?}"
        );
        let words = text.split_whitespace().count();
        assert!(words >= 3, "too little text: {text:?}");
        let letters = text.chars().filter(|c| c.is_alphabetic()).count();
        assert!(
            letters * 2 > text.chars().filter(|c| !c.is_whitespace()).count(),
            "not text: {text:?}"
        );
    }
}

#[test]
fn client_hanging_up_mid_stream_frees_its_slot() {
    let n = &node();
    let mut body = chat("Write a very long essay about the history of the world.");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(900);
    body["ignore_eos"] = json!(true);
    let sock = n.open_stream(&body, 3);
    n.wait_health(Duration::from_secs(5), |h| {
        h["slots_in_use"].as_u64() == Some(1)
    });
    drop(sock);
    // The slot is free long before 900 tokens could have been generated (~10 s here).
    n.wait_health(Duration::from_secs(2), |h| {
        h["slots_in_use"].as_u64() == Some(0)
    });
    let metrics = n.get_text("/metrics");
    let cancelled: f64 = metrics
        .lines()
        .find(|l| l.starts_with("agora_generations_cancelled_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(cancelled >= 1.0, "{metrics}");
}

#[test]
fn metrics_are_prometheus_text() {
    let n = &node();
    let mut body = chat("Hi");
    body["max_tokens"] = json!(4);
    n.post("/v1/chat/completions", &body);
    let m = n.get_text("/metrics");
    for name in [
        "agora_http_requests_total{",
        "agora_completion_tokens_total",
        "agora_prompt_tokens_total",
        "agora_queue_depth",
        "agora_slots_in_use",
        "agora_request_duration_seconds_bucket",
        "agora_time_to_first_token_seconds_bucket",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
}

#[test]
fn full_queue_gets_429_with_retry_after() {
    let n = Node::start(&["--slots", "1", "--queue", "1", "--ctx", "1024"]);
    let mut long = chat("Write a long story.");
    long["stream"] = json!(true);
    long["max_tokens"] = json!(600);
    long["ignore_eos"] = json!(true);
    let _busy = n.open_stream(&long, 2);
    // the second waits in the queue
    let url = n.url.clone();
    let queued = std::thread::spawn(move || {
        let mut b = chat("Hi");
        b["max_tokens"] = json!(2);
        let resp = common::ureq_agent()
            .post(&format!("{url}/v1/chat/completions"))
            .header("content-type", "application/json")
            .send(b.to_string())
            .unwrap();
        resp.status().as_u16()
    });
    n.wait_health(Duration::from_secs(5), |h| {
        h["queue_depth"].as_u64() == Some(1)
    });
    let mut b = chat("Hi");
    b["max_tokens"] = json!(2);
    let (s, retry, v) = n.post_raw("/v1/chat/completions", b.to_string().as_bytes());
    assert_eq!(s, 429, "{v}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    drop(_busy);
    assert_eq!(queued.join().unwrap(), 200);
}
