//! The validator role: follows the log, checks the receipts the log's own randomness selects,
//! and publishes signed verdicts (to the log, and by gossip so that gateways react at once).
//! Also what a gateway does with the verdicts it hears ([`follow_verdicts`]).
//!
//! Nothing here rests on anyone's say-so:
//! - a validator acts only on checkpoints signed by the log's key;
//! - it judges a worker only on a transcript that matches the selected receipt (signature and
//!   every digest): a junk transcript is the sender's fault, never the worker's;
//! - it asks every gateway at once, each with a deadline, so silent peers cannot stall it;
//! - keys it has not yet seen answer well are on probation and checked more often;
//! - a gateway acts on a rejection only if it trusts the validator, or if it re-ran the check
//!   itself on the evidence (the validator serves the transcript of every answer it rejected);
//!   a validator caught lying is ignored from then on.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agora_core::statement::Verdict;
use agora_core::{Envelope, Identity, PeerId, Sha256, Statement};
use agora_engine::Engine;
use agora_net::NetHandle;
use agora_tlog::checkpoint::SignedCheckpoint;
use agora_verify::Tolerances;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use crate::disclosure::TrustedValidators;
use crate::gateway::Gateway;
use crate::proto::{Selection, TranscriptRequest};
use crate::reputation::PROBATION_VERDICTS;
use crate::transcript::Transcript;
use crate::verifier::verify;

/// How a validator works.
#[derive(Clone, Debug)]
pub struct ValidatorConfig {
    /// The log receipts are appended to (tlog-tiles base URL).
    pub log_url: String,
    /// The log's verifier key: checkpoints that do not verify against it are not acted upon.
    pub log_key: agora_tlog::note::Vkey,
    /// Share of receipts checked.
    pub probability: f64,
    /// Share of receipts checked of workers on probation (fewer than [`PROBATION_VERDICTS`]
    /// answers accepted by this validator).
    pub probation_probability: f64,
    pub tolerances: Tolerances,
    pub poll: Duration,
}

/// What a validator has done, for `/agora/v1/nodes` and tests.
#[derive(Debug, Default)]
pub struct ValidatorStats {
    pub seen: AtomicU64,
    pub selected: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub unavailable: AtomicU64,
    /// Receipts their workers marked unverifiable (a failed self-check): not checked, since
    /// there is no proof to hold them to, and never selected.
    pub unverifiable: AtomicU64,
}

/// Longest wait for one gateway's transcript, and for all of them.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
const FETCH_DEADLINE: Duration = Duration::from_secs(15);
/// Gateways asked at once for one transcript.
const MAX_SOURCES: usize = 16;

/// Runs until the task is dropped. `gateway` is this node's own: its transcripts are looked at
/// first, and the evidence of rejections is kept in it (and served by it).
pub async fn run(
    net: NetHandle,
    engine: Arc<dyn Engine>,
    identity: Arc<Identity>,
    cfg: ValidatorConfig,
    stats: Arc<ValidatorStats>,
    gateway: Gateway,
) {
    let mut done: u64 = 0;
    let mut bundle: Option<(u64, Vec<Vec<u8>>)> = None;
    // Answers of each worker this validator accepted (bounded: cleared when full).
    let mut track: HashMap<PeerId, u32> = HashMap::new();
    let widest = cfg.probability.max(cfg.probation_probability);
    loop {
        tokio::time::sleep(cfg.poll).await;
        // A fresh client each round: the client caches what it reads.
        let client = Arc::new(agora_api::tlog::client::LogClient::new(&cfg.log_url));
        let c = Arc::clone(&client);
        let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || c.checkpoint()).await else {
            continue;
        };
        let cp = match SignedCheckpoint::open(&bytes, &cfg.log_key) {
            Ok(c) => c.checkpoint,
            Err(e) => {
                warn!("the log's checkpoint does not verify against its key: {e}");
                continue;
            }
        };
        if cp.size < done {
            warn!(
                size = cp.size,
                seen = done,
                "the log's tree shrank: ignoring this checkpoint"
            );
            continue;
        }
        for index in done..cp.size {
            stats.seen.fetch_add(1, Ordering::Relaxed);
            if !agora_verify::selected_for_check(&cp.root.0, index, widest) {
                continue;
            }
            // Entry bundles of 256; a partial bundle is read again once it grew.
            let (b, w) = (index / 256, ((cp.size - index / 256 * 256).min(256)) as u16);
            if bundle
                .as_ref()
                .is_none_or(|(bi, v)| *bi != b || v.len() < w as usize)
            {
                let c = Arc::clone(&client);
                match tokio::task::spawn_blocking(move || c.entries(b, w)).await {
                    Ok(Ok(v)) => bundle = Some((b, v)),
                    _ => {
                        warn!(index, "could not read the log entry");
                        continue;
                    }
                }
            }
            let Some(entry) = bundle
                .as_ref()
                .and_then(|(_, v)| v.get((index % 256) as usize))
                .cloned()
            else {
                continue;
            };
            let ctx = Selected {
                index,
                checkpoint: &bytes,
                size: cp.size,
                root: &cp.root.0,
                client: &client,
            };
            if let Some((worker, accept)) = check_entry(
                &net, &engine, &identity, &cfg, &stats, &gateway, &track, ctx, &entry,
            )
            .await
                && accept
            {
                if track.len() >= 4096 {
                    track.clear();
                }
                *track.entry(worker).or_insert(0) += 1;
            }
        }
        done = done.max(cp.size);
    }
}

/// Where a selected entry is: what a gateway needs to see to release its transcript.
struct Selected<'a> {
    index: u64,
    checkpoint: &'a [u8],
    size: u64,
    root: &'a [u8; 32],
    client: &'a Arc<agora_api::tlog::client::LogClient>,
}

/// Checks one selected log entry; returns the worker and the verdict when one was given.
#[allow(clippy::too_many_arguments)]
async fn check_entry(
    net: &NetHandle,
    engine: &Arc<dyn Engine>,
    identity: &Identity,
    cfg: &ValidatorConfig,
    stats: &ValidatorStats,
    gateway: &Gateway,
    track: &HashMap<PeerId, u32>,
    at: Selected<'_>,
    entry: &[u8],
) -> Option<(PeerId, bool)> {
    // The log holds other statements too (verdicts among them): only receipts are checked.
    let env = Envelope::from_json(entry).ok()?;
    let Ok((_, Statement::Receipt(receipt))) = Statement::open(&env) else {
        return None;
    };
    if receipt.unverifiable {
        stats.unverifiable.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let p = if track.get(&receipt.worker).copied().unwrap_or(0) < PROBATION_VERDICTS {
        cfg.probation_probability
    } else {
        cfg.probability
    };
    if !agora_verify::selected_for_check(at.root, at.index, p) {
        return None;
    }
    let index = at.index;
    stats.selected.fetch_add(1, Ordering::Relaxed);
    let digest = Sha256(sha2_digest(&env.payload));
    let c = Arc::clone(at.client);
    let size = at.size;
    let proof = match tokio::task::spawn_blocking(move || c.inclusion_proof(index, size)).await {
        Ok(Ok(p)) => p,
        _ => {
            warn!(index, "could not read the entry's inclusion proof");
            return None;
        }
    };
    let selection = Selection {
        checkpoint: String::from_utf8_lossy(at.checkpoint).into_owned(),
        index,
        proof: proof.iter().map(|h| hex::encode(h.0)).collect(),
        probability: p,
    };
    let Some(transcript) = fetch_transcript(net, gateway, &digest, Some(&selection)).await else {
        stats.unavailable.fetch_add(1, Ordering::Relaxed);
        info!(index, receipt = %digest, "selected receipt, but no gateway gave its transcript");
        return None;
    };
    let (accept, reason, report_stats) = match verify(engine, &transcript, cfg.tolerances).await {
        Ok((_, r)) => {
            let mut s = std::collections::BTreeMap::new();
            s.insert("tokens".to_string(), f64::from(r.tokens));
            s.insert(
                "commitments_checked".to_string(),
                f64::from(r.commitments_checked),
            );
            s.insert("min_overlap".to_string(), f64::from(r.min_overlap));
            s.insert("max_value_error".to_string(), f64::from(r.max_value_error));
            s.insert("near_ties".to_string(), f64::from(r.near_ties));
            s.insert(
                "mismatched_tokens".to_string(),
                f64::from(r.mismatched_tokens),
            );
            if r.given > 0 {
                s.insert("given_tokens".to_string(), f64::from(r.given));
                s.insert(
                    "given_mismatches".to_string(),
                    f64::from(r.given_mismatches),
                );
            }
            (r.accept, r.reason, s)
        }
        Err(e) if e.condemns_worker() => (false, Some(e.to_string()), Default::default()),
        Err(e) => {
            warn!(index, "cannot check this receipt: {e}");
            return None;
        }
    };
    if accept {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.rejected.fetch_add(1, Ordering::Relaxed);
        // The evidence: anyone may fetch it from this node and re-run the check.
        let leaf = agora_tlog::hash::leaf_hash(entry);
        gateway.evidence().insert(digest, transcript, leaf.0);
    }
    info!(index, worker = %receipt.worker, accept, reason = reason.as_deref().unwrap_or(""), "verdict");
    let verdict = Verdict {
        receipt: digest,
        worker: Some(receipt.worker),
        validator: identity.peer_id(),
        accept,
        stats: report_stats,
        reason,
        time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    // This node's own gateway trusts its own validator (gossip does not come back to it).
    if let Some(w) = crate::to_net_id(&receipt.worker) {
        gateway.record_verdict(&w, accept);
    }
    let env = Statement::Verdict(verdict).sign(identity);
    let json = env.to_json().into_bytes();
    net.publish_verdict(json.clone());
    let url = cfg.log_url.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || {
        agora_api::tlog::client::LogClient::new(&url).add(&json)
    })
    .await
    {
        warn!("could not log the verdict: {e}");
    }
    Some((receipt.worker, accept))
}

/// Whether `t` is the transcript of the receipt with `digest`: its receipt is that one (by
/// digest), validly signed by its worker, and every digest in it matches the transcript.
pub fn authentic(t: &Transcript, digest: &Sha256) -> bool {
    t.check().is_ok_and(|c| c.receipt_digest == *digest)
}

/// The transcript of `receipt`: from this node's own gateway if it has it, else from every
/// gateway at once (each with a deadline), the first authentic one.
async fn fetch_transcript(
    net: &NetHandle,
    gateway: &Gateway,
    receipt: &Sha256,
    selection: Option<&Selection>,
) -> Option<Transcript> {
    if let Some((t, _)) = gateway.transcripts().get(receipt)
        && authentic(&t, receipt)
    {
        return Some(t);
    }
    let sources: Vec<agora_net::PeerId> = net
        .live_peers()
        .into_iter()
        .filter(|p| p.status.as_ref().is_some_and(|s| s.gateway))
        .map(|p| p.peer_id)
        .take(MAX_SOURCES)
        .collect();
    let req = TranscriptRequest {
        receipt: receipt.to_string(),
        selection: selection.cloned(),
    };
    let mut asks: futures::stream::FuturesUnordered<_> = sources
        .into_iter()
        .map(|peer| ask_transcript(net, peer, &req))
        .collect();
    let first = async {
        while let Some((peer, t)) = asks.next().await {
            match t {
                Some(t) if authentic(&t, receipt) => return Some(t),
                Some(_) => {
                    warn!(%peer, %receipt, "a peer sent a transcript that is not this receipt's: ignored")
                }
                None => debug!(%peer, "no transcript there"),
            }
        }
        None
    };
    tokio::time::timeout(FETCH_DEADLINE, first)
        .await
        .ok()
        .flatten()
}

/// One peer's answer to a transcript request (`None`: none, refused, or too slow).
async fn ask_transcript(
    net: &NetHandle,
    peer: agora_net::PeerId,
    req: &TranscriptRequest,
) -> (agora_net::PeerId, Option<Transcript>) {
    let ask = async {
        let mut s = net
            .open(peer, net.protocols().transcript.clone())
            .await
            .ok()?;
        s.send(req).await.ok()?;
        s.recv_timeout::<Option<Transcript>>(ASK_TIMEOUT)
            .await
            .ok()
            .flatten()
            .flatten()
    };
    (
        peer,
        tokio::time::timeout(ASK_TIMEOUT, ask).await.ok().flatten(),
    )
}

fn sha2_digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// A gossiped verdict that could be acted upon: a verdict statement signed by the validator it
/// names, naming a worker; or why it is not one.
pub fn parse_verdict(bytes: &[u8]) -> Result<Verdict, &'static str> {
    let env = Envelope::from_json(bytes).map_err(|_| "not a signed statement")?;
    let Ok((signers, Statement::Verdict(v))) = Statement::open(&env) else {
        return Err("not a verdict, or a bad signature");
    };
    if !signers.contains(&v.validator) {
        return Err("not signed by the validator it names");
    }
    if v.worker.is_none() {
        return Err("names no worker");
    }
    Ok(v)
}

/// What a gateway does with a verdict: apply it (a validator it trusts), re-check it (a
/// rejection from anyone else, when this gateway has the model), or ignore it.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Apply(PeerId, bool),
    Recheck,
    Ignore(&'static str),
}

/// Decides [`Action`] for a parsed verdict.
pub fn action(v: &Verdict, trusted: &TrustedValidators, can_recheck: bool) -> Action {
    let Some(worker) = v.worker else {
        return Action::Ignore("names no worker");
    };
    if trusted.trusts(&v.validator) {
        Action::Apply(worker, v.accept)
    } else if v.accept {
        Action::Ignore("an acceptance from a validator this gateway does not trust")
    } else if can_recheck {
        Action::Recheck
    } else {
        Action::Ignore("a rejection from an untrusted validator, and no model here to re-check it")
    }
}

/// Applies gossiped verdicts to a gateway's reputation table ([`action`] decides how): trusted
/// validators' directly, other rejections only once this gateway re-ran the check on the
/// evidence and reached the same conclusion. Re-checks run one at a time from a queue of 16;
/// a validator whose rejection did not hold up is ignored from then on.
pub async fn follow_verdicts(net: NetHandle, gateway: Gateway) {
    let Some(mut rx) = net.take_verdicts() else {
        return;
    };
    let (tx, rechecks) = mpsc::channel::<Verdict>(16);
    let liars = Arc::new(Mutex::new(HashSet::<PeerId>::new()));
    tokio::spawn(recheck_loop(gateway.clone(), rechecks, Arc::clone(&liars)));
    let mut seen: HashSet<(Sha256, PeerId)> = HashSet::new();
    let stats = gateway.stats();
    while let Some((from, bytes)) = rx.recv().await {
        let ignore = |why: &str| {
            stats.verdicts_ignored.fetch_add(1, Ordering::Relaxed);
            debug!(%from, "verdict ignored: {why}");
        };
        let v = match parse_verdict(&bytes) {
            Ok(v) => v,
            Err(why) => {
                ignore(why);
                continue;
            }
        };
        if seen.len() >= 8192 {
            seen.clear();
        }
        if !seen.insert((v.receipt, v.validator)) {
            ignore("already heard");
            continue;
        }
        if liars.lock().is_ok_and(|l| l.contains(&v.validator)) {
            ignore("from a validator whose rejection did not hold up here");
            continue;
        }
        match action(
            &v,
            &gateway.config().trusted,
            gateway.local_engine().is_some(),
        ) {
            Action::Apply(worker, accept) => match crate::to_net_id(&worker) {
                Some(w) => gateway.record_verdict(&w, accept),
                None => ignore("the worker is not a network key"),
            },
            Action::Recheck => {
                if v.worker
                    .and_then(|w| crate::to_net_id(&w))
                    .is_some_and(|w| gateway.condemned(&w))
                {
                    ignore("the worker is already excluded");
                } else if tx.try_send(v).is_err() {
                    ignore("too many re-checks waiting");
                }
            }
            Action::Ignore(why) => ignore(why),
        }
    }
}

async fn recheck_loop(
    gateway: Gateway,
    mut rx: mpsc::Receiver<Verdict>,
    liars: Arc<Mutex<HashSet<PeerId>>>,
) {
    let stats = gateway.stats();
    while let Some(v) = rx.recv().await {
        let Some(worker) = v.worker else { continue };
        match recheck(&gateway, &v).await {
            Ok(true) => {
                stats.rechecks_confirmed.fetch_add(1, Ordering::Relaxed);
                info!(%worker, validator = %v.validator, "re-checked a rejection on its evidence: confirmed");
                if let Some(w) = crate::to_net_id(&worker) {
                    gateway.record_verdict(&w, false);
                }
            }
            Ok(false) => {
                stats.rechecks_refuted.fetch_add(1, Ordering::Relaxed);
                warn!(%worker, validator = %v.validator, "a validator rejected an answer that checks out here: ignoring that validator from now on");
                if let Ok(mut l) = liars.lock() {
                    if l.len() >= 4096 {
                        l.clear();
                    }
                    l.insert(v.validator);
                }
            }
            Err(why) => {
                stats.verdicts_ignored.fetch_add(1, Ordering::Relaxed);
                debug!(%worker, "rejection not re-checked: {why}");
            }
        }
    }
}

/// Re-runs the check behind a rejection on this gateway's own engine: `Ok(true)` when the
/// answer is indeed rejected, `Ok(false)` when it checks out, `Err` when it cannot be checked
/// here (no evidence, another model, a transcript that is not that receipt's).
async fn recheck(gateway: &Gateway, v: &Verdict) -> Result<bool, &'static str> {
    let engine = gateway.local_engine().ok_or("no model here")?;
    let worker = v.worker.ok_or("names no worker")?;
    let t = match gateway.transcripts().get(&v.receipt) {
        Some((t, _)) => t,
        None => {
            let req = TranscriptRequest {
                receipt: v.receipt.to_string(),
                selection: None,
            };
            let validator = crate::to_net_id(&v.validator).ok_or("not a network key")?;
            ask_transcript(gateway.net(), validator, &req)
                .await
                .1
                .ok_or("the validator gave no evidence")?
        }
    };
    let checked = t
        .check()
        .map_err(|_| "the evidence is not a valid transcript")?;
    if checked.receipt_digest != v.receipt || checked.receipt.worker != worker {
        return Err("the evidence is another receipt's");
    }
    if checked.receipt.model.to_string() != engine.info().sha256 {
        return Err("the answer is of a model this gateway does not run");
    }
    match verify(&engine, &t, Tolerances::default()).await {
        Ok((_, r)) => Ok(!r.accept),
        Err(e) if e.condemns_worker() => Ok(true),
        Err(_) => Err("this gateway's engine could not check it"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn verdict(signer: &Identity, named: &Identity, worker: Option<PeerId>) -> Vec<u8> {
        Statement::Verdict(Verdict {
            receipt: Sha256([7; 32]),
            worker,
            validator: named.peer_id(),
            accept: false,
            stats: BTreeMap::new(),
            reason: Some("token 3 is not the seeded choice".into()),
            time: 1,
        })
        .sign(signer)
        .to_json()
        .into_bytes()
    }

    #[test]
    fn verdicts_are_applied_rechecked_or_ignored() {
        let (v, other, worker) = (
            Identity::from_seed(&[1; 32]),
            Identity::from_seed(&[2; 32]),
            Identity::from_seed(&[3; 32]).peer_id(),
        );
        let good = verdict(&v, &v, Some(worker));
        let parsed = parse_verdict(&good).unwrap();
        let only_v = TrustedValidators::only([v.peer_id()]);
        let only_other = TrustedValidators::only([other.peer_id()]);
        let nobody = TrustedValidators::default();

        assert_eq!(
            action(&parsed, &only_v, false),
            Action::Apply(worker, false)
        );
        // Nobody's say-so excludes a worker: an untrusted rejection is re-checked where the
        // model is, and ignored where it is not.
        assert_eq!(action(&parsed, &only_other, true), Action::Recheck);
        assert_eq!(action(&parsed, &nobody, true), Action::Recheck);
        assert!(matches!(action(&parsed, &nobody, false), Action::Ignore(_)));
        // An untrusted acceptance earns nothing (a Sybil validator cannot vouch for its worker).
        let mut accepted = parsed.clone();
        accepted.accept = true;
        assert!(matches!(
            action(&accepted, &nobody, true),
            Action::Ignore(_)
        ));
        assert_eq!(
            action(&accepted, &only_v, true),
            Action::Apply(worker, true)
        );
        // Signed by one key in the name of another validator.
        assert_eq!(
            parse_verdict(&verdict(&other, &v, Some(worker))),
            Err("not signed by the validator it names")
        );
        assert_eq!(
            parse_verdict(&verdict(&v, &v, None)),
            Err("names no worker")
        );
        assert_eq!(
            parse_verdict(b"{\"payload\": 1"),
            Err("not a signed statement")
        );
        // A payload edited after signing.
        let tampered =
            String::from_utf8(good)
                .unwrap()
                .replacen("\"payload\":\"", "\"payload\":\"e", 1);
        assert!(parse_verdict(tampered.as_bytes()).is_err());
    }
}
