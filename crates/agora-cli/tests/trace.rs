//! Where did the model get this text? A model whose logged manifest names a real dataset (the
//! Debian fortunes, 15,218 records, BSD-3-Clause); a text made of two of its records with new
//! words between them is traced through the model's curriculum — by a node and by this
//! machine's store — to exactly those two spans, each with a verifying record proof, the
//! dataset's licence and contributors, and the statement's place in the log checked. A trace a
//! lying server altered is rejected; a text nobody wrote yields nothing; missing, damaged and
//! stale indexes are refused with the command that rebuilds them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Node, agora};
use serde_json::Value;

fn run(home: &Path, args: &[&str]) -> Output {
    agora().env("AGORA_HOME", home).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn corpus() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/corpus-fortunes.sh");
    let out = std::process::Command::new(script).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Two records of the corpus, long and occurring once: (id, text) each.
fn two_records(corpus: &Path) -> [(String, String); 2] {
    let all: Vec<(String, String)> = std::fs::read_to_string(corpus)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let unique = |t: &str| all.iter().filter(|(_, u)| u.contains(t)).count() == 1;
    let mut picked = all
        .iter()
        .filter(|(_, t)| (200..400).contains(&t.len()) && t.is_ascii() && unique(t))
        .step_by(97)
        .take(2)
        .cloned();
    [picked.next().unwrap(), picked.next().unwrap()]
}

#[test]
fn a_text_is_traced_to_the_records_of_its_models_curriculum() {
    let node = Node::start(&["--serve-log"]);
    let home = node.home.path();
    let log = format!("{}/log", node.url);
    let key = node
        .log_vkey
        .clone()
        .expect("the node prints its log's key");
    let corpus = corpus();
    let o = run(
        home,
        &[
            "dataset",
            "add",
            corpus.to_str().unwrap(),
            "--name",
            "fortunes",
            "--license",
            "BSD-3-Clause",
            "--source",
            "debian:fortunes-min",
            "--contributor",
            "debian=Debian fortune maintainers",
            "--log",
            &log,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let dir = tempfile::tempdir().unwrap();
    let [(id_a, a), (id_b, b)] = two_records(&corpus);
    let traced = dir.path().join("text.txt");
    std::fs::write(
        &traced,
        format!("{a}\nZorblax quimby fretwhistle, vantaculous of drebnik.\n{b}"),
    )
    .unwrap();
    let trace_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["trace", traced.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let trace = |extra: &[&str]| {
        let args = trace_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(home, &args)
    };

    // No index yet: said, with the command that builds it.
    let o = trace(&["--dataset", "fortunes"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("agora dataset index fortunes@1"),
        "{}",
        text(&o)
    );

    let o = run(home, &["dataset", "index", "fortunes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("15218 records"), "{}", text(&o));
    let o = run(home, &["dataset", "index", "fortunes", "--check"]);
    assert!(o.status.success(), "{}", text(&o));

    // The model's manifest names the dataset.
    let mix = dir.path().join("mix.toml");
    std::fs::write(
        &mix,
        "license = \"Apache-2.0\"\nname = \"smol-fortunes\"\n[[dataset]]\nname = \"fortunes@1\"\nweight = 1.0\n",
    )
    .unwrap();
    let o = run(
        home,
        &[
            "model",
            "publish",
            "smollm2-135m",
            "--mix",
            mix.to_str().unwrap(),
            "--log",
            &log,
            "--log-key",
            &key,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));

    // Through the node, the model's curriculum as the log proves it, every claim checked.
    let saved = dir.path().join("trace.json");
    let o = trace(&[
        "--model",
        "smollm2-135m",
        "--log",
        &log,
        "--log-key",
        &key,
        "--node",
        &node.url,
        "--save",
        saved.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let spans = v["checked"]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{v:#}");
    for (span, (id, record)) in spans.iter().zip([(&id_a, &a), (&id_b, &b)]) {
        let t = span["text"].as_str().unwrap();
        assert!(record.contains(t), "{t:?} not in {record:?}");
        assert!(
            t.len() + 12 >= record.len(),
            "{t:?} is not most of {record:?}"
        );
        let recs = span["records"].as_array().unwrap();
        assert_eq!(recs.len(), 1, "{span}");
        assert_eq!(recs[0]["id"], id.as_str());
        assert_eq!(recs[0]["proven"], true);
    }
    let d = &v["checked"]["datasets"]["fortunes@1"];
    assert_eq!(d["license"], "BSD-3-Clause");
    assert_eq!(d["contributors"][0]["key"], "debian");
    assert!(
        d["logged"].as_str().unwrap().contains("log signature"),
        "{d}"
    );
    let att = &v["attribution"];
    assert_eq!(att["format"], "agora-attribution/1");
    assert!(att["covered_bytes"].as_u64().unwrap() + 30 >= (a.len() + b.len()) as u64);

    // The saved trace checks offline; one it altered (a lying server) does not.
    let o = trace(&["--check", saved.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("2 span(s) found verbatim"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("inclusion proof verified"),
        "{}",
        text(&o)
    );
    let good: Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    type Lie = Box<dyn Fn(&mut Value)>;
    let lies: [(&str, Lie); 3] = [
        (
            "a span's text",
            Box::new(|t: &mut Value| {
                let s = t["spans"][0]["text"]
                    .as_str()
                    .unwrap()
                    .replacen('e', "a", 1);
                t["spans"][0]["text"] = Value::String(s);
            }),
        ),
        (
            "a record's bytes",
            Box::new(|t: &mut Value| {
                let r = t["records"]
                    .as_object_mut()
                    .unwrap()
                    .values_mut()
                    .next()
                    .unwrap();
                let hex = r["proof"]["record"].as_str().unwrap().to_string();
                let n = hex.len() - 4;
                let flipped = if &hex[n..n + 1] == "0" { "1" } else { "0" };
                r["proof"]["record"] =
                    Value::String(format!("{}{flipped}{}", &hex[..n], &hex[n + 1..]));
            }),
        ),
        (
            "the dataset's statement",
            Box::new(|t: &mut Value| {
                let d = t["datasets"]["fortunes@1"]["statement"].as_str().unwrap();
                let mut env: Value = serde_json::from_str(d).unwrap();
                let p = env["payload"].as_str().unwrap().to_string();
                env["payload"] = Value::String(format!("A{}", &p[1..]));
                t["datasets"]["fortunes@1"]["statement"] = Value::String(env.to_string());
            }),
        ),
    ];
    for (what, lie) in lies {
        let mut t = good.clone();
        lie(&mut t);
        let forged = dir.path().join("forged.json");
        std::fs::write(&forged, t.to_string()).unwrap();
        let o = trace(&["--check", forged.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
        assert!(text(&o).contains("REJECTED"), "{what}: {}", text(&o));
    }

    // A real answer, traced with nothing but the node: its receipt names the answering model,
    // whose curriculum is searched (a 24-token answer has no long span in the fortunes).
    let (status, v) = node.post(
        "/v1/chat/completions",
        &serde_json::json!({
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": "Tell me a fortune."}],
            "seed": 5,
            "max_tokens": 24,
        }),
    );
    assert_eq!(status, 200, "{v}");
    let answer = dir.path().join("answer.txt");
    std::fs::write(&answer, common::content(&v)).unwrap();
    let t0 = std::time::Instant::now();
    let out = loop {
        let o = run(
            home,
            &[
                "trace",
                answer.to_str().unwrap(),
                "--node",
                &node.url,
                "--log-key",
                &key,
            ],
        );
        let out = text(&o);
        if out.contains("the text is the answer of receipt") || t0.elapsed().as_secs() > 60 {
            assert!(matches!(o.status.code(), Some(0 | 1)), "{out}");
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(out.contains("the text is the answer of receipt"), "{out}");
    assert!(out.contains("dataset fortunes@1"), "{out}");

    // From this machine's store, by dataset: the same two spans.
    let o = trace(&["--dataset", "fortunes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("2 span(s) found verbatim"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("contributor debian"), "{}", text(&o));

    // A text nobody wrote: nothing found, exit status 1.
    let other = dir.path().join("other.txt");
    std::fs::write(
        &other,
        "Quelbrix vantor plimsy drood, wexalent forbinar of trissel.",
    )
    .unwrap();
    let o = run(
        home,
        &["trace", other.to_str().unwrap(), "--dataset", "fortunes"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no span"), "{}", text(&o));

    // A damaged index is refused with the command that rebuilds it; so is one of another
    // version (here: after an opt-out made version 2, whose index does not exist yet).
    let idx = home.join("datasets/fortunes/1/trace.idx");
    let bytes = std::fs::read(&idx).unwrap();
    std::fs::write(&idx, &bytes[..bytes.len() - 8]).unwrap();
    let o = trace(&["--dataset", "fortunes@1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("truncated"), "{}", text(&o));
    assert!(
        text(&o).contains("agora dataset index fortunes@1"),
        "{}",
        text(&o)
    );
    std::fs::write(&idx, &bytes).unwrap();
    let o = run(
        home,
        &[
            "dataset",
            "remove",
            "fortunes",
            "--id",
            &id_a,
            "--proofs",
            dir.path().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    std::fs::copy(&idx, home.join("datasets/fortunes/2/trace.idx")).unwrap();
    let o = trace(&["--dataset", "fortunes@2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("was built for fortunes@1"),
        "{}",
        text(&o)
    );
}
