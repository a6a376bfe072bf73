//! Checking an answer: the transcript's signature and digests, then one prefill over prompt and
//! output on the same model, row by row through `agora_verify::Checker`.

use std::sync::{Arc, Mutex};

use agora_engine::{Engine, ScoreRequest, ScoreSink};
use agora_verify::{Checker, Proof, ProofError, Report, Tolerances};

use crate::transcript::{Checked, Transcript, TranscriptError};

/// Why a transcript could not be checked at all (as opposed to being checked and rejected).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Transcript(#[from] TranscriptError),
    #[error("the receipt names model sha256:{receipt}, but this verifier has sha256:{have}")]
    WrongModel { receipt: String, have: String },
    #[error("the proof is malformed: {0}")]
    Proof(#[from] ProofError),
    #[error("the prompt is {actual} tokens with this model, but the receipt says {receipt}")]
    PromptLength { receipt: u32, actual: u32 },
    #[error("the model could not format the prompt: {0}")]
    Prompt(#[source] agora_engine::PromptError),
    #[error("the output is empty: there is nothing to check")]
    EmptyOutput,
    #[error("output token {index} ({token}) is not in the model's vocabulary")]
    OutOfVocabulary { index: usize, token: u32 },
    #[error(
        "the receipt's text digest is {receipt}, but its tokens decode to a text whose digest is {actual}"
    )]
    TextDigest { receipt: String, actual: String },
    #[error("the receipt's text fingerprint is not that of the text its tokens decode to")]
    Fingerprint,
    #[error("{0}")]
    Proofless(String),
    /// The worker marked its receipt unverifiable: its engine failed its self-check, so its
    /// numbers cannot be reproduced and the answer can be neither accepted nor rejected.
    #[error(
        "the worker marked this answer unverifiable (its engine failed its self-check): there is no proof to hold it to"
    )]
    Unverifiable,
    /// The verifier's engine failed, with no underlying error (it stopped, or reported only a
    /// message).
    #[error("the verifier's engine failed: {0}")]
    Engine(String),
    /// The verifier's engine refused the scoring pass.
    #[error("the verifier's engine failed: {0}")]
    Refused(#[source] agora_engine::SubmitError),
    /// The blocking task that tokenized the prompt failed (panicked or was cancelled).
    #[error("the verifier's engine failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl VerifyError {
    /// Whether the error shows the worker's answer to be wrong (a verdict can reject it), as
    /// opposed to this verifier being unable to check it.
    pub fn condemns_worker(&self) -> bool {
        !matches!(
            self,
            VerifyError::WrongModel { .. }
                | VerifyError::Unverifiable
                | VerifyError::Engine(_)
                | VerifyError::Refused(_)
                | VerifyError::Task(_)
                | VerifyError::Transcript(TranscriptError::Malformed(_))
        )
    }
}

/// Hands the engine's rows to the checker (taken back out once the pass is done).
struct Sink(Arc<Mutex<Option<Checker>>>);

impl ScoreSink for Sink {
    fn row(&mut self, _pos: usize, hidden: &[f32], logits: &[f32]) {
        if let Ok(mut c) = self.0.lock()
            && let Some(c) = c.as_mut()
        {
            c.row(hidden, logits);
        }
    }
}

/// Checks `t` on `engine` (which must serve the receipt's model).
pub async fn verify(
    engine: &Arc<dyn Engine>,
    t: &Transcript,
    tol: Tolerances,
) -> Result<(Checked, Report), VerifyError> {
    let checked = t.check()?;
    if checked.receipt.unverifiable {
        return Err(VerifyError::Unverifiable);
    }
    let info = engine.info();
    if checked.receipt.model.to_string() != info.sha256 {
        return Err(VerifyError::WrongModel {
            receipt: checked.receipt.model.to_string(),
            have: info.sha256.clone(),
        });
    }
    let proof = Proof::decode(&checked.proof_bytes)?;
    let prompt = {
        let (engine, spec) = (Arc::clone(engine), t.request.prompt.clone());
        tokio::task::spawn_blocking(move || engine.tokenize(&spec))
            .await
            .map_err(VerifyError::Task)?
            .map_err(VerifyError::Prompt)?
    };
    if prompt.len() as u32 != checked.receipt.prompt_tokens {
        return Err(VerifyError::PromptLength {
            receipt: checked.receipt.prompt_tokens,
            actual: prompt.len() as u32,
        });
    }
    let output = &t.output.tokens;
    if output.is_empty() || prompt.is_empty() {
        return Err(VerifyError::EmptyOutput);
    }
    if let Some((index, &token)) = output.iter().enumerate().find(|&(_, &t)| t >= info.n_vocab) {
        return Err(VerifyError::OutOfVocabulary { index, token });
    }
    // The text digest is what provenance lookups find the receipt by: it must be that of the
    // text these tokens show (a worker could otherwise claim someone else's text).
    let (digest, fingerprint) =
        crate::attest::output_text_claims(engine.as_ref(), &t.request, output);
    if let Some(receipt) = checked.receipt.text
        && digest != Some(receipt)
    {
        return Err(VerifyError::TextDigest {
            receipt: receipt.to_string(),
            actual: digest.map_or("none (empty text)".into(), |d| d.to_string()),
        });
    }
    if checked.receipt.fingerprint.is_some() && checked.receipt.fingerprint != fingerprint {
        return Err(VerifyError::Fingerprint);
    }
    let checker = Checker::new(proof, t.request.params, output.clone(), tol)
        .map_err(VerifyError::Proofless)?
        .with_bias(t.request.logit_bias.clone())
        .with_given(checked.receipt.resumed as usize);
    let checker = Arc::new(Mutex::new(Some(checker)));
    let mut tokens = prompt.clone();
    tokens.extend_from_slice(&output[..output.len() - 1]);
    let handle = engine
        .score(
            ScoreRequest {
                tokens,
                from: prompt.len() - 1,
            },
            Box::new(Sink(Arc::clone(&checker))),
        )
        .map_err(VerifyError::Refused)?;
    handle
        .done
        .await
        .map_err(|_| VerifyError::Engine("the engine stopped".into()))?
        .map_err(VerifyError::Engine)?;
    let checker = checker
        .lock()
        .map_err(|_| VerifyError::Engine("the checker's lock was poisoned".into()))?
        .take()
        .ok_or_else(|| VerifyError::Engine("the checker is gone".into()))?;
    Ok((checked, checker.finish()))
}
