//! The architecture invariants of ARCHITECTURE.md, enforced: reads `cargo metadata` and fails
//! when a crate depends on what it must not.
//!
//! - The pure crates (`agora-core`, `agora-tlog`, `agora-sampling`, `agora-verify`, `agora-data`,
//!   `agora-community`, and the dashboard's `agora-wasm` and `agora-web`) do no I/O:
//!   none of them, nor any workspace crate they depend on, depends on an async runtime, a
//!   network, HTTP or storage library, or llama.cpp.
//! - Only `agora-net` knows libp2p; only `agora-api` knows axum and hyper; only `agora-llama`
//!   knows llama.cpp; only `agora-log` knows redb.
//! - No library but `agora-llama` reaches llama.cpp, even through another crate: the engine
//!   trait, the API, the node, the model store and the verifier build without compiling C++.
//!
//! The checker is a pure function over the metadata; the tests at the end show that it catches
//! a forbidden dependency added to a copy of the real metadata.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

const PURE: &[&str] = &[
    "agora-core",
    "agora-tlog",
    "agora-sampling",
    "agora-verify",
    "agora-data",
    "agora-community",
    "agora-wasm",
    "agora-web",
];

/// Libraries that do I/O (runtimes, networks, HTTP, storage, llama.cpp): never in a pure crate.
const IO: &[&str] = &[
    "tokio",
    "libp2p",
    "libp2p-stream",
    "axum",
    "hyper",
    "hyper-util",
    "ureq",
    "redb",
    "llama-cpp-2",
    "llama-cpp-sys-2",
    "tempfile",
    "indicatif",
    "zip",
];

/// The crates that may reach llama.cpp: its backend, the benchmarks (which load engines
/// themselves) and the binary that links everything.
const BUILDS_LLAMA: &[&str] = &["agora-llama", "agora-bench", "agora-cli"];

/// Libraries only one crate may depend on.
const OWNED: &[(&str, &str)] = &[
    ("libp2p", "agora-net"),
    ("libp2p-stream", "agora-net"),
    ("axum", "agora-api"),
    ("hyper", "agora-api"),
    ("hyper-util", "agora-api"),
    ("llama-cpp-2", "agora-llama"),
    ("llama-cpp-sys-2", "agora-llama"),
    ("redb", "agora-log"),
];

/// Each workspace crate's normal (not dev, not build) dependencies, by name.
fn dependencies(meta: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| members.contains(p["id"].as_str().unwrap_or("")))
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str().map(str::to_string))
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

/// Every library `krate` reaches, with the workspace crate that depends on it directly.
fn reach(deps: &BTreeMap<String, BTreeSet<String>>, krate: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo = vec![krate.to_string()];
    while let Some(c) = todo.pop() {
        if !seen.insert(c.clone()) {
            continue;
        }
        for d in deps.get(&c).into_iter().flatten() {
            out.push((d.clone(), c.clone()));
            if deps.contains_key(d) {
                todo.push(d.clone());
            }
        }
    }
    out
}

/// Every broken rule, as a sentence.
fn violations(meta: &Value) -> Vec<String> {
    let deps = dependencies(meta);
    let mut out = Vec::new();
    for &pure in PURE {
        for (d, c) in reach(&deps, pure) {
            if IO.contains(&d.as_str()) {
                out.push(format!(
                    "pure crate {pure} reaches {d} (through {c}): pure crates do no I/O"
                ));
            }
        }
    }
    for krate in deps.keys().filter(|k| !BUILDS_LLAMA.contains(&k.as_str())) {
        for (d, c) in reach(&deps, krate) {
            if d == "agora-llama" || d.starts_with("llama-cpp") {
                out.push(format!(
                    "{krate} reaches {d} (through {c}): only agora-llama and the binary build llama.cpp"
                ));
            }
        }
    }
    for (krate, ds) in &deps {
        for &(lib, owner) in OWNED {
            if ds.contains(lib) && krate != owner {
                out.push(format!("{krate} depends on {lib}: only {owner} may"));
            }
        }
    }
    out
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .args(["--manifest-path", manifest])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_workspace_keeps_its_architecture_invariants() {
    let meta = metadata();
    let deps = dependencies(&meta);
    for krate in PURE.iter().chain(
        [
            "agora-net",
            "agora-api",
            "agora-engine",
            "agora-llama",
            "agora-models",
        ]
        .iter(),
    ) {
        assert!(
            deps.contains_key(*krate),
            "no crate {krate} in the workspace"
        );
    }
    let v = violations(&meta);
    assert!(v.is_empty(), "{}", v.join("\n"));
}

/// Adds `dep` to `krate`'s normal dependencies in a copy of the metadata.
fn with_dependency(meta: &Value, krate: &str, dep: &str) -> Value {
    let mut m = meta.clone();
    for p in m["packages"].as_array_mut().unwrap() {
        if p["name"] == krate {
            p["dependencies"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"name": dep, "kind": null}));
        }
    }
    m
}

#[test]
fn the_checker_catches_forbidden_dependencies() {
    let meta = metadata();
    let cases = [
        ("agora-tlog", "tokio", "pure crate agora-tlog reaches tokio"),
        // Through another workspace crate: agora-verify depends on agora-sampling.
        (
            "agora-sampling",
            "redb",
            "pure crate agora-verify reaches redb (through agora-sampling)",
        ),
        (
            "agora-node",
            "libp2p",
            "agora-node depends on libp2p: only agora-net may",
        ),
        (
            "agora-cli",
            "axum",
            "agora-cli depends on axum: only agora-api may",
        ),
        (
            "agora-api",
            "llama-cpp-2",
            "agora-api depends on llama-cpp-2: only agora-llama may",
        ),
        // Through another workspace crate: agora-node depends on agora-api.
        (
            "agora-api",
            "agora-llama",
            "agora-node reaches agora-llama (through agora-api)",
        ),
    ];
    for (krate, dep, expected) in cases {
        let v = violations(&with_dependency(&meta, krate, dep));
        assert!(
            v.iter().any(|s| s.starts_with(expected)),
            "adding {dep} to {krate} was not caught: {v:?}"
        );
    }
    // A dev-dependency is not the crate's: allowed.
    let mut m = meta.clone();
    for p in m["packages"].as_array_mut().unwrap() {
        if p["name"] == "agora-core" {
            p["dependencies"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"name": "tokio", "kind": "dev"}));
        }
    }
    assert!(violations(&m).is_empty());
}
