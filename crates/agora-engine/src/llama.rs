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

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self as std_mpsc, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use agora_sampling::Sampler;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, oneshot};

use crate::template::{ChatTemplate, Segment, TemplateError};
use crate::text::{Step, TextStream};
use crate::{
    Engine, Event, Finish, FinishReason, GenRequest, Generation, Load, ModelInfo, PromptError,
    PromptSpec, ScoreHandle, ScoreRequest, ScoreSink, SubmitError, TokenEvent, check_request,
    check_vocab,
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

enum Job {
    Generate {
        req: GenRequest,
        tx: mpsc::Sender<Event>,
    },
    Score {
        req: ScoreRequest,
        sink: Box<dyn ScoreSink>,
        done: oneshot::Sender<Result<(), String>>,
    },
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
        // The longest token's text bounds how few tokens a text can be: prompts longer than the
        // context window at that density are refused before tokenizing.
        let max_token_bytes = (0..vocab.n_tokens())
            .map(|t| vocab.token_to_piece(LlamaToken(t), true, None).len())
            .max()
            .unwrap_or(1)
            .max(1) as u32;

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
            max_token_bytes,
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

impl LlamaEngine {
    fn tokenize_segment(&self, text: &str, special: bool, out: &mut Vec<u32>) {
        let toks = self.model.vocab().tokenize(text.as_bytes(), false, special);
        out.extend(toks.into_iter().map(|t| t.0 as u32));
    }

    /// Hands `job` to the engine thread, or refuses it when the bounded queue is full.
    fn enqueue(&self, job: Job) -> Result<(), SubmitError> {
        let jobs = self.jobs.as_ref().ok_or(SubmitError::Stopped)?;
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        jobs.try_send(job).map_err(|e| {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            match e {
                TrySendError::Full(_) => SubmitError::Overloaded {
                    slots: self.info.slots,
                    queue: self.info.queue,
                },
                TrySendError::Disconnected(_) => SubmitError::Stopped,
            }
        })
    }
}

impl Engine for LlamaEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn tokenize(&self, prompt: &PromptSpec) -> Result<Vec<u32>, PromptError> {
        let segments = match prompt {
            PromptSpec::Chat(messages) => match &self.template {
                Ok(t) => t.render_segments(messages)?,
                Err(e) if e == &TemplateError::Missing.to_string() => {
                    return Err(TemplateError::Missing.into());
                }
                Err(e) => return Err(TemplateError::Compile(e.clone()).into()),
            },
            PromptSpec::Text(t) => vec![Segment {
                text: t.clone(),
                special: true,
            }],
        };
        let bytes: usize = segments.iter().map(|s| s.text.len()).sum();
        crate::check_prompt_bytes(bytes, &self.info)?;
        let mut toks = Vec::new();
        for s in &segments {
            self.tokenize_segment(&s.text, s.special, &mut toks);
        }
        if self.add_bos && toks.first() != Some(&self.bos) {
            toks.insert(0, self.bos);
        }
        Ok(toks)
    }

    fn token_piece(&self, token: u32) -> Option<Vec<u8>> {
        (token < self.info.n_vocab).then(|| {
            self.model
                .vocab()
                .token_to_piece(LlamaToken(token as i32), false, None)
        })
    }

    fn is_eog(&self, token: u32) -> bool {
        token < self.info.n_vocab && self.model.vocab().is_eog(LlamaToken(token as i32))
    }

    fn submit(&self, req: GenRequest) -> Result<Generation, SubmitError> {
        // Everything llama.cpp will be handed is checked here, whoever sent it: token ids
        // (prompt, resumed tokens, logit biases) against the vocabulary, lengths against the
        // context window. A token outside the vocabulary would make llama.cpp abort the
        // process; a resume past the window would fail the whole batch.
        check_request(&req, self.info.n_ctx, self.info.n_vocab)?;
        // Room for every event this generation can produce: bounded by the context window.
        let cap = req.max_tokens as usize + 4;
        let (tx, rx) = mpsc::channel(cap);
        self.enqueue(Job::Generate { req, tx })?;
        Ok(Generation { events: rx })
    }

    fn score(
        &self,
        req: ScoreRequest,
        sink: Box<dyn ScoreSink>,
    ) -> Result<ScoreHandle, SubmitError> {
        let n = u32::try_from(req.tokens.len()).unwrap_or(u32::MAX);
        if n == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        if n > self.info.n_ctx {
            return Err(SubmitError::PromptTooLong {
                prompt: n,
                ctx: self.info.n_ctx,
            });
        }
        check_vocab(&req.tokens, self.info.n_vocab)?;
        let (done, rx) = oneshot::channel();
        self.enqueue(Job::Score { req, sink, done })?;
        Ok(ScoreHandle { done: rx })
    }

    fn load(&self) -> Load {
        Load {
            slots: self.info.slots,
            slots_busy: self.shared.busy.load(Ordering::SeqCst),
            queued: self.shared.queued.load(Ordering::SeqCst),
        }
    }
}

/// A generation in a slot.
struct GenState {
    req: GenRequest,
    tx: mpsc::Sender<Event>,
    /// Tokens generated so far, the resumed ones first.
    generated: Vec<u32>,
    /// How many of `generated` were resumed (already sent by an earlier worker).
    resumed: usize,
    text: TextStream,
    sampler: Sampler,
}

/// A scoring pass in a slot.
struct ScoreState {
    sink: Box<dyn ScoreSink>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

enum Work {
    Gen(Box<GenState>),
    Score(ScoreState),
}

/// A sequence occupying a slot.
struct Seq {
    id: i32,
    work: Work,
    /// Tokens to put in the KV cache before generating: the prompt, then resumed tokens (or,
    /// for scoring, everything to score).
    feed: Vec<u32>,
    /// Tokens in the KV cache.
    kv: usize,
    /// Feed up to here goes in prefill batches (hidden states off). Beyond it, tokens go in the
    /// output batch: one at a time for a generation, in chunks for scoring.
    prefill_end: usize,
}

impl Seq {
    fn closed(&self) -> bool {
        match &self.work {
            Work::Gen(g) => g.tx.is_closed(),
            Work::Score(s) => s.done.as_ref().is_none_or(|d| d.is_closed()),
        }
    }

    fn wants_hidden(&self) -> bool {
        match &self.work {
            Work::Gen(g) => g.req.capture.hidden,
            Work::Score(_) => true,
        }
    }

    /// The token a generation feeds in its next output step.
    fn next_input(&self) -> Option<u32> {
        let Work::Gen(g) = &self.work else {
            return None;
        };
        if self.kv < self.feed.len() {
            Some(self.feed[self.kv])
        } else {
            g.generated
                .last()
                .copied()
                .filter(|_| g.generated.len() > g.resumed)
        }
    }

    fn fail(&mut self, msg: String) {
        match &mut self.work {
            Work::Gen(g) => {
                let _ = g.tx.try_send(Event::Error(msg));
            }
            Work::Score(s) => {
                if let Some(d) = s.done.take() {
                    let _ = d.send(Err(msg));
                }
            }
        }
    }
}

/// Prompt prefill chunks are aligned to this many positions and decoded alone.
const PREFILL_CHUNK: usize = 512;
/// Rows in one output pass. llama.cpp computes micro-batches of up to 48 rows bit for bit as
/// it computes single rows on this CPU family (measured: crates/agora-engine/examples/drift.rs);
/// 64 rows take other kernels.
const OUTPUT_ROWS: usize = 48;

/// One token of a batch: whose, where, and whether its row is read back.
#[derive(Clone, Copy)]
struct Slot {
    seq: usize,
    pos: usize,
    output: bool,
}

fn add_all(
    batch: &mut LlamaBatch<'_>,
    seqs: &[Seq],
    slots: &[Slot],
    feed_token: impl Fn(&Seq, usize) -> u32,
) -> bool {
    batch.clear();
    for sl in slots {
        let s = &seqs[sl.seq];
        let tok = feed_token(s, sl.pos);
        if batch
            .add(LlamaToken(tok as i32), sl.pos as i32, &[s.id], sl.output)
            .is_err()
        {
            return false;
        }
    }
    true
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
    let n_batch = cfg.n_batch.max(cfg.slots).min(n_ctx_total) as usize;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx_total))
        .with_n_batch(n_batch as u32)
        .with_n_ubatch(n_batch.min(PREFILL_CHUNK) as u32)
        .with_n_seq_max(cfg.slots)
        .with_n_threads(cfg.threads as i32)
        .with_n_threads_batch(cfg.threads as i32)
        // Off unless a batch holds a sequence that asked for hidden states (see below): with
        // it on, llama.cpp outputs every token of a batch.
        .with_embeddings(false)
        .with_pooling_type(LlamaPoolingType::None)
        .with_kv_unified(false)
        // A row's numbers must not depend on the thread count or on what else is in the batch
        // (seeded sampling, failover and proofs need that). llama.cpp's flash-attention kernel
        // has two paths that break it, both only for f16/f32 caches: it splits the key/value
        // range of a lone query row across threads once 512 positions are cached, and it tiles
        // batches of 64 rows or more. With a bf16 cache (same size as f16) every row takes the
        // one per-row path, bit-identically for any thread count (measured: examples/drift.rs,
        // 600- and 700-token outputs, 2 threads generating and 1 scoring, and the reverse).
        .with_flash_attention_policy(1) // LLAMA_FLASH_ATTN_TYPE_ENABLED (not re-exported)
        .with_type_k(KvCacheType::BF16)
        .with_type_v(KvCacheType::BF16);
    let mut ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(ctx_err(e.to_string())));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut batch = LlamaBatch::new(n_batch, cfg.slots as i32);
    let mut seqs: Vec<Seq> = Vec::with_capacity(cfg.slots as usize);
    let mut free_ids: Vec<i32> = (0..cfg.slots as i32).rev().collect();
    let vocab = model.vocab();
    let n_embd = model.n_embd().max(0) as usize;
    let mut closed = false;
    let mut piece = Vec::with_capacity(64);
    let mut embeddings_on = false;
    let mut last_prefill = -1i32;
    let mut rotate = 0usize;
    let mut bias_scratch: Vec<f32> = Vec::new();

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
                    free_ids.sort_unstable_by(|a, b| b.cmp(a));
                    let Some(id) = free_ids.pop() else { break };
                    let seq = match job {
                        Job::Generate { req, tx } => {
                            if tx.is_closed() {
                                free_ids.push(id);
                                continue;
                            }
                            let mut text = TextStream::new(req.stop.clone());
                            // Replay what an earlier worker already sent, so held-back text and
                            // stop sequences spanning the resume point come out as in one run.
                            for &t in &req.resume {
                                let lt = LlamaToken(t as i32);
                                if !vocab.is_eog(lt) {
                                    piece.clear();
                                    vocab.token_to_piece_into(lt, &mut piece, false, None);
                                    let _ = text.push(&piece);
                                }
                            }
                            let mut feed = req.prompt.clone();
                            feed.extend_from_slice(&req.resume);
                            // The last prompt token and any resumed tokens go through output
                            // passes, exactly as they did (or would have) when generated.
                            let prefill_end = req.prompt.len().saturating_sub(1);
                            let generated = req.resume.clone();
                            let resumed = generated.len();
                            Seq {
                                id,
                                feed,
                                kv: 0,
                                prefill_end,
                                work: Work::Gen(Box::new(GenState {
                                    req,
                                    tx,
                                    generated,
                                    resumed,
                                    text,
                                    sampler: Sampler::new(),
                                })),
                            }
                        }
                        Job::Score { req, sink, done } => {
                            if done.is_closed() {
                                free_ids.push(id);
                                continue;
                            }
                            Seq {
                                id,
                                prefill_end: req.from.min(req.tokens.len()),
                                feed: req.tokens,
                                kv: 0,
                                work: Work::Score(ScoreState {
                                    sink,
                                    done: Some(done),
                                }),
                            }
                        }
                    };
                    seqs.push(seq);
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
            if s.closed() {
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

        // 3. Plan the step. Every number llama.cpp computes for a sequence must depend only on
        //    that sequence's tokens, never on what else is running (that is what makes seeded
        //    sampling reproducible under load, a generation resumable elsewhere, and a proof
        //    checkable by one prefill). llama.cpp switches matrix kernels for micro-batches of
        //    64 rows or more, so:
        //    - prompts are prefilled alone, in chunks aligned to PREFILL_CHUNK positions, one
        //      chunk of one sequence per step, taking turns;
        //    - everything else (the last prompt token, resumed tokens, sampled tokens, scored
        //      rows) goes in output passes of at most OUTPUT_ROWS rows, where each row's numbers
        //      are those of decoding it alone.
        seqs.sort_unstable_by_key(|s| s.id);
        let mut passes: Vec<(Vec<Slot>, bool)> = Vec::new();
        let prefilling: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].kv < seqs[i].prefill_end)
            .collect();
        if !prefilling.is_empty() {
            let i = prefilling
                .iter()
                .copied()
                .find(|&i| seqs[i].id > last_prefill)
                .unwrap_or(prefilling[0]);
            last_prefill = seqs[i].id;
            let s = &seqs[i];
            let chunk_end = ((s.kv / PREFILL_CHUNK + 1) * PREFILL_CHUNK).min(s.prefill_end);
            passes.push((
                (s.kv..chunk_end)
                    .map(|pos| Slot {
                        seq: i,
                        pos,
                        output: false,
                    })
                    .collect(),
                false,
            ));
        }
        let mut rows: Vec<Slot> = Vec::new();
        let mut budget = OUTPUT_ROWS;
        let n = seqs.len();
        for k in 0..n {
            let i = (k + rotate) % n;
            let s = &seqs[i];
            if budget == 0 || s.kv < s.prefill_end {
                continue;
            }
            match &s.work {
                Work::Gen(g) if s.kv < s.feed.len() => {
                    // Last prompt token, then resumed tokens; the last of them is sampled from.
                    // With hidden states, every row is read: it belongs to a resumed token.
                    let end = s.feed.len().min(s.kv + budget);
                    for pos in s.kv..end {
                        let output = pos + 1 == s.feed.len() || g.req.capture.hidden;
                        rows.push(Slot {
                            seq: i,
                            pos,
                            output,
                        });
                    }
                    budget -= end - s.kv;
                }
                Work::Gen(_) => {
                    if s.next_input().is_some() {
                        rows.push(Slot {
                            seq: i,
                            pos: s.kv,
                            output: true,
                        });
                        budget -= 1;
                    }
                }
                Work::Score(_) => {
                    let end = s.feed.len().min(s.kv + budget);
                    for pos in s.kv..end {
                        rows.push(Slot {
                            seq: i,
                            pos,
                            output: true,
                        });
                    }
                    budget -= end - s.kv;
                }
            }
        }
        rotate = rotate.wrapping_add(1);
        if !rows.is_empty() {
            rows.sort_by_key(|sl| (seqs[sl.seq].id, sl.pos));
            let hidden = rows
                .iter()
                .any(|sl| sl.output && seqs[sl.seq].wants_hidden());
            passes.push((rows, hidden));
        }

        // 4. Decode and read back. A pass that fails is decoded again one sequence at a time,
        //    so that a failure fails only the sequence that causes it (an output row's numbers
        //    do not depend on the rest of the pass, so splitting changes none of them).
        let mut finished: Vec<i32> = Vec::new();
        let mut passes: VecDeque<(Vec<Slot>, bool)> = passes.into();
        while let Some((slots, hidden)) = passes.pop_front() {
            if slots.is_empty() || slots.iter().all(|sl| finished.contains(&seqs[sl.seq].id)) {
                continue;
            }
            if hidden != embeddings_on {
                ctx.set_embeddings(hidden);
                embeddings_on = hidden;
            }
            let feed_token = |s: &Seq, pos: usize| -> u32 {
                if pos < s.feed.len() {
                    s.feed[pos]
                } else {
                    s.next_input().unwrap_or(0)
                }
            };
            let added = add_all(&mut batch, &seqs, &slots, feed_token);
            let decoded = if added {
                ctx.decode(&mut batch).map_err(|e| e.to_string())
            } else {
                Err("batch overflow".into())
            };
            if let Err(e) = decoded {
                let mut owners: Vec<usize> = slots.iter().map(|sl| sl.seq).collect();
                owners.dedup();
                // Whatever the failed call left of these positions in the cache goes.
                for &i in &owners {
                    let from = slots.iter().filter(|sl| sl.seq == i).map(|sl| sl.pos).min();
                    let _ = ctx.clear_kv_cache_seq(
                        Some(seqs[i].id as u32),
                        from.map(|p| p as u32),
                        None,
                    );
                }
                if owners.len() == 1 {
                    let s = &mut seqs[owners[0]];
                    s.fail(SubmitError::Decode(e).to_string());
                    finished.push(s.id);
                } else {
                    for (k, &i) in owners.iter().enumerate() {
                        let alone: Vec<Slot> =
                            slots.iter().filter(|sl| sl.seq == i).copied().collect();
                        let wants = alone.iter().any(|sl| sl.output && seqs[i].wants_hidden());
                        passes.insert(k, (alone, hidden && wants));
                    }
                }
                continue;
            }
            for (bi, sl) in slots.iter().enumerate() {
                let s = &mut seqs[sl.seq];
                s.kv = s.kv.max(sl.pos + 1);
                if !sl.output || finished.contains(&s.id) {
                    continue;
                }
                let bi = bi as i32;
                match &mut s.work {
                    Work::Score(st) => {
                        let logits = ctx.get_logits_ith(bi);
                        let hidden = ctx
                            .embeddings_ith(bi)
                            .map(|h| &h[..n_embd.min(h.len())])
                            .unwrap_or(&[]);
                        st.sink.row(sl.pos, hidden, logits);
                        if s.kv == s.feed.len() {
                            if let Some(d) = st.done.take() {
                                let _ = d.send(Ok(()));
                            }
                            finished.push(s.id);
                        }
                    }
                    Work::Gen(g) if sl.pos + 1 < s.feed.len() => {
                        // A resumed token's row: hand out its hidden state, sample nothing.
                        let index = sl.pos + 1 - g.req.prompt.len();
                        let hidden = ctx
                            .embeddings_ith(bi)
                            .ok()
                            .map(|h| h[..n_embd.min(h.len())].to_vec());
                        let ev = TokenEvent {
                            id: g.generated[index],
                            index: index as u32,
                            text: String::new(),
                            hidden,
                            logits: None,
                        };
                        if g.tx.try_send(Event::Replayed(ev)).is_err() {
                            finished.push(s.id);
                        }
                    }
                    Work::Gen(g) => {
                        let logits = ctx.get_logits_ith(bi);
                        let position = g.generated.len() as u64;
                        let biased =
                            agora_sampling::with_bias(logits, &g.req.logit_bias, &mut bias_scratch);
                        let Some(token) = g.sampler.sample(biased, &g.req.params, position) else {
                            let _ = g.tx.try_send(Event::Error(
                                "the model produced no finite logit".into(),
                            ));
                            finished.push(s.id);
                            continue;
                        };
                        let hidden = if g.req.capture.hidden {
                            ctx.embeddings_ith(bi)
                                .ok()
                                .map(|h| h[..n_embd.min(h.len())].to_vec())
                        } else {
                            None
                        };
                        let logits_out = g.req.capture.logits.then(|| logits.to_vec());
                        g.generated.push(token);
                        let lt = LlamaToken(token as i32);
                        let eog = vocab.is_eog(lt) && !g.req.ignore_eos;
                        let mut stop_hit = false;
                        let text = if eog {
                            String::new()
                        } else {
                            piece.clear();
                            vocab.token_to_piece_into(lt, &mut piece, false, None);
                            match g.text.push(&piece) {
                                Step::Text(t) => t,
                                Step::Stop(t) => {
                                    stop_hit = true;
                                    t
                                }
                            }
                        };
                        let index = g.generated.len() as u32 - 1;
                        let ev = Event::Token(TokenEvent {
                            id: token,
                            index,
                            text,
                            hidden,
                            logits: logits_out,
                        });
                        if g.tx.try_send(ev).is_err() {
                            finished.push(s.id);
                            continue;
                        }
                        let reason = if eog || stop_hit {
                            Some(FinishReason::Stop)
                        } else if g.generated.len() as u32 >= g.req.max_tokens {
                            Some(FinishReason::Length)
                        } else {
                            None
                        };
                        if let Some(reason) = reason {
                            let tail = if stop_hit {
                                String::new()
                            } else {
                                g.text.finish()
                            };
                            let _ = g.tx.try_send(Event::Done(Finish {
                                reason,
                                prompt_tokens: g.req.prompt.len() as u32,
                                completion_tokens: g.generated.len() as u32,
                                tail,
                                tokens: g.generated.clone(),
                                attestation: None,
                            }));
                            finished.push(s.id);
                        }
                    }
                }
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
