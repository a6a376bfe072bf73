//! Models on disk for Agora: the content-addressed store (`$AGORA_HOME/models`), the catalog of
//! models known by name, and the sources they are fetched from (a Python package, a zip, HTTP).
//!
//! Knows files and downloads, not inference: a node opens a GGUF from here and hands its path to
//! an engine (`agora-llama`).

pub mod architectures;
pub mod catalog;
pub mod chunks;
pub mod gguf;
pub mod store;

pub use catalog::DEFAULT_MODEL;
pub use store::{ModelStore, StoreError};
