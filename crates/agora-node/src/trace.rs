//! Tracing texts back to the datasets of the node's store: building a version's trace index
//! (`agora dataset index`), and answering a trace (`agora trace`, `POST /agora/v1/trace`) with
//! every span confirmed against its record's text and every record with its inclusion proof.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agora_api::error::ApiError;
use agora_core::statement::Sha256;
use agora_datastore::store::{Manifest, parse_ref};
use agora_datastore::{DatasetStore, StoreError};
use agora_trace::report::{
    DatasetRef, LogRef, MAX_PROOF_BYTES, MAX_SPANS, Request, Trace, TracedRecord, TracedSpan,
    record_key, text_sha256,
};
use agora_trace::{Builder, Expect, Header, Index, IndexError, Tokenize};
use tracing::warn;

use crate::datasets::{LOG_FILE, STATEMENT_FILE};

/// A version's trace index, beside its shards.
pub const INDEX_FILE: &str = "trace.idx";
/// Most bytes of records one trace reads (to confirm spans and prove them), per dataset.
const MAX_RECORD_BYTES: usize = 64 << 20;
/// Text tokenized per batch while building an index.
const BATCH_BYTES: usize = 8 << 20;

/// Finds the tokenizer of a model by its weights' sha256 (the caller's model store).
pub trait Tokenizers: Send + Sync {
    /// The tokenizer of the model with these weights.
    fn get(&self, weights: &Sha256) -> Result<Arc<dyn Tokenize>, String>;
}

/// Why a trace or an index cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The index is missing, damaged or stale.
    #[error("{dataset}: {source}; rebuild it with `agora dataset index {dataset}`")]
    Index {
        /// The dataset.
        dataset: String,
        /// What is wrong.
        #[source]
        source: IndexError,
    },
    /// The version has no index.
    #[error("{0} has no trace index: build it with `agora dataset index {0}`")]
    NoIndex(String),
    /// No dataset here has an index.
    #[error("no dataset in this store has a trace index (`agora dataset index NAME`)")]
    Nothing,
    /// The version has no signed statement: what it finds could not be checked.
    #[error("{0} has no signed statement: a trace through it could not be checked")]
    Unsigned(String),
    /// The tokenizer the index names is not here.
    #[error(
        "the tokenizer of {dataset}'s index (model sha256:{weights}) is not available: {reason}"
    )]
    Tokenizer {
        /// The dataset.
        dataset: String,
        /// The model's weights.
        weights: String,
        /// Why.
        reason: String,
    },
    /// A file beside the version is not what it should be.
    #[error("the stored dataset is damaged: {0}")]
    Damaged(String),
}

/// Where a version's index is.
pub fn index_path(store: &DatasetStore, m: &Manifest) -> PathBuf {
    store.version_dir(m).join(INDEX_FILE)
}

fn expect(m: &Manifest) -> Result<Expect, TraceError> {
    let mut root = [0u8; 32];
    hex::decode_to_slice(&m.record_root, &mut root)
        .map_err(|_| TraceError::Damaged(format!("record root {:?}", m.record_root)))?;
    Ok(Expect {
        dataset: m.label(),
        records: m.records,
        record_root: root,
    })
}

/// Opens a version's index.
pub fn open_index(store: &DatasetStore, m: &Manifest) -> Result<Index, TraceError> {
    let path = index_path(store, m);
    if !path.exists() {
        return Err(TraceError::NoIndex(m.label()));
    }
    Index::open(&path, &expect(m)?).map_err(|source| TraceError::Index {
        dataset: m.label(),
        source,
    })
}

/// How long each phase of an index build took, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildTimes {
    /// Reading the records and tokenizing them.
    pub tokenize: f64,
    /// Sorting the suffixes.
    pub sort: f64,
    /// Writing and syncing the file.
    pub write: f64,
}

/// Builds a version's index with `tok` (the tokenizer of the model whose weights are
/// `weights`) on `threads` threads; `progress(records, bytes)` is told as it goes. Memory: 6
/// bytes per token of the version, plus one batch of text.
pub fn build_index(
    store: &DatasetStore,
    m: &Manifest,
    tok: &dyn Tokenize,
    weights: &Sha256,
    threads: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Header, BuildTimes), TraceError> {
    let t0 = std::time::Instant::now();
    let ierr = |source| TraceError::Index {
        dataset: m.label(),
        source,
    };
    let mut b = Builder::new(tok.n_vocab()).map_err(ierr)?;
    let mut batch: Vec<String> = Vec::new();
    let mut batch_bytes = 0usize;
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut failed: Option<IndexError> = None;
    let flush = |batch: &mut Vec<String>, b: &mut Builder| -> Result<(), IndexError> {
        for toks in agora_trace::tokenize_all(tok, batch, threads) {
            b.push(&toks)?;
        }
        batch.clear();
        Ok(())
    };
    let read = store.for_each_record(m, &mut |r| {
        records += 1;
        bytes += r.text.len() as u64;
        batch_bytes += r.text.len();
        batch.push(r.text);
        if batch_bytes >= BATCH_BYTES {
            batch_bytes = 0;
            if let Err(e) = flush(&mut batch, &mut b) {
                failed = Some(e);
                return Err(StoreError::Corrupt("stopped".into()));
            }
            progress(records, bytes);
        }
        Ok(())
    });
    if let Err(e) = read {
        return Err(match failed.take() {
            Some(f) => ierr(f),
            None => TraceError::Store(e),
        });
    }
    flush(&mut batch, &mut b).map_err(ierr)?;
    progress(records, bytes);
    let tokenize = t0.elapsed().as_secs_f64();
    let e = expect(m)?;
    let (h, [sort, write]) = b
        .finish_timed(&index_path(store, m), &e.dataset, e.record_root, weights.0)
        .map_err(ierr)?;
    Ok((
        h,
        BuildTimes {
            tokenize,
            sort,
            write,
        },
    ))
}

/// Answers traces from a dataset store.
pub struct Tracer {
    store: DatasetStore,
    tokenizers: Arc<dyn Tokenizers>,
}

impl Tracer {
    /// The datasets under `home` (`$AGORA_HOME/datasets`), tokenized by `tokenizers`.
    pub fn new(home: &Path, tokenizers: Arc<dyn Tokenizers>) -> Self {
        Tracer {
            store: DatasetStore::open(&home.join("datasets")),
            tokenizers,
        }
    }

    /// The versions a request names (latest when no version is given), or every dataset's
    /// latest version that has an index.
    fn versions(&self, names: &[String]) -> Result<Vec<Manifest>, TraceError> {
        if !names.is_empty() {
            return names
                .iter()
                .map(|n| {
                    let (name, version) = parse_ref(n)?;
                    Ok(self.store.manifest(name, version)?)
                })
                .collect();
        }
        let mut out = Vec::new();
        for n in self.store.names()? {
            let m = self.store.manifest(&n, None)?;
            if index_path(&self.store, &m).exists() {
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err(TraceError::Nothing);
        }
        Ok(out)
    }

    /// Traces `req.text` through the datasets it names.
    pub fn trace(&self, req: &Request) -> Result<Trace, TraceError> {
        let opts = req.options();
        let mut trace = Trace {
            format: agora_trace::report::FORMAT.into(),
            text_sha256: text_sha256(&req.text),
            min_tokens: opts.min_tokens,
            max_count: opts.max_count,
            datasets: BTreeMap::new(),
            spans: Vec::new(),
            records: BTreeMap::new(),
            notes: Vec::new(),
        };
        let mut state = (HashMap::new(), 0usize);
        for m in self.versions(&req.datasets)? {
            self.trace_version(&m, req, &mut trace, &mut state)?;
        }
        // Text order; the same stretch found in several datasets is one span.
        trace.spans.sort_by_key(|s| (s.start, s.end));
        trace.spans.dedup_by(|b, a| {
            if (a.start, a.end) == (b.start, b.end) {
                a.records.append(&mut b.records);
                a.count += b.count;
                true
            } else {
                false
            }
        });
        if trace.spans.len() > MAX_SPANS {
            trace.notes.push(format!(
                "{} spans found; the first {MAX_SPANS} are reported",
                trace.spans.len()
            ));
            trace.spans.truncate(MAX_SPANS);
        }
        if trace.records.values().any(|r| r.proof.is_none()) {
            trace.notes.push(format!(
                "records beyond {} MB of proofs are cited without one (`agora dataset prove` gives it)",
                MAX_PROOF_BYTES >> 20
            ));
        }
        Ok(trace)
    }

    /// Traces `req.text` through one version, adding its spans, records and statement to
    /// `trace`; `state` holds the tokenizers loaded so far and the proof bytes spent.
    fn trace_version(
        &self,
        m: &Manifest,
        req: &Request,
        trace: &mut Trace,
        state: &mut (HashMap<[u8; 32], Arc<dyn Tokenize>>, usize),
    ) -> Result<(), TraceError> {
        let opts = req.options();
        let (tokenizers, proof_bytes) = state;
        let label = m.label();
        let statement = self
            .store
            .attached(m, STATEMENT_FILE)?
            .ok_or_else(|| TraceError::Unsigned(label.clone()))?;
        let statement = String::from_utf8(statement)
            .map_err(|_| TraceError::Damaged("the stored statement is not UTF-8".into()))?;
        let ix = open_index(&self.store, m)?;
        let weights = ix.header().tokenizer;
        let tok = match tokenizers.get(&weights) {
            Some(t) => Arc::clone(t),
            None => {
                let t = self.tokenizers.get(&Sha256(weights)).map_err(|reason| {
                    TraceError::Tokenizer {
                        dataset: label.clone(),
                        weights: hex::encode(weights),
                        reason,
                    }
                })?;
                tokenizers.insert(weights, Arc::clone(&t));
                t
            }
        };
        let mut found = agora_trace::find(&ix, tok.as_ref(), &req.text, opts);
        // Bounded work whatever the text: at most MAX_SPANS spans' records are read.
        if found.len() > MAX_SPANS {
            trace.notes.push(format!(
                "{label}: {} spans found; the first {MAX_SPANS} are reported",
                found.len()
            ));
            found.truncate(MAX_SPANS);
        }
        // Read every cited record once; keep only occurrences its text confirms.
        let wanted: Vec<u64> = found
            .iter()
            .flat_map(|f| f.occurrences.iter().map(|o| o.0))
            .collect();
        let records = self.store.records_at(m, &wanted, MAX_RECORD_BYTES)?;
        if records.iter().any(Option::is_none) {
            trace.notes.push(format!(
                "{label}: the cited records exceed {} MB; matches in the others were left out",
                MAX_RECORD_BYTES >> 20
            ));
        }
        let by_index: BTreeMap<u64, &agora_data::Record> = wanted
            .iter()
            .copied()
            .zip(records.iter())
            .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
            .collect();
        let mut damaged = false;
        for f in found {
            let mut cited = Vec::new();
            for &(r, _) in &f.occurrences {
                let Some(rec) = by_index.get(&r) else {
                    continue;
                };
                if !rec.text.contains(&f.text) {
                    damaged = true;
                    continue;
                }
                let key = record_key(&label, r);
                if !cited.contains(&key) {
                    cited.push(key.clone());
                }
                if trace.records.contains_key(&key) {
                    continue;
                }
                let proof = if *proof_bytes < MAX_PROOF_BYTES {
                    let p = self.store.prove_index(m, r, rec)?;
                    *proof_bytes += 2 * p.record.len() + 64 * p.path.len();
                    Some(p.to_json())
                } else {
                    None
                };
                trace.records.insert(
                    key,
                    TracedRecord {
                        dataset: label.clone(),
                        id: rec.id.clone(),
                        index: r,
                        proof,
                    },
                );
            }
            if cited.is_empty() {
                continue;
            }
            trace.spans.push(TracedSpan {
                start: f.start,
                end: f.end,
                text: f.text,
                tokens: f.tokens,
                count: f.count,
                records: cited,
            });
        }
        if damaged {
            warn!(
                "{label}: the trace index points at records without the span; it may be damaged (`agora dataset index {label}` rebuilds it)"
            );
            trace.notes.push(format!(
                "{label}: some matches were not confirmed by the records' text and were left out"
            ));
        }
        trace.datasets.insert(
            label.clone(),
            DatasetRef {
                statement,
                tokenizer: format!("sha256:{}", hex::encode(weights)),
                log: self.log_ref(m),
            },
        );
        Ok(())
    }

    /// Where the version's statement was logged, with its current proof (none when it was not
    /// logged or the log cannot be reached: the client then cannot check logging).
    fn log_ref(&self, m: &Manifest) -> Option<LogRef> {
        let log = self.store.attached(m, LOG_FILE).ok()??;
        let log: serde_json::Value = serde_json::from_slice(&log).ok()?;
        let (url, index) = (log["url"].as_str()?, log["index"].as_u64()?);
        match crate::datasets::log_proof(url, index) {
            Ok(p) => Some(LogRef {
                url: url.to_string(),
                index,
                tlog_proof: p,
            }),
            Err(e) => {
                warn!(
                    "{}: the statement's log proof could not be fetched from {url}: {e}",
                    m.label()
                );
                None
            }
        }
    }
}

fn api_error(e: TraceError) -> ApiError {
    match &e {
        TraceError::Store(StoreError::NotFound(_) | StoreError::BadName(_))
        | TraceError::NoIndex(_)
        | TraceError::Nothing => ApiError::not_found(e.to_string()),
        TraceError::Store(StoreError::BadVersion(_)) => ApiError::invalid(e.to_string(), None),
        _ => ApiError::internal(e.to_string()),
    }
}

impl agora_api::trace::TraceService for Tracer {
    fn trace(&self, body: &[u8]) -> Result<serde_json::Value, ApiError> {
        let req = Request::parse(body).map_err(|e| ApiError::invalid(e.to_string(), None))?;
        let t = Tracer::trace(self, &req).map_err(api_error)?;
        serde_json::to_value(&t).map_err(|e| ApiError::internal(e.to_string()))
    }
}
