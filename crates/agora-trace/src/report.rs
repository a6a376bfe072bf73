//! `agora-trace/1`: what a trace answers, and how whoever receives it checks it.
//!
//! ```json
//! {"format": "agora-trace/1",
//!  "text_sha256": "…",                 // SHA-256 of the exact UTF-8 bytes traced
//!  "min_tokens": 8, "max_count": 10,
//!  "datasets": {"fortunes@1": {"statement": "<DSSE envelope as signed and logged>",
//!                              "tokenizer": "sha256:…",
//!                              "log": {"url": "…", "index": 3, "tlog_proof": "…"}}},
//!  "spans": [{"start": 0, "end": 74, "text": "…", "tokens": 17, "count": 1,
//!             "records": ["fortunes@1#1234"]}],
//!  "records": {"fortunes@1#1234": {"dataset": "fortunes@1", "id": "…", "index": 1234,
//!                                   "proof": {RecordProof}}},
//!  "notes": ["…"]}
//! ```
//!
//! `start`/`end` are byte offsets in the text. [`verify`] trusts none of it: each dataset's
//! statement must be signed and be that dataset version; each record's proof must verify
//! against that statement's record root and be the record named; each span's text must occur
//! in every record it cites and, when the text is at hand, be the text at its offsets; with a
//! policy, each statement's log proof must verify under a checkpoint the policy trusts. Any
//! failure rejects the whole answer: a server that lies is caught, not partly believed.

use std::collections::{BTreeMap, BTreeSet};

use agora_core::Envelope;
use agora_core::statement::{Contribution, Statement};
use agora_data::{RecordProof, Roots};
use agora_tlog::hash::{Hash, leaf_hash};
use agora_tlog::policy::Policy;
use agora_tlog::proof::TlogProof;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The format tag.
pub const FORMAT: &str = "agora-trace/1";
/// The format tag of [`Attribution`].
pub const ATTRIBUTION_FORMAT: &str = "agora-attribution/1";
/// Longest text traced, in bytes.
pub const MAX_TRACE_TEXT: usize = 64 << 10;
/// Most spans one trace reports.
pub const MAX_SPANS: usize = 256;
/// Most records cited per span (`max_count` is capped to it).
pub const MAX_RECORDS_PER_SPAN: u64 = 100;
/// Most bytes of record proofs one trace carries; records beyond are cited without proof.
pub const MAX_PROOF_BYTES: usize = 32 << 20;
/// Largest report read.
pub const MAX_REPORT_BYTES: usize = 3 * MAX_PROOF_BYTES;

/// A trace request (`POST /agora/v1/trace`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The text (at most [`MAX_TRACE_TEXT`] bytes).
    pub text: String,
    /// `name` or `name@version` of the datasets to search (default: every indexed dataset).
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Shortest span, in tokens (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tokens: Option<usize>,
    /// Most occurrences of a span (default 10, at most [`MAX_RECORDS_PER_SPAN`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not the JSON of a request.
    #[error("not a trace request: {0}")]
    Malformed(String),
    /// Empty text.
    #[error("the text is empty")]
    Empty,
    /// Too long a text.
    #[error("the text is {0} bytes; at most {MAX_TRACE_TEXT} are traced")]
    TooLong(usize),
    /// Options out of range.
    #[error("{0}")]
    Range(String),
    /// Too many datasets named.
    #[error("at most 64 datasets per trace")]
    TooManyDatasets,
}

impl Request {
    /// Parses and checks a request body.
    pub fn parse(body: &[u8]) -> Result<Request, RequestError> {
        let r: Request =
            serde_json::from_slice(body).map_err(|e| RequestError::Malformed(e.to_string()))?;
        r.check()?;
        Ok(r)
    }

    /// Checks bounds.
    pub fn check(&self) -> Result<(), RequestError> {
        if self.text.trim().is_empty() {
            return Err(RequestError::Empty);
        }
        if self.text.len() > MAX_TRACE_TEXT {
            return Err(RequestError::TooLong(self.text.len()));
        }
        if self.datasets.len() > 64 {
            return Err(RequestError::TooManyDatasets);
        }
        if let Some(m) = self.min_tokens
            && !(1..=crate::search::MAX_SPAN_TOKENS).contains(&m)
        {
            return Err(RequestError::Range(format!(
                "min_tokens must be 1..={}",
                crate::search::MAX_SPAN_TOKENS
            )));
        }
        if let Some(c) = self.max_count
            && !(1..=MAX_RECORDS_PER_SPAN).contains(&c)
        {
            return Err(RequestError::Range(format!(
                "max_count must be 1..={MAX_RECORDS_PER_SPAN}"
            )));
        }
        Ok(())
    }

    /// The search options asked for.
    pub fn options(&self) -> crate::search::Options {
        let d = crate::search::Options::default();
        crate::search::Options {
            min_tokens: self.min_tokens.unwrap_or(d.min_tokens),
            max_count: self.max_count.unwrap_or(d.max_count),
        }
    }
}

/// Where a dataset's statement was logged, with its proof.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogRef {
    /// The log's URL.
    pub url: String,
    /// The statement's index in it.
    pub index: u64,
    /// Its tlog-proof (C2SP text) under the log's checkpoint when the trace was made.
    pub tlog_proof: String,
}

/// A dataset searched.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatasetRef {
    /// Its `dataset` statement, the DSSE envelope JSON exactly as signed and logged.
    pub statement: String,
    /// `sha256:HEX` of the model whose tokenizer its index uses.
    pub tokenizer: String,
    /// Where the statement is logged, when it is and the log could be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogRef>,
}

/// A span of the text found verbatim in records.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TracedSpan {
    /// Byte offset of its start in the text.
    pub start: usize,
    /// Byte offset of its end.
    pub end: usize,
    /// Its text.
    pub text: String,
    /// Its length in the tokenizer's tokens.
    pub tokens: usize,
    /// How many times it occurs in the dataset(s) (as the index counts).
    pub count: u64,
    /// Keys of the records it occurs in (`name@version#index`).
    pub records: Vec<String>,
}

/// A record cited by spans.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TracedRecord {
    /// `name@version`.
    pub dataset: String,
    /// The record's id.
    pub id: String,
    /// Its index in the dataset (record order).
    pub index: u64,
    /// Its inclusion proof ([`RecordProof`] JSON), unless the size limit left it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Value>,
}

/// A trace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Trace {
    /// [`FORMAT`].
    pub format: String,
    /// SHA-256 (hex) of the text's bytes.
    pub text_sha256: String,
    /// Shortest span kept, in tokens.
    pub min_tokens: usize,
    /// Most occurrences of a kept span.
    pub max_count: u64,
    /// The datasets searched, by `name@version`.
    pub datasets: BTreeMap<String, DatasetRef>,
    /// The spans, in text order.
    pub spans: Vec<TracedSpan>,
    /// The records they cite.
    pub records: BTreeMap<String, TracedRecord>,
    /// What the tracer wants the reader to know (records cited without proof…).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The key of a record in [`Trace::records`].
pub fn record_key(dataset: &str, index: u64) -> String {
    format!("{dataset}#{index}")
}

/// SHA-256 (hex) of a text's bytes.
pub fn text_sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Why a trace is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// Not a trace this code reads.
    #[error("not an {FORMAT} report: {0}")]
    Format(String),
    /// The trace is of another text.
    #[error("the trace is of another text (its sha256 differs)")]
    OtherText,
    /// A dataset's statement does not check.
    #[error("dataset {dataset}: {reason}")]
    Statement {
        /// The dataset.
        dataset: String,
        /// Why.
        reason: String,
    },
    /// A record's proof does not check.
    #[error("record {key}: {reason}")]
    Record {
        /// The record.
        key: String,
        /// Why.
        reason: String,
    },
    /// A span is not what it claims.
    #[error("span {start}..{end}: {reason}")]
    Span {
        /// Its start.
        start: usize,
        /// Its end.
        end: usize,
        /// Why.
        reason: String,
    },
    /// A statement's log proof does not check.
    #[error("dataset {dataset}: its log proof does not verify: {reason}")]
    Log {
        /// The dataset.
        dataset: String,
        /// Why.
        reason: String,
    },
}

/// A dataset as its checked statement says.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CheckedDataset {
    /// `name@version`.
    pub dataset: String,
    /// Who signed its statement.
    pub signer: String,
    /// Its SPDX licence.
    pub license: String,
    /// Where its data comes from.
    pub source: String,
    /// Its records.
    pub records: u64,
    /// Its contributors with their record counts.
    pub contributors: Vec<Contribution>,
    /// `name@version` it derives from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<String>,
    /// How its statement's place in the log was checked, in words (`None`: not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logged: Option<String>,
}

/// A record proven present.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CheckedRecord {
    /// `name@version`.
    pub dataset: String,
    /// Its id.
    pub id: String,
    /// Its index.
    pub index: u64,
    /// Whether its inclusion proof was present and verified.
    pub proven: bool,
}

/// A span whose claims checked.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CheckedSpan {
    /// Byte offsets in the text.
    pub start: usize,
    /// End.
    pub end: usize,
    /// Its text.
    pub text: String,
    /// Tokens (as the tracer counted them).
    pub tokens: usize,
    /// Occurrences (as the tracer counted them).
    pub count: u64,
    /// The records, each proven or cited without proof.
    pub records: Vec<CheckedRecord>,
}

/// What [`verify`] established.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Checked {
    /// The datasets, by `name@version`.
    pub datasets: BTreeMap<String, CheckedDataset>,
    /// The spans.
    pub spans: Vec<CheckedSpan>,
    /// Whether the text itself was compared (offsets and digest).
    pub text_checked: bool,
    /// Records cited without a proof.
    pub unproven: usize,
}

/// Checks one dataset's statement (and its log proof under `policy`): what it says and the
/// roots its records are checked against.
fn check_dataset(
    label: &str,
    d: &DatasetRef,
    policy: Option<&Policy>,
) -> Result<(CheckedDataset, Roots), TraceError> {
    let bad = |reason: String| TraceError::Statement {
        dataset: label.to_string(),
        reason,
    };
    let env = Envelope::from_json(d.statement.as_bytes())
        .map_err(|e| bad(format!("not a DSSE envelope: {e}")))?;
    let (signers, st) =
        Statement::open(&env).map_err(|e| bad(format!("signature does not verify: {e}")))?;
    let Statement::Dataset { predicate: p, .. } = st else {
        return Err(bad("not a dataset statement".into()));
    };
    let named = format!("{}@{}", p.name, p.version);
    if named != label {
        return Err(bad(format!("the statement is of {named}")));
    }
    let logged = match (policy, &d.log) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(TraceError::Log {
                dataset: label.to_string(),
                reason: "the trace carries no log proof for it".into(),
            });
        }
        (Some(policy), Some(l)) => {
            let lerr = |reason: String| TraceError::Log {
                dataset: label.to_string(),
                reason,
            };
            let p = TlogProof::parse(l.tlog_proof.as_bytes())
                .map_err(|e| lerr(format!("malformed: {e}")))?;
            let sc = p
                .verify(&leaf_hash(d.statement.as_bytes()), policy)
                .map_err(|e| lerr(e.to_string()))?;
            let witnesses = policy.cosigners(sc).map(|c| c.len()).unwrap_or(0);
            Some(format!(
                "entry {} of {} (checkpoint of {}, log signature and {witnesses} witness cosignature(s) verified)",
                p.index, sc.checkpoint.origin, sc.checkpoint.size
            ))
        }
    };
    let roots = Roots {
        records: p.records,
        record_root: Hash(p.records_root.0),
        id_root: Hash(p.ids_root.map(|h| h.0).unwrap_or([0; 32])),
    };
    let checked = CheckedDataset {
        dataset: label.to_string(),
        signer: signers.first().map(ToString::to_string).unwrap_or_default(),
        license: p.license,
        source: p.source,
        records: p.records,
        contributors: p.contributors,
        derived_from: p.derived_from,
        logged,
    };
    Ok((checked, roots))
}

/// Checks a trace (see the module's documentation). `text`, when given, must be the text
/// traced; `policy`, when given, is what every statement's log proof must satisfy (a statement
/// without one is then rejected).
pub fn verify(
    trace: &Trace,
    text: Option<&str>,
    policy: Option<&Policy>,
) -> Result<Checked, TraceError> {
    if trace.format != FORMAT {
        return Err(TraceError::Format(format!("format {:?}", trace.format)));
    }
    if trace.spans.len() > MAX_SPANS {
        return Err(TraceError::Format(format!(
            "{} spans (at most {MAX_SPANS})",
            trace.spans.len()
        )));
    }
    if let Some(t) = text
        && text_sha256(t) != trace.text_sha256
    {
        return Err(TraceError::OtherText);
    }
    // Datasets: signed statements of exactly the version named.
    let mut datasets = BTreeMap::new();
    let mut roots = BTreeMap::new();
    for (label, d) in &trace.datasets {
        let (checked, root) = check_dataset(label, d, policy)?;
        roots.insert(label.clone(), root);
        datasets.insert(label.clone(), checked);
    }
    // Records: each proof verifies and is the record named; its text is kept to check spans.
    let mut texts: BTreeMap<&str, Option<String>> = BTreeMap::new();
    for (key, r) in &trace.records {
        let bad = |reason: String| TraceError::Record {
            key: key.clone(),
            reason,
        };
        if *key != record_key(&r.dataset, r.index) {
            return Err(bad("its key does not name its dataset and index".into()));
        }
        let Some(root) = roots.get(&r.dataset) else {
            return Err(bad(format!("dataset {} is not in the trace", r.dataset)));
        };
        let text = match &r.proof {
            None => None,
            Some(p) => {
                let p = RecordProof::from_json(p).map_err(|e| bad(e.to_string()))?;
                if p.index != r.index {
                    return Err(bad(format!("the proof is of record {}", p.index)));
                }
                let rec = p
                    .verify_id(root, &r.id)
                    .map_err(|e| bad(format!("the inclusion proof does not verify: {e}")))?;
                Some(rec.text)
            }
        };
        texts.insert(key.as_str(), text);
    }
    // Spans: in order, at their offsets, in every record they cite.
    let mut spans = Vec::new();
    let mut unproven = BTreeSet::new();
    let mut last_start = None;
    for s in &trace.spans {
        let bad = |reason: String| TraceError::Span {
            start: s.start,
            end: s.end,
            reason,
        };
        if s.start >= s.end || s.text.len() != s.end - s.start {
            return Err(bad("its offsets do not match its text's length".into()));
        }
        if last_start.is_some_and(|l| s.start < l) {
            return Err(bad("spans are not in text order".into()));
        }
        last_start = Some(s.start);
        if let Some(t) = text
            && t.get(s.start..s.end) != Some(s.text.as_str())
        {
            return Err(bad("the text at its offsets is not its text".into()));
        }
        if s.records.is_empty() {
            return Err(bad("it cites no record".into()));
        }
        let mut records = Vec::new();
        for key in &s.records {
            let (Some(t), Some(r)) = (texts.get(key.as_str()), trace.records.get(key)) else {
                return Err(bad(format!(
                    "it cites {key}, which the trace does not hold"
                )));
            };
            match t {
                Some(t) if !t.contains(&s.text) => {
                    return Err(bad(format!("record {key} does not contain it")));
                }
                Some(_) => {}
                None => {
                    unproven.insert(key.clone());
                }
            }
            records.push(CheckedRecord {
                dataset: r.dataset.clone(),
                id: r.id.clone(),
                index: r.index,
                proven: t.is_some(),
            });
        }
        spans.push(CheckedSpan {
            start: s.start,
            end: s.end,
            text: s.text.clone(),
            tokens: s.tokens,
            count: s.count,
            records,
        });
    }
    Ok(Checked {
        datasets,
        spans,
        text_checked: text.is_some(),
        unproven: unproven.len(),
    })
}

/// Reads a report; checks its shape, not its claims (that is [`verify`]).
pub fn parse(bytes: &[u8]) -> Result<Trace, TraceError> {
    if bytes.len() > MAX_REPORT_BYTES {
        return Err(TraceError::Format(format!(
            "{} bytes (at most {MAX_REPORT_BYTES})",
            bytes.len()
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| TraceError::Format(e.to_string()))
}

/// Units of a text attributed to one contributor.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ContributorShare {
    /// Their key.
    pub key: String,
    /// Bytes of the text attributed to them.
    pub bytes: u64,
}

/// Units of a text attributed to one dataset.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DatasetShare {
    /// `name@version`.
    pub dataset: String,
    /// Its SPDX licence.
    pub license: String,
    /// Bytes of the text attributed to it.
    pub bytes: u64,
    /// Split among its contributors by their record counts.
    pub contributors: Vec<ContributorShare>,
}

/// The attribution hook: how much of a text traced spans attribute to which datasets and
/// contributors. A signal, not a decision — a community's rules say whether and how the credit
/// ledger uses it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Attribution {
    /// [`ATTRIBUTION_FORMAT`].
    pub format: &'static str,
    /// SHA-256 of the text.
    pub text_sha256: String,
    /// Bytes of the text.
    pub text_bytes: u64,
    /// Bytes of the text inside at least one span.
    pub covered_bytes: u64,
    /// Per dataset, most bytes first.
    pub datasets: Vec<DatasetShare>,
}

/// Splits `total` by `weights` in integers: floor shares, then the remainder one unit at a time
/// to the largest weights (ties: first in order). Sums to `total` exactly.
fn split(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut out: Vec<u64> = weights
        .iter()
        .map(|&w| (u128::from(total) * u128::from(w) / sum) as u64)
        .collect();
    let mut left = total - out.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| weights[b].cmp(&weights[a]).then(a.cmp(&b)));
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        if weights[i] > 0 {
            out[i] += 1;
            left -= 1;
        }
    }
    out
}

/// The attribution of a checked trace of `text_bytes` bytes: each byte of the text covered by
/// spans goes to the spans covering it (split equally, integer arithmetic as [`split`]), each
/// span's share to the datasets of the records it cites (equally per record), and each
/// dataset's share to its contributors by their record counts. Only proven records count.
pub fn attribution(checked: &Checked, text_sha256: &str, text_bytes: u64) -> Attribution {
    // Per byte, the spans covering it; per span, the bytes it is credited with.
    let mut per_span = vec![0u64; checked.spans.len()];
    let mut covered = 0u64;
    let mut bounds: Vec<usize> = checked
        .spans
        .iter()
        .flat_map(|s| [s.start, s.end])
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    for w in bounds.windows(2) {
        let (a, b) = (w[0], w[1]);
        let covering: Vec<usize> = (0..checked.spans.len())
            .filter(|&i| checked.spans[i].start <= a && checked.spans[i].end >= b)
            .filter(|&i| checked.spans[i].records.iter().any(|r| r.proven))
            .collect();
        if covering.is_empty() {
            continue;
        }
        let len = (b - a) as u64;
        covered += len;
        for (i, share) in covering.iter().zip(split(len, &vec![1; covering.len()])) {
            per_span[*i] += share;
        }
    }
    let mut per_dataset: BTreeMap<String, u64> = BTreeMap::new();
    for (s, &bytes) in checked.spans.iter().zip(&per_span) {
        let proven: Vec<&CheckedRecord> = s.records.iter().filter(|r| r.proven).collect();
        for (r, share) in proven.iter().zip(split(bytes, &vec![1; proven.len()])) {
            *per_dataset.entry(r.dataset.clone()).or_default() += share;
        }
    }
    let mut datasets: Vec<DatasetShare> = per_dataset
        .into_iter()
        .map(|(dataset, bytes)| {
            let d = checked.datasets.get(&dataset);
            let contributors = d.map(|d| d.contributors.clone()).unwrap_or_default();
            let weights: Vec<u64> = contributors.iter().map(|c| c.records).collect();
            let shares = split(bytes, &weights);
            DatasetShare {
                license: d.map(|d| d.license.clone()).unwrap_or_default(),
                contributors: contributors
                    .iter()
                    .zip(shares)
                    .map(|(c, bytes)| ContributorShare {
                        key: c.key.clone(),
                        bytes,
                    })
                    .collect(),
                dataset,
                bytes,
            }
        })
        .collect();
    datasets.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.dataset.cmp(&b.dataset)));
    Attribution {
        format: ATTRIBUTION_FORMAT,
        text_sha256: text_sha256.to_string(),
        text_bytes,
        covered_bytes: covered,
        datasets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sums_exactly_and_favours_the_largest() {
        assert_eq!(split(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(split(10, &[1, 3]), vec![2, 8]);
        assert_eq!(split(7, &[0, 0]), vec![0, 0]);
        assert_eq!(split(5, &[0, 2]), vec![0, 5]);
        assert_eq!(split(0, &[4, 4]), vec![0, 0]);
        for total in [0u64, 1, 17, 1000] {
            for w in [vec![1u64], vec![3, 5, 7], vec![1, 0, 9, 9]] {
                assert_eq!(split(total, &w).iter().sum::<u64>(), total);
            }
        }
    }

    #[test]
    fn requests_are_bounded() {
        assert!(Request::parse(br#"{"text":"hello"}"#).is_ok());
        assert_eq!(
            Request::parse(br#"{"text":"  "}"#),
            Err(RequestError::Empty)
        );
        assert!(matches!(
            Request::parse(br#"{"text":"a","max_count":0}"#),
            Err(RequestError::Range(_))
        ));
        assert!(matches!(
            Request::parse(br#"{"text":"a","min_tokens":0}"#),
            Err(RequestError::Range(_))
        ));
        assert!(matches!(
            Request::parse(br#"{"text":"a","extra":1}"#),
            Err(RequestError::Malformed(_))
        ));
        let long = format!(r#"{{"text":"{}"}}"#, "a".repeat(MAX_TRACE_TEXT + 1));
        assert!(matches!(
            Request::parse(long.as_bytes()),
            Err(RequestError::TooLong(_))
        ));
    }
}
