//! A devnet with a cheater: a gateway that runs the log, three workers of which one serves a
//! perturbed model while claiming the real one, and a validator checking the default share
//! (10 %) of receipts. The validator must catch the cheater, the gateway must stop routing to
//! it, and no honest worker may be condemned; of two more gateways that only listen, the one
//! trusting that validator (`--trust-validator`) acts on its verdict and the one trusting
//! another key does not. Prints after how many requests it was caught.
//!
//! Needs the `cheat` feature: `cargo nextest run --release -p agora-cli --features cheat --test
//! cheat_devnet` (scripts/test.sh runs it).
#![allow(clippy::unwrap_used)]

mod common;

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
    let gw = Node::start(&args(&[
        &[
            "--no-worker",
            "--no-mdns",
            "--serve-log",
            "--trust-validator",
            &validator_id,
        ],
        LOOPBACK,
    ]));
    let boot = gw.p2p[0].clone();
    let log = format!("{}/log", gw.url);
    let vkey = gw
        .log_vkey
        .clone()
        .expect("the gateway prints its log's key");
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
}
