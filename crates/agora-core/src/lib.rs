//! Agora identity and statements (no I/O).
//!
//! - [`identity`] — Ed25519 keys, the key file format, libp2p PeerIds and C2SP verifier keys.
//! - [`dsse`] — DSSE envelopes: signatures over the pre-authentication encoding of the exact
//!   payload bytes.
//! - [`statement`] — the statement kinds of DESIGN.md as versioned serde types.

pub mod dsse;
pub mod identity;
pub mod statement;

pub use dsse::Envelope;
pub use identity::{Identity, PeerId};
pub use statement::{Sha256, Statement};

/// Every error this crate reports.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("malformed key file: {0}")]
    MalformedKeyFile(&'static str),
    #[error("malformed PeerId: {0}")]
    MalformedPeerId(&'static str),

    #[error("malformed DSSE envelope: {0}")]
    MalformedEnvelope(String),
    #[error("the envelope has no signatures")]
    NoSignatures,
    #[error("signature {index} (keyid {keyid:?}) does not verify over the payload")]
    BadSignature { index: usize, keyid: String },
    #[error("signature {index} has keyid {keyid:?}, which is not an Ed25519 PeerId")]
    UnknownKeyId { index: usize, keyid: String },
    #[error("the envelope is not signed by the expected key {0}")]
    NotSignedBy(String),

    #[error("payload type {found:?} is not {expected:?}")]
    PayloadType {
        expected: &'static str,
        found: String,
    },
    #[error("unknown statement type {0:?}")]
    UnknownStatementType(String),
    #[error("unsupported version {version:?} of the {kind} statement (this build reads v1)")]
    UnknownVersion { kind: &'static str, version: String },
    #[error("malformed {kind} statement: {msg}")]
    MalformedStatement { kind: &'static str, msg: String },

    #[error("evidence does not hold: {0}")]
    Evidence(String),
    #[error(transparent)]
    Tlog(#[from] agora_tlog::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
