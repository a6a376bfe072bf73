//! Seeded sampling is reproducible: across runs, and across `--slots 1` and `--slots 8` under
//! concurrent load.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Node, chat};
use serde_json::json;

const PROMPTS: [&str; 8] = [
    "Write a short poem about autumn.",
    "Explain what a volcano is.",
    "List some colors.",
    "Tell me about dogs.",
    "What is music?",
    "Describe a sunny day.",
    "Invent a name for a spaceship.",
    "Why do we sleep?",
];

fn body(i: usize, temperature: f64) -> serde_json::Value {
    let mut b = chat(PROMPTS[i]);
    b["max_tokens"] = json!(48);
    b["temperature"] = json!(temperature);
    b["top_p"] = json!(0.95);
    b["seed"] = json!(1000 + i);
    b["stream"] = json!(true);
    b
}

/// Runs all prompts at once against `node`; returns the texts in prompt order.
fn concurrent(node: &Node, temperature: f64) -> Vec<String> {
    let handles: Vec<_> = (0..PROMPTS.len())
        .map(|i| {
            let url = node.url.clone();
            std::thread::spawn(move || {
                let client = agora_api::client::Client::new(&url);
                let mut text = String::new();
                client
                    .stream("/v1/chat/completions", &body(i, temperature), |t| {
                        text.push_str(t)
                    })
                    .unwrap();
                text
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn same_seed_same_text_across_slot_counts_under_load() {
    let one = Node::start(&["--slots", "1", "--ctx", "512"]);
    let eight = Node::start(&["--slots", "8", "--ctx", "512"]);
    for temperature in [0.8, 0.0] {
        // one slot: the requests queue and run one by one
        let a = concurrent(&one, temperature);
        // eight slots: they are decoded together in shared batches
        let b = concurrent(&eight, temperature);
        // and again, to compare runs on the same node
        let c = concurrent(&eight, temperature);
        for i in 0..PROMPTS.len() {
            assert!(!a[i].is_empty());
            assert_eq!(
                a[i], b[i],
                "prompt {i} at T={temperature}: slots 1 vs 8 differ"
            );
            assert_eq!(b[i], c[i], "prompt {i} at T={temperature}: two runs differ");
        }
    }
}
