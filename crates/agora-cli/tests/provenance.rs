//! One real answer followed all the way back: `agora chat --save` on a node serving the default
//! model with its own log, `agora verify` checks the answer on the real model, finds its receipt
//! in the log, and prints the answering model's manifest, its datasets (the Debian fortunes
//! corpus, BSD-3-Clause), their licences and what is declared or not known — with every log
//! proof checked under the log's signed checkpoint. Also: `agora model publish` refuses mixes
//! naming what the log does not hold, `agora model provenance` says plainly when a model has no
//! manifest, and the node's provenance route serves what the client re-checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Node, agora};
use serde_json::Value;

const WEIGHTS: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

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

/// The fortunes corpus, made (once, cached under /var/tmp) by the repository's script.
fn corpus() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/corpus-fortunes.sh");
    let out = std::process::Command::new(script).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn an_answer_is_followed_to_the_datasets_and_licences_of_its_model() {
    let node = Node::start(&["--serve-log"]);
    let home = node.home.path();
    let log = format!("{}/log", node.url);
    let key = node
        .log_vkey
        .clone()
        .expect("the node prints its log's key");
    let trust = ["--log", log.as_str(), "--log-key", key.as_str()];

    // The dataset, signed and logged.
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

    // Before any manifest: said plainly, exit status 1.
    let o = run(
        home,
        &[&["model", "provenance", "smollm2-135m"][..], &trust[..]].concat(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no manifest in the log"), "{}", text(&o));

    // Mixes naming what the log does not hold are refused, and nothing is logged.
    let dir = tempfile::tempdir().unwrap();
    let mix = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("license = \"Apache-2.0\"\n{body}")).unwrap();
        p
    };
    for (body, want) in [
        (
            "[[dataset]]\nname = \"nothere@1\"\nweight = 1.0\n",
            "not in this machine's store",
        ),
        (
            &format!(
                "[[dataset]]\nname = \"fortunes@1\"\nweight = 1.0\nlog = \"{log}\"\nindex = 99\n"
            ),
            "not in a tree",
        ),
        (
            "[[dataset]]\nname = \"fortunes@1\"\nweight = 0.0\n",
            "finite and positive",
        ),
        (
            "[[dataset]]\nname = \"fortunes@1\"\nweight = 1.0\nlog = \"http://127.0.0.1:9/log\"\nindex = 0\n",
            "one log",
        ),
    ] {
        let p = mix("bad.toml", body);
        let o = run(
            home,
            &[
                &[
                    "model",
                    "publish",
                    "smollm2-135m",
                    "--mix",
                    p.to_str().unwrap(),
                ][..],
                &trust[..],
            ]
            .concat(),
        );
        assert!(!o.status.success(), "{body}: {}", text(&o));
        assert!(text(&o).contains(want), "{want:?} not in: {}", text(&o));
    }
    assert!(!home.join("manifests").exists());

    // The manifest: the fortunes, declared pre-training data, a recipe.
    let recipe = dir.path().join("train.yaml");
    std::fs::write(&recipe, "epochs: 1\n").unwrap();
    let good = mix(
        "mix.toml",
        "name = \"smol-fortunes\"\nrecipe = \"train.yaml\"\nunknown = [\"the order of the data\"]\n\
         [[dataset]]\nname = \"fortunes@1\"\nweight = 1.0\ntokens = 1200000\n\
         [[declared]]\nname = \"FineWeb-Edu\"\nlicense = \"ODC-By-1.0\"\n\
         source = \"https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu\"\n",
    );
    let o = run(
        home,
        &[
            &[
                "model",
                "publish",
                "smollm2-135m",
                "--mix",
                good.to_str().unwrap(),
            ][..],
            &trust[..],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("architecture llama"), "{}", text(&o));

    // One real answer, saved with where its receipt was logged.
    let saved = dir.path().join("answer.json");
    let o = agora()
        .env("AGORA_HOME", home)
        .args([
            "chat",
            "--url",
            &node.url,
            "--seed",
            "5",
            "--max-tokens",
            "16",
        ])
        .arg("--save")
        .arg(&saved)
        .arg("Tell me a fortune.")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t: Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(t["log"]["url"], log.as_str(), "{t}");

    // verify: the answer, its receipt in the log, the model's curriculum, all checked.
    let o = run(
        home,
        &[
            "verify",
            saved.to_str().unwrap(),
            "--threads",
            "2",
            "--log-key",
            &key,
        ],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for want in [
        "ACCEPTED",
        "receipt:     entry",
        "in the log (checkpoint",
        "signature verified",
        "model smol-fortunes",
        "dataset fortunes@1 (weight 1: 100.0 % of the logged mix, 1200000 tokens)",
        "15218 records",
        "licence BSD-3-Clause",
        "contributor debian (Debian fortune maintainers): 15218 records",
        "declared, NOT provable (no dataset statement): FineWeb-Edu · ODC-By-1.0",
        "unknown: the order of the data",
        "recipe: train.yaml",
        "every statement above is signed, linked and in the log under its signed checkpoint",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    assert!(!out.contains("! "), "{out}");

    // The same for programs.
    let o = run(
        home,
        &[
            &["model", "provenance", "smollm2-135m", "--json"][..],
            &trust[..],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["proven"], true, "{v}");
    let d = &v["tree"]["model"]["datasets"][0]["statement"];
    assert_eq!(d["predicate"]["license"], "BSD-3-Clause", "{v}");
    assert_eq!(d["predicate"]["records"], 15218, "{v}");

    // Without the log's key nothing is called proven.
    let o = run(
        home,
        &["model", "provenance", "smollm2-135m", "--log", &log],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("signature was not checked"),
        "{}",
        text(&o)
    );

    // The node's route: the tree and the entries it rests on; bad digests refused.
    let client = agora_api::client::Client::new(&node.url);
    let v = client
        .get_json(&format!("/agora/v1/models/{WEIGHTS}/provenance"))
        .unwrap();
    assert_eq!(v["complete"], true, "{v}");
    assert_eq!(v["entries"].as_object().unwrap().len(), 2, "{v}");
    let e = client
        .get_json("/agora/v1/models/not-a-digest/provenance")
        .unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");

    // From another machine (no local records): the node is asked where the statements are,
    // and what it says is checked against the log.
    let other = common::temp_home();
    let o = run(
        other.path(),
        &[
            &["model", "provenance", &format!("sha256:{WEIGHTS}")][..],
            &trust[..],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("licence BSD-3-Clause"), "{}", text(&o));
}

#[test]
fn the_default_model_manifest_says_what_is_known_and_what_is_not() {
    let node = Node::start(&["--serve-log"]);
    let home = node.home.path();
    let log = format!("{}/log", node.url);
    let key = node.log_vkey.clone().unwrap();
    let o = run(
        home,
        &[
            "model",
            "publish",
            "smollm2-135m",
            "--log",
            &log,
            "--log-key",
            &key,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        home,
        &[
            "model",
            "provenance",
            "smollm2-135m",
            "--log",
            &log,
            "--log-key",
            &key,
        ],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for want in [
        "declared, NOT provable (no dataset statement): FineWeb-Edu · ODC-By-1.0",
        "DCLM-baseline · CC-BY-4.0",
        "SmolTalk · Apache-2.0",
        "unknown: the share and token count of each dataset",
        "no record of any dataset here is logged",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
}
