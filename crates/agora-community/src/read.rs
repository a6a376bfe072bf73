//! Tallies and ledgers from a log, whoever serves it: the entries are read bundle by bundle
//! (over HTTP, or from a log store), hashed into the tree again and checked against a
//! checkpoint the community's policy verifies, so every entry counted is proven in the log.

use agora_core::statement::{Sha256, TreeHead};
use agora_tlog::Hash;
use agora_tlog::hash::leaf_hash;
use agora_tlog::merkle::MemoryTree;
use agora_tlog::tile;

use crate::credit::{Computed, Ledgerer};
use crate::history::{self, Attested, History};
use crate::rules::Rules;
use crate::tally::{Opened, Tallier, Tally, open_proposal};
use crate::{Error, Result};

/// Entries per bundle (tlog-tiles).
const BUNDLE: u64 = 256;

/// A log's entries, by entry bundle.
pub trait EntrySource {
    /// The first `width` entries of bundle `index` (entries `256 × index …`).
    fn bundle(&self, index: u64, width: u16) -> std::result::Result<Vec<Vec<u8>>, String>;
}

/// Read every entry of the tree of `latest`'s size in order, feeding them to `f` a bundle at a
/// time, then check that they hash to `latest`'s root. Returns the tree (for roots of earlier
/// sizes).
pub fn scan(
    src: &dyn EntrySource,
    latest: &Attested,
    mut f: impl FnMut(u64, &[Vec<u8>]) -> Result<()>,
) -> Result<MemoryTree> {
    let size = latest.size();
    let mut tree = MemoryTree::new();
    for b in 0..size.div_ceil(BUNDLE) {
        let width = tile::tile_width(0, b, size);
        let entries = src.bundle(b, width).map_err(Error::History)?;
        if entries.len() != usize::from(width) {
            return Err(Error::History(format!(
                "bundle {b} has {} entries, not {width}",
                entries.len()
            )));
        }
        for e in &entries {
            tree.push_leaf_hash(leaf_hash(e));
        }
        f(b * BUNDLE, &entries)?;
    }
    if tree.root() != latest.checkpoint.checkpoint.root {
        return Err(Error::History(format!(
            "the log's {size} entries do not hash to its checkpoint's root: it serves entries other than the ones it signed"
        )));
    }
    Ok(tree)
}

/// One entry, checked by its inclusion under `latest` (read with its bundle, the proof
/// computed from the entries of the whole tree would be a scan; callers that scan check it
/// there, see [`tally`]).
fn entry(src: &dyn EntrySource, latest: &Attested, index: u64) -> Result<Vec<u8>> {
    if index >= latest.size() {
        return Err(Error::Proposal(format!(
            "entry {index} is beyond the log's checkpoint ({} entries)",
            latest.size()
        )));
    }
    let b = index / BUNDLE;
    let width = tile::tile_width(0, b, latest.size());
    let mut entries = src.bundle(b, width).map_err(Error::History)?;
    let i = (index % BUNDLE) as usize;
    if i >= entries.len() {
        return Err(Error::History(format!("bundle {b} is short")));
    }
    Ok(entries.swap_remove(i))
}

/// A proposal's tally as of `latest`.
#[derive(Debug)]
pub struct Report {
    /// The proposal.
    pub proposal: Opened,
    /// The first checkpoint that held it (its attested time starts the voting period).
    pub opened_at: Attested,
    /// When voting closes (POSIX seconds).
    pub deadline: u64,
    /// The closing checkpoint; `None` while the vote is open.
    pub closed_at: Option<Attested>,
    /// The checkpoint the log was read at.
    pub latest: Attested,
    /// The count.
    pub tally: Tally,
}

impl Report {
    /// The report as JSON (what `agora tally --json` prints and nodes serve): the proposal,
    /// deadline, checkpoints, counts, every counted vote, every refused one with its reason
    /// code (`malformed`, `bad-signature`, `other-network`, `not-a-member`, `late`,
    /// `superseded`, `replayed`), the decision once closed, and whether each decision already logged
    /// agrees with it.
    pub fn to_json(&self, network: &str) -> serde_json::Value {
        use crate::tally::Reason;
        use serde_json::json;
        let t = &self.tally;
        let decision = self.decision(network);
        let code = |r: &Reason| match r {
            Reason::Malformed(_) => "malformed",
            Reason::BadSignature => "bad-signature",
            Reason::OtherNetwork(_) => "other-network",
            Reason::NotAMember => "not-a-member",
            Reason::Late => "late",
            Reason::Superseded(_) => "superseded",
            Reason::Replayed(_) => "replayed",
        };
        let p = &self.proposal;
        json!({
            "network": network,
            "proposal": {"index": p.at.index, "id": p.id().to_string(), "title": p.proposal.title,
                         "proposer": p.proposal.proposer.to_string(),
                         "subject": p.subject().to_string(), "motion": p.proposal.motion},
            "deadline": self.deadline,
            "opened_at": self.opened_at.size(),
            "closed_at": self.closed_at.as_ref().map(Attested::size),
            "latest": self.latest.size(),
            "eligible": t.eligible,
            "counts": t.counts,
            "quorum_met": t.quorum_met,
            "adopted": t.adopted,
            "counted": t.counted.iter().map(|v| json!({"index": v.index,
                "voter": v.voter.to_string(), "choice": v.choice.name(), "weight": v.weight,
                "reason": v.reason})).collect::<Vec<_>>(),
            "refused": t.refused.iter().map(|x| json!({"index": x.index,
                "voter": x.voter.map(|v| v.to_string()), "reason": code(&x.reason),
                "why": x.reason.to_string()})).collect::<Vec<_>>(),
            "decision": decision.as_ref().map(|d| serde_json::to_value(d).unwrap_or_default()),
            "logged_decisions": t.logged.iter().map(|l| json!({"index": l.index,
                "signers": l.signers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "agrees": decision.as_ref() == Some(&l.decision)})).collect::<Vec<_>>(),
        })
    }

    /// The decision, once the vote is closed.
    pub fn decision(&self, network: &str) -> Option<agora_core::statement::Decision> {
        let c = self.closed_at.as_ref()?;
        Some(self.tally.decision(
            network,
            &self.proposal,
            self.deadline,
            TreeHead {
                size: c.size(),
                root: Sha256(c.checkpoint.checkpoint.root.0),
            },
        ))
    }
}

/// Tally proposal `index` of the community's log from its entries, its checkpoint history and
/// its latest checkpoint (already verified into `latest`).
pub fn tally(
    rules: &Rules,
    network: &str,
    src: &dyn EntrySource,
    hist: &dyn History,
    latest: Attested,
    index: u64,
) -> Result<Report> {
    let origin = latest.checkpoint.checkpoint.origin.clone();
    let raw = entry(src, &latest, index)?;
    let proposal = open_proposal(rules, network, &origin, index, &raw)?;
    let opened_at = history::first_holding(hist, &rules.log, index)?
        .ok_or_else(|| Error::History(format!("no checkpoint holds entry {index} yet")))?;
    let deadline = opened_at.time.saturating_add(rules.voting_period_secs);
    let closed_at =
        history::first_attested_at(hist, &rules.log, opened_at.size(), &latest, deadline)?;
    let mut t = Tallier::new(
        rules,
        network,
        &proposal,
        closed_at.as_ref().map(Attested::size),
    );
    let tree = scan(src, &latest, |first, entries| {
        if (first..first + entries.len() as u64).contains(&index)
            && entries[(index - first) as usize] != raw
        {
            return Err(Error::History(format!(
                "entry {index} read twice differs: the log serves two versions"
            )));
        }
        t.push(first, entries)
    })?;
    check_root(&tree, opened_at.size(), &opened_at)?;
    if let Some(c) = &closed_at {
        check_root(&tree, c.size(), c)?;
    }
    let tally = t.finish();
    Ok(Report {
        proposal,
        opened_at,
        deadline,
        closed_at,
        latest,
        tally,
    })
}

fn check_root(tree: &MemoryTree, size: u64, c: &Attested) -> Result<()> {
    let root = tree
        .root_at(size)
        .map_err(|source| Error::Checkpoint { size, source })?;
    if root != c.checkpoint.checkpoint.root {
        return Err(Error::History(format!(
            "the checkpoint of size {size} is not consistent with the log's entries"
        )));
    }
    Ok(())
}

/// The credit ledger of entries `from..to` of the community's log, read up to `latest`
/// (`to` at most its size). The ledger names the root of the tree of size `to`.
pub fn ledger(
    rules: &Rules,
    network: &str,
    src: &dyn EntrySource,
    latest: &Attested,
    from: u64,
    to: u64,
) -> Result<Computed> {
    if from > to || to > latest.size() {
        return Err(Error::History(format!(
            "the period {from}..{to} is not within the log's {} entries",
            latest.size()
        )));
    }
    let origin = latest.checkpoint.checkpoint.origin.clone();
    let mut l = Ledgerer::new(rules, network, &origin, from, to);
    let tree = scan(src, latest, |first, entries| l.push(first, entries))?;
    let root: Hash = tree
        .root_at(to)
        .map_err(|source| Error::Checkpoint { size: to, source })?;
    l.finish(Sha256(root.0))
}
