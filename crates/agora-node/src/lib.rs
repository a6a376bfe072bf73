//! The Agora daemon: resolves the model, starts the engine and serves the API.
//!
//! `agora node` with no flags is worker + gateway on one machine: one command gives a working
//! network of one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use agora_api::{ApiConfig, HttpServer, LocalBackend};
use agora_engine::store::{ModelStore, StoreError};
use agora_engine::{Engine, LlamaConfig, LlamaEngine, llama::LoadError};

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
    pub body_limit: usize,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("could not listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Resolves (fetching if needed) and loads the model. Blocking: call before or outside async code.
pub fn load_engine(cfg: &NodeConfig, progress: bool) -> Result<Arc<LlamaEngine>, NodeError> {
    let store = ModelStore::open(&cfg.home, progress)?;
    let model = store.resolve_or_fetch(&cfg.model)?;
    let mut lc = LlamaConfig::new(model.path, model.name, model.sha256);
    lc.threads = cfg.threads;
    lc.slots = cfg.slots;
    lc.ctx = cfg.ctx;
    lc.queue = cfg.queue;
    Ok(Arc::new(LlamaEngine::load(lc)?))
}

/// Binds the API serving `engine` locally.
pub async fn bind(cfg: &NodeConfig, engine: Arc<dyn Engine>) -> Result<HttpServer, NodeError> {
    agora_api::bind(
        cfg.listen,
        Arc::new(LocalBackend::new(engine)),
        &ApiConfig {
            body_limit: cfg.body_limit,
        },
    )
    .await
    .map_err(|source| NodeError::Listen {
        addr: cfg.listen,
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
