//! `agora devnet` and `agora demo`: a whole network on this machine, in one command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agora_api::client::Client;
use agora_models::catalog;
use agora_models::store::ModelStore;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::proc::{Node, start_node};

#[derive(Args, Debug, Clone)]
pub struct DevnetArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 3)]
    pub workers: u32,
    /// Model every worker serves.
    #[arg(long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// HTTP API of the gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// CPU threads of each worker (the workers share this machine's cores).
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Slots of each worker.
    #[arg(long, default_value_t = 2)]
    pub slots: u32,
    /// Context per request, in tokens.
    #[arg(long, default_value_t = 2048)]
    pub ctx: u32,
}

/// A running local network.
pub struct Devnet {
    workers: Vec<Node>,
    gateway: Node,
    pub dir: PathBuf,
}

impl Devnet {
    pub fn url(&self) -> String {
        self.gateway.ready.url.clone().unwrap_or_default()
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        // Every node is asked to stop at once; each then gets its grace time as it drops.
        self.gateway.proc.terminate();
        for w in &self.workers {
            w.proc.terminate();
        }
    }
}

/// Starts `workers` workers and one gateway on loopback, each with its own data directory under
/// `$AGORA_HOME/devnet`, on a private network of their own.
pub fn start(home: &Path, a: &DevnetArgs) -> Result<Devnet> {
    if a.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let store = ModelStore::open(home, true)?;
    let model = store.resolve_or_fetch(&a.model)?;
    let dir = home.join("devnet");
    std::fs::create_dir_all(&dir)?;
    let genesis = dir.join("genesis.toml");
    if !genesis.exists() {
        std::fs::write(&genesis, agora_node::network::new_genesis("devnet"))?;
    }
    let node_home = |name: &str| -> Result<PathBuf> {
        let h = dir.join(name);
        std::fs::create_dir_all(&h)?;
        let models = h.join("models");
        if !models.exists() {
            std::os::unix::fs::symlink(store.root(), &models)?;
        }
        Ok(h)
    };
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--no-mdns",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--network-file",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(genesis.display().to_string());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let (threads, slots, ctx) = (
        a.threads.to_string(),
        a.slots.to_string(),
        a.ctx.to_string(),
    );
    let worker_args = |boot: Option<&str>| -> Vec<String> {
        let mut v = common(&[
            "--no-gateway",
            "--model",
            &model.name,
            "--threads",
            &threads,
            "--slots",
            &slots,
            "--ctx",
            &ctx,
        ]);
        if let Some(b) = boot {
            v.extend(["--bootstrap".to_string(), b.to_string()]);
        }
        v
    };
    let mut workers: Vec<Node> = Vec::new();
    for i in 0..a.workers {
        let name = format!("worker-{}", i + 1);
        let h = node_home(&name)?;
        let boot = match workers.first() {
            Some(w) => Some(w.ready.p2p_addr()?.to_string()),
            None => None,
        };
        let w = start_node(
            &name,
            &h,
            &worker_args(boot.as_deref()),
            Some(&dir.join(format!("{name}.log"))),
        )?;
        eprintln!("  {name}: {}", w.ready.peer_id);
        workers.push(w);
    }
    let boot = workers[0].ready.p2p_addr()?.to_string();
    let listen = a.listen.to_string();
    let gateway = start_node(
        "gateway",
        &node_home("gateway")?,
        &common(&["--no-worker", "--listen", &listen, "--bootstrap", &boot]),
        Some(&dir.join("gateway.log")),
    )?;
    eprintln!("  gateway:  {}", gateway.ready.peer_id);
    let net = Devnet {
        workers,
        gateway,
        dir,
    };
    // Wait until the gateway sees every worker.
    crate::proc::wait_workers(&net.url(), a.workers as u64, Duration::from_secs(30))
        .with_context(|| format!("logs are in {}", net.dir.display()))?;
    Ok(net)
}

pub fn devnet(home: &Path, a: DevnetArgs) -> Result<()> {
    eprintln!(
        "starting a local network: {} workers and a gateway",
        a.workers
    );
    let net = start(home, &a)?;
    let url = net.url();
    println!(
        "devnet ready: {} workers serving {}",
        net.workers.len(),
        a.model
    );
    println!("listening on {url}");
    println!("  OpenAI API:  {url}/v1");
    println!("  try:         agora chat --url {url} \"Hello\"");
    println!("  peers:       agora nodes --url {url}");
    println!("  logs:        {}", net.dir.display());
    println!("Ctrl-C stops every node.");
    wait_for_ctrl_c()?;
    eprintln!("stopping the devnet…");
    drop(net);
    Ok(())
}

pub fn demo(home: &Path, a: DevnetArgs) -> Result<()> {
    eprintln!(
        "agora demo: starting {} workers and a gateway on this machine…",
        a.workers
    );
    let net = start(home, &a)?;
    let url = net.url();
    println!("network ready at {url}/v1");
    let names: std::collections::HashMap<String, String> = net
        .workers
        .iter()
        .map(|w| (w.ready.peer_id.clone(), w.proc.name().to_string()))
        .collect();
    let client = Client::new(&url);
    let model = client
        .get_json("/v1/models")?
        .pointer("/data/0/id")
        .and_then(Value::as_str)
        .unwrap_or(&a.model)
        .to_string();
    let questions = [
        "What is the capital of France?",
        "Give me one tip for learning to cook.",
        "Why is the sky blue?",
        "Write a haiku about the sea.",
        "Name three planets.",
        "What do bees make?",
    ];
    for q in questions {
        let body = json!({"model": model, "messages": [{"role": "user", "content": q}], "max_tokens": 48, "temperature": 0.7});
        let t0 = Instant::now();
        let v = client.post_json("/v1/chat/completions", &body)?;
        let worker = v
            .pointer("/agora/workers/0")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let answer = v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .replace('\n', " ");
        println!("\nQ: {q}");
        println!("A: {answer}");
        println!(
            "   answered by {} ({}…) in {:.2} s, seed {}",
            names.get(worker).map(String::as_str).unwrap_or("?"),
            &worker[..worker.len().min(16)],
            t0.elapsed().as_secs_f64(),
            v["seed"]
        );
    }
    println!("\nstopping the demo network.");
    drop(net);
    Ok(())
}

fn wait_for_ctrl_c() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(())
}
