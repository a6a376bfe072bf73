//! `agora init`, `agora id` and the log's HTTP API and client commands, with real processes.

#![allow(clippy::unwrap_used)]

mod tlog_common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use agora_tlog::Vkey;
use tlog_common::*;

#[test]
fn init_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let h = home.to_str().unwrap();
    let out = ok(&["init", "--home", h]);
    assert!(out.contains("peer-id 12D3KooW"), "{out}");
    let key = home.join("key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read(&key).unwrap();
    // Refuses to overwrite.
    let o = run(&["init", "--home", h]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    // AGORA_HOME works too.
    let o = std::process::Command::new(agora())
        .arg("id")
        .env("AGORA_HOME", &home)
        .output()
        .unwrap();
    assert!(o.status.success());
    let id = String::from_utf8(o.stdout).unwrap();
    let field = |k: &str| {
        id.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap()
    };
    let peer = field("peer-id");
    assert!(peer.starts_with("12D3KooW"));
    let vkey = Vkey::parse(&field("vkey ")).unwrap();
    assert_eq!(vkey.name, format!("agora.log/{peer}"));
    let wkey = Vkey::parse(&field("witness-vkey")).unwrap();
    assert_eq!(wkey.key, vkey.key);
    assert_ne!(wkey.key_id, vkey.key_id);
    assert_eq!(
        peer.parse::<agora_core::PeerId>().unwrap().public_key(),
        vkey.key
    );
    // A key others can read is refused.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&["id", "--home", h]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("chmod 600"));
}

#[test]
fn log_end_to_end() {
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
    let url = log.url.clone();
    let e1 = dir.path().join("e1");
    let e2 = dir.path().join("e2");
    std::fs::write(&e1, b"first entry").unwrap();
    std::fs::write(&e2, b"second entry").unwrap();
    let add = |f: &std::path::Path| {
        ok(&["log", "add", f.to_str().unwrap(), "--log", &url])
            .trim()
            .to_string()
    };
    assert_eq!(add(&e1), "0");
    assert_eq!(add(&e1), "0", "a duplicate returns the existing index");
    assert_eq!(add(&e2), "1");
    wait_for("checkpoint of size 2", Duration::from_secs(10), || {
        (checkpoint_size(&url) == Some(2)).then_some(())
    });

    // checkpoint, prove, verify.
    let cp = ok(&["log", "checkpoint", &url, "--log-key", &log.vkey]);
    assert!(cp.starts_with(&format!("{}\n2\n", Vkey::parse(&log.vkey).unwrap().name)));
    let proof = ok(&["log", "prove", &url, "1", "--log-key", &log.vkey]);
    assert!(
        proof.starts_with("c2sp.org/tlog-proof@v1\nindex 1\n"),
        "{proof}"
    );
    let proof_file = dir.path().join("e2.tlog-proof");
    std::fs::write(&proof_file, &proof).unwrap();
    let policy = dir.path().join("policy");
    std::fs::write(&policy, format!("log {}\nquorum none\n", log.vkey)).unwrap();
    let (p, pol) = (proof_file.to_str().unwrap(), policy.to_str().unwrap());
    let out = ok(&[
        "log",
        "verify",
        p,
        "--policy",
        pol,
        "--entry",
        e2.to_str().unwrap(),
    ]);
    assert!(out.starts_with("OK: entry 1"), "{out}");
    assert!(
        !run(&[
            "log",
            "verify",
            p,
            "--policy",
            pol,
            "--entry",
            e1.to_str().unwrap()
        ])
        .status
        .success()
    );
    // A tampered proof fails.
    let lines: Vec<&str> = proof.lines().collect();
    let mut h = lines[2].as_bytes().to_vec();
    h[0] = if h[0] == b'A' { b'B' } else { b'A' };
    let tampered = proof.replacen(lines[2], std::str::from_utf8(&h).unwrap(), 1);
    std::fs::write(&proof_file, tampered).unwrap();
    assert!(
        !run(&[
            "log",
            "verify",
            p,
            "--policy",
            pol,
            "--entry",
            e2.to_str().unwrap()
        ])
        .status
        .success()
    );
    // A policy requiring a witness refuses the uncosigned checkpoint.
    std::fs::write(&proof_file, &proof).unwrap();
    let w = agora_core::Identity::from_seed(&[7; 32])
        .witness_vkey("w.example")
        .unwrap();
    std::fs::write(
        &policy,
        format!("log {}\nwitness w {w}\nquorum w\n", log.vkey),
    )
    .unwrap();
    let o = run(&[
        "log",
        "verify",
        p,
        "--policy",
        pol,
        "--entry",
        e2.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("quorum"));

    // More entries, fsck and monitor.
    ok(&[
        "log",
        "hammer",
        &url,
        "--count",
        "3000",
        "--concurrency",
        "16",
    ]);
    let fsck = ok(&["log", "fsck", &url, "--log-key", &log.vkey]);
    assert!(fsck.contains("fsck OK"), "{fsck}");
    let m = std::process::Command::new(agora())
        .args([
            "log",
            "monitor",
            &url,
            "--log-key",
            &log.vkey,
            "--interval",
            "50ms",
            "--count",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ok(&[
        "log",
        "hammer",
        &url,
        "--count",
        "2000",
        "--concurrency",
        "8",
        "--rate",
        "2000",
        "--seed",
        "9",
    ]);
    let out = m.wait_with_output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("3 checkpoints, every pair consistent"), "{s}");

    // HTTP details: limits, status codes, content types, caching headers.
    assert_eq!(post(&format!("{url}/add"), &vec![1u8; 65536]).0, 413);
    let (s, _, body) = post(&format!("{url}/add"), &vec![2u8; 65535]);
    assert_eq!(s, 200);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .trim()
            .parse::<u64>()
            .is_ok()
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent.get(&format!("{url}/tile/0/000")).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(r.into_body().read_to_vec().unwrap().len(), 8192);
    let r = agent.get(&format!("{url}/checkpoint")).call().unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let r = agent
        .get(&format!("{url}/tile/entries/000.p/2"))
        .call()
        .unwrap();
    let b = r.into_body().read_to_vec().unwrap();
    assert_eq!(
        agora_tlog::tile::decode_bundle(&b).unwrap(),
        vec![&b"first entry"[..], &b"second entry"[..]]
    );
    assert_eq!(get(&format!("{url}/tile/0/0")).0, 404, "non-canonical path");
    assert_eq!(
        get(&format!("{url}/tile/0/x999/000")).0,
        404,
        "tile beyond the tree"
    );
    assert_eq!(get(&format!("{url}/tile/entries/999.p/3")).0, 404);
}
