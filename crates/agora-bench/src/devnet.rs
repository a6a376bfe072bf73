//! `agora devnet` and `agora demo`: a whole network on this machine, in one command.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agora_api::client::Client;
use agora_models::catalog;
use agora_models::store::ModelStore;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

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

/// A child process, stopped (SIGTERM, then SIGKILL) on drop.
struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid we own; a failure (already gone) is harmless.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a started node printed about itself.
struct Started {
    proc: Proc,
    peer_id: String,
    p2p: Vec<String>,
    url: Option<String>,
}

/// A running local network.
pub struct Devnet {
    workers: Vec<Started>,
    gateway: Started,
    pub dir: PathBuf,
}

impl Devnet {
    pub fn url(&self) -> String {
        self.gateway.url.clone().unwrap_or_default()
    }
}

fn spawn_node(name: &str, home: &Path, log: &Path, args: &[String]) -> Result<Started> {
    let exe = std::env::current_exe()?;
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.env("AGORA_HOME", home)
        .arg("node")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log_file);
    // SAFETY: prctl in the child before exec; it only asks the kernel to end the child when
    // this process dies, so no node outlives a killed devnet.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting a node")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut peer, mut p2p, mut url) = (String::new(), Vec::new(), None);
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("peer id: ") {
                peer = p.trim().to_string();
            } else if let Some(a) = line.strip_prefix("p2p: ") {
                p2p.push(a.trim().to_string());
            } else if let Some(u) = line.strip_prefix("listening on ") {
                url = Some(u.trim().to_string());
            } else if line.starts_with("Ctrl-C stops the node.")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send((peer.clone(), p2p.clone(), url.clone()));
            }
        }
    });
    let proc = Proc {
        name: name.to_string(),
        child,
    };
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok((peer_id, p2p, url)) => Ok(Started {
            proc,
            peer_id,
            p2p,
            url,
        }),
        Err(_) => bail!("{name} did not start; see {}", log.display()),
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
    let mut workers = Vec::new();
    for i in 0..a.workers {
        let name = format!("worker-{}", i + 1);
        let h = node_home(&name)?;
        let boot = workers.first().map(|w: &Started| w.p2p[0].clone());
        let w = spawn_node(
            &name,
            &h,
            &dir.join(format!("{name}.log")),
            &worker_args(boot.as_deref()),
        )?;
        eprintln!("  {name}: {}", w.peer_id);
        workers.push(w);
    }
    let boot = workers[0].p2p[0].clone();
    let listen = a.listen.to_string();
    let gateway = spawn_node(
        "gateway",
        &node_home("gateway")?,
        &dir.join("gateway.log"),
        &common(&["--no-worker", "--listen", &listen, "--bootstrap", &boot]),
    )?;
    eprintln!("  gateway:  {}", gateway.peer_id);
    let net = Devnet {
        workers,
        gateway,
        dir,
    };
    // Wait until the gateway sees every worker.
    let client = Client::new(&net.url());
    let t0 = Instant::now();
    loop {
        let seen = client
            .get_json("/v1/models")
            .ok()
            .and_then(|v| v.pointer("/data/0/agora/workers").and_then(Value::as_u64))
            .unwrap_or(0);
        if seen >= u64::from(a.workers) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "the gateway saw only {seen} of {} workers after 30 s; logs are in {}",
                a.workers,
                net.dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
        .map(|w| (w.peer_id.clone(), w.proc.name.clone()))
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
