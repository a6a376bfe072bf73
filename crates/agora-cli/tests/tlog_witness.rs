//! The witness over HTTP: every status code of tlog-witness, concurrent add-checkpoint calls for
//! the same log (exactly one wins, the others get 409), a log that publishes only with a quorum of
//! cosignatures, and an equivocating log caught with evidence that a separate process verifies
//! trusting only the log's public key.

#![allow(clippy::unwrap_used)]

mod tlog_common;

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use agora_core::Identity;
use agora_tlog::checkpoint::{Checkpoint, SignedCheckpoint};
use agora_tlog::merkle::MemoryTree;
use agora_tlog::witness::{AddCheckpointRequest, parse_response};
use agora_tlog::{Note, Vkey};
use tlog_common::*;

fn request(log: &Identity, t: &MemoryTree, old: u64, n: u64) -> Vec<u8> {
    let origin = log.default_log_origin();
    let cp = SignedCheckpoint::sign(
        Checkpoint::new(&origin, n, t.root_at(n).unwrap()),
        &log.log_signer(&origin).unwrap(),
    )
    .unwrap();
    let proof = if old == 0 || old == n {
        vec![]
    } else {
        t.consistency_proof(old, n).unwrap()
    };
    AddCheckpointRequest {
        old_size: old,
        proof,
        checkpoint: cp.to_bytes(),
    }
    .to_bytes()
}

fn start_witness(dir: &Path, log_keys: &[&str], listen: &str) -> Server {
    let home = dir.join("witness-home");
    if !home.join("key").exists() {
        init_home(&home);
    }
    let mut args = vec![
        "witness",
        "serve",
        "--home",
        home.to_str().unwrap(),
        "--listen",
        listen,
    ];
    for k in log_keys {
        args.push("--log-key");
        args.push(k);
    }
    let args: Vec<String> = args.into_iter().map(String::from).collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs, &dir.join("witness.err"))
}

#[test]
fn status_codes_and_concurrent_calls() {
    let dir = tempfile::tempdir().unwrap();
    let log = Identity::from_seed(&[11; 32]);
    let vkey = log.vkey(&log.default_log_origin()).unwrap().to_string();
    let w = start_witness(dir.path(), &[&vkey], "127.0.0.1:0");
    let wvkey = Vkey::parse(&w.vkey).unwrap();
    let add = format!("{}/add-checkpoint", w.url);
    let mut t = MemoryTree::new();
    for i in 0..400u32 {
        t.append(&i.to_be_bytes());
    }

    // 200 with a cosignature that verifies under the witness's vkey.
    let (s, _, body) = post(&add, &request(&log, &t, 0, 3));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let sigs = parse_response(&body).unwrap();
    let note = Note {
        text: Checkpoint::new(&log.default_log_origin(), 3, t.root_at(3).unwrap()).to_text(),
        sigs,
    };
    assert_eq!(note.verify(&[wvkey]), Ok(vec![0]));
    // 409 with the latest size, as text/x.tlog.size.
    let (s, ct, body) = post(&add, &request(&log, &t, 0, 5));
    assert_eq!(
        (s, ct.as_str(), body.as_slice()),
        (409, "text/x.tlog.size", &b"3\n"[..])
    );
    // 409 also for an old size above the stored one (the witness never skips ahead), and for
    // the stored size with another root; the stored state does not move.
    let (s, ct, body) = post(&add, &request(&log, &t, 5, 9));
    assert_eq!(
        (s, ct.as_str(), body.as_slice()),
        (409, "text/x.tlog.size", &b"3\n"[..])
    );
    let mut fork = MemoryTree::new();
    for i in 0..10u32 {
        fork.append(&(i + 1000).to_be_bytes());
    }
    let (s, _, body) = post(&add, &request(&log, &fork, 3, 3));
    assert_eq!((s, body.as_slice()), (409, &b"3\n"[..]));
    assert_eq!(get(&format!("{}/evidence", w.url)), (200, b"1\n".to_vec()));
    // 422: proof does not verify.
    let mut r = AddCheckpointRequest::parse(&request(&log, &t, 3, 9)).unwrap();
    r.proof[1].0[5] ^= 0x10;
    assert_eq!(post(&add, &r.to_bytes()).0, 422);
    // 400: old size above the checkpoint's; malformed body.
    let mut r = AddCheckpointRequest::parse(&request(&log, &t, 3, 9)).unwrap();
    r.old_size = 10;
    assert_eq!(post(&add, &r.to_bytes()).0, 400);
    assert_eq!(post(&add, b"old 3\nnot base64\n\n").0, 400);
    // 404: unknown origin.
    let stranger = Identity::from_seed(&[12; 32]);
    assert_eq!(post(&add, &request(&stranger, &t, 0, 3)).0, 404);
    // 403: known origin, signature by another key.
    let mut r = AddCheckpointRequest::parse(&request(&log, &t, 3, 9)).unwrap();
    let forged = SignedCheckpoint::sign(
        Checkpoint::new(&log.default_log_origin(), 9, t.root_at(9).unwrap()),
        &stranger.log_signer(&log.default_log_origin()).unwrap(),
    )
    .unwrap();
    r.checkpoint = forged.to_bytes();
    assert_eq!(post(&add, &r.to_bytes()).0, 403);
    // Same size with the same root: 200; nothing moved.
    assert_eq!(post(&add, &request(&log, &t, 3, 3)).0, 200);

    // Concurrent calls racing for the same log: exactly one wins each round.
    let mut old = 3u64;
    for round in 0..15u64 {
        let bodies: Vec<Vec<u8>> = (1..=4)
            .map(|k| request(&log, &t, old, old + k + round % 2))
            .collect();
        let barrier = Arc::new(Barrier::new(bodies.len()));
        let handles: Vec<_> = bodies
            .into_iter()
            .map(|b| {
                let (barrier, add) = (barrier.clone(), add.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    post(&add, &b)
                })
            })
            .collect();
        let results: Vec<(u16, String, Vec<u8>)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners = results.iter().filter(|r| r.0 == 200).count();
        let losers: Vec<_> = results.iter().filter(|r| r.0 == 409).collect();
        assert_eq!(
            winners,
            1,
            "round {round}: {:?}",
            results.iter().map(|r| r.0).collect::<Vec<_>>()
        );
        assert_eq!(losers.len(), 3);
        let new: u64 = String::from_utf8(losers[0].2.clone())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(new > old);
        assert!(losers.iter().all(|l| l.1 == "text/x.tlog.size"));
        old = new;
    }
}

fn log_home(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let home = dir.join(name);
    init_home(&home);
    let id = ok(&["id", "--home", home.to_str().unwrap()]);
    let vkey = id
        .lines()
        .find_map(|l| l.strip_prefix("vkey"))
        .unwrap()
        .trim()
        .to_string();
    (home, vkey)
}

#[test]
fn publishes_only_with_a_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let (home, vkey) = log_home(dir.path(), "log-home");
    // The witness's key is known in advance; it is not running yet.
    let whome = dir.path().join("witness-home");
    init_home(&whome);
    let wid = ok(&["id", "--home", whome.to_str().unwrap()]);
    let wvkey = wid
        .lines()
        .find_map(|l| l.strip_prefix("witness-vkey"))
        .unwrap()
        .trim()
        .to_string();
    let port = free_port();
    let policy = dir.path().join("policy");
    std::fs::write(
        &policy,
        format!("witness w {wvkey} http://127.0.0.1:{port}\nquorum w\n"),
    )
    .unwrap();
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
            "--policy",
            policy.to_str().unwrap(),
            "--accept",
            "any",
        ],
        &dir.path().join("log.err"),
    );
    let e = dir.path().join("e");
    std::fs::write(&e, b"x").unwrap();
    ok(&["log", "add", e.to_str().unwrap(), "--log", &log.url]);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        checkpoint_size(&log.url),
        None,
        "published without a quorum"
    );
    let _w = start_witness(dir.path(), &[&vkey], &format!("127.0.0.1:{port}"));
    wait_for("a cosigned checkpoint", Duration::from_secs(15), || {
        (checkpoint_size(&log.url) == Some(1)).then_some(())
    });
    let (_, cp) = get(&format!("{}/checkpoint", log.url));
    let full_policy = dir.path().join("full-policy");
    std::fs::write(
        &full_policy,
        format!("log {vkey}\nwitness w {wvkey}\nquorum w\n"),
    )
    .unwrap();
    let sc = agora_tlog::Policy::parse(&std::fs::read(&full_policy).unwrap())
        .unwrap()
        .verify_checkpoint(&cp)
        .unwrap();
    assert_eq!(sc.note.sigs.len(), 2);
    // An offline proof under the witnessed policy.
    let proof = dir.path().join("p.tlog-proof");
    std::fs::write(
        &proof,
        ok(&[
            "log",
            "prove",
            &log.url,
            "0",
            "--policy",
            full_policy.to_str().unwrap(),
        ]),
    )
    .unwrap();
    let out = ok(&[
        "log",
        "verify",
        proof.to_str().unwrap(),
        "--policy",
        full_policy.to_str().unwrap(),
        "--entry",
        e.to_str().unwrap(),
    ]);
    assert!(out.contains("1 witness cosignature"), "{out}");
}

#[test]
fn equivocating_log_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (home_a, vkey) = log_home(dir.path(), "log-a");
    let w = start_witness(dir.path(), &[&vkey], "127.0.0.1:0");
    let policy = dir.path().join("policy");
    std::fs::write(
        &policy,
        format!("witness w {} {}\nquorum w\n", w.vkey, w.url),
    )
    .unwrap();
    let serve = |home: &Path, err: &str| {
        Server::start(
            &[
                "log",
                "serve",
                "--home",
                home.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--interval",
                "150ms",
                "--policy",
                policy.to_str().unwrap(),
                "--accept",
                "any",
            ],
            &dir.path().join(err),
        )
    };
    let add = |url: &str, data: &str| {
        let f = dir.path().join("entry");
        std::fs::write(&f, data).unwrap();
        ok(&["log", "add", f.to_str().unwrap(), "--log", url]);
    };
    // History A: five entries, cosigned by the witness.
    let mut a = serve(&home_a, "a.err");
    for i in 0..5 {
        add(&a.url, &format!("a{i}"));
    }
    wait_for(
        "history A cosigned at size 5",
        Duration::from_secs(15),
        || (checkpoint_size(&a.url) == Some(5)).then_some(()),
    );
    a.kill9();
    // History B: the same key, another database, other entries.
    let home_b = dir.path().join("log-b");
    std::fs::create_dir_all(&home_b).unwrap();
    std::fs::copy(home_a.join("key"), home_b.join("key")).unwrap();
    let b = serve(&home_b, "b.err");
    for i in 0..7 {
        add(&b.url, &format!("b{i}"));
    }
    let n: u64 = wait_for("evidence at the witness", Duration::from_secs(15), || {
        let (s, body) = get(&format!("{}/evidence", w.url));
        let n: u64 = String::from_utf8(body).ok()?.trim().parse().ok()?;
        (s == 200 && n > 0).then_some(n)
    });
    assert!(n >= 1);
    // The witness never cosigned B, so B never published.
    assert_eq!(checkpoint_size(&b.url), None);

    // A separate process, trusting only the log's key, verifies each evidence statement.
    let out = ok(&["witness", "evidence", &w.url]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len() as u64, n);
    for (i, l) in lines.iter().enumerate() {
        let f = dir.path().join(format!("evidence-{i}.json"));
        std::fs::write(&f, l).unwrap();
        let v = ok(&[
            "witness",
            "verify-evidence",
            f.to_str().unwrap(),
            "--log-key",
            &vkey,
        ]);
        assert!(v.starts_with("valid evidence"), "{v}");
        // Trusting another key, it is rejected.
        let other = Identity::from_seed(&[99; 32]);
        let other_vkey = other
            .vkey(&Vkey::parse(&vkey).unwrap().name)
            .unwrap()
            .to_string();
        assert!(
            !run(&[
                "witness",
                "verify-evidence",
                f.to_str().unwrap(),
                "--log-key",
                &other_vkey
            ])
            .status
            .success()
        );
        // Tampering with either checkpoint breaks it.
        let tampered = l.replacen("\"payload\":\"", "\"payload\":\"AAAA", 1);
        std::fs::write(&f, tampered).unwrap();
        assert!(
            !run(&[
                "witness",
                "verify-evidence",
                f.to_str().unwrap(),
                "--log-key",
                &vkey
            ])
            .status
            .success()
        );
    }
}
