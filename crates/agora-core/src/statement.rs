//! The statement kinds of DESIGN.md as versioned serde types.
//!
//! - `model` and `dataset` are in-toto Statement v1 (`_type` `https://in-toto.io/Statement/v1`)
//!   with sha256 subjects and predicate types `https://agora.network/<kind>/v1`, carried in DSSE as
//!   `application/vnd.in-toto+json`, so standard tooling reads them.
//! - `receipt`, `verdict`, `proposal`, `vote`, `decision`, `evidence` and `ledger` are JSON
//!   objects whose `_type` is `https://agora.network/<kind>/<version>` ([`Kind::version`]),
//!   carried as `application/vnd.agora.statement+json`.
//!
//! Parsing is strict: unknown fields, unknown kinds and unknown versions are precise errors.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::fmt;

use crate::dsse::Envelope;
use crate::identity::{Identity, PeerId};
use crate::{Error, Result};

/// DSSE payload type of the in-toto kinds (`model`, `dataset`).
pub const INTOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// DSSE payload type of every other kind.
pub const AGORA_PAYLOAD_TYPE: &str = "application/vnd.agora.statement+json";
/// `_type` of an in-toto Statement v1, the only in-toto version read.
pub const INTOTO_STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
const INTOTO_STATEMENT_PREFIX: &str = "https://in-toto.io/Statement/";
/// Start of every Agora type URI, `https://agora.network/<kind>/<version>`.
pub const TYPE_PREFIX: &str = "https://agora.network/";
/// The version this build writes and reads of every kind but those of [`Kind::version`].
pub const VERSION: &str = "v1";

/// A SHA-256 digest, serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Sha256 {
        Sha256(sha2::Sha256::digest(data).into())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl std::str::FromStr for Sha256 {
    type Err = &'static str;
    fn from_str(s: &str) -> std::result::Result<Sha256, &'static str> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err("a sha256 digest must be 64 lowercase hex digits");
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| "invalid hex")?;
        Ok(Sha256(out))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Sha256, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<PeerId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The statement kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Model weights and what they were trained on (in-toto).
    Model,
    /// A dataset's records and shards (in-toto).
    Dataset,
    /// One inference, by digests.
    Receipt,
    /// A validator's accept/reject on a receipt.
    Verdict,
    /// A governance proposal.
    Proposal,
    /// A vote on a proposal.
    Vote,
    /// The outcome of a proposal.
    Decision,
    /// A self-contained proof of misbehaviour.
    Evidence,
    /// A period's credit to contributors.
    Ledger,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 9] = [
        Kind::Model,
        Kind::Dataset,
        Kind::Receipt,
        Kind::Verdict,
        Kind::Proposal,
        Kind::Vote,
        Kind::Decision,
        Kind::Evidence,
        Kind::Ledger,
    ];

    /// The kind's name in its type URI, e.g. `receipt`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Dataset => "dataset",
            Kind::Receipt => "receipt",
            Kind::Verdict => "verdict",
            Kind::Proposal => "proposal",
            Kind::Vote => "vote",
            Kind::Decision => "decision",
            Kind::Evidence => "evidence",
            Kind::Ledger => "ledger",
        }
    }

    /// The version of the kind this build writes and reads. `proposal`, `vote` and `decision`
    /// are at v2: v1 (free-form options, clock deadlines, no network id) was never used by a
    /// network and is refused.
    pub fn version(self) -> &'static str {
        match self {
            Kind::Proposal | Kind::Vote | Kind::Decision => "v2",
            _ => VERSION,
        }
    }

    /// `https://agora.network/<kind>/<version>`: the `_type` (or in-toto `predicateType`).
    pub fn type_uri(self) -> String {
        format!("{TYPE_PREFIX}{}/{}", self.name(), self.version())
    }

    /// Whether the kind is an in-toto Statement v1 predicate (`model` and `dataset`).
    pub fn is_intoto(self) -> bool {
        matches!(self, Kind::Model | Kind::Dataset)
    }

    /// The DSSE payload type it is carried as.
    pub fn payload_type(self) -> &'static str {
        if self.is_intoto() {
            INTOTO_PAYLOAD_TYPE
        } else {
            AGORA_PAYLOAD_TYPE
        }
    }

    /// Split a type URI into its kind, checking the version.
    fn from_type_uri(uri: &str) -> Result<Kind> {
        let rest = uri
            .strip_prefix(TYPE_PREFIX)
            .ok_or_else(|| Error::UnknownStatementType(uri.to_string()))?;
        let (name, version) = rest
            .split_once('/')
            .ok_or_else(|| Error::UnknownStatementType(uri.to_string()))?;
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| Error::UnknownStatementType(uri.to_string()))?;
        if version != kind.version() {
            return Err(Error::UnknownVersion {
                kind: kind.name(),
                version: version.to_string(),
            });
        }
        Ok(kind)
    }
}

/// An in-toto digest set; Agora subjects always carry sha256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestSet {
    /// The subject's SHA-256.
    pub sha256: Sha256,
}

/// An in-toto subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// The artifact's name (e.g. a file name).
    pub name: String,
    /// Its digests.
    pub digest: DigestSet,
}

/// Where a statement is logged: the log's origin (its checkpoint's first line), the entry's
/// index, and the SHA-256 of the statement's DSSE payload (so the entry found at that index can
/// be checked to be the one meant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRef {
    /// Origin of the log holding the statement.
    pub log: String,
    /// Index of the statement in that log.
    pub index: u64,
    /// SHA-256 of the statement's DSSE payload.
    pub statement: Sha256,
}

/// One logged dataset (a `dataset` statement) in a model's training mix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixEntry {
    /// `name@version` of the dataset, as its statement says.
    pub name: String,
    /// Origin of the log holding the dataset statement.
    pub log: String,
    /// Index of the dataset statement in that log.
    pub index: u64,
    /// SHA-256 of the dataset statement's DSSE payload.
    pub dataset: Sha256,
    /// Sampling weight in the mix (relative: weights need not sum to one). Finite, > 0.
    pub weight: f64,
    /// Tokens of this dataset seen in training, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}

/// Data the publisher says the model was trained on but that no logged dataset statement
/// covers (no record can be proven in or out of it): named so that what is not provable is
/// visible, not hidden.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredData {
    /// The data's published name.
    pub name: String,
    /// SPDX license expression, as published.
    pub license: String,
    /// Where it is published.
    pub source: String,
    /// Anything else said about it (share of the mix, filtering…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One file of the model, in OpenSSF model-signing v1.0's `resources` form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// The file's name.
    pub name: String,
    /// The digest algorithm: always `sha256`.
    pub algorithm: String,
    /// The digest, lowercase hex.
    pub digest: String,
}

/// The model a model was trained from (fine-tuned, distilled, quantised…).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModel {
    /// SHA-256 of the base model's weights (GGUF).
    pub weights: Sha256,
    /// Its name, as its publisher calls it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its own `model` statement, when one is logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<LogRef>,
}

/// The training recipe (configuration, script) by digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The recipe file's name.
    pub name: String,
    /// Its SHA-256.
    pub sha256: Sha256,
}

/// Predicate of a `model` statement (its manifest). The subject is the GGUF file and its
/// sha256; `resources` repeats it in OpenSSF model-signing v1.0's form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPredicate {
    /// The model's name.
    pub name: String,
    /// Its architecture, as the GGUF says (`general.architecture`, e.g. `llama`).
    pub architecture: String,
    /// SHA-256 of the tokenizer: of the GGUF's `tokenizer.*` metadata (see agora-models' gguf).
    pub tokenizer: Sha256,
    /// SPDX license expression of the weights.
    pub license: String,
    /// The model's files with their digests (OpenSSF model-signing v1.0 field name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// The model it was trained from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<BaseModel>,
    /// The logged datasets it was trained on, with their weights (may be empty).
    #[serde(default)]
    pub data_mix: Vec<MixEntry>,
    /// Data said to be in the training but not logged as datasets (unprovable claims).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declared_data: Vec<DeclaredData>,
    /// The training recipe, by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Recipe>,
    /// What is not known about its training, said plainly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
    /// The community decision that adopted `data_mix` (a `decision` statement whose proposal's
    /// mix digest is this manifest's), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<LogRef>,
    /// The weights' chunk root (SHA-256 of their list of 1 MiB chunk digests, see agora-models'
    /// `chunks`): what a download from peers checks each chunk against as it arrives, so that
    /// no peer can serve other bytes under this manifest's weights digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Sha256>,
}

impl ModelPredicate {
    /// What serde cannot check: every mix weight finite and positive, every resource a sha256.
    pub fn check(&self) -> std::result::Result<(), String> {
        for m in &self.data_mix {
            if !(m.weight.is_finite() && m.weight > 0.0) {
                return Err(format!(
                    "the weight of {} is {}: weights are finite and positive",
                    m.name, m.weight
                ));
            }
        }
        for r in &self.resources {
            if r.algorithm != "sha256" || r.digest.parse::<Sha256>().is_err() {
                return Err(format!(
                    "resource {:?} is not a sha256 digest ({} {:?})",
                    r.name, r.algorithm, r.digest
                ));
            }
        }
        Ok(())
    }
}

/// Predicate of a `dataset` statement. The subjects are its shards with their sha256.
///
/// The two roots are those of `agora-data`: `records_root` over the records' canonical bytes in
/// order (inclusion proofs), `ids_root` over the records sorted by the SHA-256 of their id
/// (proofs that an id is absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetPredicate {
    /// The dataset's name.
    pub name: String,
    /// Its version (1, 2, …): each ingest or removal makes a new one.
    #[serde(default)]
    pub version: u32,
    /// SPDX license expression.
    pub license: String,
    /// Where the data comes from (URL or description).
    pub source: String,
    /// RFC 6962 Merkle root over the records, so one record's membership can be proven.
    pub records_root: Sha256,
    /// RFC 6962 Merkle root over the records sorted by id digest, so an id's absence can be
    /// proven.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids_root: Option<Sha256>,
    /// Number of records under `records_root`.
    pub records: u64,
    /// Total size in bytes (the records' canonical bytes).
    pub size: u64,
    /// `name@version` of the dataset this one was derived from (a filtered or edited copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<String>,
    /// Who contributed the records, with how many each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contributors: Vec<Contribution>,
}

/// A contributor of records to a dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contribution {
    /// Their key (an Agora peer id or another stable identifier).
    pub key: String,
    /// A human label, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Records credited to them.
    pub records: u64,
}

/// One inference. Digests only: the client holds the transcript.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// SHA-256 of the model weights (GGUF).
    pub model: Sha256,
    /// Salted hash of messages, sampling parameters and seed.
    pub request: Sha256,
    /// SHA-256 of the output.
    pub output: Sha256,
    /// The sampling seed (keys the sampler's noise).
    pub seed: u64,
    /// Prompt length in tokens.
    pub prompt_tokens: u32,
    /// Output length in tokens (the tokens `output` digests).
    pub completion_tokens: u32,
    /// SHA-256 of the activation proof.
    pub proof: Sha256,
    /// The worker that generated the output and signs the receipt.
    pub worker: PeerId,
    /// POSIX seconds.
    pub time: u64,
    /// How many leading output tokens were handed to this worker on failover (produced by a
    /// worker that failed) rather than chosen by it. The output digest and the proof cover
    /// them, but a verifier holds the worker only to the tokens after them. Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed: u32,
    /// SHA-256 of the output text in its normalised form ([`crate::text`]): what a provenance
    /// lookup finds the receipt by. The text is the one the worker's tokens decode to, stop
    /// sequences applied. Absent on receipts made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Sha256>,
    /// A MinHash sketch of the output text ([`crate::text::Fingerprint`]), when the client
    /// asked for it: what finds edited copies of the answer. Absent by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<crate::text::Fingerprint>,
    /// The worker says its engine failed its self-check (a token's numbers depended on how it
    /// was computed), so its proof cannot be reproduced: no verifier can hold the answer to it,
    /// and validators neither accept nor reject it. Absent when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unverifiable: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A validator's accept/reject on a receipt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// SHA-256 of the receipt statement's DSSE payload.
    pub receipt: Sha256,
    /// The worker that signed the receipt (so that anyone can keep its reputation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<PeerId>,
    /// The validator that checked the receipt and signs the verdict.
    pub validator: PeerId,
    /// Whether the receipt passed verification.
    pub accept: bool,
    /// Measured statistics (e.g. maximum logit deviation, mismatched tokens).
    #[serde(default)]
    pub stats: BTreeMap<String, f64>,
    /// Why, in words (typically given on a rejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// POSIX seconds.
    pub time: u64,
}

/// What a proposal asks a community to adopt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum Motion {
    /// A data mix for the community's models: the manifest `data_mix` entries themselves, so
    /// that voters see what they vote on and a model published with the decision can be checked
    /// to carry exactly this mix ([`mix_digest`]).
    Mix {
        /// The mix, as a model manifest will carry it.
        mix: Vec<MixEntry>,
        /// [`mix_digest`] of `mix`.
        digest: Sha256,
    },
    /// New governance rules (the TOML text of a genesis `[governance]` table). Adopting them
    /// is a new genesis, hence a new network id: nodes switch by hand (docs/community.md).
    Rules {
        /// The rules' TOML text.
        text: String,
        /// SHA-256 of `text`.
        digest: Sha256,
    },
}

/// SHA-256 of a data mix's JSON as serde writes `Vec<MixEntry>`: the entries in order, each
/// `{"name","log","index","dataset","weight"[,"tokens"]}` in that field order, no spaces, weights
/// as serde_json writes an f64 (shortest round-trip form): what binds a proposal, a decision and
/// a model manifest to one mix.
pub fn mix_digest(mix: &[MixEntry]) -> Sha256 {
    Sha256::of(&serde_json::to_vec(mix).unwrap_or_default())
}

/// A question put to a community's vote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    /// The community's network id (hex SHA-256 of its genesis file): a proposal belongs to one
    /// community only.
    pub network: String,
    /// One-line summary.
    pub title: String,
    /// The full text (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// What is to be adopted.
    pub motion: Motion,
    /// The proposer, who signs the proposal.
    pub proposer: PeerId,
    /// POSIX seconds, as the proposer's clock says (never used to count: deadlines are log
    /// checkpoints).
    pub time: u64,
}

/// A vote's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// For.
    Yes,
    /// Against.
    No,
    /// Counted for the quorum, neither for nor against.
    Abstain,
}

impl Choice {
    /// `yes`, `no` or `abstain`.
    pub fn name(self) -> &'static str {
        match self {
            Choice::Yes => "yes",
            Choice::No => "no",
            Choice::Abstain => "abstain",
        }
    }
}

impl std::str::FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Choice, String> {
        match s {
            "yes" => Ok(Choice::Yes),
            "no" => Ok(Choice::No),
            "abstain" => Ok(Choice::Abstain),
            _ => Err(format!("a vote is yes, no or abstain, not {s:?}")),
        }
    }
}

/// One member's vote on a proposal. A member may vote again: the last vote in the log before
/// the deadline counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    /// The community's network id (so that a vote cannot be replayed in another community).
    pub network: String,
    /// SHA-256 of the proposal statement's DSSE payload.
    pub proposal: Sha256,
    /// The choice.
    pub choice: Choice,
    /// Why, in the voter's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The voter, who signs the vote.
    pub voter: PeerId,
    /// POSIX seconds, as the voter's clock says (never used to count).
    pub time: u64,
}

/// Weighted counts of a tally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Weight of the `yes` votes counted.
    pub yes: u64,
    /// Weight of the `no` votes counted.
    pub no: u64,
    /// Weight of the `abstain` votes counted.
    pub abstain: u64,
}

/// A log checkpoint by size and root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeHead {
    /// Tree size.
    pub size: u64,
    /// Root hash (hex).
    pub root: Sha256,
}

/// The outcome of a proposal: a pure function of the log, so that every tallier signs the same
/// bytes (no tallier name, no clock: the signer is the DSSE signature's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// The community's network id.
    pub network: String,
    /// The proposal decided.
    pub proposal: LogRef,
    /// What the proposal would adopt: its mix or rules digest.
    pub subject: Sha256,
    /// POSIX seconds the vote closed: the quorum-attested time of the checkpoint that first held
    /// the proposal, plus the voting period.
    pub deadline: u64,
    /// The first checkpoint a quorum of witnesses cosigned at or after the deadline: votes
    /// count if they are in the log under it.
    pub closed_at: TreeHead,
    /// Total weight of the members entitled to vote.
    pub eligible: u64,
    /// Weighted counts of the votes counted.
    pub counts: Counts,
    /// How many votes were counted (one per member at most).
    pub voters: u64,
    /// Whether the votes cast reach the quorum.
    pub quorum_met: bool,
    /// Whether the proposal is adopted (quorum met and `yes` above the threshold).
    pub adopted: bool,
    /// RFC 6962 root over the counted votes (each leaf: the vote's DSSE payload's SHA-256,
    /// in log order).
    pub votes_root: Sha256,
}

/// One contributor's credit for a period: a leaf of a ledger's Merkle tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditLine {
    /// The contributor's key (a worker's peer id, or a dataset contributor's key).
    pub key: String,
    /// Generated tokens of its accepted receipts.
    pub compute: u64,
    /// Tokens credited to the data it contributed.
    pub data: u64,
}

/// A period's credit to compute and data contributors, computed from log entries alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    /// The community's network id.
    pub network: String,
    /// Origin of the log the period is of.
    pub log: String,
    /// Entries from this index…
    pub from: u64,
    /// …to this one (exclusive): a checkpoint of the log.
    pub to: TreeHead,
    /// Sum of every line's compute credit.
    pub compute: u64,
    /// Sum of every line's data credit.
    pub data: u64,
    /// Tokens whose data credit could not be attributed (a model or dataset statement not in
    /// the log, a model with no mix): said, not spread.
    pub unattributed: u64,
    /// How many lines (contributors).
    pub lines: u64,
    /// RFC 6962 root over the lines (each leaf: a line's canonical JSON), sorted by key.
    pub root: Sha256,
}

/// What an evidence statement proves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Claim {
    /// A log signed two inconsistent checkpoints.
    SplitView {
        /// The log's verifier key.
        log: String,
        /// Both signed checkpoints, verbatim.
        checkpoints: [String; 2],
        /// The consistency proof the log offered from the smaller to the larger (base64 hashes).
        #[serde(default)]
        proof: Vec<String>,
    },
    /// A tallier signed a decision that the log does not support: the signed decision, and the
    /// decision the observer recomputed from the same log. [`Evidence::verify`] checks the
    /// signature and that the two disagree; which one the log supports anyone re-checks by
    /// tallying the proposal again (`agora tally`), never on the observer's word.
    WrongDecision {
        /// The decision envelope, signed by its tallier (JSON).
        decision: String,
        /// The recomputed decision statement's payload (JSON).
        recomputed: String,
    },
    /// A validator rejected a worker's receipt (both DSSE envelopes, as JSON).
    RejectedProof {
        /// The receipt envelope, signed by its worker.
        receipt: String,
        /// The verdict envelope rejecting it, signed by its validator.
        verdict: String,
    },
}

/// A self-contained proof of misbehaviour: anyone can check it with [`Evidence::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Who observed the misbehaviour (the signer of the statement).
    pub observer: PeerId,
    /// POSIX seconds.
    pub time: u64,
    /// What is claimed, with everything needed to check it.
    pub claim: Claim,
}

/// What [`Evidence::verify`] established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proven {
    /// The log showed two histories, in this way.
    SplitView(agora_tlog::witness::SplitView),
    /// A tallier signed a decision other than the one recomputed for the same proposal.
    WrongDecision {
        /// Who signed the disputed decision.
        tallier: PeerId,
        /// The proposal.
        proposal: LogRef,
    },
    /// A validator signed a rejection of a worker's signed receipt.
    RejectedProof {
        /// The worker that signed the receipt.
        worker: PeerId,
        /// The validator that rejected it.
        validator: PeerId,
    },
}

impl Evidence {
    /// Check the claim on its own. For a split view, `trusted_log` is the only thing the verifier
    /// needs to trust; the evidence must be about that key.
    pub fn verify(&self, trusted_log: Option<&agora_tlog::Vkey>) -> Result<Proven> {
        match &self.claim {
            Claim::SplitView {
                log,
                checkpoints,
                proof,
            } => {
                let vkey = agora_tlog::Vkey::parse(log)?;
                if let Some(t) = trusted_log
                    && (t.key != vkey.key || t.name != vkey.name)
                {
                    return Err(Error::Evidence(
                        "the evidence is about a different log key".into(),
                    ));
                }
                let proof = proof
                    .iter()
                    .map(|h| agora_tlog::Hash::from_base64(h, "proof hash"))
                    .collect::<agora_tlog::Result<Vec<_>>>()?;
                let sv = agora_tlog::witness::verify_split_view(
                    &vkey,
                    checkpoints[0].as_bytes(),
                    checkpoints[1].as_bytes(),
                    &proof,
                )?;
                Ok(Proven::SplitView(sv))
            }
            Claim::WrongDecision {
                decision,
                recomputed,
            } => {
                let env = Envelope::from_json(decision.as_bytes())?;
                let (signers, st) = Statement::open(&env)?;
                let Statement::Decision(signed) = st else {
                    return Err(Error::Evidence("not a decision statement".into()));
                };
                let Statement::Decision(ours) =
                    Statement::from_payload(AGORA_PAYLOAD_TYPE, recomputed.as_bytes())?
                else {
                    return Err(Error::Evidence(
                        "the recomputed statement is not a decision".into(),
                    ));
                };
                if signed.proposal != ours.proposal || signed.network != ours.network {
                    return Err(Error::Evidence(
                        "the two decisions are about different proposals".into(),
                    ));
                }
                if signed == ours {
                    return Err(Error::Evidence("the two decisions agree".into()));
                }
                let tallier = signers
                    .first()
                    .copied()
                    .ok_or_else(|| Error::Evidence("the decision has no signer".into()))?;
                Ok(Proven::WrongDecision {
                    tallier,
                    proposal: signed.proposal,
                })
            }
            Claim::RejectedProof { receipt, verdict } => {
                let renv = Envelope::from_json(receipt.as_bytes())?;
                let (rsigners, r) = Statement::open(&renv)?;
                let Statement::Receipt(r) = r else {
                    return Err(Error::Evidence("not a receipt statement".into()));
                };
                if !rsigners.contains(&r.worker) {
                    return Err(Error::Evidence(
                        "the receipt is not signed by its worker".into(),
                    ));
                }
                let venv = Envelope::from_json(verdict.as_bytes())?;
                let (vsigners, v) = Statement::open(&venv)?;
                let Statement::Verdict(v) = v else {
                    return Err(Error::Evidence("not a verdict statement".into()));
                };
                if !vsigners.contains(&v.validator) {
                    return Err(Error::Evidence(
                        "the verdict is not signed by its validator".into(),
                    ));
                }
                if v.receipt != Sha256::of(&renv.payload) {
                    return Err(Error::Evidence(
                        "the verdict is about another receipt".into(),
                    ));
                }
                if v.accept {
                    return Err(Error::Evidence("the verdict accepts the receipt".into()));
                }
                Ok(Proven::RejectedProof {
                    worker: r.worker,
                    validator: v.validator,
                })
            }
        }
    }
}

/// Every statement kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    /// An in-toto statement about model weights.
    Model {
        /// The GGUF file and its sha256 (at least one subject).
        subject: Vec<Subject>,
        /// What the model is and was trained on.
        predicate: ModelPredicate,
    },
    /// An in-toto statement about a dataset.
    Dataset {
        /// Its shards with their sha256 (at least one subject).
        subject: Vec<Subject>,
        /// What the dataset is.
        predicate: DatasetPredicate,
    },
    /// One inference.
    Receipt(Receipt),
    /// A validator's verdict on a receipt.
    Verdict(Verdict),
    /// A governance proposal.
    Proposal(Proposal),
    /// A vote on a proposal.
    Vote(Vote),
    /// The outcome of a proposal.
    Decision(Decision),
    /// Proof of misbehaviour.
    Evidence(Evidence),
    /// A period's credit ledger.
    Ledger(Ledger),
}

fn malformed(kind: Kind, e: impl fmt::Display) -> Error {
    Error::MalformedStatement {
        kind: kind.name(),
        msg: e.to_string(),
    }
}

fn typed<T: serde::de::DeserializeOwned>(kind: Kind, v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| malformed(kind, e))
}

impl Statement {
    /// The statement's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Statement::Model { .. } => Kind::Model,
            Statement::Dataset { .. } => Kind::Dataset,
            Statement::Receipt(_) => Kind::Receipt,
            Statement::Verdict(_) => Kind::Verdict,
            Statement::Proposal(_) => Kind::Proposal,
            Statement::Vote(_) => Kind::Vote,
            Statement::Decision(_) => Kind::Decision,
            Statement::Evidence(_) => Kind::Evidence,
            Statement::Ledger(_) => Kind::Ledger,
        }
    }

    /// The JSON payload (keys sorted, `_type` first).
    pub fn to_payload(&self) -> Vec<u8> {
        let kind = self.kind();
        let to = |v: std::result::Result<serde_json::Value, serde_json::Error>| {
            v.unwrap_or(serde_json::Value::Null)
        };
        let mut map = serde_json::Map::new();
        match self {
            Statement::Model { subject, predicate } => {
                map.insert("_type".into(), INTOTO_STATEMENT_V1.into());
                map.insert("subject".into(), to(serde_json::to_value(subject)));
                map.insert("predicateType".into(), kind.type_uri().into());
                map.insert("predicate".into(), to(serde_json::to_value(predicate)));
            }
            Statement::Dataset { subject, predicate } => {
                map.insert("_type".into(), INTOTO_STATEMENT_V1.into());
                map.insert("subject".into(), to(serde_json::to_value(subject)));
                map.insert("predicateType".into(), kind.type_uri().into());
                map.insert("predicate".into(), to(serde_json::to_value(predicate)));
            }
            other => {
                let v = to(match other {
                    Statement::Receipt(x) => serde_json::to_value(x),
                    Statement::Verdict(x) => serde_json::to_value(x),
                    Statement::Proposal(x) => serde_json::to_value(x),
                    Statement::Vote(x) => serde_json::to_value(x),
                    Statement::Decision(x) => serde_json::to_value(x),
                    Statement::Evidence(x) => serde_json::to_value(x),
                    Statement::Ledger(x) => serde_json::to_value(x),
                    Statement::Model { .. } | Statement::Dataset { .. } => {
                        Ok(serde_json::Value::Null)
                    }
                });
                if let serde_json::Value::Object(m) = v {
                    map = m;
                }
                map.insert("_type".into(), kind.type_uri().into());
            }
        }
        serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default()
    }

    /// Parse a payload of the given DSSE payload type.
    pub fn from_payload(payload_type: &str, payload: &[u8]) -> Result<Statement> {
        let v: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| Error::MalformedStatement {
                kind: "statement",
                msg: e.to_string(),
            })?;
        let serde_json::Value::Object(mut map) = v else {
            return Err(Error::MalformedStatement {
                kind: "statement",
                msg: "not a JSON object".into(),
            });
        };
        let Some(serde_json::Value::String(t)) = map.remove("_type") else {
            return Err(Error::MalformedStatement {
                kind: "statement",
                msg: "missing string field _type".into(),
            });
        };
        if t == INTOTO_STATEMENT_V1 || t.starts_with(INTOTO_STATEMENT_PREFIX) {
            if t != INTOTO_STATEMENT_V1 {
                return Err(Error::UnknownVersion {
                    kind: "in-toto Statement",
                    version: t[INTOTO_STATEMENT_PREFIX.len()..].to_string(),
                });
            }
            let Some(serde_json::Value::String(pt)) = map.remove("predicateType") else {
                return Err(Error::MalformedStatement {
                    kind: "in-toto",
                    msg: "missing string field predicateType".into(),
                });
            };
            let kind = Kind::from_type_uri(&pt)?;
            if !kind.is_intoto() {
                return Err(Error::UnknownStatementType(pt));
            }
            if payload_type != INTOTO_PAYLOAD_TYPE {
                return Err(Error::PayloadType {
                    expected: INTOTO_PAYLOAD_TYPE,
                    found: payload_type.to_string(),
                });
            }
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body<P> {
                subject: Vec<Subject>,
                predicate: P,
            }
            let check_subjects = |s: &[Subject]| {
                if s.is_empty() {
                    Err(malformed(
                        kind,
                        "an in-toto statement needs at least one subject",
                    ))
                } else {
                    Ok(())
                }
            };
            let v = serde_json::Value::Object(map);
            return Ok(match kind {
                Kind::Model => {
                    let b: Body<ModelPredicate> = typed(kind, v)?;
                    check_subjects(&b.subject)?;
                    b.predicate.check().map_err(|e| malformed(kind, e))?;
                    Statement::Model {
                        subject: b.subject,
                        predicate: b.predicate,
                    }
                }
                _ => {
                    let b: Body<DatasetPredicate> = typed(kind, v)?;
                    check_subjects(&b.subject)?;
                    Statement::Dataset {
                        subject: b.subject,
                        predicate: b.predicate,
                    }
                }
            });
        }
        let kind = Kind::from_type_uri(&t)?;
        if kind.is_intoto() {
            return Err(Error::MalformedStatement {
                kind: kind.name(),
                msg: "must be an in-toto Statement v1".into(),
            });
        }
        if payload_type != AGORA_PAYLOAD_TYPE {
            return Err(Error::PayloadType {
                expected: AGORA_PAYLOAD_TYPE,
                found: payload_type.to_string(),
            });
        }
        let v = serde_json::Value::Object(map);
        let st = match kind {
            Kind::Receipt => Statement::Receipt(typed(kind, v)?),
            Kind::Verdict => Statement::Verdict(typed(kind, v)?),
            Kind::Proposal => Statement::Proposal(typed(kind, v)?),
            Kind::Vote => Statement::Vote(typed(kind, v)?),
            Kind::Decision => Statement::Decision(typed(kind, v)?),
            Kind::Ledger => Statement::Ledger(typed(kind, v)?),
            _ => Statement::Evidence(typed(kind, v)?),
        };
        // One statement, one byte string: a payload must be exactly what `to_payload` writes
        // (keys sorted, no spaces, no needless escapes, no duplicate keys). Otherwise one vote or
        // receipt could be logged again under another digest, and readers that look at the
        // bytes before parsing would see what others do not.
        if st.to_payload() != payload {
            return Err(malformed(
                kind,
                "the payload is not in canonical form (as to_payload writes it)",
            ));
        }
        Ok(st)
    }

    /// Sign into a DSSE envelope.
    pub fn sign(&self, id: &Identity) -> Envelope {
        Envelope::sign(self.kind().payload_type(), self.to_payload(), id)
    }

    /// Verify an envelope's signatures over its exact payload bytes, then parse the statement
    /// from those bytes. Returns the signers and the statement.
    pub fn open(env: &Envelope) -> Result<(Vec<PeerId>, Statement)> {
        Statement::open_with(env, &|_| None)
    }

    /// [`Statement::open`] with keyids already known resolved by `known`
    /// ([`Envelope::verify_with`]).
    pub fn open_with(
        env: &Envelope,
        known: &dyn Fn(&str) -> Option<PeerId>,
    ) -> Result<(Vec<PeerId>, Statement)> {
        let signers = env.verify_with(known)?;
        let st = Statement::from_payload(&env.payload_type, &env.payload)?;
        Ok((signers, st))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn d(b: u8) -> Sha256 {
        Sha256([b; 32])
    }

    fn samples(id: &Identity) -> Vec<Statement> {
        let peer = id.peer_id();
        vec![
            Statement::Model {
                subject: vec![Subject {
                    name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                    digest: DigestSet { sha256: d(1) },
                }],
                predicate: ModelPredicate {
                    name: "SmolLM2-135M-Instruct".into(),
                    architecture: "llama".into(),
                    tokenizer: d(2),
                    license: "Apache-2.0".into(),
                    resources: vec![Resource {
                        name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                        algorithm: "sha256".into(),
                        digest: d(1).to_string(),
                    }],
                    base_model: Some(BaseModel {
                        weights: d(3),
                        name: Some("SmolLM2-135M".into()),
                        statement: Some(LogRef {
                            log: "agora.log/x".into(),
                            index: 3,
                            statement: d(9),
                        }),
                    }),
                    data_mix: vec![MixEntry {
                        name: "fortunes@1".into(),
                        log: "agora.log/x".into(),
                        index: 7,
                        dataset: d(4),
                        weight: 0.5,
                        tokens: Some(1234),
                    }],
                    declared_data: vec![DeclaredData {
                        name: "FineWeb-Edu".into(),
                        license: "ODC-By-1.0".into(),
                        source: "https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu".into(),
                        note: None,
                    }],
                    recipe: Some(Recipe {
                        name: "train.yaml".into(),
                        sha256: d(8),
                    }),
                    unknown: vec!["the share of each dataset".into()],
                    decision: None,
                    chunks: None,
                },
            },
            Statement::Dataset {
                subject: vec![Subject {
                    name: "shard-0000.jsonl".into(),
                    digest: DigestSet { sha256: d(5) },
                }],
                predicate: DatasetPredicate {
                    name: "fineweb-edu-sample".into(),
                    license: "ODC-By-1.0".into(),
                    source: "https://example.org/data".into(),
                    version: 1,
                    records_root: d(6),
                    ids_root: Some(d(11)),
                    records: 1000,
                    size: 123456,
                    derived_from: None,
                    contributors: vec![Contribution {
                        key: "alice".into(),
                        label: Some("Alice".into()),
                        records: 1000,
                    }],
                },
            },
            Statement::Receipt(Receipt {
                model: d(1),
                request: d(7),
                output: d(8),
                seed: 42,
                prompt_tokens: 10,
                completion_tokens: 128,
                proof: d(9),
                worker: peer,
                time: 1_700_000_000,
                resumed: 0,
                text: Some(d(11)),
                fingerprint: crate::text::Fingerprint::of(
                    "one two three four five six seven eight nine ten",
                ),
                unverifiable: false,
            }),
            Statement::Verdict(Verdict {
                receipt: d(10),
                worker: Some(peer),
                validator: peer,
                accept: false,
                stats: [("max_logit_delta".to_string(), 0.25)]
                    .into_iter()
                    .collect(),
                reason: Some("token 17 differs".into()),
                time: 1_700_000_001,
            }),
            Statement::Proposal(Proposal {
                network: "ab".repeat(32),
                title: "More code".into(),
                body: "Raise the code share".into(),
                motion: Motion::Mix {
                    mix: vec![],
                    digest: mix_digest(&[]),
                },
                proposer: peer,
                time: 1_700_000_002,
            }),
            Statement::Vote(Vote {
                network: "ab".repeat(32),
                proposal: d(12),
                choice: Choice::Yes,
                reason: Some("more code".into()),
                voter: peer,
                time: 1_700_000_003,
            }),
            Statement::Decision(sample_decision()),
            Statement::Ledger(Ledger {
                network: "ab".repeat(32),
                log: "agora.log/x".into(),
                from: 0,
                to: TreeHead {
                    size: 10,
                    root: d(14),
                },
                compute: 100,
                data: 100,
                unattributed: 0,
                lines: 3,
                root: d(15),
            }),
        ]
    }

    fn sample_decision() -> Decision {
        Decision {
            network: "ab".repeat(32),
            proposal: LogRef {
                log: "agora.log/x".into(),
                index: 4,
                statement: d(12),
            },
            subject: d(16),
            deadline: 1_700_100_000,
            closed_at: TreeHead {
                size: 9,
                root: d(17),
            },
            eligible: 5,
            counts: Counts {
                yes: 3,
                no: 1,
                abstain: 0,
            },
            voters: 4,
            quorum_met: true,
            adopted: true,
            votes_root: d(13),
        }
    }

    #[test]
    fn every_kind_roundtrips_through_dsse() {
        let id = Identity::from_seed(&[3; 32]);
        for st in samples(&id) {
            let env = st.sign(&id);
            let env = Envelope::from_json(env.to_json().as_bytes()).unwrap();
            let (signers, back) = Statement::open(&env).unwrap();
            assert_eq!(signers, vec![id.peer_id()]);
            assert_eq!(back, st);
            let payload = String::from_utf8(env.payload.clone()).unwrap();
            assert!(payload.starts_with("{\"_type\":"), "{payload}");
        }
    }

    #[test]
    fn model_is_intoto() {
        let id = Identity::from_seed(&[3; 32]);
        let st = &samples(&id)[0];
        let v: serde_json::Value = serde_json::from_slice(&st.to_payload()).unwrap();
        assert_eq!(v["_type"], "https://in-toto.io/Statement/v1");
        assert_eq!(v["predicateType"], "https://agora.network/model/v1");
        assert_eq!(v["subject"][0]["digest"]["sha256"], d(1).to_string());
        assert_eq!(st.sign(&id).payload_type, "application/vnd.in-toto+json");
    }

    #[test]
    fn precise_errors() {
        let id = Identity::from_seed(&[3; 32]);
        let receipt = String::from_utf8(samples(&id)[2].to_payload()).unwrap();
        let model = String::from_utf8(samples(&id)[0].to_payload()).unwrap();
        let p = |t: &str, s: &str| Statement::from_payload(t, s.as_bytes());
        assert_eq!(
            p(
                AGORA_PAYLOAD_TYPE,
                &receipt.replace("receipt/v1", "receipt/v2")
            ),
            Err(Error::UnknownVersion {
                kind: "receipt",
                version: "v2".into()
            })
        );
        assert_eq!(
            p(INTOTO_PAYLOAD_TYPE, &model.replace("model/v1", "model/v9")),
            Err(Error::UnknownVersion {
                kind: "model",
                version: "v9".into()
            })
        );
        assert_eq!(
            p(
                INTOTO_PAYLOAD_TYPE,
                &model.replace("Statement/v1", "Statement/v0.1")
            ),
            Err(Error::UnknownVersion {
                kind: "in-toto Statement",
                version: "v0.1".into()
            })
        );
        assert_eq!(
            p(
                AGORA_PAYLOAD_TYPE,
                &receipt.replace("receipt/v1", "horse/v1")
            ),
            Err(Error::UnknownStatementType(
                "https://agora.network/horse/v1".into()
            ))
        );
        assert!(matches!(
            p(INTOTO_PAYLOAD_TYPE, &receipt),
            Err(Error::PayloadType { .. })
        ));
        assert!(matches!(
            p(
                AGORA_PAYLOAD_TYPE,
                &receipt.replace("\"seed\"", "\"sneed\"")
            ),
            Err(Error::MalformedStatement {
                kind: "receipt",
                ..
            })
        ));
        assert!(matches!(
            p(
                AGORA_PAYLOAD_TYPE,
                &receipt.replace("\"time\"", "\"extra\":1,\"time\"")
            ),
            Err(Error::MalformedStatement {
                kind: "receipt",
                ..
            })
        ));
        assert!(matches!(
            p(AGORA_PAYLOAD_TYPE, "[1]"),
            Err(Error::MalformedStatement { .. })
        ));
        assert!(matches!(
            p(AGORA_PAYLOAD_TYPE, "{\"a\":1}"),
            Err(Error::MalformedStatement { .. })
        ));
        // Uppercase hex is not a digest.
        let upper = receipt.replace(&d(7).to_string(), &"0A".repeat(32));
        assert!(matches!(
            p(AGORA_PAYLOAD_TYPE, &upper),
            Err(Error::MalformedStatement {
                kind: "receipt",
                ..
            })
        ));
    }

    #[test]
    fn split_view_evidence() {
        use agora_tlog::checkpoint::{Checkpoint, SignedCheckpoint};
        use agora_tlog::merkle::MemoryTree;
        let log = Identity::from_seed(&[5; 32]);
        let origin = log.default_log_origin();
        let signer = log.log_signer(&origin).unwrap();
        let (mut a, mut b) = (MemoryTree::new(), MemoryTree::new());
        for i in 0..12u8 {
            a.append(&[i]);
            b.append(&[if i == 1 { 200 } else { i }]);
        }
        let cp = |t: &MemoryTree, n: u64| {
            let sc =
                SignedCheckpoint::sign(Checkpoint::new(&origin, n, t.root_at(n).unwrap()), &signer)
                    .unwrap();
            String::from_utf8(sc.to_bytes()).unwrap()
        };
        let witness = Identity::from_seed(&[6; 32]);
        let ev = Evidence {
            observer: witness.peer_id(),
            time: 3,
            claim: Claim::SplitView {
                log: log.vkey(&origin).unwrap().to_string(),
                checkpoints: [cp(&a, 6), cp(&b, 11)],
                proof: b
                    .consistency_proof(6, 11)
                    .unwrap()
                    .iter()
                    .map(|h| h.to_base64())
                    .collect(),
            },
        };
        let trusted = log.vkey(&origin).unwrap();
        assert!(matches!(
            ev.verify(Some(&trusted)),
            Ok(Proven::SplitView(_))
        ));
        // Someone else's key: refused.
        let other = Identity::from_seed(&[7; 32]).vkey(&origin).unwrap();
        assert!(ev.verify(Some(&other)).is_err());
        // Consistent checkpoints are not evidence.
        let honest = Evidence {
            claim: Claim::SplitView {
                log: trusted.to_string(),
                checkpoints: [cp(&a, 6), cp(&a, 11)],
                proof: a
                    .consistency_proof(6, 11)
                    .unwrap()
                    .iter()
                    .map(|h| h.to_base64())
                    .collect(),
            },
            ..ev
        };
        assert!(matches!(honest.verify(Some(&trusted)), Err(Error::Tlog(_))));
    }

    #[test]
    fn wrong_decision_evidence() {
        let id = Identity::from_seed(&[4; 32]);
        let signed = sample_decision();
        let forged = Statement::Decision(Decision {
            counts: Counts {
                yes: 5,
                no: 0,
                abstain: 0,
            },
            ..signed.clone()
        })
        .sign(&id)
        .to_json();
        let recomputed =
            String::from_utf8(Statement::Decision(signed.clone()).to_payload()).unwrap();
        let ev = Evidence {
            observer: id.peer_id(),
            time: 2,
            claim: Claim::WrongDecision {
                decision: forged.clone(),
                recomputed: recomputed.clone(),
            },
        };
        assert_eq!(
            ev.verify(None),
            Ok(Proven::WrongDecision {
                tallier: id.peer_id(),
                proposal: signed.proposal.clone(),
            })
        );
        // Agreeing decisions prove nothing.
        let honest = Statement::Decision(signed.clone()).sign(&id).to_json();
        let agree = Evidence {
            claim: Claim::WrongDecision {
                decision: honest,
                recomputed: recomputed.clone(),
            },
            ..ev.clone()
        };
        assert!(agree.verify(None).is_err());
        // Nor do decisions about another proposal.
        let mut other = signed.clone();
        other.proposal.index = 99;
        let other = String::from_utf8(Statement::Decision(other).to_payload()).unwrap();
        let elsewhere = Evidence {
            claim: Claim::WrongDecision {
                decision: forged,
                recomputed: other,
            },
            ..ev.clone()
        };
        assert!(elsewhere.verify(None).is_err());
        // Evidence roundtrips as a statement.
        let st = Statement::Evidence(ev);
        let (_, back) = Statement::open(&st.sign(&id)).unwrap();
        assert_eq!(back, st);
    }

    #[test]
    fn payloads_must_be_canonical() {
        let id = Identity::from_seed(&[4; 32]);
        for st in samples(&id).into_iter().filter(|s| !s.kind().is_intoto()) {
            let p = String::from_utf8(st.to_payload()).unwrap();
            assert!(Statement::from_payload(AGORA_PAYLOAD_TYPE, p.as_bytes()).is_ok());
            // The same statement with a space, an escaped character or keys out of order is
            // refused: one statement has one byte string.
            let spaced = p.replacen(',', ", ", 1);
            let escaped = p.replacen("https:", "https\\u003a", 1);
            let reordered = format!("{{\"zz\":0,{}", &p[1..]);
            for bad in [spaced, escaped] {
                assert!(
                    matches!(
                        Statement::from_payload(AGORA_PAYLOAD_TYPE, bad.as_bytes()),
                        Err(Error::MalformedStatement { .. })
                    ),
                    "{bad}"
                );
            }
            assert!(Statement::from_payload(AGORA_PAYLOAD_TYPE, reordered.as_bytes()).is_err());
        }
    }

    #[test]
    fn old_governance_versions_are_refused() {
        let id = Identity::from_seed(&[4; 32]);
        let vote = String::from_utf8(samples(&id)[5].to_payload()).unwrap();
        assert!(vote.contains("vote/v2"), "{vote}");
        assert_eq!(
            Statement::from_payload(
                AGORA_PAYLOAD_TYPE,
                vote.replace("vote/v2", "vote/v1").as_bytes()
            ),
            Err(Error::UnknownVersion {
                kind: "vote",
                version: "v1".into()
            })
        );
        assert!(matches!(
            Statement::from_payload(
                AGORA_PAYLOAD_TYPE,
                vote.replace("\"yes\"", "\"maybe\"").as_bytes()
            ),
            Err(Error::MalformedStatement { kind: "vote", .. })
        ));
    }
}
