//! Datasets as the node serves them: the `dataset` statement of a stored version, proof files,
//! and the read-only HTTP catalog (`/agora/v1/datasets…`) over the node's dataset store.

use std::path::Path;

use agora_api::error::ApiError;
use agora_api::tlog::LogClient;
use agora_core::statement::{
    Contribution, DatasetPredicate, DigestSet, Sha256, Statement, Subject,
};
use agora_datastore::store::Manifest;
use agora_datastore::{DatasetStore, StoreError};
use serde_json::{Value, json};
use tracing::warn;

/// The statement of a version, as signed (DSSE envelope JSON), beside the version.
pub const STATEMENT_FILE: &str = "statement.json";
/// Where the statement was logged: `{"url", "index"}`.
pub const LOG_FILE: &str = "log.json";
/// The format tag of proof files.
pub use agora_data::file::PROOF_FORMAT;

/// Why a dataset's statement or proof cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The store refused (no such dataset or id, a damaged file…).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The version has no signed statement beside it.
    #[error("{0} has no signed statement (was it added by this version of agora?)")]
    Unsigned(String),
    /// A file beside the version is not what it should be.
    #[error("the stored dataset is damaged: {0}")]
    Manifest(String),
}

/// The `dataset` statement of a stored version.
pub fn statement(m: &Manifest) -> Result<Statement, DatasetError> {
    let hash = |hex_str: &str| -> Result<Sha256, DatasetError> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut b)
            .map_err(|_| DatasetError::Manifest(format!("{hex_str:?} is not a digest")))?;
        Ok(Sha256(b))
    };
    let subject = m
        .shards
        .iter()
        .map(|s| {
            Ok(Subject {
                name: format!("{}.zst", s.sha256),
                digest: DigestSet {
                    sha256: hash(&s.sha256)?,
                },
            })
        })
        .collect::<Result<Vec<_>, DatasetError>>()?;
    Ok(Statement::Dataset {
        subject,
        predicate: DatasetPredicate {
            name: m.name.clone(),
            version: m.version,
            license: m.license.clone(),
            source: m.source.clone(),
            records_root: hash(&m.record_root)?,
            ids_root: Some(hash(&m.id_root)?),
            records: m.records,
            size: m.bytes,
            derived_from: m.derived_from.clone(),
            contributors: m
                .contributors
                .iter()
                .map(|c| Contribution {
                    key: c.key.clone(),
                    label: c.label.clone(),
                    records: c.records,
                })
                .collect(),
        },
    })
}

/// The proof file (`agora-dataset-proof/1`) for the record with id `id` of a stored version,
/// or with `absent` for that id's absence: the statement as signed, the proof, and the
/// statement's tlog-proof when it was logged and the log can be reached.
pub fn proof_file(
    store: &DatasetStore,
    m: &Manifest,
    id: &str,
    absent: bool,
) -> Result<Value, DatasetError> {
    let statement = store
        .attached(m, STATEMENT_FILE)?
        .ok_or_else(|| DatasetError::Unsigned(m.label()))?;
    let statement = String::from_utf8(statement)
        .map_err(|_| DatasetError::Manifest("the stored statement is not UTF-8".into()))?;
    let mut out = json!({"format": PROOF_FORMAT, "dataset": m.label(), "statement": statement});
    if absent {
        out["absent"] = store.prove_absent(m, id)?.to_json();
    } else {
        out["present"] = store.prove(m, id)?.to_json();
    }
    if let Some(log) = store.attached(m, LOG_FILE)? {
        let log: Value = serde_json::from_slice(&log)
            .map_err(|e| DatasetError::Manifest(format!("log.json: {e}")))?;
        let (Some(url), Some(index)) = (log["url"].as_str(), log["index"].as_u64()) else {
            return Err(DatasetError::Manifest(
                "log.json has no url and index".into(),
            ));
        };
        match log_proof(url, index) {
            Ok(p) => out["log"] = json!({"url": url, "index": index, "tlog_proof": p}),
            Err(e) => warn!(
                "the statement's log proof could not be fetched from {url} ({e}); the proof file has none"
            ),
        }
    }
    Ok(out)
}

/// The tlog-proof (text) of entry `index` of the log at `url` under its current checkpoint
/// (not verified here: whoever checks the proof file checks it against their policy).
pub(crate) fn log_proof(url: &str, index: u64) -> Result<String, agora_api::tlog::TlogHttpError> {
    let client = LogClient::new(url);
    let sc = agora_tlog::checkpoint::SignedCheckpoint::parse(&client.checkpoint()?)?;
    let p = client.tlog_proof(index, sc)?;
    Ok(String::from_utf8_lossy(&p.to_bytes()).to_string())
}

fn api_error(e: DatasetError) -> ApiError {
    match e {
        DatasetError::Store(
            StoreError::NotFound(_) | StoreError::NoSuchId { .. } | StoreError::BadName(_),
        ) => ApiError::not_found(e.to_string()),
        DatasetError::Store(StoreError::BadVersion(_)) => ApiError::invalid(e.to_string(), None),
        DatasetError::Store(StoreError::Present { .. }) => {
            ApiError::invalid(e.to_string(), Some("absent")).with_code("present")
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// The node's dataset store, served read-only over HTTP.
pub struct Catalog {
    store: DatasetStore,
}

impl Catalog {
    /// The datasets under `home` (`$AGORA_HOME/datasets`).
    pub fn new(home: &Path) -> Self {
        Catalog {
            store: DatasetStore::open(&home.join("datasets")),
        }
    }
}

impl agora_api::datasets::DatasetCatalog for Catalog {
    fn list(&self) -> Result<Value, ApiError> {
        let names = self.store.names().map_err(|e| api_error(e.into()))?;
        let mut out = Vec::new();
        for n in names {
            let m = self
                .store
                .manifest(&n, None)
                .map_err(|e| api_error(e.into()))?;
            let versions = self.store.versions(&n).map_err(|e| api_error(e.into()))?;
            out.push(json!({"name": n, "versions": versions, "latest": m}));
        }
        Ok(json!({"datasets": out}))
    }

    fn show(&self, dataset: &str) -> Result<Value, ApiError> {
        let m = self.store.find(dataset).map_err(|e| api_error(e.into()))?;
        let statement = self
            .store
            .attached(&m, STATEMENT_FILE)
            .map_err(|e| api_error(e.into()))?
            .map(|b| String::from_utf8_lossy(&b).to_string());
        let log = self
            .store
            .attached(&m, LOG_FILE)
            .map_err(|e| api_error(e.into()))?
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let versions = self
            .store
            .versions(&m.name)
            .map_err(|e| api_error(e.into()))?;
        Ok(json!({"manifest": m, "versions": versions, "statement": statement, "log": log}))
    }

    fn proof(&self, dataset: &str, id: &str, absent: bool) -> Result<Value, ApiError> {
        let m = self.store.find(dataset).map_err(|e| api_error(e.into()))?;
        proof_file(&self.store, &m, id, absent).map_err(api_error)
    }
}
