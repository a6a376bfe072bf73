//! The `log` and `witness` roles of an Agora node, without HTTP (DESIGN.md: only `agora-api`
//! knows HTTP):
//!
//! - [`store`] — the log's redb storage: entries, deduplication index, tiles, published checkpoint.
//! - [`log`] — the sequencer (batched, durable appends) and the checkpoint publisher, which
//!   gathers witness cosignatures through [`log::WitnessTransport`] and publishes only with a
//!   quorum.
//! - [`witness`] — the tlog-witness state machine (atomic check-and-save) and the evidence store.
//! - [`admission`] — what a log accepts (signed statements) and per-signer and per-address
//!   quotas.

pub mod admission;
pub mod log;
pub mod store;
pub mod witness;

pub use admission::{Accept, Quota, Quotas};
pub use log::{DEFAULT_MAX_BYTES, Log, LogConfig, WitnessReply, WitnessTransport};
pub use witness::{Witness, WitnessResponse};

use std::sync::Arc;

/// Every error this crate reports. Cloneable (one failed batch answers every entry in it), so
/// underlying errors are shared behind an [`Arc`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("storage error: {0}")]
    Storage(#[source] Arc<redb::Error>),
    /// A file operation failed.
    #[error("storage error: {0}")]
    Io(#[source] Arc<std::io::Error>),
    /// A blocking storage task failed (it panicked or was cancelled).
    #[error("storage error: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
    #[error("entry is {len} bytes; entries are at most 65535 bytes")]
    EntryTooLarge { len: usize },
    #[error("the log is overloaded; retry later")]
    Overloaded,
    /// The entry is not one this log takes (HTTP 400).
    #[error("{0}")]
    Rejected(String),
    /// A quota is spent (HTTP 429 with `Retry-After`).
    #[error("{who} is over its quota of {quota}; retry in {} s", retry_secs(.retry_after))]
    Quota {
        who: String,
        quota: String,
        retry_after: std::time::Duration,
    },
    /// The disk budget is spent (HTTP 507).
    #[error(
        "the log is full: it stores {used} bytes and its budget is {budget} bytes (--log-max-bytes); \
         entries already logged stay readable and provable"
    )]
    Full { used: u64, budget: u64 },
    #[error("the log is shutting down")]
    ShuttingDown,
    #[error("the database belongs to {found}, not {expected}")]
    WrongDatabase { expected: String, found: String },
    #[error("corrupt database: {0}")]
    Corrupt(String),
    #[error("witness {name}: {msg}")]
    Witness { name: String, msg: String },
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error(transparent)]
    Tlog(#[from] agora_tlog::Error),
    #[error(transparent)]
    Core(#[from] agora_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Storage(Arc::new(redb::Error::from(e)))
            }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(Arc::new(e))
    }
}

/// Whole seconds to wait, rounded up, at least 1 (for `Retry-After`).
pub fn retry_secs(d: &std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
