//! Transcripts: everything needed to check one answer (request, output, receipt, proof), and
//! the bounded store a gateway keeps them in for validators.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agora_core::Sha256;
use agora_engine::{Attestation, FinishReason};
pub use agora_verify::answer::{
    Checked, Covered, Output, TRANSCRIPT_VERSION, Transcript, TranscriptError, open_receipt,
};

/// Builds a transcript from a finished answer.
pub fn transcript(
    model: &str,
    a: &Attestation,
    tokens: Vec<u32>,
    text: String,
    reason: FinishReason,
) -> Transcript {
    Transcript {
        version: TRANSCRIPT_VERSION,
        model: model.to_string(),
        request: a.request.clone(),
        salt: a.salt_hex(),
        output: Output {
            tokens,
            text,
            finish_reason: reason,
        },
        receipt: serde_json::to_value(&a.receipt).unwrap_or(serde_json::Value::Null),
        proof: a.proof_base64(),
        log: a.log.clone(),
    }
}

/// Checks an answer's attestation as [`Transcript::check`] checks a transcript: the receipt's
/// signature (by the worker it names), and that it covers exactly this request, these `tokens`
/// and this proof. Its parts are already parsed (they were when it was decoded).
pub fn check_attestation(a: &Attestation, tokens: &[u32]) -> Result<Checked, TranscriptError> {
    let receipt = open_receipt(&a.receipt)?;
    let covered = Covered {
        request: &a.request,
        salt: &a.salt,
        tokens,
        text: None,
        proof_bytes: a.proof.encode(),
    };
    covered.check(receipt, &a.receipt)
}

/// Transcripts (with the hash of the receipt's log entry) by receipt digest, and the order they
/// came in.
type Kept = (
    HashMap<Sha256, (Transcript, [u8; 32])>,
    VecDeque<(Instant, Sha256)>,
);

/// Transcripts a gateway keeps for validators: at most `cap`, none older than `retention`.
#[derive(Debug)]
pub struct TranscriptStore {
    cap: usize,
    retention: Duration,
    inner: Mutex<Kept>,
}

impl TranscriptStore {
    pub fn new(cap: usize, retention: Duration) -> Self {
        Self {
            cap,
            retention,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// Keeps `t` under its receipt's digest, with `leaf`: the RFC 6962 leaf hash of the
    /// receipt's log entry (the exact bytes appended).
    pub fn insert(&self, receipt_digest: Sha256, t: Transcript, leaf: [u8; 32]) {
        let Ok(mut g) = self.inner.lock() else { return };
        let (map, order) = &mut *g;
        let now = Instant::now();
        while let Some(&(at, d)) = order.front() {
            if order.len() < self.cap && now.duration_since(at) <= self.retention {
                break;
            }
            order.pop_front();
            map.remove(&d);
        }
        if map.insert(receipt_digest, (t, leaf)).is_none() {
            order.push_back((now, receipt_digest));
        }
    }

    /// The transcript and its receipt's leaf hash.
    pub fn get(&self, receipt_digest: &Sha256) -> Option<(Transcript, [u8; 32])> {
        let g = self.inner.lock().ok()?;
        g.0.get(receipt_digest).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.0.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agora_core::statement::Receipt;
    use agora_core::{Envelope, Statement};
    use agora_engine::JobSpec;

    fn sha2_digest(data: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(data).into()
    }

    /// A valid attestation of `tokens`, signed by a fixed worker key.
    pub(crate) fn attestation(tokens: &[u32]) -> Attestation {
        let id = agora_core::Identity::from_seed(&[3; 32]);
        let mut b = agora_verify::ProofBuilder::new(8, 2, 2);
        for &t in tokens {
            b.push(&[t as f32, 1.0, -2.0, 0.5, 0.0, 3.0, 0.25, -1.0]);
        }
        let proof = b.finish().unwrap();
        let request = JobSpec {
            prompt: agora_engine::PromptSpec::Text("x".into()),
            params: agora_engine::SamplingParams::default(),
            max_tokens: Some(tokens.len() as u32),
            stop: vec![],
            ignore_eos: false,
            logit_bias: Default::default(),
            fingerprint: false,
        };
        let salt = [5u8; agora_engine::SALT_LEN];
        let receipt = Receipt {
            model: Sha256([9; 32]),
            request: Sha256(agora_verify::request_digest(
                &salt,
                &serde_json::to_vec(&request).unwrap(),
            )),
            output: Sha256(agora_verify::output_digest(tokens)),
            seed: request.params.seed,
            prompt_tokens: 1,
            completion_tokens: tokens.len() as u32,
            proof: Sha256(proof.digest()),
            worker: id.peer_id(),
            time: 1,
            resumed: 0,
            text: None,
            fingerprint: None,
            unverifiable: false,
        };
        Attestation {
            receipt: Statement::Receipt(receipt).sign(&id),
            proof,
            salt,
            request,
            log: None,
        }
    }

    /// An attestation checks as the transcript made from it does, with the same digest.
    #[test]
    fn attestation_checks_as_its_transcript() {
        let tokens = [4u32, 5, 6];
        let a = attestation(&tokens);
        let c = check_attestation(&a, &tokens).unwrap();
        let t = transcript("m", &a, tokens.to_vec(), "t".into(), FinishReason::Stop);
        let tc = t.check().unwrap();
        assert_eq!(c.receipt_digest, tc.receipt_digest);
        assert_eq!(c.receipt_digest, Sha256(sha2_digest(&a.receipt.payload)));
        assert_eq!(c.proof_bytes, tc.proof_bytes);
        assert_eq!(c.receipt, tc.receipt);
        // The transcript carries the parts as clients see them: the envelope as JSON, the
        // proof base64, the salt hex; and they parse back to the same attestation parts.
        assert_eq!(t.salt, "05".repeat(agora_engine::SALT_LEN));
        let env = Envelope::from_json(&serde_json::to_vec(&t.receipt).unwrap()).unwrap();
        assert_eq!(env, a.receipt);
        assert_eq!(t.proof, a.proof_base64());

        // Other tokens, another request, another proof: each caught.
        let e = check_attestation(&a, &[4, 5, 7]).unwrap_err();
        assert!(
            matches!(e, TranscriptError::Digest { what: "output", .. }),
            "{e}"
        );
        let mut b = a.clone();
        b.salt[0] ^= 1;
        let e = check_attestation(&b, &tokens).unwrap_err();
        assert!(
            matches!(
                e,
                TranscriptError::Digest {
                    what: "request",
                    ..
                }
            ),
            "{e}"
        );
        let mut b = a.clone();
        b.proof = attestation(&[1, 2]).proof;
        let e = check_attestation(&b, &tokens).unwrap_err();
        assert!(
            matches!(e, TranscriptError::Digest { what: "proof", .. }),
            "{e}"
        );
        let mut b = a.clone();
        b.receipt.signatures[0].sig[0] ^= 1;
        let e = check_attestation(&b, &tokens).unwrap_err();
        assert!(matches!(e, TranscriptError::Receipt(_)), "{e}");
    }

    #[test]
    fn store_is_bounded() {
        let s = TranscriptStore::new(3, Duration::from_secs(3600));
        let t = Transcript {
            version: 1,
            model: "m".into(),
            request: JobSpec {
                prompt: agora_engine::PromptSpec::Text("x".into()),
                params: agora_engine::SamplingParams::default(),
                max_tokens: None,
                stop: vec![],
                ignore_eos: false,
                logit_bias: Default::default(),
                fingerprint: false,
            },
            salt: String::new(),
            output: Output {
                tokens: vec![],
                text: String::new(),
                finish_reason: FinishReason::Stop,
            },
            receipt: serde_json::Value::Null,
            proof: String::new(),
            log: None,
        };
        for i in 0..10u8 {
            s.insert(Sha256([i; 32]), t.clone(), [i; 32]);
        }
        assert_eq!(s.len(), 3);
        assert!(s.get(&Sha256([9; 32])).is_some());
        assert!(s.get(&Sha256([0; 32])).is_none());
    }

    #[test]
    fn malformed_and_versions() {
        let e = Transcript::parse(b"{").unwrap_err();
        assert!(matches!(e, TranscriptError::Malformed(_)), "{e}");
        assert!(e.to_string().starts_with("not a transcript: "), "{e}");
        let cause = std::error::Error::source(&e);
        assert!(
            cause.is_some_and(|c| c.downcast_ref::<serde_json::Error>().is_some()),
            "{e:?}"
        );
        assert!(matches!(
            Transcript::parse(br#"{"version": 9}"#),
            Err(TranscriptError::Version(9))
        ));
        assert!(matches!(
            Transcript::parse(br#"{"version": 1}"#),
            Err(TranscriptError::Malformed(_))
        ));
    }
}
