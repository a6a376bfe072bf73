//! The short variant of `agora bench-soak`: a devnet (a gateway serving the log, three workers,
//! a validator) under honest load, hostile peers and slowloris for one minute. Every request
//! class is counted; the test asserts that the network served, that no honest worker was
//! condemned and that no process died.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use serde_json::Value;

#[test]
fn a_devnet_survives_a_minute_of_hostile_load() {
    common::model_path();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("soak.json");
    let t0 = Instant::now();
    let run = common::agora()
        .env("AGORA_HOME", common::shared_home())
        .args(["bench-soak", "--minutes", "1", "--clients", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "bench-soak failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(
        r["honest"]["ok"].as_u64().unwrap() > 0,
        "nothing served: {r}"
    );
    assert_eq!(r["reputation"]["honest_condemned"], 0, "{r}");
    assert_eq!(r["died"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(r["pass"], true, "{r}");
    println!(
        "the one-minute soak took {:.0} s in all",
        t0.elapsed().as_secs_f64()
    );
}
