//! A contributor's machine is busy: a node decodes with the threads the CPU leaves free (its
//! `/metrics` say how many), goes back to all of them when the machine is quiet again, and its
//! answers are the same tokens either way. Speed is measured by `agora bench-busy`, not here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Node;
use serde_json::json;

fn threads(node: &Node) -> u32 {
    node.get_text("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix("agora_engine_threads "))
        .and_then(|v| v.trim().parse().ok())
        .expect("/metrics reports agora_engine_threads")
}

/// Waits (at most 15 s) until the node decodes with a thread count `ok` accepts; the last seen.
fn wait_threads(node: &Node, ok: impl Fn(u32) -> bool) -> u32 {
    let t0 = Instant::now();
    loop {
        let t = threads(node);
        if ok(t) || t0.elapsed() > Duration::from_secs(15) {
            return t;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn answer(node: &Node) -> String {
    let (status, v) = node.post(
        "/v1/completions",
        &json!({
            "model": "smollm2-135m", "prompt": "The history of the river is", "max_tokens": 48,
            "seed": 7, "temperature": 0.8,
        }),
    );
    assert_eq!(status, 200, "{v}");
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

struct Burners(Vec<Child>);

impl Burners {
    /// `n` other processes, each keeping a core busy until dropped.
    fn start(n: u32) -> Burners {
        Burners(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "exec yes > /dev/null"])
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn threads_follow_the_free_cpu_and_answers_do_not_change() {
    let cores = std::thread::available_parallelism().unwrap().get() as u32;
    assert!(
        cores >= 2,
        "this test needs at least 2 cores (the CI machine has 2)"
    );
    let node = Node::start(&["--threads", &cores.to_string()]);
    assert_eq!(
        wait_threads(&node, |t| t == cores),
        cores,
        "quiet: all threads"
    );
    let quiet = answer(&node);

    // Half the cores kept busy by other processes.
    let burners = Burners::start(cores / 2);
    let busy_threads = wait_threads(&node, |t| t < cores);
    assert!(
        busy_threads < cores,
        "busy: still {busy_threads} threads of {cores}"
    );
    assert!(busy_threads >= 1);
    let busy = answer(&node);
    assert_eq!(
        busy, quiet,
        "the same seed gave another text with fewer threads"
    );
    drop(burners);

    assert_eq!(
        wait_threads(&node, |t| t == cores),
        cores,
        "quiet again: all threads"
    );
    assert_eq!(answer(&node), quiet);

    // --fixed-threads: the count never moves.
    let fixed = Node::start(&["--threads", &cores.to_string(), "--fixed-threads"]);
    let _burners = Burners::start(cores / 2);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(threads(&fixed), cores);
}
