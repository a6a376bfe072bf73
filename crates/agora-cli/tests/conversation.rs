//! A conversation over the OpenAI API, turn by turn as a chat client sends it (the whole history
//! each time): with the prefix cache (the default) its follow-up turns reuse the prompt prefix
//! their slot kept, and every answer is token for token the one a node without the cache gives.
#![allow(clippy::unwrap_used)]

mod common;

use common::{MODEL, Node, content};
use serde_json::{Value, json};

fn metric(n: &Node, name: &str) -> f64 {
    n.get_text("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn follow_up_turns_reuse_the_prefix_and_answer_the_same() {
    let cached = Node::start(&["--slots", "1", "--ctx", "4096"]);
    let plain = Node::start(&["--slots", "1", "--ctx", "4096", "--no-prefix-cache"]);
    let system = "You are a careful guide to the coast. ".repeat(60);
    let questions = [
        "What is a tide?",
        "Why are there two tides a day?",
        "What is a spring tide?",
    ];
    let mut history = vec![json!({"role": "system", "content": system})];
    for (t, q) in questions.iter().enumerate() {
        history.push(json!({"role": "user", "content": q}));
        let body = json!({"model": MODEL, "messages": history, "max_tokens": 24, "seed": 9, "temperature": 0.7});
        let (s1, a) = cached.post("/v1/chat/completions", &body);
        let (s2, b) = plain.post("/v1/chat/completions", &body);
        assert_eq!((s1, s2), (200, 200), "{a} {b}");
        assert_eq!(content(&a), content(&b), "turn {t} differs with the cache");
        assert_eq!(a["usage"], b["usage"], "turn {t}");
        history.push(json!({"role": "assistant", "content": content(&a)}));
    }
    let prompt: Value = cached
        .post(
            "/v1/chat/completions",
            &json!({"model": MODEL, "messages": history, "max_tokens": 1}),
        )
        .1;
    assert!(
        prompt["usage"]["prompt_tokens"].as_u64().unwrap() > 512,
        "{prompt}"
    );
    // Every follow-up turn (and the last request) reused a prefix; the plain node none.
    assert!(metric(&cached, "agora_prefix_cache_hits") >= 3.0);
    assert!(metric(&cached, "agora_prefix_cache_reused_tokens") >= 3.0 * 256.0);
    assert_eq!(metric(&plain, "agora_prefix_cache_hits"), 0.0);
    assert_eq!(metric(&plain, "agora_prefix_cache_tokens"), 0.0);
}
