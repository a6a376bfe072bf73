//! Counting a proposal's votes: a pure function of the log's entries, the rules and the closing
//! checkpoint, so that two talliers always sign byte-identical `decision` bodies.
//!
//! Feed a [`Tallier`] every entry of the log in order (from index 0: membership by accepted
//! verdicts looks before the proposal; late votes are reported after the close); each vote
//! that names the proposal is counted or refused with its reason: malformed, wrongly signed,
//! another network, not a member, late, or superseded by the voter's later vote (a member's
//! last vote before the deadline counts).

use std::collections::{HashMap, HashSet};

use agora_core::dsse::Envelope;
use agora_core::identity::PeerId;
use agora_core::statement::{
    Choice, Counts, Decision, LogRef, Motion, Proposal, Sha256, Statement, TreeHead, mix_digest,
};
use agora_tlog::merkle::MemoryTree;

use crate::rules::{Proposers, Rules};
use crate::{Error, Result, contains};

/// Longest proposal title, in bytes.
pub const MAX_TITLE: usize = 256;
/// Longest proposal body, in bytes.
pub const MAX_BODY: usize = 64 << 10;
/// Most datasets in a proposed mix.
pub const MAX_MIX: usize = 1024;
/// Longest reason a vote may give, in bytes.
pub const MAX_REASON: usize = 4096;

/// A proposal read from the log and checked against the rules.
#[derive(Clone, Debug)]
pub struct Opened {
    /// The proposal.
    pub proposal: Proposal,
    /// Where it is: the log's origin, its index, the SHA-256 of its payload (its id).
    pub at: LogRef,
    /// The signed envelope, verbatim.
    pub envelope: Vec<u8>,
}

impl Opened {
    /// The proposal's id: the SHA-256 of its DSSE payload.
    pub fn id(&self) -> Sha256 {
        self.at.statement
    }

    /// The digest of what it would adopt.
    pub fn subject(&self) -> Sha256 {
        match &self.proposal.motion {
            Motion::Mix { digest, .. } | Motion::Rules { digest, .. } => *digest,
        }
    }
}

/// Check a proposal statement as the rules require (what `agora propose` checks before
/// logging, and every tallier after).
pub fn check_proposal(rules: &Rules, network: &str, p: &Proposal) -> Result<()> {
    let bad = |m: String| Err(Error::Proposal(m));
    if p.network != network {
        return bad(format!(
            "it belongs to network {}, not this one ({network})",
            p.network
        ));
    }
    if p.title.trim().is_empty() || p.title.len() > MAX_TITLE {
        return bad(format!("the title must be 1 to {MAX_TITLE} bytes"));
    }
    if p.body.len() > MAX_BODY {
        return bad(format!("the body is over {MAX_BODY} bytes"));
    }
    if rules.proposers == Proposers::Members && !rules.members.contains_key(&p.proposer) {
        return bad(format!(
            "{} is not a listed member, and only members may propose",
            p.proposer
        ));
    }
    match &p.motion {
        Motion::Mix { mix, digest } => {
            if mix.is_empty() || mix.len() > MAX_MIX {
                return bad(format!("a proposed mix has 1 to {MAX_MIX} datasets"));
            }
            if let Some(e) = mix
                .iter()
                .find(|e| !(e.weight.is_finite() && e.weight > 0.0))
            {
                return bad(format!(
                    "dataset {} has weight {}: weights are finite and above 0",
                    e.name, e.weight
                ));
            }
            if mix_digest(mix) != *digest {
                return bad("its mix digest is not the digest of its mix".into());
            }
        }
        Motion::Rules { text, digest } => {
            if Sha256::of(text.as_bytes()) != *digest {
                return bad("its rules digest is not the digest of its rules".into());
            }
            Rules::parse(text).map_err(|e| Error::Proposal(format!("the proposed {e}")))?;
        }
    }
    Ok(())
}

/// Read a proposal from its log entry: the envelope's signatures (the proposer's among them)
/// and the rules.
pub fn open_proposal(
    rules: &Rules,
    network: &str,
    origin: &str,
    index: u64,
    entry: &[u8],
) -> Result<Opened> {
    let env = Envelope::from_json(entry)?;
    let (signers, st) = Statement::open(&env)?;
    let Statement::Proposal(proposal) = st else {
        return Err(Error::Proposal(format!(
            "entry {index} is a {} statement, not a proposal",
            st.kind().name()
        )));
    };
    if !signers.contains(&proposal.proposer) {
        return Err(Error::Proposal(format!(
            "entry {index} is not signed by its proposer {}",
            proposal.proposer
        )));
    }
    check_proposal(rules, network, &proposal)?;
    Ok(Opened {
        at: LogRef {
            log: origin.to_string(),
            index,
            statement: Sha256::of(&env.payload),
        },
        proposal,
        envelope: entry.to_vec(),
    })
}

/// Why a vote was not counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// It names the proposal but is not a well-formed vote.
    Malformed(String),
    /// Its signature does not verify, or it is not signed by its voter.
    BadSignature,
    /// It was cast in another community.
    OtherNetwork(String),
    /// The voter may not vote.
    NotAMember,
    /// It is in the log after the closing checkpoint.
    Late,
    /// The voter voted again later (at this index) before the deadline.
    Superseded(u64),
    /// A copy of the vote logged at this index (the same signed payload, wrapped again): it
    /// counts once, where it was first logged, and supersedes nothing.
    Replayed(u64),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Malformed(m) => write!(f, "malformed: {m}"),
            Reason::BadSignature => f.write_str("wrongly signed"),
            Reason::OtherNetwork(n) => write!(f, "another network ({n})"),
            Reason::NotAMember => f.write_str("not a member"),
            Reason::Late => f.write_str("late (after the closing checkpoint)"),
            Reason::Superseded(i) => write!(f, "superseded by the voter's vote at entry {i}"),
            Reason::Replayed(i) => write!(f, "a copy of the vote at entry {i}"),
        }
    }
}

/// A voter's key, kept as its 32 bytes (a re-tally of a million votes keeps one per vote).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Voter(pub [u8; 32]);

impl From<PeerId> for Voter {
    fn from(p: PeerId) -> Voter {
        Voter(p.0.to_bytes())
    }
}

impl Voter {
    /// The voter's peer id.
    pub fn peer_id(&self) -> Option<PeerId> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0)
            .ok()
            .map(PeerId)
    }
}

impl std::fmt::Display for Voter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.peer_id() {
            Some(p) => write!(f, "{p}"),
            None => write!(f, "key {}", hex::encode(self.0)),
        }
    }
}

/// A vote not counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Its log index.
    pub index: u64,
    /// The voter it names, when it could be read.
    pub voter: Option<Voter>,
    /// Why.
    pub reason: Reason,
}

/// A vote naming the proposal, before membership and supersession are settled.
struct Cast {
    index: u64,
    voter: Voter,
    choice: Choice,
    digest: Sha256,
    reason: Option<Box<str>>,
}

/// A vote counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// Its log index.
    pub index: u64,
    /// The voter.
    pub voter: PeerId,
    /// The choice.
    pub choice: Choice,
    /// The voter's weight.
    pub weight: u64,
    /// SHA-256 of the vote's payload (a leaf of the decision's `votes_root`).
    pub digest: Sha256,
    /// The reason the voter gave.
    pub reason: Option<String>,
}

/// A decision statement about the proposal found in the log.
#[derive(Clone, Debug)]
pub struct Logged {
    /// Its index.
    pub index: u64,
    /// Its signer(s).
    pub signers: Vec<PeerId>,
    /// The envelope, verbatim (JSON).
    pub envelope: String,
    /// What it says.
    pub decision: Decision,
}

/// The result of a tally.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Total weight of the members entitled to vote.
    pub eligible: u64,
    /// Weighted counts.
    pub counts: Counts,
    /// Counted votes, in log order.
    pub counted: Vec<Counted>,
    /// Refused votes, in log order.
    pub refused: Vec<Refused>,
    /// Whether the quorum is met.
    pub quorum_met: bool,
    /// Whether the proposal is adopted.
    pub adopted: bool,
    /// RFC 6962 root over the counted votes' payload digests, in log order.
    pub votes_root: Sha256,
    /// Decision statements about this proposal already in the log.
    pub logged: Vec<Logged>,
}

impl Tally {
    /// The decision every tallier signs: no clock, no tallier name.
    pub fn decision(
        &self,
        network: &str,
        proposal: &Opened,
        deadline: u64,
        closed_at: TreeHead,
    ) -> Decision {
        Decision {
            network: network.to_string(),
            proposal: proposal.at.clone(),
            subject: proposal.subject(),
            deadline,
            closed_at,
            eligible: self.eligible,
            counts: self.counts,
            voters: self.counted.len() as u64,
            quorum_met: self.quorum_met,
            adopted: self.adopted,
            votes_root: self.votes_root,
        }
    }
}

enum Seen {
    Other,
    Verdict { worker: Voter, receipt: Sha256 },
    Receipt { worker: Voter, receipt: Sha256 },
    Vote(Cast),
    Refused(Refused),
    Decision(Box<Logged>),
}

/// Counts one proposal's votes from log entries fed in order.
pub struct Tallier<'a> {
    rules: &'a Rules,
    network: &'a str,
    proposal: &'a Opened,
    needle: String,
    close: Option<u64>,
    threads: usize,
    next: u64,
    members: HashMap<Voter, u64>,
    keys: crate::keys::KeyCache,
    accepted: HashMap<Voter, HashSet<Sha256>>,
    /// Receipts logged before the proposal, with their worker (only with membership by
    /// verdicts: a verdict vouches for a worker only on a receipt it signed).
    receipts: HashMap<Sha256, Voter>,
    votes: Vec<Cast>,
    refused: Vec<Refused>,
    logged: Vec<Logged>,
}

impl<'a> Tallier<'a> {
    /// A tally of `proposal` whose vote closed at the checkpoint of size `close` (`None`: still
    /// open, every vote so far counts).
    pub fn new(
        rules: &'a Rules,
        network: &'a str,
        proposal: &'a Opened,
        close: Option<u64>,
    ) -> Tallier<'a> {
        Tallier {
            rules,
            network,
            proposal,
            needle: proposal.id().to_string(),
            close,
            threads: crate::parallel::threads(),
            next: 0,
            members: rules
                .members
                .iter()
                .map(|(p, w)| (Voter::from(*p), *w))
                .collect(),
            keys: crate::keys::KeyCache::with(
                rules
                    .member_list
                    .iter()
                    .chain(rules.validators.iter())
                    .copied(),
            ),
            accepted: HashMap::new(),
            receipts: HashMap::new(),
            votes: Vec::new(),
            refused: Vec::new(),
            logged: Vec::new(),
        }
    }

    /// Use this many threads to check signatures (default: every core).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Feed the next entries of the log, from index `first` (which must follow the last fed).
    pub fn push(&mut self, first: u64, entries: &[Vec<u8>]) -> Result<()> {
        if first != self.next {
            return Err(Error::History(format!(
                "entries fed out of order: expected index {}, got {first}",
                self.next
            )));
        }
        let indexed: Vec<(u64, &[u8])> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (first + i as u64, e.as_slice()))
            .collect();
        let seen = crate::parallel::map(&indexed, self.threads, |(i, e)| self.classify(*i, e));
        for s in seen {
            match s {
                Seen::Other => {}
                Seen::Verdict { worker, receipt } => {
                    self.accepted.entry(worker).or_default().insert(receipt);
                }
                Seen::Receipt { worker, receipt } => {
                    self.receipts.entry(receipt).or_insert(worker);
                }
                Seen::Vote(c) => self.votes.push(c),
                Seen::Refused(r) => self.refused.push(r),
                Seen::Decision(d) => self.logged.push(*d),
            }
        }
        self.next = first + entries.len() as u64;
        Ok(())
    }

    fn classify(&self, index: u64, entry: &[u8]) -> Seen {
        let Ok(env) = Envelope::from_json(entry) else {
            return Seen::Other;
        };
        let before = index < self.proposal.at.index;
        let wants_verdicts = before && self.rules.min_accepted_verdicts > 0;
        let names_us = contains(&env.payload, self.needle.as_bytes());
        let verdict = wants_verdicts
            && (contains(&env.payload, b"https://agora.network/verdict/")
                || contains(&env.payload, b"https://agora.network/receipt/"));
        if !(names_us || verdict) {
            return Seen::Other;
        }
        let opened = Statement::open_with(&env, &|s| self.keys.resolve(s));
        let (signers, st) = match opened {
            Ok(x) => x,
            Err(e) => {
                if !names_us || !is_vote(&env.payload) {
                    return Seen::Other;
                }
                let reason = match e {
                    agora_core::Error::BadSignature { .. }
                    | agora_core::Error::NoSignatures
                    | agora_core::Error::UnknownKeyId { .. } => Reason::BadSignature,
                    e => Reason::Malformed(e.to_string()),
                };
                return Seen::Refused(Refused {
                    index,
                    voter: None,
                    reason,
                });
            }
        };
        match st {
            Statement::Verdict(v) if wants_verdicts => match v.worker {
                Some(worker)
                    if v.accept
                        && signers.contains(&v.validator)
                        && self.rules.validators.contains(&v.validator) =>
                {
                    Seen::Verdict {
                        worker: worker.into(),
                        receipt: v.receipt,
                    }
                }
                _ => Seen::Other,
            },
            Statement::Receipt(r) if wants_verdicts && signers.contains(&r.worker) => {
                Seen::Receipt {
                    worker: r.worker.into(),
                    receipt: Sha256::of(&env.payload),
                }
            }
            Statement::Vote(v) if v.proposal == self.proposal.id() => {
                let refuse = |reason| {
                    Seen::Refused(Refused {
                        index,
                        voter: Some(v.voter.into()),
                        reason,
                    })
                };
                if !signers.contains(&v.voter) {
                    return refuse(Reason::BadSignature);
                }
                if v.network != self.network {
                    return refuse(Reason::OtherNetwork(v.network.clone()));
                }
                if index <= self.proposal.at.index {
                    return refuse(Reason::Malformed("logged before the proposal".into()));
                }
                if v.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
                    return refuse(Reason::Malformed(format!(
                        "its reason is over {MAX_REASON} bytes"
                    )));
                }
                if self.close.is_some_and(|c| index >= c) {
                    return refuse(Reason::Late);
                }
                Seen::Vote(Cast {
                    index,
                    voter: v.voter.into(),
                    choice: v.choice,
                    digest: Sha256::of(&env.payload),
                    reason: v.reason.map(String::into_boxed_str),
                })
            }
            Statement::Decision(d) if d.proposal.statement == self.proposal.id() => {
                Seen::Decision(Box::new(Logged {
                    index,
                    signers,
                    envelope: String::from_utf8_lossy(entry).into_owned(),
                    decision: d,
                }))
            }
            _ => Seen::Other,
        }
    }

    /// Close the tally: membership, supersession, counts and the votes' root.
    pub fn finish(self) -> Tally {
        let rules = self.rules;
        // A worker's accepted receipts: those a validator accepted that are in the log before
        // the proposal, signed by that worker.
        let vouched = |v: &Voter| -> u64 {
            self.accepted.get(v).map_or(0, |r| {
                r.iter().filter(|d| self.receipts.get(d) == Some(v)).count() as u64
            })
        };
        let qualified = |v: &Voter| {
            rules.min_accepted_verdicts > 0 && vouched(v) >= rules.min_accepted_verdicts
        };
        let weight = |v: &Voter| -> Option<u64> {
            self.members
                .get(v)
                .copied()
                .or_else(|| qualified(v).then_some(1))
        };
        let mut eligible: u64 = self.members.values().sum();
        eligible += self
            .accepted
            .keys()
            .filter(|v| !self.members.contains_key(v) && qualified(v))
            .count() as u64;
        let mut refused = self.refused;
        // A copy of a vote logged again (the same signed payload) counts where it was first
        // logged and supersedes nothing: nobody can bring back a voter's earlier choice.
        let mut first: HashMap<Sha256, u64> = HashMap::new();
        let mut votes = Vec::with_capacity(self.votes.len());
        for c in self.votes {
            match first.get(&c.digest) {
                Some(&i) => refused.push(Refused {
                    index: c.index,
                    voter: Some(c.voter),
                    reason: Reason::Replayed(i),
                }),
                None => {
                    first.insert(c.digest, c.index);
                    votes.push(c);
                }
            }
        }
        drop(first);
        let mut last: HashMap<Voter, u64> = HashMap::new();
        for c in &votes {
            last.insert(c.voter, c.index);
        }
        let mut counted = Vec::new();
        for c in votes {
            let Some(w) = weight(&c.voter) else {
                refused.push(Refused {
                    index: c.index,
                    voter: Some(c.voter),
                    reason: Reason::NotAMember,
                });
                continue;
            };
            match last.get(&c.voter) {
                Some(&l) if l != c.index => refused.push(Refused {
                    index: c.index,
                    voter: Some(c.voter),
                    reason: Reason::Superseded(l),
                }),
                _ => match c.voter.peer_id() {
                    Some(voter) => counted.push(Counted {
                        index: c.index,
                        voter,
                        choice: c.choice,
                        weight: w,
                        digest: c.digest,
                        reason: c.reason.map(String::from),
                    }),
                    None => refused.push(Refused {
                        index: c.index,
                        voter: Some(c.voter),
                        reason: Reason::Malformed("not an Ed25519 key".into()),
                    }),
                },
            }
        }
        refused.sort_by_key(|r| r.index);
        let mut counts = Counts::default();
        let mut tree = MemoryTree::new();
        for c in &counted {
            match c.choice {
                Choice::Yes => counts.yes += c.weight,
                Choice::No => counts.no += c.weight,
                Choice::Abstain => counts.abstain += c.weight,
            }
            tree.append(&c.digest.0);
        }
        let quorum_met = rules.quorum_met(counts.yes + counts.no + counts.abstain, eligible);
        Tally {
            eligible,
            counts,
            quorum_met,
            adopted: quorum_met && rules.threshold_met(counts.yes, counts.no),
            votes_root: Sha256(tree.root().0),
            counted,
            refused,
            logged: self.logged,
        }
    }
}

fn is_vote(payload: &[u8]) -> bool {
    contains(payload, b"https://agora.network/vote/")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::history;
    use agora_core::Identity;
    use agora_core::statement::{MixEntry, Vote};
    use agora_tlog::checkpoint::{Checkpoint, SignedCheckpoint};
    use std::collections::BTreeMap;

    /// A community in memory: its log, witness, members and checkpoint history.
    pub(crate) struct World {
        pub log: Identity,
        pub witness: Identity,
        pub members: Vec<Identity>,
        pub rules: Rules,
        pub network: String,
        pub entries: Vec<Vec<u8>>,
        pub tree: MemoryTree,
        pub history: BTreeMap<u64, Vec<u8>>,
    }

    impl World {
        pub(crate) fn new(members: u8, period: u64) -> World {
            let log = Identity::from_seed(&[1; 32]);
            let witness = Identity::from_seed(&[2; 32]);
            let members: Vec<Identity> = (0..members)
                .map(|i| Identity::from_seed(&[10 + i; 32]))
                .collect();
            let policy = format!(
                "log {}\nwitness w1 {}\nquorum w1\n",
                log.vkey(&log.default_log_origin()).unwrap(),
                witness.witness_vkey("w1").unwrap()
            );
            let names: Vec<String> = members.iter().map(|m| m.peer_id().to_string()).collect();
            let text = crate::rules::governance_toml(&names, &policy, period, 50, 50);
            let rules = Rules::parse(&text.replacen("\n[governance]\n", "", 1)).unwrap();
            World {
                log,
                witness,
                members,
                rules,
                network: "ab".repeat(32),
                entries: Vec::new(),
                tree: MemoryTree::new(),
                history: BTreeMap::new(),
            }
        }

        pub(crate) fn origin(&self) -> String {
            self.log.default_log_origin()
        }

        pub(crate) fn append(&mut self, st: &Statement, by: &Identity) -> u64 {
            let e = st.sign(by).to_json().into_bytes();
            self.tree.append(&e);
            self.entries.push(e);
            self.entries.len() as u64 - 1
        }

        /// Publish a checkpoint of the current tree, cosigned at `time`.
        pub(crate) fn checkpoint(&mut self, time: u64) -> Vec<u8> {
            let origin = self.origin();
            let cp = Checkpoint::new(&origin, self.tree.size(), self.tree.root());
            let mut sc =
                SignedCheckpoint::sign(cp, &self.log.log_signer(&origin).unwrap()).unwrap();
            let sig = self
                .witness
                .cosigner("w1")
                .unwrap()
                .cosign(&sc.note.text, time)
                .unwrap();
            sc.note.sigs.push(sig);
            let b = sc.to_bytes();
            self.history.insert(self.tree.size(), b.clone());
            b
        }

        pub(crate) fn propose(&mut self, by: usize) -> (u64, Proposal) {
            let mix = vec![MixEntry {
                name: "fortunes@1".into(),
                log: self.origin(),
                index: 0,
                dataset: Sha256([7; 32]),
                weight: 1.0,
                tokens: None,
            }];
            let p = Proposal {
                network: self.network.clone(),
                title: "Adopt fortunes".into(),
                body: String::new(),
                motion: Motion::Mix {
                    digest: mix_digest(&mix),
                    mix,
                },
                proposer: self.members[by].peer_id(),
                time: 1,
            };
            let id = self.members[by].clone();
            (self.append(&Statement::Proposal(p.clone()), &id), p)
        }

        pub(crate) fn vote(&mut self, who: &Identity, proposal: Sha256, choice: Choice) -> u64 {
            self.vote_in(who, proposal, choice, &self.network.clone())
        }

        pub(crate) fn vote_in(
            &mut self,
            who: &Identity,
            proposal: Sha256,
            choice: Choice,
            network: &str,
        ) -> u64 {
            let v = Vote {
                network: network.into(),
                proposal,
                choice,
                reason: None,
                voter: who.peer_id(),
                time: 2,
            };
            self.append(&Statement::Vote(v), who)
        }

        /// Tally proposal `index` as any tallier would: deadline, close, entries.
        pub(crate) fn tally(&self, index: u64) -> (Opened, Option<(u64, TreeHead)>, Tally) {
            let p = open_proposal(
                &self.rules,
                &self.network,
                &self.origin(),
                index,
                &self.entries[index as usize],
            )
            .unwrap();
            let policy = &self.rules.log;
            let open = history::first_holding(&self.history, policy, index)
                .unwrap()
                .unwrap();
            let deadline = open.time + self.rules.voting_period_secs;
            let latest = history::attest(policy, self.history.values().last().unwrap()).unwrap();
            let close =
                history::first_attested_at(&self.history, policy, open.size(), &latest, deadline)
                    .unwrap();
            let closed = close.map(|c| TreeHead {
                size: c.size(),
                root: Sha256(c.checkpoint.checkpoint.root.0),
            });
            let mut t =
                Tallier::new(&self.rules, &self.network, &p, closed.map(|c| c.size)).threads(2);
            for (i, chunk) in self.entries.chunks(3).enumerate() {
                t.push(i as u64 * 3, chunk).unwrap();
            }
            let tally = t.finish();
            (p, closed.map(|c| (deadline, c)), tally)
        }
    }

    #[test]
    fn a_vote_counted_and_every_refusal_explained() {
        let mut w = World::new(5, 100);
        let outsider = Identity::from_seed(&[99; 32]);
        w.checkpoint(1000);
        let (pi, _) = w.propose(0);
        w.checkpoint(1010); // first holds the proposal: deadline 1110
        let id = Sha256::of(
            &Envelope::from_json(&w.entries[pi as usize])
                .unwrap()
                .payload,
        );
        let m = w.members.clone();
        let changed = w.vote(&m[0], id, Choice::No);
        w.vote(&m[0], id, Choice::Yes); // changes its vote: the last counts
        w.vote(&m[1], id, Choice::Yes);
        w.vote(&m[2], id, Choice::No);
        // Someone logs member 0's first vote again, wrapped anew: it brings nothing back.
        let copy = {
            let v: serde_json::Value =
                serde_json::from_slice(&w.entries[changed as usize]).unwrap();
            let b = serde_json::to_vec_pretty(&v).unwrap();
            w.tree.append(&b);
            w.entries.push(b);
            w.entries.len() as u64 - 1
        };
        let outsider_vote = w.vote(&outsider, id, Choice::Yes);
        let replayed = w.vote_in(&m[3], id, Choice::Yes, &"cd".repeat(32));
        // A vote whose signature is not its voter's.
        let forged = {
            let v = Vote {
                network: w.network.clone(),
                proposal: id,
                choice: Choice::No,
                reason: None,
                voter: m[4].peer_id(),
                time: 3,
            };
            w.append(&Statement::Vote(v), &outsider)
        };
        w.checkpoint(1050);
        w.checkpoint_noop();
        let closing = w.checkpoint(1120); // first at or after the deadline
        let late = w.vote(&m[4], id, Choice::No);
        w.checkpoint(1200);

        let (p, closed, t) = w.tally(pi);
        let (deadline, head) = closed.unwrap();
        assert_eq!(deadline, 1110);
        let cp = SignedCheckpoint::parse(&closing).unwrap();
        assert_eq!(head.size, cp.checkpoint.size);
        assert_eq!(t.eligible, 5);
        assert_eq!(
            t.counts,
            Counts {
                yes: 2,
                no: 1,
                abstain: 0
            }
        );
        assert!(t.quorum_met && t.adopted);
        let why: Vec<(u64, Reason)> = t
            .refused
            .iter()
            .map(|r| (r.index, r.reason.clone()))
            .collect();
        assert_eq!(
            why,
            vec![
                (changed, Reason::Superseded(changed + 1)),
                (copy, Reason::Replayed(changed)),
                (outsider_vote, Reason::NotAMember),
                (replayed, Reason::OtherNetwork("cd".repeat(32))),
                (forged, Reason::BadSignature),
                (late, Reason::Late),
            ]
        );
        // Two talliers sign the same bytes.
        let d1 = Statement::Decision(t.decision(&w.network, &p, deadline, head)).to_payload();
        let (p2, _, t2) = w.tally(pi);
        let d2 = Statement::Decision(t2.decision(&w.network, &p2, deadline, head)).to_payload();
        assert_eq!(d1, d2);
    }

    #[test]
    fn an_open_vote_has_no_close_and_a_foreign_proposal_is_refused() {
        let mut w = World::new(3, 100);
        let (pi, mut p) = w.propose(1);
        w.checkpoint(5000);
        let (_, closed, t) = w.tally(pi);
        assert!(closed.is_none());
        assert_eq!(t.counts, Counts::default());
        assert!(!t.quorum_met && !t.adopted);
        // A proposal of another network, or by a non-member, is refused with its reason.
        p.network = "cd".repeat(32);
        let e = check_proposal(&w.rules, &w.network, &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to network"), "{e}");
        p.network = w.network.clone();
        p.proposer = Identity::from_seed(&[99; 32]).peer_id();
        let e = check_proposal(&w.rules, &w.network, &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("only members may propose"), "{e}");
    }

    #[test]
    fn workers_with_enough_accepted_verdicts_vote() {
        use agora_core::statement::Verdict;
        let mut w = World::new(2, 100);
        w.rules.min_accepted_verdicts = 2;
        let (x, y, z) = (
            Identity::from_seed(&[60; 32]),
            Identity::from_seed(&[61; 32]),
            Identity::from_seed(&[62; 32]),
        );
        let validator = w.members[0].clone();
        let outsider = Identity::from_seed(&[63; 32]);
        let mut n = 0u64;
        // A receipt signed by `worker` (or, with `forged`, by someone else in its name), and a
        // verdict on it.
        let mut verdict =
            |w: &mut World, worker: &Identity, by: &Identity, accept: bool, signer: &Identity| {
                n += 1;
                let r = Statement::Receipt(agora_core::statement::Receipt {
                    model: Sha256([1; 32]),
                    request: Sha256::of(&n.to_be_bytes()),
                    output: Sha256([0; 32]),
                    seed: n,
                    prompt_tokens: 1,
                    completion_tokens: 1,
                    proof: Sha256([0; 32]),
                    worker: worker.peer_id(),
                    time: n,
                    resumed: 0,
                    text: None,
                    fingerprint: None,
                    unverifiable: false,
                });
                w.append(&r, signer);
                let v = Verdict {
                    receipt: Sha256::of(&r.to_payload()),
                    worker: Some(worker.peer_id()),
                    validator: by.peer_id(),
                    accept,
                    stats: Default::default(),
                    reason: None,
                    time: 0,
                };
                w.append(&Statement::Verdict(v), by);
            };
        let (x2, y2, z2, o2) = (x.clone(), y.clone(), z.clone(), outsider.clone());
        verdict(&mut w, &x, &validator, true, &x2);
        verdict(&mut w, &x, &validator, true, &x2); // x: two receipts accepted by a validator
        verdict(&mut w, &y, &validator, true, &y2);
        verdict(&mut w, &y, &validator, false, &y2); // y: one accepted, one rejected
        verdict(&mut w, &y, &validator, true, &o2); // and one on a receipt y did not sign
        verdict(&mut w, &z, &outsider, true, &z2);
        verdict(&mut w, &z, &outsider, true, &z2); // z: accepted by someone who is no validator
        let (pi, _) = w.propose(0);
        verdict(&mut w, &y, &validator, true, &y2); // after the proposal: does not count
        w.checkpoint(1000);
        let id = Sha256::of(
            &Envelope::from_json(&w.entries[pi as usize])
                .unwrap()
                .payload,
        );
        let vx = w.vote(&x, id, Choice::Yes);
        let vy = w.vote(&y, id, Choice::Yes);
        let vz = w.vote(&z, id, Choice::Yes);
        w.checkpoint(1200);
        let (_, _, t) = w.tally(pi);
        assert_eq!(t.eligible, 3, "two members and x");
        assert_eq!(
            t.counted.iter().map(|c| c.index).collect::<Vec<_>>(),
            vec![vx]
        );
        let refused: Vec<(u64, Reason)> = t
            .refused
            .iter()
            .map(|r| (r.index, r.reason.clone()))
            .collect();
        assert_eq!(
            refused,
            vec![(vy, Reason::NotAMember), (vz, Reason::NotAMember)]
        );
    }

    impl World {
        /// An entry that is not a statement (logs taking `any` bytes hold such).
        fn checkpoint_noop(&mut self) {
            self.tree.append(b"not a statement");
            self.entries.push(b"not a statement".to_vec());
        }
    }
}
