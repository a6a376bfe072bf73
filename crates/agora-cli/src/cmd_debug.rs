//! `agora debug …`: tools for testing the network's defences. Hidden from `--help`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agora_engine::{JobSpec, PromptSpec, SamplingParams};
use agora_net::{Multiaddr, NetConfig, NetHandle, PeerId};
use agora_node::proto::{GenerateRequest, WorkerFrame};
use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Misbehave towards a worker: garbage frames, oversized frames, a request flood, resumed
    /// tokens the worker must refuse, or a false verdict gossiped against it. Prints one JSON
    /// line saying whether the worker cut this peer off.
    Rogue(RogueArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RogueMode {
    /// Behave (a control: the worker must not cut this peer off).
    Polite,
    Garbage,
    Oversized,
    Flood,
    /// Requests whose resumed tokens are out of the vocabulary or as long as the context: the
    /// worker must answer 400 (and not cut off a peer that sent well-formed frames).
    BadResume,
    /// Gossips a rejection verdict, signed by this peer's fresh key, naming the target: a
    /// gateway must not condemn a worker on an untrusted validator's word.
    FalseVerdict,
}

#[derive(Args, Debug)]
pub struct RogueArgs {
    /// The worker, as `/ip4/…/tcp/…/p2p/<peer id>`.
    #[arg(long)]
    pub target: Multiaddr,
    #[arg(long, value_enum)]
    pub mode: RogueMode,
    /// Genesis policy of the target's network (default: the public default network).
    #[arg(long)]
    pub network_file: Option<PathBuf>,
    /// Requests sent by `flood` (at most; it stops once cut off).
    #[arg(long, default_value_t = 50_000)]
    pub count: usize,
    /// The model the target serves (`bad-resume` asks for it).
    #[arg(long, default_value = agora_models::catalog::DEFAULT_MODEL)]
    pub model: String,
    /// The target's context window in tokens (`bad-resume` resumes that many tokens).
    #[arg(long, default_value_t = 2048)]
    pub ctx: u32,
}

pub fn run(home: &Path, cmd: DebugCommand) -> Result<()> {
    match cmd {
        DebugCommand::Rogue(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(rogue(home, a))
        }
    }
}

async fn rogue(home: &Path, a: RogueArgs) -> Result<()> {
    let Some(agora_net::multiaddr_protocol::P2p(target)) = a.target.iter().last() else {
        bail!("--target must end in /p2p/<peer id>");
    };
    let network = agora_node::network::network_id(home, a.network_file.as_deref())?;
    // One fresh key per run: the network key and, for `false-verdict`, the statement signer.
    let seed: [u8; 32] = rand::random();
    let mut cfg = NetConfig::new(seed, network);
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    cfg.bootstrap = vec![a.target.clone()];
    cfg.mdns = false;
    let net = agora_net::start(cfg).await?;
    let h = net.handle.clone();
    wait_connected(&h, target).await?;
    let started = Instant::now();
    let (mut sent, mut refused) = (0usize, 0usize);
    let mut statuses: Vec<u16> = Vec::new();
    match a.mode {
        RogueMode::Polite => {
            let mut s = h.open(target, h.protocols().generate.clone()).await?;
            s.send(&probe_request()).await?;
            let _ = s.recv_timeout::<WorkerFrame>(Duration::from_secs(5)).await;
            sent = 1;
        }
        RogueMode::Garbage => {
            let mut s = h.open(target, h.protocols().generate.clone()).await?;
            s.send_raw(24, b"this is not a request!!!").await?;
            let _ = s.recv_timeout::<WorkerFrame>(Duration::from_secs(5)).await;
            sent = 1;
        }
        RogueMode::Oversized => {
            let mut s = h.open(target, h.protocols().generate.clone()).await?;
            s.send_raw(u32::MAX, b"xxxxxxxx").await?;
            let _ = s.recv_timeout::<WorkerFrame>(Duration::from_secs(5)).await;
            sent = 1;
        }
        RogueMode::Flood => {
            let req = probe_request();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..a.count {
                let (h2, req) = (h.clone(), req.clone());
                tasks.spawn(async move {
                    let mut s = h2
                        .open(target, h2.protocols().generate.clone())
                        .await
                        .ok()?;
                    s.send(&req).await.ok()?;
                    s.recv_timeout::<WorkerFrame>(Duration::from_secs(5))
                        .await
                        .ok()
                        .flatten()
                });
                sent += 1;
                while tasks.len() >= 256 {
                    if let Some(Ok(Some(WorkerFrame::Error(e)))) = tasks.join_next().await
                        && e.status == 429
                    {
                        refused += 1;
                    }
                }
                if !still_reachable(&h, target).await {
                    break;
                }
            }
            while let Some(r) = tasks.join_next().await {
                if let Ok(Some(WorkerFrame::Error(e))) = r
                    && e.status == 429
                {
                    refused += 1;
                }
            }
        }
        RogueMode::BadResume => {
            let ctx = a.ctx.clamp(1, 1 << 20) as usize;
            for (resume, max_tokens) in [(vec![u32::MAX - 7], Some(16)), (vec![1u32; ctx], None)] {
                let mut req = probe_request();
                req.model = a.model.clone();
                req.job.max_tokens = max_tokens;
                req.resume = resume;
                let mut s = h.open(target, h.protocols().generate.clone()).await?;
                s.send(&req).await?;
                sent += 1;
                // 0: no answer, or not an error frame.
                statuses.push(
                    match s.recv_timeout::<WorkerFrame>(Duration::from_secs(10)).await {
                        Ok(Some(WorkerFrame::Error(e))) => e.status,
                        _ => 0,
                    },
                );
            }
        }
        RogueMode::FalseVerdict => {
            let id = agora_core::Identity::from_seed(&seed);
            let worker = agora_node::to_core_id(&target)
                .ok_or_else(|| anyhow::anyhow!("the target is not an Ed25519 key"))?;
            let verdict = agora_core::statement::Verdict {
                receipt: agora_core::Sha256::of(&rand::random::<[u8; 32]>()),
                worker: Some(worker),
                validator: id.peer_id(),
                accept: false,
                stats: Default::default(),
                reason: Some("token 3 differs".into()),
                time: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            let envelope = agora_core::Statement::Verdict(verdict).sign(&id);
            // Gossip needs the peers' subscriptions first (exchanged on connection, meshed at
            // the next heartbeat, every second).
            tokio::time::sleep(Duration::from_secs(2)).await;
            h.publish_verdict(envelope.to_json().into_bytes());
            sent = 1;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    // Cut off means: the worker closed the connection and will not take a new stream from us.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reopen = tokio::time::timeout(
        Duration::from_secs(5),
        h.open(target, h.protocols().generate.clone()),
    )
    .await;
    let cut_off = match reopen {
        Err(_) | Ok(Err(_)) => true,
        Ok(Ok(mut s)) => {
            // The stream may open on a connection about to close: a well-formed request that
            // gets an answer (404, no such model) means we were not cut off.
            let answered = s.send(&probe_request()).await.is_ok()
                && matches!(
                    s.recv_timeout::<WorkerFrame>(Duration::from_secs(3)).await,
                    Ok(Some(_))
                );
            !answered
        }
    };
    println!(
        "{}",
        json!({
            "mode": format!("{:?}", a.mode).to_lowercase(), "cut_off": cut_off, "sent": sent,
            "refused_429": refused, "statuses": statuses,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    net.task.abort();
    Ok(())
}

async fn wait_connected(h: &NetHandle, target: PeerId) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        if h.peers().iter().any(|p| p.peer_id == target && p.connected) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("rogue: could not connect to {target} within 15 s")
}

async fn still_reachable(h: &NetHandle, target: PeerId) -> bool {
    h.peers().iter().any(|p| p.peer_id == target && p.connected)
}

/// A well-formed request the worker answers at once (404: it serves no such model).
fn probe_request() -> GenerateRequest {
    GenerateRequest {
        model: "no-such-model".into(),
        job: JobSpec {
            prompt: PromptSpec::Text("probe".into()),
            params: SamplingParams::default(),
            max_tokens: Some(1),
            stop: vec![],
            ignore_eos: false,
            logit_bias: Default::default(),
            fingerprint: false,
        },
        resume: vec![],
    }
}
