//! The llama.cpp backend: one context, `slots` sequences decoded together (continuous batching).
//!
//! One OS thread ("agora-engine") owns the llama.cpp context. Each step it
//! 1. admits queued requests into free sequence slots (lowest free id first),
//! 2. drops sequences whose client went away (their KV cells are freed at once),
//! 3. builds one batch: the last token of every generating sequence, then prompt chunks of
//!    sequences still being prefilled, up to `n_batch` tokens,
//! 4. decodes it, and samples every sequence that produced logits, in Rust.
//!
//! Each sequence has its own KV stream (`kv_unified = false`) whose cells always start at 0, so a
//! sequence's numbers do not depend on what else is in the batch: the same seed gives the same
//! text with 1 slot or 8 under load.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self as std_mpsc, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use agora_sampling::Sampler;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

use crate::template::{ChatMessage, ChatTemplate, TemplateError};
use crate::text::{Step, TextStream};
use crate::{
    Engine, Event, Finish, FinishReason, GenRequest, Generation, Load, ModelInfo, PromptError,
    SubmitError, TokenEvent, check_fits,
};

/// How to load and run a model.
#[derive(Clone, Debug)]
pub struct LlamaConfig {
    pub path: PathBuf,
    pub name: String,
    pub sha256: String,
    /// CPU threads for decoding.
    pub threads: u32,
    /// Sequences decoded together.
    pub slots: u32,
    /// Context window per request (tokens).
    pub ctx: u32,
    /// Requests that may wait for a slot.
    pub queue: u32,
    /// Most tokens in one decode call.
    pub n_batch: u32,
}

impl LlamaConfig {
    pub fn new(path: PathBuf, name: String, sha256: String) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Self {
            path,
            name,
            sha256,
            threads,
            slots: 4,
            ctx: 4096,
            queue: 64,
            n_batch: 2048,
        }
    }
}

/// Errors from loading a model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("llama.cpp could not start: {0}")]
    Backend(String),
    #[error("llama.cpp could not load {path}: {why}")]
    Model { path: PathBuf, why: String },
    #[error("llama.cpp could not create a context of {ctx} tokens × {slots} slots: {why}")]
    Context { ctx: u32, slots: u32, why: String },
    #[error("invalid engine configuration: {0}")]
    Config(String),
}

fn backend() -> Result<&'static LlamaBackend, LoadError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
            if std::env::var_os("AGORA_LLAMA_LOG").is_none() {
                b.void_logs();
            }
            Ok(b)
        })
        .as_ref()
        .map_err(|e| LoadError::Backend(e.clone()))
}

struct Job {
    req: GenRequest,
    tx: mpsc::Sender<Event>,
}

struct Shared {
    queued: AtomicU32,
    busy: AtomicU32,
}

/// llama.cpp behind the [`Engine`] trait.
pub struct LlamaEngine {
    info: ModelInfo,
    model: Arc<LlamaModel>,
    template: Result<ChatTemplate, String>,
    jobs: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    add_bos: bool,
    bos: u32,
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine")
            .field("info", &self.info)
            .finish()
    }
}

impl LlamaEngine {
    /// Loads the model and starts the engine thread.
    pub fn load(cfg: LlamaConfig) -> Result<Self, LoadError> {
        if cfg.slots == 0 || cfg.slots > 256 {
            return Err(LoadError::Config(format!(
                "slots must be 1..=256, got {}",
                cfg.slots
            )));
        }
        if cfg.ctx < 16 {
            return Err(LoadError::Config(format!(
                "ctx must be at least 16 tokens, got {}",
                cfg.ctx
            )));
        }
        if cfg.threads == 0 {
            return Err(LoadError::Config("threads must be at least 1".into()));
        }
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, &cfg.path, &LlamaModelParams::default())
            .map_err(|e| LoadError::Model {
                path: cfg.path.clone(),
                why: e.to_string(),
            })?;
        let model = Arc::new(model);
        let vocab = model.vocab();
        let n_vocab = u32::try_from(vocab.n_tokens()).unwrap_or(0);
        let n_embd = u32::try_from(model.n_embd()).unwrap_or(0);
        let piece = |t: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        };
        let template = match model.meta_val_str("tokenizer.chat_template") {
            Ok(src) => ChatTemplate::new(&src, &piece(vocab.bos()), &piece(vocab.eos()))
                .map_err(|e| e.to_string()),
            Err(_) => Err(TemplateError::Missing.to_string()),
        };
        let add_bos = vocab.should_add_bos();
        let bos = vocab.bos().0 as u32;

        let head_dim = u64::from(n_embd) / u64::from(model.n_head().max(1));
        let kv_per_token =
            u64::from(model.n_layer()) * 2 * u64::from(model.n_head_kv()) * head_dim * 2;
        let info = ModelInfo {
            name: cfg.name.clone(),
            sha256: cfg.sha256.clone(),
            n_ctx: cfg.ctx,
            n_vocab,
            n_embd,
            slots: cfg.slots,
            queue: cfg.queue,
            kv_bytes: kv_per_token * u64::from(cfg.ctx) * u64::from(cfg.slots),
        };
        let shared = Arc::new(Shared {
            queued: AtomicU32::new(0),
            busy: AtomicU32::new(0),
        });
        let (jobs_tx, jobs_rx) = std_mpsc::sync_channel::<Job>(cfg.queue as usize);
        // The context is created on the engine thread (it borrows the model there); report
        // whether that worked before returning.
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<Result<(), LoadError>>(1);
        let thread = {
            let model = Arc::clone(&model);
            let shared = Arc::clone(&shared);
            let cfg = cfg.clone();
            std::thread::Builder::new()
                .name("agora-engine".into())
                .spawn(move || run_engine(&model, &cfg, &shared, &jobs_rx, &ready_tx))
                .map_err(|e| LoadError::Backend(e.to_string()))?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(LoadError::Backend(
                    "the engine thread ended while starting".into(),
                ));
            }
        }
        Ok(Self {
            info,
            model,
            template,
            jobs: Some(jobs_tx),
            shared,
            thread: Some(thread),
            add_bos,
            bos,
        })
    }
}

impl Drop for LlamaEngine {
    fn drop(&mut self) {
        // Closing the job channel ends the thread once running generations finish.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Engine for LlamaEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&self, text: &str) -> Vec<u32> {
        let vocab = self.model.vocab();
        let mut toks: Vec<u32> = vocab
            .tokenize(text.as_bytes(), false, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect();
        if self.add_bos && toks.first() != Some(&self.bos) {
            toks.insert(0, self.bos);
        }
        toks
    }

    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, PromptError> {
        match &self.template {
            Ok(t) => Ok(t.render(messages)?),
            Err(e) if e == &TemplateError::Missing.to_string() => {
                Err(TemplateError::Missing.into())
            }
            Err(e) => Err(TemplateError::Compile(e.clone()).into()),
        }
    }

    fn submit(&self, req: GenRequest) -> Result<Generation, SubmitError> {
        check_fits(&req, self.info.n_ctx)?;
        if let Some(&bad) = req.prompt.iter().find(|&&t| t >= self.info.n_vocab) {
            return Err(SubmitError::InvalidToken {
                token: bad,
                n_vocab: self.info.n_vocab,
            });
        }
        let jobs = self.jobs.as_ref().ok_or(SubmitError::Stopped)?;
        // Room for every event this generation can produce: bounded by the context window.
        let cap = req.max_tokens as usize + 4;
        let (tx, rx) = mpsc::channel(cap);
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        match jobs.try_send(Job { req, tx }) {
            Ok(()) => Ok(Generation { events: rx }),
            Err(e) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Overloaded {
                        slots: self.info.slots,
                        queue: self.info.queue,
                    },
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    fn load(&self) -> Load {
        Load {
            slots: self.info.slots,
            slots_busy: self.shared.busy.load(Ordering::SeqCst),
            queued: self.shared.queued.load(Ordering::SeqCst),
        }
    }
}

/// A sequence occupying a slot.
struct Seq {
    id: i32,
    job: Job,
    /// What is prefilled: the prompt, then the tokens of a resumed generation.
    feed: Vec<u32>,
    /// Tokens of `feed` already in the KV cache.
    prefilled: usize,
    /// Tokens generated so far, the resumed ones first.
    generated: Vec<u32>,
    /// How many of `generated` were resumed (already sent by an earlier worker).
    resumed: usize,
    text: TextStream,
    sampler: Sampler,
    /// Index in the current batch whose logits belong to this sequence.
    out_idx: Option<i32>,
    prompt_hidden: Vec<f32>,
}

impl Seq {
    /// Position of the token fed in a decode step (the last one sampled).
    fn decode_pos(&self) -> usize {
        self.feed.len() + (self.generated.len() - self.resumed) - 1
    }

    /// Whether the prompt is in and a sampled token waits to be fed.
    fn decoding(&self) -> bool {
        self.prefilled == self.feed.len() && self.generated.len() > self.resumed
    }
}

fn run_engine(
    model: &LlamaModel,
    cfg: &LlamaConfig,
    shared: &Shared,
    jobs: &Receiver<Job>,
    ready: &SyncSender<Result<(), LoadError>>,
) {
    let ctx_err = |why: String| LoadError::Context {
        ctx: cfg.ctx,
        slots: cfg.slots,
        why,
    };
    let backend = match backend() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let n_ctx_total = cfg.ctx.saturating_mul(cfg.slots);
    let n_batch = cfg.n_batch.max(cfg.slots).min(n_ctx_total);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx_total))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch.min(512))
        .with_n_seq_max(cfg.slots)
        .with_n_threads(cfg.threads as i32)
        .with_n_threads_batch(cfg.threads as i32)
        // Off unless a batch holds a sequence that asked for hidden states (see below): with
        // it on, llama.cpp outputs every token of a batch.
        .with_embeddings(false)
        .with_pooling_type(LlamaPoolingType::None)
        .with_kv_unified(false);
    let mut ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(ctx_err(e.to_string())));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut batch = LlamaBatch::new(n_batch as usize, cfg.slots as i32);
    let mut seqs: Vec<Seq> = Vec::with_capacity(cfg.slots as usize);
    let mut free_ids: Vec<i32> = (0..cfg.slots as i32).rev().collect();
    let vocab = model.vocab();
    let n_embd = model.n_embd().max(0) as usize;
    let mut closed = false;
    let mut piece = Vec::with_capacity(64);
    let mut embeddings_on = false;

    loop {
        // 1. Admit.
        while !free_ids.is_empty() && !closed {
            let next = if seqs.is_empty() {
                jobs.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                jobs.try_recv()
            };
            match next {
                Ok(job) => {
                    shared.queued.fetch_sub(1, Ordering::SeqCst);
                    if job.tx.is_closed() {
                        continue;
                    }
                    free_ids.sort_unstable_by(|a, b| b.cmp(a));
                    let Some(id) = free_ids.pop() else { break };
                    let mut text = TextStream::new(job.req.stop.clone());
                    // Replay what an earlier worker already sent, so held-back text and stop
                    // sequences spanning the resume point come out exactly as in one run.
                    for &t in &job.req.resume {
                        let lt = LlamaToken(t as i32);
                        if !vocab.is_eog(lt) {
                            piece.clear();
                            vocab.token_to_piece_into(lt, &mut piece, false, None);
                            let _ = text.push(&piece);
                        }
                    }
                    let mut feed = job.req.prompt.clone();
                    feed.extend_from_slice(&job.req.resume);
                    seqs.push(Seq {
                        id,
                        feed,
                        prefilled: 0,
                        generated: job.req.resume.clone(),
                        resumed: job.req.resume.len(),
                        job,
                        text,
                        sampler: Sampler::new(),
                        out_idx: None,
                        prompt_hidden: Vec::new(),
                    });
                    shared.busy.store(seqs.len() as u32, Ordering::SeqCst);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closed = true,
            }
        }
        if seqs.is_empty() {
            if closed {
                return;
            }
            continue;
        }

        // 2. Cancel sequences nobody listens to.
        seqs.retain(|s| {
            if s.job.tx.is_closed() {
                release(&mut ctx, s.id, &mut free_ids);
                false
            } else {
                true
            }
        });
        shared.busy.store(seqs.len() as u32, Ordering::SeqCst);
        if seqs.is_empty() {
            continue;
        }

        // 3. Build the batch, ordered by sequence id so llama.cpp can put consecutive sequences
        //    in one micro-batch.
        seqs.sort_unstable_by_key(|s| s.id);
        batch.clear();
        // A batch with hidden states outputs a row of n_vocab logits per token: keep it small.
        let capturing = seqs
            .iter()
            .any(|s| s.job.req.capture != crate::Capture::default());
        let mut budget = if capturing { n_batch.min(256) } else { n_batch } as usize;
        for s in seqs.iter_mut() {
            s.out_idx = None;
            if s.decoding() {
                let last = *s.generated.last().unwrap_or(&0);
                if batch
                    .add(
                        LlamaToken(last as i32),
                        s.decode_pos() as i32,
                        &[s.id],
                        true,
                    )
                    .is_ok()
                {
                    s.out_idx = Some(batch.n_tokens() - 1);
                    budget -= 1;
                }
            }
        }
        // (sequence id, batch index of its first prompt token, prompt tokens in this batch)
        let mut chunks: Vec<(i32, usize, usize)> = Vec::new();
        for s in seqs.iter_mut() {
            if s.decoding() || budget == 0 {
                continue;
            }
            let prompt = &s.feed;
            if s.prefilled == prompt.len() {
                continue;
            }
            let take = (prompt.len() - s.prefilled).min(budget);
            let want_hidden = s.job.req.capture.prompt_hidden;
            let first = batch.n_tokens() as usize;
            let mut added = 0;
            for (k, &tok) in prompt[s.prefilled..s.prefilled + take].iter().enumerate() {
                let pos = s.prefilled + k;
                let last = pos + 1 == prompt.len();
                if batch
                    .add(
                        LlamaToken(tok as i32),
                        pos as i32,
                        &[s.id],
                        last || want_hidden,
                    )
                    .is_err()
                {
                    break;
                }
                added += 1;
                if last {
                    s.out_idx = Some(batch.n_tokens() - 1);
                }
            }
            chunks.push((s.id, first, added));
            budget -= added;
        }

        // 4. Decode and sample. Hidden states cost an output row per batch token, so they are
        //    switched on only for batches that need them.
        let need_hidden = seqs.iter().any(|s| {
            let c = s.job.req.capture;
            (c.hidden && s.out_idx.is_some())
                || (c.prompt_hidden && chunks.iter().any(|ch| ch.0 == s.id))
        });
        if need_hidden != embeddings_on {
            ctx.set_embeddings(need_hidden);
            embeddings_on = need_hidden;
        }
        if let Err(e) = ctx.decode(&mut batch) {
            let msg = format!("llama.cpp decode failed: {e}");
            for s in seqs.drain(..) {
                let _ = s.job.tx.try_send(Event::Error(msg.clone()));
                release(&mut ctx, s.id, &mut free_ids);
            }
            shared.busy.store(0, Ordering::SeqCst);
            continue;
        }
        let mut finished: Vec<i32> = Vec::new();
        for s in seqs.iter_mut() {
            // Prompt progress (and prompt hidden states when asked).
            if let Some(&(_, first, took)) = chunks.iter().find(|c| c.0 == s.id) {
                if s.job.req.capture.prompt_hidden {
                    for i in first..first + took {
                        if let Ok(h) = ctx.embeddings_ith(i as i32) {
                            s.prompt_hidden.extend_from_slice(&h[..n_embd.min(h.len())]);
                        }
                    }
                }
                s.prefilled += took;
                if s.prefilled == s.feed.len() && s.job.req.capture.prompt_hidden {
                    let hidden = std::mem::take(&mut s.prompt_hidden);
                    let _ = s.job.tx.try_send(Event::PromptHidden(hidden));
                }
            }
            let Some(idx) = s.out_idx else { continue };
            let logits = ctx.get_logits_ith(idx);
            let position = s.generated.len() as u64;
            let Some(token) = s.sampler.sample(logits, &s.job.req.params, position) else {
                let _ = s
                    .job
                    .tx
                    .try_send(Event::Error("the model produced no finite logit".into()));
                finished.push(s.id);
                continue;
            };
            let cap = s.job.req.capture;
            let hidden = if cap.hidden {
                ctx.embeddings_ith(idx)
                    .ok()
                    .map(|h| h[..n_embd.min(h.len())].to_vec())
            } else {
                None
            };
            let logits_out = cap.logits.then(|| logits.to_vec());
            s.generated.push(token);
            let lt = LlamaToken(token as i32);
            let eog = vocab.is_eog(lt) && !s.job.req.ignore_eos;
            let mut stop_hit = false;
            let text = if eog {
                String::new()
            } else {
                piece.clear();
                vocab.token_to_piece_into(lt, &mut piece, false, None);
                match s.text.push(&piece) {
                    Step::Text(t) => t,
                    Step::Stop(t) => {
                        stop_hit = true;
                        t
                    }
                }
            };
            let index = s.generated.len() as u32 - 1;
            let ev = Event::Token(TokenEvent {
                id: token,
                index,
                text,
                hidden,
                logits: logits_out,
            });
            if s.job.tx.try_send(ev).is_err() {
                finished.push(s.id);
                continue;
            }
            let reason = if eog || stop_hit {
                Some(FinishReason::Stop)
            } else if s.generated.len() as u32 >= s.job.req.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                let tail = if stop_hit {
                    String::new()
                } else {
                    s.text.finish()
                };
                let _ = s.job.tx.try_send(Event::Done(Finish {
                    reason,
                    prompt_tokens: s.job.req.prompt.len() as u32,
                    completion_tokens: s.generated.len() as u32,
                    tail,
                }));
                finished.push(s.id);
            }
        }
        if !finished.is_empty() {
            seqs.retain(|s| !finished.contains(&s.id));
            for id in finished {
                release(&mut ctx, id, &mut free_ids);
            }
            shared.busy.store(seqs.len() as u32, Ordering::SeqCst);
        }
    }
}

/// Frees a sequence's KV cells and its slot id.
fn release(ctx: &mut LlamaContext<'_>, id: i32, free_ids: &mut Vec<i32>) {
    let _ = ctx.clear_kv_cache_seq(Some(id as u32), None, None);
    free_ids.push(id);
}
