//! The validator role: follows the log, checks the receipts the log's own randomness selects,
//! and publishes signed verdicts (to the log, and by gossip so that gateways react at once).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agora_core::statement::Verdict;
use agora_core::{Envelope, Identity, PeerId, Sha256, Statement};
use agora_engine::Engine;
use agora_net::NetHandle;
use agora_tlog::checkpoint::SignedCheckpoint;
use agora_verify::Tolerances;
use tracing::{debug, info, warn};

use crate::proto::TranscriptRequest;
use crate::transcript::Transcript;
use crate::verifier::verify;

/// How a validator works.
#[derive(Clone, Debug)]
pub struct ValidatorConfig {
    /// The log receipts are appended to (tlog-tiles base URL).
    pub log_url: String,
    /// The log's verifier key; without it, checkpoints are taken unverified (a warning says so).
    pub log_key: Option<agora_tlog::note::Vkey>,
    /// Share of receipts checked.
    pub probability: f64,
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
}

/// Runs until the task is dropped.
pub async fn run(
    net: NetHandle,
    engine: Arc<dyn Engine>,
    identity: Arc<Identity>,
    cfg: ValidatorConfig,
    stats: Arc<ValidatorStats>,
) {
    if cfg.log_key.is_none() {
        warn!(log = %cfg.log_url, "validating without the log's key: checkpoints are not verified");
    }
    let mut done: u64 = 0;
    let mut bundle: Option<(u64, Vec<Vec<u8>>)> = None;
    loop {
        tokio::time::sleep(cfg.poll).await;
        // A fresh client each round: the client caches what it reads.
        let client = Arc::new(agora_api::tlog::client::LogClient::new(&cfg.log_url));
        let c = Arc::clone(&client);
        let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || c.checkpoint()).await else {
            continue;
        };
        let cp = match &cfg.log_key {
            Some(k) => SignedCheckpoint::open(&bytes, k),
            None => SignedCheckpoint::parse(&bytes),
        };
        let cp = match cp {
            Ok(c) => c.checkpoint,
            Err(e) => {
                warn!("the log's checkpoint does not verify: {e}");
                continue;
            }
        };
        for index in done..cp.size {
            stats.seen.fetch_add(1, Ordering::Relaxed);
            if !agora_verify::selected_for_check(&cp.root.0, index, cfg.probability) {
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
            check_entry(&net, &engine, &identity, &cfg, &stats, index, &entry).await;
        }
        done = done.max(cp.size);
    }
}

async fn check_entry(
    net: &NetHandle,
    engine: &Arc<dyn Engine>,
    identity: &Identity,
    cfg: &ValidatorConfig,
    stats: &ValidatorStats,
    index: u64,
    entry: &[u8],
) {
    // The log holds other statements too (verdicts among them): only receipts are checked.
    let Ok(env) = Envelope::from_json(entry) else {
        return;
    };
    let Ok((_, Statement::Receipt(receipt))) = Statement::open(&env) else {
        return;
    };
    stats.selected.fetch_add(1, Ordering::Relaxed);
    let digest = Sha256(sha2_digest(&env.payload));
    let Some(transcript) = fetch_transcript(net, &digest).await else {
        stats.unavailable.fetch_add(1, Ordering::Relaxed);
        info!(index, receipt = %digest, "selected receipt, but no gateway has its transcript");
        return;
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
            (r.accept, r.reason, s)
        }
        Err(e) if e.condemns_worker() => (false, Some(e.to_string()), Default::default()),
        Err(e) => {
            warn!(index, "cannot check this receipt: {e}");
            return;
        }
    };
    if accept {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.rejected.fetch_add(1, Ordering::Relaxed);
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
}

/// Asks every gateway for the transcript of `receipt`.
async fn fetch_transcript(net: &NetHandle, receipt: &Sha256) -> Option<Transcript> {
    for p in net.live_peers() {
        if !p.status.as_ref().is_some_and(|s| s.gateway) {
            continue;
        }
        let ask = async {
            let mut s = net
                .open(p.peer_id, net.protocols().transcript.clone())
                .await
                .ok()?;
            s.send(&TranscriptRequest {
                receipt: receipt.to_string(),
            })
            .await
            .ok()?;
            s.recv_timeout::<Option<Transcript>>(Duration::from_secs(10))
                .await
                .ok()
                .flatten()
                .flatten()
        };
        match tokio::time::timeout(Duration::from_secs(15), ask).await {
            Ok(Some(t)) => return Some(t),
            _ => debug!(peer = %p.peer_id, "no transcript there"),
        }
    }
    None
}

fn sha2_digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Whose verdicts a gateway acts on.
#[derive(Clone, Debug, Default)]
pub enum TrustedValidators {
    /// Every validator's: any key can sign a verdict (the default; see docs/verification.md).
    #[default]
    Any,
    /// Only these validators' (`agora node --trust-validator`).
    Only(HashSet<PeerId>),
}

impl TrustedValidators {
    pub fn trusts(&self, validator: &PeerId) -> bool {
        match self {
            TrustedValidators::Any => true,
            TrustedValidators::Only(set) => set.contains(validator),
        }
    }
}

/// What a gossiped verdict asks a gateway to record — the worker, and whether its answer was
/// accepted — or why it is not acted upon: it must be a verdict statement signed by the
/// validator it names, that validator must be trusted, and it must name a worker.
pub fn verdict_to_apply(
    bytes: &[u8],
    trusted: &TrustedValidators,
) -> Result<(PeerId, bool), &'static str> {
    let env = Envelope::from_json(bytes).map_err(|_| "not a signed statement")?;
    let Ok((signers, Statement::Verdict(v))) = Statement::open(&env) else {
        return Err("not a verdict, or a bad signature");
    };
    if !signers.contains(&v.validator) {
        return Err("not signed by the validator it names");
    }
    if !trusted.trusts(&v.validator) {
        return Err("from a validator this gateway does not trust");
    }
    let worker = v.worker.ok_or("names no worker")?;
    Ok((worker, v.accept))
}

/// Applies gossiped verdicts to a gateway's reputation table ([`verdict_to_apply`] decides
/// which count).
pub async fn follow_verdicts(
    net: NetHandle,
    gateway: crate::gateway::Gateway,
    trusted: TrustedValidators,
) {
    let Some(mut rx) = net.take_verdicts() else {
        return;
    };
    while let Some((from, bytes)) = rx.recv().await {
        match verdict_to_apply(&bytes, &trusted) {
            Ok((worker, accept)) => gateway.record_verdict(&worker.to_string(), accept),
            Err(why) => debug!(%from, "verdict ignored: {why}"),
        }
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
    fn only_valid_verdicts_of_trusted_validators_apply() {
        let (v, other, worker) = (
            Identity::from_seed(&[1; 32]),
            Identity::from_seed(&[2; 32]),
            Identity::from_seed(&[3; 32]).peer_id(),
        );
        let good = verdict(&v, &v, Some(worker));
        let only_v = TrustedValidators::Only([v.peer_id()].into());
        let only_other = TrustedValidators::Only([other.peer_id()].into());

        assert_eq!(
            verdict_to_apply(&good, &TrustedValidators::Any),
            Ok((worker, false))
        );
        assert_eq!(verdict_to_apply(&good, &only_v), Ok((worker, false)));
        assert_eq!(
            verdict_to_apply(&good, &only_other),
            Err("from a validator this gateway does not trust")
        );
        // Signed by one key in the name of another (trusted) validator.
        assert_eq!(
            verdict_to_apply(&verdict(&other, &v, Some(worker)), &only_v),
            Err("not signed by the validator it names")
        );
        assert_eq!(
            verdict_to_apply(&verdict(&v, &v, None), &TrustedValidators::Any),
            Err("names no worker")
        );
        assert_eq!(
            verdict_to_apply(b"{\"payload\": 1", &TrustedValidators::Any),
            Err("not a signed statement")
        );
        // A payload edited after signing.
        let tampered =
            String::from_utf8(good)
                .unwrap()
                .replacen("\"payload\":\"", "\"payload\":\"e", 1);
        assert!(verdict_to_apply(tampered.as_bytes(), &TrustedValidators::Any).is_err());
    }
}
