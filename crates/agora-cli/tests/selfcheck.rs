//! A model whose numbers depend on the batch is served, but unverifiable, and says so
//! everywhere: Gemma 3 270M loaded with llama.cpp's repacked Q4_K layout (`--repack`) computes
//! a token alone and in a batch with other roundings, so the node's start-up self-check fails;
//! its status, its receipts, its responses, `agora nodes` and `agora verify` then say
//! "unverifiable", and a gateway sends requests to a verifiable worker of the same model first.
//! The same model without `--repack` passes its self-check and serves with proofs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agora_core::{Envelope, Statement};
use common::{Node, agora, args, temp_home};
use serde_json::{Value, json};

const GEMMA: &str = "gemma3-270m";
const FLAGS: &[&str] = &[
    "--threads",
    "1",
    "--slots",
    "4",
    "--no-mdns",
    "--p2p-listen",
    "/ip4/127.0.0.1/tcp/0",
];

/// Whether llama.cpp has a repacked Q4_K layout on this CPU (its 8x8 kernels need AVX2 on
/// x86-64); without one `--repack` changes nothing and the self-check passes.
fn repacks_q4_k() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn complete(node: &Node, i: u64) -> Value {
    let (status, v) = node.post(
        "/v1/completions",
        &json!({
            "model": GEMMA,
            "prompt": format!("Fact number {i} about the sea:"),
            "max_tokens": 12,
            "seed": i,
        }),
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["agora"]["receipt"].is_object(), "{v}");
    v
}

fn receipt(v: &Value) -> agora_core::statement::Receipt {
    let env = Envelope::from_json(&serde_json::to_vec(&v["agora"]["receipt"]).unwrap()).unwrap();
    match Statement::open(&env).unwrap().1 {
        Statement::Receipt(r) => r,
        other => panic!("not a receipt: {other:?}"),
    }
}

fn wait_gemma_workers(gw: &Node, n: u64) {
    let t0 = Instant::now();
    loop {
        let (_, v) = gw.get("/v1/models");
        let workers = v["data"]
            .as_array()
            .and_then(|d| d.iter().find(|m| m["id"] == GEMMA))
            .and_then(|m| m["agora"]["workers"].as_u64());
        if workers == Some(n) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the gateway never saw {n} workers of {GEMMA}: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_model_that_fails_its_self_check_is_served_unverifiable_and_routed_around() {
    let repacked = Node::start_model(temp_home(), GEMMA, &args(&[FLAGS, &["--repack"]]));
    let (_, nodes) = repacked.get("/agora/v1/nodes");
    let why = nodes["self"]["worker"]["unverifiable"].clone();
    if !repacks_q4_k() {
        // No repacked layout on this CPU: the flag changes nothing, and the check says so.
        assert!(why.is_null(), "{nodes}");
        return;
    }
    let why = why
        .as_str()
        .unwrap_or_else(|| panic!("{nodes}"))
        .to_string();
    assert!(
        why.contains("when the same prompt was decoded among")
            || why.contains("when recomputed by one prefill"),
        "{why}"
    );

    // Its answers: the receipt and the response say unverifiable.
    let v = complete(&repacked, 1);
    assert_eq!(v["agora"]["unverifiable"], json!(true), "{v}");
    assert!(receipt(&v).unverifiable);

    // `agora verify` on the saved answer: it cannot judge it, and says why.
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("answer.json");
    let a = &v["agora"];
    let transcript = json!({
        "version": 1, "model": GEMMA, "request": a["request"], "salt": a["salt"],
        "output": {"tokens": a["tokens"], "text": v["choices"][0]["text"], "finish_reason": v["choices"][0]["finish_reason"]},
        "receipt": a["receipt"], "proof": a["proof"],
    });
    std::fs::write(&saved, serde_json::to_vec(&transcript).unwrap()).unwrap();
    let out = agora()
        .env("AGORA_HOME", repacked.home.path())
        .args(["verify", "--threads", "1", "--offline"])
        .arg(&saved)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}{out:?}");
    assert!(text.contains("UNVERIFIABLE: the worker marked"), "{text}");

    // The same model without --repack passes and serves with proofs.
    let boot = repacked.p2p[0].clone();
    let honest = Node::start_model(
        temp_home(),
        GEMMA,
        &args(&[FLAGS, &["--no-gateway", "--bootstrap", &boot]]),
    );
    let gw = Node::start(&args(&[FLAGS, &["--no-worker", "--bootstrap", &boot]]));
    wait_gemma_workers(&gw, 2);

    // `agora nodes` marks the unverifiable worker's model, and only it.
    let out = agora().args(["nodes", "--url", &gw.url]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{listing}");
    let line_of = |peer: &str| {
        listing
            .lines()
            .find(|l| l.contains(peer))
            .unwrap_or_else(|| panic!("{peer} not listed: {listing}"))
            .to_string()
    };
    assert!(
        line_of(&repacked.peer_id).contains("gemma3-270m (unverifiable)"),
        "{listing}"
    );
    let honest_line = line_of(&honest.peer_id);
    assert!(
        honest_line.contains(GEMMA) && !honest_line.contains("unverifiable"),
        "{listing}"
    );

    // Both workers are free: the gateway sends every request to the verifiable one.
    for i in 0..4 {
        let v = complete(&gw, 10 + i);
        assert_eq!(
            v["agora"]["workers"][0].as_str(),
            Some(honest.peer_id.as_str()),
            "{v}"
        );
        assert!(v["agora"].get("unverifiable").is_none(), "{v}");
        assert!(!receipt(&v).unverifiable);
    }
}
