//! The RFC 6962 conformance vectors of transparency-dev/merkle in `testdata/merkle/` (copied from transparency-dev/merkle, Apache-2.0, with its LICENSE):
//! every happy path verifies and every malformed case fails.

#![allow(clippy::unwrap_used)]

use agora_tlog::hash::Hash;
use agora_tlog::merkle;
use base64::Engine;
use serde::Deserialize;
use std::path::{Path, PathBuf};

fn vectors_dir() -> PathBuf {
    if let Ok(d) = std::env::var("AGORA_MERKLE_VECTORS") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/merkle")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "cannot read vectors at {}: {e} (set AGORA_MERKLE_VECTORS)",
            dir.display()
        )
    });
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Inclusion {
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    want_err: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Consistency {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    want_err: bool,
}

fn check_inclusion(v: &Inclusion) -> Result<(), String> {
    let h = |b: Vec<u8>, w| Hash::from_slice(&b, w).map_err(|e| e.to_string());
    let leaf = h(b64(&v.leaf_hash), "leaf")?;
    let root = h(b64(&v.root), "root")?;
    let proof = v
        .proof
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|p| h(b64(p), "proof"))
        .collect::<Result<Vec<_>, _>>()?;
    merkle::verify_inclusion(v.leaf_idx, v.tree_size, &leaf, &proof, &root)
        .map_err(|e| e.to_string())
}

fn check_consistency(v: &Consistency) -> Result<(), String> {
    let proof: Vec<Vec<u8>> = v
        .proof
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|p| b64(p))
        .collect();
    let refs: Vec<&[u8]> = proof.iter().map(|p| p.as_slice()).collect();
    merkle::verify_consistency_bytes(v.size1, v.size2, &refs, &b64(&v.root1), &b64(&v.root2))
        .map_err(|e| e.to_string())
}

#[test]
fn every_vector_agrees() {
    let dir = vectors_dir();
    let mut all = Vec::new();
    files(&dir, &mut all);
    all.sort();
    let (mut n_incl, mut n_cons, mut happy, mut failures) = (0, 0, 0, Vec::new());
    for f in &all {
        let data = std::fs::read(f).unwrap();
        let rel = f.strip_prefix(&dir).unwrap().display().to_string();
        let (got, want_err) = if rel.starts_with("inclusion") {
            n_incl += 1;
            let v: Inclusion = serde_json::from_slice(&data).unwrap();
            (check_inclusion(&v), v.want_err)
        } else {
            n_cons += 1;
            let v: Consistency = serde_json::from_slice(&data).unwrap();
            (check_consistency(&v), v.want_err)
        };
        if !want_err {
            happy += 1;
        }
        if got.is_err() != want_err {
            failures.push(format!("{rel}: wantErr={want_err}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} vectors disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Guard against silently reading a partial set.
    assert!(
        n_incl >= 90 && n_cons >= 90,
        "only {n_incl} inclusion and {n_cons} consistency vectors"
    );
    assert!(happy >= 10);
    eprintln!(
        "{} vectors ({n_incl} inclusion, {n_cons} consistency, {happy} happy paths) agree",
        all.len()
    );
}
