//! Transparency-log math and formats for Agora, compatible byte for byte with C2SP:
//!
//! - [`hash`], [`merkle`] — RFC 6962 hashing, inclusion and consistency proofs (generation and
//!   verification), and an in-memory tree for tests and tools.
//! - [`tile`] — the tlog-tiles layout (paths, partial tiles, the right edge of a growing tree, and
//!   proofs computed from tiles).
//! - [`note`] — signed notes (c2sp.org/signed-note), Ed25519 signers and verifier keys.
//! - [`checkpoint`] — c2sp.org/tlog-checkpoint.
//! - [`cosignature`] — c2sp.org/tlog-cosignature (cosignature/v1).
//! - [`proof`] — c2sp.org/tlog-proof.
//! - [`policy`] — c2sp.org/tlog-policy.
//! - [`witness`] — the tlog-witness wire format (request and response bodies) and split-view
//!   evidence checks.
//!
//! Nothing here does I/O. Every parser takes untrusted bytes, never panics and accepts exactly what
//! the specifications allow.

pub mod checkpoint;
pub mod cosignature;
pub mod hash;
pub mod merkle;
pub mod note;
pub mod policy;
pub mod proof;
pub mod tile;
pub mod witness;

pub use checkpoint::Checkpoint;
pub use hash::Hash;
pub use note::{Note, NoteSignature, Signer, Vkey};
pub use policy::Policy;
pub use proof::TlogProof;

/// Every error this crate reports. Each variant names one precise reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{what} is not valid base64")]
    Base64 { what: &'static str },
    #[error("{what} must be 32 bytes, found {len}")]
    HashLength { what: &'static str, len: usize },
    #[error("index {index} is not below the tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("proof has {got} hashes, expected {want}")]
    ProofLength { got: usize, want: usize },
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
    #[error("old size {old} is larger than new size {new}")]
    SizeOrder { old: u64, new: u64 },
    #[error("consistency with an empty tree cannot be proven")]
    EmptyOldTree,
    #[error("the proof must be empty when both sizes are equal")]
    NonEmptyProof,
    #[error("the proof is empty")]
    EmptyProof,
    #[error("hash of subtree at level {level}, index {index} is not available")]
    MissingHash { level: u8, index: u64 },
    #[error("the old root cannot be derived from this proof (old size is a power of two)")]
    OldRootNotDerivable,
    #[error("tree size {0} is too large")]
    TreeTooLarge(u64),

    #[error("malformed note: {0}")]
    MalformedNote(&'static str),
    #[error("the note has no valid signature from a trusted key")]
    UnverifiedNote,
    #[error("invalid signature from known key {name}+{key_id:08x}")]
    InvalidSignature { name: String, key_id: u32 },
    #[error("malformed verifier key: {0}")]
    MalformedVkey(&'static str),
    #[error("unsupported signature type 0x{0:02x}")]
    UnsupportedKeyType(u8),
    #[error("invalid key name {0:?}: it must be non-empty UTF-8 without spaces or '+'")]
    InvalidKeyName(String),

    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
    #[error("checkpoint origin {found:?} is not the expected {expected:?}")]
    OriginMismatch { expected: String, found: String },

    #[error("malformed cosignature: {0}")]
    MalformedCosignature(&'static str),

    #[error("malformed tlog-proof: {0}")]
    MalformedProof(&'static str),

    #[error("policy line {line}: {msg}")]
    Policy { line: usize, msg: String },
    #[error("the checkpoint origin {0:?} is not signed by any log in the policy")]
    UnknownLog(String),
    #[error("the witness quorum is not satisfied ({cosigned} valid cosignatures)")]
    QuorumNotMet { cosigned: usize },

    #[error("malformed tile path: {0}")]
    TilePath(&'static str),
    #[error("malformed tile: {0}")]
    MalformedTile(&'static str),

    #[error("malformed add-checkpoint request: {0}")]
    WitnessRequest(&'static str),
    #[error("malformed witness response: {0}")]
    WitnessResponse(&'static str),
    #[error("not evidence of a split view: {0}")]
    NotEvidence(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parse an ASCII decimal u64 with no leading zeroes (unless it is `0`), as every C2SP format
/// requires.
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

pub(crate) fn b64_decode(s: &str, what: &'static str) -> Result<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| Error::Base64 { what })
}

pub(crate) fn b64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_canonical() {
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("10"), Some(10));
        assert_eq!(parse_decimal("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "00",
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "18446744073709551616",
            "1e3",
            "٣",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }
}
