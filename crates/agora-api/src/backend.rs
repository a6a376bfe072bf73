//! What the HTTP layer generates with: a [`Backend`]. A node serving its own model uses
//! [`LocalBackend`]; a gateway routes to workers over the network with its own implementation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use agora_engine::{Capture, Engine, Event, JobSpec, Load, PrepareError, PromptError, SubmitError};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::error::ApiError;

/// A model as `GET /v1/models` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ModelCard {
    /// The name clients put in `model`.
    pub id: String,
    /// `sha256:<hex>` of the GGUF.
    pub digest: String,
    /// Context window per request.
    pub n_ctx: u32,
    /// Workers serving it (1 for a local model).
    pub workers: u32,
    /// KV cache of the local engine, in bytes (0 when not local).
    pub kv_bytes: u64,
}

/// A generation that has started.
#[derive(Debug)]
pub struct Started {
    /// The model's name as served.
    pub model: String,
    pub events: mpsc::Receiver<Event>,
}

/// A boxed future (the trait stays object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where generations run.
pub trait Backend: Send + Sync + 'static {
    /// Models that can be asked for.
    fn models(&self) -> Vec<ModelCard>;
    /// Starts `job` on `model` (a name or a `sha256:` digest).
    fn start(&self, model: String, job: JobSpec) -> BoxFuture<'_, Result<Started, ApiError>>;
    /// Local busy-ness for metrics (zeros for a pure gateway).
    fn load(&self) -> Load;
    /// This node and the peers it knows, for `GET /agora/v1/nodes` (empty for a node alone).
    fn nodes(&self) -> serde_json::Value {
        serde_json::json!({ "self": null, "peers": [] })
    }
}

/// Longest wait for a preparation slot before a request is refused with 429.
pub const PREPARE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs CPU-bound request preparation (chat template rendering and tokenization: a megabyte of
/// text takes a while) on tokio's blocking threads, so the async threads keep serving
/// `/health`, streams and accepts; and bounds how many run at once. A request beyond the bound
/// waits for a slot at most [`PREPARE_WAIT`], then is refused with 429 and `Retry-After`; the
/// waiters are bounded by the connection cap (each holds its parsed body meanwhile).
#[derive(Clone, Debug)]
pub struct PrepareLimiter {
    permits: Arc<Semaphore>,
    limit: usize,
    wait: std::time::Duration,
}

impl PrepareLimiter {
    /// At most `limit` preparations at once (at least 1).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            wait: PREPARE_WAIT,
        }
    }

    /// Waits at most `wait` for a slot (default [`PREPARE_WAIT`]).
    pub fn with_wait(mut self, wait: std::time::Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Two per core: enough to keep every core busy while some preparations wait on the
    /// engine's lock or the allocator, few enough that the blocking pool stays small.
    pub fn per_core() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(2 * cores)
    }

    /// How many may run at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Runs `f` on the blocking pool once one of the `limit` slots is free; a caller that
    /// waited its `wait` for one is refused (429). Waiters are bounded by the connection
    /// cap. The slot is held until `f` returns, even if the caller stops waiting (a client that
    /// goes away cannot make room for more work than the limit).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let refuse = || {
            ApiError::overloaded(
                format!(
                    "The node is preparing {} prompts already; retry shortly.",
                    self.limit
                ),
                1,
            )
        };
        let permit = tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| refuse())?
            .map_err(|_| refuse())?;
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            out
        })
        .await
        .map_err(|e| ApiError::internal(format!("Preparing the request failed: {e}")))
    }
}

/// Serves one local engine.
pub struct LocalBackend {
    engine: Arc<dyn Engine>,
    prepare: PrepareLimiter,
}

impl LocalBackend {
    /// With [`PrepareLimiter::per_core`].
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self::with_limiter(engine, PrepareLimiter::per_core())
    }

    pub fn with_limiter(engine: Arc<dyn Engine>, prepare: PrepareLimiter) -> Self {
        Self { engine, prepare }
    }

    /// Whether `model` names this engine's model (by name, `sha256:` digest or bare digest).
    pub fn serves(&self, model: &str) -> bool {
        let info = self.engine.info();
        model == info.name || model.strip_prefix("sha256:").unwrap_or(model) == info.sha256
    }
}

impl Backend for LocalBackend {
    fn models(&self) -> Vec<ModelCard> {
        let info = self.engine.info();
        vec![ModelCard {
            id: info.name.clone(),
            digest: format!("sha256:{}", info.sha256),
            n_ctx: info.n_ctx,
            workers: 1,
            kv_bytes: info.kv_bytes,
        }]
    }

    fn start(&self, model: String, job: JobSpec) -> BoxFuture<'_, Result<Started, ApiError>> {
        Box::pin(async move {
            if !self.serves(&model) {
                return Err(ApiError::unknown_model(&model));
            }
            let chat = matches!(job.prompt, agora_engine::PromptSpec::Chat(_));
            let engine = Arc::clone(&self.engine);
            // Template, tokens and the checks over them: CPU-bound, off the async threads.
            let generation = self
                .prepare
                .run(move || {
                    let req = agora_engine::prepare(
                        engine.as_ref(),
                        &job,
                        Capture::default(),
                        Vec::new(),
                    )
                    .map_err(|e| prepare_error(e, chat))?;
                    engine.submit(req).map_err(|e| submit_error(e, chat))
                })
                .await??;
            Ok(Started {
                model: self.engine.info().name.clone(),
                events: generation.events,
            })
        })
    }

    fn load(&self) -> Load {
        self.engine.load()
    }
}

/// Maps an engine refusal to the status and message OpenAI clients expect.
pub fn prepare_error(e: PrepareError, chat: bool) -> ApiError {
    match e {
        PrepareError::Prompt(e @ PromptError::TooLarge { .. }) => ApiError::invalid(
            e.to_string(),
            Some(if chat { "messages" } else { "prompt" }),
        )
        .with_code("context_length_exceeded"),
        PrepareError::Prompt(PromptError::Template(t)) => ApiError::invalid(
            t.to_string(),
            Some(if chat { "messages" } else { "prompt" }),
        ),
        PrepareError::Submit(s) => submit_error(s, chat),
    }
}

/// Maps a submission refusal to an API error.
pub fn submit_error(e: SubmitError, chat: bool) -> ApiError {
    let prompt_param = if chat { "messages" } else { "prompt" };
    match e {
        SubmitError::Overloaded { .. } => ApiError::overloaded(format!("The node is at capacity ({e}); retry shortly."), 1),
        SubmitError::PromptTooLong { prompt, ctx } => ApiError::invalid(
            format!("This model's maximum context length is {ctx} tokens, but the prompt is {prompt} tokens long."),
            Some(prompt_param),
        )
        .with_code("context_length_exceeded"),
        SubmitError::TooManyTokens { prompt, max_tokens, ctx } => ApiError::invalid(
            format!(
                "This model's maximum context length is {ctx} tokens, but {} tokens were requested ({prompt} in the prompt, {max_tokens} for the completion); reduce the prompt or max_tokens.",
                u64::from(prompt) + u64::from(max_tokens)
            ),
            Some("max_tokens"),
        )
        .with_code("context_length_exceeded"),
        SubmitError::EmptyPrompt => ApiError::invalid("The prompt is empty.", Some(prompt_param)),
        // Prompt tokens come from the tokenizer and resumed ones from workers: a token a client
        // can name out of the vocabulary is a logit_bias key.
        SubmitError::InvalidToken { .. } => ApiError::invalid(e.to_string(), Some("logit_bias")),
        SubmitError::NothingToResume { .. } => ApiError::invalid(e.to_string(), Some("max_tokens")),
        SubmitError::Stopped => ApiError::unavailable("The engine is shutting down.", 5),
        SubmitError::InvalidBias { .. } => ApiError::invalid(e.to_string(), Some("logit_bias")),
        SubmitError::Decode(_) => ApiError::internal(e.to_string()),
    }
}
