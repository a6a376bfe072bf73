//! The repository stands on its own for whoever clones it: no tracked file points at a
//! directory beside the repository, and the tests that read data files read them from the
//! repository, so they pass in a fresh clone with nothing beside it. (CI runs the whole test
//! command in such a clone; this test catches a stray reference before it gets there.)
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn no_tracked_file_points_beside_the_repository() {
    let root = root();
    // Built at run time so that this file does not match itself.
    let needles = [["..", "shared"].join("/"), ["shared", "NOTES.md"].join("/")];
    let listed = git(&root, &["ls-files", "-z"]);
    let mut hits = Vec::new();
    for name in listed.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).to_string();
        let Ok(bytes) = std::fs::read(root.join(&name)) else {
            continue; // deleted in the working tree
        };
        let text = String::from_utf8_lossy(&bytes);
        for n in &needles {
            if text.contains(n.as_str()) {
                hits.push(format!("{name} mentions {n}"));
            }
        }
    }
    assert!(hits.is_empty(), "{}", hits.join("\n"));
}

#[test]
fn a_clone_with_nothing_beside_it_passes_the_tests_that_read_data() {
    let root = root();
    let dir = tempfile::tempdir().unwrap();
    let clone = dir.path().join("agora");
    git(
        dir.path(),
        &[
            "clone",
            "--quiet",
            "--no-hardlinks",
            root.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    // The conformance vectors are the tests that read files: agora-tlog's Merkle vectors.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&clone)
        .args(["test", "--release", "--offline", "-p", "agora-tlog"])
        .args(["--test", "vectors"])
        .env_remove("AGORA_MERKLE_VECTORS")
        .output()
        .expect("run cargo test in the clone");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the clone's tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("test result: ok") && !stdout.contains(" 0 passed"),
        "{stdout}"
    );
}
