//! Time in a log, as witnesses attest it.
//!
//! A checkpoint carries no time of its own; each witness cosignature (c2sp.org/tlog-cosignature)
//! carries the witness's. The time a checkpoint is *attested* at is the latest `t` such that the
//! witnesses that cosigned it at `t` or later satisfy the community's quorum: a minority of
//! witnesses with fast or slow clocks cannot move it.
//!
//! A log keeps every checkpoint it published (`GET /checkpoints/{size}` gives the first of size at
//! least `size`): [`first_attested_at`] finds the first one attested at or after a deadline by a
//! binary search over sizes, each checkpoint checked against the policy. Witnesses only cosign
//! growing trees with clocks that do not go back, so attested times grow with size; a tally that
//! sees them go back (witnesses of one quorum with clocks apart) refuses to decide rather than
//! pick a checkpoint another tallier might not. The cosignatures of a checkpoint's quorum must
//! lie within [`MAX_SKEW_SECS`] of the newest one, so a log that keeps only the cosignature of
//! a witness with a slow clock cannot move a deadline. A log that withheld a checkpoint from its
//! history could still make a vote close later than it should, by the gap it hides.

use std::collections::HashSet;

use agora_tlog::checkpoint::SignedCheckpoint;
use agora_tlog::policy::Policy;

use crate::{Error, Result};

/// Most seconds between the earliest and the latest timestamp of the cosignatures that make a
/// checkpoint's quorum: beyond, the witnesses' clocks disagree too much for the checkpoint to
/// date anything (a log keeping only a witness with a slow clock cannot move a deadline).
pub const MAX_SKEW_SECS: u64 = 600;

/// A log's checkpoint history.
pub trait History {
    /// The first checkpoint the log published whose size is at least `size` (its signed note,
    /// verbatim), `None` when there is none yet.
    fn first_at_or_after(&self, size: u64) -> std::result::Result<Option<Vec<u8>>, String>;
}

/// A checkpoint checked against the community's policy, with its attested time.
#[derive(Clone, Debug)]
pub struct Attested {
    /// The checkpoint.
    pub checkpoint: SignedCheckpoint,
    /// Its signed note, verbatim.
    pub bytes: Vec<u8>,
    /// The time a quorum of witnesses attests (POSIX seconds).
    pub time: u64,
}

impl Attested {
    /// Its tree size.
    pub fn size(&self) -> u64 {
        self.checkpoint.checkpoint.size
    }
}

/// Verify a checkpoint under `policy` (log signature, witness quorum) and find its attested time.
pub fn attest(policy: &Policy, bytes: &[u8]) -> agora_tlog::Result<Attested> {
    let checkpoint = policy.verify_checkpoint(bytes)?;
    let keys = policy.witness_vkeys();
    // (witness index, timestamp) of every verified cosignature; verify_checkpoint has checked
    // each signature of a known witness.
    let mut stamps: Vec<(usize, u64)> = Vec::new();
    for s in &checkpoint.note.sigs {
        if let Some(i) = keys
            .iter()
            .position(|k| k.name == s.name && k.key_id == s.key_id)
            && let Ok(t) = agora_tlog::cosignature::timestamp(s)
        {
            stamps.push((i, t));
        }
    }
    let mut times: Vec<u64> = stamps.iter().map(|&(_, t)| t).collect();
    times.sort_unstable_by(|a, b| b.cmp(a));
    times.dedup();
    for t in times {
        let set: HashSet<usize> = stamps
            .iter()
            .filter(|&&(_, ts)| ts >= t)
            .map(|&(i, _)| i)
            .collect();
        if policy.quorum_satisfied(&set) {
            let newest = stamps.iter().map(|&(_, ts)| ts).max().unwrap_or(t);
            if newest.saturating_sub(t) > MAX_SKEW_SECS {
                return Err(agora_tlog::Error::QuorumNotMet {
                    cosigned: set.len(),
                });
            }
            return Ok(Attested {
                checkpoint,
                bytes: bytes.to_vec(),
                time: t,
            });
        }
    }
    Err(agora_tlog::Error::QuorumNotMet {
        cosigned: stamps.len(),
    })
}

fn fetch(h: &dyn History, policy: &Policy, size: u64) -> Result<Option<Attested>> {
    let Some(bytes) = h.first_at_or_after(size).map_err(Error::History)? else {
        return Ok(None);
    };
    let a = attest(policy, &bytes).map_err(|source| Error::Checkpoint { size, source })?;
    if a.size() < size {
        return Err(Error::History(format!(
            "asked for the first checkpoint of size at least {size}, got size {}",
            a.size()
        )));
    }
    Ok(Some(a))
}

/// The first checkpoint whose tree holds entry `index` (size > `index`).
pub fn first_holding(h: &dyn History, policy: &Policy, index: u64) -> Result<Option<Attested>> {
    fetch(h, policy, index.saturating_add(1))
}

/// The first checkpoint of size at least `from` attested at or after `deadline`, searched up to
/// `latest` (the newest checkpoint known). `None` while `latest` is attested before it.
pub fn first_attested_at(
    h: &dyn History,
    policy: &Policy,
    from: u64,
    latest: &Attested,
    deadline: u64,
) -> Result<Option<Attested>> {
    if latest.time < deadline {
        return Ok(None);
    }
    let (mut lo, mut hi) = (from, latest.size());
    let mut best = latest.clone();
    // Every checkpoint seen, to check that attested times grow with size.
    let mut seen: Vec<(u64, u64)> = vec![(latest.size(), latest.time)];
    // Invariant: `best` is attested at or after the deadline, and no checkpoint of size in
    // `hi..best.size()` exists; every checkpoint of size below `lo` is attested before it.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let Some(c) = fetch(h, policy, mid)? else {
            return Err(Error::History(format!(
                "no checkpoint of size at least {mid}, though one of size {} exists",
                best.size()
            )));
        };
        if c.size() > best.size() {
            return Err(Error::History(format!(
                "the first checkpoint of size at least {mid} has size {}, above {}",
                c.size(),
                best.size()
            )));
        }
        seen.push((c.size(), c.time));
        if c.size() >= hi {
            // Nothing between `mid` and `hi`.
            hi = mid;
        } else if c.time >= deadline {
            hi = c.size();
            best = c;
        } else {
            lo = c.size() + 1;
        }
    }
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w[1].1 < w[0].1) {
        return Err(Error::History(format!(
            "attested times go back: checkpoint {} at {} but checkpoint {} at {} (the witnesses' clocks disagree; no checkpoint can close the vote for every tallier alike)",
            w[0].0, w[0].1, w[1].0, w[1].1
        )));
    }
    Ok(Some(best))
}

/// A history held in memory (tests, and a log store's table once read).
impl History for std::collections::BTreeMap<u64, Vec<u8>> {
    fn first_at_or_after(&self, size: u64) -> std::result::Result<Option<Vec<u8>>, String> {
        Ok(self.range(size..).next().map(|(_, b)| b.clone()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Checkpoints of the given sizes, cosigned at the given times.
    fn history(points: &[(u64, u64)]) -> (Policy, BTreeMap<u64, Vec<u8>>) {
        use agora_core::Identity;
        use agora_tlog::checkpoint::Checkpoint;
        let log = Identity::from_seed(&[1; 32]);
        let w = Identity::from_seed(&[2; 32]);
        let origin = log.default_log_origin();
        let policy = Policy::parse(
            format!(
                "log {}\nwitness w1 {}\nquorum w1\n",
                log.vkey(&origin).unwrap(),
                w.witness_vkey("w1").unwrap()
            )
            .as_bytes(),
        )
        .unwrap();
        let mut h = BTreeMap::new();
        for &(size, time) in points {
            let cp = Checkpoint::new(&origin, size, agora_tlog::Hash([size as u8; 32]));
            let mut sc = SignedCheckpoint::sign(cp, &log.log_signer(&origin).unwrap()).unwrap();
            let sig = w
                .cosigner("w1")
                .unwrap()
                .cosign(&sc.note.text, time)
                .unwrap();
            sc.note.sigs.push(sig);
            h.insert(size, sc.to_bytes());
        }
        (policy, h)
    }

    fn close(points: &[(u64, u64)], from: u64, deadline: u64) -> Option<u64> {
        let (policy, h) = history(points);
        let latest = attest(&policy, h.values().last().unwrap()).unwrap();
        first_attested_at(&h, &policy, from, &latest, deadline)
            .unwrap()
            .map(|a| a.size())
    }

    #[test]
    fn the_first_checkpoint_at_or_after_the_deadline() {
        // Two checkpoints far apart (a quiet log): the later one closes.
        assert_eq!(
            close(&[(1, 100), (1_000_001, 9_000)], 1, 3_700),
            Some(1_000_001)
        );
        // Many: the first at or after.
        let many: Vec<(u64, u64)> = (1..=300).map(|i| (i * 7, 1_000 + i * 10)).collect();
        for d in [1_005, 1_010, 1_011, 2_000, 3_990, 4_000] {
            let want = many.iter().find(|&&(_, t)| t >= d).map(|&(s, _)| s);
            assert_eq!(close(&many, 7, d), want, "deadline {d}");
        }
        // Not yet.
        assert_eq!(close(&many, 7, 5_000), None);
        // Times that go back, where the search sees them, are refused, not guessed around.
        let (policy, h) = history(&[(1, 100), (6, 3_500), (9, 1_500), (12, 3_000)]);
        let latest = attest(&policy, h.values().last().unwrap()).unwrap();
        let e = first_attested_at(&h, &policy, 1, &latest, 1_800).unwrap_err();
        assert!(e.to_string().contains("go back"), "{e}");
    }
}
