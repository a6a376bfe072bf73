//! A devnet with a cheater: a log with a witness, a gateway appending its receipts there, three
//! workers of which one serves a perturbed model while claiming the real one, and a validator
//! checking the default share (10 %) of receipts. The validator must catch the cheater, the
//! gateway must stop routing to it, and no honest worker may be condemned; of two more gateways
//! that only listen, the one trusting that validator (`--trust-validator`) acts on its verdict
//! and the one trusting another key does not. Prints after how many requests it was caught.
//!
//! Then the community's credit ledger over that log (the validator is the community's member,
//! so its verdicts count): the model's manifest names a two-dataset mix, two machines compute
//! identical ledgers, every line equals a computation by hand from the log's receipts and
//! verdicts, the cheater gets no compute credit for its rejected answers, and a contributor's
//! line proof checks on its own.
//!
//! Needs the `cheat` feature: `cargo nextest run --release -p agora-cli --features cheat --test
//! cheat_devnet` (scripts/test.sh runs it).
#![allow(clippy::unwrap_used)]

mod common;
mod tlog_common;

use std::time::{Duration, Instant};

use common::{Node, args, chat, wait_workers};
use serde_json::{Value, json};

const LOOPBACK: &[&str] = &["--p2p-listen", "/ip4/127.0.0.1/tcp/0"];
/// Small workers: one thread each, so four processes share two cores.
const SMALL: &[&str] = &[
    "--threads",
    "1",
    "--slots",
    "2",
    "--ctx",
    "512",
    "--no-mdns",
];

/// The gateway's view of `peer`'s reputation: (accepted, rejected).
fn reputation(gw: &Node, peer: &str) -> (u64, u64) {
    let (_, v) = gw.get("/agora/v1/nodes");
    v["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["peer_id"] == peer))
        .map(|p| {
            let r = &p["reputation"];
            (
                r["accepted"].as_u64().unwrap_or(0),
                r["rejected"].as_u64().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

/// One chat request through the gateway: the worker that answered.
fn ask(gw: &Node, i: usize) -> String {
    let mut b = chat(&format!("Write one sentence about the number {i}."));
    b["max_tokens"] = json!(24);
    let (status, v) = gw.post("/v1/chat/completions", &b);
    assert_eq!(status, 200, "{v}");
    assert!(v["agora"]["receipt"].is_object(), "{v}");
    v["agora"]["workers"][0].as_str().unwrap().to_string()
}

#[test]
fn validators_catch_a_cheating_worker_and_the_gateway_routes_around_it() {
    // The validator's key exists before the gateway starts: the gateway names it as the
    // validator it trusts (and releases transcripts to).
    let vhome = common::temp_home();
    let validator_id = common::peer_id_of(&vhome);
    let net = LogNet::start();
    let (log, vkey) = (net.log.url.clone(), net.log.vkey.clone());
    let gw = Node::start(&args(&[
        &[
            "--no-worker",
            "--no-mdns",
            "--log-url",
            &log,
            "--log-key",
            &vkey,
            "--trust-validator",
            &validator_id,
        ],
        LOOPBACK,
    ]));
    let boot = gw.p2p[0].clone();
    // An honest worker that is also the validator (it needs the model to re-check answers).
    let validator = Node::start_in(
        vhome,
        &args(&[
            SMALL,
            LOOPBACK,
            &[
                "--bootstrap",
                &boot,
                "--validator",
                "--log-url",
                &log,
                "--log-key",
                &vkey,
            ],
        ]),
    );
    let honest = Node::start(&args(&[
        SMALL,
        LOOPBACK,
        &["--no-gateway", "--bootstrap", &boot],
    ]));
    let cheater = Node::start(&args(&[
        SMALL,
        LOOPBACK,
        &[
            "--no-gateway",
            "--bootstrap",
            &boot,
            "--cheat",
            "perturb-layer:15",
        ],
    ]));
    wait_workers(&gw, 3);
    // Two gateways that only listen: one acts on the validator's verdicts, the other only on a
    // key that validates nothing (the honest worker's).
    let listener = |trust: &str| {
        Node::start(&args(&[
            &[
                "--no-worker",
                "--no-mdns",
                "--bootstrap",
                &boot,
                "--trust-validator",
                trust,
            ],
            LOOPBACK,
        ]))
    };
    let trusting = listener(&validator.peer_id);
    let distrusting = listener(&honest.peer_id);
    wait_workers(&trusting, 3);
    wait_workers(&distrusting, 3);

    let mut to_cheater = 0;
    let mut caught_after = None;
    for i in 1..=300 {
        if ask(&gw, i) == cheater.peer_id {
            to_cheater += 1;
        }
        if reputation(&gw, &cheater.peer_id).1 > 0 {
            caught_after = Some(i);
            break;
        }
    }
    let Some(n) = caught_after else {
        panic!(
            "300 requests ({to_cheater} answered by the cheater) and no verdict against it reached the gateway"
        )
    };
    println!(
        "the cheater was caught after {n} requests, {to_cheater} of which it answered (validator checks 10%)"
    );
    assert!(to_cheater > 0);

    // From now on the cheater gets nothing, and everyone else keeps answering.
    for i in 0..20 {
        assert_ne!(
            ask(&gw, 1000 + i),
            cheater.peer_id,
            "request {i} after the verdict still went to the cheater"
        );
    }
    for w in [&validator, &honest] {
        let (_, rejected) = reputation(&gw, &w.peer_id);
        assert_eq!(rejected, 0, "honest worker {} was condemned", w.peer_id);
    }
    // The verdict reached the listening gateways too; only the one that trusts its validator
    // acts on it.
    let t0 = Instant::now();
    while reputation(&trusting, &cheater.peer_id).1 == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the gateway that trusts the validator never heard its verdict"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        reputation(&distrusting, &cheater.peer_id),
        (0, 0),
        "a gateway acted on a verdict of a validator it does not trust"
    );
    // `agora nodes` shows it.
    let out = common::agora()
        .args(["nodes", "--url", &gw.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&cheater.peer_id))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("REJECTED"), "{text}");
    let v: Value = gw.get("/agora/v1/nodes").1;
    assert!(v["peers"].is_array());

    credit::ledger_matches_a_hand_count(&net, &log, &validator_id, &cheater.peer_id);
}

/// A log with one witness (real processes): the community's log.
struct LogNet {
    dir: tempfile::TempDir,
    log: tlog_common::Server,
    _witness: tlog_common::Server,
    /// The community's log policy (log line with its URL, witness, quorum).
    policy: std::path::PathBuf,
}

impl LogNet {
    fn start() -> LogNet {
        let dir = tempfile::tempdir().unwrap();
        let (lhome, whome) = (dir.path().join("log"), dir.path().join("witness"));
        let id = |h: &std::path::Path, key: &str| {
            tlog_common::init_home(h);
            tlog_common::ok(&["id", "--home", h.to_str().unwrap()])
                .lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
                .unwrap()
        };
        let (lvkey, wvkey) = (id(&lhome, "vkey"), id(&whome, "witness-vkey"));
        let witness = tlog_common::Server::start(
            &[
                "witness",
                "serve",
                "--home",
                whome.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--log-key",
                &lvkey,
            ],
            &dir.path().join("witness.err"),
        );
        let lp = dir.path().join("log-policy");
        std::fs::write(
            &lp,
            format!("witness w1 {wvkey} {}\nquorum w1\n", witness.url),
        )
        .unwrap();
        let log = tlog_common::Server::start(
            &[
                "log",
                "serve",
                "--home",
                lhome.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--interval",
                "250ms",
                "--policy",
                lp.to_str().unwrap(),
                "--no-quotas",
            ],
            &dir.path().join("log.err"),
        );
        let policy = dir.path().join("community-policy");
        std::fs::write(
            &policy,
            format!("log {lvkey} {}\nwitness w1 {wvkey}\nquorum w1\n", log.url),
        )
        .unwrap();
        LogNet {
            dir,
            log,
            _witness: witness,
            policy,
        }
    }
}

mod credit {
    use super::LogNet;
    use agora_core::Envelope;
    use agora_core::statement::Statement;
    use serde_json::Value;
    use std::collections::{BTreeMap, HashSet};
    use std::path::Path;

    fn agora(home: &Path, args: &[&str]) -> String {
        let o = super::common::agora()
            .env("AGORA_HOME", home)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "agora {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn ledger_matches_a_hand_count(net: &LogNet, log: &str, member: &str, cheater: &str) {
        // The manifest: the default model trained on two datasets, weights 3 and 1.
        let publisher = super::common::temp_home();
        let p = publisher.path();
        agora(p, &["init"]);
        for (name, who) in [("stories", "alice=Alice"), ("poems", "bob=Bob")] {
            let f = p.join(format!("{name}.txt"));
            std::fs::write(&f, format!("a {name} line\n")).unwrap();
            agora(
                p,
                &[
                    "dataset",
                    "add",
                    f.to_str().unwrap(),
                    "--name",
                    name,
                    "--license",
                    "CC0-1.0",
                    "--source",
                    "test",
                    "--contributor",
                    who,
                    "--log",
                    log,
                ],
            );
        }
        let mix = p.join("MIX.toml");
        std::fs::write(
            &mix,
            "license = \"Apache-2.0\"\n[[dataset]]\nname = \"stories@1\"\nweight = 3.0\n[[dataset]]\nname = \"poems@1\"\nweight = 1.0\n",
        )
        .unwrap();
        let published = agora(
            p,
            &[
                "model",
                "publish",
                super::common::MODEL,
                "--mix",
                mix.to_str().unwrap(),
                "--log",
                log,
                "--policy",
                net.policy.to_str().unwrap(),
            ],
        );
        // Two machines of the community (the validator is its member).
        let homes: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let policy = net.policy.to_str().unwrap();
        agora(
            homes[0].path(),
            &[
                "init",
                "--network",
                "credit",
                "--member",
                member,
                "--log-policy",
                policy,
            ],
        );
        std::fs::copy(
            homes[0].path().join("genesis.toml"),
            homes[1].path().join("genesis.toml"),
        )
        .unwrap();
        // Wait until the manifest is under a checkpoint, then fix the period's end.
        let manifest: u64 = published
            .lines()
            .find(|l| l.contains("manifest logged at"))
            .and_then(|l| l.split(" entry ").nth(1))
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no manifest index in: {published}"));
        let size = super::tlog_common::wait_for(
            "the manifest under a checkpoint",
            std::time::Duration::from_secs(20),
            || super::tlog_common::checkpoint_size(log).filter(|&s| s > manifest),
        );
        let to = size.to_string();
        let ledgers: Vec<Value> = homes
            .iter()
            .map(|h| {
                serde_json::from_str(&agora(h.path(), &["credit", "--to", &to, "--json"])).unwrap()
            })
            .collect();
        assert_eq!(ledgers[0], ledgers[1], "two machines, two ledgers");
        let l = &ledgers[0];

        // By hand, from the entries.
        let client = agora_api::tlog::LogClient::new(log);
        let mut receipts = Vec::new();
        let mut rejected = HashSet::new();
        for i in 0..size {
            let e = client.entry(i, size).unwrap();
            let Ok(env) = Envelope::from_json(&e) else {
                continue;
            };
            let Ok((signers, st)) = Statement::open(&env) else {
                continue;
            };
            match st {
                Statement::Receipt(r) if signers.contains(&r.worker) => receipts.push((
                    agora_core::statement::Sha256::of(&env.payload),
                    r.worker.to_string(),
                    u64::from(r.completion_tokens - r.resumed),
                )),
                Statement::Verdict(v) if !v.accept && v.validator.to_string() == member => {
                    rejected.insert(v.receipt);
                }
                _ => {}
            }
        }
        let mut compute: BTreeMap<String, u64> = BTreeMap::new();
        let (mut total, mut cheater_rejected) = (0u64, 0u64);
        for (id, worker, tokens) in &receipts {
            if rejected.contains(id) {
                assert_eq!(worker, cheater, "an honest worker's receipt was rejected");
                cheater_rejected += 1;
                continue;
            }
            *compute.entry(worker.clone()).or_default() += tokens;
            total += tokens;
        }
        assert!(cheater_rejected > 0, "no rejected receipt in the log");
        // 3:1 in millionths; the token left over goes to the larger remainder.
        let (a, b) = (total * 3 / 4, total / 4);
        let (ra, rb) = (total * 3_000_000 % 4_000_000, total * 1_000_000 % 4_000_000);
        let (alice, bob) = match total - a - b {
            0 => (a, b),
            _ if ra >= rb => (a + 1, b),
            _ => (a, b + 1),
        };
        let lines: BTreeMap<String, (u64, u64)> = l["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["key"].as_str().unwrap().to_string(),
                    (x["compute"].as_u64().unwrap(), x["data"].as_u64().unwrap()),
                )
            })
            .collect();
        let mut want: BTreeMap<String, (u64, u64)> =
            compute.iter().map(|(k, &c)| (k.clone(), (c, 0))).collect();
        want.insert("alice".into(), (0, alice));
        want.insert("bob".into(), (0, bob));
        want.retain(|_, (c, d)| *c + *d > 0);
        assert_eq!(lines, want, "the ledger is not the hand count");
        assert_eq!(l["rejected"].as_u64(), Some(cheater_rejected));
        assert_eq!(l["ledger"]["unattributed"].as_u64(), Some(0));
        println!(
            "credit: {} tokens of {} receipts; {} of the cheater's receipts rejected and not credited; alice {alice}, bob {bob}",
            total,
            receipts.len(),
            cheater_rejected
        );

        // A contributor's proof of their line checks on its own; a changed line does not.
        let proof = agora(homes[1].path(), &["credit", "prove", "alice", "--to", &to]);
        let f = net.dir.path().join("alice.json");
        std::fs::write(&f, &proof).unwrap();
        let out = agora(homes[1].path(), &["credit", "check", f.to_str().unwrap()]);
        assert!(out.starts_with("OK: alice"), "{out}");
        let mut v: Value = serde_json::from_str(&proof).unwrap();
        v["line"]["data"] = Value::from(alice + 1);
        std::fs::write(&f, v.to_string()).unwrap();
        let o = super::common::agora()
            .args(["credit", "check", f.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!o.status.success(), "a changed line was accepted");
    }
}
