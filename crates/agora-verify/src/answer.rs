//! What a client asks and what a worker answers, and the check of one answer that needs no
//! model: the receipt's signature and that it covers exactly this request, output and proof.
//!
//! The request types travel from gateways to workers (`agora-engine` re-exports them); the
//! [`Transcript`] is what `agora chat --save` writes and `agora verify` reads. Both the CLI and
//! the dashboard's WebAssembly module (`agora-wasm`) check transcripts with [`Transcript::check`],
//! so there is one implementation of these checks.
#![allow(missing_docs)]

use agora_core::statement::Receipt;
use agora_core::{Envelope, Sha256, Statement};
use agora_sampling::SamplingParams;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-generation token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// A statement's place in a transparency log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRef {
    pub url: String,
    pub index: u64,
}

/// One chat message as the template sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A prompt as a client gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptSpec {
    /// Chat messages, formatted with the model's template.
    Chat(Vec<ChatMessage>),
    /// Raw text, tokenized as is.
    Text(String),
}

/// A generation as a client asks for it, before tokenization: what travels from a gateway to
/// whichever worker runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub prompt: PromptSpec,
    pub params: SamplingParams,
    /// `None`: as many as fit in the context window.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    #[serde(default)]
    pub ignore_eos: bool,
    /// OpenAI's `logit_bias`: added to the named tokens' logits before sampling (each in
    /// -100..=100). Part of what the receipt's request digest covers, so a verifier applies it
    /// too. Absent from the JSON when empty (digests of requests without it are unchanged).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub logit_bias: std::collections::BTreeMap<u32, f32>,
    /// The client asked for a fingerprint of the answer in its receipt (`"agora":
    /// {"provenance": "fingerprint"}`), so that edited copies can be found. Absent from the
    /// JSON when false (digests of requests without it are unchanged).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fingerprint: bool,
}

/// The version of the transcript format this build writes and reads.
pub const TRANSCRIPT_VERSION: u32 = 1;

/// One answer with what proves it (`agora chat --save`, `agora verify FILE`, validators).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcript {
    pub version: u32,
    /// The model's name as served.
    pub model: String,
    /// The request exactly as the receipt's digest covers it.
    pub request: JobSpec,
    /// Hex salt of the request digest.
    pub salt: String,
    pub output: Output,
    /// The receipt: a DSSE envelope signed by the worker.
    pub receipt: serde_json::Value,
    /// The activation proof, base64.
    pub proof: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogRef>,
}

/// What the model produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
}

/// Why a transcript is unusable, before any model is run.
#[derive(Debug, thiserror::Error)]
pub enum TranscriptError {
    #[error("not a transcript: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("unknown transcript version {0} (this build reads version {TRANSCRIPT_VERSION})")]
    Version(u32),
    #[error("the receipt is not a valid signed statement: {0}")]
    Receipt(#[source] agora_core::Error),
    #[error("the envelope holds a {0} statement, not a receipt")]
    NotAReceipt(String),
    #[error("the receipt is signed by {signer}, not by the worker it names ({worker})")]
    WrongSigner { signer: String, worker: String },
    #[error(
        "the {what} digest does not match the receipt: the transcript has {actual}, the receipt {expected}"
    )]
    Digest {
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("the receipt says {what} {expected}, the transcript {actual}")]
    Mismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("the proof is not base64")]
    ProofEncoding,
    #[error("the salt is not hex")]
    SaltEncoding,
}

/// A transcript whose signature and digests check out (the model has not been run yet).
#[derive(Debug, Clone)]
pub struct Checked {
    pub receipt: agora_core::statement::Receipt,
    /// SHA-256 of the receipt's DSSE payload (what verdicts name).
    pub receipt_digest: Sha256,
    pub proof_bytes: Vec<u8>,
}

impl Transcript {
    /// Parses untrusted bytes.
    pub fn parse(bytes: &[u8]) -> Result<Transcript, TranscriptError> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(TranscriptError::Malformed)?;
        if let Some(ver) = v.get("version").and_then(serde_json::Value::as_u64)
            && ver != u64::from(TRANSCRIPT_VERSION)
        {
            return Err(TranscriptError::Version(ver.min(u64::from(u32::MAX)) as u32));
        }
        serde_json::from_value(v).map_err(TranscriptError::Malformed)
    }

    /// Checks the receipt's signature and that every digest in it matches this transcript.
    pub fn check(&self) -> Result<Checked, TranscriptError> {
        let env_bytes = serde_json::to_vec(&self.receipt).map_err(TranscriptError::Malformed)?;
        let env = Envelope::from_json(&env_bytes).map_err(TranscriptError::Receipt)?;
        let receipt = open_receipt(&env)?;
        let proof_bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.proof)
            .map_err(|_| TranscriptError::ProofEncoding)?;
        let salt = hex::decode(&self.salt).map_err(|_| TranscriptError::SaltEncoding)?;
        let covered = Covered {
            request: &self.request,
            salt: &salt,
            tokens: &self.output.tokens,
            text: Some(&self.output.text),
            proof_bytes,
        };
        covered.check(receipt, &env)
    }
}

/// The receipt in `env`, whose signatures verify and include the worker it names.
pub fn open_receipt(env: &Envelope) -> Result<Receipt, TranscriptError> {
    let (signers, statement) = Statement::open(env).map_err(TranscriptError::Receipt)?;
    let Statement::Receipt(r) = statement else {
        return Err(TranscriptError::NotAReceipt(
            statement.kind().name().to_string(),
        ));
    };
    if !signers.contains(&r.worker) {
        return Err(TranscriptError::WrongSigner {
            signer: signers.first().map(|s| s.to_string()).unwrap_or_default(),
            worker: r.worker.to_string(),
        });
    }
    Ok(r)
}

/// What a receipt must cover.
pub struct Covered<'a> {
    /// The request as the worker ran it.
    pub request: &'a JobSpec,
    /// The request digest's salt.
    pub salt: &'a [u8],
    /// The output tokens.
    pub tokens: &'a [u32],
    /// The text shown for the tokens, when known (a transcript's).
    pub text: Option<&'a str>,
    /// The activation proof's bytes.
    pub proof_bytes: Vec<u8>,
}

impl Covered<'_> {
    /// Checks that `r` (opened from `env`) covers exactly this.
    pub fn check(self, r: Receipt, env: &Envelope) -> Result<Checked, TranscriptError> {
        let request_json = serde_json::to_vec(self.request).map_err(TranscriptError::Malformed)?;
        let digest = |what: &'static str,
                      expected: &Sha256,
                      actual: [u8; 32]|
         -> Result<(), TranscriptError> {
            if expected.0 == actual {
                Ok(())
            } else {
                Err(TranscriptError::Digest {
                    what,
                    expected: expected.to_string(),
                    actual: Sha256(actual).to_string(),
                })
            }
        };
        digest(
            "request",
            &r.request,
            crate::request_digest(self.salt, &request_json),
        )?;
        digest("output", &r.output, crate::output_digest(self.tokens))?;
        digest("proof", &r.proof, sha2_digest(&self.proof_bytes))?;
        // A receipt without a text digest (older, or an empty answer) is simply not findable
        // by its text; one with a digest must have this text's.
        if let (Some(text), Some(expected)) = (self.text, &r.fingerprint)
            && agora_core::text::Fingerprint::of(text).as_ref() != Some(expected)
        {
            return Err(TranscriptError::Digest {
                what: "text fingerprint",
                expected: expected.to_hex(),
                actual: agora_core::text::Fingerprint::of(text)
                    .map_or("none (too short a text)".to_string(), |f| f.to_hex()),
            });
        }
        if let (Some(text), Some(expected)) = (self.text, &r.text) {
            let actual = agora_core::text::digest(text).ok();
            if actual.as_ref() != Some(expected) {
                return Err(TranscriptError::Digest {
                    what: "text",
                    expected: expected.to_string(),
                    actual: actual.map_or("none (empty text)".to_string(), |d| d.to_string()),
                });
            }
        }
        if r.seed != self.request.params.seed {
            return Err(TranscriptError::Mismatch {
                what: "seed",
                expected: r.seed.to_string(),
                actual: self.request.params.seed.to_string(),
            });
        }
        if r.completion_tokens as usize != self.tokens.len() {
            return Err(TranscriptError::Mismatch {
                what: "completion tokens",
                expected: r.completion_tokens.to_string(),
                actual: self.tokens.len().to_string(),
            });
        }
        Ok(Checked {
            receipt: r,
            receipt_digest: Sha256(sha2_digest(&env.payload)),
            proof_bytes: self.proof_bytes,
        })
    }
}

fn sha2_digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
