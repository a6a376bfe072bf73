//! `agora chat --save` then `agora verify`: an honest answer is accepted on the real model, and
//! every kind of bad input (forged or re-signed receipts, proofs of the wrong length or
//! version, transcripts that do not match their receipt, altered tokens re-signed by the
//! worker itself) is rejected with a precise reason and the documented exit status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use agora_core::statement::Receipt;
use agora_core::{Envelope, Identity, Sha256, Statement};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Node, agora};
use serde_json::Value;

/// Runs `agora verify FILE`: (exit status, stdout + stderr).
fn verify(home: &Path, file: &Path) -> (i32, String) {
    let out = agora()
        .env("AGORA_HOME", home)
        .args(["verify", "--threads", "2"])
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn receipt_of(t: &Value) -> (Envelope, Receipt) {
    let env = Envelope::from_json(&serde_json::to_vec(&t["receipt"]).unwrap()).unwrap();
    let Statement::Receipt(r) = Statement::from_payload(&env.payload_type, &env.payload).unwrap()
    else {
        panic!("not a receipt")
    };
    (env, r)
}

fn with_receipt(t: &Value, r: Receipt, signer: &Identity) -> Value {
    let mut t = t.clone();
    t["receipt"] = serde_json::from_str(&Statement::Receipt(r).sign(signer).to_json()).unwrap();
    t
}

/// The transcript with `proof` as its proof, the receipt's digest updated and re-signed by
/// `signer` (the worker's own key: only the proof itself is wrong).
fn with_proof(t: &Value, proof: &[u8], signer: &Identity) -> Value {
    let (_, mut r) = receipt_of(t);
    r.proof = Sha256::of(proof);
    let mut t = with_receipt(t, r, signer);
    t["proof"] = Value::String(STANDARD.encode(proof));
    t
}

#[test]
fn saved_answers_verify_and_every_forgery_has_its_reason() {
    let node = Node::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("answer.json");
    let out = agora()
        .env("AGORA_HOME", node.home.path())
        .args([
            "chat",
            "--url",
            &node.url,
            "--seed",
            "7",
            "--max-tokens",
            "40",
        ])
        .arg("--save")
        .arg(&saved)
        .arg("Write two sentences about the sea.")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let home = node.home.path();
    let worker_key = Identity::from_key_file(
        &std::fs::read_to_string(home.join("key")).expect("the node's key"),
    )
    .unwrap();

    // The honest answer passes, with its statistics.
    let (code, text) = verify(home, &saved);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ACCEPTED") && text.contains("mismatched tokens"),
        "{text}"
    );

    let t: Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    let n = t["output"]["tokens"].as_array().unwrap().len();
    assert!(n >= 2, "{t}");
    let proof = STANDARD.decode(t["proof"].as_str().unwrap()).unwrap();
    let mut cases: Vec<(&str, Value, i32, String)> = Vec::new();

    // A token changed after signing: the output digest no longer matches.
    let mut bad = t.clone();
    let tok = bad["output"]["tokens"][1].as_u64().unwrap();
    bad["output"]["tokens"][1] = (tok + 1).into();
    cases.push((
        "altered token",
        bad,
        1,
        "output digest does not match".into(),
    ));

    // The request changed after signing.
    let mut bad = t.clone();
    bad["request"]["max_tokens"] = 41.into();
    cases.push((
        "altered request",
        bad,
        1,
        "request digest does not match".into(),
    ));

    // The seed in the transcript is not the one the receipt signed.
    let mut bad = t.clone();
    bad["request"]["params"]["seed"] = 8.into();
    cases.push(("other seed", bad, 1, "digest does not match".into()));

    // A forged receipt: payload edited, signature kept.
    let (env, mut r) = receipt_of(&t);
    r.completion_tokens += 1;
    let forged = Envelope {
        payload: Statement::Receipt(r).to_payload(),
        ..env
    };
    let mut bad = t.clone();
    bad["receipt"] = serde_json::from_str(&forged.to_json()).unwrap();
    cases.push((
        "forged receipt",
        bad,
        1,
        "not a valid signed statement".into(),
    ));

    // A receipt re-signed by someone else, still naming the worker.
    let other = Identity::generate(&mut rand::rngs::OsRng);
    let bad = with_receipt(&t, receipt_of(&t).1, &other);
    cases.push(("other key", bad, 1, "not by the worker it names".into()));

    // Proofs the worker itself signed, but malformed.
    let mut p = proof.clone();
    p.truncate(p.len() - 3);
    cases.push((
        "short proof",
        with_proof(&t, &p, &worker_key),
        1,
        "the proof should be".into(),
    ));
    let mut p = proof.clone();
    p[4] = 9;
    cases.push((
        "proof version",
        with_proof(&t, &p, &worker_key),
        1,
        "unknown proof version 9".into(),
    ));
    cases.push((
        "empty proof",
        with_proof(&t, &[], &worker_key),
        1,
        "shorter than its".into(),
    ));

    // The worker signs a token it did not sample: only the model can tell.
    let mut bad = t.clone();
    let last = n - 1;
    let tok = bad["output"]["tokens"][last].as_u64().unwrap();
    let swapped = if tok == 13 { 14 } else { 13 };
    bad["output"]["tokens"][last] = swapped.into();
    let (_, mut r) = receipt_of(&bad);
    let tokens: Vec<u32> = bad["output"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    r.output = Sha256(agora_verify::output_digest(&tokens));
    let bad = with_receipt(&bad, r, &worker_key);
    cases.push((
        "re-signed altered token",
        bad,
        1,
        format!("token {last} is {swapped}, but the seed chooses"),
    ));

    // Not a transcript at all.
    cases.push((
        "not JSON",
        Value::String("{".into()),
        2,
        "not a transcript".into(),
    ));

    for (name, bad, want_code, want) in cases {
        let file = dir.path().join(format!("{}.json", name.replace(' ', "-")));
        let bytes = match &bad {
            Value::String(s) => s.clone().into_bytes(),
            v => serde_json::to_vec(v).unwrap(),
        };
        std::fs::write(&file, bytes).unwrap();
        let (code, text) = verify(home, &file);
        assert_eq!(code, want_code, "{name}: {text}");
        assert!(
            text.contains(&want),
            "{name}: wanted {want:?} in the output, got: {text}"
        );
        assert!(!text.contains("panicked"), "{name}: {text}");
    }
}
