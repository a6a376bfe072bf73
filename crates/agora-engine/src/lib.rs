//! Inference for Agora, as the rest of the system sees it: the [`Engine`] trait with its request
//! and event types, the one validation path for requests ([`check_request`]), chat templates,
//! streamed text with stop sequences, and [`EchoEngine`] (a test-only stand-in, named as such).
//!
//! No llama.cpp here: the llama.cpp backend is `agora-llama`, the model store `agora-models`, so
//! the HTTP API, the verifier and the fuzz targets build without compiling C++. Sampling is not
//! llama.cpp's either: every token is chosen in Rust by [`agora_sampling`] from the logits, so
//! that anyone holding the logits can recompute the choice.

pub mod conversation;
pub mod echo;
pub mod selfcheck;
pub mod template;
pub mod text;

pub use agora_sampling::SamplingParams;
pub use agora_verify::answer::{FinishReason, JobSpec, LogRef, PromptSpec};
pub use echo::EchoEngine;
pub use template::{ChatMessage, Segment};

use tokio::sync::mpsc;

/// What a loaded model is.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Name used in the API's `model` field.
    pub name: String,
    /// Lowercase hex sha256 of the GGUF file.
    pub sha256: String,
    /// Context window of one request (prompt + completion), in tokens.
    pub n_ctx: u32,
    pub n_vocab: u32,
    /// Width of the final-norm hidden state.
    pub n_embd: u32,
    /// Sequence slots decoded together.
    pub slots: u32,
    /// Requests that may wait for a slot before new ones are refused.
    pub queue: u32,
    /// Size of the KV cache for all slots, in bytes (bf16 keys and values).
    pub kv_bytes: u64,
    /// Length of the longest token's text: a text of `n` bytes has at least
    /// `n / max_token_bytes` tokens.
    pub max_token_bytes: u32,
    /// Why this engine's answers cannot be proven, when its [`selfcheck`] found a token's
    /// numbers depend on how it was computed (alone, batched, rescored); `None` when they do
    /// not, or when no check ran. Workers sign such answers' receipts as unverifiable.
    pub unverifiable: Option<String>,
}

/// Refuses a prompt of `bytes` bytes that cannot fit the context window whatever its tokens
/// (checked before tokenizing, so a megabyte of text costs nothing). Twice the densest
/// tokenization is allowed, for tokenizers that normalise text.
pub fn check_prompt_bytes(bytes: usize, info: &ModelInfo) -> Result<(), PromptError> {
    let max_bytes = (info.n_ctx as usize)
        .saturating_mul(info.max_token_bytes.max(1) as usize)
        .saturating_mul(2);
    if bytes > max_bytes {
        return Err(PromptError::TooLarge {
            bytes,
            max_bytes,
            ctx: info.n_ctx,
        });
    }
    Ok(())
}

/// Per-token data the engine hands out on request. Asking for nothing costs nothing.
///
/// Token `i`'s data is that of the step that chose it: the final-norm hidden state and the
/// logits at position `prompt_len - 1 + i` (so token 0's come from the last prompt token).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// The final-norm hidden state of every generated token's step.
    pub hidden: bool,
    /// The logits of every generated token's step (n_vocab floats each: large).
    pub logits: bool,
}

/// One generation to run.
#[derive(Clone, Debug)]
pub struct GenRequest {
    /// The prompt, tokenized with [`Engine::tokenize`].
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Upper bound on generated tokens; prompt + max_tokens must fit in the context.
    pub max_tokens: u32,
    /// Text sequences that end generation; they are not part of the output.
    pub stop: Vec<String>,
    /// Keep generating after an end-of-generation token (benchmarks only).
    pub ignore_eos: bool,
    pub capture: Capture,
    /// Tokens an earlier worker already generated for this request (failover): they are
    /// prefilled after the prompt and generation continues at position `resume.len()`, so the
    /// result is the one an uninterrupted run would have given. They count towards
    /// `max_tokens` and are not sent again.
    pub resume: Vec<u32>,
    /// Added to the named tokens' logits before sampling (see [`JobSpec::logit_bias`]).
    pub logit_bias: std::collections::BTreeMap<u32, f32>,
    /// The [`conversation::key`] of the chat messages the prompt was made of, if any: an engine
    /// that keeps the prompt's states after the generation lists it in
    /// [`Engine::held_conversations`].
    pub conversation: Option<u64>,
}

/// One generated token.
#[derive(Clone, Debug)]
pub struct TokenEvent {
    pub id: u32,
    /// Index of this token among the generated ones (the sampler's position).
    pub index: u32,
    /// Text that became final with this token (may be empty: held back or a special token).
    pub text: String,
    pub hidden: Option<Vec<f32>>,
    pub logits: Option<Vec<f32>>,
}

/// The end of a generation.
#[derive(Clone, Debug)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Text released only at the end (held back as a possible stop-sequence prefix).
    pub tail: String,
    /// Every generated token (resumed ones included), in order.
    pub tokens: Vec<u32>,
    /// The worker's signed receipt and proof, added above the engine (never by it).
    pub attestation: Option<Box<Attestation>>,
}

/// Length of the salt of a receipt's request digest, in bytes.
pub const SALT_LEN: usize = 16;

/// What makes an answer checkable: the worker's signed receipt, its activation proof, and what
/// the receipt's request digest covers. Typed: whoever decodes one from outside (a peer's
/// frame) has parsed every part, and a part that does not parse is a decoding error.
///
/// Serialized (peer to peer) with `receipt` as the envelope's JSON in a string, `proof` as its
/// byte format in standard base64 and `salt` as lowercase hex; deserializing parses them
/// (bounded: [`agora_core::Envelope::from_json`], [`agora_verify::Proof::decode`]), without
/// verifying the receipt's signature.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attestation {
    /// The `receipt` statement: a DSSE envelope signed by the worker.
    #[serde(with = "wire::envelope")]
    pub receipt: agora_core::Envelope,
    /// The activation proof.
    #[serde(with = "wire::proof")]
    pub proof: agora_verify::Proof,
    /// The salt of the receipt's request digest.
    #[serde(with = "wire::salt")]
    pub salt: [u8; SALT_LEN],
    /// The request the receipt's digest covers, exactly.
    pub request: JobSpec,
    /// Where the receipt was logged, once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogRef>,
}

impl Attestation {
    /// The proof's byte format in standard base64 (as clients and transcripts carry it).
    pub fn proof_base64(&self) -> String {
        wire::base64_encode(&self.proof.encode())
    }

    /// The salt in lowercase hex (as clients and transcripts carry it).
    pub fn salt_hex(&self) -> String {
        hex::encode(self.salt)
    }
}

/// The string forms of an [`Attestation`]'s parts.
mod wire {
    use base64::Engine as _;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn base64_encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// The envelope's JSON, in a string.
    pub(crate) mod envelope {
        use super::*;
        use agora_core::Envelope;

        pub(crate) fn serialize<S: Serializer>(e: &Envelope, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&e.to_json())
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Envelope, D::Error> {
            let json = String::deserialize(d)?;
            Envelope::from_json(json.as_bytes())
                .map_err(|e| D::Error::custom(format_args!("the receipt: {e}")))
        }
    }

    /// The proof's byte format, standard base64.
    pub(crate) mod proof {
        use super::*;
        use agora_verify::Proof;

        pub(crate) fn serialize<S: Serializer>(p: &Proof, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&base64_encode(&p.encode()))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Proof, D::Error> {
            let b64 = String::deserialize(d)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| D::Error::custom("the proof is not base64"))?;
            Proof::decode(&bytes).map_err(|e| D::Error::custom(format_args!("the proof: {e}")))
        }
    }

    /// The salt, hex.
    pub(crate) mod salt {
        use super::*;
        use crate::SALT_LEN;

        pub(crate) fn serialize<S: Serializer>(
            salt: &[u8; SALT_LEN],
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.serialize_str(&hex::encode(salt))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<[u8; SALT_LEN], D::Error> {
            let h = String::deserialize(d)?;
            let mut salt = [0u8; SALT_LEN];
            hex::decode_to_slice(h.as_bytes(), &mut salt).map_err(|_| {
                D::Error::custom(format_args!("the salt is not {} hex digits", 2 * SALT_LEN))
            })?;
            Ok(salt)
        }
    }
}

/// What a running generation reports, in order: tokens, then exactly one `Done` or `Error`.
#[derive(Clone, Debug)]
pub enum Event {
    Token(TokenEvent),
    /// A token an earlier worker generated, fed again on resuming (failover). Carries its
    /// captured data so that a proof can cover the whole output; never shown to clients.
    Replayed(TokenEvent),
    Done(Finish),
    Error(String),
    /// Routing information added by a gateway (never by an engine): the worker (peer id) now
    /// generating this request. Sent once at the start and again after each failover.
    Worker(String),
}

/// A submitted generation. Dropping it cancels the generation and frees its slot.
#[derive(Debug)]
pub struct Generation {
    pub events: mpsc::Receiver<Event>,
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("all {slots} slots are busy and the queue of {queue} is full")]
    Overloaded { slots: u32, queue: u32 },
    #[error("the prompt has {prompt} tokens but the context window is {ctx} tokens")]
    PromptTooLong { prompt: u32, ctx: u32 },
    #[error(
        "the prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the context window of {ctx} tokens"
    )]
    TooManyTokens {
        prompt: u32,
        max_tokens: u32,
        ctx: u32,
    },
    #[error("token {token} is not in the vocabulary of {n_vocab} tokens")]
    InvalidToken { token: u32, n_vocab: u32 },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the logit bias of token {token} must be a number between -100 and 100")]
    InvalidBias { token: u32 },
    #[error(
        "{resumed} tokens were already generated and max_tokens is {max_tokens}: nothing left to resume"
    )]
    NothingToResume { resumed: u32, max_tokens: u32 },
    #[error("the engine has stopped")]
    Stopped,
    #[error("llama.cpp failed to decode this sequence: {0}")]
    Decode(String),
}

/// Errors from preparing a prompt.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    /// Refused before tokenizing: even at the longest token of the vocabulary, the text has
    /// more tokens than the context window holds.
    #[error(
        "the prompt is {bytes} bytes: more than the {ctx}-token context window can hold (at most {max_bytes} bytes with this model's vocabulary)"
    )]
    TooLarge {
        bytes: usize,
        max_bytes: usize,
        ctx: u32,
    },
}

/// A scoring pass: prefill `tokens` and read back every position from `from` on.
#[derive(Clone, Debug)]
pub struct ScoreRequest {
    pub tokens: Vec<u32>,
    pub from: usize,
}

/// Receives a scoring pass's rows, in order of position, on the engine thread (keep it quick).
pub trait ScoreSink: Send {
    /// `hidden`: the final-norm hidden state at `pos`; `logits`: the logits there, which
    /// predict the token at `pos + 1`.
    fn row(&mut self, pos: usize, hidden: &[f32], logits: &[f32]);
}

/// Resolves when a scoring pass has handed out its last row (or failed).
#[derive(Debug)]
pub struct ScoreHandle {
    pub done: tokio::sync::oneshot::Receiver<Result<(), String>>,
}

/// Busy-ness, for routing and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub slots: u32,
    pub slots_busy: u32,
    pub queued: u32,
    /// The prompt-prefix cache, for engines that have one.
    pub prefix: PrefixStats,
    /// CPU threads decoding now (0 for engines without).
    pub threads: u32,
}

/// What a prompt-prefix cache did since the engine started, and holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prompts (and scoring passes) admitted.
    pub lookups: u64,
    /// Of them, those that reused a cached prefix.
    pub hits: u64,
    /// Prompt tokens admitted.
    pub prompt_tokens: u64,
    /// Of them, those whose state was reused instead of computed.
    pub reused_tokens: u64,
    /// Tokens whose state the cache holds now in its slots.
    pub cached_tokens: u64,
    /// Tokens, and bytes, of states copied out of slots into host memory, held now.
    pub host_tokens: u64,
    pub host_bytes: u64,
    /// Prompts whose prefix was copied back from host memory, since start.
    pub restored: u64,
}

/// A model that generates text. Implementations are shared between request handlers.
pub trait Engine: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;
    /// Tokenizes a prompt: chat messages through the model's chat template, the template's
    /// special-token markers as special tokens and every message's content as plain text (a
    /// client cannot fake a turn); raw text (`/v1/completions`, the client's own prompt) with
    /// special tokens parsed. Adds BOS where the model wants it. Refuses, before tokenizing, a
    /// text too long for the context window. CPU-bound: call it off async threads.
    fn tokenize(&self, prompt: &PromptSpec) -> Result<Vec<u32>, PromptError>;
    /// The bytes of one token, or `None` when it is not in the vocabulary.
    fn token_piece(&self, token: u32) -> Option<Vec<u8>>;
    /// Whether `token` ends a generation (end-of-turn, end-of-text).
    fn is_eog(&self, token: u32) -> bool;
    /// Queues a generation, or refuses it at once.
    fn submit(&self, req: GenRequest) -> Result<Generation, SubmitError>;
    /// Queues a scoring pass: one prefill over `req.tokens` that hands `sink` the hidden state
    /// and logits of every position from `req.from` on (what a verifier recomputes).
    fn score(
        &self,
        req: ScoreRequest,
        sink: Box<dyn ScoreSink>,
    ) -> Result<ScoreHandle, SubmitError>;
    fn load(&self) -> Load;
    /// The [`conversation::key`]s of the chat prompts whose token states the engine holds now
    /// (a prefix cache), so that a conversation's next turn can be sent where its history is.
    fn held_conversations(&self) -> Vec<u64> {
        Vec::new()
    }
}

/// Checks a request against the context window and the vocabulary (shared by every engine):
/// the one validation path for prompts, resumed tokens and logit biases, whoever sent them.
pub fn check_request(req: &GenRequest, n_ctx: u32, n_vocab: u32) -> Result<(), SubmitError> {
    check_fits(req, n_ctx)?;
    let resumed = u32::try_from(req.resume.len()).unwrap_or(u32::MAX);
    if resumed > 0 && resumed >= req.max_tokens {
        return Err(SubmitError::NothingToResume {
            resumed,
            max_tokens: req.max_tokens,
        });
    }
    check_vocab(&req.prompt, n_vocab)?;
    check_vocab(&req.resume, n_vocab)?;
    check_vocab(req.logit_bias.keys(), n_vocab)?;
    if let Some((&token, _)) = req
        .logit_bias
        .iter()
        .find(|(_, b)| !(-100.0..=100.0).contains(*b))
    {
        return Err(SubmitError::InvalidBias { token });
    }
    Ok(())
}

/// Every token must be in the vocabulary.
pub fn check_vocab<'a>(
    tokens: impl IntoIterator<Item = &'a u32>,
    n_vocab: u32,
) -> Result<(), SubmitError> {
    match tokens.into_iter().find(|&&t| t >= n_vocab) {
        Some(&token) => Err(SubmitError::InvalidToken { token, n_vocab }),
        None => Ok(()),
    }
}

/// Checks a request against the context window.
pub fn check_fits(req: &GenRequest, n_ctx: u32) -> Result<(), SubmitError> {
    let prompt = u32::try_from(req.prompt.len()).unwrap_or(u32::MAX);
    if prompt == 0 {
        return Err(SubmitError::EmptyPrompt);
    }
    if prompt >= n_ctx {
        return Err(SubmitError::PromptTooLong { prompt, ctx: n_ctx });
    }
    if prompt.saturating_add(req.max_tokens) > n_ctx {
        return Err(SubmitError::TooManyTokens {
            prompt,
            max_tokens: req.max_tokens,
            ctx: n_ctx,
        });
    }
    Ok(())
}

/// Why a [`JobSpec`] cannot run on an engine.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// Formats and tokenizes `job` for `engine`, filling in defaults and checking it fits.
pub fn prepare(
    engine: &dyn Engine,
    job: &JobSpec,
    capture: Capture,
    resume: Vec<u32>,
) -> Result<GenRequest, PrepareError> {
    let prompt = engine.tokenize(&job.prompt)?;
    let n_ctx = engine.info().n_ctx;
    let room = n_ctx.saturating_sub(u32::try_from(prompt.len()).unwrap_or(u32::MAX));
    let req = GenRequest {
        prompt,
        params: job.params,
        max_tokens: job.max_tokens.unwrap_or(room),
        stop: job.stop.clone(),
        ignore_eos: job.ignore_eos,
        capture,
        resume,
        logit_bias: job.logit_bias.clone(),
        conversation: conversation::of_prompt(&job.prompt),
    };
    check_request(&req, n_ctx, engine.info().n_vocab)?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn attestation() -> Attestation {
        let id = agora_core::Identity::from_seed(&[7; 32]);
        let mut b = agora_verify::ProofBuilder::new(8, 2, 2);
        for i in 0..3 {
            b.push(&[i as f32, 1.0, -2.0, 0.5, 0.0, 3.0, 0.25, -1.0]);
        }
        Attestation {
            receipt: agora_core::Envelope::sign("application/x", b"{\"a\":1}".to_vec(), &id),
            proof: b.finish().unwrap(),
            salt: [0xab; SALT_LEN],
            request: JobSpec {
                prompt: PromptSpec::Text("hi".into()),
                params: SamplingParams::default(),
                max_tokens: Some(3),
                stop: vec![],
                ignore_eos: false,
                logit_bias: Default::default(),
                fingerprint: false,
            },
            log: None,
        }
    }

    #[test]
    fn attestation_round_trips_as_strings() {
        let a = attestation();
        let v = serde_json::to_value(&a).unwrap();
        // The receipt's JSON in a string, the proof base64, the salt hex: the same wire as
        // when they were strings.
        assert_eq!(v["receipt"], serde_json::json!(a.receipt.to_json()));
        assert_eq!(v["proof"], serde_json::json!(a.proof_base64()));
        assert_eq!(v["salt"], serde_json::json!("ab".repeat(SALT_LEN)));
        assert_eq!(a.salt_hex(), "ab".repeat(SALT_LEN));
        assert!(v.get("log").is_none());
        let back: Attestation = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn malformed_parts_are_decoding_errors() {
        let good = serde_json::to_value(attestation()).unwrap();
        for (field, bad, why) in [
            (
                "receipt",
                serde_json::json!("{}"),
                "the receipt: malformed DSSE envelope",
            ),
            ("receipt", serde_json::json!(7), "invalid type"),
            ("proof", serde_json::json!("%%%"), "the proof is not base64"),
            (
                "proof",
                serde_json::json!("QUdQRg=="),
                "the proof: the proof is 4 bytes",
            ),
            (
                "salt",
                serde_json::json!("abcd"),
                "the salt is not 32 hex digits",
            ),
            (
                "salt",
                serde_json::json!("zz".repeat(SALT_LEN)),
                "the salt is not 32 hex",
            ),
        ] {
            let mut v = good.clone();
            v[field] = bad;
            let e = serde_json::from_value::<Attestation>(v).unwrap_err();
            assert!(e.to_string().contains(why), "{field}: {e}");
        }
    }
}
