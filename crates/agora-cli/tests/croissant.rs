//! Croissant 1.1 export and import end to end: the fortunes corpus (scripts/corpus-fortunes.sh)
//! is added, exported with `agora dataset croissant`, loaded by MLCommons' reference
//! implementation `mlcroissant` (Python: `$AGORA_TEST_PYTHON`, else the venv scripts/test.sh
//! makes) record by record, imported back with `agora dataset add --croissant` into another
//! home with the same roots, and refused when a byte of its records changes or a contentUrl
//! leaves its directory.

#![allow(clippy::unwrap_used)]

mod tlog_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tlog_common::*;

/// The fortunes corpus, made (once, cached under /var/tmp) by the repository's script.
fn corpus() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/corpus-fortunes.sh");
    let out = Command::new(script).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/corpus-fortunes.sh failed (it needs Debian's archive): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The Python with `mlcroissant`: `$AGORA_TEST_PYTHON`, else /var/tmp/agora-venv/bin/python.
/// Fails (never skips) when it is missing or cannot import mlcroissant.
fn python() -> PathBuf {
    let py = std::env::var_os("AGORA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/agora-venv/bin/python"));
    let how = format!(
        "install it with `{} -m pip install mlcroissant` (scripts/test.sh does, in \
         /var/tmp/agora-venv), or set AGORA_TEST_PYTHON to a Python that has it",
        py.display()
    );
    let out = Command::new(&py)
        .args(["-c", "import mlcroissant"])
        .output();
    match out {
        Ok(o) if o.status.success() => py,
        Ok(o) => panic!(
            "{} cannot import mlcroissant, which this test needs: {how}\n{}",
            py.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "no Python at {} ({e}); this test needs one with mlcroissant: {how}",
            py.display()
        ),
    }
}

/// Loads a Croissant file with mlcroissant and writes every record of the `records` record set
/// as a JSON line of its fields (bytes decoded as UTF-8; missing values null).
const LOAD: &str = r#"
import json, sys
import mlcroissant as mlc
ds = mlc.Dataset(jsonld=sys.argv[1])
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for r in ds.records(record_set="records"):
        rec = {}
        for k, v in r.items():
            if isinstance(v, bytes):
                v = v.decode("utf-8")
            rec[k.split("/", 1)[1]] = v if isinstance(v, str) else None
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
"#;

fn manifest(h: &str, name: &str) -> Value {
    serde_json::from_str(&ok(&["dataset", "show", name, "--home", h])).unwrap()
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// `agora dataset add --croissant FILE --home HOME EXTRA…`, expected to fail: its stderr.
fn refused(file: &Path, home: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "dataset",
        "add",
        "--croissant",
        file.to_str().unwrap(),
        "--home",
        home,
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "agora {args:?} succeeded");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn fortunes_export_loads_in_mlcroissant_and_imports_back_with_the_same_roots() {
    let py = python();
    let corpus = corpus();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    init_home(&home);
    let h = home.to_str().unwrap();
    ok(&[
        "dataset",
        "add",
        corpus.to_str().unwrap(),
        "--home",
        h,
        "--name",
        "fortunes",
        "--license",
        "BSD-3-Clause",
        "--source",
        "debian:fortunes",
        "--contributor",
        "debian=Debian",
    ]);
    let m = manifest(h, "fortunes");
    let records = m["records"].as_u64().unwrap();

    // Export.
    let export = dir.path().join("export");
    let out = ok(&[
        "dataset",
        "croissant",
        "fortunes@1",
        "--out",
        export.to_str().unwrap(),
        "--home",
        h,
    ]);
    assert!(
        out.contains(&format!("fortunes@1: {records} records")),
        "{out}"
    );
    let meta_path = export.join("croissant.json");
    let records_path = export.join("records.jsonl");
    let meta: Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    assert_eq!(meta["conformsTo"], "http://mlcommons.org/croissant/1.1");
    assert_eq!(meta["name"], "fortunes");
    assert_eq!(meta["version"], "1.0.0");
    assert_eq!(
        meta["license"][0]["url"],
        "https://spdx.org/licenses/BSD-3-Clause.html"
    );
    assert_eq!(meta["license"][0]["identifier"], "BSD-3-Clause");
    assert_eq!(meta["citeAs"], "debian:fortunes");
    assert_eq!(meta["creator"][0]["identifier"], "debian");
    assert_eq!(meta["creator"][0]["name"], "Debian");
    assert_eq!(meta["creator"][0]["agora:records"].as_u64(), Some(records));
    assert_eq!(meta["agora:recordRoot"], m["record_root"]);
    assert_eq!(meta["agora:idRoot"], m["id_root"]);
    assert!(meta["rai:dataCollection"].is_string(), "{meta}");
    assert_eq!(
        meta["distribution"][0]["sha256"].as_str().unwrap(),
        sha256_hex(&records_path)
    );

    // mlcroissant reads back every record, in order, with the stored ids and texts (the
    // corpus lines are exactly what was stored).
    let loaded = dir.path().join("loaded.jsonl");
    let o = Command::new(&py)
        .args(["-c", LOAD])
        .arg(&meta_path)
        .arg(&loaded)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mlcroissant could not load the export:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got: Vec<Value> = std::fs::read_to_string(&loaded)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want: Vec<Value> = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len() as u64, records, "mlcroissant's record count");
    assert_eq!(want.len() as u64, records);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g["id"], w["id"], "record {i}'s id");
        assert_eq!(g["text"], w["text"], "record {i}'s text ({})", w["id"]);
        assert_eq!(g["source"], w["source"], "record {i}'s source");
    }

    // Imported into another home: the same roots, and what the metadata says.
    let other = dir.path().join("other");
    init_home(&other);
    let o2 = other.to_str().unwrap();
    let added = ok(&[
        "dataset",
        "add",
        "--croissant",
        meta_path.to_str().unwrap(),
        "--home",
        o2,
    ]);
    assert!(added.contains("fortunes@1: "), "{added}");
    let m2 = manifest(o2, "fortunes");
    assert_eq!(m2["record_root"], m["record_root"]);
    assert_eq!(m2["id_root"], m["id_root"]);
    assert_eq!(m2["records"].as_u64(), Some(records));
    assert_eq!(m2["license"], "BSD-3-Clause");
    assert_eq!(m2["source"], "debian:fortunes");
    assert_eq!(m2["contributors"][0]["key"], "debian");
    assert_eq!(m2["contributors"][0]["label"], "Debian");

    // One flipped byte of records.jsonl: refused before anything is ingested, naming the file
    // and both digests.
    let expected = sha256_hex(&records_path);
    let mut bytes = std::fs::read(&records_path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&records_path, &bytes).unwrap();
    let actual = sha256_hex(&records_path);
    let third = dir.path().join("third");
    init_home(&third);
    let t = third.to_str().unwrap();
    let err = refused(&meta_path, t, &[]);
    assert!(
        err.contains("sha256 mismatch")
            && err.contains("records.jsonl")
            && err.contains(&expected)
            && err.contains(&actual),
        "{err}"
    );
    assert!(
        !third.join("datasets/fortunes").exists(),
        "nothing ingested"
    );
    let list = ok(&["dataset", "list", "--home", t]);
    assert!(list.contains("no datasets yet"), "{list}");
}

#[test]
fn croissant_import_takes_only_files_inside_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    init_home(&home);
    let h = home.to_str().unwrap();
    let input = dir.path().join("tiny.jsonl");
    std::fs::write(
        &input,
        "{\"id\":\"a\",\"text\":\"one\"}\n{\"id\":\"b\",\"text\":\"two\",\"x\":1}\n",
    )
    .unwrap();
    ok(&[
        "dataset",
        "add",
        input.to_str().unwrap(),
        "--home",
        h,
        "--name",
        "tiny",
        "--license",
        "MIT",
        "--source",
        "https://example.org/tiny",
    ]);
    let export = dir.path().join("export");
    ok(&[
        "dataset",
        "croissant",
        "tiny",
        "--out",
        export.to_str().unwrap(),
        "--home",
        h,
    ]);
    let good: Value =
        serde_json::from_slice(&std::fs::read(export.join("croissant.json")).unwrap()).unwrap();
    assert_eq!(good["url"], "https://example.org/tiny");

    // The export imports under another name and licence given on the command line.
    let other = dir.path().join("other");
    init_home(&other);
    let o = other.to_str().unwrap();
    let meta_path = export.join("croissant.json");
    ok(&[
        "dataset",
        "add",
        "--croissant",
        meta_path.to_str().unwrap(),
        "--home",
        o,
        "--name",
        "renamed",
        "--license",
        "CC0-1.0",
    ]);
    let m = manifest(o, "renamed");
    assert_eq!(m["license"], "CC0-1.0");
    assert_eq!(m["source"], "https://example.org/tiny");
    assert_eq!(m["records"].as_u64(), Some(2));
    assert_eq!(m["record_root"], manifest(h, "tiny")["record_root"]);

    // contentUrls that leave the directory, or are URLs, are refused with the reason.
    let outside = dir.path().join("x.jsonl");
    std::fs::copy(export.join("records.jsonl"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, export.join("link.jsonl")).unwrap();
    let bad = export.join("bad.json");
    for (url, why) in [
        ("../x.jsonl", "`..` is refused"),
        ("sub/../../x.jsonl", "`..` is refused"),
        (
            "http://example.org/records.jsonl",
            "Agora does not download",
        ),
        (
            "https://example.org/records.jsonl",
            "Agora does not download",
        ),
        (outside.to_str().unwrap(), "absolute paths are refused"),
        ("file:///etc/passwd", "file: URL"),
        ("link.jsonl", "outside"),
    ] {
        let mut v = good.clone();
        v["distribution"][0]["contentUrl"] = Value::String(url.to_string());
        std::fs::write(&bad, v.to_string()).unwrap();
        let err = refused(&bad, o, &["--name", "bad"]);
        assert!(
            err.contains(&format!("contentUrl {url:?} is refused")) && err.contains(why),
            "{url}: {err}"
        );
    }
    // Not a Croissant file, or too large: a reason, no panic.
    std::fs::write(&bad, "{\"@type\": \"sc:Dataset\"").unwrap();
    assert!(refused(&bad, o, &[]).contains("not JSON"));
    std::fs::write(&bad, vec![b' '; (16 << 20) + 1]).unwrap();
    assert!(refused(&bad, o, &[]).contains("at most"));
    assert!(!other.join("datasets/bad").exists());
}
