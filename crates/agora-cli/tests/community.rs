//! A community decides its data mix: five members with a genesis naming them, a log and a
//! witness (real processes on loopback), two datasets logged and proposed as a mix, votes by
//! four members (one changes its vote), and votes that must not count (a non-member's, one cast
//! for another network, one signed by someone else than its voter, a late one). Two members
//! tally on their own and log byte-identical decisions; a hand-forged decision is caught and
//! turned into evidence anyone can check; the default model published with the decision shows it
//! in `agora model provenance`. Then the period's credit ledger: two machines compute the same
//! one, and a contributor's proof of their line checks on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod tlog_common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use agora_core::Identity;
use agora_core::dsse::Envelope;
use agora_core::statement::{Choice, Counts, Decision, Statement, Vote};
use serde_json::Value;
use tlog_common::{Server, post, wait_for};

fn run(home: &Path, args: &[&str]) -> Output {
    common::agora()
        .env("AGORA_HOME", home)
        .env("RUST_BACKTRACE", "0")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(home: &Path, args: &[&str]) -> String {
    let o = run(home, args);
    assert!(o.status.success(), "agora {args:?}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn identity(home: &Path) -> Identity {
    Identity::from_key_file(&std::fs::read_to_string(home.join("key")).unwrap()).unwrap()
}

/// The index in a "… entry N …" line (the last such).
fn entry_index(out: &str, what: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?} in:\n{out}"));
    let after = line.rsplit("entry ").next().unwrap();
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// An entry of the log, as its bundle serves it (once a checkpoint holds it).
fn entry(log: &str, index: u64) -> Vec<u8> {
    let size = wait_for(
        "the entry under a checkpoint",
        Duration::from_secs(20),
        || tlog_common::checkpoint_size(log).filter(|&s| s > index),
    );
    agora_api::tlog::LogClient::new(log)
        .entry(index, size)
        .unwrap()
}

fn post_statement(log: &str, st: &Statement, by: &Identity) -> u64 {
    let (status, _, body) = post(&format!("{log}/add"), st.sign(by).to_json().as_bytes());
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{body}");
    body.trim().parse().unwrap()
}

struct Community {
    _dir: tempfile::TempDir,
    homes: Vec<PathBuf>,
    _homes: Vec<tempfile::TempDir>,
    log: Server,
    _witness: tlog_common::Witness,
    network: String,
}

fn community(period: u64) -> Community {
    let dir = tempfile::tempdir().unwrap();
    // Member 0 publishes the model: its home shares the model store.
    let mut tmp = vec![common::temp_home()];
    for _ in 1..5 {
        tmp.push(tempfile::tempdir().unwrap());
    }
    let homes: Vec<PathBuf> = tmp.iter().map(|t| t.path().to_path_buf()).collect();
    for h in &homes {
        ok(h, &["init"]);
    }
    let lhome = dir.path().join("log");
    ok(&lhome, &["init"]);
    let log_vkey = ok(&lhome, &["id"])
        .lines()
        .find_map(|l| l.strip_prefix("vkey").map(|v| v.trim().to_string()))
        .unwrap();
    let witness = tlog_common::start_witness(dir.path(), &log_vkey);
    let (witness_vkey, log_policy) = (witness.vkey.clone(), witness.policy.clone());
    let log = Server::start(
        &[
            "log",
            "serve",
            "--home",
            lhome.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "200ms",
            "--policy",
            log_policy.to_str().unwrap(),
            "--no-quotas",
        ],
        &dir.path().join("log.err"),
    );
    let policy = dir.path().join("community-policy");
    std::fs::write(
        &policy,
        format!(
            "log {log_vkey} {}\nwitness w1 {witness_vkey}\nquorum w1\n",
            log.url
        ),
    )
    .unwrap();
    let mut init = vec![
        "init".to_string(),
        "--network".into(),
        "testland".into(),
        "--log-policy".into(),
        policy.to_str().unwrap().into(),
        "--voting-period".into(),
        period.to_string(),
    ];
    for h in &homes {
        init.push("--member".into());
        init.push(identity(h).peer_id().to_string());
    }
    let refs: Vec<&str> = init.iter().map(String::as_str).collect();
    let out = ok(&homes[0], &refs);
    assert!(out.contains("with governance rules"), "{out}");
    let genesis = std::fs::read(homes[0].join("genesis.toml")).unwrap();
    for h in &homes[1..] {
        std::fs::write(h.join("genesis.toml"), &genesis).unwrap();
    }
    let network = out
        .lines()
        .find(|l| l.contains("(network"))
        .and_then(|l| l.split(", id ").nth(1))
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    assert_eq!(network.len(), 64, "{out}");
    Community {
        _dir: dir,
        homes,
        _homes: tmp,
        log,
        _witness: witness,
        network,
    }
}

/// Two small datasets with contributors, logged; a mix of them (weights 3 and 1).
fn datasets(c: &Community) -> PathBuf {
    let home = &c.homes[0];
    for (name, who) in [("stories", "alice=Alice"), ("poems", "bob=Bob")] {
        let f = home.join(format!("{name}.txt"));
        std::fs::write(&f, format!("one {name} line\nanother {name} line\n")).unwrap();
        ok(
            home,
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
                &c.log.url,
            ],
        );
    }
    let mix = home.join("MIX.toml");
    std::fs::write(
        &mix,
        "license = \"Apache-2.0\"\n\n[[dataset]]\nname = \"stories@1\"\nweight = 3.0\n\n[[dataset]]\nname = \"poems@1\"\nweight = 1.0\n",
    )
    .unwrap();
    mix
}

fn tally_json(home: &Path, p: u64) -> Value {
    let o = run(home, &["tally", &p.to_string(), "--json"]);
    assert!(
        o.status.code() == Some(0) || o.status.code() == Some(3),
        "{}",
        text(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn reasons(v: &Value) -> Vec<(u64, String)> {
    v["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_community_decides_its_mix_and_a_forged_decision_is_caught() {
    let c = community(3);
    let h = &c.homes;
    let log = c.log.url.clone();
    let mix = datasets(&c);

    // A non-member may not propose; a member may.
    let outsider_home = tempfile::tempdir().unwrap();
    ok(outsider_home.path(), &["init"]);
    std::fs::copy(
        h[0].join("genesis.toml"),
        outsider_home.path().join("genesis.toml"),
    )
    .unwrap();
    let o = run(
        outsider_home.path(),
        &["propose", "--title", "Mine", "--mix", mix.to_str().unwrap()],
    );
    assert!(
        !o.status.success() && text(&o).contains("only members may propose"),
        "{}",
        text(&o)
    );
    let out = ok(
        &h[0],
        &[
            "propose",
            "--title",
            "Adopt stories and poems",
            "--mix",
            mix.to_str().unwrap(),
        ],
    );
    let p = entry_index(&out, "proposal logged");
    let pid = Envelope::from_json(&entry(&log, p)).unwrap();
    let pid = agora_core::statement::Sha256::of(&pid.payload);

    // Four members vote; member 0 changes its mind (its last vote counts).
    let ps = p.to_string();
    ok(&h[0], &["vote", &ps, "no"]);
    ok(&h[1], &["vote", &ps, "yes", "--reason", "more stories"]);
    ok(&h[2], &["vote", &ps, "yes"]);
    ok(&h[3], &["vote", &ps, "abstain"]);
    ok(&h[0], &["vote", &ps, "yes"]);
    // The CLI refuses a non-member's vote; one logged anyway is not counted.
    let o = run(outsider_home.path(), &["vote", &ps, "yes"]);
    assert!(
        !o.status.success() && text(&o).contains("not a member"),
        "{}",
        text(&o)
    );
    let outsider = identity(outsider_home.path());
    let m4 = identity(&h[4]);
    let vote = |network: &str, voter: &Identity| {
        Statement::Vote(Vote {
            network: network.into(),
            proposal: pid,
            choice: Choice::No,
            reason: None,
            voter: voter.peer_id(),
            time: 1,
        })
    };
    let non_member = post_statement(&log, &vote(&c.network, &outsider), &outsider);
    let other_network = post_statement(&log, &vote(&"cd".repeat(32), &m4), &m4);
    let not_its_voter = post_statement(&log, &vote(&c.network, &m4), &outsider);

    // While open: a live count (once a checkpoint holds the votes).
    wait_for(
        "the votes under a checkpoint",
        Duration::from_secs(20),
        || (tlog_common::checkpoint_size(&log)? > not_its_voter).then_some(()),
    );
    let live = tally_json(&h[1], p);
    assert!(live["closed_at"].is_null(), "{live}");
    assert_eq!(live["counts"]["yes"], 3, "{live}");

    // After the deadline the next entry closes the vote (here: a credit ledger).
    std::thread::sleep(Duration::from_secs(4));
    ok(&h[1], &["credit", "--sign"]);
    let closed = wait_for("the vote to close", Duration::from_secs(20), || {
        let v = tally_json(&h[1], p);
        (!v["closed_at"].is_null()).then_some(v)
    });
    // Voting now is refused; a vote logged anyway is late.
    let o = run(&h[4], &["vote", &ps, "no"]);
    assert!(
        !o.status.success() && text(&o).contains("closed"),
        "{}",
        text(&o)
    );
    let late = post_statement(&log, &vote(&c.network, &m4), &m4);
    wait_for(
        "the late vote under a checkpoint",
        Duration::from_secs(20),
        || (tlog_common::checkpoint_size(&log)? > late).then_some(()),
    );

    // Two members tally independently and log the same decision, byte for byte.
    let out1 = ok(&h[1], &["tally", &ps, "--sign"]);
    let first = entry_index(&out1, "decision signed");
    wait_for(
        "the decision under a checkpoint",
        Duration::from_secs(20),
        || (tlog_common::checkpoint_size(&log)? > first).then_some(()),
    );
    let out2 = ok(&h[2], &["tally", &ps, "--sign"]);
    assert!(
        out2.contains("agrees with this count, byte for byte"),
        "{out2}"
    );
    let (d1, d2) = (
        entry_index(&out1, "decision signed"),
        entry_index(&out2, "decision signed"),
    );
    let e1 = Envelope::from_json(&entry(&log, d1)).unwrap();
    let e2 = Envelope::from_json(&entry(&log, d2)).unwrap();
    assert_eq!(e1.payload, e2.payload, "two talliers, two decisions");
    let (signers, st) = Statement::open(&e1).unwrap();
    assert_eq!(signers, vec![identity(&h[1]).peer_id()]);
    let Statement::Decision(decision) = st else {
        panic!("not a decision")
    };
    assert_eq!(
        decision.counts,
        Counts {
            yes: 3,
            no: 0,
            abstain: 1
        }
    );
    assert_eq!((decision.eligible, decision.voters), (5, 4));
    assert!(decision.quorum_met && decision.adopted);
    assert_eq!(
        decision.closed_at.size,
        closed["closed_at"].as_u64().unwrap()
    );

    // Every refusal with its reason.
    let v = tally_json(&h[3], p);
    let mut why = reasons(&v);
    why.sort();
    let superseded: Vec<&(u64, String)> = why.iter().filter(|(_, r)| r == "superseded").collect();
    assert_eq!(superseded.len(), 1, "{why:?}");
    for (i, r) in [
        (non_member, "not-a-member"),
        (other_network, "other-network"),
        (not_its_voter, "bad-signature"),
        (late, "late"),
    ] {
        assert!(
            why.contains(&(i, r.to_string())),
            "entry {i} should be {r}: {why:?}"
        );
    }
    assert_eq!(why.len(), 5, "{why:?}");

    // A forged decision (other counts) is caught, and the evidence checks on its own.
    let forged = Statement::Decision(Decision {
        counts: Counts {
            yes: 5,
            no: 0,
            abstain: 0,
        },
        ..decision.clone()
    });
    let fi = post_statement(&log, &forged, &outsider);
    wait_for(
        "the forged decision under a checkpoint",
        Duration::from_secs(20),
        || (tlog_common::checkpoint_size(&log)? > fi).then_some(()),
    );
    let o = run(&h[3], &["tally", &ps, "--sign"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains(&format!("decision at entry {fi}")) && out.contains("DISAGREES"),
        "{out}"
    );
    let ev = entry_index(&out, "evidence against the decision");
    let (_, st) = Statement::open(&Envelope::from_json(&entry(&log, ev)).unwrap()).unwrap();
    let Statement::Evidence(ev) = st else {
        panic!("not evidence")
    };
    match ev.verify(None).unwrap() {
        agora_core::statement::Proven::WrongDecision { tallier, proposal } => {
            assert_eq!(tallier, outsider.peer_id());
            assert_eq!(proposal.index, p);
        }
        other => panic!("{other:?}"),
    }

    // The model published with the decision shows it; with another mix it is refused.
    let policy = c._dir.path().join("community-policy");
    let trust = ["--log", log.as_str(), "--policy", policy.to_str().unwrap()];
    let other_mix = h[0].join("OTHER.toml");
    std::fs::write(
        &other_mix,
        "license = \"Apache-2.0\"\n\n[[dataset]]\nname = \"stories@1\"\nweight = 1.0\n",
    )
    .unwrap();
    let d1s = d1.to_string();
    let o = run(
        &h[0],
        &[
            &[
                "model",
                "publish",
                common::MODEL,
                "--mix",
                other_mix.to_str().unwrap(),
                "--decision",
                &d1s,
            ][..],
            &trust[..],
        ]
        .concat(),
    );
    assert!(
        !o.status.success() && text(&o).contains("not this one"),
        "{}",
        text(&o)
    );
    let o = run(
        &h[0],
        &[
            &[
                "model",
                "publish",
                common::MODEL,
                "--mix",
                mix.to_str().unwrap(),
                "--decision",
                &d1s,
            ][..],
            &trust[..],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        &h[0],
        &[&["model", "provenance", common::MODEL][..], &trust[..]].concat(),
    );
    let out = text(&o);
    assert!(
        out.contains(&format!("in decision entry {d1} on proposal {p}"))
            && out.contains("yes 3 / no 0 / abstain 1 of 5 eligible, quorum met"),
        "{out}"
    );
    assert_eq!(o.status.code(), Some(0), "{out}");

    // The period's credit: the same ledger on two machines, and a line's proof checks alone.
    let size = tlog_common::checkpoint_size(&log).unwrap().to_string();
    let l1: Value = serde_json::from_str(&ok(&h[0], &["credit", "--to", &size, "--json"])).unwrap();
    let l2: Value = serde_json::from_str(&ok(&h[4], &["credit", "--to", &size, "--json"])).unwrap();
    assert_eq!(l1["ledger"], l2["ledger"]);
    assert_eq!(
        l1["ledger"]["to"]["size"].as_u64(),
        Some(size.parse().unwrap())
    );
    // A ledger signed for the period agrees with another machine's count; a forged one does not.
    let out = ok(&h[0], &["credit", "--to", &size, "--sign"]);
    let li = entry_index(&out, "ledger signed");
    let _ = entry(&log, li);
    let out = ok(&h[4], &["credit", "--to", &size]);
    assert!(
        out.contains(&format!("ledger at entry {li}"))
            && out.contains("agrees with this computation, byte for byte"),
        "{out}"
    );
    let mut forged: agora_core::statement::Ledger =
        serde_json::from_value(l1["ledger"].clone()).unwrap();
    forged.compute += 1000;
    let fl = post_statement(&log, &Statement::Ledger(forged), &outsider);
    let _ = entry(&log, fl);
    let o = run(&h[4], &["credit", "--to", &size]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("ledger at entry {fl}")) && text(&o).contains("DISAGREES"),
        "{}",
        text(&o)
    );
}

/// A gateway that keeps the community's log (cosigned by a witness) serves its proposals, live
/// tallies and credit; bad requests get precise errors.
#[test]
fn a_node_serves_proposals_tallies_and_credit() {
    let dir = tempfile::tempdir().unwrap();
    let node_home = common::temp_home();
    let member = tempfile::tempdir().unwrap();
    for h in [node_home.path(), member.path()] {
        ok(h, &["init"]);
    }
    let log_vkey = ok(node_home.path(), &["id"])
        .lines()
        .find_map(|l| l.strip_prefix("vkey").map(|v| v.trim().to_string()))
        .unwrap();
    let witness = tlog_common::start_witness(dir.path(), &log_vkey);
    let (witness_vkey, witnesses) = (&witness.vkey, &witness.policy);
    let policy = dir.path().join("policy");
    std::fs::write(
        &policy,
        format!("log {log_vkey}\nwitness w1 {witness_vkey}\nquorum w1\n"),
    )
    .unwrap();
    let m = identity(member.path()).peer_id().to_string();
    ok(
        node_home.path(),
        &[
            "init",
            "--network",
            "web",
            "--member",
            &m,
            "--log-policy",
            policy.to_str().unwrap(),
            "--voting-period",
            "3600",
        ],
    );
    std::fs::copy(
        node_home.path().join("genesis.toml"),
        member.path().join("genesis.toml"),
    )
    .unwrap();
    let node = common::Node::start_in(
        node_home,
        &[
            "--no-worker",
            "--no-mdns",
            "--serve-log",
            "--log-witnesses",
            witnesses.to_str().unwrap(),
        ],
    );
    let log = format!("{}/log", node.url);

    let rules = member.path().join("rules.toml");
    let genesis = std::fs::read_to_string(member.path().join("genesis.toml")).unwrap();
    std::fs::write(&rules, genesis.split("[governance]\n").nth(1).unwrap()).unwrap();
    let out = ok(
        member.path(),
        &[
            "propose",
            "--title",
            "Keep the rules",
            "--rules",
            rules.to_str().unwrap(),
            "--log",
            &log,
        ],
    );
    let p = entry_index(&out, "proposal logged");
    ok(
        member.path(),
        &["vote", &p.to_string(), "yes", "--log", &log],
    );
    wait_for(
        "the vote under a checkpoint",
        Duration::from_secs(20),
        || (tlog_common::checkpoint_size(&log)? > p + 1).then_some(()),
    );

    let (status, list) = node.get("/agora/v1/proposals");
    assert_eq!(status, 200, "{list}");
    let listed = &list["proposals"][0];
    assert_eq!(
        (listed["index"].as_u64(), listed["kind"].as_str()),
        (Some(p), Some("rules")),
        "{list}"
    );
    assert_eq!(listed["title"], "Keep the rules");
    for id in [p.to_string(), listed["id"].as_str().unwrap().to_string()] {
        let (status, t) = node.get(&format!("/agora/v1/proposals/{id}"));
        assert_eq!(status, 200, "{t}");
        assert_eq!(t["counts"]["yes"], 1, "{t}");
        assert!(t["closed_at"].is_null(), "{t}");
        assert_eq!(t["eligible"], 1);
    }
    let (status, c) = node.get("/agora/v1/credit?period=0..");
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["ledger"]["from"], 0);
    assert!(c["lines"].as_array().unwrap().is_empty(), "{c}");
    let (status, e) = node.get("/agora/v1/credit?period=9..3");
    assert_eq!(status, 400, "{e}");
    let (status, e) = node.get(&format!("/agora/v1/proposals/{}", p + 1));
    assert_eq!(status, 404, "{e}");
    let (status, e) = node.get(&format!("/agora/v1/proposals/{}", "ab".repeat(32)));
    assert_eq!(status, 404, "{e}");
}
