//! Datasets on disk (the I/O half of the curriculum; the proofs themselves are `agora-data`'s):
//! streaming ingest of JSON Lines and text files, plain or compressed ([`input`]), the store of
//! versions with their zstd shards and the leaves of both trees ([`store`]), and proofs made
//! from those leaves on disk ([`leaves`]) in bounded memory whatever the dataset's size.
//! [`croissant`] exports a version as a Croissant 1.1 dataset and imports one.
#![warn(missing_docs)]

pub mod croissant;
pub mod input;
pub mod leaves;
pub mod store;

pub use store::{DatasetStore, Manifest, Meta, StoreError};
