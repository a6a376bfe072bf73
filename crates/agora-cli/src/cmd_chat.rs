//! `agora chat "…"`: stream an answer from a node to the terminal.

use std::io::{Read, Write};

use agora_api::client::Client;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// What to ask. Read from standard input when absent.
    pub prompt: Option<String>,
    /// The node's API.
    #[arg(long, env = "AGORA_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Model to ask (default: the first the node serves).
    #[arg(long)]
    pub model: Option<String>,
    /// A system message to put first.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Seed for reproducible sampling (the node picks and prints one otherwise).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Save the transcript (request, answer, receipt, proof) to FILE, for `agora verify FILE`.
    #[arg(long, value_name = "FILE")]
    pub save: Option<std::path::PathBuf>,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let prompt = match args.prompt {
        Some(p) => p,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from standard input")?;
            s
        }
    };
    if prompt.trim().is_empty() {
        bail!("nothing to ask: give a prompt as an argument or on standard input");
    }
    let client = Client::new(&args.url);
    let model = match args.model {
        Some(m) => m,
        None => {
            let models = client.get_json("/v1/models")?;
            models
                .pointer("/data/0/id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .context("the node serves no model")?
        }
    };
    let mut messages = Vec::new();
    if let Some(s) = args.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": prompt}));
    let mut body = json!({
        "model": model, "messages": messages, "stream": true, "temperature": args.temperature,
        "stream_options": {"include_usage": true},
    });
    for (k, v) in [
        ("top_p", args.top_p.map(|v| json!(v))),
        ("top_k", args.top_k.map(|v| json!(v))),
        ("seed", args.seed.map(|v| json!(v))),
        ("max_tokens", args.max_tokens.map(|v| json!(v))),
    ] {
        if let Some(v) = v {
            body[k] = v;
        }
    }
    let mut out = std::io::stdout().lock();
    let mut text = String::new();
    let end = client.stream("/v1/chat/completions", &body, |t| {
        text.push_str(t);
        let _ = out.write_all(t.as_bytes());
        let _ = out.flush();
    })?;
    let _ = writeln!(out);
    if end
        .events
        .iter()
        .any(|e| e.pointer("/agora/unverifiable") == Some(&Value::Bool(true)))
    {
        eprintln!(
            "note: the worker that answered failed its self-check: this answer comes without a proof anyone can check (unverifiable)"
        );
    }
    if let Some(path) = &args.save {
        save_transcript(path, &model, &end, text, &client)?;
        eprintln!(
            "saved the transcript to {} (check it with `agora verify {}`)",
            path.display(),
            path.display()
        );
    }
    let tokens = end
        .usage
        .as_ref()
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64);
    eprintln!(
        "[{model}, seed {}, {} tokens, finish: {}]",
        end.seed
            .map(|s| s.to_string())
            .unwrap_or_else(|| "?".into()),
        tokens.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
        end.finish_reason.as_deref().unwrap_or("?")
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct NodesArgs {
    /// The node's API.
    #[arg(long, env = "AGORA_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agora nodes`: this node and its peers.
pub fn nodes(args: NodesArgs) -> Result<()> {
    let v = Client::new(&args.url).get_json("/agora/v1/nodes")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let me = &v["self"];
    println!("this node: {}", me["peer_id"].as_str().unwrap_or("?"));
    if let Some(w) = me.get("worker").filter(|w| !w.is_null()) {
        println!(
            "  serves {} ({} of {} slots busy)",
            w["model"].as_str().unwrap_or("?"),
            w["slots_in_use"],
            w["slots"]
        );
        if let Some(why) = w["unverifiable"].as_str() {
            println!("  unverifiable: its self-check failed ({why}); answers carry no proof");
        }
    }
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    println!("{} peer(s):", peers.len());
    println!(
        "  {:<54} {:<5} {:>7} {:<20} {:>5} {:>5} {:>8}  VERDICTS",
        "PEER", "CONN", "RTT ms", "MODELS", "FREE", "QUEUE", "TOK/S"
    );
    for p in peers {
        let s = &p["status"];
        let models: Vec<String> = s["models"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| {
                        let name = m["name"].as_str()?;
                        Some(if m["unverifiable"].as_bool() == Some(true) {
                            format!("{name} (unverifiable)")
                        } else {
                            name.to_string()
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rep = &p["reputation"];
        let verdicts = match (rep["accepted"].as_u64(), rep["rejected"].as_u64()) {
            (Some(a), Some(0)) => format!("{a} accepted"),
            (Some(a), Some(r)) => format!("{a} accepted, {r} REJECTED: not routed to"),
            _ => "-".into(),
        };
        println!(
            "  {:<54} {:<5} {:>7} {:<20} {:>5} {:>5} {:>8}  {verdicts}",
            p["peer_id"].as_str().unwrap_or("?"),
            if p["connected"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            p["rtt_ms"]
                .as_f64()
                .map(|r| format!("{r:.1}"))
                .unwrap_or_else(|| "-".into()),
            if models.is_empty() {
                "-".to_string()
            } else {
                models.join(",")
            },
            s["free_slots"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            s["queue"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            s["tokens_per_second"]
                .as_f64()
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(())
}

/// Where the node's log put the receipt: its index, asked of the node by the entry's leaf hash
/// for up to 5 s (receipts are logged just after the answer). `None` when the node holds no log.
fn locate_receipt(client: &Client, receipt: &Value) -> Option<u64> {
    let env = agora_core::Envelope::from_json(&serde_json::to_vec(receipt).ok()?).ok()?;
    let leaf = agora_tlog::hash::leaf_hash(env.to_json().as_bytes());
    let path = format!("/agora/v1/log/entries/{}", hex::encode(leaf.0));
    let t0 = std::time::Instant::now();
    loop {
        match client.get_json(&path) {
            Ok(v) => return v["index"].as_u64(),
            Err(agora_api::client::ClientError::Status {
                status: 404,
                message,
                ..
            }) if message.contains("logged (yet)") && t0.elapsed().as_secs() < 5 => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(_) => return None,
        }
    }
}

/// Writes what `agora verify` checks: the final `agora` event of the stream, with the text.
fn save_transcript(
    path: &std::path::Path,
    model: &str,
    end: &agora_api::client::StreamEnd,
    text: String,
    client: &Client,
) -> Result<()> {
    let agora = end
        .events
        .iter()
        .rev()
        .find_map(|e| e.get("agora").filter(|a| a.get("receipt").is_some()))
        .context("the node sent no receipt: nothing to save")?;
    let t = json!({
        "version": 1,
        "model": model,
        "request": agora["request"],
        "salt": agora["salt"],
        "output": { "tokens": agora["tokens"], "text": text, "finish_reason": end.finish_reason.clone().unwrap_or_default() },
        "receipt": agora["receipt"],
        "proof": agora["proof"],
        "log": agora.get("log").cloned().unwrap_or(Value::Null),
    });
    let mut t = t;
    if t["log"].is_null() {
        match locate_receipt(client, &t["receipt"]) {
            Some(index) => {
                t["log"] = json!({"url": format!("{}/log", client.base()), "index": index});
            }
            None => {
                if let Some(o) = t.as_object_mut() {
                    o.remove("log");
                }
            }
        }
    }
    std::fs::write(path, serde_json::to_vec_pretty(&t)?)
        .with_context(|| format!("writing {}", path.display()))
}
