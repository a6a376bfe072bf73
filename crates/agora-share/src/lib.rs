//! Model files between peers, so that a community cut off from every index and hub still gets
//! its weights: every node offers the models in its store (provider records on the DHT, keyed
//! by the file's SHA-256), and a node that lacks one fetches it from several of them at once.
//!
//! - [`proto`]: the messages of `/agora/<net>/model/1` (a chunk list or one chunk per request).
//! - [`serve`]: answering them from the store, within a concurrency bound and an upload limit.
//! - [`fetch`]: downloading, each 1 MiB chunk checked against the chunk list (itself checked
//!   against the chunk root the catalog or the model's log statement gives) before it is
//!   written; a peer that sends wrong bytes, too many, refuses what it offered or stalls is
//!   dropped (and banned when it lied) and the others go on; a partial file survives for the
//!   next try; the store gets the file only once its whole SHA-256 matches.
//!
//! Chunking and roots: [`agora_models::chunks`].

#[cfg(feature = "cheat")]
pub mod cheat;
pub mod fetch;
pub mod proto;
pub mod serve;

pub use fetch::{FetchConfig, FetchError, Report, Want, fetch};
pub use serve::Sharing;
