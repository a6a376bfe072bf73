//! The gateway role: the OpenAI API of this node serves the whole network.
//!
//! Each request goes to a worker that serves the model, chosen by spare capacity (slots minus
//! what is busy, counting what this gateway already sent), then speed, then round-trip time,
//! with random tie-breaking. When a worker dies, stalls past a deadline or drops the stream,
//! the generation resumes on another worker with the prompt, the tokens already streamed and
//! the same seed: the client sees one uninterrupted stream with the text an uninterrupted run
//! would have produced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_api::backend::{BoxFuture, ModelCard, Started, prepare_error};
use agora_api::{ApiError, Backend};
use agora_engine::{
    Attestation, Engine, Event, Finish, FinishReason, Generation, JobSpec, Load, LogRef,
    PromptSpec, TokenEvent,
};
use agora_net::{FramedStream, NetHandle, PeerId, PeerInfo};
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::attest::Attestor;
use crate::convert::api_error;
use crate::proto::{GenerateRequest, WorkerFrame};
use crate::transcript::{Transcript, TranscriptStore};

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Longest wait for a worker's next frame before it is considered stalled.
    pub stall_timeout: Duration,
    /// Longest wait for a worker to accept (it may queue the request first).
    pub accept_timeout: Duration,
    /// Workers tried for one request, the first included.
    pub max_attempts: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(10),
            accept_timeout: Duration::from_secs(60),
            max_attempts: 4,
        }
    }
}

/// Where one attempt runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Target {
    Local,
    Peer(PeerId),
}

/// What a gateway knows of a worker's honesty, from validators' verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reputation {
    pub accepted: u32,
    pub rejected: u32,
}

/// The network-wide backend.
#[derive(Clone)]
pub struct Gateway {
    net: NetHandle,
    local: Option<Arc<dyn Engine>>,
    attestor: Attestor,
    cfg: GatewayConfig,
    /// Where receipts are appended (`/add` of a tlog-tiles log), if anywhere; set once, seen
    /// by every clone.
    log_url: Arc<std::sync::OnceLock<String>>,
    transcripts: Arc<TranscriptStore>,
    reputation: Arc<Mutex<HashMap<String, Reputation>>>,
    /// Generations this gateway has running on each worker.
    inflight: Arc<Mutex<HashMap<Target, u32>>>,
    /// Workers that recently refused work (429), until when: skipped while others are free.
    cooling: Arc<Mutex<HashMap<Target, Instant>>>,
}

impl Gateway {
    pub fn new(
        net: NetHandle,
        local: Option<Arc<dyn Engine>>,
        attestor: Attestor,
        cfg: GatewayConfig,
    ) -> Self {
        Self {
            net,
            local,
            attestor,
            cfg,
            log_url: Arc::new(std::sync::OnceLock::new()),
            transcripts: Arc::new(TranscriptStore::new(10_000, Duration::from_secs(3600))),
            reputation: Arc::new(Mutex::new(HashMap::new())),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            cooling: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Appends every receipt to the log at `url` from now on (set once; later calls are
    /// ignored) and says where in each response.
    pub fn set_log(&self, url: &str) {
        let _ = self.log_url.set(url.trim_end_matches('/').to_string());
    }

    /// The transcripts kept for validators.
    pub fn transcripts(&self) -> Arc<TranscriptStore> {
        Arc::clone(&self.transcripts)
    }

    /// Records a verdict on `worker`; a rejection stops routing to it.
    pub fn record_verdict(&self, worker: &str, accept: bool) {
        if let Ok(mut m) = self.reputation.lock() {
            let r = m.entry(worker.to_string()).or_default();
            if accept {
                r.accepted += 1;
            } else {
                r.rejected += 1;
                warn!(
                    worker,
                    "a validator rejected this worker's answer: no more requests go to it"
                );
            }
        }
    }

    fn distrusted(&self, worker: &str) -> bool {
        self.reputation
            .lock()
            .map(|m| m.get(worker).is_some_and(|r| r.rejected > 0))
            .unwrap_or(false)
    }

    fn local_serves(&self, model: &str) -> bool {
        self.local.as_ref().is_some_and(|e| {
            let i = e.info();
            model == i.name || model.strip_prefix("sha256:").unwrap_or(model) == i.sha256
        })
    }

    fn inflight(&self, t: Target) -> u32 {
        self.inflight
            .lock()
            .map(|m| m.get(&t).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Workers that can serve `model`, best first: most spare capacity (slots minus what is
    /// busy or queued, counting what this gateway sent since their last status), then a random
    /// draw weighted by measured speed and nearness, so that equally free workers share the
    /// load and faster ones get more of it.
    fn candidates(&self, model: &str, exclude: &[Target]) -> Vec<Target> {
        let mut rng = rand::thread_rng();
        let mut draw = |tok_s: f64, rtt_ms: f64| -> f64 {
            let weight = tok_s.max(1.0) / (1.0 + rtt_ms / 10.0);
            // Efraimidis–Spirakis: u^(1/w) sorts like a draw weighted by w.
            rng.r#gen::<f64>().powf(1.0 / weight)
        };
        let mut scored: Vec<(i64, f64, Target)> = Vec::new();
        if self.local_serves(model)
            && !exclude.contains(&Target::Local)
            && let Some(e) = &self.local
        {
            let load = e.load();
            let busy = (load.slots_busy + load.queued).max(self.inflight(Target::Local));
            scored.push((
                i64::from(load.slots) - i64::from(busy),
                draw(1.0, 0.0),
                Target::Local,
            ));
        }
        for p in self.net.live_peers() {
            let Some(s) = &p.status else { continue };
            let t = Target::Peer(p.peer_id);
            if !s.worker
                || !s.serves(model)
                || exclude.contains(&t)
                || self.net.is_banned(&p.peer_id)
                || self.distrusted(&p.peer_id.to_string())
            {
                continue;
            }
            let busy = (s.slots - s.free_slots.min(s.slots) + s.queue).max(self.inflight(t));
            let rtt_ms = p.rtt.map(|r| r.as_secs_f64() * 1e3).unwrap_or(50.0);
            scored.push((
                i64::from(s.slots) - i64::from(busy),
                draw(s.tokens_per_second, rtt_ms),
                t,
            ));
        }
        // A worker that just refused work goes last, until its cool-down ends.
        let now = Instant::now();
        let cooling = |t: &Target| {
            self.cooling
                .lock()
                .map(|m| m.get(t).is_some_and(|until| *until > now))
                .unwrap_or(false)
        };
        scored.sort_by(|a, b| {
            cooling(&a.2)
                .cmp(&cooling(&b.2))
                .then(b.0.cmp(&a.0))
                .then(b.1.total_cmp(&a.1))
        });
        scored.into_iter().map(|s| s.2).collect()
    }

    /// Notes that `target` refused work: it is tried last for a moment.
    fn cool_down(&self, target: Target) {
        if let Ok(mut m) = self.cooling.lock() {
            let now = Instant::now();
            m.retain(|_, until| *until > now);
            m.insert(target, now + Duration::from_millis(500));
        }
    }

    fn known_model(&self, model: &str) -> bool {
        self.local_serves(model)
            || self
                .net
                .peers()
                .iter()
                .any(|p| p.status.as_ref().is_some_and(|s| s.serves(model)))
    }
}

/// A running attempt: events from the local engine or frames from a remote worker.
enum Source {
    Local(Generation),
    Remote(FramedStream),
}

/// Why an attempt failed.
enum AttemptError {
    /// The request itself is wrong: no other worker would do better.
    Client(ApiError),
    /// This worker cannot do it now (overloaded, failing, unreachable): try another.
    Worker(String, Option<ApiError>),
}

impl Source {
    /// The next event, or an error meaning the worker failed (or stalled past `stall`).
    async fn next(&mut self, stall: Duration) -> Result<Event, String> {
        match self {
            Source::Local(g) => g
                .events
                .recv()
                .await
                .ok_or_else(|| "the local engine stopped".to_string()),
            Source::Remote(s) => match s.recv_timeout::<WorkerFrame>(stall).await {
                Ok(Some(WorkerFrame::Token { id, index, text })) => Ok(Event::Token(TokenEvent {
                    id,
                    index,
                    text,
                    hidden: None,
                    logits: None,
                })),
                Ok(Some(WorkerFrame::Done {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    tail,
                    attestation,
                })) => Ok(Event::Done(Finish {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    tail,
                    // the relay knows every token it forwarded
                    tokens: Vec::new(),
                    attestation,
                })),
                Ok(Some(WorkerFrame::Error(e))) if e.retryable() => {
                    Err(format!("worker error: {}", e.message))
                }
                Ok(Some(WorkerFrame::Error(e))) => Ok(Event::Error(e.message)),
                Ok(Some(WorkerFrame::Accepted { .. })) => {
                    Err("worker sent a second Accepted".into())
                }
                Ok(None) => Err("the worker closed the stream".into()),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

impl Gateway {
    async fn attempt(
        &self,
        target: Target,
        model: &str,
        job: &JobSpec,
        resume: &[u32],
    ) -> Result<Source, AttemptError> {
        let chat = matches!(job.prompt, PromptSpec::Chat(_));
        match target {
            Target::Local => {
                let engine = self
                    .local
                    .as_ref()
                    .ok_or_else(|| AttemptError::Worker("no local engine".into(), None))?;
                match self.attestor.generate(engine, job, resume.to_vec()) {
                    Ok((g, _)) => Ok(Source::Local(g)),
                    Err(e) => {
                        let api = prepare_error(e, chat);
                        if api.status.as_u16() == 429 || api.status.is_server_error() {
                            Err(AttemptError::Worker(api.message.clone(), Some(api)))
                        } else {
                            Err(AttemptError::Client(api))
                        }
                    }
                }
            }
            Target::Peer(peer) => {
                let fail = |why: String| AttemptError::Worker(why, None);
                let proto = self.net.protocols().generate.clone();
                let mut s =
                    tokio::time::timeout(Duration::from_secs(10), self.net.open(peer, proto))
                        .await
                        .map_err(|_| fail("opening a stream timed out".into()))?
                        .map_err(|e| fail(e.to_string()))?;
                let req = GenerateRequest {
                    model: model.to_string(),
                    job: job.clone(),
                    resume: resume.to_vec(),
                };
                s.send(&req).await.map_err(|e| fail(e.to_string()))?;
                match s.recv_timeout::<WorkerFrame>(self.cfg.accept_timeout).await {
                    Ok(Some(WorkerFrame::Accepted { .. })) => Ok(Source::Remote(s)),
                    Ok(Some(WorkerFrame::Error(e))) if e.retryable() => {
                        Err(AttemptError::Worker(e.message.clone(), Some(api_error(e))))
                    }
                    Ok(Some(WorkerFrame::Error(e))) => Err(AttemptError::Client(api_error(e))),
                    Ok(Some(_)) => Err(fail("the worker did not accept first".into())),
                    Ok(None) => Err(fail("the worker closed the stream".into())),
                    Err(e) => Err(fail(e.to_string())),
                }
            }
        }
    }

    /// Tries candidates in order until one accepts.
    async fn start_on_some(
        &self,
        model: &str,
        job: &JobSpec,
        resume: &[u32],
        tried: &mut Vec<Target>,
    ) -> Result<(Target, Source), ApiError> {
        let mut last: Option<ApiError> = None;
        while tried.len() < self.cfg.max_attempts {
            let Some(target) = self.candidates(model, tried).into_iter().next() else {
                break;
            };
            tried.push(target);
            match self.attempt(target, model, job, resume).await {
                Ok(source) => return Ok((target, source)),
                Err(AttemptError::Client(e)) => return Err(e),
                Err(AttemptError::Worker(why, api)) => {
                    if api.as_ref().is_some_and(|e| e.status.as_u16() == 429) {
                        debug!(?target, "worker is busy: {why}");
                        self.cool_down(target);
                    } else {
                        warn!(?target, "worker could not take the request: {why}");
                    }
                    last = api.or(last);
                }
            }
        }
        Err(match last {
            Some(e) if e.status.as_u16() == 429 => e,
            _ => ApiError::unavailable(
                format!("No worker could serve `{model}` right now; try again shortly."),
                2,
            ),
        })
    }
}

fn target_name(net: &NetHandle, t: Target) -> String {
    match t {
        Target::Local => net.peer_id().to_string(),
        Target::Peer(p) => p.to_string(),
    }
}

/// Counts a generation on a worker for as long as it lives.
struct InflightGuard {
    map: Arc<Mutex<HashMap<Target, u32>>>,
    target: Target,
}

impl InflightGuard {
    fn new(map: &Arc<Mutex<HashMap<Target, u32>>>, target: Target) -> Self {
        if let Ok(mut m) = map.lock() {
            *m.entry(target).or_insert(0) += 1;
        }
        Self {
            map: Arc::clone(map),
            target,
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock()
            && let Some(n) = m.get_mut(&self.target)
        {
            *n = n.saturating_sub(1);
        }
    }
}

impl Backend for Gateway {
    fn models(&self) -> Vec<ModelCard> {
        let mut cards: Vec<ModelCard> = Vec::new();
        if let Some(e) = &self.local {
            let i = e.info();
            cards.push(ModelCard {
                id: i.name.clone(),
                digest: format!("sha256:{}", i.sha256),
                n_ctx: i.n_ctx,
                workers: 1,
                kv_bytes: i.kv_bytes,
            });
        }
        for p in self.net.live_peers() {
            let Some(s) = &p.status else { continue };
            if !s.worker {
                continue;
            }
            for m in &s.models {
                match cards
                    .iter_mut()
                    .find(|c| c.id == m.name && c.digest == m.digest)
                {
                    Some(c) => c.workers += 1,
                    None => cards.push(ModelCard {
                        id: m.name.clone(),
                        digest: m.digest.clone(),
                        n_ctx: m.n_ctx,
                        workers: 1,
                        kv_bytes: 0,
                    }),
                }
            }
        }
        cards
    }

    fn start(&self, model: String, job: JobSpec) -> BoxFuture<'_, Result<Started, ApiError>> {
        Box::pin(async move {
            if !self.known_model(&model) {
                return Err(ApiError::unknown_model(&model));
            }
            let mut tried = Vec::new();
            let (target, source) = self.start_on_some(&model, &job, &[], &mut tried).await?;
            let served = self
                .local
                .as_ref()
                .filter(|_| target == Target::Local)
                .map(|e| e.info().name.clone());
            let (tx, rx) = mpsc::channel(64);
            let relay = Relay {
                gateway: self.clone(),
                model: model.clone(),
                job,
                tx,
                tried,
            };
            tokio::spawn(relay.run(target, source));
            Ok(Started {
                model: served.unwrap_or(model),
                events: rx,
            })
        })
    }

    fn load(&self) -> Load {
        self.local.as_ref().map(|e| e.load()).unwrap_or_default()
    }

    fn nodes(&self) -> serde_json::Value {
        let local = self.local.as_ref().map(|e| {
            let (i, l) = (e.info(), e.load());
            serde_json::json!({"model": i.name, "digest": format!("sha256:{}", i.sha256), "slots": l.slots, "slots_in_use": l.slots_busy, "queue": l.queued})
        });
        serde_json::json!({
            "self": {"peer_id": self.net.peer_id().to_string(), "addrs": self.net.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(), "worker": local},
            "peers": self.with_reputation(describe_peers(&self.net.peers())),
        })
    }
}

/// Forwards one generation to the API, failing over between workers.
struct Relay {
    gateway: Gateway,
    model: String,
    job: JobSpec,
    tx: mpsc::Sender<Event>,
    tried: Vec<Target>,
}

impl Relay {
    async fn run(mut self, mut target: Target, mut source: Source) {
        let net = self.gateway.net.clone();
        let mut _guard = InflightGuard::new(&self.gateway.inflight, target);
        let mut generated: Vec<u32> = Vec::new();
        let mut text = String::new();
        if self
            .tx
            .send(Event::Worker(target_name(&net, target)))
            .await
            .is_err()
        {
            return;
        }
        loop {
            match source.next(self.gateway.cfg.stall_timeout).await {
                Ok(Event::Token(t)) => {
                    generated.push(t.id);
                    text.push_str(&t.text);
                    if self.tx.send(Event::Token(t)).await.is_err() {
                        return; // the client went away; dropping `source` cancels the work
                    }
                }
                Ok(Event::Done(mut f)) => {
                    f.tokens = generated;
                    text.push_str(&f.tail);
                    if let Some(a) = f.attestation.as_mut() {
                        self.gateway
                            .keep(&self.model, a, &f.tokens, text, f.reason)
                            .await;
                    }
                    let _ = self.tx.send(Event::Done(f)).await;
                    return;
                }
                Ok(ev @ Event::Error(_)) => {
                    let _ = self.tx.send(ev).await;
                    return;
                }
                Ok(_) => {}
                Err(why) => {
                    warn!(
                        ?target,
                        tokens = generated.len(),
                        "worker failed mid-generation: {why}; resuming elsewhere"
                    );
                    drop(source);
                    if let Target::Peer(p) = target {
                        debug!(%p, "excluded from this request");
                    }
                    match self
                        .gateway
                        .start_on_some(&self.model, &self.job, &generated, &mut self.tried)
                        .await
                    {
                        Ok((t, s)) => {
                            info!(from = ?target, to = ?t, resumed = generated.len(), "generation resumed");
                            target = t;
                            source = s;
                            _guard = InflightGuard::new(&self.gateway.inflight, target);
                            if self
                                .tx
                                .send(Event::Worker(target_name(&net, target)))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = self
                                .tx
                                .send(Event::Error(format!(
                                    "the worker failed and none could continue: {}",
                                    e.message
                                )))
                                .await;
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Peers as `GET /agora/v1/nodes` and `agora nodes` show them.
pub fn describe_peers(peers: &[PeerInfo]) -> serde_json::Value {
    serde_json::Value::Array(
        peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "peer_id": p.peer_id.to_string(),
                    "connected": p.connected,
                    "agent": p.agent,
                    "rtt_ms": p.rtt.map(|r| r.as_secs_f64() * 1e3),
                    "status_age_s": p.status_at.map(|t| t.elapsed().as_secs_f64()),
                    "status": p.status,
                    "addrs": p.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

impl Gateway {
    /// Logs the receipt (when a log is configured), notes where in the attestation, and keeps
    /// the transcript for validators.
    async fn keep(
        &self,
        model: &str,
        a: &mut Attestation,
        tokens: &[u32],
        text: String,
        reason: FinishReason,
    ) {
        if let Some(url) = self.log_url.get().cloned() {
            let entry = a.receipt.clone().into_bytes();
            let added = tokio::task::spawn_blocking(move || {
                agora_api::tlog::client::LogClient::new(&url)
                    .add(&entry)
                    .map(|i| (url, i))
            })
            .await;
            match added {
                Ok(Ok((url, index))) => a.log = Some(LogRef { url, index }),
                Ok(Err(e)) => warn!("could not log the receipt: {e}"),
                Err(e) => warn!("could not log the receipt: {e}"),
            }
        }
        let t = Transcript::new(model, a, tokens.to_vec(), text, reason);
        match t.check() {
            Ok(c) => self.transcripts.insert(c.receipt_digest, t),
            Err(e) => warn!("the worker's receipt does not check out: {e}"),
        }
    }

    /// Answers validators asking for transcripts (`/agora/<net>/transcript/1`).
    pub async fn serve_transcripts(self) {
        use futures::StreamExt;
        let mut incoming = match self.net.accept(self.net.protocols().transcript.clone()) {
            Ok(i) => i,
            Err(e) => {
                warn!("cannot serve transcripts: {e}");
                return;
            }
        };
        while let Some((peer, stream)) = incoming.next().await {
            if self.net.is_banned(&peer) {
                continue;
            }
            let mut s = self.net.framed(stream);
            let store = Arc::clone(&self.transcripts);
            tokio::spawn(async move {
                let Ok(Some(req)) = s
                    .recv_timeout::<crate::proto::TranscriptRequest>(Duration::from_secs(10))
                    .await
                else {
                    return;
                };
                let found = req.receipt.parse().ok().and_then(|d| store.get(&d));
                let _ = s.send(&found).await;
                let _ = s.close().await;
            });
        }
    }

    /// Adds each peer's reputation (verdicts heard about it, and whether this gateway still
    /// routes to it) to `describe_peers`' list.
    fn with_reputation(&self, mut peers: serde_json::Value) -> serde_json::Value {
        let reps = self.reputations();
        if let Some(list) = peers.as_array_mut() {
            for p in list {
                let id = p["peer_id"].as_str().unwrap_or_default().to_string();
                let r = reps.get(&id).copied().unwrap_or_default();
                p["reputation"] = serde_json::json!({
                    "accepted": r.accepted,
                    "rejected": r.rejected,
                    "routed": r.rejected == 0,
                });
            }
        }
        peers
    }

    /// Reputation of every worker a verdict was heard about.
    pub fn reputations(&self) -> HashMap<String, Reputation> {
        self.reputation
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}
