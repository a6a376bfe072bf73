//! The witness: `add-checkpoint` exactly as c2sp.org/tlog-witness says (status codes included),
//! with the check against the stored state and the save done in one redb write transaction, so
//! concurrent requests cannot roll a log back. When a log shows a checkpoint that provably
//! contradicts one the witness cosigned, the witness stores a signed `evidence` statement.
//!
//! Freshness: the witness never dates a cosignature of a log earlier than one it already issued
//! for that log (if its clock went back it answers 503 until the clock has caught up), so a
//! later cosignature of a log always carries a later-or-equal time and a larger-or-equal tree.

use std::path::Path;

use agora_core::statement::{Claim, Evidence, Statement};
use agora_core::{Identity, Sha256};
use agora_tlog::checkpoint::{Checkpoint, SignedCheckpoint};
use agora_tlog::cosignature::Cosigner;
use agora_tlog::hash::Hash;
use agora_tlog::merkle;
use agora_tlog::note::{Note, Vkey};
use agora_tlog::witness::{AddCheckpointRequest, SIZE_CONTENT_TYPE, format_response};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tracing::warn;

use crate::{Error, Result};

/// origin → size (8 bytes) || root (32 bytes) || the log-signed checkpoint note.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// sequence number → evidence statement (DSSE envelope JSON).
const EVIDENCE: TableDefinition<u64, &[u8]> = TableDefinition::new("evidence");
/// SHA-256 of the claim → sequence number, so repeated misbehaviour is stored once.
const EVIDENCE_KEYS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("evidence_keys");
/// origin → timestamp of the latest cosignature issued for it.
const COSIGNED_AT: TableDefinition<&str, u64> = TableDefinition::new("cosigned_at");

/// Longest `Retry-After` the witness asks for when its clock is behind its last cosignature.
const MAX_CLOCK_WAIT: u64 = 3600;

/// Most evidence statements kept (the store is bounded).
pub const MAX_EVIDENCE: u64 = 100_000;

/// An HTTP-free answer: status code, content type and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Seconds for a `Retry-After` header (with 503).
    pub retry_after: Option<u64>,
}

const TEXT: &str = "text/plain; charset=utf-8";

fn respond(status: u16, msg: impl Into<String>) -> WitnessResponse {
    let mut body = msg.into().into_bytes();
    body.push(b'\n');
    WitnessResponse {
        status,
        content_type: TEXT,
        body,
        retry_after: None,
    }
}

fn conflict(size: u64) -> WitnessResponse {
    WitnessResponse {
        status: 409,
        content_type: SIZE_CONTENT_TYPE,
        body: format!("{size}\n").into_bytes(),
        retry_after: None,
    }
}

struct Stored {
    size: u64,
    root: Hash,
    checkpoint: Vec<u8>,
}

fn decode_state(v: &[u8]) -> Result<Stored> {
    if v.len() < 40 {
        return Err(Error::Corrupt("witness state record too short".into()));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&v[..8]);
    let mut root = [0u8; 32];
    root.copy_from_slice(&v[8..40]);
    Ok(Stored {
        size: u64::from_be_bytes(size),
        root: Hash(root),
        checkpoint: v[40..].to_vec(),
    })
}

fn encode_state(size: u64, root: &Hash, checkpoint: &[u8]) -> Vec<u8> {
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(&root.0);
    v.extend_from_slice(checkpoint);
    v
}

pub struct Witness {
    db: Database,
    identity: Identity,
    cosigner: Cosigner,
    logs: Vec<Vkey>,
}

enum Decision {
    Cosign,
    Respond(WitnessResponse),
}

/// A request that passed the checks needing no stored state.
struct Checked {
    req: AddCheckpointRequest,
    sc: SignedCheckpoint,
    origin: String,
    /// The trusted key that signed the checkpoint.
    log_key: Vkey,
    /// The checkpoint note with only the log's own signatures.
    clean: Vec<u8>,
}

/// The request against the stored state: cosign, or the answer to give. The second value is
/// `Some(proof)` when the request proves a split view (the proof, base64, may be empty).
fn judge(
    req: &AddCheckpointRequest,
    stored: Option<&Stored>,
    new: &Checkpoint,
) -> Result<(Decision, Option<Vec<String>>)> {
    let stored_size = stored.map_or(0, |s| s.size);
    if stored.is_some_and(|s| s.size == new.size && s.root != new.root) {
        // Same size, different root: a split view whatever old size was claimed.
        return Ok((Decision::Respond(conflict(stored_size)), Some(Vec::new())));
    }
    if req.old_size != stored_size {
        return Ok((Decision::Respond(conflict(stored_size)), None));
    }
    if req.old_size == 0 || req.old_size == new.size {
        let decision = if !req.proof.is_empty() {
            Decision::Respond(respond(422, "the consistency proof must be empty"))
        } else {
            Decision::Cosign
        };
        return Ok((decision, None));
    }
    let Some(s) = stored else {
        return Err(Error::Corrupt("missing witness state".into()));
    };
    match merkle::verify_consistency(req.old_size, new.size, &req.proof, &s.root, &new.root) {
        Ok(()) => Ok((Decision::Cosign, None)),
        Err(e) => {
            let mut evidence = None;
            if let Ok(h) = merkle::implied_old_root(req.old_size, new.size, &req.proof, &new.root)
                && h != s.root
            {
                evidence = Some(req.proof.iter().map(|h| h.to_base64()).collect());
            }
            let r = respond(422, format!("consistency proof does not verify: {e}"));
            Ok((Decision::Respond(r), evidence))
        }
    }
}

/// Never date a cosignature of this log before one already issued (`last`): while the clock
/// is behind, a cosign becomes a 503 with `Retry-After`.
fn hold_for_clock(decision: Decision, origin: &str, last: Option<u64>, now: u64) -> Decision {
    match (decision, last) {
        (Decision::Cosign, Some(last)) if now < last => {
            warn!(origin = %origin, now, last, "clock behind the last cosignature");
            let mut r = respond(
                503,
                format!(
                    "the witness's clock reads {now}, earlier than its last cosignature \
                     for this log ({last}); it will not date a cosignature back"
                ),
            );
            r.retry_after = Some((last - now).clamp(1, MAX_CLOCK_WAIT));
            Decision::Respond(r)
        }
        (d, _) => d,
    }
}

impl Witness {
    /// Open (or create) the witness database. `logs` are the log keys it trusts (key name =
    /// origin).
    pub fn open(path: &Path, identity: Identity, name: &str, logs: Vec<Vkey>) -> Result<Witness> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(STATE)?;
        txn.open_table(EVIDENCE)?;
        txn.open_table(EVIDENCE_KEYS)?;
        txn.open_table(COSIGNED_AT)?;
        txn.commit()?;
        let cosigner = identity.cosigner(name)?;
        Ok(Witness {
            db,
            identity,
            cosigner,
            logs,
        })
    }

    /// The witness's cosigning vkey.
    pub fn vkey(&self) -> Vkey {
        self.cosigner.vkey()
    }

    /// Handle an `add-checkpoint` request body at time `now` (POSIX seconds).
    pub fn add_checkpoint(&self, body: &[u8], now: u64) -> WitnessResponse {
        match self.try_add(body, now) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "add-checkpoint failed");
                respond(500, "internal error")
            }
        }
    }

    fn try_add(&self, body: &[u8], now: u64) -> Result<WitnessResponse> {
        let checked = match self.check_request(body) {
            Ok(c) => c,
            Err(r) => return Ok(r),
        };
        match self.decide_and_save(&checked, now)? {
            Decision::Respond(r) => Ok(r),
            Decision::Cosign => {
                let sig = self.cosigner.cosign(&checked.sc.note.text, now)?;
                Ok(WitnessResponse {
                    status: 200,
                    content_type: TEXT,
                    body: format_response(&[sig]).into_bytes(),
                    retry_after: None,
                })
            }
        }
    }

    /// The checks that need no stored state: the request and checkpoint parse, the origin is a
    /// trusted log that signed the checkpoint, and the old size is not past the new one. `Err`
    /// is the answer to give.
    fn check_request(&self, body: &[u8]) -> std::result::Result<Checked, WitnessResponse> {
        let req = AddCheckpointRequest::parse(body).map_err(|e| respond(400, e.to_string()))?;
        let sc =
            SignedCheckpoint::parse(&req.checkpoint).map_err(|e| respond(400, e.to_string()))?;
        let origin = sc.checkpoint.origin.clone();
        let keys: Vec<Vkey> = self
            .logs
            .iter()
            .filter(|k| k.name == origin)
            .cloned()
            .collect();
        if keys.is_empty() {
            return Err(respond(404, format!("unknown log origin {origin:?}")));
        }
        let verified = sc
            .note
            .verify(&keys)
            .map_err(|e| respond(403, e.to_string()))?;
        let log_key = keys[verified[0]].clone();
        if req.old_size > sc.checkpoint.size {
            return Err(respond(
                400,
                format!(
                    "old size {} is larger than the checkpoint size {}",
                    req.old_size, sc.checkpoint.size
                ),
            ));
        }
        // Keep only the log's own signatures in what we store and in evidence.
        let clean = Note {
            text: sc.note.text.clone(),
            sigs: sc
                .note
                .sigs
                .iter()
                .filter(|s| {
                    keys.iter()
                        .any(|k| k.name == s.name && k.key_id == s.key_id)
                })
                .cloned()
                .collect(),
        }
        .to_bytes();
        Ok(Checked {
            req,
            sc,
            origin,
            log_key,
            clean,
        })
    }

    /// Check the request against the stored state and save the outcome (the new state, or
    /// evidence of a split view) atomically: one write transaction.
    fn decide_and_save(&self, checked: &Checked, now: u64) -> Result<Decision> {
        let Checked {
            req,
            sc,
            origin,
            log_key,
            clean,
        } = checked;
        let new = &sc.checkpoint;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let decision = {
            let mut state = txn.open_table(STATE)?;
            let stored = state
                .get(origin.as_str())?
                .map(|g| decode_state(g.value()))
                .transpose()?;
            let mut cosigned_at = txn.open_table(COSIGNED_AT)?;
            let last = cosigned_at.get(origin.as_str())?.map(|g| g.value());
            let (decision, evidence) = judge(req, stored.as_ref(), new)?;
            let decision = hold_for_clock(decision, origin, last, now);
            match (&decision, evidence, stored.as_ref()) {
                (Decision::Cosign, _, _) => {
                    state.insert(
                        origin.as_str(),
                        encode_state(new.size, &new.root, clean).as_slice(),
                    )?;
                    cosigned_at.insert(origin.as_str(), now)?;
                }
                (Decision::Respond(_), Some(proof), Some(s)) => {
                    self.record_evidence(&txn, log_key, &s.checkpoint, clean, proof, now)?;
                }
                _ => {}
            }
            decision
        };
        txn.commit()?;
        Ok(decision)
    }

    fn record_evidence(
        &self,
        txn: &redb::WriteTransaction,
        log: &Vkey,
        old: &[u8],
        new: &[u8],
        proof: Vec<String>,
        now: u64,
    ) -> Result<()> {
        let claim = Claim::SplitView {
            log: log.to_string(),
            checkpoints: [
                String::from_utf8_lossy(old).into_owned(),
                String::from_utf8_lossy(new).into_owned(),
            ],
            proof,
        };
        let ev = Evidence {
            observer: self.identity.peer_id(),
            time: now,
            claim: claim.clone(),
        };
        // Only keep what anyone can verify on its own.
        if let Err(e) = ev.verify(Some(log)) {
            warn!(error = %e, "inconsistent checkpoint, but not provable evidence");
            return Ok(());
        }
        let key = Sha256::of(&serde_json::to_vec(&claim).unwrap_or_default());
        let mut keys = txn.open_table(EVIDENCE_KEYS)?;
        if keys.get(&key.0)?.is_some() {
            return Ok(());
        }
        let mut table = txn.open_table(EVIDENCE)?;
        let n = table.len()?;
        if n >= MAX_EVIDENCE {
            warn!("evidence store full; not storing more");
            return Ok(());
        }
        let env = Statement::Evidence(ev).sign(&self.identity);
        table.insert(n, env.to_json().as_bytes())?;
        keys.insert(&key.0, n)?;
        warn!(log = %log.name, id = n, "split view detected: evidence stored");
        Ok(())
    }

    /// The latest cosigned size and checkpoint of a log.
    pub fn latest(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        let Some(g) = state.get(origin)? else {
            return Ok(None);
        };
        let s = decode_state(g.value())?;
        Ok(Some((s.size, s.checkpoint)))
    }

    pub fn evidence_count(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(EVIDENCE)?.len()?)
    }

    /// One evidence statement (DSSE envelope JSON).
    pub fn evidence(&self, id: u64) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(EVIDENCE)?;
        Ok(t.get(id)?.map(|g| g.value().to_vec()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_tlog::checkpoint::Checkpoint;
    use agora_tlog::merkle::MemoryTree;

    struct Fixture {
        _dir: tempfile::TempDir,
        w: Witness,
        log: Identity,
        origin: String,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let log = Identity::from_seed(&[1; 32]);
        let origin = log.default_log_origin();
        let w = Witness::open(
            &dir.path().join("w.redb"),
            Identity::from_seed(&[2; 32]),
            "witness.example/w",
            vec![log.vkey(&origin).unwrap()],
        )
        .unwrap();
        Fixture {
            _dir: dir,
            w,
            log,
            origin,
        }
    }

    fn tree(n: u64, fork_at: Option<u64>) -> MemoryTree {
        let mut t = MemoryTree::new();
        for i in 0..n {
            let v = if Some(i) == fork_at { 1000 + i } else { i };
            t.append(&v.to_be_bytes());
        }
        t
    }

    fn req(f: &Fixture, t: &MemoryTree, old: u64, n: u64) -> Vec<u8> {
        let signer = f.log.log_signer(&f.origin).unwrap();
        let cp = SignedCheckpoint::sign(
            Checkpoint::new(&f.origin, n, t.root_at(n).unwrap()),
            &signer,
        )
        .unwrap();
        let proof = if old == 0 || old == n {
            vec![]
        } else {
            t.consistency_proof(old, n).unwrap()
        };
        AddCheckpointRequest {
            old_size: old,
            proof,
            checkpoint: cp.to_bytes(),
        }
        .to_bytes()
    }

    #[test]
    fn status_codes() {
        let f = fixture();
        let t = tree(20, None);
        // 200, and the cosignature verifies.
        let r = f.w.add_checkpoint(&req(&f, &t, 0, 5), 1000);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let sigs = agora_tlog::witness::parse_response(&r.body).unwrap();
        let text = Checkpoint::new(&f.origin, 5, t.root_at(5).unwrap()).to_text();
        assert!(f.w.vkey().verify(text.as_bytes(), &sigs[0].sig));
        assert_eq!(agora_tlog::cosignature::timestamp(&sigs[0]).unwrap(), 1000);
        // 409: stale old size, with the size body.
        let r = f.w.add_checkpoint(&req(&f, &t, 0, 8), 1001);
        assert_eq!(
            (r.status, r.content_type, r.body.as_slice()),
            (409, SIZE_CONTENT_TYPE, &b"5\n"[..])
        );
        // 200 with a proof.
        assert_eq!(f.w.add_checkpoint(&req(&f, &t, 5, 8), 1002).status, 200);
        // 422: a bad proof.
        let mut bad = AddCheckpointRequest::parse(&req(&f, &t, 8, 13)).unwrap();
        bad.proof[0].0[0] ^= 1;
        assert_eq!(f.w.add_checkpoint(&bad.to_bytes(), 1003).status, 422);
        // 400: old size above the checkpoint size; malformed body.
        let mut b = AddCheckpointRequest::parse(&req(&f, &t, 8, 13)).unwrap();
        b.old_size = 14;
        assert_eq!(f.w.add_checkpoint(&b.to_bytes(), 1004).status, 400);
        assert_eq!(f.w.add_checkpoint(b"garbage", 1004).status, 400);
        // 404: unknown origin.
        let other = Identity::from_seed(&[9; 32]);
        let o = other.default_log_origin();
        let cp = SignedCheckpoint::sign(
            Checkpoint::new(&o, 1, t.root_at(1).unwrap()),
            &other.log_signer(&o).unwrap(),
        )
        .unwrap();
        let body = AddCheckpointRequest {
            old_size: 0,
            proof: vec![],
            checkpoint: cp.to_bytes(),
        }
        .to_bytes();
        assert_eq!(f.w.add_checkpoint(&body, 1005).status, 404);
        // 403: right origin, wrong key.
        let cp = SignedCheckpoint::sign(
            Checkpoint::new(&f.origin, 13, t.root_at(13).unwrap()),
            &other.log_signer(&f.origin).unwrap(),
        )
        .unwrap();
        let body = AddCheckpointRequest {
            old_size: 8,
            proof: t.consistency_proof(8, 13).unwrap(),
            checkpoint: cp.to_bytes(),
        }
        .to_bytes();
        assert_eq!(f.w.add_checkpoint(&body, 1006).status, 403);
        // Same size again: 200 (idempotent).
        assert_eq!(f.w.add_checkpoint(&req(&f, &t, 8, 8), 1007).status, 200);
        assert_eq!(f.w.latest(&f.origin).unwrap().unwrap().0, 8);
        assert_eq!(f.w.evidence_count().unwrap(), 0);
    }

    /// Cosignature times of a log never go back: with the clock behind the last cosignature the
    /// witness answers 503 (with Retry-After) and keeps its state; once the clock has caught up
    /// it cosigns again.
    #[test]
    fn cosignature_times_never_go_back() {
        let f = fixture();
        let t = tree(20, None);
        let ts = |r: &WitnessResponse| {
            agora_tlog::cosignature::timestamp(
                &agora_tlog::witness::parse_response(&r.body).unwrap()[0],
            )
            .unwrap()
        };
        let r = f.w.add_checkpoint(&req(&f, &t, 0, 4), 5000);
        assert_eq!((r.status, ts(&r)), (200, 5000));
        let r = f.w.add_checkpoint(&req(&f, &t, 4, 7), 4990);
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.retry_after, Some(10));
        assert!(String::from_utf8_lossy(&r.body).contains("earlier than its last cosignature"));
        assert_eq!(f.w.latest(&f.origin).unwrap().unwrap().0, 4);
        // Refusals that do not cosign are not affected by the clock.
        assert_eq!(f.w.add_checkpoint(&req(&f, &t, 0, 7), 4990).status, 409);
        // The same second is fine; so is later.
        let r = f.w.add_checkpoint(&req(&f, &t, 4, 7), 5000);
        assert_eq!((r.status, ts(&r)), (200, 5000));
        let r = f.w.add_checkpoint(&req(&f, &t, 7, 7), 5001);
        assert_eq!((r.status, ts(&r)), (200, 5001));
        // Another log's times are its own.
        let other = Identity::from_seed(&[3; 32]);
        let o = other.default_log_origin();
        let dir = tempfile::tempdir().unwrap();
        let w = Witness::open(
            &dir.path().join("w.redb"),
            Identity::from_seed(&[2; 32]),
            "witness.example/w",
            vec![f.log.vkey(&f.origin).unwrap(), other.vkey(&o).unwrap()],
        )
        .unwrap();
        assert_eq!(w.add_checkpoint(&req(&f, &t, 0, 3), 100).status, 200);
        let cp = SignedCheckpoint::sign(
            Checkpoint::new(&o, 2, t.root_at(2).unwrap()),
            &other.log_signer(&o).unwrap(),
        )
        .unwrap();
        let body = AddCheckpointRequest {
            old_size: 0,
            proof: vec![],
            checkpoint: cp.to_bytes(),
        }
        .to_bytes();
        assert_eq!(w.add_checkpoint(&body, 50).status, 200);
        assert_eq!(w.add_checkpoint(&req(&f, &t, 3, 5), 99).status, 503);
    }

    #[test]
    fn equivocation_produces_evidence() {
        let f = fixture();
        let honest = tree(20, None);
        let fork = tree(20, Some(1));
        assert_eq!(f.w.add_checkpoint(&req(&f, &honest, 0, 6), 1).status, 200);
        // Same size, different root: 409 and evidence.
        let r = f.w.add_checkpoint(&req(&f, &fork, 6, 6), 2);
        assert_eq!(r.status, 409);
        assert_eq!(f.w.evidence_count().unwrap(), 1);
        // Repeated: stored once.
        f.w.add_checkpoint(&req(&f, &fork, 6, 6), 3);
        assert_eq!(f.w.evidence_count().unwrap(), 1);
        // Larger fork with its own valid proof: 422 and evidence.
        let r = f.w.add_checkpoint(&req(&f, &fork, 6, 11), 4);
        assert_eq!(r.status, 422);
        assert_eq!(f.w.evidence_count().unwrap(), 2);
        // Both verify on their own with only the log's key.
        let vkey = f.log.vkey(&f.origin).unwrap();
        for id in 0..2 {
            let env = agora_core::Envelope::from_json(&f.w.evidence(id).unwrap().unwrap()).unwrap();
            let (signers, st) = Statement::open(&env).unwrap();
            assert_eq!(signers, vec![Identity::from_seed(&[2; 32]).peer_id()]);
            let Statement::Evidence(ev) = st else {
                panic!("not evidence")
            };
            ev.verify(Some(&vkey)).unwrap();
        }
        // The witness still holds the honest tree.
        assert_eq!(f.w.latest(&f.origin).unwrap().unwrap().0, 6);
        assert_eq!(f.w.add_checkpoint(&req(&f, &honest, 6, 11), 5).status, 200);
    }

    #[test]
    fn concurrent_requests_one_wins() {
        let f = std::sync::Arc::new(fixture());
        let t = tree(200, None);
        assert_eq!(f.w.add_checkpoint(&req(&f, &t, 0, 1), 1).status, 200);
        let mut old = 1;
        for round in 0..20u64 {
            let bodies: Vec<Vec<u8>> = (1..=4)
                .map(|k| req(&f, &t, old, old + k + round % 3))
                .collect();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(bodies.len()));
            let handles: Vec<_> = bodies
                .into_iter()
                .map(|b| {
                    let (f, barrier) = (f.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        f.w.add_checkpoint(&b, 2).status
                    })
                })
                .collect();
            let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert_eq!(
                statuses.iter().filter(|s| **s == 200).count(),
                1,
                "{statuses:?}"
            );
            assert_eq!(
                statuses.iter().filter(|s| **s == 409).count(),
                3,
                "{statuses:?}"
            );
            old = f.w.latest(&f.origin).unwrap().unwrap().0;
        }
    }
}
