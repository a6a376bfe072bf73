//! HTTP for the transparency-log roles: the log's write and tlog-tiles read API, the witness's
//! tlog-witness API and evidence reads, and the blocking clients the CLI uses (`ureq`); load
//! generators use [`crate::keepalive::Conn`].

pub mod client;
pub mod server;

pub use client::{HttpWitnessTransport, LogClient};
pub use server::{log_router, witness_router};

/// Errors of the tlog HTTP clients.
#[derive(Debug, thiserror::Error)]
pub enum TlogHttpError {
    #[error("{url}: {msg}")]
    Transport { url: String, msg: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: unexpected response: {msg}")]
    Response { url: String, msg: String },
    #[error(transparent)]
    Tlog(#[from] agora_tlog::Error),
}

pub type Result<T, E = TlogHttpError> = std::result::Result<T, E>;
