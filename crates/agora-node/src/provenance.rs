//! A model's provenance: its manifest (`model` statement), the model it was trained from, the
//! datasets of its mix and what they were derived from, each found in a log and checked
//! against the statement that names it.
//!
//! [`build`] follows the links from a model's weights digest, reading statements through
//! [`Entries`] (by log index) and finding them through a [`Locator`] (by what they are about).
//! Every link is checked: the entry at a mix's index must be the dataset statement whose payload
//! digest the manifest names, with the name it names; a base model's statement must be about the
//! base weights. Whatever cannot be followed or does not check is kept as a problem on its node,
//! in words, never dropped: an unprovable claim stays visible. Whether each statement is really
//! in the log (its inclusion under a checkpoint) is the caller's to check, with [`Tree::indices`]:
//! the node serving provenance is not trusted for it.
//!
//! [`LogIndex`] is the node's locator over its own log: it scans new entries on each query and
//! keeps the model and dataset statements' indices (bounded).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use agora_core::statement::{DatasetPredicate, ModelPredicate, Sha256, Statement};
use agora_core::{Envelope, PeerId};
use serde::Serialize;

/// How deep base models and derived-from datasets are followed.
pub const MAX_DEPTH: usize = 16;
/// Most model and dataset statements a [`LogIndex`] keeps.
pub const MAX_INDEXED: usize = 100_000;

pub use crate::entries::Entries;

/// Finds statements by what they are about.
pub trait Locator {
    /// Indices of `model` statements whose subject is these weights.
    fn models(&self, weights: &Sha256) -> Result<Vec<u64>, String>;
    /// Indices of `dataset` statements of `name@version`.
    fn datasets(&self, name_version: &str) -> Result<Vec<u64>, String>;
}

/// A statement found in the log.
#[derive(Clone, Debug, Serialize)]
pub struct Logged<P> {
    /// Its index in the log.
    pub index: u64,
    /// Who signed it.
    pub signers: Vec<PeerId>,
    /// SHA-256 of its DSSE payload.
    pub payload_sha256: Sha256,
    /// What it says.
    pub predicate: P,
}

/// A model and where its weights' knowledge came from.
#[derive(Clone, Debug, Serialize)]
pub struct ModelNode {
    /// SHA-256 of the weights.
    pub weights: Sha256,
    /// Its manifest, when one is logged.
    pub manifest: Option<Logged<ModelPredicate>>,
    /// The model it was trained from, followed.
    pub base: Option<Box<ModelNode>>,
    /// The logged datasets of its mix, followed.
    pub datasets: Vec<DatasetNode>,
    /// The community decision its manifest cites for its mix, followed.
    pub decision: Option<DecisionNode>,
    /// What could not be followed or proven here, in words.
    pub problems: Vec<String>,
}

/// A community decision a manifest cites, and the proposal it decided.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionNode {
    /// The decision statement.
    pub decision: Logged<agora_core::statement::Decision>,
    /// The proposal's title.
    pub title: String,
}

/// A dataset of a mix, or the one a dataset was derived from.
#[derive(Clone, Debug, Serialize)]
pub struct DatasetNode {
    /// `name@version`.
    pub name: String,
    /// Its statement, when found and as named.
    pub statement: Option<Logged<DatasetPredicate>>,
    /// The dataset it was derived from, followed.
    pub derived_from: Option<Box<DatasetNode>>,
    /// What could not be followed or proven here, in words.
    pub problems: Vec<String>,
}

/// The provenance of one model.
#[derive(Clone, Debug, Serialize)]
pub struct Tree {
    /// Origin of the log searched.
    pub log: String,
    /// The model asked about.
    pub model: ModelNode,
}

fn open(entry: &[u8]) -> Result<(Vec<PeerId>, Sha256, Statement), String> {
    let env = Envelope::from_json(entry).map_err(|e| format!("not a signed statement: {e}"))?;
    let digest = Sha256::of(&env.payload);
    let (signers, st) =
        Statement::open(&env).map_err(|e| format!("the statement does not check: {e}"))?;
    Ok((signers, digest, st))
}

struct Builder<'a> {
    log: &'a str,
    entries: &'a dyn Entries,
    locator: &'a dyn Locator,
}

/// Follows the provenance of the model with these weights through the log `log` (its origin).
pub fn build(log: &str, weights: Sha256, entries: &dyn Entries, locator: &dyn Locator) -> Tree {
    let b = Builder {
        log,
        entries,
        locator,
    };
    Tree {
        log: log.to_string(),
        model: b.model(weights, None, 0),
    }
}

impl Builder<'_> {
    /// The node of `weights`; `at` is the index its manifest should be at, when named.
    fn model(&self, weights: Sha256, at: Option<(u64, Sha256)>, depth: usize) -> ModelNode {
        let mut node = ModelNode {
            weights,
            manifest: None,
            base: None,
            datasets: Vec::new(),
            decision: None,
            problems: Vec::new(),
        };
        let candidates = match at {
            Some((i, _)) => vec![i],
            None => match self.locator.models(&weights) {
                Ok(c) => c,
                Err(e) => {
                    node.problems
                        .push(format!("the log's manifests could not be searched: {e}"));
                    return node;
                }
            },
        };
        // The latest manifest that checks; earlier or other signers' are mentioned.
        let mut found: Vec<Logged<ModelPredicate>> = Vec::new();
        for i in candidates {
            match self.model_at(i, &weights, at.map(|a| a.1)) {
                Ok(m) => found.push(m),
                Err(e) => node.problems.push(e),
            }
        }
        found.sort_by_key(|m| m.index);
        let Some(m) = found.pop() else {
            if node.problems.is_empty() {
                node.problems.push(
                    "no manifest in the log: nothing is proven about what this model was trained on"
                        .into(),
                );
            }
            return node;
        };
        // Earlier manifests by the same signer are superseded; others' disagree, and say so.
        found.retain(|f| f.signers != m.signers);
        if !found.is_empty() {
            node.problems.push(format!(
                "{} manifest(s) by other signers for these weights at {}; the latest (entry {}) is shown",
                found.len(),
                found
                    .iter()
                    .map(|f| format!("entry {} by {}", f.index, signers(&f.signers)))
                    .collect::<Vec<_>>()
                    .join(", "),
                m.index
            ));
        }
        let p = &m.predicate;
        if let Some(base) = &p.base_model {
            if depth >= MAX_DEPTH {
                node.problems.push(format!(
                    "base models deeper than {MAX_DEPTH} are not followed"
                ));
            } else {
                let at = match &base.statement {
                    Some(r) if r.log != self.log => {
                        node.problems.push(format!(
                            "the base model's manifest is in log {:?}, not the one searched",
                            r.log
                        ));
                        None
                    }
                    Some(r) => Some((r.index, r.statement)),
                    None => None,
                };
                node.base = Some(Box::new(self.model(base.weights, at, depth + 1)));
            }
        }
        for e in &p.data_mix {
            if e.log != self.log {
                node.datasets.push(DatasetNode {
                    name: e.name.clone(),
                    statement: None,
                    derived_from: None,
                    problems: vec![format!(
                        "logged in {:?}, not in the log searched: not checked",
                        e.log
                    )],
                });
                continue;
            }
            node.datasets
                .push(self.dataset(&e.name, Some((e.index, e.dataset)), None, depth));
        }
        if p.data_mix.is_empty() && p.declared_data.is_empty() {
            node.problems
                .push("the manifest names no training data".into());
        }
        if let Some(r) = &p.decision {
            match self.decision(r, &p.data_mix) {
                Ok(d) => node.decision = Some(d),
                Err(e) => node.problems.push(e),
            }
        }
        node.manifest = Some(m);
        node
    }

    /// The decision at `r`, checked to be an adoption of exactly `mix`, with its proposal.
    fn decision(
        &self,
        r: &agora_core::statement::LogRef,
        mix: &[agora_core::statement::MixEntry],
    ) -> Result<DecisionNode, String> {
        if r.log != self.log {
            return Err(format!(
                "the decision it cites is in log {:?}, not the one searched",
                r.log
            ));
        }
        let read = |i: u64| -> Result<(Vec<PeerId>, Sha256, Statement), String> {
            let e = self
                .entries
                .entry(i)
                .map_err(|e| format!("entry {i} could not be read: {e}"))?
                .ok_or_else(|| format!("the log has no entry {i}"))?;
            open(&e).map_err(|e| format!("entry {i}: {e}"))
        };
        let (signers, digest, st) = read(r.index)?;
        if digest != r.statement {
            return Err(format!(
                "entry {} is not the decision the manifest cites (its payload digest differs)",
                r.index
            ));
        }
        let Statement::Decision(d) = st else {
            return Err(format!("entry {} is not a decision statement", r.index));
        };
        let want = agora_core::statement::mix_digest(mix);
        if d.subject != want {
            return Err(format!(
                "the decision at entry {} is about another mix (sha256:{}), not this manifest's (sha256:{want})",
                r.index, d.subject
            ));
        }
        if !d.adopted {
            return Err(format!(
                "the decision at entry {} did not adopt the mix",
                r.index
            ));
        }
        let (_, pdigest, pst) = read(d.proposal.index)?;
        let title = match pst {
            Statement::Proposal(p) if pdigest == d.proposal.statement => {
                match &p.motion {
                    agora_core::statement::Motion::Mix { digest, .. } if *digest == want => {}
                    _ => {
                        return Err(format!(
                            "the proposal at entry {} is not about this mix",
                            d.proposal.index
                        ));
                    }
                }
                p.title
            }
            _ => {
                return Err(format!(
                    "entry {} is not the proposal the decision names",
                    d.proposal.index
                ));
            }
        };
        Ok(DecisionNode {
            decision: Logged {
                index: r.index,
                signers,
                payload_sha256: digest,
                predicate: d,
            },
            title,
        })
    }

    fn model_at(
        &self,
        index: u64,
        weights: &Sha256,
        payload: Option<Sha256>,
    ) -> Result<Logged<ModelPredicate>, String> {
        let entry = self
            .entries
            .entry(index)
            .map_err(|e| format!("entry {index} could not be read: {e}"))?
            .ok_or_else(|| format!("the log has no entry {index}"))?;
        let (signers, digest, st) = open(&entry).map_err(|e| format!("entry {index}: {e}"))?;
        if payload.is_some_and(|p| p != digest) {
            return Err(format!(
                "entry {index} is not the manifest named (its payload digest differs)"
            ));
        }
        let Statement::Model { subject, predicate } = st else {
            return Err(format!("entry {index} is not a model statement"));
        };
        if !subject.iter().any(|s| s.digest.sha256 == *weights) {
            return Err(format!(
                "entry {index} is a manifest of other weights, not sha256:{weights}"
            ));
        }
        Ok(Logged {
            index,
            signers,
            payload_sha256: digest,
            predicate,
        })
    }

    /// The node of dataset `name`; `at`: where the mix says its statement is; `prefer`: the
    /// signer to prefer among several statements of one name (the derived dataset's).
    fn dataset(
        &self,
        name: &str,
        at: Option<(u64, Sha256)>,
        prefer: Option<&[PeerId]>,
        depth: usize,
    ) -> DatasetNode {
        let mut node = DatasetNode {
            name: name.to_string(),
            statement: None,
            derived_from: None,
            problems: Vec::new(),
        };
        let candidates = match at {
            Some((i, _)) => vec![i],
            None => match self.locator.datasets(name) {
                Ok(c) if c.is_empty() => {
                    node.problems
                        .push("no statement of this dataset in the log".into());
                    return node;
                }
                Ok(c) => c,
                Err(e) => {
                    node.problems
                        .push(format!("the log's datasets could not be searched: {e}"));
                    return node;
                }
            },
        };
        let mut found = Vec::new();
        for i in candidates {
            match self.dataset_at(i, name, at.map(|a| a.1)) {
                Ok(d) => found.push(d),
                Err(e) => node.problems.push(e),
            }
        }
        // Prefer a statement by the same signer as the dataset derived from it, then the latest.
        found.sort_by_key(|d| {
            (
                prefer.is_some_and(|p| d.signers.iter().any(|s| p.contains(s))),
                d.index,
            )
        });
        let Some(d) = found.pop() else {
            return node;
        };
        if !found.is_empty() {
            node.problems.push(format!(
                "{} other statement(s) of {name} by {}; entry {} is shown",
                found.len(),
                found
                    .iter()
                    .map(|f| signers(&f.signers))
                    .collect::<Vec<_>>()
                    .join(", "),
                d.index
            ));
        }
        if let Some(parent) = &d.predicate.derived_from {
            if depth >= MAX_DEPTH {
                node.problems.push(format!(
                    "derived-from chains longer than {MAX_DEPTH} are not followed"
                ));
            } else {
                node.derived_from = Some(Box::new(self.dataset(
                    parent,
                    None,
                    Some(&d.signers),
                    depth + 1,
                )));
            }
        }
        node.statement = Some(d);
        node
    }

    fn dataset_at(
        &self,
        index: u64,
        name: &str,
        payload: Option<Sha256>,
    ) -> Result<Logged<DatasetPredicate>, String> {
        let entry = self
            .entries
            .entry(index)
            .map_err(|e| format!("entry {index} could not be read: {e}"))?
            .ok_or_else(|| format!("the log has no entry {index}"))?;
        let (signers, digest, st) = open(&entry).map_err(|e| format!("entry {index}: {e}"))?;
        if payload.is_some_and(|p| p != digest) {
            return Err(format!(
                "entry {index} is not the statement named (its payload digest differs)"
            ));
        }
        let Statement::Dataset { predicate, .. } = st else {
            return Err(format!("entry {index} is not a dataset statement"));
        };
        let label = format!("{}@{}", predicate.name, predicate.version);
        if label != name {
            return Err(format!("entry {index} is {label}, not {name}"));
        }
        Ok(Logged {
            index,
            signers,
            payload_sha256: digest,
            predicate,
        })
    }
}

fn signers(s: &[PeerId]) -> String {
    s.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("+")
}

impl Tree {
    /// Every log index the tree rests on: whoever checks the tree checks each is in the log.
    pub fn indices(&self) -> Vec<u64> {
        fn model(m: &ModelNode, out: &mut Vec<u64>) {
            out.extend(m.manifest.as_ref().map(|l| l.index));
            if let Some(d) = &m.decision {
                out.push(d.decision.index);
                out.push(d.decision.predicate.proposal.index);
            }
            if let Some(b) = &m.base {
                model(b, out);
            }
            for d in &m.datasets {
                dataset(d, out);
            }
        }
        fn dataset(d: &DatasetNode, out: &mut Vec<u64>) {
            out.extend(d.statement.as_ref().map(|l| l.index));
            if let Some(p) = &d.derived_from {
                dataset(p, out);
            }
        }
        let mut out = Vec::new();
        model(&self.model, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether nothing is flagged anywhere in the tree (and a manifest was found).
    pub fn complete(&self) -> bool {
        fn model(m: &ModelNode) -> bool {
            m.manifest.is_some()
                && m.problems.is_empty()
                && m.base.as_deref().is_none_or(model)
                && m.datasets.iter().all(dataset)
        }
        fn dataset(d: &DatasetNode) -> bool {
            d.statement.is_some()
                && d.problems.is_empty()
                && d.derived_from.as_deref().is_none_or(dataset)
        }
        model(&self.model)
    }

    /// The tree in words, one line per node, indented; `checked(index)` says how each
    /// statement's log inclusion was checked.
    pub fn render(&self, checked: &dyn Fn(u64) -> String) -> String {
        let mut out = String::new();
        render_model(&self.model, 0, checked, &mut out);
        out
    }
}

fn line(out: &mut String, depth: usize, text: &str) {
    out.push_str(&"  ".repeat(depth));
    out.push_str(text);
    out.push('\n');
}

fn render_model(m: &ModelNode, depth: usize, checked: &dyn Fn(u64) -> String, out: &mut String) {
    match &m.manifest {
        None => line(out, depth, &format!("model sha256:{}", m.weights)),
        Some(l) => {
            let p = &l.predicate;
            line(
                out,
                depth,
                &format!(
                    "model {} (sha256:{}…) {} · {} · tokenizer {}…",
                    p.name,
                    &m.weights.to_string()[..12],
                    p.architecture,
                    p.license,
                    &p.tokenizer.to_string()[..12]
                ),
            );
            line(
                out,
                depth + 1,
                &format!(
                    "manifest: entry {} signed by {} — {}",
                    l.index,
                    signers(&l.signers),
                    checked(l.index)
                ),
            );
            if let Some(r) = &p.recipe {
                line(
                    out,
                    depth + 1,
                    &format!("recipe: {} sha256:{}…", r.name, &r.sha256.to_string()[..12]),
                );
            }
        }
    }
    for pr in &m.problems {
        line(out, depth + 1, &format!("! {pr}"));
    }
    if let Some(b) = &m.base {
        line(out, depth + 1, "trained from:");
        render_model(b, depth + 2, checked, out);
    }
    if let Some(l) = &m.manifest
        && !l.predicate.data_mix.is_empty()
    {
        match &m.decision {
            Some(d) => {
                let x = &d.decision.predicate;
                line(
                    out,
                    depth + 1,
                    &format!(
                        "mix adopted by network {}… in decision entry {} on proposal {} \"{}\" (yes {} / no {} / abstain {} of {} eligible, quorum {}), as signed by {} — {}; re-count it with `agora tally {}`",
                        &x.network[..x.network.len().min(16)],
                        d.decision.index,
                        x.proposal.index,
                        d.title.escape_debug(),
                        x.counts.yes,
                        x.counts.no,
                        x.counts.abstain,
                        x.eligible,
                        if x.quorum_met { "met" } else { "not met" },
                        signers(&d.decision.signers),
                        checked(d.decision.index),
                        x.proposal.index
                    ),
                );
            }
            None if l.predicate.decision.is_none() => line(
                out,
                depth + 1,
                "warning: no community decision adopted this mix (the manifest cites none)",
            ),
            None => {}
        }
    }
    if let Some(l) = &m.manifest {
        let total: f64 = l.predicate.data_mix.iter().map(|e| e.weight).sum();
        for (e, d) in l.predicate.data_mix.iter().zip(&m.datasets) {
            let share = if total > 0.0 {
                format!("{:.1} %", 100.0 * e.weight / total)
            } else {
                "?".into()
            };
            let tokens = e
                .tokens
                .map(|t| format!(", {t} tokens"))
                .unwrap_or_default();
            line(
                out,
                depth + 1,
                &format!(
                    "dataset {} (weight {}: {share} of the logged mix{tokens})",
                    e.name, e.weight
                ),
            );
            render_dataset(d, depth + 2, checked, out);
        }
        for d in &l.predicate.declared_data {
            line(
                out,
                depth + 1,
                &format!(
                    "declared, NOT provable (no dataset statement): {} · {} · {}{}",
                    d.name,
                    d.license,
                    d.source,
                    d.note
                        .as_ref()
                        .map(|n| format!(" · {n}"))
                        .unwrap_or_default()
                ),
            );
        }
        for u in &l.predicate.unknown {
            line(out, depth + 1, &format!("unknown: {u}"));
        }
    }
}

fn render_dataset(
    d: &DatasetNode,
    depth: usize,
    checked: &dyn Fn(u64) -> String,
    out: &mut String,
) {
    if let Some(l) = &d.statement {
        let p = &l.predicate;
        line(
            out,
            depth,
            &format!(
                "{} records, {} bytes · licence {} · source {}",
                p.records, p.size, p.license, p.source
            ),
        );
        line(
            out,
            depth,
            &format!(
                "statement: entry {} signed by {} — {}",
                l.index,
                signers(&l.signers),
                checked(l.index)
            ),
        );
        for c in &p.contributors {
            line(
                out,
                depth,
                &format!(
                    "contributor {}{}: {} records",
                    c.key,
                    c.label
                        .as_ref()
                        .map(|l| format!(" ({l})"))
                        .unwrap_or_default(),
                    c.records
                ),
            );
        }
    }
    for pr in &d.problems {
        line(out, depth, &format!("! {pr}"));
    }
    if let Some(p) = &d.derived_from {
        line(out, depth, &format!("derived from {}:", p.name));
        render_dataset(p, depth + 1, checked, out);
    }
}

/// Entries and locations given as a map (e.g. what a node answered), for checking.
#[derive(Default)]
pub struct Given {
    /// Entries by index.
    pub entries: BTreeMap<u64, Vec<u8>>,
}

impl Entries for Given {
    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, String> {
        Ok(self.entries.get(&index).cloned())
    }
}

impl Locator for Given {
    fn models(&self, weights: &Sha256) -> Result<Vec<u64>, String> {
        let mut out = Vec::new();
        for (i, e) in &self.entries {
            if let Ok((_, _, Statement::Model { subject, .. })) = open(e)
                && subject.iter().any(|s| s.digest.sha256 == *weights)
            {
                out.push(*i);
            }
        }
        Ok(out)
    }

    fn datasets(&self, name_version: &str) -> Result<Vec<u64>, String> {
        let mut out = Vec::new();
        for (i, e) in &self.entries {
            if let Ok((_, _, Statement::Dataset { predicate: p, .. })) = open(e)
                && format!("{}@{}", p.name, p.version) == name_version
            {
                out.push(*i);
            }
        }
        Ok(out)
    }
}

/// The model and dataset statements of a log, by what they are about, kept up to date by
/// scanning the entries appended since the last query.
#[derive(Default)]
pub struct LogIndex {
    inner: Mutex<Scanned>,
}

#[derive(Default)]
struct Scanned {
    next: u64,
    kept: usize,
    models: HashMap<Sha256, Vec<u64>>,
    datasets: HashMap<String, Vec<u64>>,
}

/// The start of every in-toto statement entry in its canonical envelope encoding.
const INTOTO_PREFIX: &[u8] = b"{\"payloadType\":\"application/vnd.in-toto+json\"";

impl LogIndex {
    /// Scans entries from where the last scan stopped up to `size` (exclusive).
    pub fn catch_up(&self, size: u64, entries: &dyn Entries) -> Result<(), String> {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while s.next < size {
            let i = s.next;
            if let Some(e) = entries.entry(i)?
                && e.starts_with(INTOTO_PREFIX)
                && let Ok((_, _, st)) = open(&e)
            {
                if s.kept >= MAX_INDEXED {
                    return Err(format!(
                        "the log holds more than {MAX_INDEXED} model and dataset statements; \
                         this node indexes no more"
                    ));
                }
                match st {
                    Statement::Model { subject, .. } => {
                        for sub in subject {
                            s.models.entry(sub.digest.sha256).or_default().push(i);
                        }
                        s.kept += 1;
                    }
                    Statement::Dataset { predicate: p, .. } => {
                        s.datasets
                            .entry(format!("{}@{}", p.name, p.version))
                            .or_default()
                            .push(i);
                        s.kept += 1;
                    }
                    _ => {}
                }
            }
            s.next = i + 1;
        }
        Ok(())
    }
}

impl Locator for LogIndex {
    fn models(&self, weights: &Sha256) -> Result<Vec<u64>, String> {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(s.models.get(weights).cloned().unwrap_or_default())
    }

    fn datasets(&self, name_version: &str) -> Result<Vec<u64>, String> {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(s.datasets.get(name_version).cloned().unwrap_or_default())
    }
}

/// A node's provenance answers, over its own log.
pub struct Served {
    log: agora_log::Log,
    index: LogIndex,
    texts: crate::text_index::TextIndex,
}

impl Served {
    /// Provenance over `log`.
    pub fn new(log: agora_log::Log) -> Served {
        Served {
            log,
            index: LogIndex::default(),
            texts: Default::default(),
        }
    }

    /// The tree of `digest` (`sha256:HEX` or `HEX`) under the current checkpoint, with the
    /// entries it rests on: `{"log", "checkpoint_size", "tree", "complete", "entries": {index:
    /// envelope}}`.
    pub fn answer(&self, digest: &str) -> Result<serde_json::Value, agora_api::error::ApiError> {
        use agora_api::error::ApiError;
        let weights: Sha256 = digest
            .strip_prefix("sha256:")
            .unwrap_or(digest)
            .parse()
            .map_err(|e: &str| ApiError::invalid(format!("{digest:?}: {e}"), Some("digest")))?;
        let size = self.log.checkpoint().map(|p| p.size).unwrap_or(0);
        let store = self.log.store();
        self.index
            .catch_up(size, store)
            .map_err(ApiError::internal)?;
        let tree = build(self.log.origin(), weights, store, &self.index);
        let mut entries = serde_json::Map::new();
        for i in tree.indices() {
            if let Ok(Some(e)) = Entries::entry(store, i) {
                entries.insert(
                    i.to_string(),
                    String::from_utf8_lossy(&e).into_owned().into(),
                );
            }
        }
        Ok(serde_json::json!({
            "log": self.log.origin(),
            "checkpoint_size": size,
            "complete": tree.complete(),
            "tree": tree,
            "entries": entries,
        }))
    }
}

impl Served {
    /// The receipts whose text digest is `digest` (64 hex digits) among the log's entries,
    /// each with its log entry and the verdicts logged on it: `{"log",
    /// "checkpoint_size", "digest", "receipts": [{"index", "entry", "verdicts": [{"index",
    /// "entry"}]}], "more"}`.
    pub fn text_answer(
        &self,
        digest: &str,
    ) -> Result<serde_json::Value, agora_api::error::ApiError> {
        use agora_api::error::ApiError;
        let d: Sha256 = if digest.len() == 64 {
            digest
                .parse()
                .map_err(|e: &str| ApiError::invalid(e, Some("digest")))?
        } else {
            return Err(ApiError::invalid(
                "a text digest is 64 hex digits (SHA-256 of the normalised text)",
                Some("digest"),
            ));
        };
        // Entries appended since the last checkpoint count too (an answer generated a moment
        // ago): the client waits for the checkpoint that covers them.
        let size = self.log.checkpoint().map(|p| p.size).unwrap_or(0);
        let store = self.log.store();
        let appended = store
            .size()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.texts
            .catch_up(appended, store)
            .map_err(ApiError::internal)?;
        let (found, more) = self.texts.find(&d, store).map_err(ApiError::internal)?;
        Ok(serde_json::json!({
            "log": self.log.origin(),
            "checkpoint_size": size,
            "digest": d.to_string(),
            "receipts": found_json(&found),
            "more": more,
        }))
    }

    /// The fingerprinted receipts whose fingerprint is at least `min` similar to `fingerprint`
    /// (256 hex digits), most similar first: as [`Served::text_answer`], with each receipt's
    /// `similarity`.
    pub fn similar_answer(
        &self,
        fingerprint: &str,
        min: f64,
    ) -> Result<serde_json::Value, agora_api::error::ApiError> {
        use agora_api::error::ApiError;
        let fp = agora_core::text::Fingerprint::from_hex(fingerprint)
            .map_err(|e| ApiError::invalid(e, Some("fingerprint")))?;
        let size = self.log.checkpoint().map(|p| p.size).unwrap_or(0);
        let store = self.log.store();
        let appended = store
            .size()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.texts
            .catch_up(appended, store)
            .map_err(ApiError::internal)?;
        let (found, more) = self
            .texts
            .find_similar(&fp, min, store)
            .map_err(ApiError::internal)?;
        Ok(serde_json::json!({
            "log": self.log.origin(),
            "checkpoint_size": size,
            "fingerprint": fp.to_hex(),
            "min_similarity": min,
            "receipts": found_json(&found),
            "more": more,
        }))
    }
}

/// Found receipts as the provenance route lists them.
fn found_json(found: &[crate::text_index::Found]) -> Vec<serde_json::Value> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    found
        .iter()
        .map(|f| {
            let mut v = serde_json::json!({
                "index": f.index,
                "entry": text(&f.entry),
                "verdicts": f.verdicts.iter().map(|(i, e)| serde_json::json!({
                    "index": i, "entry": text(e),
                })).collect::<Vec<_>>(),
            });
            if let Some(s) = f.similarity {
                v["similarity"] = s.into();
            }
            v
        })
        .collect()
}

impl agora_api::provenance::ProvenanceSource for Served {
    fn provenance(&self, digest: &str) -> Result<serde_json::Value, agora_api::error::ApiError> {
        self.answer(digest)
    }

    fn text(&self, digest: &str) -> Result<serde_json::Value, agora_api::error::ApiError> {
        self.text_answer(digest)
    }

    fn similar(
        &self,
        fingerprint: &str,
        min: f64,
    ) -> Result<serde_json::Value, agora_api::error::ApiError> {
        self.similar_answer(fingerprint, min)
    }

    fn locate(&self, leaf: &str) -> Result<serde_json::Value, agora_api::error::ApiError> {
        use agora_api::error::ApiError;
        let mut h = [0u8; 32];
        if leaf.len() != 64 || hex::decode_to_slice(leaf, &mut h).is_err() {
            return Err(ApiError::invalid(
                "a leaf hash is 64 hex digits",
                Some("leaf"),
            ));
        }
        match self.log.store().find(&agora_tlog::hash::Hash(h)) {
            Ok(Some(index)) => Ok(serde_json::json!({"index": index, "log": self.log.origin()})),
            Ok(None) => Err(ApiError::not_found(
                "no entry with this leaf hash is logged (yet)",
            )),
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_core::Identity;
    use agora_core::statement::{BaseModel, DigestSet, LogRef, MixEntry, Subject};

    const LOG: &str = "agora.log/test";

    fn dataset(name: &str, version: u32, derived: Option<&str>) -> Statement {
        Statement::Dataset {
            subject: vec![Subject {
                name: "s.zst".into(),
                digest: DigestSet {
                    sha256: Sha256([1; 32]),
                },
            }],
            predicate: DatasetPredicate {
                name: name.into(),
                version,
                license: "MIT".into(),
                source: "test".into(),
                records_root: Sha256([2; 32]),
                ids_root: Some(Sha256([3; 32])),
                records: 10,
                size: 100,
                derived_from: derived.map(str::to_string),
                contributors: vec![],
            },
        }
    }

    fn model(weights: u8, mix: Vec<MixEntry>, base: Option<BaseModel>) -> Statement {
        Statement::Model {
            subject: vec![Subject {
                name: "m.gguf".into(),
                digest: DigestSet {
                    sha256: Sha256([weights; 32]),
                },
            }],
            predicate: ModelPredicate {
                name: "m".into(),
                architecture: "llama".into(),
                tokenizer: Sha256([9; 32]),
                license: "Apache-2.0".into(),
                resources: vec![],
                base_model: base,
                data_mix: mix,
                declared_data: vec![],
                recipe: None,
                unknown: vec![],
                decision: None,
                chunks: None,
            },
        }
    }

    fn payload(st: &Statement) -> Sha256 {
        Sha256::of(&st.to_payload())
    }

    fn entry(name: &str, index: u64, st: &Statement) -> MixEntry {
        MixEntry {
            name: name.into(),
            log: LOG.into(),
            index,
            dataset: payload(st),
            weight: 1.0,
            tokens: None,
        }
    }

    /// A log: entries 0.. are `statements` signed by `id`.
    fn log(id: &Identity, statements: &[Statement]) -> Given {
        let mut g = Given::default();
        for (i, st) in statements.iter().enumerate() {
            g.entries
                .insert(i as u64, st.sign(id).to_json().into_bytes());
        }
        g
    }

    fn problems(t: &Tree) -> String {
        format!("{:?}", t)
    }

    #[test]
    fn an_honest_chain_is_complete_and_every_index_is_listed() {
        let id = Identity::from_seed(&[1; 32]);
        let parent = dataset("wiki", 1, None);
        let child = dataset("wiki", 2, Some("wiki@1"));
        let base = model(7, vec![entry("wiki@1", 0, &parent)], None);
        let m = model(
            8,
            vec![entry("wiki@2", 1, &child)],
            Some(BaseModel {
                weights: Sha256([7; 32]),
                name: None,
                statement: Some(LogRef {
                    log: LOG.into(),
                    index: 2,
                    statement: payload(&base),
                }),
            }),
        );
        let g = log(&id, &[parent, child, base, m]);
        let t = build(LOG, Sha256([8; 32]), &g, &g);
        assert!(t.complete(), "{}", problems(&t));
        assert_eq!(t.indices(), vec![0, 1, 2, 3]);
        let d = &t.model.datasets[0];
        assert_eq!(
            d.derived_from
                .as_ref()
                .unwrap()
                .statement
                .as_ref()
                .unwrap()
                .index,
            0
        );
        assert!(t.render(&|_| "ok".into()).contains("derived from wiki@1"));
    }

    #[test]
    fn a_model_without_a_manifest_says_so() {
        let g = Given::default();
        let t = build(LOG, Sha256([8; 32]), &g, &g);
        assert!(!t.complete());
        assert!(
            t.model.problems[0].contains("no manifest"),
            "{:?}",
            t.model.problems
        );
    }

    #[test]
    fn every_broken_link_is_flagged() {
        let id = Identity::from_seed(&[1; 32]);
        let other = Identity::from_seed(&[2; 32]);
        let d = dataset("wiki", 1, None);
        let mut wrong_digest = entry("wiki@1", 0, &d);
        wrong_digest.dataset = Sha256([0; 32]);
        let cases: Vec<(Vec<MixEntry>, &str)> = vec![
            (vec![wrong_digest], "payload digest differs"),
            (vec![entry("wiki@2", 0, &d)], "is wiki@1, not wiki@2"),
            (vec![entry("wiki@1", 5, &d)], "no entry 5"),
            (
                vec![MixEntry {
                    log: "elsewhere".into(),
                    ..entry("wiki@1", 0, &d)
                }],
                "not in the log searched",
            ),
        ];
        for (mix, want) in cases {
            let g = log(&id, &[d.clone(), model(8, mix, None)]);
            let t = build(LOG, Sha256([8; 32]), &g, &g);
            assert!(!t.complete());
            assert!(problems(&t).contains(want), "{want}: {}", problems(&t));
        }
        // The mix points at the manifest itself: not a dataset statement.
        let m0 = model(8, vec![], None);
        let mut g = log(&id, std::slice::from_ref(&m0));
        let m1 = model(8, vec![entry("wiki@1", 0, &m0)], None);
        g.entries.insert(1, m1.sign(&id).to_json().into_bytes());
        let t = build(LOG, Sha256([8; 32]), &g, &g);
        assert!(
            problems(&t).contains("not a dataset statement"),
            "{}",
            problems(&t)
        );
        // A manifest of other weights named as the base.
        let g = log(
            &id,
            &[
                model(5, vec![], None),
                model(
                    8,
                    vec![],
                    Some(BaseModel {
                        weights: Sha256([7; 32]),
                        name: None,
                        statement: Some(LogRef {
                            log: LOG.into(),
                            index: 0,
                            statement: payload(&model(5, vec![], None)),
                        }),
                    }),
                ),
            ],
        );
        let t = build(LOG, Sha256([8; 32]), &g, &g);
        assert!(
            problems(&t).contains("manifest of other weights"),
            "{}",
            problems(&t)
        );
        // A forged signature: the entry does not open.
        let mut g = log(
            &id,
            &[d.clone(), model(8, vec![entry("wiki@1", 0, &d)], None)],
        );
        let mut env = Envelope::from_json(&g.entries[&0]).unwrap();
        let text = String::from_utf8(env.payload.clone()).unwrap();
        env.payload = text.replace("\"MIT\"", "\"GPL-3.0-only\"").into_bytes();
        let forged = env.to_json();
        g.entries.insert(0, forged.into_bytes());
        let t = build(LOG, Sha256([8; 32]), &g, &g);
        assert!(problems(&t).contains("does not check"), "{}", problems(&t));
        // Someone else's manifest for the same weights is shown as a disagreement.
        let mut g = log(
            &id,
            &[d.clone(), model(8, vec![entry("wiki@1", 0, &d)], None)],
        );
        g.entries.insert(
            2,
            model(8, vec![], None).sign(&other).to_json().into_bytes(),
        );
        let t = build(LOG, Sha256([8; 32]), &g, &g);
        assert!(
            problems(&t).contains("by other signers"),
            "{}",
            problems(&t)
        );
    }

    #[test]
    fn derived_from_cycles_end() {
        let id = Identity::from_seed(&[1; 32]);
        let a = dataset("a", 1, Some("b@1"));
        let b = dataset("b", 1, Some("a@1"));
        let m = model(8, vec![entry("a@1", 0, &a)], None);
        let g = log(&id, &[a, b, m]);
        let t = build(LOG, Sha256([8; 32]), &g, &g);
        assert!(problems(&t).contains("not followed"), "{}", problems(&t));
    }

    #[test]
    fn the_index_finds_statements_appended_since_the_last_scan() {
        let id = Identity::from_seed(&[1; 32]);
        let d = dataset("wiki", 1, None);
        let g = log(
            &id,
            &[d.clone(), model(8, vec![entry("wiki@1", 0, &d)], None)],
        );
        let ix = LogIndex::default();
        ix.catch_up(1, &g).unwrap();
        assert_eq!(ix.datasets("wiki@1").unwrap(), vec![0]);
        assert!(ix.models(&Sha256([8; 32])).unwrap().is_empty());
        ix.catch_up(2, &g).unwrap();
        assert_eq!(ix.models(&Sha256([8; 32])).unwrap(), vec![1]);
    }
}
