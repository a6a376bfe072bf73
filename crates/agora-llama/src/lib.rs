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

pub mod cpu;
mod prefix;

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self as std_mpsc, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use agora_sampling::Sampler;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::vocab::LlamaVocab;
use prefix::PrefixCache;
use tokio::sync::{mpsc, oneshot};

use agora_engine::template::{ChatTemplate, Segment, TemplateError};
use agora_engine::text::{Step, TextStream};
use agora_engine::{
    Engine, Event, Finish, FinishReason, GenRequest, Generation, Load, ModelInfo, PrefixStats,
    PromptError, PromptSpec, ScoreHandle, ScoreRequest, ScoreSink, SubmitError, TokenEvent,
    check_request, check_vocab,
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
    /// Keep the prompt prefix of a finished request in its slot, for a later request that
    /// starts with it (a conversation's next turn, a shared system prompt) to reuse. Costs no
    /// memory beyond the slots' own; a new request that needs the slot takes it at once.
    pub prefix_cache: bool,
    /// Bytes of memory beyond the slots for token states a slot had to give up (a sequence that
    /// needed the slot did not continue them): kept, least recently used first out, and put
    /// back into a slot when a later prompt starts with them (more conversations than slots).
    /// 0 keeps only what the slots hold.
    pub prefix_cache_bytes: u64,
    /// Decode with fewer threads while other processes keep cores busy (see [`cpu`]): up to
    /// `threads`, leaving others the cores they want. Changes no bit of what is computed.
    pub adaptive_threads: bool,
    /// Load weights into llama.cpp's repacked layouts ("extra" CPU buffer types: Q4_0, Q4_K
    /// and IQ4_NL in 8x8 blocks, AMX) where the CPU has them. Faster prefill for those types,
    /// but their kernels compute rows in groups, so a token's numbers can depend on its batch:
    /// off by default, and a node that turns it on finds out from its self-check
    /// ([`agora_engine::selfcheck`]) whether its answers can still be proven.
    pub repack: bool,
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
            prefix_cache: true,
            prefix_cache_bytes: 0,
            adaptive_threads: true,
            repack: false,
        }
    }
}

/// Errors from loading a model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine could not start, with no underlying error.
    #[error("llama.cpp could not start: {0}")]
    Backend(String),
    /// llama.cpp's backend failed to initialize (once per process: every later load shares the
    /// same error).
    #[error("llama.cpp could not start: {0}")]
    Init(#[source] Arc<llama_cpp_2::LlamaCppError>),
    /// The engine thread could not be spawned.
    #[error("llama.cpp could not start: cannot spawn the engine thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("llama.cpp could not load {path}: {source}")]
    Model {
        path: PathBuf,
        #[source]
        source: llama_cpp_2::LlamaModelLoadError,
    },
    #[error("llama.cpp could not create a context of {ctx} tokens × {slots} slots: {source}")]
    Context {
        ctx: u32,
        slots: u32,
        #[source]
        source: llama_cpp_2::LlamaContextLoadError,
    },
    #[error("invalid engine configuration: {0}")]
    Config(String),
}

fn backend() -> Result<&'static LlamaBackend, LoadError> {
    static BACKEND: OnceLock<Result<LlamaBackend, Arc<llama_cpp_2::LlamaCppError>>> =
        OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(Arc::new)?;
            if std::env::var_os("AGORA_LLAMA_LOG").is_none() {
                b.void_logs();
            }
            Ok(b)
        })
        .as_ref()
        .map_err(|e| LoadError::Init(Arc::clone(e)))
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
    prefix: Mutex<PrefixStats>,
    /// The conversation keys of the chat prompts idle slots hold.
    conversations: Mutex<Vec<u64>>,
    /// Threads to decode with (set by the CPU watcher, read before every decode).
    threads: AtomicU32,
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
        // By default no repacked weight layouts (llama.cpp's "extra" CPU buffer types:
        // Q4_0/Q4_K/IQ4_NL 8x8, AMX): their kernels compute rows in groups of four and the rest
        // one by one, with other roundings, so a token's numbers would depend on its batch
        // (measured on Gemma 3's Q4_K: a sequence decoded alone and among eight chose other
        // tokens). Every type then takes its per-row product (Q4_1 its bit-identical tile), the
        // same bits in any batch. `repack` turns them on; the node's self-check then tells.
        let params = LlamaModelParams::default().with_use_extra_bufts(cfg.repack);
        let model = LlamaModel::load_from_file(backend, &cfg.path, &params).map_err(|source| {
            LoadError::Model {
                path: cfg.path.clone(),
                source,
            }
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

        // Keys and values of one token in every layer, bf16. A head is n_embd / n_head wide
        // unless the GGUF says otherwise (Gemma 3 270M: 640 / 4, but heads of 256).
        let arch = model
            .meta_val_str("general.architecture")
            .unwrap_or_default();
        let head_dim = |what: &str| {
            model
                .meta_val_str(&format!("{arch}.attention.{what}_length"))
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(u64::from(n_embd) / u64::from(model.n_head().max(1)))
        };
        let kv_per_token = u64::from(model.n_layer())
            * u64::from(model.n_head_kv())
            * (head_dim("key") + head_dim("value"))
            * 2;
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
            unverifiable: None,
        };
        let shared = Arc::new(Shared {
            queued: AtomicU32::new(0),
            busy: AtomicU32::new(0),
            prefix: Mutex::new(PrefixStats::default()),
            conversations: Mutex::new(Vec::new()),
            threads: AtomicU32::new(cfg.threads),
        });
        if cfg.adaptive_threads && cfg.threads > 1 {
            watch_cpu(Arc::downgrade(&shared), cfg.threads);
        }
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
                .map_err(LoadError::Thread)?
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

/// Starts the thread that sets `shared.threads` to what the CPU leaves free (see [`cpu`]); it
/// ends with the engine. Nothing happens where `/proc` cannot be read.
fn watch_cpu(shared: std::sync::Weak<Shared>, max: u32) {
    let Some(mut watch) = cpu::Watch::new(max) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("agora-cpu-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(cpu::INTERVAL);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let Some(now) = cpu::sample() else { return };
                let threads = shared.threads.load(Ordering::Relaxed);
                if let Some(t) = watch.next(now, threads) {
                    shared.threads.store(t, Ordering::Relaxed);
                }
            }
        });
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
    /// Records the outcome of the node's self-check ([`agora_engine::selfcheck`]): `Some(why)`
    /// marks this engine's answers unverifiable in [`Engine::info`].
    pub fn set_unverifiable(&mut self, why: Option<String>) {
        self.info.unverifiable = why;
    }

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
        agora_engine::check_prompt_bytes(bytes, &self.info)?;
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
            prefix: *self.shared.prefix.lock().unwrap_or_else(|e| e.into_inner()),
            threads: self.shared.threads.load(Ordering::Relaxed),
        }
    }

    fn held_conversations(&self) -> Vec<u64> {
        self.shared
            .conversations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    /// Whether its prefilled chunks may be kept for reuse when it ends (not after a failed
    /// decode).
    cacheable: bool,
}

impl Seq {
    fn closed(&self) -> bool {
        match &self.work {
            Work::Gen(g) => g.tx.is_closed(),
            Work::Score(s) => s.done.as_ref().is_none_or(|d| d.is_closed()),
        }
    }

    /// What the scheduler sees of this sequence.
    fn plan(&self) -> SeqPlan {
        SeqPlan {
            id: self.id,
            kv: self.kv,
            prefill_end: self.prefill_end,
            feed_len: self.feed.len(),
            kind: match &self.work {
                Work::Gen(g) => Kind::Gen {
                    hidden: g.req.capture.hidden,
                    ready: self.next_input().is_some(),
                },
                Work::Score(_) => Kind::Score,
            },
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

/// Prompt prefill chunks are aligned to this many positions and decoded alone. 128 prefills
/// fastest on this machine (a 1,516-token prompt, 2 threads: 365 tokens/s against 341 with 64,
/// 256 or 512 positions).
const PREFILL_CHUNK: usize = 128;
/// Rows in one output pass. llama.cpp computes micro-batches of up to 48 rows bit for bit as
/// it computes single rows on this CPU family (measured: crates/agora-engine/examples/drift.rs);
/// 64 rows take other kernels.
const OUTPUT_ROWS: usize = 48;

/// One token of a batch: whose (index into the step's sequences), where, and whether its row
/// is read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    seq: usize,
    pos: usize,
    output: bool,
}

/// One llama.cpp call: its tokens, and whether hidden states are read back.
#[derive(Debug, PartialEq, Eq)]
struct Pass {
    slots: Vec<Slot>,
    hidden: bool,
}

/// What the scheduler needs to know of a sequence.
#[derive(Clone, Copy, Debug)]
struct SeqPlan {
    id: i32,
    /// Tokens in the KV cache.
    kv: usize,
    /// Feed up to here is prefilled (prompt chunks).
    prefill_end: usize,
    /// Tokens to put in the cache before generating (prompt, then resumed tokens).
    feed_len: usize,
    kind: Kind,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A generation: whether it wants hidden states, and whether it has a token to feed next
    /// (the last one it sampled) once its feed is in the cache.
    Gen { hidden: bool, ready: bool },
    /// A scoring pass: every row from `prefill_end` on is read back, with hidden states.
    Score,
}

/// The scheduling rule, a pure function (verification depends on it). Every number llama.cpp
/// computes for a sequence must depend only on that sequence's tokens, never on what else is
/// running: that is what makes seeded sampling reproducible under load, a generation
/// resumable elsewhere, and a proof checkable by one prefill. llama.cpp switches matrix kernels
/// for micro-batches of 64 rows or more, so:
/// - prompts are prefilled alone, in chunks aligned to [`PREFILL_CHUNK`] positions, one chunk
///   of one sequence per step, taking turns (after `last_prefill`'s id, round robin);
/// - everything else (the last prompt token, resumed tokens, sampled tokens, scored rows) goes
///   in one output pass of at most [`OUTPUT_ROWS`] rows, where each row's numbers are those of
///   decoding it alone; which sequences go first rotates with `rotate`.
///
/// `seqs` must be sorted by id. Returns the passes (prefill first) and the id whose prompt
/// chunk is in this step, if any.
fn plan(seqs: &[SeqPlan], last_prefill: i32, rotate: usize) -> (Vec<Pass>, Option<i32>) {
    let mut passes = Vec::new();
    let prefilling: Vec<usize> = (0..seqs.len())
        .filter(|&i| seqs[i].kv < seqs[i].prefill_end)
        .collect();
    let mut prefilled = None;
    if let Some(&first) = prefilling.first() {
        let i = prefilling
            .iter()
            .copied()
            .find(|&i| seqs[i].id > last_prefill)
            .unwrap_or(first);
        let s = &seqs[i];
        prefilled = Some(s.id);
        let chunk_end = ((s.kv / PREFILL_CHUNK + 1) * PREFILL_CHUNK).min(s.prefill_end);
        passes.push(Pass {
            slots: (s.kv..chunk_end)
                .map(|pos| Slot {
                    seq: i,
                    pos,
                    output: false,
                })
                .collect(),
            hidden: false,
        });
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
        match s.kind {
            Kind::Gen { hidden, .. } if s.kv < s.feed_len => {
                // Last prompt token, then resumed tokens; the last of them is sampled from.
                // With hidden states, every row is read: it belongs to a resumed token.
                let end = s.feed_len.min(s.kv + budget);
                rows.extend((s.kv..end).map(|pos| Slot {
                    seq: i,
                    pos,
                    output: pos + 1 == s.feed_len || hidden,
                }));
                budget -= end - s.kv;
            }
            Kind::Gen { ready, .. } => {
                if ready {
                    rows.push(Slot {
                        seq: i,
                        pos: s.kv,
                        output: true,
                    });
                    budget -= 1;
                }
            }
            Kind::Score => {
                let end = s.feed_len.min(s.kv + budget);
                rows.extend((s.kv..end).map(|pos| Slot {
                    seq: i,
                    pos,
                    output: true,
                }));
                budget -= end - s.kv;
            }
        }
    }
    if !rows.is_empty() {
        rows.sort_by_key(|sl| (seqs[sl.seq].id, sl.pos));
        let hidden = rows.iter().any(|sl| {
            sl.output
                && match seqs[sl.seq].kind {
                    Kind::Gen { hidden, .. } => hidden,
                    Kind::Score => true,
                }
        });
        passes.push(Pass {
            slots: rows,
            hidden,
        });
    }
    (passes, prefilled)
}

fn add_all(batch: &mut LlamaBatch<'_>, seqs: &[Seq], slots: &[Slot]) -> bool {
    batch.clear();
    for sl in slots {
        let s = &seqs[sl.seq];
        let tok = if sl.pos < s.feed.len() {
            s.feed[sl.pos]
        } else {
            s.next_input().unwrap_or(0)
        };
        if batch
            .add(LlamaToken(tok as i32), sl.pos as i32, &[s.id], sl.output)
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Creates the context on the engine thread and says whether that worked.
fn open_context<'m>(
    model: &'m LlamaModel,
    cfg: &LlamaConfig,
    ready: &SyncSender<Result<(), LoadError>>,
) -> Option<(LlamaContext<'m>, usize)> {
    let backend = match backend() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
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
    match model.new_context(backend, params) {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            Some((c, n_batch))
        }
        Err(e) => {
            let _ = ready.send(Err(LoadError::Context {
                ctx: cfg.ctx,
                slots: cfg.slots,
                source: e,
            }));
            None
        }
    }
}

/// A job as a sequence in slot `id`, or `None` when its client already went away.
fn admit(job: Job, id: i32, vocab: &LlamaVocab<'_>, piece: &mut Vec<u8>) -> Option<Seq> {
    match job {
        Job::Generate { req, tx } => {
            if tx.is_closed() {
                return None;
            }
            let mut text = TextStream::new(req.stop.clone());
            // Replay what an earlier worker already sent, so held-back text and stop sequences
            // spanning the resume point come out as in one run.
            for &t in &req.resume {
                let lt = LlamaToken(t as i32);
                if !vocab.is_eog(lt) {
                    piece.clear();
                    vocab.token_to_piece_into(lt, piece, false, None);
                    let _ = text.push(piece);
                }
            }
            let mut feed = req.prompt.clone();
            feed.extend_from_slice(&req.resume);
            // The last prompt token and any resumed tokens go through output passes, exactly
            // as they did (or would have) when generated.
            let prefill_end = req.prompt.len().saturating_sub(1);
            let generated = req.resume.clone();
            let resumed = generated.len();
            Some(Seq {
                id,
                feed,
                kv: 0,
                prefill_end,
                cacheable: true,
                work: Work::Gen(Box::new(GenState {
                    req,
                    tx,
                    generated,
                    resumed,
                    text,
                    sampler: Sampler::new(),
                })),
            })
        }
        Job::Score { req, sink, done } => {
            if done.is_closed() {
                return None;
            }
            Some(Seq {
                id,
                prefill_end: req.from.min(req.tokens.len()),
                feed: req.tokens,
                kv: 0,
                cacheable: true,
                work: Work::Score(ScoreState {
                    sink,
                    done: Some(done),
                }),
            })
        }
    }
}

/// The engine thread's state between steps.
struct Loop<'m> {
    vocab: LlamaVocab<'m>,
    n_embd: usize,
    seqs: Vec<Seq>,
    free_ids: Vec<i32>,
    closed: bool,
    piece: Vec<u8>,
    embeddings_on: bool,
    last_prefill: i32,
    rotate: usize,
    bias_scratch: Vec<f32>,
    cache: PrefixCache,
    /// Threads the context decodes with now.
    threads: u32,
}

fn run_engine(
    model: &LlamaModel,
    cfg: &LlamaConfig,
    shared: &Shared,
    jobs: &Receiver<Job>,
    ready: &SyncSender<Result<(), LoadError>>,
) {
    let Some((mut ctx, n_batch)) = open_context(model, cfg, ready) else {
        return;
    };
    let mut batch = LlamaBatch::new(n_batch, cfg.slots as i32);
    let mut l = Loop {
        vocab: model.vocab(),
        n_embd: model.n_embd().max(0) as usize,
        seqs: Vec::with_capacity(cfg.slots as usize),
        free_ids: (0..cfg.slots as i32).rev().collect(),
        closed: false,
        piece: Vec::with_capacity(64),
        embeddings_on: false,
        last_prefill: -1,
        rotate: 0,
        bias_scratch: Vec::new(),
        cache: PrefixCache::new(cfg.slots as usize, cfg.prefix_cache, cfg.prefix_cache_bytes),
        threads: cfg.threads,
    };
    loop {
        l.admit(&mut ctx, jobs, shared);
        if l.seqs.is_empty() {
            if l.closed {
                return;
            }
            continue;
        }
        // Cancel sequences nobody listens to.
        let Loop {
            seqs,
            free_ids,
            cache,
            ..
        } = &mut l;
        seqs.retain(|s| {
            if s.closed() {
                cache.retire(&mut ctx, s);
                free_ids.push(s.id);
                false
            } else {
                true
            }
        });
        cache.publish(shared);
        shared.busy.store(l.seqs.len() as u32, Ordering::SeqCst);
        if l.seqs.is_empty() {
            continue;
        }
        let threads = shared.threads.load(Ordering::Relaxed).max(1);
        if threads != l.threads {
            ctx.set_n_threads(threads as i32, threads as i32);
            l.threads = threads;
        }
        l.step(&mut ctx, &mut batch);
        // What finished sequences left is seen before the engine waits for the next job.
        l.cache.publish(shared);
        shared.busy.store(l.seqs.len() as u32, Ordering::SeqCst);
    }
}

impl Loop<'_> {
    /// Takes queued jobs into free slots (waiting for one when nothing runs): each into the
    /// free slot whose cached prefix it reuses most (else the least recently used).
    fn admit(&mut self, ctx: &mut LlamaContext<'_>, jobs: &Receiver<Job>, shared: &Shared) {
        while !self.free_ids.is_empty() && !self.closed {
            let next = if self.seqs.is_empty() {
                jobs.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                jobs.try_recv()
            };
            match next {
                Ok(job) => {
                    shared.queued.fetch_sub(1, Ordering::SeqCst);
                    let (tokens, prefill_end) = job.prefix();
                    let choice = self.cache.choose(&self.free_ids, tokens, prefill_end);
                    let id = self.free_ids.swap_remove(choice.k);
                    let reuse = self.cache.take(ctx, id, choice, prefill_end);
                    match admit(job, id, &self.vocab, &mut self.piece) {
                        Some(mut seq) => {
                            seq.kv = reuse;
                            self.seqs.push(seq);
                            shared.busy.store(self.seqs.len() as u32, Ordering::SeqCst);
                        }
                        None => self.free_ids.push(id),
                    }
                    self.cache.publish(shared);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Plans one step ([`plan`]), decodes its passes and hands out what they computed.
    fn step(&mut self, ctx: &mut LlamaContext<'_>, batch: &mut LlamaBatch<'_>) {
        self.seqs.sort_unstable_by_key(|s| s.id);
        let view: Vec<SeqPlan> = self.seqs.iter().map(Seq::plan).collect();
        let (passes, prefilled) = plan(&view, self.last_prefill, self.rotate);
        if let Some(id) = prefilled {
            self.last_prefill = id;
        }
        self.rotate = self.rotate.wrapping_add(1);
        // A pass that fails is decoded again one sequence at a time, so that a failure fails
        // only the sequence that causes it (an output row's numbers do not depend on the rest
        // of the pass, so splitting changes none of them).
        let mut finished: Vec<i32> = Vec::new();
        let mut passes: VecDeque<Pass> = passes.into();
        while let Some(pass) = passes.pop_front() {
            if pass.slots.is_empty()
                || pass
                    .slots
                    .iter()
                    .all(|sl| finished.contains(&self.seqs[sl.seq].id))
            {
                continue;
            }
            if pass.hidden != self.embeddings_on {
                ctx.set_embeddings(pass.hidden);
                self.embeddings_on = pass.hidden;
            }
            let decoded = if add_all(batch, &self.seqs, &pass.slots) {
                ctx.decode(batch).map_err(|e| e.to_string())
            } else {
                Err("batch overflow".into())
            };
            match decoded {
                Ok(()) => {
                    for (bi, sl) in pass.slots.iter().enumerate() {
                        self.read_back(ctx, bi as i32, *sl, &mut finished);
                    }
                }
                Err(e) => self.isolate(ctx, pass, e, &mut passes, &mut finished),
            }
        }
        if !finished.is_empty() {
            let Loop {
                seqs,
                free_ids,
                cache,
                ..
            } = self;
            seqs.retain(|s| {
                if finished.contains(&s.id) {
                    cache.retire(ctx, s);
                    free_ids.push(s.id);
                    false
                } else {
                    true
                }
            });
        }
    }

    /// After a failed pass: its positions leave the cache; a single sequence's pass fails that
    /// sequence, a shared one is queued again as one pass per sequence.
    fn isolate(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        pass: Pass,
        e: String,
        passes: &mut VecDeque<Pass>,
        finished: &mut Vec<i32>,
    ) {
        let mut owners: Vec<usize> = pass.slots.iter().map(|sl| sl.seq).collect();
        owners.dedup();
        for &i in &owners {
            let from = pass
                .slots
                .iter()
                .filter(|sl| sl.seq == i)
                .map(|sl| sl.pos)
                .min();
            let _ =
                ctx.clear_kv_cache_seq(Some(self.seqs[i].id as u32), from.map(|p| p as u32), None);
            self.seqs[i].cacheable = false;
        }
        if let [only] = owners[..] {
            let s = &mut self.seqs[only];
            s.fail(SubmitError::Decode(e).to_string());
            finished.push(s.id);
            return;
        }
        for (k, &i) in owners.iter().enumerate() {
            let alone: Vec<Slot> = pass
                .slots
                .iter()
                .filter(|sl| sl.seq == i)
                .copied()
                .collect();
            let wants = alone
                .iter()
                .any(|sl| sl.output && self.seqs[i].wants_hidden());
            passes.insert(
                k,
                Pass {
                    slots: alone,
                    hidden: pass.hidden && wants,
                },
            );
        }
    }

    /// Hands out the row `bi` of the last decode, which belongs to `sl`.
    fn read_back(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        bi: i32,
        sl: Slot,
        finished: &mut Vec<i32>,
    ) {
        let n_embd = self.n_embd;
        let s = &mut self.seqs[sl.seq];
        s.kv = s.kv.max(sl.pos + 1);
        if !sl.output || finished.contains(&s.id) {
            return;
        }
        let hidden_row = |ctx: &LlamaContext<'_>| {
            ctx.embeddings_ith(bi)
                .ok()
                .map(|h| h[..n_embd.min(h.len())].to_vec())
        };
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
                let ev = TokenEvent {
                    id: g.generated[index],
                    index: index as u32,
                    text: String::new(),
                    hidden: hidden_row(ctx),
                    logits: None,
                };
                if g.tx.try_send(Event::Replayed(ev)).is_err() {
                    finished.push(s.id);
                }
            }
            Work::Gen(g) => {
                let hidden = if g.req.capture.hidden {
                    hidden_row(ctx)
                } else {
                    None
                };
                let logits = ctx.get_logits_ith(bi);
                let done = sample(
                    g,
                    logits,
                    hidden,
                    &self.vocab,
                    &mut self.piece,
                    &mut self.bias_scratch,
                );
                if done {
                    finished.push(s.id);
                }
            }
        }
    }
}

/// Samples a generation's next token from `logits` and sends its event (and `Done` when it
/// ends). Returns whether the generation is over.
fn sample(
    g: &mut GenState,
    logits: &[f32],
    hidden: Option<Vec<f32>>,
    vocab: &LlamaVocab<'_>,
    piece: &mut Vec<u8>,
    bias_scratch: &mut Vec<f32>,
) -> bool {
    let position = g.generated.len() as u64;
    let biased = agora_sampling::with_bias(logits, &g.req.logit_bias, bias_scratch);
    let Some(token) = g.sampler.sample(biased, &g.req.params, position) else {
        let _ =
            g.tx.try_send(Event::Error("the model produced no finite logit".into()));
        return true;
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
        vocab.token_to_piece_into(lt, piece, false, None);
        match g.text.push(piece) {
            Step::Text(t) => t,
            Step::Stop(t) => {
                stop_hit = true;
                t
            }
        }
    };
    let ev = Event::Token(TokenEvent {
        id: token,
        index: g.generated.len() as u32 - 1,
        text,
        hidden,
        logits: logits_out,
    });
    if g.tx.try_send(ev).is_err() {
        return true;
    }
    let reason = if eog || stop_hit {
        FinishReason::Stop
    } else if g.generated.len() as u32 >= g.req.max_tokens {
        FinishReason::Length
    } else {
        return false;
    };
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
    true
}

impl Job {
    /// The tokens a job prefills (its prompt, or what a scoring pass feeds) and where its
    /// prefill ends.
    fn prefix(&self) -> (&[u32], usize) {
        match self {
            Job::Generate { req, .. } => (&req.prompt, req.prompt.len().saturating_sub(1)),
            Job::Score { req, .. } => (&req.tokens, req.from.min(req.tokens.len())),
        }
    }
}

/// A model's tokenizer alone: its vocabulary loaded without the weights (milliseconds, a few
/// MB), for work that needs the model's tokens but no computation — the trace indexes of
/// datasets. Tokenizing is safe from several threads at once.
pub struct Tokenizer {
    model: LlamaModel,
    n_vocab: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.n_vocab)
            .finish()
    }
}

impl Tokenizer {
    /// The vocabulary of the GGUF at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, LoadError> {
        let backend = backend()?;
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|source| {
            LoadError::Model {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let n_vocab = u32::try_from(model.vocab().n_tokens()).unwrap_or(0);
        Ok(Tokenizer { model, n_vocab })
    }

    /// Tokens in the vocabulary.
    pub fn n_vocab(&self) -> u32 {
        self.n_vocab
    }

    /// The tokens of `text` as plain text: no BOS, special tokens' names not parsed.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    /// The bytes `token` stands for in plain text (empty for special tokens).
    pub fn piece(&self, token: u32) -> Vec<u8> {
        let Ok(t) = i32::try_from(token) else {
            return Vec::new();
        };
        if token >= self.n_vocab {
            return Vec::new();
        }
        self.model
            .vocab()
            .token_to_piece(LlamaToken(t), false, None)
    }
}

#[cfg(test)]
mod schedule_tests {
    use std::collections::BTreeMap;

    use super::*;

    fn generating(id: i32, kv: usize, prompt: usize, resumed: usize, hidden: bool) -> SeqPlan {
        SeqPlan {
            id,
            kv,
            prefill_end: prompt - 1,
            feed_len: prompt + resumed,
            kind: Kind::Gen {
                hidden,
                ready: kv >= prompt + resumed,
            },
        }
    }

    fn score(id: i32, kv: usize, from: usize, len: usize) -> SeqPlan {
        SeqPlan {
            id,
            kv,
            prefill_end: from,
            feed_len: len,
            kind: Kind::Score,
        }
    }

    /// Each pass's sequences (by id).
    fn owners(p: &Pass, seqs: &[SeqPlan]) -> Vec<i32> {
        let mut v: Vec<i32> = p.slots.iter().map(|s| seqs[s.seq].id).collect();
        v.dedup();
        v
    }

    #[test]
    fn a_prompt_is_prefilled_alone_in_aligned_chunks() {
        // Two prompts waiting, one generation decoding.
        let seqs = [
            generating(0, 700, 1300, 0, true),
            generating(1, 0, 40, 0, false),
            generating(2, 90, 50, 0, false),
        ];
        let (passes, prefilled) = plan(&seqs, -1, 0);
        // The prefill pass holds one sequence's tokens only, from its cache up to the next
        // multiple of PREFILL_CHUNK (sequence 0: 700..768), and reads nothing back.
        let p = &passes[0];
        assert_eq!(owners(p, &seqs), vec![0]);
        assert_eq!(p.slots.first().map(|s| s.pos), Some(700));
        assert_eq!(
            p.slots.last().map(|s| s.pos),
            Some((700 / PREFILL_CHUNK + 1) * PREFILL_CHUNK - 1)
        );
        assert!(p.slots.iter().all(|s| !s.output) && !p.hidden);
        assert_eq!(prefilled, Some(0));
        // The output pass has only the decoding sequence, not a prompt being prefilled.
        assert_eq!(owners(&passes[1], &seqs), vec![2]);
        // Turns: next step, the other prompt.
        let (passes, prefilled) = plan(&seqs, 0, 1);
        assert_eq!(owners(&passes[0], &seqs), vec![1]);
        assert_eq!(passes[0].slots.len(), 39);
        assert_eq!(prefilled, Some(1));
        // And back to the first.
        let (_, prefilled) = plan(&seqs, 1, 2);
        assert_eq!(prefilled, Some(0));
    }

    #[test]
    fn output_passes_never_exceed_48_rows() {
        // 8 generations each resuming 30 tokens (hidden states on: every row read), and a
        // scoring pass of 500 rows: 8 × 31 + 500 rows would be wanted.
        let mut seqs: Vec<SeqPlan> = (0..8).map(|i| generating(i, 9, 10, 30, true)).collect();
        seqs.push(score(8, 0, 0, 500));
        for rotate in 0..20 {
            let (passes, _) = plan(&seqs, -1, rotate);
            assert_eq!(passes.len(), 1, "no prompt to prefill: one output pass");
            let p = &passes[0];
            assert!(p.slots.len() <= OUTPUT_ROWS, "{} rows", p.slots.len());
            assert_eq!(p.slots.len(), OUTPUT_ROWS, "the budget is used");
            // Rows are in (id, position) order, positions consecutive per sequence from its
            // cache.
            let mut by_seq: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for s in &p.slots {
                by_seq.entry(s.seq).or_default().push(s.pos);
            }
            for (i, pos) in by_seq {
                assert_eq!(pos[0], seqs[i].kv);
                assert!(pos.windows(2).all(|w| w[1] == w[0] + 1));
            }
        }
    }

    #[test]
    fn rows_read_back_are_the_ones_sampled_or_captured() {
        // No hidden states: of the last prompt token and resumed tokens, only the last row is
        // read (it is sampled from); decoding sequences have one row each.
        let seqs = [
            generating(0, 9, 10, 3, false),
            generating(1, 20, 10, 0, false),
        ];
        let (passes, _) = plan(&seqs, -1, 0);
        let p = &passes[0];
        let read: Vec<(i32, usize)> = p
            .slots
            .iter()
            .filter(|s| s.output)
            .map(|s| (seqs[s.seq].id, s.pos))
            .collect();
        assert_eq!(read, vec![(0, 12), (1, 20)]);
        assert!(!p.hidden);
        // With hidden states every resumed row is read, and the pass asks for them.
        let seqs = [generating(0, 9, 10, 3, true)];
        let (passes, _) = plan(&seqs, -1, 0);
        assert!(passes[0].slots.iter().all(|s| s.output) && passes[0].hidden);
        // A generation with nothing to feed yet (waiting for its first sample) gets no row.
        let idle = SeqPlan {
            kind: Kind::Gen {
                hidden: false,
                ready: false,
            },
            ..generating(0, 10, 10, 0, false)
        };
        assert!(plan(&[idle], -1, 0).0.is_empty());
    }
}
