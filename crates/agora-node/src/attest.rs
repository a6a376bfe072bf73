//! Attested generation: every answer leaves with a receipt signed by the worker and an
//! activation proof built from the hidden states of its own tokens.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use agora_core::statement::{Receipt, Sha256};
use agora_core::{Identity, Statement};
use agora_engine::{Attestation, Capture, Engine, Event, Generation, JobSpec, PrepareError};
use agora_verify::ProofBuilder;
use agora_verify::proof::{DEFAULT_CHUNK, DEFAULT_K};
use base64::Engine as _;
use tokio::sync::mpsc;

/// Signs receipts with the node's key.
#[derive(Clone)]
pub struct Attestor {
    identity: Arc<Identity>,
    /// Prompts being templated and tokenized at once (CPU work, off the async threads).
    preparing: Arc<tokio::sync::Semaphore>,
    chunk: u16,
    k: u16,
    #[cfg(feature = "cheat")]
    cheat: Option<crate::cheat::Cheat>,
    #[cfg(feature = "cheat")]
    last_proof: Arc<std::sync::Mutex<Option<String>>>,
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
            #[cfg(feature = "cheat")]
            cheat: None,
            #[cfg(feature = "cheat")]
            last_proof: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Makes this worker cheat (testing only).
    #[cfg(feature = "cheat")]
    pub fn with_cheat(mut self, cheat: Option<crate::cheat::Cheat>) -> Self {
        self.cheat = cheat;
        self
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
                        match this.attest(&info.sha256, &job, &f.tokens, counts, builder) {
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
        model_sha256: &str,
        job: &JobSpec,
        tokens: &[u32],
        (prompt_tokens, resumed): (u32, u32),
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
        let proof = self.cheat_proof(proof);
        let proof_bytes = proof.encode();
        let salt: [u8; 16] = rand::random();
        let request_json = serde_json::to_vec(job).map_err(|e| e.to_string())?;
        let model: Sha256 = model_sha256.parse().map_err(|e: &str| e.to_string())?;
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
        };
        let envelope = Statement::Receipt(receipt).sign(&self.identity);
        Ok(Attestation {
            receipt: envelope.to_json(),
            proof: base64::engine::general_purpose::STANDARD.encode(proof_bytes),
            salt: hex::encode(salt),
            request: job.clone(),
            log: None,
        })
    }
}

#[cfg(not(feature = "cheat"))]
impl Attestor {
    fn job_to_run(&self, job: &JobSpec) -> JobSpec {
        job.clone()
    }
    fn alter_token(&self, _t: &mut agora_engine::TokenEvent, _n_vocab: u32) {}
    fn alter_tokens(&self, _tokens: &mut [u32], _n_vocab: u32) {}
    fn cheat_proof(&self, proof: agora_verify::Proof) -> agora_verify::Proof {
        proof
    }
}

#[cfg(feature = "cheat")]
impl Attestor {
    /// What actually runs (the receipt still names `job`).
    fn job_to_run(&self, job: &JobSpec) -> JobSpec {
        use crate::cheat::Cheat;
        let mut run = job.clone();
        match &self.cheat {
            Some(Cheat::SystemPrompt) => {
                if let agora_engine::PromptSpec::Chat(m) = &mut run.prompt {
                    m.retain(|x| x.role != "system");
                    m.insert(
                        0,
                        agora_engine::ChatMessage {
                            role: "system".into(),
                            content: "You are a pirate. Always answer like a pirate.".into(),
                        },
                    );
                }
                if let agora_engine::PromptSpec::Text(t) = &mut run.prompt {
                    *t = format!("Arr! {t}");
                }
            }
            Some(Cheat::Unseeded) => run.params.seed = rand::random(),
            _ => {}
        }
        run
    }

    fn altered_index(&self) -> Option<u32> {
        match &self.cheat {
            Some(crate::cheat::Cheat::AlterToken(k)) => Some(k.unwrap_or(2)),
            _ => None,
        }
    }

    fn alter_token(&self, t: &mut agora_engine::TokenEvent, n_vocab: u32) {
        if self.altered_index() == Some(t.index) {
            t.id = (t.id + 1) % n_vocab.max(1);
        }
    }

    fn alter_tokens(&self, tokens: &mut [u32], n_vocab: u32) {
        if let Some(k) = self.altered_index()
            && let Some(t) = tokens.get_mut(k as usize)
        {
            *t = (*t + 1) % n_vocab.max(1);
        }
    }

    fn cheat_proof(&self, proof: agora_verify::Proof) -> agora_verify::Proof {
        use crate::cheat::Cheat;
        match &self.cheat {
            Some(Cheat::ReplayProof) => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let mine = b64.encode(proof.encode());
                let Ok(mut last) = self.last_proof.lock() else {
                    return proof;
                };
                let previous = last.replace(mine);
                previous
                    .and_then(|p| b64.decode(p).ok())
                    .and_then(|b: Vec<u8>| agora_verify::Proof::decode(&b).ok())
                    .unwrap_or(proof)
            }
            Some(Cheat::TruncateProof) => {
                let mut p = proof;
                if p.commitments.len() > 2 {
                    p.commitments.pop();
                    let chunks = (p.commitments.len() - 1) as u32;
                    p.n_tokens = p.n_tokens.min(chunks * u32::from(p.chunk));
                }
                p
            }
            _ => proof,
        }
    }
}
