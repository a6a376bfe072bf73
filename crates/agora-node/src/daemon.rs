//! The daemon's assembly: which roles a node runs and how they are wired together. `agora node`
//! parses its flags into a [`DaemonConfig`], [`Daemon::start`]s it, prints what it says, and
//! runs it until a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agora_api::HttpServer;
use agora_core::Identity;
use agora_engine::Engine;
use agora_tlog::note::Vkey;

use crate::gateway::{Gateway, GatewayConfig};
use crate::validator::{ValidatorConfig, ValidatorStats};
use crate::worker::{Speed, WorkerLimits};
use crate::{NodeConfig, NodeError, P2pOptions};

/// The gateway role: the HTTP API, routing, and what it does with logs and verdicts.
#[derive(Clone)]
pub struct GatewayRole {
    pub config: GatewayConfig,
    /// Run this node's own transparency log under `/log`, with this disk budget.
    pub serve_log: Option<u64>,
    /// The witnesses that log gathers cosignatures from (a tlog-policy with their URLs and a
    /// quorum): a community's log must be cosigned, its witnesses date its votes.
    pub log_witnesses: Option<agora_tlog::Policy>,
    /// Append receipts to this log instead of the node's own.
    pub log_url: Option<String>,
    /// The key of that log (the node's own log's key is known without it).
    pub log_key: Option<Vkey>,
    /// Also validate receipts of that log (needs the model).
    pub validator: Option<ValidatorRole>,
    /// Tokenizers by model digest: with them, `POST /agora/v1/trace` traces texts through the
    /// node's indexed datasets.
    pub tokenizers: Option<Arc<dyn crate::trace::Tokenizers>>,
}

impl std::fmt::Debug for GatewayRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayRole")
            .field("config", &self.config)
            .field("serve_log", &self.serve_log)
            .field("log_witnesses", &self.log_witnesses.is_some())
            .field("log_url", &self.log_url)
            .field("log_key", &self.log_key)
            .field("validator", &self.validator)
            .field("tokenizers", &self.tokenizers.is_some())
            .finish()
    }
}

/// The validator role's settings.
#[derive(Clone, Copy, Debug)]
pub struct ValidatorRole {
    pub probability: f64,
    pub probation_probability: f64,
}

/// Offers the models in the node's store to its peers (provider records, and the model
/// protocol), within the upload limit.
fn share_models(cfg: &DaemonConfig, net: &agora_net::NetHandle) {
    let store = match agora_models::ModelStore::open(&cfg.node.home, false) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("not offering models to peers: {e}");
            return;
        }
    };
    #[cfg(feature = "cheat")]
    let sharing = match cfg.share_misbehave {
        Some(m) => agora_share::Sharing::misbehaving(store, cfg.upload_limit, m),
        None => agora_share::Sharing::new(store, cfg.upload_limit),
    };
    #[cfg(not(feature = "cheat"))]
    let sharing = agora_share::Sharing::new(store, cfg.upload_limit);
    // Announces the store's models now (the first tick) and those added later.
    tokio::spawn(Arc::clone(&sharing).keep_announcing(net.clone()));
    tokio::spawn(sharing.serve(net.clone()));
}

/// Everything a node runs, decided.
pub struct DaemonConfig {
    pub node: NodeConfig,
    pub p2p: P2pOptions,
    pub worker_limits: WorkerLimits,
    /// `None`: a pure worker (no HTTP API).
    pub gateway: Option<GatewayRole>,
    /// Bytes per second sent to peers fetching models from this node's store (`None`: no
    /// limit).
    pub upload_limit: Option<u64>,
    /// Test-only: serve models to peers wrongly.
    #[cfg(feature = "cheat")]
    pub share_misbehave: Option<agora_share::cheat::Misbehave>,
}

/// A started node: its network, its HTTP server (when it is a gateway), and the lines that say
/// what it is (peer id, addresses, roles), to print.
pub struct Daemon {
    net: agora_net::Net,
    server: Option<HttpServer>,
    /// What the node says about itself at start, one line each, in order.
    pub lines: Vec<String>,
}

impl Daemon {
    /// Starts the network layer and every role of `cfg` (inside a tokio runtime). `engine` is
    /// the loaded model (`None` for a pure gateway).
    pub async fn start(
        cfg: DaemonConfig,
        identity: Arc<Identity>,
        engine: Option<Arc<dyn Engine>>,
        attestor: crate::Attestor,
    ) -> Result<Daemon, NodeError> {
        let net = crate::start_network(&cfg.node.home, &identity, &cfg.p2p).await?;
        let handle = net.handle.clone();
        let mut lines = vec![format!("peer id: {}", handle.peer_id())];
        lines.extend(handle.listen_addrs().iter().map(|a| format!("p2p: {a}")));
        share_models(&cfg, &handle);
        let speed = Arc::new(Speed::default());
        if let Some(e) = &engine {
            tokio::spawn(crate::worker::serve(
                handle.clone(),
                Arc::clone(e),
                attestor.clone(),
                cfg.worker_limits.clone(),
                Arc::clone(&speed),
            ));
        }
        tokio::spawn(crate::publish_status(
            handle.clone(),
            engine.clone(),
            cfg.gateway.is_some(),
            Arc::clone(&speed),
            Duration::from_secs(2),
        ));
        let Some(role) = cfg.gateway else {
            lines.push(
                "agora node: worker only (no HTTP API); gateways reach it over the network".into(),
            );
            if let Some(e) = &engine {
                lines.push(model_line(e.as_ref(), cfg.node.threads));
            }
            return Ok(Daemon {
                net,
                server: None,
                lines,
            });
        };
        let server = start_gateway(
            &cfg.node, role, &identity, engine, attestor, &net, &mut lines,
        )
        .await?;
        Ok(Daemon {
            net,
            server: Some(server),
            lines,
        })
    }

    /// Serves until `shutdown` resolves, then lets requests in flight finish (10 s at most).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = self.server.map(|s| {
            tokio::spawn(s.serve(async move {
                let _ = stop_rx.await;
            }))
        });
        shutdown.await;
        eprintln!("stopping: finishing requests in flight (at most 10 s)…");
        let _ = stop_tx.send(());
        let mut result = Ok(());
        if let Some(serve) = serve {
            match tokio::time::timeout(Duration::from_secs(10), serve).await {
                Ok(Ok(r)) => result = r.map_err(NodeError::Serve),
                Ok(Err(e)) => result = Err(NodeError::Serve(std::io::Error::other(e))),
                Err(_) => eprintln!("stopping now: some requests did not finish in time"),
            }
        }
        self.net.task.abort();
        result
    }
}

/// What the dashboard is told: where receipts are logged (the node's own log as `/log`, so the
/// page reads it from the origin it came from) and the tlog-policy to check that log with — its
/// key, and for the node's own log the witnesses and quorum it gathers cosignatures from.
fn dashboard(
    log_url: Option<&String>,
    witnesses: Option<&agora_tlog::Policy>,
    serves_log: bool,
    key: Option<&Vkey>,
) -> agora_api::dashboard::DashboardConfig {
    let url = match (log_url, serves_log) {
        (Some(u), _) => u.clone(),
        (None, true) => "/log".to_string(),
        (None, false) => return Default::default(),
    };
    let Some(key) = key else {
        return Default::default();
    };
    let mut policy =
        witnesses
            .filter(|_| log_url.is_none())
            .cloned()
            .unwrap_or(agora_tlog::Policy {
                logs: Vec::new(),
                witnesses: Vec::new(),
                groups: Vec::new(),
                quorum: agora_tlog::policy::Quorum::None,
            });
    policy.logs = vec![agora_tlog::policy::PolicyLog {
        vkey: key.clone(),
        url: None,
    }];
    agora_api::dashboard::DashboardConfig {
        log: Some(agora_api::dashboard::DashboardLog {
            url,
            policy: policy.to_text(),
        }),
    }
}

/// The gateway role and what hangs off it: the log, receipts, transcripts, verdicts and the
/// validator. Returns the bound (not yet serving) HTTP server.
async fn start_gateway(
    node: &NodeConfig,
    role: GatewayRole,
    identity: &Arc<Identity>,
    engine: Option<Arc<dyn Engine>>,
    attestor: crate::Attestor,
    net: &agora_net::Net,
    lines: &mut Vec<String>,
) -> Result<HttpServer, NodeError> {
    let handle = net.handle.clone();
    let log = match role.serve_log {
        Some(max_bytes) => Some(crate::open_log(
            &node.home,
            identity,
            Duration::from_secs(1),
            max_bytes,
            role.log_witnesses.clone(),
        )?),
        None => None,
    };
    let own_vkey = log.as_ref().map(|l| l.vkey());
    let own_log = log.clone().filter(|_| role.log_url.is_none());
    let trusted = role.config.trusted.clone();
    let gateway = Gateway::new(handle.clone(), engine.clone(), attestor, role.config);
    let provenance = log.clone().map(|l| {
        agora_api::provenance::provenance_router(Arc::new(crate::provenance::Served::new(l)))
    });
    // The community's proposals, tallies and credit, when this node keeps its log.
    let genesis = std::fs::read_to_string(crate::network::genesis_path(&node.home)).ok();
    let community = match (&log, &genesis) {
        (Some(l), Some(g)) if g.contains("[governance]") => {
            match crate::community::Served::new(g, l.clone()) {
                Ok(s) => {
                    lines.push(
                        "  community:   proposals, tallies and credit at /agora/v1/proposals and /agora/v1/credit".into(),
                    );
                    Some(agora_api::community::community_router(Arc::new(s)))
                }
                Err(e) => {
                    lines.push(format!("  community:   not served: {e}"));
                    None
                }
            }
        }
        _ => None,
    };
    let mut server = crate::bind_backend(node.listen, &node.api, Arc::new(gateway.clone()), log)
        .await?
        .with_routes(agora_api::datasets::datasets_router(Arc::new(
            crate::datasets::Catalog::new(&node.home),
        )));
    if let Some(p) = provenance {
        server = server.with_routes(p);
    }
    if let Some(c) = community {
        server = server.with_routes(c);
    }
    if let Some(t) = role.tokenizers.clone() {
        server = server.with_routes(agora_api::trace::trace_router(
            Arc::new(crate::trace::Tracer::new(&node.home, t)),
            node.api.body_timeout,
        ));
    }
    let url = format!("http://{}", server.addr);
    let log_url = role
        .log_url
        .clone()
        .or_else(|| own_vkey.as_ref().map(|_| format!("{url}/log")));
    // The key of the log receipts go to: this node's own, or the one given.
    let receipts_key = match (&role.log_url, &own_vkey) {
        (None, Some(k)) => Some(k.clone()),
        _ => role.log_key.clone(),
    };
    if let Some(u) = &log_url {
        gateway.set_log(u, receipts_key.clone(), own_log);
    }
    server = server.with_routes(agora_api::dashboard::dashboard_router(dashboard(
        role.log_url.as_ref(),
        role.log_witnesses.as_ref(),
        own_vkey.is_some(),
        receipts_key.as_ref(),
    )));

    tokio::spawn(gateway.clone().serve_transcripts());
    let model_here = engine.is_some();
    lines.push(if trusted.is_empty() {
        format!(
            "  verdicts:    rejections count once re-checked here{}; no transcript is released (--trust-validator)",
            if model_here { "" } else { " (no model here: none count)" }
        )
    } else {
        format!(
            "  verdicts:    acted on from {} trusted validator(s); others' rejections are re-checked{}",
            trusted.len(),
            if model_here { "" } else { " (no model here: ignored)" }
        )
    });
    if log_url.is_some() && receipts_key.is_none() {
        lines.push(
            "  transcripts: not released to validators (give the log's key with --log-key)".into(),
        );
    }
    tokio::spawn(crate::validator::follow_verdicts(
        handle.clone(),
        gateway.clone(),
    ));
    if let (Some(v), Some(e), Some(log_url), Some(key)) =
        (role.validator, &engine, &log_url, &receipts_key)
    {
        let vcfg = ValidatorConfig {
            log_url: log_url.clone(),
            log_key: key.clone(),
            probability: v.probability,
            probation_probability: v.probation_probability,
            tolerances: agora_verify::Tolerances::default(),
            poll: Duration::from_millis(500),
        };
        tokio::spawn(crate::validator::run(
            handle.clone(),
            Arc::clone(e),
            Arc::clone(identity),
            vcfg,
            Arc::new(ValidatorStats::default()),
            gateway.clone(),
        ));
        lines.push(format!(
            "  validator:   checks {:.0}% of the receipts in {log_url}",
            v.probability * 100.0
        ));
    }
    if let Some(v) = &own_vkey {
        lines.push(format!("  log:         {url}/log   (vkey {v})"));
    }
    lines.push(match &engine {
        Some(e) => model_line(e.as_ref(), node.threads),
        None => "agora node: gateway only; requests go to workers on the network".into(),
    });
    lines.push(format!("listening on {url}"));
    lines.push(format!("  OpenAI API:  {url}/v1"));
    lines.push(format!("  try:         agora chat --url {url} \"Hello\""));
    lines.push(format!("  peers:       agora nodes --url {url}"));
    lines.push(format!("  metrics:     {url}/metrics"));
    Ok(server)
}

/// "agora node: serving MODEL (sha256:…) with S slots × C tokens on T threads".
pub fn model_line(e: &dyn Engine, threads: u32) -> String {
    let info = e.info();
    format!(
        "agora node: serving {} (sha256:{}…) with {} slots × {} tokens on {threads} threads",
        info.name,
        &info.sha256[..12.min(info.sha256.len())],
        info.slots.min(1 << 20),
        info.n_ctx
    )
}
