//! The credit ledger of a period, from log entries alone, in integer arithmetic: every machine
//! computes the same ledger bit for bit.
//!
//! **Compute**: a worker is credited the tokens it generated (`completion_tokens - resumed`) in
//! each receipt of the period that it signed, except receipts a recognised validator
//! ([`Rules::validators`]) rejected in a verdict logged before the period's end.
//!
//! **Data**: the tokens of every credited receipt, summed per answering model over the period,
//! flow down that model's manifest (the first `model` statement in the log for its weights):
//! - a model with a base model whose manifest is in the log passes `base_share_percent` of its
//!   tokens to the base (all of them when it has no mix of its own), recursively;
//! - the rest is split across its `data_mix` by weight (weights in millionths, rounded);
//! - a dataset derived from another in the log (`derived_from` = `NAME@VERSION`) passes
//!   `derived_share_percent` of its share to that one, recursively;
//! - the rest is split across its contributors by records; a dataset naming no contributor
//!   credits its publisher (the statement's signer).
//!
//! Every split gives each part `floor(total × weight / Σ weights)` and hands the tokens left over
//! one each to the parts with the largest remainders (ties: the earlier part), so no token is
//! created or lost. Tokens with nowhere to go (no manifest in the log, no mix, a chain deeper
//! than [`MAX_DEPTH`]) are counted as `unattributed`, not spread.

use std::collections::{BTreeMap, HashMap, HashSet};

use agora_core::dsse::Envelope;
use agora_core::statement::{
    CreditLine, DatasetPredicate, Ledger, ModelPredicate, Sha256, Statement, TreeHead,
};
use agora_tlog::hash::{Hash, leaf_hash};
use agora_tlog::merkle::MemoryTree;

use crate::rules::Rules;
use crate::tally::Voter;
use crate::{Error, Result, contains};

/// Longest base-model chain, and longest derived-from chain, followed.
pub const MAX_DEPTH: usize = 8;
/// Most datasets of a mix credited (a manifest naming more credits its own mix to nobody);
/// a dataset may name a hundred times as many contributors.
pub const MAX_PARTS: usize = 1024;
/// Mix weights are counted in millionths.
const WEIGHT_SCALE: f64 = 1e6;
/// Largest integer mix weight (keeps `tokens × weight` within u128).
const MAX_WEIGHT: u64 = 1 << 40;

struct Model {
    predicate: ModelPredicate,
}

struct Dataset {
    predicate: DatasetPredicate,
    signer: String,
}

enum Seen {
    Other,
    Receipt {
        id: Sha256,
        worker: Voter,
        model: Sha256,
        tokens: u32,
    },
    Rejected(Sha256),
    /// A receipt logged before the period (its payload digest): a copy of it logged again in the
    /// period is not credited twice.
    Earlier(Sha256),
    Model(Sha256, Box<ModelPredicate>),
    Ledger(u64, Vec<String>, Box<Ledger>),
    Dataset(Sha256, Box<DatasetPredicate>, String),
}

/// A period's ledger with its lines.
#[derive(Clone, Debug)]
pub struct Computed {
    /// The ledger statement every machine signs alike.
    pub ledger: Ledger,
    /// Its lines, sorted by key (the leaves of `ledger.root`).
    pub lines: Vec<CreditLine>,
    /// Receipts of the period credited.
    pub receipts: u64,
    /// Receipts of the period a recognised validator rejected (no compute or data credit).
    pub rejected: u64,
    /// Ledgers of the same period already in the log: index, signers, and whether each is
    /// this one byte for byte.
    pub logged: Vec<(u64, Vec<String>, bool)>,
}

impl Computed {
    /// The inclusion proof of `key`'s line: its index and the proof's hashes.
    pub fn prove(&self, key: &str) -> Option<(u64, Vec<Hash>)> {
        let i = self.lines.iter().position(|l| l.key == key)?;
        let mut tree = MemoryTree::new();
        for l in &self.lines {
            tree.append(&line_bytes(l));
        }
        let proof = tree.inclusion_proof(i as u64, tree.size()).ok()?;
        Some((i as u64, proof))
    }
}

/// A line's leaf bytes: its canonical JSON (`{"key":…,"compute":…,"data":…}`).
pub fn line_bytes(l: &CreditLine) -> Vec<u8> {
    serde_json::to_vec(l).unwrap_or_default()
}

/// Check that `line` is line `index` of `ledger`.
pub fn verify_line(ledger: &Ledger, line: &CreditLine, index: u64, proof: &[Hash]) -> bool {
    agora_tlog::merkle::verify_inclusion(
        index,
        ledger.lines,
        &leaf_hash(&line_bytes(line)),
        proof,
        &Hash(ledger.root.0),
    )
    .is_ok()
}

/// Split `total` across `weights` (see the module's rounding rule).
pub fn split(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let t = u128::from(total);
    let mut shares: Vec<u64> = weights
        .iter()
        .map(|&w| (t * u128::from(w) / sum) as u64)
        .collect();
    let given: u64 = shares.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    let rem = |i: usize| t * u128::from(weights[i]) % sum;
    order.sort_by(|&a, &b| rem(b).cmp(&rem(a)).then(a.cmp(&b)));
    for &i in order.iter().take((total - given) as usize) {
        shares[i] += 1;
    }
    shares
}

/// Computes a period's ledger from log entries fed in order, from index 0 to the period's end.
pub struct Ledgerer<'a> {
    rules: &'a Rules,
    network: &'a str,
    origin: &'a str,
    from: u64,
    to: u64,
    threads: usize,
    next: u64,
    /// Receipts of the period: worker and model as indices into `workers` and `answering`.
    receipts: HashMap<Sha256, (u32, u32, u32)>,
    workers: Vec<Voter>,
    worker_ids: HashMap<Voter, u32>,
    answering: Vec<Sha256>,
    answering_ids: HashMap<Sha256, u32>,
    rejected: HashSet<Sha256>,
    earlier: HashSet<Sha256>,
    keys: crate::keys::KeyCache,
    models: HashMap<Sha256, Model>,
    datasets: HashMap<Sha256, Dataset>,
    by_name: HashMap<String, Sha256>,
    logged: Vec<(u64, Vec<String>, Ledger)>,
}

#[derive(Default)]
struct Flow {
    /// Tokens per dataset (by statement digest), over every path that reaches it.
    datasets: BTreeMap<Sha256, u64>,
    /// Tokens per dataset left to its own contributors (after derived-from shares).
    own: BTreeMap<Sha256, u64>,
    /// Tokens per contributor key.
    data: BTreeMap<String, u64>,
    unattributed: u64,
}

impl<'a> Ledgerer<'a> {
    /// The ledger of entries `from..to` of the log `origin`.
    pub fn new(rules: &'a Rules, network: &'a str, origin: &'a str, from: u64, to: u64) -> Self {
        Ledgerer {
            rules,
            network,
            origin,
            from,
            to,
            threads: crate::parallel::threads(),
            next: 0,
            receipts: HashMap::new(),
            workers: Vec::new(),
            worker_ids: HashMap::new(),
            answering: Vec::new(),
            answering_ids: HashMap::new(),
            rejected: HashSet::new(),
            earlier: HashSet::new(),
            keys: crate::keys::KeyCache::with(rules.validators.iter().copied()),
            models: HashMap::new(),
            datasets: HashMap::new(),
            by_name: HashMap::new(),
            logged: Vec::new(),
        }
    }

    /// Use this many threads to check signatures (default: every core).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Feed the next entries, from index `first`; past the period's end only ledgers of the
    /// period are looked at.
    pub fn push(&mut self, first: u64, entries: &[Vec<u8>]) -> Result<()> {
        if first != self.next {
            return Err(Error::History(format!(
                "entries fed out of order: expected index {}, got {first}",
                self.next
            )));
        }
        self.next = first + entries.len() as u64;
        let indexed: Vec<(u64, &[u8])> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (first + i as u64, e.as_slice()))
            .collect();
        let seen = crate::parallel::map(&indexed, self.threads, |(i, e)| self.classify(*i, e));
        for s in seen {
            match s {
                Seen::Other => {}
                Seen::Receipt {
                    id,
                    worker,
                    model,
                    tokens,
                } => {
                    let w = intern(&mut self.workers, &mut self.worker_ids, worker);
                    let m = intern(&mut self.answering, &mut self.answering_ids, model);
                    self.receipts.entry(id).or_insert((w, m, tokens));
                }
                Seen::Rejected(r) => {
                    self.rejected.insert(r);
                }
                Seen::Earlier(r) => {
                    self.earlier.insert(r);
                }
                Seen::Model(w, p) => {
                    self.models.entry(w).or_insert(Model { predicate: *p });
                }
                Seen::Ledger(i, signers, l) => self.logged.push((i, signers, *l)),
                Seen::Dataset(id, p, signer) => {
                    let name = format!("{}@{}", p.name, p.version);
                    self.by_name.entry(name).or_insert(id);
                    self.datasets.entry(id).or_insert(Dataset {
                        predicate: *p,
                        signer,
                    });
                }
            }
        }
        Ok(())
    }

    fn classify(&self, index: u64, entry: &[u8]) -> Seen {
        let Ok(env) = Envelope::from_json(entry) else {
            return Seen::Other;
        };
        // Cheap look at the type before the signature check: most entries are receipts, and
        // receipts outside the period need no check at all. After the period's end only ledgers
        // of this period are looked at (to compare them with this one).
        if index >= self.to && !contains(&env.payload, b"https://agora.network/ledger/") {
            return Seen::Other;
        }
        let in_period = index >= self.from && index < self.to;
        if index < self.from && contains(&env.payload, b"https://agora.network/receipt/") {
            return Seen::Earlier(Sha256::of(&env.payload));
        }
        let Ok((signers, st)) = Statement::open_with(&env, &|s| self.keys.resolve(s)) else {
            return Seen::Other;
        };
        match st {
            // A receipt its worker marked unverifiable (its engine failed its self-check) earns
            // nothing: no one can check the work it claims.
            Statement::Receipt(r)
                if in_period && signers.contains(&r.worker) && !r.unverifiable =>
            {
                Seen::Receipt {
                    id: Sha256::of(&env.payload),
                    worker: r.worker.into(),
                    model: r.model,
                    tokens: r.completion_tokens.saturating_sub(r.resumed),
                }
            }
            _ if index >= self.to && !matches!(st, Statement::Ledger(_)) => Seen::Other,
            Statement::Verdict(v)
                if !v.accept
                    && signers.contains(&v.validator)
                    && self.rules.validators.contains(&v.validator) =>
            {
                Seen::Rejected(v.receipt)
            }
            Statement::Ledger(l)
                if l.from == self.from && l.to.size == self.to && l.network == self.network =>
            {
                Seen::Ledger(
                    index,
                    signers.iter().map(ToString::to_string).collect(),
                    Box::new(l),
                )
            }
            Statement::Model { subject, predicate } => match subject.first() {
                Some(s) => Seen::Model(s.digest.sha256, Box::new(predicate)),
                None => Seen::Other,
            },
            Statement::Dataset { predicate, .. } => match signers.first() {
                Some(s) => {
                    Seen::Dataset(Sha256::of(&env.payload), Box::new(predicate), s.to_string())
                }
                None => Seen::Other,
            },
            _ => Seen::Other,
        }
    }

    /// The ledger: `root` is the root of the checkpoint of size `to` the entries were checked
    /// against.
    pub fn finish(self, root: Sha256) -> Result<Computed> {
        if self.next < self.to {
            return Err(Error::History(format!(
                "entries up to {} were fed, the period ends at {}",
                self.next, self.to
            )));
        }
        let mut compute: BTreeMap<String, u64> = BTreeMap::new();
        let mut per_model: BTreeMap<Sha256, u64> = BTreeMap::new();
        let (mut receipts, mut rejected) = (0u64, 0u64);
        let mut per_worker = vec![0u64; self.workers.len()];
        for (id, &(worker, model, tokens)) in &self.receipts {
            if self.earlier.contains(id) {
                continue;
            }
            if self.rejected.contains(id) {
                rejected += 1;
                continue;
            }
            receipts += 1;
            per_worker[worker as usize] += u64::from(tokens);
            *per_model.entry(self.answering[model as usize]).or_default() += u64::from(tokens);
        }
        for (w, tokens) in self.workers.iter().zip(per_worker) {
            if tokens > 0 {
                *compute.entry(w.to_string()).or_default() += tokens;
            }
        }
        // Models → datasets → their sources → contributors, each stage summed before it is
        // split, so the work is linear in the statements, however they are linked.
        let mut flow = Flow::default();
        for (model, tokens) in per_model {
            self.model(&model, tokens, 0, &mut flow);
        }
        for (d, tokens) in std::mem::take(&mut flow.datasets) {
            self.dataset(&d, tokens, 0, &mut flow);
        }
        for (d, tokens) in std::mem::take(&mut flow.own) {
            self.contributors(&d, tokens, &mut flow);
        }
        let mut lines: BTreeMap<String, CreditLine> = BTreeMap::new();
        let parts = compute
            .into_iter()
            .map(|(k, c)| (k, c, 0))
            .chain(flow.data.into_iter().map(|(k, d)| (k, 0, d)));
        for (k, c, d) in parts {
            let l = lines.entry(k.clone()).or_insert(CreditLine {
                key: k,
                compute: 0,
                data: 0,
            });
            l.compute += c;
            l.data += d;
        }
        let lines: Vec<CreditLine> = lines
            .into_values()
            .filter(|l| l.compute + l.data > 0)
            .collect();
        let mut tree = MemoryTree::new();
        for l in &lines {
            tree.append(&line_bytes(l));
        }
        let ledger = Ledger {
            network: self.network.to_string(),
            log: self.origin.to_string(),
            from: self.from,
            to: TreeHead {
                size: self.to,
                root,
            },
            compute: lines.iter().map(|l| l.compute).sum(),
            data: lines.iter().map(|l| l.data).sum(),
            unattributed: flow.unattributed,
            lines: lines.len() as u64,
            root: Sha256(tree.root().0),
        };
        let logged = self
            .logged
            .into_iter()
            .map(|(i, s, l)| (i, s, l == ledger))
            .collect();
        Ok(Computed {
            ledger,
            lines,
            receipts,
            rejected,
            logged,
        })
    }

    /// A model's tokens: the base model's share (recursively), the rest to its mix's datasets.
    fn model(&self, weights: &Sha256, tokens: u64, depth: usize, flow: &mut Flow) {
        let Some(m) = self.models.get(weights).filter(|_| depth <= MAX_DEPTH) else {
            flow.unattributed += tokens;
            return;
        };
        let p = &m.predicate;
        let base = p
            .base_model
            .as_ref()
            .map(|b| b.weights)
            .filter(|b| b != weights && self.models.contains_key(b));
        let own = !p.data_mix.is_empty() && p.data_mix.len() <= MAX_PARTS;
        let to_base = match (base, own) {
            (Some(_), true) => share(tokens, self.rules.base_share_percent),
            (Some(_), false) => tokens,
            (None, _) => 0,
        };
        if let Some(b) = base {
            self.model(&b, to_base, depth + 1, flow);
        }
        let rest = tokens - to_base;
        if !own {
            flow.unattributed += rest;
            return;
        }
        let w: Vec<u64> = p.data_mix.iter().map(|e| int_weight(e.weight)).collect();
        for (e, t) in p.data_mix.iter().zip(split(rest, &w)) {
            *flow.datasets.entry(e.dataset).or_default() += t;
        }
    }

    /// A dataset's tokens: the share of the dataset it derives from (recursively), the rest its
    /// own.
    fn dataset(&self, id: &Sha256, tokens: u64, depth: usize, flow: &mut Flow) {
        let Some(d) = self.datasets.get(id).filter(|_| depth <= MAX_DEPTH) else {
            flow.unattributed += tokens;
            return;
        };
        let source = d
            .predicate
            .derived_from
            .as_ref()
            .and_then(|n| self.by_name.get(n))
            .filter(|s| *s != id);
        let to_source = source.map_or(0, |_| share(tokens, self.rules.derived_share_percent));
        if let Some(s) = source {
            self.dataset(s, to_source, depth + 1, flow);
        }
        *flow.own.entry(*id).or_default() += tokens - to_source;
    }

    /// A dataset's own tokens across its contributors by records (its publisher when it names
    /// none).
    fn contributors(&self, id: &Sha256, tokens: u64, flow: &mut Flow) {
        let Some(d) = self.datasets.get(id) else {
            flow.unattributed += tokens;
            return;
        };
        let c = &d.predicate.contributors;
        if c.len() > MAX_PARTS * 100 {
            flow.unattributed += tokens;
            return;
        }
        let records: Vec<u64> = c.iter().map(|c| c.records).collect();
        if records.iter().all(|&r| r == 0) {
            *flow.data.entry(d.signer.clone()).or_default() += tokens;
            return;
        }
        for (c, t) in c.iter().zip(split(tokens, &records)) {
            if t > 0 {
                *flow.data.entry(c.key.clone()).or_default() += t;
            }
        }
    }
}

/// The index of `v` in `list`, added when new.
fn intern<T: Copy + Eq + std::hash::Hash>(
    list: &mut Vec<T>,
    ids: &mut HashMap<T, u32>,
    v: T,
) -> u32 {
    *ids.entry(v).or_insert_with(|| {
        list.push(v);
        (list.len() - 1) as u32
    })
}

fn share(tokens: u64, percent: u64) -> u64 {
    (u128::from(tokens) * u128::from(percent) / 100) as u64
}

/// A mix weight in millionths, at least 1 and at most [`MAX_WEIGHT`].
fn int_weight(w: f64) -> u64 {
    let v = (w * WEIGHT_SCALE).round();
    if v.is_nan() || v < 1.0 {
        1
    } else if v >= MAX_WEIGHT as f64 {
        MAX_WEIGHT
    } else {
        v as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_keeps_every_token() {
        assert_eq!(split(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(split(10, &[2, 1, 1]), vec![5, 3, 2]);
        assert_eq!(split(0, &[1, 2]), vec![0, 0]);
        assert_eq!(split(7, &[0, 0]), vec![0, 0]);
        assert_eq!(int_weight(0.5), 500_000);
        assert_eq!(int_weight(1e-9), 1);
        assert_eq!(int_weight(1e300), MAX_WEIGHT);
    }

    proptest! {
        #[test]
        fn split_sums_to_total(total in 0u64..u64::MAX / 2, w in proptest::collection::vec(1u64..MAX_WEIGHT, 1..20)) {
            let s = split(total, &w);
            prop_assert_eq!(s.iter().sum::<u64>(), total);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod ledger_tests {
    use super::*;
    use crate::tally::tests::World;
    use agora_core::Identity;
    use agora_core::statement::{
        BaseModel, Contribution, DigestSet, MixEntry, Receipt, Subject, Verdict,
    };

    fn dataset(
        w: &mut World,
        by: &Identity,
        name: &str,
        derived: Option<&str>,
        who: &[(&str, u64)],
    ) -> (u64, Sha256) {
        let st = Statement::Dataset {
            subject: vec![Subject {
                name: format!("{name}.jsonl"),
                digest: DigestSet {
                    sha256: Sha256::of(name.as_bytes()),
                },
            }],
            predicate: DatasetPredicate {
                name: name.into(),
                license: "CC0-1.0".into(),
                source: "test".into(),
                version: 1,
                records_root: Sha256([1; 32]),
                ids_root: None,
                records: 3,
                size: 10,
                derived_from: derived.map(String::from),
                contributors: who
                    .iter()
                    .map(|(k, r)| Contribution {
                        key: (*k).into(),
                        label: None,
                        records: *r,
                    })
                    .collect(),
            },
        };
        let i = w.append(&st, by);
        (i, Sha256::of(&st.to_payload()))
    }

    fn model(w: &mut World, by: &Identity, weights: u8, base: Option<u8>, mix: Vec<MixEntry>) {
        let st = Statement::Model {
            subject: vec![Subject {
                name: "m.gguf".into(),
                digest: DigestSet {
                    sha256: Sha256([weights; 32]),
                },
            }],
            predicate: ModelPredicate {
                name: format!("m{weights}"),
                architecture: "llama".into(),
                tokenizer: Sha256([0; 32]),
                license: "Apache-2.0".into(),
                resources: vec![],
                base_model: base.map(|b| BaseModel {
                    weights: Sha256([b; 32]),
                    name: None,
                    statement: None,
                }),
                data_mix: mix,
                declared_data: vec![],
                recipe: None,
                unknown: vec![],
                decision: None,
                chunks: None,
            },
        };
        w.append(&st, by);
    }

    fn receipt(w: &mut World, worker: &Identity, tokens: u32, n: u64) -> Sha256 {
        receipt_marked(w, worker, tokens, n, false)
    }

    fn receipt_marked(
        w: &mut World,
        worker: &Identity,
        tokens: u32,
        n: u64,
        unverifiable: bool,
    ) -> Sha256 {
        let st = Statement::Receipt(Receipt {
            model: Sha256([2; 32]),
            request: Sha256::of(&n.to_be_bytes()),
            output: Sha256([0; 32]),
            seed: n,
            prompt_tokens: 5,
            completion_tokens: tokens,
            proof: Sha256([0; 32]),
            worker: worker.peer_id(),
            time: n,
            resumed: 0,
            text: None,
            fingerprint: None,
            unverifiable,
        });
        w.append(&st, worker);
        Sha256::of(&st.to_payload())
    }

    fn reject(w: &mut World, by: &Identity, receipt: Sha256) {
        let st = Statement::Verdict(Verdict {
            receipt,
            worker: None,
            validator: by.peer_id(),
            accept: false,
            stats: Default::default(),
            reason: None,
            time: 0,
        });
        w.append(&st, by);
    }

    /// Base model, mix weights, a derived dataset, contributors by records, a publisher with
    /// no contributors named, a rejected receipt and a rejection by someone who is no validator:
    /// the ledger equals the computation by hand.
    #[test]
    fn the_ledger_is_the_hand_count() {
        let mut w = World::new(2, 60);
        let publisher = Identity::from_seed(&[50; 32]);
        let (a, b, c) = (
            Identity::from_seed(&[51; 32]),
            Identity::from_seed(&[52; 32]),
            Identity::from_seed(&[53; 32]),
        );
        let origin = w.origin();
        let (i0, d0) = dataset(&mut w, &publisher, "base-data", None, &[("zed", 1)]);
        let (i1, d1) = dataset(
            &mut w,
            &publisher,
            "stories",
            None,
            &[("alice", 2), ("bob", 1)],
        );
        let (i2, d2) = dataset(&mut w, &publisher, "poems", Some("base-data@1"), &[]);
        let entry = |name: &str, index, dataset, weight| MixEntry {
            name: name.into(),
            log: origin.clone(),
            index,
            dataset,
            weight,
            tokens: None,
        };
        model(
            &mut w,
            &publisher,
            1,
            None,
            vec![entry("base-data@1", i0, d0, 1.0)],
        );
        model(
            &mut w,
            &publisher,
            2,
            Some(1),
            vec![
                entry("stories@1", i1, d1, 3.0),
                entry("poems@1", i2, d2, 1.0),
            ],
        );
        let from = w.entries.len() as u64;
        receipt(&mut w, &a, 100, 1);
        receipt(&mut w, &b, 60, 2);
        let bad = receipt(&mut w, &c, 40, 3);
        receipt(&mut w, &c, 10, 4);
        // A receipt its worker marked unverifiable earns neither compute nor data credit.
        receipt_marked(&mut w, &a, 500, 6, true);
        let validator = w.members[0].clone();
        reject(&mut w, &validator, bad);
        // A rejection by a key that is no validator of the rules changes nothing.
        let good = receipt(&mut w, &a, 0, 5);
        reject(&mut w, &publisher, good);
        let to = w.entries.len() as u64;

        let compute = |threads| {
            let mut l = Ledgerer::new(&w.rules, &w.network, &origin, from, to).threads(threads);
            for (k, chunk) in w.entries.chunks(4).enumerate() {
                l.push(k as u64 * 4, chunk).unwrap();
            }
            l.finish(Sha256([9; 32])).unwrap()
        };
        let got = compute(2);
        assert_eq!(
            got.ledger,
            compute(1).ledger,
            "the thread count changes nothing"
        );
        assert_eq!((got.receipts, got.rejected), (4, 1), "credited, rejected");
        let lines: BTreeMap<String, (u64, u64)> = got
            .lines
            .iter()
            .map(|l| (l.key.clone(), (l.compute, l.data)))
            .collect();
        // Compute: a 100, b 60, c 10 (its 40 rejected). Data: 170 tokens of model 2: 85 to its
        // base (all to base-data: zed), 85 split 3:1 → stories 64 (alice 43, bob 21; the left
        // token to the larger remainder), poems 21 → 10 to base-data (zed), 11 to the publisher.
        let want: BTreeMap<String, (u64, u64)> = [
            (a.peer_id().to_string(), (100, 0)),
            (b.peer_id().to_string(), (60, 0)),
            (c.peer_id().to_string(), (10, 0)),
            ("zed".to_string(), (0, 95)),
            ("alice".to_string(), (0, 43)),
            ("bob".to_string(), (0, 21)),
            (publisher.peer_id().to_string(), (0, 11)),
        ]
        .into_iter()
        .collect();
        assert_eq!(lines, want);
        assert_eq!(
            (got.ledger.compute, got.ledger.data, got.ledger.unattributed),
            (170, 170, 0)
        );
        // A receipt logged again in a later period (re-wrapped) is not paid twice.
        let copy = {
            let v: serde_json::Value = serde_json::from_slice(&w.entries[from as usize]).unwrap();
            serde_json::to_vec_pretty(&v).unwrap()
        };
        w.entries.push(copy);
        let mut l = Ledgerer::new(&w.rules, &w.network, &origin, to, to + 1);
        l.push(0, &w.entries).unwrap();
        let later = l.finish(Sha256([9; 32])).unwrap();
        assert_eq!(
            (later.receipts, later.ledger.compute, later.ledger.lines),
            (0, 0, 0)
        );
        // Every line proves into the root; a changed line does not.
        for l in &got.lines {
            let (i, proof) = got.prove(&l.key).unwrap();
            assert!(verify_line(&got.ledger, l, i, &proof));
            let mut x = l.clone();
            x.data += 1;
            assert!(!verify_line(&got.ledger, &x, i, &proof));
        }
    }
}
