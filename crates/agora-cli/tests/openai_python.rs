//! The official `openai` Python package against a real node.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

/// The Python with `openai` installed: `$AGORA_TEST_PYTHON`, else the venv scripts/test.sh makes.
fn python() -> PathBuf {
    let p = std::env::var_os("AGORA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/agora-venv/bin/python"));
    assert!(
        p.is_file(),
        "{} not found: run scripts/test.sh, which creates it with the openai package",
        p.display()
    );
    p
}

#[test]
fn openai_python_client() {
    let py = python();
    let node = common::Node::start(&["--slots", "4", "--ctx", "1024"]);
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/openai_client.py");
    let out = Command::new(py)
        .arg(&script)
        .arg(&node.url)
        .arg(common::MODEL)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
