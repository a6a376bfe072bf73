//! Datasets end to end with real processes and a real corpus (Debian's `fortunes`, BSD-3-Clause,
//! converted to Dolma JSON Lines by scripts/corpus-fortunes.sh): ingest, sign, log, prove a
//! record present and an id absent, verify offline against a log policy, and refuse tampering.

#![allow(clippy::unwrap_used)]

mod tlog_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tlog_common::*;

/// The fortunes corpus, made (once, cached under /var/tmp) by the repository's script.
fn corpus() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/corpus-fortunes.sh");
    let out = std::process::Command::new(script).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/corpus-fortunes.sh failed (it needs Debian's archive): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `agora dataset add CORPUS --name fortunes` into `home`, with `extra` flags.
fn add_fortunes(corpus: &str, home: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "dataset",
        "add",
        corpus,
        "--home",
        home,
        "--name",
        "fortunes",
        "--license",
        "BSD-3-Clause",
        "--source",
        "debian:fortunes",
    ];
    args.extend_from_slice(extra);
    ok(&args)
}

fn manifest(h: &str, name: &str) -> Value {
    serde_json::from_str(&ok(&["dataset", "show", name, "--home", h])).unwrap()
}

/// `agora node` as a gateway with no model and no peers, serving `home`'s datasets.
struct NodeProcess {
    child: std::process::Child,
    url: String,
}

impl NodeProcess {
    fn start(home: &str) -> NodeProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(agora())
            .args([
                "node",
                "--no-worker",
                "--no-mdns",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--home", home])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the node's stdout to its end, so that it never writes to a closed pipe.
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if let Some(u) = l.strip_prefix("listening on ") {
                    let _ = tx.send(u.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the node printed its URL");
        NodeProcess { child, url }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `agora dataset prove DATASET --id ID [--absent] -o OUT`, then `agora dataset verify OUT
/// --policy POLICY`: the verifier's line.
fn prove_and_verify(
    h: &str,
    dataset: &str,
    id: &str,
    absent: bool,
    out: &Path,
    pol: &str,
) -> String {
    let o = out.to_str().unwrap();
    let mut args = vec![
        "dataset", "prove", dataset, "--id", id, "--home", h, "-o", o,
    ];
    if absent {
        args.push("--absent");
    }
    ok(&args);
    ok(&["dataset", "verify", o, "--policy", pol])
}

#[test]
fn a_real_corpus_is_ingested_signed_logged_and_proven() {
    let corpus = corpus();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    init_home(&home);
    let h = home.to_str().unwrap();
    let log = Server::start(
        &[
            "log",
            "serve",
            "--home",
            h,
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "200ms",
            "--accept",
            "any",
            "--no-quotas",
        ],
        &dir.path().join("log.err"),
    );
    let c = corpus.to_str().unwrap();
    let added = add_fortunes(c, h, &["--contributor", "debian=Debian", "--log", &log.url]);
    assert!(added.contains("fortunes@1: "), "{added}");
    assert!(added.contains("logged"), "{added}");
    let m = manifest(h, "fortunes");
    let records = m["records"].as_u64().unwrap();
    assert!(records > 10_000, "{m}");
    assert_eq!(m["contributors"][0]["records"].as_u64(), Some(records));
    wait_for(
        "the statement under a checkpoint",
        Duration::from_secs(10),
        || (checkpoint_size(&log.url) >= Some(1)).then_some(()),
    );

    // Present and absent, checked against a policy that trusts the log.
    let policy = dir.path().join("policy");
    std::fs::write(&policy, format!("log {}\nquorum none\n", log.vkey)).unwrap();
    let pol = policy.to_str().unwrap();
    let present = dir.path().join("present.json");
    let line = prove_and_verify(h, "fortunes", "wisdom/3", false, &present, pol);
    assert!(line.starts_with("OK: record \"wisdom/3\""), "{line}");
    assert!(line.contains("the statement is entry 0 of"), "{line}");
    let absent = dir.path().join("absent.json");
    let line = prove_and_verify(h, "fortunes@1", "my/opted-out.txt", true, &absent, pol);
    assert!(
        line.starts_with("OK: no record of fortunes@1") && line.contains("my/opted-out.txt"),
        "{line}"
    );
    // A present id cannot be proven absent, nor an absent one present.
    assert!(
        !run(&[
            "dataset", "prove", "fortunes", "--absent", "--id", "wisdom/3", "--home", h
        ])
        .status
        .success()
    );
    let o = run(&["dataset", "prove", "fortunes", "--id", "nope", "--home", h]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no record has the id \"nope\""));

    // Opting a record out: version 2 without it, derived from version 1, proven absent.
    let proofs = dir.path().join("optout");
    let out = ok(&[
        "dataset",
        "remove",
        "fortunes",
        "--id",
        "wisdom/3",
        "--home",
        h,
        "--proofs",
        proofs.to_str().unwrap(),
        "--log",
        &log.url,
    ]);
    assert!(
        out.contains("fortunes@2: ") && out.contains("derived from fortunes@1"),
        "{out}"
    );
    let m2 = manifest(h, "fortunes@2");
    assert_eq!(m2["records"].as_u64(), Some(records - 1));
    assert_eq!(m2["derived_from"], "fortunes@1");
    let file = std::fs::read_dir(&proofs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let line = ok(&["dataset", "verify", file.to_str().unwrap()]);
    assert!(
        line.contains("no record of fortunes@2") && line.contains("wisdom/3"),
        "{line}"
    );
    wait_for(
        "version 2 under a checkpoint",
        Duration::from_secs(10),
        || (checkpoint_size(&log.url) >= Some(2)).then_some(()),
    );
    let again = dir.path().join("again.json");
    let line = prove_and_verify(h, "fortunes@2", "wisdom/3", true, &again, pol);
    assert!(line.contains("the statement is entry 1 of"), "{line}");

    // The same over HTTP, from a node serving this home's datasets.
    let node = NodeProcess::start(h);
    let (status, body) = get(&format!("{}/agora/v1/datasets", node.url));
    let listed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["datasets"][0]["name"], "fortunes");
    assert_eq!(listed["datasets"][0]["versions"], serde_json::json!([1, 2]));
    let (status, body) = get(&format!(
        "{}/agora/v1/datasets/fortunes@1/proof?id=wisdom/3",
        node.url
    ));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let over_http = dir.path().join("http.json");
    std::fs::write(&over_http, &body).unwrap();
    let line = ok(&[
        "dataset",
        "verify",
        over_http.to_str().unwrap(),
        "--policy",
        pol,
    ]);
    assert!(line.starts_with("OK: record \"wisdom/3\" "), "{line}");
    let (status, _) = get(&format!(
        "{}/agora/v1/datasets/fortunes@1/proof?id=wisdom/3&absent",
        node.url
    ));
    assert_eq!(status, 400, "a present id is not absent");
    let (status, _) = get(&format!("{}/agora/v1/datasets/nope", node.url));
    assert_eq!(status, 404);
    let (status, _) = get(&format!("{}/agora/v1/datasets/fortunes/proof", node.url));
    assert_eq!(status, 400, "an id is required");
    drop(node);

    // Tampering anywhere fails with a reason, never a panic.
    let good = std::fs::read(&present).unwrap();
    let bad = dir.path().join("bad.json");
    let mut refused = 0;
    for i in (0..good.len()).step_by(good.len() / 40 + 1) {
        let mut b = good.clone();
        b[i] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        let o = run(&["dataset", "verify", bad.to_str().unwrap(), "--policy", pol]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{err}");
        if !o.status.success() {
            assert!(err.starts_with("error: "), "{err}");
            refused += 1;
        }
    }
    // Flips in JSON whitespace or key order characters that keep it equivalent may pass; a
    // flip in the statement, record, path or log proof must not.
    assert!(refused >= 35, "only {refused} of ~40 flipped files refused");

    // The same input on another machine (another key) gives the same roots.
    let other = dir.path().join("other");
    init_home(&other);
    let o = other.to_str().unwrap();
    add_fortunes(c, o, &[]);
    let m2 = manifest(o, "fortunes");
    assert_eq!(m2["record_root"], m["record_root"]);
    assert_eq!(m2["id_root"], m["id_root"]);

    // Bad input: an unknown licence is refused with suggestions, and nothing is stored.
    let o2 = run(&[
        "dataset",
        "add",
        c,
        "--home",
        h,
        "--name",
        "typo",
        "--license",
        "CC-BY-4",
        "--source",
        "x",
    ]);
    let err = String::from_utf8_lossy(&o2.stderr);
    assert!(
        err.contains("did you mean") && err.contains("CC-BY-4.0"),
        "{err}"
    );
    assert!(!home.join("datasets/typo").exists());
}

/// The short variant of `agora bench-dataset` (the benchmark is a command): it runs its
/// comparison with `sha256sum` and prints every figure.
#[test]
fn bench_dataset_short_variant() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&[
        "bench-dataset",
        "--size-mb",
        "4",
        "--proof-records",
        "1000",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    for row in [
        "sha256sum",
        "agora dataset add",
        "peak resident memory",
        "verifications",
    ] {
        assert!(out.contains(row), "{out}");
    }
}
