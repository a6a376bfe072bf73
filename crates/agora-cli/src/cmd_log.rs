//! `agora log ...` and `agora witness ...`: run the log and witness roles standalone, and the
//! client tools (add, checkpoint, prove, verify, fsck, monitor, hammer, bench).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_api::tlog::{HttpWitnessTransport, LogClient};
use agora_bench::hammer;
use agora_core::Envelope;
use agora_core::statement::{Proven, Statement};
use agora_log::{Accept, Log, LogConfig, Quota, Quotas, Witness};
use agora_tlog::Vkey;
use agora_tlog::checkpoint::SignedCheckpoint;
use agora_tlog::hash::{Hash, leaf_hash};
use agora_tlog::merkle;
use agora_tlog::policy::Policy;
use agora_tlog::proof::TlogProof;
use agora_tlog::tile::{self, Frontier, TilePath};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::cmd_identity::load_identity;
use agora_bench::parse_duration;

/// Parse a byte count: `1GiB`, `500MiB`, `64KiB`, `1GB`, `10MB`, `2kB` or plain bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024f64.powi(4),
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return Err(format!("{s:?} is not a size (e.g. 1GiB, 500MiB, 65536)")),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1GiB, 500MiB, 65536)"))?;
    let bytes = v * mult;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

pub(crate) const DEFAULT_LOG_URL: &str = "http://127.0.0.1:7700";

#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// Run the log role: POST /add, GET /checkpoint and /tile/... (tlog-tiles)
    Serve(ServeArgs),
    /// Append FILE to a log and print its index once it is durable
    Add {
        file: PathBuf,
        /// Log URL
        #[arg(long = "log", env = "AGORA_LOG_URL", default_value = DEFAULT_LOG_URL)]
        url: String,
    },
    /// Fetch and print a log's checkpoint (verified with --log-key or --policy)
    Checkpoint {
        url: String,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Print a .tlog-proof for the entry at INDEX under the current checkpoint
    Prove {
        url: String,
        index: u64,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Verify a .tlog-proof offline against a policy and the entry's bytes
    Verify {
        proof: PathBuf,
        #[arg(long)]
        policy: PathBuf,
        #[arg(long)]
        entry: PathBuf,
    },
    /// Re-derive every tile and the root from the entries and compare with what the log serves
    Fsck {
        url: String,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Follow a log's checkpoints and check consistency between every pair seen
    Monitor(MonitorArgs),
    /// Load generator: append entries at a rate and report throughput and latency
    Hammer(hammer::HammerConfig),
    /// Benchmark the log on this machine and print the figures with their conditions
    Bench(agora_bench::log::BenchArgs),
}

#[derive(Subcommand, Debug)]
pub enum WitnessCommand {
    /// Run the witness role: POST /add-checkpoint (tlog-witness), GET /evidence[/ID]
    Serve(WitnessServeArgs),
    /// Print the evidence statements a witness holds, one DSSE envelope per line
    Evidence { url: String },
    /// Verify an evidence statement on its own, trusting only the log's key
    VerifyEvidence {
        file: PathBuf,
        /// The log's verifier key
        #[arg(long)]
        log_key: String,
    },
}

#[derive(Args, Debug, Default, Clone)]
pub struct TrustArgs {
    /// The log's verifier key (checks the checkpoint signature)
    #[arg(long)]
    pub log_key: Option<String>,
    /// A tlog-policy file (checks the log signature and the witness quorum)
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// A policy already read (a community's, from its genesis rules).
    #[arg(skip)]
    pub inline: Option<Policy>,
}

impl TrustArgs {
    /// Parse and check a checkpoint as configured; `Ok((checkpoint, verified))`.
    pub(crate) fn open(&self, bytes: &[u8]) -> anyhow::Result<(SignedCheckpoint, bool)> {
        if let Some(p) = &self.inline {
            return Ok((p.verify_checkpoint(bytes)?, true));
        }
        if let Some(p) = &self.policy {
            let policy = read_policy(p)?;
            return Ok((policy.verify_checkpoint(bytes)?, true));
        }
        if let Some(k) = &self.log_key {
            let v = Vkey::parse(k).context("invalid --log-key")?;
            return Ok((SignedCheckpoint::open(bytes, &v)?, true));
        }
        Ok((SignedCheckpoint::parse(bytes)?, false))
    }
}

pub(crate) fn read_policy(p: &Path) -> anyhow::Result<Policy> {
    let data = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    Policy::parse(&data).with_context(|| format!("invalid policy {}", p.display()))
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed)
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Checkpoint origin [default: agora.log/<PeerId>]
    #[arg(long)]
    pub origin: Option<String>,
    /// tlog-policy naming the witnesses (with URLs) to gather cosignatures from, and the quorum
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Checkpoint interval
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Most entries per durable batch
    #[arg(long, default_value_t = 16_384)]
    pub batch_max: usize,
    /// Longest wait for more entries after the first of a batch
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    pub batch_wait: Duration,
    /// Append queue capacity (beyond it: 503 with Retry-After)
    #[arg(long, default_value_t = 65_536)]
    pub queue: usize,
    /// Disable redb quick-repair (faster commits, slow recovery after a crash)
    #[arg(long)]
    pub no_quick_repair: bool,
    /// Which entries to take: `statements` (DSSE envelopes of a known statement kind whose every
    /// signature verifies; others get 400) or `any` (any bytes: for tests and benchmarks)
    #[arg(long, default_value = "statements")]
    pub accept: Accept,
    #[command(flatten)]
    pub limits: LogLimitArgs,
}

/// Quotas and disk budget of a log.
#[derive(Args, Debug, Clone)]
pub struct LogLimitArgs {
    /// Disk budget: beyond it new entries get 507 (entries already logged stay readable)
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub log_max_bytes: u64,
    /// Statements per second one signer key may log (0: no limit); beyond, 429 with Retry-After
    #[arg(long, default_value_t = Quotas::default().signer.rate)]
    pub signer_rate: f64,
    /// Bytes per second one signer key may log (0: no limit)
    #[arg(long, default_value = "128KiB", value_parser = parse_bytes)]
    pub signer_bytes: u64,
    /// Entries per second one client address (IPv4, or IPv6 /64) may send, accepted or not
    /// (0: no limit)
    #[arg(long, default_value_t = Quotas::default().address.rate)]
    pub address_rate: f64,
    /// Bytes per second one client address may send (0: no limit)
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    pub address_bytes: u64,
    /// How many seconds of its rate a signer or an address may spend at once (the burst)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub quota_burst: Duration,
    /// No per-signer or per-address quota at all (for tests and load generators)
    #[arg(long)]
    pub no_quotas: bool,
}

impl LogLimitArgs {
    /// Set the quotas and the budget of `config`.
    pub fn apply(&self, config: &mut LogConfig) -> anyhow::Result<()> {
        for (name, v) in [
            ("--signer-rate", self.signer_rate),
            ("--address-rate", self.address_rate),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{name} must be a number of entries per second (0: no limit)");
            }
        }
        let burst_secs = self.quota_burst.as_secs_f64();
        if burst_secs <= 0.0 {
            bail!("--quota-burst must be positive");
        }
        config.max_bytes = self.log_max_bytes;
        config.quotas.signer = Quota {
            rate: self.signer_rate,
            bytes_rate: self.signer_bytes as f64,
            burst_secs,
        };
        config.quotas.address = Quota {
            rate: self.address_rate,
            bytes_rate: self.address_bytes as f64,
            burst_secs,
        };
        if self.no_quotas {
            config.quotas = Quotas::off();
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct WitnessServeArgs {
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub listen: SocketAddr,
    /// Witness name [default: agora.witness/<PeerId>]
    #[arg(long)]
    pub name: Option<String>,
    /// A tlog-policy whose `log` lines are the logs this witness trusts
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// A trusted log's verifier key (repeatable)
    #[arg(long = "log-key")]
    pub log_keys: Vec<String>,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    pub url: String,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Poll interval
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Stop after this many distinct checkpoints (0: forever)
    #[arg(long, default_value_t = 0)]
    pub count: usize,
    /// Stop after this long
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGORA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("agora")
        .build()?)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub fn run_log(home: &Path, cmd: LogCommand) -> anyhow::Result<()> {
    match cmd {
        LogCommand::Serve(a) => serve_log(home, a),
        LogCommand::Add { file, url } => {
            let data =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let i = LogClient::new(&url).add(&data)?;
            println!("{i}");
            Ok(())
        }
        LogCommand::Checkpoint { url, trust } => {
            let bytes = LogClient::new(&url).checkpoint()?;
            let (_, verified) = trust.open(&bytes)?;
            if !verified {
                eprintln!("warning: checkpoint not verified (pass --log-key or --policy)");
            }
            print!("{}", String::from_utf8_lossy(&bytes));
            Ok(())
        }
        LogCommand::Prove { url, index, trust } => prove(&url, index, &trust),
        LogCommand::Verify {
            proof,
            policy,
            entry,
        } => verify(&proof, &policy, &entry),
        LogCommand::Fsck { url, trust } => fsck(&url, &trust),
        LogCommand::Monitor(a) => monitor(a),
        LogCommand::Hammer(a) => {
            let rt = runtime()?;
            let report = rt.block_on(hammer::run(a))?;
            print!("{report}");
            if report.acked == 0 {
                bail!("no entry was acknowledged");
            }
            Ok(())
        }
        LogCommand::Bench(a) => agora_bench::log::run(a),
    }
}

pub fn run_witness(home: &Path, cmd: WitnessCommand) -> anyhow::Result<()> {
    match cmd {
        WitnessCommand::Serve(a) => serve_witness(home, a),
        WitnessCommand::Evidence { url } => {
            for e in agora_api::tlog::client::fetch_evidence(&url)? {
                println!("{}", String::from_utf8_lossy(&e));
            }
            Ok(())
        }
        WitnessCommand::VerifyEvidence { file, log_key } => {
            let data =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let vkey = Vkey::parse(&log_key).context("invalid --log-key")?;
            let env = Envelope::from_json(data.trim_ascii())?;
            let (signers, st) = Statement::open(&env)?;
            let Statement::Evidence(ev) = st else {
                bail!(
                    "{} is a {} statement, not evidence",
                    file.display(),
                    st.kind().name()
                );
            };
            match ev.verify(Some(&vkey))? {
                Proven::SplitView(sv) => println!(
                    "valid evidence: log {} signed two inconsistent checkpoints ({sv:?}); observed by {}",
                    vkey.name,
                    signers.first().map(|p| p.to_string()).unwrap_or_default()
                ),
                other => println!("valid evidence: {other:?}"),
            }
            Ok(())
        }
    }
}

fn serve_log(home: &Path, a: ServeArgs) -> anyhow::Result<()> {
    init_tracing();
    let id = load_identity(home)?;
    let origin = a.origin.clone().unwrap_or_else(|| id.default_log_origin());
    let mut config = LogConfig::new(&origin);
    config.batch_max = a.batch_max.max(1);
    config.batch_wait = a.batch_wait;
    config.queue = a.queue.max(1);
    config.checkpoint_interval = a.interval.max(Duration::from_millis(10));
    config.quick_repair = !a.no_quick_repair;
    config.policy = a.policy.as_deref().map(read_policy).transpose()?;
    config.accept = a.accept;
    a.limits.apply(&mut config)?;
    let dir = home.join("log");
    std::fs::create_dir_all(&dir)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let transport = Arc::new(HttpWitnessTransport::new(Duration::from_secs(10)));
        let log = Log::open(&dir.join("log.redb"), &id, config, Some(transport))?;
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        println!("listening on http://{}", listener.local_addr()?);
        println!("vkey {}", log.vkey());
        let (used, budget) = log.usage();
        println!(
            "accepting {}; {used} of {budget} bytes of disk budget used",
            match log.config().accept {
                Accept::Statements => "signed statements",
                Accept::Any => "any entries",
            }
        );
        use std::io::Write as _;
        std::io::stdout().flush()?;
        agora_api::serve_log(
            listener,
            log.clone(),
            &agora_api::ApiConfig::default(),
            shutdown_signal(),
        )
        .await?;
        tokio::task::spawn_blocking(move || log.shutdown()).await?;
        Ok(())
    })
}

fn serve_witness(home: &Path, a: WitnessServeArgs) -> anyhow::Result<()> {
    init_tracing();
    let id = load_identity(home)?;
    let name = a.name.clone().unwrap_or_else(|| id.default_witness_name());
    let mut logs = Vec::new();
    if let Some(p) = &a.policy {
        logs.extend(read_policy(p)?.logs.into_iter().map(|l| l.vkey));
    }
    for k in &a.log_keys {
        logs.push(Vkey::parse(k).with_context(|| format!("invalid --log-key {k}"))?);
    }
    if logs.is_empty() {
        bail!("the witness trusts no log: pass --policy or --log-key");
    }
    let dir = home.join("witness");
    std::fs::create_dir_all(&dir)?;
    let witness = Arc::new(Witness::open(&dir.join("witness.redb"), id, &name, logs)?);
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        println!("listening on http://{}", listener.local_addr()?);
        println!("vkey {}", witness.vkey());
        use std::io::Write as _;
        std::io::stdout().flush()?;
        agora_api::serve_witness(
            listener,
            witness,
            &agora_api::ApiConfig::default(),
            shutdown_signal(),
        )
        .await?;
        Ok(())
    })
}

fn prove(url: &str, index: u64, trust: &TrustArgs) -> anyhow::Result<()> {
    let client = LogClient::new(url);
    let bytes = client.checkpoint()?;
    let (sc, verified) = trust.open(&bytes)?;
    if !verified {
        eprintln!("warning: checkpoint not verified (pass --log-key or --policy)");
    }
    let p = client.tlog_proof(index, sc)?;
    // Check the proof against the entry the log serves before printing it.
    let size = p.checkpoint.checkpoint.size;
    let entries = client.entries(index / 256, tile::tile_width(0, index / 256, size))?;
    let entry = &entries[(index % 256) as usize];
    merkle::verify_inclusion(
        index,
        size,
        &leaf_hash(entry),
        &p.path,
        &p.checkpoint.checkpoint.root,
    )
    .context("the log's tiles do not prove its own entry")?;
    use std::io::Write as _;
    std::io::stdout().write_all(&p.to_bytes())?;
    Ok(())
}

fn verify(proof: &Path, policy: &Path, entry: &Path) -> anyhow::Result<()> {
    let p = TlogProof::parse(
        &std::fs::read(proof).with_context(|| format!("cannot read {}", proof.display()))?,
    )
    .with_context(|| format!("invalid proof {}", proof.display()))?;
    let policy = read_policy(policy)?;
    let data = std::fs::read(entry).with_context(|| format!("cannot read {}", entry.display()))?;
    let sc = p
        .verify(&leaf_hash(&data), &policy)
        .context("the proof does not verify")?;
    let cosigners = policy.cosigners(sc)?.len();
    println!(
        "OK: entry {} of {} is in the checkpoint of size {} (log signature and {} witness cosignature(s) verified)",
        p.index, sc.checkpoint.origin, sc.checkpoint.size, cosigners
    );
    Ok(())
}

fn fsck(url: &str, trust: &TrustArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = LogClient::new(url);
    let bytes = client.checkpoint()?;
    let (sc, verified) = trust.open(&bytes)?;
    let size = sc.checkpoint.size;
    let mut frontier = Frontier::new();
    let mut full = Vec::new();
    let mut tiles_checked = 0u64;
    let check_tile = |level: u8, index: u64, hashes: &[Hash]| -> anyhow::Result<()> {
        let t = TilePath::hashes(level, index, hashes.len() as u16);
        let served = client
            .tile(&t)?
            .with_context(|| format!("{} is missing", t.to_path()))?;
        let derived: Vec<u8> = hashes.iter().flat_map(|h| h.0).collect();
        if served != derived {
            bail!(
                "{} differs from the tile derived from the entries",
                t.to_path()
            );
        }
        Ok(())
    };
    let bundles = size.div_ceil(256);
    for b in 0..bundles {
        let width = tile::tile_width(0, b, size);
        for e in client.entries(b, width)? {
            frontier.push(leaf_hash(&e), &mut full);
        }
        for t in full.drain(..) {
            check_tile(t.level, t.index, &t.hashes)?;
            tiles_checked += 1;
        }
    }
    for level in 0..frontier.levels() {
        let p = frontier.partial(level);
        if !p.is_empty() {
            check_tile(level, tile::level_count(level + 1, size), p)?;
            tiles_checked += 1;
        }
    }
    let root = frontier.root();
    if root != sc.checkpoint.root {
        bail!(
            "the root derived from the entries ({root}) is not the checkpoint's ({})",
            sc.checkpoint.root
        );
    }
    println!(
        "fsck OK: {size} entries in {bundles} bundles, {tiles_checked} tiles re-derived, root {root} matches the {}checkpoint ({:.1} s)",
        if verified { "verified " } else { "unverified " },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn monitor(a: MonitorArgs) -> anyhow::Result<()> {
    let client = LogClient::new(&a.url);
    let started = Instant::now();
    let mut seen: Vec<(u64, Hash)> = Vec::new();
    loop {
        if a.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        match client.checkpoint() {
            Err(e) => eprintln!("monitor: {e}"),
            Ok(bytes) => {
                let (sc, _) = a.trust.open(&bytes)?;
                let (size, root) = (sc.checkpoint.size, sc.checkpoint.root);
                if !seen.contains(&(size, root)) {
                    let mut checked = 0;
                    for &(s, r) in &seen {
                        check_pair(&client, (s, r), (size, root))?;
                        checked += 1;
                    }
                    seen.push((size, root));
                    println!(
                        "checkpoint size {size} root {root}: consistent with all {checked} earlier"
                    );
                    if a.count > 0 && seen.len() >= a.count {
                        break;
                    }
                }
            }
        }
        std::thread::sleep(a.interval);
    }
    println!("monitor: {} checkpoints, every pair consistent", seen.len());
    Ok(())
}

/// Check that two checkpoints of a log are consistent, with a proof computed from its tiles.
fn check_pair(client: &LogClient, a: (u64, Hash), b: (u64, Hash)) -> anyhow::Result<()> {
    let (old, new) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    if old.0 == new.0 {
        if old.1 != new.1 {
            bail!(
                "INCONSISTENT: two roots for size {}: {} and {}",
                old.0,
                old.1,
                new.1
            );
        }
        return Ok(());
    }
    if old.0 == 0 {
        return Ok(());
    }
    let proof = client.consistency_proof(old.0, new.0)?;
    merkle::verify_consistency(old.0, new.0, &proof, &old.1, &new.1)
        .map_err(|e| anyhow::anyhow!("INCONSISTENT: size {} and size {}: {e}", old.0, new.0))
}
