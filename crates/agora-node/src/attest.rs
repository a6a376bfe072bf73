//! Attested generation: every answer leaves with a receipt signed by the worker and an
//! activation proof built from the hidden states of its own tokens.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use agora_core::statement::{Receipt, Sha256};
use agora_core::{Identity, Statement};
use agora_engine::{
    Attestation, Capture, Engine, Event, Generation, JobSpec, PrepareError, TokenEvent,
};
use agora_verify::proof::{DEFAULT_CHUNK, DEFAULT_K};
use agora_verify::{Proof, ProofBuilder};
use tokio::sync::mpsc;

/// Signs receipts with the node's key.
#[derive(Clone)]
pub struct Attestor {
    identity: Arc<Identity>,
    /// Prompts being templated and tokenized at once (CPU work, off the async threads).
    preparing: Arc<tokio::sync::Semaphore>,
    chunk: u16,
    k: u16,
    /// What this worker does to its own answers: nothing for an honest one (always `None`
    /// outside builds with the `cheat` feature, whose `cheat.rs` is the only implementation).
    pub(crate) tamper: Option<Arc<dyn Tamper>>,
}

/// What a worker may do to its answers between its engine and its receipt. The honest worker
/// does nothing; the only implementation is `cheat::Cheater` (feature `cheat`: tests and the
/// detection matrix), so this is where a cheat plugs in, and all cheating code is in `cheat.rs`.
pub(crate) trait Tamper: Send + Sync {
    /// What actually runs (the receipt still names the client's job).
    fn job_to_run(&self, job: &JobSpec) -> JobSpec;
    /// Changes a token on its way to the client.
    fn alter_token(&self, t: &mut TokenEvent, n_vocab: u32);
    /// Changes the tokens the receipt covers.
    fn alter_tokens(&self, tokens: &mut [u32], n_vocab: u32);
    /// Changes the proof the receipt covers.
    fn proof(&self, proof: Proof) -> Proof;
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor")
            .field("worker", &self.identity.peer_id().to_string())
            .finish()
    }
}

impl Attestor {
    pub fn new(identity: Arc<Identity>) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self {
            identity,
            preparing: Arc::new(tokio::sync::Semaphore::new(2 * cores)),
            chunk: DEFAULT_CHUNK,
            k: DEFAULT_K,
            tamper: None,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// [`Attestor::generate`] on a blocking thread: templating and tokenizing a prompt is CPU
    /// work that must not hold up the async threads (a megabyte of text must not freeze the
    /// node). At most twice the cores' worth run at once; a request that waited
    /// [`agora_api::backend::PREPARE_WAIT`] for a slot is refused as overload (429). Waiters
    /// are bounded by the worker's stream cap and the HTTP connection cap.
    pub async fn start(
        &self,
        engine: &Arc<dyn Engine>,
        job: &JobSpec,
        resume: Vec<u32>,
    ) -> Result<(Generation, u32), PrepareError> {
        let overloaded = || {
            let i = engine.info();
            PrepareError::Submit(agora_engine::SubmitError::Overloaded {
                slots: i.slots,
                queue: i.queue,
            })
        };
        let permit = tokio::time::timeout(
            agora_api::backend::PREPARE_WAIT,
            Arc::clone(&self.preparing).acquire_owned(),
        )
        .await
        .map_err(|_| overloaded())?
        .map_err(|_| overloaded())?;
        let (this, engine, job) = (self.clone(), Arc::clone(engine), job.clone());
        tokio::task::spawn_blocking(move || {
            let r = this.generate(&engine, &job, resume);
            drop(permit);
            r
        })
        .await
        .map_err(|_| PrepareError::Submit(agora_engine::SubmitError::Stopped))?
    }

    /// Starts `job` on `engine` with hidden states captured; the events come out as the
    /// engine's, without hidden states, and `Done` carries the attestation. Also returns the
    /// prompt's length in tokens.
    pub fn generate(
        &self,
        engine: &Arc<dyn Engine>,
        job: &JobSpec,
        resume: Vec<u32>,
    ) -> Result<(Generation, u32), PrepareError> {
        let run = self.job_to_run(job);
        let req = agora_engine::prepare(
            engine.as_ref(),
            &run,
            Capture {
                hidden: true,
                logits: false,
            },
            resume,
        )?;
        let cap = req.max_tokens as usize + 4;
        let prompt_len = req.prompt.len() as u32;
        let resumed = req.resume.len() as u32;
        let mut inner = engine.submit(req)?;
        let (tx, rx) = mpsc::channel(cap);
        let this = self.clone();
        let job = job.clone();
        let info = engine.info().clone();
        let vocab = Arc::clone(engine);
        tokio::spawn(async move {
            let mut builder = ProofBuilder::new(info.n_embd as usize, this.chunk, this.k);
            while let Some(ev) = inner.events.recv().await {
                let out = match ev {
                    Event::Token(mut t) => {
                        if let Some(h) = t.hidden.take() {
                            builder.push(&h);
                        }
                        this.alter_token(&mut t, info.n_vocab);
                        Event::Token(t)
                    }
                    Event::Replayed(t) => {
                        if let Some(h) = &t.hidden {
                            builder.push(h);
                        }
                        continue;
                    }
                    Event::Done(mut f) => {
                        this.alter_tokens(&mut f.tokens, info.n_vocab);
                        let counts = (f.prompt_tokens, resumed);
                        let text = output_text_claims(vocab.as_ref(), &job, &f.tokens);
                        match this.attest(&info, &job, &f.tokens, counts, text, builder) {
                            Ok(a) => f.attestation = Some(Box::new(a)),
                            Err(e) => {
                                let _ = tx
                                    .send(Event::Error(format!("could not attest the answer: {e}")))
                                    .await;
                                return;
                            }
                        }
                        let _ = tx.send(Event::Done(f)).await;
                        return;
                    }
                    other => other,
                };
                // The client went away: dropping `inner` cancels the generation.
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        });
        Ok((Generation { events: rx }, prompt_len))
    }

    fn attest(
        &self,
        info: &agora_engine::ModelInfo,
        job: &JobSpec,
        tokens: &[u32],
        (prompt_tokens, resumed): (u32, u32),
        (text, fingerprint): TextClaims,
        builder: ProofBuilder,
    ) -> Result<Attestation, String> {
        if builder.tokens() as usize != tokens.len() {
            return Err(format!(
                "hidden states for {} of {} tokens",
                builder.tokens(),
                tokens.len()
            ));
        }
        let proof = builder.finish().ok_or("no tokens were generated")?;
        let proof = self.tampered_proof(proof);
        let salt: [u8; agora_engine::SALT_LEN] = rand::random();
        let request_json = serde_json::to_vec(job).map_err(|e| e.to_string())?;
        let model: Sha256 = info.sha256.parse().map_err(|e: &str| e.to_string())?;
        let receipt = Receipt {
            model,
            request: Sha256(agora_verify::request_digest(&salt, &request_json)),
            output: Sha256(agora_verify::output_digest(tokens)),
            seed: job.params.seed,
            prompt_tokens,
            completion_tokens: tokens.len() as u32,
            proof: Sha256(proof.digest()),
            worker: self.identity.peer_id(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            resumed,
            text,
            fingerprint,
            unverifiable: info.unverifiable.is_some(),
        };
        let envelope = Statement::Receipt(receipt).sign(&self.identity);
        Ok(Attestation {
            receipt: envelope,
            proof,
            salt,
            request: job.clone(),
            log: None,
        })
    }
}

/// What a receipt says of its answer's text: its digest, and its fingerprint when asked.
pub type TextClaims = (Option<Sha256>, Option<agora_core::text::Fingerprint>);

/// The text digest of what `tokens` show a client of `job` ([`agora_core::text`]; none for an
/// empty answer), and its fingerprint when the job asks for one (none for a short answer).
pub fn output_text_claims(engine: &dyn Engine, job: &JobSpec, tokens: &[u32]) -> TextClaims {
    let text = agora_engine::text::render(
        tokens,
        &job.stop,
        job.ignore_eos,
        |t| engine.token_piece(t),
        |t| engine.is_eog(t),
    );
    let fingerprint = if job.fingerprint {
        agora_core::text::Fingerprint::of(&text)
    } else {
        None
    };
    (agora_core::text::digest(&text).ok(), fingerprint)
}

impl Attestor {
    fn job_to_run(&self, job: &JobSpec) -> JobSpec {
        match &self.tamper {
            Some(t) => t.job_to_run(job),
            None => job.clone(),
        }
    }

    fn alter_token(&self, token: &mut TokenEvent, n_vocab: u32) {
        if let Some(t) = &self.tamper {
            t.alter_token(token, n_vocab);
        }
    }

    fn alter_tokens(&self, tokens: &mut [u32], n_vocab: u32) {
        if let Some(t) = &self.tamper {
            t.alter_tokens(tokens, n_vocab);
        }
    }

    fn tampered_proof(&self, proof: Proof) -> Proof {
        match &self.tamper {
            Some(t) => t.proof(proof),
            None => proof,
        }
    }
}
