//! The transparency log under attack, with real `agora log serve` processes on loopback: what it
//! refuses (unsigned, forged and malformed statements: 400), floods from one signer or one
//! address (429 with Retry-After, while others still get in), a spent disk budget (507, with
//! everything stored before still readable and proven after a restart), the client's read limits
//! (a bundle of 256 maximum-size entries is read; one byte more is refused), and a log that
//! refuses stale or future-dated witness cosignatures.

#![allow(clippy::unwrap_used)]

mod tlog_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use agora_api::tlog::LogClient;
use agora_core::statement::{Proposal, Sha256, Vote};
use agora_core::{Envelope, Identity, Statement};
use agora_tlog::checkpoint::SignedCheckpoint;
use agora_tlog::tile::TilePath;
use agora_tlog::witness::AddCheckpointRequest;
use tlog_common::*;

/// POST: (status, Retry-After, body).
fn post_full(url: &str, body: &[u8]) -> (u16, Option<u64>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let r = agent.post(url).send(body).unwrap();
    let s = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = r.into_body().read_to_string().unwrap_or_default();
    (s, retry, body)
}

fn vote(id: &Identity, n: u64) -> Vec<u8> {
    Statement::Vote(Vote {
        proposal: Sha256::of(&n.to_be_bytes()),
        network: String::new(),
        choice: agora_core::statement::Choice::Yes,
        reason: None,
        voter: id.peer_id(),
        time: n,
    })
    .sign(id)
    .to_json()
    .into_bytes()
}

/// A statement of about `len` bytes once in its envelope.
fn proposal(id: &Identity, n: u64, len: usize) -> Vec<u8> {
    Statement::Proposal(Proposal {
        network: String::new(),
        title: format!("p{n}"),
        body: "x".repeat(len * 3 / 4),
        motion: agora_core::statement::Motion::Rules {
            text: String::new(),
            digest: Sha256::of(b""),
        },
        proposer: id.peer_id(),
        time: n,
    })
    .sign(id)
    .to_json()
    .into_bytes()
}

fn serve(home: &Path, err: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "log",
        "serve",
        "--home",
        home.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--interval",
        "100ms",
    ];
    args.extend_from_slice(extra);
    Server::start(&args, err)
}

#[test]
fn refuses_what_is_not_a_signed_statement() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    init_home(&home);
    let log = serve(&home, &dir.path().join("log.err"), &[]);
    let add = format!("{}/add", log.url);
    let id = Identity::from_seed(&[1; 32]);
    let expect_400 = |body: &[u8], what: &str| {
        let (s, _, msg) = post_full(&add, body);
        assert_eq!(s, 400, "{what}: {msg}");
        msg
    };
    // Raw bytes; an unsigned envelope; a forged signature; a signature by a key other than its
    // keyid; a non-canonical encoding; an unknown statement kind.
    let m = expect_400(b"hello", "raw bytes");
    assert!(m.contains("not a signed statement"), "{m}");
    let mut env = Envelope::from_json(&vote(&id, 1)).unwrap();
    let sigs = std::mem::take(&mut env.signatures);
    let m = expect_400(env.to_json().as_bytes(), "unsigned");
    assert!(m.contains("unsigned"), "{m}");
    env.signatures = sigs;
    env.signatures[0].sig[10] ^= 0x40;
    let m = expect_400(env.to_json().as_bytes(), "forged");
    assert!(m.contains("does not verify"), "{m}");
    let mut env = Envelope::from_json(&vote(&id, 1)).unwrap();
    env.signatures[0].keyid = Identity::from_seed(&[2; 32]).peer_id().to_string();
    let m = expect_400(env.to_json().as_bytes(), "wrong keyid");
    assert!(m.contains("does not verify"), "{m}");
    let pretty = String::from_utf8(vote(&id, 1)).unwrap().replace(":", ": ");
    let m = expect_400(pretty.as_bytes(), "not canonical");
    assert!(m.contains("canonical"), "{m}");
    let unknown = Envelope::sign(
        agora_core::statement::AGORA_PAYLOAD_TYPE,
        br#"{"_type":"https://agora.network/gossip/v1"}"#.to_vec(),
        &id,
    );
    let m = expect_400(unknown.to_json().as_bytes(), "unknown kind");
    assert!(m.contains("refused"), "{m}");
    // A good statement gets in; nothing refused was logged.
    let (s, _, body) = post_full(&add, &vote(&id, 1));
    assert_eq!((s, body.as_str()), (200, "0\n"));
    // `agora log add` says why, too.
    let f = dir.path().join("raw");
    std::fs::write(&f, b"hello").unwrap();
    let o = run(&["log", "add", f.to_str().unwrap(), "--log", &log.url]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("HTTP 400"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_flooding_signer_is_limited_and_others_still_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    init_home(&home);
    // 2 statements/s per signer with 5 s of burst: 10 at once; no address quota.
    let log = serve(
        &home,
        &dir.path().join("log.err"),
        &[
            "--signer-rate",
            "2",
            "--quota-burst",
            "5s",
            "--address-rate",
            "0",
            "--address-bytes",
            "0",
        ],
    );
    let add = format!("{}/add", log.url);
    let (a, b) = (Identity::from_seed(&[1; 32]), Identity::from_seed(&[2; 32]));
    let mut accepted = 0;
    let mut refusal = None;
    for n in 0..30 {
        let (s, retry, body) = post_full(&add, &vote(&a, n));
        match s {
            200 => accepted += 1,
            429 => {
                refusal = Some((retry, body));
                break;
            }
            s => panic!("HTTP {s}: {body}"),
        }
    }
    // 10 at once, plus what refilled while they were sent.
    assert!((10..=13).contains(&accepted), "{accepted} accepted");
    let (retry, body) = refusal.expect("the flood was never refused");
    assert!(body.contains(&format!("signer {}", a.peer_id())), "{body}");
    assert!(body.contains("retry in"), "{body}");
    assert_eq!(retry, Some(1));
    // Another signer still gets in; a statement of `a` already logged is answered with its
    // index (resending costs `a` nothing).
    for n in 0..5 {
        let (s, _, body) = post_full(&add, &vote(&b, n));
        assert_eq!(s, 200, "{body}");
    }
    let (s, _, body) = post_full(&add, &vote(&a, 0));
    assert_eq!((s, body.as_str()), (200, "0\n"));
    // `a` gets in again once its bucket has refilled.
    std::thread::sleep(Duration::from_millis(1100));
    let (s, _, body) = post_full(&add, &vote(&a, 100));
    assert_eq!(s, 200, "{body}");
}

#[test]
fn a_flooding_address_is_limited() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    init_home(&home);
    // 5 entries/s per address with 2 s of burst: 10 at once, whoever signed them.
    let log = serve(
        &home,
        &dir.path().join("log.err"),
        &[
            "--address-rate",
            "5",
            "--quota-burst",
            "2s",
            "--signer-rate",
            "0",
            "--signer-bytes",
            "0",
        ],
    );
    let add = format!("{}/add", log.url);
    let mut statuses = Vec::new();
    let mut last = String::new();
    for n in 0..20u8 {
        let id = Identity::from_seed(&[n; 32]);
        let (s, retry, body) = post_full(&add, &vote(&id, 0));
        if s == 429 {
            assert_eq!(retry, Some(1));
            last = body;
        }
        statuses.push(s);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((10..=13).contains(&ok), "{statuses:?}");
    assert!(statuses[15..].iter().all(|s| *s == 429), "{statuses:?}");
    assert!(last.contains("address 127.0.0.1"), "{last}");
    // Garbage counts too: the address pays before its entry is even parsed.
    std::thread::sleep(Duration::from_millis(2100));
    let mut garbage = 0;
    while post_full(&add, b"junk").0 == 400 {
        garbage += 1;
        assert!(garbage < 30);
    }
    assert!(garbage >= 9, "{garbage}");

    // The volume quota: 100 KiB/s per address with 1 s of burst holds two ~40 kB statements.
    drop(log);
    let log = serve(
        &home,
        &dir.path().join("log2.err"),
        &[
            "--address-rate",
            "0",
            "--address-bytes",
            "100KiB",
            "--quota-burst",
            "1s",
            "--signer-rate",
            "0",
            "--signer-bytes",
            "0",
        ],
    );
    let add = format!("{}/add", log.url);
    let id = Identity::from_seed(&[99; 32]);
    let big: Vec<Vec<u8>> = (0..3).map(|n| proposal(&id, n, 40_000)).collect();
    assert!(big.iter().all(|b| b.len() > 35_000 && b.len() < 65_535));
    assert_eq!(post_full(&add, &big[0]).0, 200);
    assert_eq!(post_full(&add, &big[1]).0, 200);
    let (s, retry, body) = post_full(&add, &big[2]);
    assert_eq!(s, 429, "{body}");
    assert!(retry.is_some());
    assert!(body.contains("bytes/s"), "{body}");
}

#[test]
fn a_full_log_refuses_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    init_home(&home);
    let args = ["--log-max-bytes", "12000", "--no-quotas"];
    let err = dir.path().join("log.err");
    let mut log = serve(&home, &err, &args);
    let url = log.url.clone();
    let vkey = log.vkey.clone();
    let ids: Vec<Identity> = (0..40u8).map(|n| Identity::from_seed(&[n; 32])).collect();
    let mut logged = Vec::new();
    let mut full = None;
    for (n, id) in ids.iter().enumerate() {
        let e = vote(id, n as u64);
        let (s, _, body) = post_full(&format!("{url}/add"), &e);
        match s {
            200 => logged.push(e),
            507 => {
                full = Some(body);
                break;
            }
            s => panic!("HTTP {s}: {body}"),
        }
    }
    let msg = full.expect("the budget was never reached");
    assert!(msg.contains("the log is full"), "{msg}");
    assert!(msg.contains("12000"), "{msg}");
    assert!(logged.len() >= 5, "{}", logged.len());
    // A statement already logged still gets its index.
    let (s, _, body) = post_full(&format!("{url}/add"), &logged[2]);
    assert_eq!((s, body.as_str()), (200, "2\n"));
    let n = logged.len() as u64;
    wait_for("the last checkpoint", Duration::from_secs(10), || {
        (checkpoint_size(&url) == Some(n)).then_some(())
    });

    // SIGKILL, restart with the same budget: everything is there and proven, and still full.
    log.kill9();
    let log = serve(&home, &err, &args);
    let url = log.url.clone();
    wait_for(
        "the checkpoint after restart",
        Duration::from_secs(10),
        || (checkpoint_size(&url) == Some(n)).then_some(()),
    );
    let fsck = ok(&["log", "fsck", &url, "--log-key", &vkey]);
    assert!(fsck.contains(&format!("fsck OK: {n} entries")), "{fsck}");
    let entries = LogClient::new(&url).entries(0, n as u16).unwrap();
    assert_eq!(entries, logged);
    let policy = dir.path().join("policy");
    std::fs::write(&policy, format!("log {vkey}\nquorum none\n")).unwrap();
    for (i, e) in logged.iter().enumerate() {
        let proof = dir.path().join("p");
        std::fs::write(
            &proof,
            ok(&["log", "prove", &url, &i.to_string(), "--log-key", &vkey]),
        )
        .unwrap();
        let entry = dir.path().join("e");
        std::fs::write(&entry, e).unwrap();
        let out = ok(&[
            "log",
            "verify",
            proof.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--entry",
            entry.to_str().unwrap(),
        ]);
        assert!(out.starts_with(&format!("OK: entry {i}")), "{out}");
    }
    let (s, _, _) = post_full(&format!("{url}/add"), &vote(&ids[39], 999));
    assert_eq!(s, 507);
}

#[test]
fn the_client_reads_a_bundle_of_256_maximum_entries() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    init_home(&home);
    let log = serve(
        &home,
        &dir.path().join("log.err"),
        &["--accept", "any", "--no-quotas"],
    );
    let client = LogClient::new(&log.url);
    let entry = |i: u32| -> Vec<u8> {
        let mut e = vec![(i % 251) as u8; 65_535];
        e[..4].copy_from_slice(&i.to_be_bytes());
        e
    };
    for i in 0..256u32 {
        assert_eq!(client.add(&entry(i)).unwrap(), u64::from(i));
    }
    wait_for("checkpoint 256", Duration::from_secs(10), || {
        (checkpoint_size(&log.url) == Some(256)).then_some(())
    });
    let got = client.entries(0, 256).unwrap();
    assert_eq!(got.len(), 256);
    assert!(got.iter().enumerate().all(|(i, e)| *e == entry(i as u32)));
    let r = ureq::get(&format!("{}/tile/entries/000", log.url))
        .call()
        .unwrap();
    assert_eq!(r.body().content_length(), Some(16_777_472));
    let fsck = ok(&["log", "fsck", &log.url, "--log-key", &log.vkey]);
    assert!(fsck.contains("fsck OK: 256 entries"), "{fsck}");
}

/// A one-thread HTTP/1.1 server answering every request with `handler(method, path, body)`.
fn fake_server(handler: impl Fn(&str, &str, &[u8]) -> (u16, Vec<u8>) + Send + 'static) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let (status, resp) = handler(&method, &path, &body);
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                resp.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&resp);
        }
    });
    url
}

#[test]
fn the_client_refuses_more_than_the_spec_allows() {
    let url = fake_server(|_, path, _| match path {
        "/tile/entries/000" => (200, vec![0u8; 16_777_473]),
        "/tile/entries/001" => {
            let mut b = Vec::new();
            for _ in 0..256 {
                b.extend_from_slice(&65_535u16.to_be_bytes());
                b.extend_from_slice(&[7u8; 65_535]);
            }
            (200, b)
        }
        "/tile/0/000" => (200, vec![0u8; 8193]),
        "/tile/0/001" => (200, vec![0u8; 8191]),
        "/tile/0/002" => (200, vec![0u8; 8192]),
        "/checkpoint" => (200, vec![b'a'; (1 << 20) + 1]),
        "/add" => (200, b"1234567890123456789012\n".to_vec()),
        _ => (404, vec![b'x'; 100_000]),
    });
    let c = LogClient::new(&url);
    let e = c.entries(0, 256).unwrap_err().to_string();
    assert!(e.contains("at most 16777472 bytes"), "{e}");
    assert_eq!(c.entries(1, 256).unwrap().len(), 256);
    let e = c
        .tile(&TilePath::hashes(0, 0, 256))
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 8192 bytes"), "{e}");
    let e = c
        .tile(&TilePath::hashes(0, 1, 256))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not 8192"), "{e}");
    assert_eq!(
        c.tile(&TilePath::hashes(0, 2, 256)).unwrap().unwrap().len(),
        8192
    );
    let e = c.checkpoint().unwrap_err().to_string();
    assert!(e.contains("at most 1048576 bytes"), "{e}");
    assert!(c.add(b"x").is_err());
    // An error body is cut, not refused.
    let e = c.tile(&TilePath::hashes(0, 5, 256)).unwrap();
    assert!(e.is_none());
}

#[test]
fn stale_or_future_cosignatures_do_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    init_home(&home);
    let witness = Identity::from_seed(&[42; 32]);
    let wvkey = witness.witness_vkey("w.example").unwrap();
    // A witness whose cosignatures are dated `offset` seconds from now.
    let offset = Arc::new(AtomicI64::new(-3600));
    let o = offset.clone();
    let cosigner = witness.cosigner("w.example").unwrap();
    let wurl = fake_server(move |_, path, body| {
        if path != "/add-checkpoint" {
            return (404, Vec::new());
        }
        let Ok(req) = AddCheckpointRequest::parse(body) else {
            return (400, Vec::new());
        };
        let sc = SignedCheckpoint::parse(&req.checkpoint).unwrap();
        let now = agora_log::unix_now().saturating_add_signed(o.load(Ordering::SeqCst));
        let sig = cosigner.cosign(&sc.note.text, now).unwrap();
        (
            200,
            agora_tlog::witness::format_response(&[sig]).into_bytes(),
        )
    });
    let policy = dir.path().join("policy");
    std::fs::write(&policy, format!("witness w {wvkey} {wurl}\nquorum w\n")).unwrap();
    let err = dir.path().join("log.err");
    let log = serve(
        &home,
        &err,
        &["--policy", policy.to_str().unwrap(), "--accept", "any"],
    );
    let f = dir.path().join("e");
    std::fs::write(&f, b"entry").unwrap();
    ok(&["log", "add", f.to_str().unwrap(), "--log", &log.url]);
    // Dated an hour ago, then an hour ahead: never published.
    wait_for(
        "the log to refuse a stale cosignature",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&err)
                .unwrap()
                .contains("away from the log's clock")
                .then_some(())
        },
    );
    offset.store(3600, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        checkpoint_size(&log.url),
        None,
        "published without a fresh cosignature"
    );
    // A fresh cosignature: published, with it.
    offset.store(0, Ordering::SeqCst);
    wait_for("a cosigned checkpoint", Duration::from_secs(10), || {
        (checkpoint_size(&log.url) == Some(1)).then_some(())
    });
    let (_, cp) = get(&format!("{}/checkpoint", log.url));
    let full = agora_tlog::Policy::parse(
        format!("log {}\nwitness w {wvkey}\nquorum w\n", log.vkey).as_bytes(),
    )
    .unwrap();
    full.verify_checkpoint(&cp).unwrap();
}
