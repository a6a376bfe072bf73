//! `EchoEngine`: a test-only stand-in that answers instantly by echoing the prompt's bytes back.
//! It exists to measure the network and HTTP layers without the model in the way; it is never
//! the default and is named as such wherever it is used.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::mpsc;

use crate::{
    Engine, Event, Finish, FinishReason, GenRequest, Generation, Load, ModelInfo, PromptError,
    PromptSpec, ScoreHandle, ScoreRequest, ScoreSink, SubmitError, TokenEvent, check_prompt_bytes,
    check_request,
};

/// Width of the stand-in "hidden state" the echo engine hands out when asked (so that a worker
/// running it attests its answers like any other; the numbers mean nothing).
const ECHO_EMBD: u32 = 8;

/// Echoes the prompt, one byte per token, up to `max_tokens`.
#[derive(Debug)]
pub struct EchoEngine {
    info: ModelInfo,
    busy: AtomicU32,
}

impl EchoEngine {
    pub fn new(name: &str, n_ctx: u32) -> Self {
        let info = ModelInfo {
            name: name.into(),
            sha256: "0".repeat(64),
            n_ctx,
            n_vocab: 256,
            n_embd: ECHO_EMBD,
            slots: u32::MAX,
            queue: 0,
            kv_bytes: 0,
            max_token_bytes: 1,
            unverifiable: None,
        };
        Self {
            info,
            busy: AtomicU32::new(0),
        }
    }
}

impl Engine for EchoEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// One token per byte: of the last message's content for a chat.
    fn tokenize(&self, prompt: &PromptSpec) -> Result<Vec<u32>, PromptError> {
        let text = match prompt {
            PromptSpec::Chat(m) => m.last().map(|m| m.content.as_str()).unwrap_or_default(),
            PromptSpec::Text(t) => t.as_str(),
        };
        check_prompt_bytes(text.len(), &self.info)?;
        Ok(text.bytes().map(u32::from).collect())
    }

    fn token_piece(&self, token: u32) -> Option<Vec<u8>> {
        u8::try_from(token).ok().map(|b| vec![b])
    }

    fn is_eog(&self, _token: u32) -> bool {
        false
    }

    fn submit(&self, req: GenRequest) -> Result<Generation, SubmitError> {
        check_request(&req, self.info.n_ctx, self.info.n_vocab)?;
        let n = (req.max_tokens as usize).min(req.prompt.len());
        let tokens = req.prompt[..n].to_vec();
        let (tx, rx) = mpsc::channel(n + 2);
        self.busy.fetch_add(1, Ordering::Relaxed);
        for (i, &t) in req.prompt[..n].iter().enumerate().skip(req.resume.len()) {
            let text = char::from(u8::try_from(t).unwrap_or(b'?')).to_string();
            let _ = tx.try_send(Event::Token(TokenEvent {
                id: t,
                index: i as u32,
                text,
                hidden: req
                    .capture
                    .hidden
                    .then(|| vec![f32::from(t as u8) / 255.0; ECHO_EMBD as usize]),
                logits: req.capture.logits.then(|| vec![0.0; 256]),
            }));
        }
        let reason = if n as u32 >= req.max_tokens {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        let _ = tx.try_send(Event::Done(Finish {
            reason,
            prompt_tokens: req.prompt.len() as u32,
            completion_tokens: n as u32,
            tail: String::new(),
            tokens,
            attestation: None,
        }));
        self.busy.fetch_sub(1, Ordering::Relaxed);
        Ok(Generation { events: rx })
    }

    fn score(
        &self,
        _req: ScoreRequest,
        _sink: Box<dyn ScoreSink>,
    ) -> Result<ScoreHandle, SubmitError> {
        Err(SubmitError::Stopped)
    }

    fn load(&self) -> Load {
        Load {
            slots: u32::MAX,
            slots_busy: self.busy.load(Ordering::Relaxed),
            queued: 0,
            prefix: Default::default(),
            threads: 0,
        }
    }
}
