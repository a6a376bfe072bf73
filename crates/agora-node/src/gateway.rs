//! The gateway role: the OpenAI API of this node serves the whole network.
//!
//! Each request goes to a worker that serves the model, chosen by spare capacity (slots minus
//! what is busy, counting what this gateway already sent), then speed, then round-trip time,
//! with random tie-breaking. When a worker dies, stalls past a deadline or drops the stream,
//! the generation resumes on another worker with the prompt, the tokens already streamed and
//! the same seed: the client sees one uninterrupted stream with the text an uninterrupted run
//! would have produced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_api::backend::{BoxFuture, ModelCard, Started, prepare_error};
use agora_api::{ApiError, Backend};
use agora_engine::text::{Step, TextStream};
use agora_engine::{
    Attestation, Engine, Event, Finish, FinishReason, Generation, JobSpec, Load, PromptSpec,
    TokenEvent,
};
use agora_net::{FramedStream, NetHandle, PeerId, PeerInfo};
use agora_tlog::note::Vkey;
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::attest::Attestor;
use crate::convert::api_error;
use crate::disclosure::TrustedValidators;
use crate::proto::{GenerateRequest, WorkerFrame};
use crate::reputation::{Reputation, Reputations};
use crate::transcript::{Transcript, TranscriptStore, check_attestation};

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Longest wait for a worker's next frame before it is considered stalled.
    pub stall_timeout: Duration,
    /// Longest wait for a worker to accept (it may queue the request first).
    pub accept_timeout: Duration,
    /// Workers tried for one request, the first included.
    pub max_attempts: usize,
    /// Transcripts kept for validators: at most this many…
    pub transcript_cap: usize,
    /// …and none older than this.
    pub transcript_retention: Duration,
    /// Validators whose verdicts count here without a re-check, and who may fetch transcripts.
    pub trusted: TrustedValidators,
    /// Highest selection probability a validator may claim when it fetches a transcript.
    pub max_check_probability: f64,
    /// Share of requests offered first to a worker on probation (when one has room).
    pub probation_share: f64,
    /// Receipts waiting to be appended to the log; beyond, new ones are not logged (counted).
    pub log_queue: usize,
    /// Offer a conversation's next turn to the worker that answered its last (it holds the
    /// prefix) when that worker has room.
    pub conversation_affinity: bool,
    /// Ask for a fingerprint in every answer's receipt (node policy; clients may ask per
    /// request).
    pub fingerprint_all: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(10),
            accept_timeout: Duration::from_secs(60),
            max_attempts: 4,
            transcript_cap: 10_000,
            transcript_retention: Duration::from_secs(3600),
            trusted: TrustedValidators::default(),
            max_check_probability: 0.5,
            probation_share: 0.1,
            log_queue: 1024,
            conversation_affinity: true,
            fingerprint_all: false,
        }
    }
}

/// Where one attempt runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Target {
    Local,
    Peer(PeerId),
}

/// The log this gateway appends receipts to.
struct LogSink {
    url: String,
    /// The log's key, when known: transcripts are released only against its checkpoints.
    vkey: Option<Vkey>,
    queue: mpsc::Sender<Vec<u8>>,
}

/// Counters a soak run or an operator reads (`/agora/v1/nodes`).
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub receipts_logged: AtomicU64,
    pub receipts_not_logged: AtomicU64,
    pub protocol_violations: AtomicU64,
    pub transcripts_released: AtomicU64,
    pub transcripts_refused: AtomicU64,
    pub verdicts_applied: AtomicU64,
    pub verdicts_ignored: AtomicU64,
    pub rechecks_confirmed: AtomicU64,
    pub rechecks_refuted: AtomicU64,
    /// Follow-up turns sent to the worker whose status (or this node's own cache) lists the
    /// conversation's history, and to the one this gateway remembered sending the last turn to.
    pub conversations_by_status: AtomicU64,
    pub conversations_by_memory: AtomicU64,
}

/// The network-wide backend.
#[derive(Clone)]
pub struct Gateway {
    net: NetHandle,
    local: Option<Arc<dyn Engine>>,
    attestor: Attestor,
    cfg: Arc<GatewayConfig>,
    /// Where receipts are appended, if anywhere; set once, seen by every clone.
    log: Arc<std::sync::OnceLock<LogSink>>,
    transcripts: Arc<TranscriptStore>,
    /// Transcripts of answers this node's validator rejected: the evidence anyone may fetch.
    evidence: Arc<TranscriptStore>,
    reputation: Arc<Reputations>,
    stats: Arc<GatewayStats>,
    /// Generations this gateway has running on each worker.
    inflight: Arc<Mutex<HashMap<Target, u32>>>,
    /// When this gateway's last generation on each worker ended (bounded, recent ones kept).
    finished: Arc<Mutex<HashMap<Target, Instant>>>,
    /// Workers that recently refused work (429), until when: skipped while others are free.
    cooling: Arc<Mutex<HashMap<Target, Instant>>>,
    /// Which worker answered which conversation, so its next turn goes where its prefix is.
    affinity: Arc<crate::affinity::Affinity<Target>>,
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
            transcripts: Arc::new(TranscriptStore::new(
                cfg.transcript_cap,
                cfg.transcript_retention,
            )),
            evidence: Arc::new(TranscriptStore::new(1000, Duration::from_secs(24 * 3600))),
            cfg: Arc::new(cfg),
            log: Arc::new(std::sync::OnceLock::new()),
            reputation: Arc::new(Reputations::default()),
            stats: Arc::new(GatewayStats::default()),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            finished: Arc::new(Mutex::new(HashMap::new())),
            cooling: Arc::new(Mutex::new(HashMap::new())),
            affinity: Arc::default(),
        }
    }

    /// Appends every receipt to the log at `url` from now on (set once; later calls are
    /// ignored), through a bounded queue: a slow log never delays an answer. `vkey` is the
    /// log's key; without it no transcript is released to validators. `local`: the log itself,
    /// when this node serves it (appended in-process, outside the quotas for clients).
    pub fn set_log(&self, url: &str, vkey: Option<Vkey>, local: Option<agora_log::Log>) {
        let (tx, rx) = mpsc::channel(self.cfg.log_queue.max(1));
        let url = url.trim_end_matches('/').to_string();
        if self
            .log
            .set(LogSink {
                url: url.clone(),
                vkey,
                queue: tx,
            })
            .is_ok()
        {
            tokio::spawn(log_receipts(url, local, rx, Arc::clone(&self.stats)));
        }
    }

    /// The transcripts kept for validators.
    pub fn transcripts(&self) -> Arc<TranscriptStore> {
        Arc::clone(&self.transcripts)
    }

    /// The evidence of rejected answers this node serves to anyone.
    pub fn evidence(&self) -> Arc<TranscriptStore> {
        Arc::clone(&self.evidence)
    }

    pub fn stats(&self) -> Arc<GatewayStats> {
        Arc::clone(&self.stats)
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// The local engine, if this gateway runs one.
    pub fn local_engine(&self) -> Option<Arc<dyn Engine>> {
        self.local.clone()
    }

    pub fn net(&self) -> &NetHandle {
        &self.net
    }

    /// Records a verdict that counts here (see [`crate::validator::follow_verdicts`] for
    /// which do); a rejection stops routing to the worker for good.
    pub fn record_verdict(&self, worker: &PeerId, accept: bool) {
        self.reputation.record_verdict(worker, accept);
        self.stats.verdicts_applied.fetch_add(1, Ordering::Relaxed);
        if !accept {
            warn!(%worker, "this worker's cheating is proven: no more requests go to it");
        }
    }

    /// Whether `worker` has a proven rejection here.
    pub fn condemned(&self, worker: &PeerId) -> bool {
        self.reputation.get(worker).rejected > 0
    }

    fn violation(&self, worker: PeerId, why: &str) {
        let d = self.reputation.record_violation(&worker);
        self.stats
            .protocol_violations
            .fetch_add(1, Ordering::Relaxed);
        warn!(%worker, "worker broke the generation protocol ({why}): cut off for {}s", d.as_secs());
    }

    fn local_serves(&self, model: &str) -> bool {
        self.local.as_ref().is_some_and(|e| {
            let i = e.info();
            model == i.name || model.strip_prefix("sha256:").unwrap_or(model) == i.sha256
        })
    }

    /// The local engine when it serves the model with `digest` (`sha256:…`): its vocabulary
    /// checks and detokenizes what remote workers send.
    fn vocabulary(&self, digest: &str) -> Option<Arc<dyn Engine>> {
        self.local
            .as_ref()
            .filter(|e| digest.strip_prefix("sha256:") == Some(e.info().sha256.as_str()))
            .cloned()
    }

    /// Whether `status_at` (when a worker's status was received) is older than the end of
    /// this gateway's last generation on it: the status may still count that one as busy.
    fn status_predates_last_finish(&self, t: Target, status_at: Option<Instant>) -> bool {
        let done = self.finished.lock().ok().and_then(|m| m.get(&t).copied());
        matches!((status_at, done), (Some(at), Some(done)) if at < done)
    }

    fn inflight(&self, t: Target) -> u32 {
        self.inflight
            .lock()
            .map(|m| m.get(&t).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Workers that can serve `model`, best first: not cooling down, then a graduated key
    /// before one on probation (except for a `probation_share` of requests, so new keys can
    /// earn their verdicts), then most spare capacity believed (slots minus busy, counting
    /// what this gateway sent since their last status, capped by what each has delivered),
    /// then a random draw weighted by believed speed and nearness, so that equally free
    /// workers share the load and faster ones get more of it. Among workers with room, those
    /// whose answers can be verified come before those that failed their self-check
    /// (unverifiable); `prefer` (the worker that holds the conversation's prefix) comes next —
    /// after the probation order when only the worker's own status says it holds the prefix
    /// (`by_status`: anyone can copy keys from public statuses, so a new key gains no place by
    /// listing them).
    fn candidates(
        &self,
        model: &str,
        exclude: &[Target],
        prefer: Option<(Target, bool)>,
    ) -> Vec<Target> {
        let (prefer, by_status) = (prefer.map(|p| p.0), prefer.is_some_and(|p| p.1));
        let mut rng = rand::thread_rng();
        let probation_first = rng.r#gen::<f64>() < self.cfg.probation_share;
        let mut draw = |tok_s: f64, rtt_ms: f64| -> f64 {
            let weight = tok_s.max(1.0) / (1.0 + rtt_ms / 10.0);
            // Efraimidis–Spirakis: u^(1/w) sorts like a draw weighted by w.
            rng.r#gen::<f64>().powf(1.0 / weight)
        };
        // (unverifiable, probation, spare, draw, target)
        let mut scored: Vec<(bool, bool, i64, f64, Target)> = Vec::new();
        if self.local_serves(model)
            && !exclude.contains(&Target::Local)
            && let Some(e) = &self.local
        {
            let load = e.load();
            let busy = (load.slots_busy + load.queued).max(self.inflight(Target::Local));
            scored.push((
                e.info().unverifiable.is_some(),
                false,
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
                || !self.reputation.routable(&p.peer_id)
            {
                continue;
            }
            let slots = self.reputation.believed_slots(&p.peer_id, s.slots);
            // Statuses come every few seconds; a conversation's next turn comes right after
            // the last one ended, when the worker's last status still shows that turn busy.
            // For the worker holding the prefix, what this gateway knows is then newer.
            let busy = if prefer == Some(t) && self.status_predates_last_finish(t, p.status_at) {
                self.inflight(t).min(slots)
            } else {
                (s.slots.saturating_sub(s.free_slots.min(s.slots)) + s.queue)
                    .min(slots)
                    .max(self.inflight(t))
            };
            let rtt_ms = p.rtt.map(|r| r.as_secs_f64() * 1e3).unwrap_or(50.0);
            let speed = self
                .reputation
                .believed_speed(&p.peer_id, s.tokens_per_second);
            scored.push((
                s.model(model).is_some_and(|m| m.unverifiable),
                self.reputation.get(&p.peer_id).on_probation(),
                i64::from(slots) - i64::from(busy),
                draw(speed, rtt_ms),
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
        // Probation only orders workers that have room: when every graduated worker is busy,
        // a free one on probation is better than waiting.
        let rank = |x: &(bool, bool, i64, f64, Target)| {
            let has_room = x.2 > 0;
            let probation_rank = if probation_first { !x.1 } else { x.1 };
            (
                cooling(&x.4),
                !has_room,
                x.0,
                if by_status {
                    probation_rank
                } else {
                    prefer != Some(x.4)
                },
                if by_status {
                    prefer != Some(x.4)
                } else {
                    probation_rank
                },
            )
        };
        scored.sort_by(|a, b| {
            rank(a)
                .cmp(&rank(b))
                .then(b.2.cmp(&a.2))
                .then(b.3.total_cmp(&a.3))
        });
        scored.into_iter().map(|s| s.4).collect()
    }

    /// The worker most likely to hold this follow-up turn's history in its prefix cache, and
    /// whether only its status says so. The one this gateway sent the last turn to comes first
    /// when its status lists the history's conversation key, or when its status was made
    /// before that turn ended (and cannot list it yet: statuses lag by seconds); then a
    /// routable worker whose status (or, for this node's engine, whose cache) lists it; then
    /// the remembered one. A status is a hint: at worst a follow-up turn is prefilled whole
    /// where the usual choice would also have sent it.
    fn prefix_holder(&self, model: &str, prompt: &PromptSpec) -> Option<(Target, bool)> {
        let key = agora_engine::conversation::continued(prompt)?;
        let remembered = self.affinity.previous(key);
        let hex = agora_engine::conversation::to_hex(key);
        let local = self
            .local
            .as_ref()
            .filter(|e| self.local_serves(model) && e.held_conversations().contains(&key))
            .map(|_| Target::Local);
        let live = self.net.live_peers();
        let peers = live.iter().filter_map(|p| {
            let s = p.status.as_ref()?;
            let eligible = !self.net.is_banned(&p.peer_id) && self.reputation.routable(&p.peer_id);
            (eligible && s.worker && s.serves(model) && s.holds_conversation(&hex))
                .then_some(Target::Peer(p.peer_id))
        });
        let listed: Vec<Target> = local.into_iter().chain(peers).collect();
        if let Some(t) = remembered {
            if listed.contains(&t) {
                return Some((t, false));
            }
            let status_at = match t {
                Target::Peer(id) => live
                    .iter()
                    .find(|p| p.peer_id == id)
                    .and_then(|p| p.status_at),
                Target::Local => None,
            };
            if self.status_predates_last_finish(t, status_at) {
                return Some((t, false));
            }
        }
        listed
            .first()
            .map(|&t| (t, true))
            .or(remembered.map(|t| (t, false)))
    }

    /// Notes that `target` refused work: it is tried last for a moment.
    fn cool_down(&self, target: Target) {
        if let Ok(mut m) = self.cooling.lock() {
            let now = Instant::now();
            m.retain(|_, until| *until > now);
            m.insert(target, now + Duration::from_millis(500));
        }
    }

    /// The model's digest and context window as the network knows them (local engine first,
    /// then any peer that served it, even one gone quiet: a model that was served and is not
    /// now is unavailable, 503, not unknown).
    fn model_facts(&self, model: &str) -> Option<(String, u32)> {
        if self.local_serves(model)
            && let Some(e) = &self.local
        {
            let i = e.info();
            return Some((format!("sha256:{}", i.sha256), i.n_ctx));
        }
        let mut peers = self.net.peers();
        // Live peers first.
        let live: std::collections::HashSet<PeerId> =
            self.net.live_peers().iter().map(|p| p.peer_id).collect();
        peers.sort_by_key(|p| !live.contains(&p.peer_id));
        peers.iter().find_map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.model(model).map(|m| (m.digest.clone(), m.n_ctx)))
        })
    }
}

/// Appends queued receipts to the log, one at a time, off every answer's path.
async fn log_receipts(
    url: String,
    local: Option<agora_log::Log>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    stats: Arc<GatewayStats>,
) {
    let client = Arc::new(agora_api::tlog::client::LogClient::new(&url));
    while let Some(entry) = rx.recv().await {
        let added = match &local {
            Some(log) => log.add(entry).await.map_err(|e| e.to_string()),
            None => {
                let c = Arc::clone(&client);
                match tokio::task::spawn_blocking(move || c.add(&entry)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match added {
            Ok(_) => stats.receipts_logged.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                warn!("could not log a receipt: {e}");
                stats.receipts_not_logged.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A running attempt: events from the local engine or frames from a remote worker.
enum Source {
    Local(Generation),
    /// A worker's stream, and how much longer than the stall timeout its first token may take
    /// (its prefill: see [`prefill_allowance`]).
    Remote(PeerId, Box<FramedStream>, Duration),
}

/// The slowest prefill a gateway waits for before a worker's first token: 100 prompt tokens
/// per second (one thread of an old CPU on a small model); a long prompt on a slow worker is
/// not taken for a stall. Counted from the prompt size the worker states when it accepts,
/// capped at `cap` (a lie about it buys a worker no more than that).
fn prefill_allowance(prompt_tokens: u32, cap: Duration) -> Duration {
    Duration::from_millis(u64::from(prompt_tokens).saturating_mul(10)).min(cap)
}

/// Why an attempt failed.
enum AttemptError {
    /// The request itself is wrong: no other worker would do better.
    Client(ApiError),
    /// This worker cannot do it now (overloaded, failing, unreachable): try another.
    Worker(String, Option<ApiError>),
}

/// Why a running attempt ended early.
struct Failure {
    why: String,
    /// The worker broke the protocol (as opposed to failing or going away).
    violation: bool,
}

impl Failure {
    fn failed(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            violation: false,
        }
    }

    fn violation(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            violation: true,
        }
    }
}

impl Source {
    /// The next event, or why the worker failed (or stalled past `stall`). Every error a
    /// worker sends after accepting means "try elsewhere": the request itself was fine.
    async fn next(&mut self, stall: Duration) -> Result<Event, Failure> {
        match self {
            Source::Local(g) => g
                .events
                .recv()
                .await
                .ok_or_else(|| Failure::failed("the local engine stopped")),
            Source::Remote(_, s, _) => match s.recv_timeout::<WorkerFrame>(stall).await {
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
                Ok(Some(WorkerFrame::Error(e))) => {
                    Err(Failure::failed(format!("worker error: {}", e.message)))
                }
                Ok(Some(WorkerFrame::Accepted { .. })) => {
                    Err(Failure::violation("a second Accepted frame"))
                }
                Ok(None) => Err(Failure::failed("the worker closed the stream")),
                Err(e) if e.is_violation() => Err(Failure::violation(e.to_string())),
                Err(e) => Err(Failure::failed(e.to_string())),
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
                match self.attestor.start(engine, job, resume.to_vec()).await {
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
                    Ok(Some(WorkerFrame::Accepted { prompt_tokens, .. })) => {
                        // Resumed tokens are computed before the first new token too.
                        let tokens = prompt_tokens
                            .saturating_add(u32::try_from(resume.len()).unwrap_or(u32::MAX));
                        let prefill = prefill_allowance(tokens, self.cfg.accept_timeout);
                        Ok(Source::Remote(peer, Box::new(s), prefill))
                    }
                    Ok(Some(WorkerFrame::Error(e))) if e.retryable() => {
                        Err(AttemptError::Worker(e.message.clone(), Some(api_error(e))))
                    }
                    Ok(Some(WorkerFrame::Error(e))) => Err(AttemptError::Client(api_error(e))),
                    Ok(Some(_)) => {
                        self.violation(peer, "did not accept first");
                        Err(fail("the worker did not accept first".into()))
                    }
                    Ok(None) => Err(fail("the worker closed the stream".into())),
                    Err(e) => {
                        if e.is_violation() {
                            self.violation(peer, &e.to_string());
                        }
                        Err(fail(e.to_string()))
                    }
                }
            }
        }
    }

    /// Tries candidates in order until one accepts. On a resume (`resume` not empty) a refusal
    /// that looks like the client's fault is the handed-over prefix's: the next worker is tried.
    ///
    /// The chosen worker is counted in flight from the moment it is chosen, not from its first
    /// token: requests that arrive together must see each other's choices, or they all pick the
    /// same "free" worker and one never measured is never tried.
    async fn start_on_some(
        &self,
        model: &str,
        job: &JobSpec,
        resume: &[u32],
        tried: &mut Vec<Target>,
    ) -> Result<(Target, Source, InflightGuard), ApiError> {
        let mut last: Option<ApiError> = None;
        let prefer = self
            .cfg
            .conversation_affinity
            .then(|| self.prefix_holder(model, &job.prompt))
            .flatten();
        while tried.len() < self.cfg.max_attempts {
            let Some(target) = self.candidates(model, tried, prefer).into_iter().next() else {
                break;
            };
            let guard = InflightGuard::new(&self.inflight, &self.finished, target);
            tried.push(target);
            match self.attempt(target, model, job, resume).await {
                Ok(source) => {
                    if let Some((t, by_status)) = prefer
                        && t == target
                    {
                        let c = if by_status {
                            &self.stats.conversations_by_status
                        } else {
                            &self.stats.conversations_by_memory
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(k) = agora_engine::conversation::of_prompt(&job.prompt) {
                        self.affinity.record(k, target);
                    }
                    return Ok((target, source, guard));
                }
                Err(AttemptError::Client(e)) if resume.is_empty() => return Err(e),
                Err(AttemptError::Client(e)) => {
                    warn!(?target, "worker refused to resume: {}", e.message);
                    last = Some(e);
                }
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

/// Workers whose last generation's end a gateway remembers.
const MAX_FINISHED: usize = 4096;

/// Counts a generation on a worker for as long as it lives.
struct InflightGuard {
    map: Arc<Mutex<HashMap<Target, u32>>>,
    finished: Arc<Mutex<HashMap<Target, Instant>>>,
    target: Target,
    /// Generations running on the target when this one started, itself included.
    at_start: u32,
}

impl InflightGuard {
    fn new(
        map: &Arc<Mutex<HashMap<Target, u32>>>,
        finished: &Arc<Mutex<HashMap<Target, Instant>>>,
        target: Target,
    ) -> Self {
        let mut at_start = 1;
        if let Ok(mut m) = map.lock() {
            let n = m.entry(target).or_insert(0);
            *n += 1;
            at_start = *n;
        }
        Self {
            map: Arc::clone(map),
            finished: Arc::clone(finished),
            target,
            at_start,
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock()
            && let Some(n) = m.get_mut(&self.target)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.target);
            }
        }
        if let Ok(mut f) = self.finished.lock() {
            let now = Instant::now();
            if f.len() >= MAX_FINISHED {
                f.retain(|_, at| now.duration_since(*at) < Duration::from_secs(30));
            }
            if f.len() < MAX_FINISHED {
                f.insert(self.target, now);
            }
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

    fn start(&self, model: String, mut job: JobSpec) -> BoxFuture<'_, Result<Started, ApiError>> {
        job.fingerprint |= self.cfg.fingerprint_all;
        Box::pin(async move {
            let Some((digest, n_ctx)) = self.model_facts(&model) else {
                return Err(ApiError::unknown_model(&model));
            };
            let mut tried = Vec::new();
            let (target, source, inflight) =
                self.start_on_some(&model, &job, &[], &mut tried).await?;
            let served = self
                .local
                .as_ref()
                .filter(|_| target == Target::Local)
                .map(|e| e.info().name.clone());
            let (tx, rx) = mpsc::channel(64);
            let guard = StreamGuard {
                vocab: self.vocabulary(&digest),
                text: TextStream::new(job.stop.clone()),
                limit: job.max_tokens.unwrap_or(n_ctx).min(n_ctx),
                ignore_eos: job.ignore_eos,
                ended: false,
                stopped: false,
            };
            let relay = Relay {
                gateway: self.clone(),
                model: model.clone(),
                digest,
                job,
                tx,
                tried,
                guard,
            };
            tokio::spawn(relay.run(target, source, inflight));
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
            serde_json::json!({
                "model": i.name,
                "digest": format!("sha256:{}", i.sha256),
                "slots": l.slots,
                "slots_in_use": l.slots_busy,
                "queue": l.queued,
                "unverifiable": i.unverifiable,
            })
        });
        let st = &self.stats;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "self": {"peer_id": self.net.peer_id().to_string(), "addrs": self.net.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(), "worker": local, "reputation": self.reputation.get(&self.net.peer_id())},
            "peers": self.with_reputation(describe_peers(&self.net.peers())),
            "gateway": {
                "receipts_logged": n(&st.receipts_logged),
                "receipts_not_logged": n(&st.receipts_not_logged),
                "protocol_violations": n(&st.protocol_violations),
                "transcripts_kept": self.transcripts.len(),
                "transcripts_released": n(&st.transcripts_released),
                "transcripts_refused": n(&st.transcripts_refused),
                "verdicts_applied": n(&st.verdicts_applied),
                "verdicts_ignored": n(&st.verdicts_ignored),
                "rechecks_confirmed": n(&st.rechecks_confirmed),
                "rechecks_refuted": n(&st.rechecks_refuted),
                "conversations_by_status": n(&st.conversations_by_status),
                "conversations_by_memory": n(&st.conversations_by_memory),
                "reputation_entries": self.reputation.len(),
            },
        })
    }
}

/// What a gateway enforces on a generation's tokens, whoever produces them: the client sees
/// text the gateway itself derived from token ids (where it has the model's vocabulary), stop
/// sequences and `max_tokens` hold, and a worker that sends anything else is cut off.
struct StreamGuard {
    /// The local engine when it serves this model: its vocabulary checks and detokenizes.
    vocab: Option<Arc<dyn Engine>>,
    text: TextStream,
    /// Most tokens the generation may have.
    limit: u32,
    ignore_eos: bool,
    /// An end-of-generation token or a stop sequence was seen: only `Done` may follow.
    ended: bool,
    /// It was a stop sequence (the held-back text is not released).
    stopped: bool,
}

/// Longest text one token may carry when the gateway cannot detokenize it itself.
const MAX_TOKEN_TEXT: usize = 4096;

impl StreamGuard {
    /// Checks token `t` (the `count`-th of the generation) and returns the text the client
    /// gets for it.
    fn token(&mut self, t: &TokenEvent, count: usize) -> Result<String, String> {
        if self.ended {
            return Err("a token after the end of the generation".into());
        }
        if t.index as usize != count {
            return Err(format!("token index {} where {count} was due", t.index));
        }
        if count as u64 >= u64::from(self.limit) {
            return Err(format!("more than the {} tokens asked for", self.limit));
        }
        let step = match &self.vocab {
            Some(e) => {
                let Some(piece) = e.token_piece(t.id) else {
                    return Err(format!("token {} is not in the vocabulary", t.id));
                };
                if e.is_eog(t.id) && !self.ignore_eos {
                    self.ended = true;
                    return Ok(String::new());
                }
                self.text.push(&piece)
            }
            None => {
                if t.text.len() > MAX_TOKEN_TEXT {
                    return Err(format!("{} bytes of text for one token", t.text.len()));
                }
                self.text.push(t.text.as_bytes())
            }
        };
        Ok(match step {
            Step::Text(s) => s,
            Step::Stop(s) => {
                self.ended = true;
                self.stopped = true;
                s
            }
        })
    }

    /// The text released at the end.
    fn tail(&mut self, worker_tail: &str) -> Result<String, String> {
        if self.vocab.is_none() {
            if worker_tail.len() > MAX_TOKEN_TEXT {
                return Err(format!("{} bytes of tail text", worker_tail.len()));
            }
            if !self.stopped
                && let Step::Stop(s) = self.text.push(worker_tail.as_bytes())
            {
                self.stopped = true;
                return Ok(s);
            }
        }
        Ok(if self.stopped {
            String::new()
        } else {
            self.text.finish()
        })
    }
}

/// Forwards one generation to the API, failing over between workers.
struct Relay {
    gateway: Gateway,
    model: String,
    /// `sha256:…` of the model, as the network knows it.
    digest: String,
    job: JobSpec,
    tx: mpsc::Sender<Event>,
    tried: Vec<Target>,
    guard: StreamGuard,
}

impl Relay {
    async fn run(mut self, mut target: Target, mut source: Source, mut guard: InflightGuard) {
        let net = self.gateway.net.clone();
        let mut generated: Vec<u32> = Vec::new();
        let mut text = String::new();
        // Tokens handed to the current attempt (generated before it started).
        let mut resumed_at = 0usize;
        let mut started = Instant::now();
        if self
            .tx
            .send(Event::Worker(target_name(&net, target)))
            .await
            .is_err()
        {
            return;
        }
        loop {
            // The digest of a remote worker's receipt, once `finish` has checked it.
            let mut checked = None;
            // Before an attempt's first token the worker is prefilling: it may take longer.
            let mut stall = self.gateway.cfg.stall_timeout;
            if let Source::Remote(_, _, prefill) = &source
                && generated.len() == resumed_at
            {
                stall = stall.saturating_add(*prefill);
            }
            let next = match source.next(stall).await {
                Ok(Event::Token(mut t)) => match self.guard.token(&t, generated.len()) {
                    Ok(shown) => {
                        t.text = shown;
                        Ok(Event::Token(t))
                    }
                    Err(why) => Err(Failure::violation(why)),
                },
                Ok(Event::Done(f)) => {
                    self.finish(&source, f, &generated, resumed_at)
                        .map(|(f, digest)| {
                            checked = digest;
                            Event::Done(f)
                        })
                }
                other => other,
            };
            match next {
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
                    if let Target::Peer(p) = target {
                        let produced = f.tokens.len().saturating_sub(resumed_at) as u32;
                        self.gateway.reputation.record_delivery(
                            &p,
                            guard.at_start,
                            produced,
                            started.elapsed(),
                        );
                    }
                    if let Some(a) = &f.attestation {
                        self.gateway
                            .keep(&self.model, a, checked, &f.tokens, text, f.reason);
                    }
                    let _ = self.tx.send(Event::Done(f)).await;
                    return;
                }
                Ok(ev @ Event::Error(_)) => {
                    let _ = self.tx.send(ev).await;
                    return;
                }
                Ok(_) => {}
                Err(Failure { why, violation }) => {
                    warn!(
                        ?target,
                        tokens = generated.len(),
                        "worker failed mid-generation: {why}; resuming elsewhere"
                    );
                    drop(source);
                    if let (Target::Peer(p), true) = (target, violation) {
                        self.gateway.violation(p, &why);
                    }
                    if self.guard.ended {
                        // The end was reached (end token or stop sequence) but no valid receipt
                        // came: another worker cannot produce one for tokens it did not choose.
                        let _ = self
                            .tx
                            .send(Event::Error(format!(
                                "the worker failed at the end of the answer ({why}); the answer has no valid receipt"
                            )))
                            .await;
                        return;
                    }
                    match self
                        .gateway
                        .start_on_some(&self.model, &self.job, &generated, &mut self.tried)
                        .await
                    {
                        Ok((t, s, g)) => {
                            info!(from = ?target, to = ?t, resumed = generated.len(), "generation resumed");
                            target = t;
                            source = s;
                            guard = g;
                            resumed_at = generated.len();
                            started = Instant::now();
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

    /// Checks a `Done` against what was streamed: the token count, and (from a remote worker)
    /// a receipt signed by that worker over exactly these tokens, this model, this request and
    /// this resume. Returns the receipt's digest when it checked one (the only check of a
    /// remote worker's receipt: its parts were parsed when the frame was decoded).
    fn finish(
        &mut self,
        source: &Source,
        mut f: Finish,
        generated: &[u32],
        resumed_at: usize,
    ) -> Result<(Finish, Option<agora_core::Sha256>), Failure> {
        if f.completion_tokens as usize != generated.len() {
            return Err(Failure::violation(format!(
                "Done says {} tokens, {} were streamed",
                f.completion_tokens,
                generated.len()
            )));
        }
        f.tail = self.guard.tail(&f.tail).map_err(Failure::violation)?;
        let Source::Remote(peer, ..) = source else {
            return Ok((f, None));
        };
        let Some(a) = &f.attestation else {
            return Err(Failure::violation("no receipt"));
        };
        let c = check_attestation(a, generated)
            .map_err(|e| Failure::violation(format!("its receipt: {e}")))?;
        if crate::to_net_id(&c.receipt.worker) != Some(*peer) {
            return Err(Failure::violation("a receipt signed for another worker"));
        }
        if format!("sha256:{}", c.receipt.model) != self.digest {
            return Err(Failure::violation(format!(
                "a receipt for model sha256:{}, not {}",
                c.receipt.model, self.digest
            )));
        }
        if c.receipt.resumed as usize != resumed_at {
            return Err(Failure::violation(format!(
                "a receipt claiming {} handed-over tokens, not {resumed_at}",
                c.receipt.resumed
            )));
        }
        if a.request != self.job {
            return Err(Failure::violation("a receipt for another request"));
        }
        Ok((f, Some(c.receipt_digest)))
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
    /// Queues the receipt for the log (never waiting for it) and keeps the transcript for
    /// validators, under the receipt's digest, with the hash of the log entry it becomes.
    /// `checked`: the digest of a receipt already checked against these tokens (a remote
    /// worker's, in [`Relay::finish`]); without it (this node's own), it is checked here.
    fn keep(
        &self,
        model: &str,
        a: &Attestation,
        checked: Option<agora_core::Sha256>,
        tokens: &[u32],
        text: String,
        reason: FinishReason,
    ) {
        let entry = a.receipt.to_json().into_bytes();
        let leaf = agora_tlog::hash::leaf_hash(&entry);
        if let Some(sink) = self.log.get()
            && sink.queue.try_send(entry).is_err()
        {
            self.stats
                .receipts_not_logged
                .fetch_add(1, Ordering::Relaxed);
            warn!(log = %sink.url, "the receipt log queue is full: this receipt is not logged");
        }
        let digest = match checked {
            Some(d) => d,
            None => match check_attestation(a, tokens) {
                Ok(c) => c.receipt_digest,
                Err(e) => {
                    warn!("the worker's receipt does not check out: {e}");
                    return;
                }
            },
        };
        let t = crate::transcript::transcript(model, a, tokens.to_vec(), text, reason);
        self.transcripts.insert(digest, t, leaf.0);
    }

    /// Answers transcript requests (`/agora/<net>/transcript/1`): evidence of rejected answers
    /// to anyone; the transcripts this gateway keeps only to a validator it trusts that proves
    /// the log's randomness selected that receipt ([`crate::disclosure::may_release`]).
    pub async fn serve_transcripts(self) {
        use futures::StreamExt;
        let mut incoming = match self.net.accept(self.net.protocols().transcript.clone()) {
            Ok(i) => i,
            Err(e) => {
                warn!("cannot serve transcripts: {e}");
                return;
            }
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(32));
        while let Some((peer, stream)) = incoming.next().await {
            if self.net.is_banned(&peer) {
                continue;
            }
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                continue; // dropping the stream refuses it
            };
            let mut s = self.net.framed(stream);
            let this = self.clone();
            tokio::spawn(async move {
                let req = match s
                    .recv_timeout::<crate::proto::TranscriptRequest>(Duration::from_secs(10))
                    .await
                {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(e) => {
                        if e.is_violation() {
                            this.net.ban(peer, &format!("protocol violation: {e}"));
                        }
                        return;
                    }
                };
                let found = this.release(&peer, &req);
                let _ = s.send(&found).await;
                let _ = s.close().await;
                drop(permit);
            });
        }
    }

    /// What `peer` gets for `req`: see [`Gateway::serve_transcripts`].
    fn release(&self, peer: &PeerId, req: &crate::proto::TranscriptRequest) -> Option<Transcript> {
        let digest: agora_core::Sha256 = req.receipt.parse().ok()?;
        if let Some((t, _)) = self.evidence.get(&digest) {
            return Some(t);
        }
        let (t, leaf) = self.transcripts.get(&digest)?;
        let vkey = self.log.get().and_then(|l| l.vkey.as_ref());
        match crate::disclosure::may_release(
            peer,
            req.selection.as_ref(),
            &leaf,
            &self.cfg.trusted,
            vkey,
            self.cfg.max_check_probability,
        ) {
            Ok(()) => {
                self.stats
                    .transcripts_released
                    .fetch_add(1, Ordering::Relaxed);
                Some(t)
            }
            Err(why) => {
                self.stats
                    .transcripts_refused
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "transcript refused: {why}");
                None
            }
        }
    }

    /// Adds each peer's reputation (verdicts that count here, violations, probation, and
    /// whether this gateway routes to it) to `describe_peers`' list.
    fn with_reputation(&self, mut peers: serde_json::Value) -> serde_json::Value {
        if let Some(list) = peers.as_array_mut() {
            for p in list {
                let Some(id) = p["peer_id"].as_str().and_then(|s| s.parse::<PeerId>().ok()) else {
                    continue;
                };
                let r = self.reputation.get(&id);
                p["reputation"] = serde_json::json!({
                    "accepted": r.accepted,
                    "rejected": r.rejected,
                    "violations": r.violations,
                    "probation": r.on_probation(),
                    "delivered_peak": r.delivered_peak,
                    "measured_tps": r.measured_tps,
                    "routed": self.reputation.routable(&id),
                });
            }
        }
        peers
    }

    /// Reputation of every worker this gateway keeps a record of.
    pub fn reputations(&self) -> HashMap<PeerId, Reputation> {
        self.reputation.all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_prompt_earns_its_prefill_time_up_to_a_cap() {
        let cap = Duration::from_secs(60);
        assert_eq!(prefill_allowance(0, cap), Duration::ZERO);
        // 2,400 tokens at 100 tokens/s: 24 s more than the stall timeout.
        assert_eq!(prefill_allowance(2400, cap), Duration::from_secs(24));
        // A worker that claims a huge prompt gets the cap, no more.
        assert_eq!(prefill_allowance(u32::MAX, cap), cap);
    }
}
