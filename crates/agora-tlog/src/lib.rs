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

#![warn(missing_docs)]

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
    /// A field is not valid standard (padded) base64.
    #[error("{what} is not valid base64")]
    Base64 {
        /// The field being decoded.
        what: &'static str,
    },
    /// A hash is not exactly 32 bytes.
    #[error("{what} must be 32 bytes, found {len}")]
    HashLength {
        /// The field holding the hash.
        what: &'static str,
        /// Its actual length in bytes.
        len: usize,
    },
    /// A leaf index (or a requested tree size) is beyond the tree.
    #[error("index {index} is not below the tree size {size}")]
    IndexOutOfRange {
        /// The leaf index or requested size.
        index: u64,
        /// The size of the tree it was checked against.
        size: u64,
    },
    /// A proof has the wrong number of hashes for its tree sizes and index.
    #[error("proof has {got} hashes, expected {want}")]
    ProofLength {
        /// Hashes in the proof.
        got: usize,
        /// Hashes the sizes and index require.
        want: usize,
    },
    /// The proof is well-formed but does not lead to the expected root (or roots).
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
    /// A consistency proof was asked for or checked with the old size above the new one.
    #[error("old size {old} is larger than new size {new}")]
    SizeOrder {
        /// The old (smaller) tree size.
        old: u64,
        /// The new (larger) tree size.
        new: u64,
    },
    /// Consistency with the empty tree: trivially true, so no proof exists (reference semantics).
    #[error("consistency with an empty tree cannot be proven")]
    EmptyOldTree,
    /// A consistency proof between equal sizes carries hashes; it must be empty.
    #[error("the proof must be empty when both sizes are equal")]
    NonEmptyProof,
    /// A consistency proof between different sizes is empty.
    #[error("the proof is empty")]
    EmptyProof,
    /// A [`merkle::HashSource`] does not hold the hash of this complete subtree.
    #[error("hash of subtree at level {level}, index {index} is not available")]
    MissingHash {
        /// Height of the subtree: it spans `2^level` leaves.
        level: u8,
        /// Its position among the subtrees of that level (first leaf `index << level`).
        index: u64,
    },
    /// [`merkle::implied_old_root`] was called with a power-of-two old size, whose root the proof
    /// omits.
    #[error("the old root cannot be derived from this proof (old size is a power of two)")]
    OldRootNotDerivable,
    /// A tree size beyond what this crate handles. Not currently returned by this crate.
    #[error("tree size {0} is too large")]
    TreeTooLarge(u64),

    /// A signed note, or one of its signature lines, is malformed; the reason is attached.
    #[error("malformed note: {0}")]
    MalformedNote(&'static str),
    /// No signature on the note is from one of the keys it was checked against.
    #[error("the note has no valid signature from a trusted key")]
    UnverifiedNote,
    /// A known key's signature on the note does not verify, which rejects the whole note.
    #[error("invalid signature from known key {name}+{key_id:08x}")]
    InvalidSignature {
        /// The key name on the signature line.
        name: String,
        /// The key ID on the signature line.
        key_id: u32,
    },
    /// A verifier key (or a `PRIVATE+KEY+` signer key) is malformed; the reason is attached.
    #[error("malformed verifier key: {0}")]
    MalformedVkey(&'static str),
    /// A signature type byte other than 0x01 (Ed25519) and 0x04 (cosignature/v1), or one not
    /// allowed where it was found; the byte is attached.
    #[error("unsupported signature type 0x{0:02x}")]
    UnsupportedKeyType(u8),
    /// A key name that is empty or contains whitespace, a control character or `+`.
    #[error("invalid key name {0:?}: it must be non-empty UTF-8 without spaces or '+'")]
    InvalidKeyName(String),

    /// A checkpoint body is malformed; the reason is attached.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
    /// The checkpoint's origin is not the name of the log key it was checked against.
    #[error("checkpoint origin {found:?} is not the expected {expected:?}")]
    OriginMismatch {
        /// The log key's name.
        expected: String,
        /// The checkpoint's origin line.
        found: String,
    },

    /// A cosignature is malformed (not a 72-byte timestamped signature, or a timestamp above
    /// 2^63 - 1); the reason is attached.
    #[error("malformed cosignature: {0}")]
    MalformedCosignature(&'static str),

    /// A tlog-proof is malformed, or its checkpoint does not round-trip through its own bytes; the
    /// reason is attached.
    #[error("malformed tlog-proof: {0}")]
    MalformedProof(&'static str),

    /// A policy file is invalid.
    #[error("policy line {line}: {msg}")]
    Policy {
        /// The 1-based line at fault; 0 for the file as a whole.
        line: usize,
        /// What is wrong with it.
        msg: String,
    },
    /// No log of the policy whose key name is the checkpoint's origin signed it; the origin is
    /// attached.
    #[error("the checkpoint origin {0:?} is not signed by any log in the policy")]
    UnknownLog(String),
    /// The valid witness cosignatures do not satisfy the policy's quorum.
    #[error("the witness quorum is not satisfied ({cosigned} valid cosignatures)")]
    QuorumNotMet {
        /// How many of the policy's witnesses validly cosigned.
        cosigned: usize,
    },

    /// A tile path is malformed or not in canonical form; the reason is attached.
    #[error("malformed tile path: {0}")]
    TilePath(&'static str),
    /// A tile, entry bundle or set of partial tiles is malformed; the reason is attached.
    #[error("malformed tile: {0}")]
    MalformedTile(&'static str),

    /// An add-checkpoint request body is malformed; the reason is attached.
    #[error("malformed add-checkpoint request: {0}")]
    WitnessRequest(&'static str),
    /// A witness response body (200 signatures or 409 size) is malformed; the reason is attached.
    #[error("malformed witness response: {0}")]
    WitnessResponse(&'static str),
    /// Two checkpoints and a proof do not show a split view; why is attached.
    #[error("not evidence of a split view: {0}")]
    NotEvidence(&'static str),
}

/// `Result` with this crate's [`Error`] as the default error type.
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
