//! The network under attack: real `agora` processes on loopback, and a hostile peer that this
//! test runs itself — a real libp2p peer with its own fresh key, speaking Agora's protocols
//! (agora-net, agora-node's message types), no mocks. Each test mounts one attack and asserts
//! that it is refused or has no effect, that nobody crashed, that memory stayed under a bound,
//! that no honest worker was condemned, and that a normal request still succeeds afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use agora_core::statement::Verdict;
use agora_core::{Identity, Sha256, Statement};
use agora_engine::{FinishReason, JobSpec, PromptSpec, SamplingParams};
use agora_net::{FramedStream, NetConfig, NetHandle, NodeStatus, PeerId, ServedModel};
use agora_node::proto::{GenerateRequest, TranscriptRequest, WorkerFrame};
use agora_node::transcript::{Output, TRANSCRIPT_VERSION, Transcript};
use common::{Node, args, chat, content, wait_workers};
use futures::StreamExt;
use serde_json::{Value, json};

const LOOPBACK: &[&str] = &["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"];
/// Small workers: one thread each, so several processes share two cores.
const SMALL: &[&str] = &["--threads", "1", "--slots", "2", "--ctx", "512"];
/// Resident memory any node of these tests must stay under (the model is ~100 MB, the KV cache
/// of 2 × 512 tokens a few MB): far above normal, far below what an unbounded queue would eat.
const RSS_BOUND: u64 = 1 << 30;

/// A hostile peer: a real libp2p node with a fresh key, driven by the test.
struct Hostile {
    rt: tokio::runtime::Runtime,
    net: NetHandle,
    key: Identity,
}

impl Hostile {
    fn join(boot: &str) -> Hostile {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let seed: [u8; 32] = rand::random();
        let key = Identity::from_seed(&seed);
        let home = tempfile::tempdir().unwrap();
        let network = agora_node::network::network_id(home.path(), None).unwrap();
        let mut cfg = NetConfig::new(seed, network);
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        cfg.bootstrap = vec![boot.parse().unwrap()];
        cfg.mdns = false;
        let net = rt.block_on(agora_net::start(cfg)).unwrap().handle;
        let target: PeerId = boot.rsplit('/').next().unwrap().parse().unwrap();
        let t0 = Instant::now();
        while !net
            .peers()
            .iter()
            .any(|p| p.peer_id == target && p.connected)
        {
            assert!(t0.elapsed() < Duration::from_secs(20), "could not connect");
            std::thread::sleep(Duration::from_millis(50));
        }
        Hostile { rt, net, key }
    }

    /// Advertises itself as a worker of `digest` with absurd capacity and speed.
    fn advertise_worker(&self, name: &str, digest: &str) {
        let net = self.net.clone();
        let status = NodeStatus {
            version: "0.1.0".into(),
            worker: true,
            gateway: false,
            models: vec![ServedModel {
                name: name.into(),
                digest: digest.into(),
                n_ctx: 512,
                unverifiable: false,
            }],
            slots: 1_000_000,
            free_slots: 1_000_000,
            queue: 0,
            tokens_per_second: 1e12,
            time_ms: 0,
            conversations: Vec::new(),
        };
        self.rt.spawn(async move {
            loop {
                net.set_status(status.clone());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// Advertises itself as a gateway.
    fn advertise_gateway(&self) {
        let net = self.net.clone();
        self.rt.spawn(async move {
            loop {
                net.set_status(NodeStatus {
                    version: "0.1.0".into(),
                    gateway: true,
                    ..Default::default()
                });
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// Opens a generation stream to `peer` and sends `req`; returns the first frame back.
    fn generate(&self, peer: &str, req: &GenerateRequest) -> Option<WorkerFrame> {
        let peer: PeerId = peer.parse().unwrap();
        self.rt.block_on(async {
            let mut s = match self
                .net
                .open(peer, self.net.protocols().generate.clone())
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("hostile: cannot open a stream: {e}");
                    return None;
                }
            };
            if let Err(e) = s.send(req).await {
                eprintln!("hostile: cannot send: {e}");
                return None;
            }
            match s.recv_timeout::<WorkerFrame>(Duration::from_secs(30)).await {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("hostile: no answer: {e}");
                    None
                }
            }
        })
    }

    /// Asks `peer` for a transcript.
    fn transcript(&self, peer: &str, req: &TranscriptRequest) -> Option<Transcript> {
        let peer: PeerId = peer.parse().unwrap();
        self.rt.block_on(async {
            let mut s = self
                .net
                .open(peer, self.net.protocols().transcript.clone())
                .await
                .ok()?;
            s.send(req).await.ok()?;
            s.recv_timeout::<Option<Transcript>>(Duration::from_secs(10))
                .await
                .ok()
                .flatten()
                .flatten()
        })
    }
}

fn job(text: &str, max_tokens: u32) -> JobSpec {
    JobSpec {
        prompt: PromptSpec::Chat(vec![agora_engine::ChatMessage {
            role: "user".into(),
            content: text.into(),
        }]),
        params: SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 0,
            seed: 11,
        },
        max_tokens: Some(max_tokens),
        stop: vec![],
        ignore_eos: false,
        logit_bias: Default::default(),
        fingerprint: false,
    }
}

/// The model's `sha256:` digest as the gateway lists it.
fn digest(gw: &Node) -> String {
    let (_, v) = gw.get("/v1/models");
    v["data"][0]["agora"]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Alive, under the memory bound, and answering a normal request.
fn healthy(node: &mut Node, gateway: bool) {
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "node {} died",
        node.peer_id
    );
    let rss = node.rss();
    assert!(rss < RSS_BOUND, "node {} uses {rss} bytes", node.peer_id);
    if gateway {
        let mut b = chat("Say hello.");
        b["max_tokens"] = json!(8);
        let (status, v) = node.post("/v1/chat/completions", &b);
        assert_eq!(status, 200, "{v}");
        assert!(!content(&v).is_empty() || v["usage"]["completion_tokens"].as_u64() > Some(0));
    }
}

/// The gateway's reputation record of `peer`.
fn reputation(gw: &Node, peer: &str) -> Value {
    let (_, v) = gw.get("/agora/v1/nodes");
    v["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["peer_id"] == peer))
        .map(|p| p["reputation"].clone())
        .unwrap_or(Value::Null)
}

/// A request with a resume token outside the vocabulary used to abort the worker (llama.cpp
/// threw through Rust); a resume past the context window failed every sequence in the batch.
#[test]
fn hostile_resumes_are_refused_and_the_batch_survives() {
    let mut worker = Node::start(&args(&[SMALL, LOOPBACK]));
    let boot = worker.p2p[0].clone();
    let h = Hostile::join(&boot);
    // An honest request runs while the attacks arrive.
    let mut honest = chat("Write a short poem about the sea.");
    honest["max_tokens"] = json!(60);
    honest["seed"] = json!(5);
    let url = worker.url.clone();
    let honest_req = serde_json::to_vec(&honest).unwrap();
    let running = std::thread::spawn(move || {
        let mut r = common::ureq_agent()
            .post(&format!("{url}/v1/chat/completions"))
            .header("content-type", "application/json")
            .send(&honest_req[..])?;
        let text = r.body_mut().read_to_string()?;
        Ok::<Value, ureq::Error>(serde_json::from_str(&text).unwrap())
    });
    std::thread::sleep(Duration::from_millis(300));
    let model = "smollm2-135m".to_string();
    let cases = [
        (
            "out-of-vocabulary resume token",
            vec![3, u32::MAX - 7, 5],
            40,
        ),
        ("resume as long as the context", vec![42; 600], 40),
        ("resume longer than max_tokens", vec![42; 30], 20),
    ];
    for (what, resume, max_tokens) in cases {
        let req = GenerateRequest {
            model: model.clone(),
            job: job("Hello", max_tokens),
            resume,
        };
        match h.generate(&worker.peer_id, &req) {
            Some(WorkerFrame::Error(e)) => {
                assert_eq!(e.status, 400, "{what}: {e:?}");
            }
            other => panic!("{what}: expected a 400 error frame, got {other:?}"),
        }
    }
    // A logit bias naming a token outside the vocabulary.
    let mut biased = job("Hello", 8);
    biased.logit_bias.insert(10_000_000, 5.0);
    let req = GenerateRequest {
        model,
        job: biased,
        resume: vec![],
    };
    assert!(matches!(
        h.generate(&worker.peer_id, &req),
        Some(WorkerFrame::Error(e)) if e.status == 400
    ));
    // The honest request finished normally, and the worker still serves.
    let v = running.join().unwrap().expect("the honest request failed");
    assert_eq!(v["usage"]["completion_tokens"], json!(60), "{v}");
    healthy(&mut worker, true);
}

/// A fake worker advertising free slots gets a request, streams a bogus token id and hangs up:
/// the gateway (which has the model) cuts it off, penalises it, resumes on its own engine and
/// the client gets a correct answer; a fake worker that streams real tokens and then ends
/// without a receipt has its tokens handed to an honest worker whose receipt says so — and
/// that answer verifies.
#[test]
fn a_fake_worker_is_cut_off_and_the_answer_resumed_honestly() {
    let mut gw = Node::start(&args(&[
        SMALL,
        LOOPBACK,
        // Keys on probation (the fake one) are offered requests first.
        &["--probation-share", "1"],
    ]));
    let boot = gw.p2p[0].clone();
    let digest = digest(&gw);

    // 1. A bogus token id, then the stream is dropped.
    let bogus = Hostile::join(&boot);
    bogus.advertise_worker("smollm2-135m", &digest);
    serve_fake(&bogus, |req| {
        vec![
            WorkerFrame::Accepted {
                model: req.model.clone(),
                prompt_tokens: 1,
            },
            WorkerFrame::Token {
                id: 4_000_000_000,
                index: 0,
                text: "pwned".into(),
            },
        ]
    });
    // Its own engine and the fake one.
    wait_workers(&gw, 2);
    let mut b = chat("Name a colour.");
    b["max_tokens"] = json!(12);
    b["seed"] = json!(3);
    let (status, v) = gw.post("/v1/chat/completions", &b);
    assert_eq!(status, 200, "{v}");
    let workers = v["agora"]["workers"].as_array().unwrap();
    assert_eq!(workers[0], json!(bogus.net.peer_id().to_string()), "{v}");
    assert_eq!(workers.last().unwrap(), &json!(gw.peer_id), "{v}");
    assert!(!content(&v).contains("pwned"), "{v}");
    let rep = reputation(&gw, &bogus.net.peer_id().to_string());
    assert_eq!(rep["violations"], json!(1), "{rep}");
    assert_eq!(rep["routed"], json!(false), "{rep}");
    assert_eq!(rep["delivered_peak"], json!(0), "{rep}");
    // The same request again (the fake one is cut off now) gives the same text: the resumed
    // answer is exactly the uninterrupted one.
    let (_, again) = gw.post("/v1/chat/completions", &b);
    assert_eq!(content(&again), content(&v));

    // 2. Real tokens, then an end without a receipt.
    let liar = Hostile::join(&boot);
    liar.advertise_worker("smollm2-135m", &digest);
    serve_fake(&liar, |req| {
        let mut frames = vec![WorkerFrame::Accepted {
            model: req.model.clone(),
            prompt_tokens: 1,
        }];
        for (i, id) in [504u32, 2158, 30].into_iter().enumerate() {
            frames.push(WorkerFrame::Token {
                id,
                index: i as u32,
                text: String::new(),
            });
        }
        frames.push(WorkerFrame::Done {
            reason: FinishReason::Length,
            prompt_tokens: 1,
            completion_tokens: 3,
            tail: String::new(),
            attestation: None,
        });
        frames
    });
    wait_workers(&gw, 3);
    let mut b = chat("Count to five.");
    b["max_tokens"] = json!(10);
    let (status, v) = gw.post("/v1/chat/completions", &b);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["agora"]["workers"][0],
        json!(liar.net.peer_id().to_string())
    );
    assert!(v["agora"]["tokens"].as_array().unwrap().len() > 3, "{v}");
    assert_eq!(
        v["agora"]["tokens"].as_array().unwrap()[..3],
        [json!(504), json!(2158), json!(30)],
        "{v}"
    );
    // The honest worker's receipt says 3 tokens were handed to it…
    let receipt = receipt_of(&v);
    assert_eq!(receipt["resumed"], json!(3), "{receipt}");
    // …and the answer verifies: it is not held to tokens it did not choose.
    let file = gw.home.path().join("resumed.json");
    save(&v, &file);
    let out = common::agora()
        .env("AGORA_HOME", gw.home.path())
        .args(["verify", file.to_str().unwrap(), "--threads", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ACCEPTED"), "{stdout}");
    let rep = reputation(&gw, &liar.net.peer_id().to_string());
    assert_eq!(rep["routed"], json!(false), "{rep}");
    healthy(&mut gw, true);
}

/// Runs a fake worker on `h`: every generation stream gets `frames(request)`, then closes.
fn serve_fake(h: &Hostile, frames: impl Fn(&GenerateRequest) -> Vec<WorkerFrame> + Send + 'static) {
    let net = h.net.clone();
    let mut incoming = net.accept(net.protocols().generate.clone()).unwrap();
    h.rt.spawn(async move {
        while let Some((_, stream)) = incoming.next().await {
            let mut s: FramedStream = net.framed(stream);
            let Ok(Some(req)) = s
                .recv_timeout::<GenerateRequest>(Duration::from_secs(10))
                .await
            else {
                continue;
            };
            for f in frames(&req) {
                let _ = s.send(&f).await;
            }
            let _ = s.close().await;
        }
    });
}

/// The decoded payload of the receipt in an API response's `agora` object.
fn receipt_of(v: &Value) -> Value {
    use base64::Engine as _;
    let payload = v["agora"]["receipt"]["payload"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Writes what `agora chat --save` writes for a non-streaming response.
fn save(v: &Value, path: &std::path::Path) {
    let a = &v["agora"];
    let t = json!({
        "version": TRANSCRIPT_VERSION,
        "model": v["model"],
        "request": a["request"],
        "salt": a["salt"],
        "output": {"tokens": a["tokens"], "text": content(v), "finish_reason": v["choices"][0]["finish_reason"]},
        "receipt": a["receipt"],
        "proof": a["proof"],
    });
    std::fs::write(path, serde_json::to_vec(&t).unwrap()).unwrap();
}

/// A gossiped rejection signed by a brand-new key used to stop all routing to an honest
/// worker. Now an untrusted rejection counts only once the gateway re-ran the check on the
/// evidence; a "validator" that has none (or sends junk) changes nothing.
#[test]
fn a_verdict_from_a_fresh_key_excludes_nobody() {
    // Requests go to the (new, on probation) worker first while it is routable.
    let mut gw = Node::start(&args(&[SMALL, LOOPBACK, &["--probation-share", "1"]]));
    let boot = gw.p2p[0].clone();
    let mut worker = Node::start(&args(&[
        SMALL,
        LOOPBACK,
        &["--no-gateway", "--bootstrap", &boot],
    ]));
    wait_workers(&gw, 2);
    let h = Hostile::join(&boot);
    // The hostile "validator" answers evidence requests with junk.
    junk_transcripts(&h);
    let worker_key: agora_core::PeerId = worker.peer_id.parse().unwrap();
    for i in 0..5u8 {
        let v = Verdict {
            receipt: Sha256([i; 32]),
            worker: Some(worker_key),
            validator: h.key.peer_id(),
            accept: false,
            stats: Default::default(),
            reason: Some("trust me".into()),
            time: 1,
        };
        h.net
            .publish_verdict(Statement::Verdict(v).sign(&h.key).to_json().into_bytes());
    }
    // Give the gateway time to hear them and try its re-checks.
    let t0 = Instant::now();
    loop {
        let (_, v) = gw.get("/agora/v1/nodes");
        let ignored = v["gateway"]["verdicts_ignored"].as_u64().unwrap_or(0);
        if ignored >= 5 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the verdicts never arrived: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let rep = reputation(&gw, &worker.peer_id);
    assert_eq!(rep["rejected"], json!(0), "{rep}");
    assert_eq!(rep["routed"], json!(true), "{rep}");
    // Requests still reach the worker.
    for i in 0..4 {
        let mut b = chat(&format!("Say {i}."));
        b["max_tokens"] = json!(4);
        let (status, v) = gw.post("/v1/chat/completions", &b);
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["agora"]["workers"][0],
            json!(worker.peer_id),
            "a request avoided the worker after the false verdicts"
        );
    }
    healthy(&mut gw, true);
    healthy(&mut worker, false);
}

/// Answers every transcript request with a junk transcript: a receipt this peer signed itself
/// over a made-up answer (its digests all match, so only the receipt digest can tell).
fn junk_transcripts(h: &Hostile) {
    let net = h.net.clone();
    let key = Identity::from_seed(&h.key.signing_key().to_bytes());
    let mut incoming = net.accept(net.protocols().transcript.clone()).unwrap();
    h.rt.spawn(async move {
        while let Some((_, stream)) = incoming.next().await {
            let mut s: FramedStream = net.framed(stream);
            let Ok(Some(_req)) = s
                .recv_timeout::<TranscriptRequest>(Duration::from_secs(10))
                .await
            else {
                continue;
            };
            let _ = s.send(&Some(junk(&key))).await;
            let _ = s.close().await;
        }
    });
}

/// A transcript whose receipt is validly signed (by `key`) and whose digests all match.
fn junk(key: &Identity) -> Transcript {
    use base64::Engine as _;
    let request = job("Hello", 4);
    let salt = [1u8; 16];
    let tokens = vec![1u32, 2, 3];
    let proof = b"AGPF junk".to_vec();
    let receipt = agora_core::statement::Receipt {
        model: Sha256([0; 32]),
        request: Sha256(agora_verify::request_digest(
            &salt,
            &serde_json::to_vec(&request).unwrap(),
        )),
        output: Sha256(agora_verify::output_digest(&tokens)),
        seed: request.params.seed,
        prompt_tokens: 5,
        completion_tokens: 3,
        proof: Sha256(sha(&proof)),
        worker: key.peer_id(),
        time: 1,
        resumed: 0,
        text: None,
        fingerprint: None,
        unverifiable: false,
    };
    let env = Statement::Receipt(receipt).sign(key);
    Transcript {
        version: TRANSCRIPT_VERSION,
        model: "smollm2-135m".into(),
        request,
        salt: hex::encode(salt),
        output: Output {
            tokens,
            text: "junk".into(),
            finish_reason: FinishReason::Stop,
        },
        receipt: serde_json::from_str(&env.to_json()).unwrap(),
        proof: base64::engine::general_purpose::STANDARD.encode(&proof),
        log: None,
    }
}

fn sha(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// A fake gateway answering a validator's transcript requests with junk used to make the
/// validator condemn an honest worker; and anyone could fetch any logged receipt's transcript
/// (prompt and answer) from a gateway. Now the validator judges only a transcript that is the
/// selected receipt's, and a gateway gives transcripts only to validators it trusts, with proof
/// that the log selected them.
#[test]
fn junk_transcripts_frame_nobody_and_prompts_stay_private() {
    // The validator's key is made first, so the gateway can name it as trusted.
    let vhome = common::temp_home();
    let validator_id = common::peer_id_of(&vhome);
    let mut gw = Node::start(&args(&[
        SMALL,
        LOOPBACK,
        &["--serve-log", "--trust-validator", &validator_id],
    ]));
    let boot = gw.p2p[0].clone();
    let vkey = gw.log_vkey.clone().unwrap();
    let log = format!("{}/log", gw.url);
    // A fake gateway that answers every transcript request with junk, joined before the
    // validator starts so that it is asked from the first receipt on.
    let h = Hostile::join(&boot);
    h.advertise_gateway();
    junk_transcripts(&h);
    let mut validator = Node::start_in(
        vhome,
        &args(&[
            SMALL,
            LOOPBACK,
            &[
                "--bootstrap",
                &boot,
                "--validator",
                // The most a gateway lets a validator claim (its --max-check-probability).
                "--check-probability",
                "0.5",
                "--probation-probability",
                "0.5",
                "--log-url",
                &log,
                "--log-key",
                &vkey,
            ],
        ]),
    );
    assert_eq!(validator.peer_id, validator_id);
    wait_workers(&gw, 2);
    // Answers from both workers (the gateway's own engine and the validator's).
    let mut receipts = Vec::new();
    for i in 0..12 {
        let mut b = chat(&format!("Write one word about {i}."));
        b["max_tokens"] = json!(6);
        let (status, v) = gw.post("/v1/chat/completions", &b);
        assert_eq!(status, 200, "{v}");
        receipts.push(v);
    }
    // The validator checks about half of them and accepts them: the junk transcripts were
    // not taken for the real ones.
    let t0 = Instant::now();
    loop {
        let (_, nodes) = gw.get("/agora/v1/nodes");
        let accepted = reputation(&gw, &validator.peer_id)["accepted"]
            .as_u64()
            .unwrap_or(0)
            + nodes["self"]["reputation"]["accepted"]
                .as_u64()
                .unwrap_or(0);
        if accepted >= 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the validator accepted only {accepted} answers: {}",
            gw.get("/agora/v1/nodes").1
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        reputation(&gw, &validator.peer_id)["rejected"],
        json!(0),
        "the honest validator-worker was condemned"
    );
    let (_, nodes) = gw.get("/agora/v1/nodes");
    assert_eq!(
        nodes["self"]["reputation"]["rejected"],
        json!(0),
        "the gateway's own honest worker was condemned"
    );
    // Prompts stay private: the hostile peer asks the gateway for every transcript, without a
    // selection, and gets none.
    for v in &receipts {
        let payload = v["agora"]["receipt"]["payload"].as_str().unwrap();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap();
        let digest = hex::encode(sha(&bytes));
        let req = TranscriptRequest {
            receipt: digest,
            selection: None,
        };
        assert!(
            h.transcript(&gw.peer_id, &req).is_none(),
            "a transcript leaked"
        );
    }
    let (_, nodes) = gw.get("/agora/v1/nodes");
    assert!(
        nodes["gateway"]["transcripts_refused"].as_u64().unwrap() >= 12,
        "{nodes}"
    );
    assert!(
        nodes["gateway"]["transcripts_released"].as_u64().unwrap() >= 1,
        "{nodes}"
    );
    healthy(&mut gw, true);
    healthy(&mut validator, true);
}
