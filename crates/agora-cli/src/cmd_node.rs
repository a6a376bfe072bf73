//! `agora node`: serve a model to the network, and the network through the OpenAI API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agora_engine::{EchoEngine, Engine};
use agora_llama::{LlamaConfig, LlamaEngine};
use agora_models::{ModelStore, catalog};
use agora_net::Multiaddr;
use agora_node::daemon::{Daemon, DaemonConfig, GatewayRole, ValidatorRole};
use agora_node::{GatewayConfig, NodeConfig, P2pOptions, WorkerLimits};
use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Model to serve: a catalog name, a stored name or digest, `hf:ORG/REPO/FILE.gguf`, or a
    /// path to a GGUF file. Catalog and hf models are fetched on first use.
    #[arg(long, env = "AGORA_MODEL", default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Address of the HTTP API. Port 0 picks a free port (printed at start).
    #[arg(long, env = "AGORA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// CPU threads for inference (default: all cores).
    #[arg(long, env = "AGORA_THREADS")]
    pub threads: Option<u32>,
    /// Requests decoded together (continuous batching).
    #[arg(long, env = "AGORA_SLOTS", default_value_t = 4)]
    pub slots: u32,
    /// Context window of each request, in tokens (prompt + completion).
    #[arg(long, env = "AGORA_CTX", default_value_t = 2048)]
    pub ctx: u32,
    /// Requests that may wait for a free slot; beyond that the API answers 429.
    #[arg(long, env = "AGORA_QUEUE", default_value_t = 64)]
    pub queue: u32,
    /// Do not keep finished prompts' prefixes in their slots for later requests to reuse (a
    /// conversation's next turn, a shared system prompt). The cache lives in the slots' own
    /// memory, changes no bit of any answer, and gives a slot up at once to a new request.
    #[arg(long, env = "AGORA_NO_PREFIX_CACHE")]
    pub no_prefix_cache: bool,
    /// Memory, in MiB, for prefixes the slots had to give up (copied out when a slot's new
    /// request does not continue them, copied back when a later one does: more conversations
    /// than slots stay fast). Least recently used out first; 0 keeps only what slots hold.
    /// Default: 1/16 of the machine's memory, at most 2048.
    #[arg(long, env = "AGORA_PREFIX_CACHE_MB")]
    pub prefix_cache_mb: Option<u64>,
    /// Always decode with --threads threads. By default the node decodes with fewer while other
    /// processes keep cores busy (measured twice a second from /proc), so that a busy machine
    /// slows it down instead of stalling it; no bit of any answer changes.
    #[arg(long, env = "AGORA_FIXED_THREADS")]
    pub fixed_threads: bool,
    /// Route every request by the usual weighted draw, even a conversation's next turn (by
    /// default it goes to the worker that answered the last turn, which holds its prefix, when
    /// that worker has room).
    #[arg(long)]
    pub no_conversation_affinity: bool,
    /// Put a fingerprint of every answer's text in its receipt, as if each client asked for
    /// one (`"agora": {"provenance": "fingerprint"}`): edited copies of any answer can then be
    /// found, and anyone holding a candidate text can test it against the log.
    #[arg(long)]
    pub provenance_fingerprint: bool,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = agora_api::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// HTTP connections served at once; beyond, a newcomer is answered 503 and closed.
    #[arg(long, default_value_t = agora_api::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (also how long an idle connection is
    /// kept open); then the connection is closed.
    #[arg(long, default_value_t = agora_api::DEFAULT_HEADER_TIMEOUT.as_secs_f64())]
    pub header_timeout_secs: f64,
    /// Seconds a client has to send a request's body once its headers are in; then 408.
    #[arg(long, default_value_t = agora_api::DEFAULT_BODY_TIMEOUT.as_secs_f64())]
    pub body_timeout_secs: f64,

    /// Do not run a model: a pure gateway that routes every request to workers.
    #[arg(long, conflicts_with = "no_gateway")]
    pub no_worker: bool,
    /// Do not serve the HTTP API: a pure worker that serves gateways over the network.
    #[arg(long)]
    pub no_gateway: bool,
    /// Peer-to-peer listen address (repeatable; default: TCP and QUIC on every interface,
    /// random ports).
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    pub p2p_listen: Vec<Multiaddr>,
    /// A node to join through, as `/ip4/…/tcp/…/p2p/<peer id>` (repeatable).
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "AGORA_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<Multiaddr>,
    /// A relay to listen through when behind NAT, as `/…/p2p/<relay id>` (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub relay: Vec<Multiaddr>,
    /// Do not look for peers on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// The community's genesis policy file (default: $AGORA_HOME/genesis.toml if present,
    /// else the public default network). Nodes of different networks never exchange traffic.
    #[arg(long, value_name = "FILE", env = "AGORA_NETWORK_FILE")]
    pub network_file: Option<PathBuf>,
    /// Requests per second one peer may send this worker (bursts of twice as many); beyond,
    /// they are refused with 429, and a peer refused 1,000 times within 10 s is banned.
    #[arg(long, default_value_t = 2000.0)]
    pub peer_rate: f64,
    /// Seconds without a token after which a worker counts as stalled and the generation moves
    /// to another worker.
    #[arg(long, default_value_t = 10.0)]
    pub stall_timeout: f64,
    /// Run a transparency log in this node (under /log on its HTTP API) and append every
    /// receipt to it.
    #[arg(long)]
    pub serve_log: bool,
    /// Disk budget of the log run with --serve-log (e.g. 1GiB, 500MiB): beyond it new entries
    /// are refused with 507; entries already logged stay readable.
    #[arg(long, default_value = "1GiB", value_parser = crate::cmd_log::parse_bytes)]
    pub log_max_bytes: u64,
    /// The witnesses the log run with --serve-log gathers cosignatures from: a tlog-policy file
    /// with `witness NAME VKEY URL` lines and a `quorum` (a community's log must be cosigned).
    #[arg(long, value_name = "FILE", requires = "serve_log")]
    pub log_witnesses: Option<PathBuf>,
    /// Append receipts to this log (tlog-tiles base URL) instead.
    #[arg(long, value_name = "URL", env = "AGORA_LOG_URL")]
    pub log_url: Option<String>,
    /// Also be a validator: re-check a random share of the receipts in the log (needs the
    /// model, and --log-url or --serve-log).
    #[arg(long)]
    pub validator: bool,
    /// Share of receipts a validator checks.
    #[arg(long, default_value_t = 0.1)]
    pub check_probability: f64,
    /// Share of receipts a validator checks of workers on probation (keys with fewer than 3
    /// answers it accepted).
    #[arg(long, default_value_t = 0.5)]
    pub probation_probability: f64,
    /// A validator this gateway trusts (its peer id; repeat for several): its verdicts count
    /// without a re-check, and it may fetch the transcripts (prompts) of receipts the log
    /// selected for it. Without any, a rejection counts only once this gateway re-ran the check
    /// itself on the evidence (it needs the model), and no transcript leaves this gateway. A
    /// gateway that is also a validator trusts itself.
    #[arg(long, value_name = "PEER_ID")]
    pub trust_validator: Vec<agora_core::PeerId>,
    /// The log's verifier key: validators act only on checkpoints it signed, and a gateway
    /// releases transcripts only against them. Not needed with --serve-log (the node's own).
    #[arg(long, value_name = "VKEY")]
    pub log_key: Option<String>,
    /// How long a gateway keeps each answer's transcript (prompt and answer) for validators.
    #[arg(long, default_value_t = 3600)]
    pub transcript_retention_secs: u64,
    /// Share of requests a gateway offers first to a worker on probation (a key that validators
    /// it trusts have not yet seen answer well), so that new workers can earn their verdicts.
    #[arg(long, default_value_t = 0.1)]
    pub probation_share: f64,
    /// How many transcripts a gateway keeps at most (the oldest go first).
    #[arg(long, default_value_t = 10_000)]
    pub transcript_cap: usize,
    /// Load weights in llama.cpp's repacked layouts where this CPU has them (Q4_0, Q4_K and
    /// IQ4_NL in 8x8 blocks): faster prefill for those types, but their products can make a
    /// token's numbers depend on its batch. The self-check at start-up then tells; when it
    /// fails, the node serves without proofs (unverifiable), and gateways prefer other workers.
    #[arg(long, env = "AGORA_REPACK")]
    pub repack: bool,
    /// Bytes per second this node sends to peers fetching models from it, all together (e.g.
    /// 20MB, 1GiB; default: no limit). Every node offers the models in its store to its peers.
    #[arg(long, value_parser = crate::cmd_log::parse_bytes, value_name = "BYTES")]
    pub upload_limit: Option<u64>,
    /// Test-only: serve models to peers wrongly, `corrupt:N` (the N-th chunk sent has a byte
    /// flipped) or `die-at:N` (the process ends instead of sending its N-th chunk). Only in
    /// builds with the `cheat` feature.
    #[cfg(feature = "cheat")]
    #[arg(long, value_name = "MODE", hide = true)]
    pub cheat_share: Option<agora_share::cheat::Misbehave>,
    /// Cheat, for testing the verifier: swap:FILE, perturb-layer:N, skip-layer:N, system-prompt,
    /// alter-token[:N], unseeded, replay-proof, truncate-proof. Only in builds with the `cheat`
    /// feature.
    #[cfg(feature = "cheat")]
    #[arg(long, value_name = "MODE")]
    pub cheat: Option<agora_node::cheat::Cheat>,
    /// Test-only stand-in: answer with an instant echo engine instead of a model (it exists to
    /// measure the network layer; never use it to serve anyone).
    #[arg(long, hide = true)]
    pub test_echo_engine: bool,
}

pub fn run(home: &Path, args: NodeArgs) -> Result<()> {
    crate::init_logging("warn,agora=info");
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    if !(args.peer_rate > 0.0 && args.peer_rate.is_finite()) {
        bail!("--peer-rate must be a positive number of requests per second");
    }
    if args.stall_timeout <= 0.0 || !args.stall_timeout.is_finite() {
        bail!("--stall-timeout must be a positive number of seconds");
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let cfg = NodeConfig {
        home: home.to_path_buf(),
        model: args.model.clone(),
        listen: args.listen,
        threads,
        slots: args.slots,
        ctx: args.ctx,
        queue: args.queue,
        api: agora_api::ApiConfig {
            body_limit: args.body_limit,
            max_connections: args.max_connections,
            header_timeout: positive_secs("--header-timeout-secs", args.header_timeout_secs)?,
            body_timeout: positive_secs("--body-timeout-secs", args.body_timeout_secs)?,
        },
    };
    let engine: Option<Arc<dyn Engine>> = if args.no_worker {
        None
    } else if args.test_echo_engine {
        Some(Arc::new(EchoEngine::new("echo", cfg.ctx)))
    } else {
        Some(load(&cfg, &args, home).context("could not start the engine")?)
    };
    let p2p = P2pOptions {
        listen: args.p2p_listen.clone(),
        bootstrap: args.bootstrap.clone(),
        relays: args.relay.clone(),
        mdns: !args.no_mdns,
        network_file: args.network_file.clone(),
    };
    for (name, p) in [
        ("--check-probability", args.check_probability),
        ("--probation-probability", args.probation_probability),
        ("--probation-share", args.probation_share),
    ] {
        if !(0.0..=1.0).contains(&p) {
            bail!("{name} must be between 0 and 1");
        }
    }
    if args.validator && (engine.is_none() || args.test_echo_engine) {
        bail!("a validator re-runs answers: it needs the model (drop --no-worker)");
    }
    if args.validator && args.log_url.is_none() && !args.serve_log {
        bail!("a validator follows a log: give --log-url URL (or --serve-log)");
    }
    if args.validator && args.log_key.is_none() && !(args.serve_log && args.log_url.is_none()) {
        bail!(
            "a validator acts only on checkpoints it can verify: give the log's key with --log-key VKEY"
        );
    }
    let log_key = args
        .log_key
        .as_deref()
        .map(agora_tlog::note::Vkey::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("invalid --log-key: {e}"))?;
    let identity = Arc::new(agora_node::network::load_or_create_identity(home)?);
    let attestor = agora_node::Attestor::new(Arc::clone(&identity));
    #[cfg(feature = "cheat")]
    let attestor = {
        if let Some(c) = &args.cheat {
            eprintln!("WARNING: this node cheats ({c:?}), for testing");
        }
        attestor.with_cheat(args.cheat.clone())
    };
    let mut trusted =
        agora_node::validator::TrustedValidators::only(args.trust_validator.iter().cloned());
    if args.validator {
        trusted.insert(identity.peer_id());
    }
    let log_witnesses = args
        .log_witnesses
        .as_deref()
        .map(crate::cmd_log::read_policy)
        .transpose()?;
    let gateway = (!args.no_gateway).then(|| GatewayRole {
        config: GatewayConfig {
            stall_timeout: Duration::from_secs_f64(args.stall_timeout),
            transcript_cap: args.transcript_cap,
            transcript_retention: Duration::from_secs(args.transcript_retention_secs),
            trusted,
            probation_share: args.probation_share,
            conversation_affinity: !args.no_conversation_affinity,
            fingerprint_all: args.provenance_fingerprint,
            ..GatewayConfig::default()
        },
        serve_log: args.serve_log.then_some(args.log_max_bytes),
        log_witnesses: log_witnesses.clone(),
        log_url: args.log_url.clone(),
        log_key,
        tokenizers: Some(Arc::new(crate::cmd_trace::StoreTokenizers::new(home))),
        validator: args.validator.then_some(ValidatorRole {
            probability: args.check_probability,
            probation_probability: args.probation_probability,
        }),
    });
    let daemon = DaemonConfig {
        node: cfg,
        p2p,
        upload_limit: args.upload_limit,
        #[cfg(feature = "cheat")]
        share_misbehave: args.cheat_share,
        worker_limits: WorkerLimits {
            rate: args.peer_rate,
            burst: 2.0 * args.peer_rate,
            ..WorkerLimits::default()
        },
        gateway,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("agora-rt")
        .build()?;
    rt.block_on(async move {
        let node = Daemon::start(daemon, identity, engine, attestor).await?;
        for line in &node.lines {
            println!("{line}");
        }
        println!("Ctrl-C stops the node.");
        node.run_until(shutdown_signal()).await?;
        Ok::<(), anyhow::Error>(())
    })?;
    // Dropping the runtime first cancels any stream still open, so the engine thread can end.
    drop(rt);
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves (fetching if needed) and loads the model `cfg` names. Blocking: call before async
/// work starts. A cheating worker (`--features cheat`) may swap the weights it loads while its
/// engine still claims the resolved model.
fn load(cfg: &NodeConfig, args: &NodeArgs, home: &Path) -> Result<Arc<LlamaEngine>> {
    let store = ModelStore::open(&cfg.home, true)?;
    let model = match store.resolve_or_fetch(&cfg.model) {
        Ok(m) => m,
        // Not here and not from its index (or the index is out of reach): its peers may have
        // it, by digest.
        Err(e) => match crate::peers::want(&cfg.model, None, None) {
            Ok(want) => {
                eprintln!(
                    "{e}\nasking peers for {} (sha256:{})",
                    want.name, want.sha256
                );
                let peers = crate::peers::PeerArgs {
                    bootstrap: args.bootstrap.clone(),
                    network_file: args.network_file.clone(),
                    no_mdns: args.no_mdns,
                };
                crate::peers::fetch(home, &want, &peers)?;
                store.resolve_or_fetch(&format!("sha256:{}", want.sha256))?
            }
            Err(_) => return Err(e.into()),
        },
    };
    // Refused here in one sentence rather than inside llama.cpp: a file whose metadata does not
    // parse, or whose architecture the engine does not run (models fetched from a hub too).
    agora_models::architectures::check_file(&model.path)?;
    let path = weights(&model.path, args, home)?;
    let mut lc = LlamaConfig::new(path, model.name, model.sha256);
    lc.threads = cfg.threads;
    lc.slots = cfg.slots;
    lc.ctx = cfg.ctx;
    lc.queue = cfg.queue;
    lc.prefix_cache = !args.no_prefix_cache;
    lc.prefix_cache_bytes = args
        .prefix_cache_mb
        .unwrap_or_else(default_prefix_cache_mb)
        .saturating_mul(1 << 20);
    lc.adaptive_threads = !args.fixed_threads;
    lc.repack = args.repack;
    let mut engine = LlamaEngine::load(lc)?;
    self_check(&mut engine);
    Ok(Arc::new(engine))
}

/// Runs the self-check ([`agora_engine::selfcheck`]) and records its outcome in the engine:
/// a model whose numbers depend on the batch is served, but unverifiable, and says so.
fn self_check(engine: &mut LlamaEngine) {
    let t0 = std::time::Instant::now();
    let verdict = agora_engine::selfcheck::run(engine);
    match &verdict {
        Ok(()) => eprintln!(
            "self-check passed in {:.1} s: the same bits alone, batched and rescored; answers carry proofs",
            t0.elapsed().as_secs_f64()
        ),
        Err(why) => eprintln!(
            "WARNING: self-check failed ({why}): this model's answers cannot be proven here, so \
             they are served unverifiable (receipts, status and `agora nodes` say so)"
        ),
    }
    engine.set_unverifiable(verdict.err());
}

#[cfg(not(feature = "cheat"))]
fn weights(honest: &Path, _args: &NodeArgs, _home: &Path) -> Result<PathBuf> {
    Ok(honest.to_path_buf())
}

#[cfg(feature = "cheat")]
fn weights(honest: &Path, args: &NodeArgs, home: &Path) -> Result<PathBuf> {
    Ok(match &args.cheat {
        Some(c) => c
            .weights(honest, &home.join("cheat"))
            .map_err(anyhow::Error::msg)?
            .unwrap_or_else(|| honest.to_path_buf()),
        None => honest.to_path_buf(),
    })
}

/// A duration from a flag in seconds: positive and finite.
fn positive_secs(flag: &str, secs: f64) -> Result<Duration> {
    if !(secs > 0.0 && secs.is_finite() && secs < 1e9) {
        bail!("{flag} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// 1/16 of the machine's memory (from /proc/meminfo), at most 2 GiB; 256 MiB where unknown.
fn default_prefix_cache_mb() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    total_kib.map_or(256, |kib| (kib / 1024 / 16).clamp(64, 2048))
}
