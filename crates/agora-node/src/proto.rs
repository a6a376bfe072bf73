//! The generation protocol between a gateway and a worker (`/agora/<net>/generate/1`).
//!
//! The gateway opens a stream and sends one [`GenerateRequest`] frame. The worker answers with
//! [`WorkerFrame::Accepted`] (or `Error`), then one `Token` frame per generated token, then
//! `Done` (or `Error`). Either side closing the stream ends the generation at once.

use agora_engine::{Attestation, FinishReason, JobSpec};
use serde::{Deserialize, Serialize};

/// What a gateway asks a worker to run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GenerateRequest {
    /// Name or `sha256:` digest of the model.
    pub model: String,
    pub job: JobSpec,
    /// Tokens already streamed to the client by a worker that failed (see `GenRequest::resume`).
    #[serde(default)]
    pub resume: Vec<u32>,
}

/// What a worker sends back.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerFrame {
    Accepted {
        model: String,
        prompt_tokens: u32,
    },
    Token {
        id: u32,
        index: u32,
        text: String,
    },
    Done {
        reason: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
        tail: String,
        /// The worker's receipt and proof.
        #[serde(default)]
        attestation: Option<Box<Attestation>>,
    },
    Error(RemoteError),
}

/// An error with the HTTP status a gateway should give its client.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteError {
    pub status: u16,
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

impl RemoteError {
    /// Whether another worker might succeed where this one failed (overload, failure), as
    /// opposed to a request that is wrong wherever it goes.
    pub fn retryable(&self) -> bool {
        self.status == 429 || self.status >= 500
    }
}

/// A validator asks a gateway for the transcript of a receipt (`/agora/<net>/transcript/1`);
/// the answer is one frame: the transcript, or `null`. A gateway releases the transcripts it
/// keeps only with a [`Selection`] from a validator it trusts; the evidence of a rejected
/// answer (kept by the validator that rejected it) goes to anyone who asks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TranscriptRequest {
    /// SHA-256 (hex) of the receipt's DSSE payload.
    pub receipt: String,
    #[serde(default)]
    pub selection: Option<Selection>,
}

/// Proof that the log's own randomness selected a receipt for checking: the receipt's entry is
/// at `index` under a checkpoint signed by the log, and
/// `agora_verify::selected_for_check(root, index, probability)` holds for that checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// The signed checkpoint (C2SP signed note text).
    pub checkpoint: String,
    pub index: u64,
    /// The inclusion proof of the entry under the checkpoint, hex hashes.
    pub proof: Vec<String>,
    /// The selection probability the validator applies to this worker.
    pub probability: f64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agora_net::wire::{Framed, WireError};
    use futures::io::Cursor;
    use serde_json::json;

    fn done(attestation: serde_json::Value) -> serde_json::Value {
        json!({
            "type": "done",
            "reason": "stop",
            "prompt_tokens": 1,
            "completion_tokens": 3,
            "tail": "",
            "attestation": attestation,
        })
    }

    /// What a gateway's `recv` makes of one frame.
    async fn recv(frame: &serde_json::Value) -> Result<Option<WorkerFrame>, WireError> {
        let body = serde_json::to_vec(frame).unwrap();
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        Framed::new(Cursor::new(bytes), 1 << 20).recv().await
    }

    /// The attestation in a `Done` frame is parsed when the frame is decoded: a valid one
    /// arrives typed, and a malformed receipt, proof or salt is a protocol violation.
    #[tokio::test]
    async fn done_frames_carry_parsed_attestations() {
        let a = crate::transcript::tests::attestation(&[4, 5, 6]);
        let good = serde_json::to_value(&a).unwrap();
        // Parts as strings: the receipt's JSON, the proof base64, the salt hex.
        assert_eq!(good["receipt"], json!(a.receipt.to_json()));
        assert!(good["proof"].is_string() && good["salt"].is_string());
        match recv(&done(good.clone())).await.unwrap() {
            Some(WorkerFrame::Done {
                attestation: Some(got),
                ..
            }) => assert_eq!(*got, a),
            other => panic!("{other:?}"),
        }
        for (field, bad, why) in [
            (
                "receipt",
                json!("not json"),
                "the receipt: malformed DSSE envelope",
            ),
            ("receipt", json!({"payloadType": "x"}), "expected a string"),
            ("proof", json!("%%%%"), "the proof is not base64"),
            (
                "proof",
                json!("QUdQRgE="),
                "the proof: the proof is 5 bytes",
            ),
            ("salt", json!("0011"), "the salt is not 32 hex digits"),
            ("salt", json!(null), "expected a string"),
        ] {
            let mut v = good.clone();
            v[field] = bad;
            let e = recv(&done(v)).await.unwrap_err();
            assert!(e.is_violation(), "{field}: {e}");
            assert!(e.to_string().contains(why), "{field}: {e}");
        }
    }
}
