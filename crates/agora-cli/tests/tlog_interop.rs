//! Interoperability with Go's independent implementation (golang.org/x/mod/sumdb/note and
//! .../tlog, Debian packages golang-go and golang-golang-x-mod-dev): Go verifies our signed
//! checkpoints, our inclusion and consistency proofs, computes proofs from our tiles (checking
//! every tile against our checkpoint's root), parses our vkeys; we verify a note Go signed.

#![allow(clippy::unwrap_used)]

mod tlog_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agora_api::tlog::LogClient;
use agora_tlog::checkpoint::SignedCheckpoint;
use agora_tlog::hash::leaf_hash;
use agora_tlog::{Note, Vkey};
use tlog_common::*;

/// Build the Go program; `None` (with a loud message) only if `go` is not installed.
fn build_go(dir: &Path) -> Option<PathBuf> {
    if Command::new("go").arg("version").output().is_err() {
        eprintln!(
            "\n\n!!!!!! SKIPPING the Go interop test: `go` is not installed.\n!!!!!! Install the Debian packages golang-go and golang-golang-x-mod-dev.\n\n"
        );
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/go/main.go");
    let out = dir.join("interop");
    let gopath = std::env::var("AGORA_GOPATH").unwrap_or_else(|_| "/usr/share/gocode".into());
    let o = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .env("GOPATH", gopath)
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOFLAGS", "")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "go build failed (is golang-golang-x-mod-dev installed?):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(out)
}

fn go(bin: &Path, args: &[&str]) -> String {
    let o = Command::new(bin).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "interop {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn go_fails(bin: &Path, args: &[&str]) -> bool {
    !Command::new(bin)
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn go_interop() {
    let dir = tempfile::tempdir().unwrap();
    let Some(go_bin) = build_go(dir.path()) else {
        return;
    };
    let home = dir.path().join("home");
    init_home(&home);
    let log = Server::start(
        &[
            "log",
            "serve",
            "--home",
            home.to_str().unwrap(),
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
    ok(&[
        "log",
        "hammer",
        &log.url,
        "--count",
        "700",
        "--concurrency",
        "8",
    ]);
    let old_size = wait_for("checkpoint 700", Duration::from_secs(10), || {
        checkpoint_size(&log.url).filter(|s| *s == 700)
    });
    let client = LogClient::new(&log.url);
    let old_cp = SignedCheckpoint::parse(&client.checkpoint().unwrap()).unwrap();
    ok(&[
        "log",
        "hammer",
        &log.url,
        "--count",
        "70000",
        "--concurrency",
        "64",
        "--seed",
        "3",
    ]);
    let size = wait_for("checkpoint 70700", Duration::from_secs(20), || {
        checkpoint_size(&log.url).filter(|s| *s == 70_700)
    });
    let cp_bytes = client.checkpoint().unwrap();
    let cp = SignedCheckpoint::parse(&cp_bytes).unwrap();
    let cp_file = dir.path().join("checkpoint");
    std::fs::write(&cp_file, &cp_bytes).unwrap();

    // Go verifies our signed checkpoint with our vkey.
    let out = go(
        &go_bin,
        &["verify-checkpoint", &log.vkey, cp_file.to_str().unwrap()],
    );
    assert_eq!(
        out.trim(),
        format!(
            "OK {} {} {}",
            cp.checkpoint.origin, size, cp.checkpoint.root
        )
    );
    // ... and rejects it under another key with the same name.
    let other = agora_core::Identity::from_seed(&[5; 32])
        .vkey(&cp.checkpoint.origin)
        .unwrap()
        .to_string();
    assert!(go_fails(
        &go_bin,
        &["verify-checkpoint", &other, cp_file.to_str().unwrap()]
    ));

    // Go checks our inclusion and consistency proofs.
    for index in [0u64, 1, 255, 256, 65_535, 65_536, 70_699] {
        let proof = client.inclusion_proof(index, size).unwrap();
        let entries = client
            .entries(
                index / 256,
                agora_tlog::tile::tile_width(0, index / 256, size),
            )
            .unwrap();
        let leaf = leaf_hash(&entries[(index % 256) as usize]);
        let f = dir.path().join("incl");
        std::fs::write(
            &f,
            proof.iter().map(|h| format!("{h}\n")).collect::<String>(),
        )
        .unwrap();
        let args = [
            "check-inclusion",
            &size.to_string(),
            &cp.checkpoint.root.to_base64(),
            &index.to_string(),
            &leaf.to_base64(),
            f.to_str().unwrap(),
        ];
        assert_eq!(go(&go_bin, &args).trim(), "OK inclusion", "index {index}");
        // Go's leaf hash of the entry is ours.
        let ef = dir.path().join("entry");
        std::fs::write(&ef, &entries[(index % 256) as usize]).unwrap();
        assert_eq!(
            go(&go_bin, &["leaf-hash", ef.to_str().unwrap()]).trim(),
            leaf.to_base64()
        );
    }
    for old in [1u64, 3, 700, 4096, 70_000] {
        let proof = client.consistency_proof(old, size).unwrap();
        let f = dir.path().join("cons");
        std::fs::write(
            &f,
            proof.iter().map(|h| format!("{h}\n")).collect::<String>(),
        )
        .unwrap();
        let old_root = client.root(old).unwrap();
        let args = [
            "check-consistency",
            &old.to_string(),
            &old_root.to_base64(),
            &size.to_string(),
            &cp.checkpoint.root.to_base64(),
            f.to_str().unwrap(),
        ];
        assert_eq!(go(&go_bin, &args).trim(), "OK consistency", "old {old}");
    }

    // Go reads our tiles (authenticating each against our root), computes proofs and checks them,
    // including consistency with the earlier checkpoint.
    let out = go(
        &go_bin,
        &[
            "tiles",
            &log.url,
            &log.vkey,
            &old_size.to_string(),
            &old_cp.checkpoint.root.to_base64(),
        ],
    );
    assert!(out.starts_with(&format!("OK tiles size={size}")), "{out}");

    // A note Go signs with a key Go generated verifies here, and our Vkey parser reads Go's vkey.
    let keys = go(&go_bin, &["gen-key", "go.example/interop"]);
    let mut lines = keys.lines();
    let (skey, vkey) = (lines.next().unwrap(), lines.next().unwrap());
    let text = dir.path().join("text");
    std::fs::write(&text, "signed in Go\nverified in Rust\n").unwrap();
    let signed = go(&go_bin, &["sign", skey, text.to_str().unwrap()]);
    let v = Vkey::parse(vkey).unwrap();
    let n = Note::parse(signed.as_bytes()).unwrap();
    assert_eq!(n.verify(std::slice::from_ref(&v)), Ok(vec![0]));
    assert_eq!(n.text, "signed in Go\nverified in Rust\n");
    // Our signer with Go's private key encoding produces the identical note.
    let ours = agora_tlog::note::Ed25519Signer::from_skey(skey).unwrap();
    assert_eq!(
        Note::sign(&n.text, &[&ours]).unwrap().to_bytes(),
        signed.as_bytes()
    );
}
