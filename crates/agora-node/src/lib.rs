//! The Agora daemon: identity, roles and their wiring.
//!
//! `agora node` with no flags is worker + gateway: one command gives a working network of one,
//! which joins any other nodes of its community it finds (mDNS on the LAN, `--bootstrap`
//! elsewhere). `--no-worker` makes a pure gateway; `--no-gateway` a pure worker.

pub mod affinity;
pub mod attest;
#[cfg(feature = "cheat")]
pub mod cheat;
pub mod community;
pub mod convert;
pub mod daemon;
pub mod datasets;
pub mod disclosure;
pub mod entries;
pub mod gateway;
pub mod network;
pub mod proto;
pub mod provenance;
pub mod reputation;
pub mod text_index;
pub mod trace;
pub mod transcript;
pub mod validator;
pub mod verifier;
pub mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agora_api::{ApiConfig, Backend, HttpServer, LocalBackend};
use agora_engine::Engine;
use agora_net::{Multiaddr, NetConfig, NetHandle, NodeStatus, ServedModel};

pub use attest::Attestor;
pub use gateway::{Gateway, GatewayConfig};
pub use worker::{Speed, WorkerLimits};

/// A statement's key (`agora_core::PeerId`) as the network's peer id: the same Ed25519 key,
/// printed alike (pinned to libp2p's test vector in agora-core).
pub fn to_net_id(p: &agora_core::PeerId) -> Option<agora_net::PeerId> {
    p.to_string().parse().ok()
}

/// A network peer id as a statement key, when it is an Ed25519 key (every Agora node's is).
pub fn to_core_id(p: &agora_net::PeerId) -> Option<agora_core::PeerId> {
    p.to_string().parse().ok()
}

/// Everything `agora node` can be told.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub home: PathBuf,
    /// Catalog name, stored name or digest, `hf:` source, or path to a GGUF.
    pub model: String,
    pub listen: SocketAddr,
    pub threads: u32,
    pub slots: u32,
    pub ctx: u32,
    pub queue: u32,
    /// Limits of the HTTP API: body size, connections, header and body timeouts.
    pub api: ApiConfig,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("could not listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Net(#[from] agora_net::NetError),
    /// The node's key cannot be used, for a reason with no underlying error (e.g. a key file
    /// other users can read).
    #[error("{0}")]
    Identity(String),
    /// The key file is missing or cannot be inspected.
    #[error("no key at {path} ({source}); run `agora init`")]
    NoKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file is there but does not hold a key.
    #[error("the key file {path} is unusable: {source}")]
    BadKey {
        path: PathBuf,
        #[source]
        source: agora_core::Error,
    },
    /// A key file is already there (keys are never overwritten).
    #[error("{path} already exists; refusing to overwrite a key")]
    KeyExists { path: PathBuf },
    /// A genesis file is already there (a node's network is never replaced).
    #[error("{path} already exists; refusing to replace this node's network")]
    GenesisExists { path: PathBuf },
    /// The genesis policy file cannot be read.
    #[error("cannot read the genesis file {path}: {source}")]
    Genesis {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be created.
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be written (or synced).
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A directory cannot be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the log: {0}")]
    Log(#[source] agora_log::Error),
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Binds the API serving `engine` locally (a node of one, no network).
pub async fn bind(cfg: &NodeConfig, engine: Arc<dyn Engine>) -> Result<HttpServer, NodeError> {
    bind_backend(
        cfg.listen,
        &cfg.api,
        Arc::new(LocalBackend::new(engine)),
        None,
    )
    .await
}

/// Binds the API for any backend, with a log under `/log` when given.
pub async fn bind_backend(
    listen: SocketAddr,
    api: &ApiConfig,
    backend: Arc<dyn Backend>,
    log: Option<agora_log::Log>,
) -> Result<HttpServer, NodeError> {
    agora_api::bind_with_log(listen, backend, api, log)
        .await
        .map_err(|source| NodeError::Listen {
            addr: listen,
            source,
        })
}

/// `$AGORA_HOME`, else `$XDG_DATA_HOME/agora`, else `~/.local/share/agora`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("AGORA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(x).join("agora");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/agora")
}

/// Keeps the network told what this node serves and how busy it is.
pub async fn publish_status(
    net: NetHandle,
    engine: Option<Arc<dyn Engine>>,
    gateway: bool,
    speed: Arc<Speed>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every / 2);
    loop {
        tick.tick().await;
        let mut s = NodeStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            worker: engine.is_some(),
            gateway,
            tokens_per_second: speed.get(),
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            ..Default::default()
        };
        if let Some(e) = &engine {
            let i = e.info();
            let l = e.load();
            s.models = vec![ServedModel {
                name: i.name.clone(),
                digest: format!("sha256:{}", i.sha256),
                n_ctx: i.n_ctx,
                unverifiable: i.unverifiable.is_some(),
            }];
            s.slots = l.slots.min(1 << 20);
            s.free_slots = l.slots.saturating_sub(l.slots_busy).min(1 << 20);
            s.queue = l.queued;
            s.conversations = e
                .held_conversations()
                .into_iter()
                .take(agora_net::status::MAX_CONVERSATIONS)
                .map(agora_engine::conversation::to_hex)
                .collect();
        }
        net.set_status(s);
    }
}

/// The network settings `agora node` passes on.
#[derive(Clone, Debug)]
pub struct P2pOptions {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub relays: Vec<Multiaddr>,
    pub mdns: bool,
    /// Genesis policy file of the community; the built-in default network when absent.
    pub network_file: Option<PathBuf>,
}

/// Starts the libp2p layer with the node's key and its community's network id.
pub async fn start_network(
    home: &Path,
    identity: &agora_core::Identity,
    p2p: &P2pOptions,
) -> Result<agora_net::Net, NodeError> {
    let network = network::network_id(home, p2p.network_file.as_deref())?;
    let mut cfg = NetConfig::new(identity.signing_key().to_bytes(), network);
    if !p2p.listen.is_empty() {
        cfg.listen = p2p.listen.clone();
    }
    cfg.bootstrap = p2p.bootstrap.clone();
    cfg.relays = p2p.relays.clone();
    cfg.mdns = p2p.mdns;
    Ok(agora_net::start(cfg).await?)
}

/// Opens this node's own log (`$AGORA_HOME/log/log.redb`), checkpoints every `interval`.
/// The node's log takes only signed statements, with the default quotas on entries from the
/// network and a disk budget of `max_bytes`; with `witnesses`, each checkpoint is published once
/// their quorum cosigned it.
pub fn open_log(
    home: &Path,
    identity: &agora_core::Identity,
    interval: Duration,
    max_bytes: u64,
    witnesses: Option<agora_tlog::Policy>,
) -> Result<agora_log::Log, NodeError> {
    let dir = home.join("log");
    std::fs::create_dir_all(&dir).map_err(|source| NodeError::Dir {
        path: dir.clone(),
        source,
    })?;
    let mut cfg = agora_log::LogConfig::new(&identity.default_log_origin());
    cfg.checkpoint_interval = interval;
    cfg.max_bytes = max_bytes;
    let transport = witnesses.is_some().then(|| {
        Arc::new(agora_api::tlog::HttpWitnessTransport::new(
            Duration::from_secs(10),
        )) as Arc<dyn agora_log::WitnessTransport>
    });
    cfg.policy = witnesses;
    agora_log::Log::open(&dir.join("log.redb"), identity, cfg, transport).map_err(NodeError::Log)
}
