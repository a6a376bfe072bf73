//! How a community governs its AI, as pure functions of its log (DESIGN.md, "the data side").
//!
//! - [`rules`]: the `[governance]` table of a genesis policy: who may vote and propose, the
//!   voting period, quorum and threshold, the community's log and witnesses.
//! - [`history`]: what time a quorum of witnesses attests for a checkpoint, and the first
//!   checkpoint at or after a deadline: deadlines are log checkpoints, never anyone's clock.
//! - [`tally`]: the votes a proposal got, each counted or refused with its reason, and the
//!   `decision` every tallier derives byte for byte.
//! - [`credit`]: a period's credit to the workers who served and the people whose data the
//!   answering models learned from, in integer arithmetic identical on every machine.
//!
//! Nothing here does I/O: callers hand in log entries, checkpoints and a [`history::History`],
//! read from a log over HTTP or from a log store, and check the entries' inclusion themselves.

pub mod credit;
pub mod history;
pub mod keys;
pub mod parallel;
pub mod read;
pub mod rules;
pub mod tally;

/// Why a community computation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The genesis or rules text is not acceptable.
    #[error("the governance rules are not valid: {0}")]
    Rules(String),
    /// The network has no `[governance]` table.
    #[error(
        "this network's genesis has no [governance] rules: governance needs members, a log and witnesses (docs/community.md)"
    )]
    NoGovernance,
    /// A checkpoint does not verify under the community's log policy.
    #[error("checkpoint at size {size}: {source}")]
    Checkpoint {
        /// The size asked for.
        size: u64,
        /// Why.
        #[source]
        source: agora_tlog::Error,
    },
    /// The log's checkpoint history is inconsistent or cannot be read.
    #[error("checkpoint history: {0}")]
    History(String),
    /// The proposal cannot be tallied.
    #[error("proposal: {0}")]
    Proposal(String),
    /// A statement the computation rests on is not what it should be.
    #[error("{0}")]
    Statement(#[from] agora_core::Error),
}

/// Whether `needle` (not empty) occurs in `hay`: the cheap look at a payload's bytes before
/// its signature is checked.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
