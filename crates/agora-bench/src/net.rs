//! `agora bench-net`: what the network layer costs.
//!
//! 1. Extra time to first token when a request goes gateway → worker over libp2p, compared with
//!    the same worker's own HTTP API on loopback (real model, requests alternating between the
//!    two paths).
//! 2. Requests per second one gateway routes to workers running the test-only echo engine (an
//!    instant stand-in that exists for this measurement), so the model is not what is measured.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agora_api::client::Client;
use agora_api::keepalive::Conn;
use agora_models::catalog;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::proc::{self, Node};
use crate::stats::{Percentiles, ms};

#[derive(Args, Debug)]
pub struct BenchNetArgs {
    /// Model for the time-to-first-token comparison.
    #[arg(long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Time-to-first-token samples per path.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// Seconds of load for the routing throughput.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent client connections for the routing throughput.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Echo workers behind the gateway.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

/// A node on loopback (no mDNS) in a home of its own whose model store is `models`.
struct NodeProc {
    node: Node,
    _home: tempfile::TempDir,
}

impl NodeProc {
    fn p2p(&self) -> Result<String> {
        Ok(self.node.ready.p2p_addr()?.to_string())
    }

    fn url(&self) -> Result<String> {
        self.node
            .ready
            .url
            .clone()
            .context("the node has no HTTP API")
    }
}

fn start_node(models: &Path, args: &[&str]) -> Result<NodeProc> {
    let home = tempfile::tempdir()?;
    std::os::unix::fs::symlink(models, home.path().join("models"))?;
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--no-mdns",
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/0",
    ]
    .iter()
    .chain(args)
    .map(|s| s.to_string())
    .collect();
    Ok(NodeProc {
        node: proc::start_node("node", home.path(), &args, None)?,
        _home: home,
    })
}

fn wait_workers(url: &str, n: u64) -> Result<()> {
    proc::wait_workers(url, n, Duration::from_secs(30))
}

fn ttft(client: &Client, model: &str, i: usize) -> Result<Duration> {
    let body = json!({
        "model": model, "messages": [{"role": "user", "content": format!("Say one word. ({i})")}],
        "max_tokens": 1, "temperature": 0, "stream": true,
    });
    let t0 = Instant::now();
    let mut first = None;
    client.stream("/v1/chat/completions", &body, |_| {
        first.get_or_insert_with(|| t0.elapsed());
    })?;
    first.context("no token came back")
}

pub fn run(home: &Path, a: BenchNetArgs) -> Result<()> {
    let store = agora_models::store::ModelStore::open(home, true)?;
    let model = store.resolve_or_fetch(&a.model)?;
    let models = store.root().to_path_buf();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    // 1. TTFT: the worker's own API against the same worker through a gateway.
    eprintln!("starting a worker (with its own API) and a gateway…");
    let worker = start_node(&models, &["--model", &model.name])?;
    let gateway = start_node(&models, &["--no-worker", "--bootstrap", &worker.p2p()?])?;
    let (wurl, gurl) = (worker.url()?, gateway.url()?);
    wait_workers(&gurl, 1)?;
    let (direct, routed) = (Client::new(&wurl), Client::new(&gurl));
    for i in 0..5 {
        ttft(&direct, &model.name, 100_000 + i)?;
        ttft(&routed, &model.name, 200_000 + i)?;
    }
    let (mut d, mut r) = (Vec::new(), Vec::new());
    for i in 0..a.samples {
        d.push(ttft(&direct, &model.name, i)?);
        r.push(ttft(&routed, &model.name, i)?);
    }
    let (pd, pr) = (Percentiles::of(d), Percentiles::of(r));
    drop((worker, gateway));

    // 2. Routing throughput to echo workers.
    eprintln!("starting {} echo workers and a gateway…", a.workers);
    // The workers' per-peer rate limit is lifted: it is the gateway's capacity being measured.
    const ECHO: &[&str] = &[
        "--test-echo-engine",
        "--no-gateway",
        "--peer-rate",
        "1000000",
    ];
    let first = start_node(&models, ECHO)?;
    let mut echo = vec![first];
    for _ in 1..a.workers {
        let boot = echo[0].p2p()?;
        echo.push(start_node(
            &models,
            &[ECHO, &["--bootstrap", &boot]].concat(),
        )?);
    }
    let gw = start_node(&models, &["--no-worker", "--bootstrap", &echo[0].p2p()?])?;
    let gurl = gw.url()?;
    wait_workers(&gurl, a.workers as u64)?;
    let (ok, errors, lat) = load(&gurl, a.connections, Duration::from_secs(a.seconds))?;
    let rps = ok as f64 / a.seconds as f64;
    let per_worker: Vec<String> = echo
        .iter()
        .map(|w| w.node.ready.peer_id.chars().take(12).collect())
        .collect();
    drop((echo, gw));

    println!();
    println!(
        "agora bench-net: {} cores ({}); nodes on loopback; TTFT with {} (1 token, streaming), {} samples per path, interleaved",
        cores,
        crate::cpu_name(),
        model.name,
        a.samples
    );
    println!();
    println!("| time to first token | p50 (ms) | p90 (ms) |");
    println!("|---|---:|---:|");
    println!(
        "| worker's own HTTP API | {:.2} | {:.2} |",
        ms(pd.p50),
        ms(pd.p90)
    );
    println!(
        "| gateway → worker over libp2p | {:.2} | {:.2} |",
        ms(pr.p50),
        ms(pr.p90)
    );
    println!(
        "| **extra through the gateway** | **{:.2}** | {:.2} |  (target ≤ 2 ms at p50)",
        ms(pr.p50) - ms(pd.p50),
        ms(pr.p90) - ms(pd.p90)
    );
    println!();
    println!(
        "routing throughput: {rps:.0} requests/s through one gateway to {} echo workers ({}, per-peer rate limit lifted), {} connections, {} s; {errors} errors; latency p50 {:.2} ms, p99 {:.2} ms  (target ≥ 2,000/s)",
        a.workers,
        per_worker.join(", "),
        a.connections,
        a.seconds,
        ms(lat.p50),
        ms(lat.p99)
    );
    if errors > 0 || ok == 0 {
        bail!(
            "{errors} routed requests failed and {ok} were answered: the figure above is not a measurement"
        );
    }
    Ok(())
}

/// Closed-loop load: `connections` keep-alive connections sending chat requests for `dur`.
fn load(url: &str, connections: usize, dur: Duration) -> Result<(u64, u64, Percentiles)> {
    let host = url.trim_start_matches("http://").to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let body = bytes::Bytes::from(
            json!({"model": "echo", "messages": [{"role": "user", "content": "hello, network"}], "max_tokens": 8}).to_string(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let (ok, errors, stop, body, host) = (ok.clone(), errors.clone(), stop.clone(), body.clone(), host.clone());
            tasks.spawn(async move {
                let mut conn = Conn::new(&host);
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    match conn.request("POST", "/v1/chat/completions", body.clone()).await {
                        Ok((200, _)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            lat.push(t0.elapsed());
                        }
                        other => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                let what = match other {
                                    Ok((status, body)) => format!("{status} {}", String::from_utf8_lossy(&body)),
                                    Err(e) => e,
                                };
                                eprintln!("first error: {what}");
                            }
                        }
                    }
                }
                lat
            });
        }
        tokio::time::sleep(dur).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r.unwrap_or_default());
        }
        Ok((ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed), Percentiles::of(all)))
    })
}
