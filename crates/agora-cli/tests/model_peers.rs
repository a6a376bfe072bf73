//! Weights from peers, on a devnet with no package index reachable. A pull from a lone peer
//! that dies mid-transfer stops and keeps the chunks it checked; the next pull resumes from them
//! with three peers, one of which corrupts a chunk it sends and another dies in the middle of
//! the transfer: the file arrives intact, both culprits named. Then a fresh worker whose
//! `--model` it lacks fetches it from its peers and serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agora_models::catalog;
use agora_models::chunks::ChunkList;
use common::{MODEL, Node, agora, args, chat, content};

const LOOPBACK: &[&str] = &["--no-mdns", "--p2p-listen", "/ip4/127.0.0.1/tcp/0"];
/// pip pointed at an index that does not answer: only peers can give the model.
const NO_INDEX: &[(&str, &str)] = &[
    ("PIP_INDEX_URL", "http://127.0.0.1:9/simple"),
    ("PIP_FIND_LINKS", "/nonexistent/agora-test-wheels"),
    ("PIP_NO_INDEX", "1"),
    ("PIP_RETRIES", "0"),
    ("PIP_TIMEOUT", "2"),
    ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
];

#[test]
fn a_fresh_node_gets_the_model_from_peers_despite_a_corrupting_and_a_dying_one() {
    let entry = catalog::find(MODEL).unwrap();
    // Each catalog entry's chunk root is its model's: what every fetch checks chunks against.
    for e in catalog::CATALOG {
        let p = common::catalog_model_path(e.name);
        assert_eq!(
            ChunkList::of_file(&p).unwrap().root(),
            e.chunks,
            "{}",
            e.name
        );
    }
    let path = common::model_path();

    let pull = |home: &std::path::Path, boot: &str| {
        let out = agora()
            .env("AGORA_HOME", home)
            .envs(NO_INDEX.iter().copied())
            .args(["model", "pull", &format!("sha256:{}", entry.sha256)])
            .args(["--no-mdns", "--bootstrap", boot])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let fresh = tempfile::tempdir().unwrap();

    // A lone peer that dies after 6 chunks: the pull stops, keeping what it checked.
    let mut first = Node::start(&args(&[
        LOOPBACK,
        &["--no-worker", "--cheat-share", "die-at:6"],
    ]));
    let (ok, _, stderr) = pull(fresh.path(), &first.p2p[0]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("run the pull again to resume"), "{stderr}");
    assert_eq!(first.child.wait().unwrap().code(), Some(3));
    let partial = fresh
        .path()
        .join(format!("models/tmp/sha256-{}.partial", entry.sha256));
    assert!(partial.is_file());

    // Three nodes that hold the model (the shared store) and serve no inference: an honest
    // one, one that corrupts the third chunk it sends, one that dies at its seventh.
    let honest = Node::start(&args(&[
        LOOPBACK,
        &["--no-worker", "--upload-limit", "400MB", "--serve-log"],
    ]));
    let boot = honest.p2p[0].clone();
    let corrupt = Node::start(&args(&[
        LOOPBACK,
        &[
            "--no-worker",
            "--bootstrap",
            &boot,
            "--cheat-share",
            "corrupt:2",
        ],
    ]));
    let mut dying = Node::start(&args(&[
        LOOPBACK,
        &[
            "--no-worker",
            "--bootstrap",
            &boot,
            "--cheat-share",
            "die-at:6",
        ],
    ]));

    // The same store, no index: `agora model pull sha256:…` resumes from the peers.
    let (ok, stdout, stderr) = pull(fresh.path(), &boot);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!("{MODEL}  sha256:{}", entry.sha256)),
        "{stdout}"
    );
    // The lone peer sent 6 chunks before dying; the last ones may still have been in its
    // buffers when it died, so between 1 and 6 arrived, were checked and are kept.
    let resumed = stderr
        .split("resuming: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        resumed.is_some_and(|n| (1..=6).contains(&n))
            && stderr.contains("of 94 chunks already here"),
        "{stderr}"
    );
    let got = fresh
        .path()
        .join(format!("models/blobs/sha256-{}.gguf", entry.sha256));
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&path).unwrap());
    // The corrupting peer was caught at its bad chunk and dropped; the dying one died.
    assert!(
        stderr.contains(&format!("dropped {}: sent wrong bytes", corrupt.peer_id)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("dropped {}", dying.peer_id)),
        "{stderr}"
    );
    assert_eq!(
        dying.child.wait().unwrap().code(),
        Some(3),
        "the dying peer should have died"
    );
    // Nothing partial is left behind.
    assert!(!partial.exists());

    // A model's manifest in the log carries its chunk root: a pull by digest alone, with no
    // catalog entry to trust, reads it from there (under the log's verified checkpoint).
    let log = format!("{}/log", honest.url);
    let key = honest.log_vkey.clone().unwrap();
    let o = agora()
        .env("AGORA_HOME", honest.home.path())
        .args(["model", "publish", MODEL, "--log", &log, "--log-key", &key])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let other = tempfile::tempdir().unwrap();
    // The manifest is found once a checkpoint covers it (the log checkpoints every second).
    let t0 = std::time::Instant::now();
    let (out, stderr) = loop {
        let out = agora()
            .env("AGORA_HOME", other.path())
            .envs(NO_INDEX.iter().copied())
            .args(["model", "pull", &format!("sha256:{}", entry.sha256)])
            .args(["--name", "from-the-log", "--log", &log, "--log-key", &key])
            .args(["--no-mdns", "--bootstrap", &boot])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success()
            || !stderr.contains("holds no manifest")
            || t0.elapsed() > std::time::Duration::from_secs(20)
        {
            break (out, stderr);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("checked against the known chunk root"),
        "{stderr}"
    );

    // A fresh worker whose --model it does not have and cannot fetch from the index asks its
    // peers, then serves.
    let worker = Node::start_env(
        tempfile::tempdir().unwrap(),
        MODEL,
        &args(&[LOOPBACK, &["--bootstrap", &boot, "--threads", "1"]]),
        NO_INDEX,
    );
    let mut ask = chat("Say hello.");
    ask["max_tokens"] = 16.into();
    let (status, v) = worker.post("/v1/chat/completions", &ask);
    assert_eq!(status, 200, "{v}");
    assert!(!content(&v).is_empty());
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(worker.home.path().join("models/index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        index["models"][0]["source"],
        format!("peers:sha256:{}", entry.sha256),
        "{index}"
    );
    drop(corrupt);
}
