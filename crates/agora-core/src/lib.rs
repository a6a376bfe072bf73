//! Agora identity and statements (no I/O).
//!
//! - [`identity`] — Ed25519 keys, the key file format, libp2p PeerIds and C2SP verifier keys.
//! - [`dsse`] — DSSE envelopes: signatures over the pre-authentication encoding of the exact
//!   payload bytes.
//! - [`statement`] — the statement kinds of DESIGN.md as versioned serde types.

#![warn(missing_docs)]

pub mod dsse;
pub mod identity;
pub mod statement;
pub mod text;

pub use dsse::Envelope;
pub use identity::{Identity, PeerId};
pub use statement::{Sha256, Statement};

/// Every error this crate reports.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A key file is not the header line and the base64 of a 32-byte seed; the reason is attached.
    #[error("malformed key file: {0}")]
    MalformedKeyFile(&'static str),
    /// A string is not the base58btc PeerId of an Ed25519 key; the reason is attached.
    #[error("malformed PeerId: {0}")]
    MalformedPeerId(&'static str),

    /// Envelope JSON that is too large, not a DSSE envelope or not valid base64; the reason is
    /// attached.
    #[error("malformed DSSE envelope: {0}")]
    MalformedEnvelope(String),
    /// An envelope with no signatures, which never verifies.
    #[error("the envelope has no signatures")]
    NoSignatures,
    /// A signature that does not verify over the payload under the key its keyid names.
    #[error("signature {index} (keyid {keyid:?}) does not verify over the payload")]
    BadSignature {
        /// Position of the signature in the envelope.
        index: usize,
        /// Its keyid.
        keyid: String,
    },
    /// A signature whose keyid is not an Ed25519 PeerId, so its key is unknown.
    #[error("signature {index} has keyid {keyid:?}, which is not an Ed25519 PeerId")]
    UnknownKeyId {
        /// Position of the signature in the envelope.
        index: usize,
        /// Its keyid.
        keyid: String,
    },
    /// The envelope verifies, but none of its signatures is by the required key (its PeerId is
    /// attached).
    #[error("the envelope is not signed by the expected key {0}")]
    NotSignedBy(String),

    /// The envelope's payload type is not the one the statement's kind is carried as.
    #[error("payload type {found:?} is not {expected:?}")]
    PayloadType {
        /// The payload type the statement requires.
        expected: &'static str,
        /// The envelope's payload type.
        found: String,
    },
    /// A `_type` or `predicateType` that names no statement kind, or an in-toto `predicateType`
    /// naming a kind that is not in-toto; the URI is attached.
    #[error("unknown statement type {0:?}")]
    UnknownStatementType(String),
    /// A known statement kind in a version this build does not read.
    #[error("unsupported version {version:?} of the {kind} statement (this build reads v1)")]
    UnknownVersion {
        /// The kind's name, or `in-toto Statement` for the in-toto envelope type.
        kind: &'static str,
        /// The version found.
        version: String,
    },
    /// A statement payload that does not parse as its kind.
    #[error("malformed {kind} statement: {msg}")]
    MalformedStatement {
        /// The kind's name, or `statement` / `in-toto` when the kind is not yet known.
        kind: &'static str,
        /// What is wrong (often the serde error).
        msg: String,
    },

    /// An evidence statement whose claim does not hold; the reason is attached.
    #[error("evidence does not hold: {0}")]
    Evidence(String),
    /// An error from `agora-tlog`: an invalid key name or verifier key, or split-view evidence
    /// that does not check out.
    #[error(transparent)]
    Tlog(#[from] agora_tlog::Error),
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
