//! Who may read a prompt: the rule a gateway applies before it hands a kept transcript to a
//! validator.
//!
//! A transcript holds the client's prompt and the answer. A gateway releases one only when
//! all of these hold:
//! 1. the peer asking is a validator this gateway's operator trusts (`--trust-validator`);
//! 2. it shows the receipt's log entry at `index` under a checkpoint signed by the log the
//!    gateway appends its receipts to (an inclusion proof, checked against the leaf hash the
//!    gateway recorded when it queued the receipt);
//! 3. that checkpoint's root selects `index` with the probability the validator claims
//!    (`agora_verify::selected_for_check`), and that probability is at most the gateway's
//!    `max_check_probability`.
//!
//! So an anonymous peer gets nothing, and even a trusted validator gets only what the log's
//! randomness gave it to check. (A trusted validator could read several checkpoints and use
//! the one that selects most; the gateway cannot tell which checkpoint came first. That is one
//! reason the list of trusted validators is the operator's.)

use agora_tlog::checkpoint::SignedCheckpoint;
use agora_tlog::note::Vkey;

use crate::proto::Selection;

use std::collections::HashSet;

use agora_core::PeerId;

/// Validators whose verdicts a gateway acts on without re-checking, and to whom it releases
/// transcripts (`agora node --trust-validator`). Empty by default: then only rejections this
/// gateway re-checked itself count.
#[derive(Clone, Debug, Default)]
pub struct TrustedValidators(HashSet<PeerId>);

impl TrustedValidators {
    pub fn only(keys: impl IntoIterator<Item = PeerId>) -> Self {
        Self(keys.into_iter().collect())
    }

    pub fn trusts(&self, validator: &PeerId) -> bool {
        self.0.contains(validator)
    }

    /// Whether the network peer `peer` is one of these validators.
    pub fn trusts_peer(&self, peer: &agora_net::PeerId) -> bool {
        crate::to_core_id(peer).is_some_and(|p| self.trusts(&p))
    }

    pub fn insert(&mut self, validator: PeerId) {
        self.0.insert(validator);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Most hashes an inclusion proof can have (a tree of 2^64 leaves).
const MAX_PROOF: usize = 64;

/// Whether `peer` may read the transcript whose receipt entry hashes to `leaf`, or why not.
pub fn may_release(
    peer: &agora_net::PeerId,
    selection: Option<&Selection>,
    leaf: &[u8; 32],
    trusted: &TrustedValidators,
    log_key: Option<&Vkey>,
    max_probability: f64,
) -> Result<(), &'static str> {
    if !trusted.trusts_peer(peer) {
        return Err("the peer is not a validator this gateway trusts");
    }
    let sel = selection.ok_or("no proof that the log selected this receipt")?;
    let key = log_key.ok_or("this gateway does not know its log's key")?;
    if !(sel.probability > 0.0 && sel.probability <= max_probability) {
        return Err("the claimed selection probability is above this gateway's limit");
    }
    let cp = SignedCheckpoint::open(sel.checkpoint.as_bytes(), key)
        .map_err(|_| "the checkpoint is not signed by the log")?
        .checkpoint;
    if sel.proof.len() > MAX_PROOF {
        return Err("the inclusion proof is too long");
    }
    let mut proof = Vec::with_capacity(sel.proof.len());
    for h in &sel.proof {
        let mut b = [0u8; 32];
        hex::decode_to_slice(h, &mut b).map_err(|_| "the inclusion proof is not hex hashes")?;
        proof.push(b);
    }
    let proof: Vec<agora_tlog::Hash> = proof.into_iter().map(agora_tlog::Hash).collect();
    agora_tlog::merkle::verify_inclusion(
        sel.index,
        cp.size,
        &agora_tlog::Hash(*leaf),
        &proof,
        &cp.root,
    )
    .map_err(|_| "the receipt is not at that index under that checkpoint")?;
    if !agora_verify::selected_for_check(&cp.root.0, sel.index, sel.probability) {
        return Err("the checkpoint does not select this receipt");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_core::Identity;
    use agora_tlog::checkpoint::Checkpoint;
    use agora_tlog::merkle::MemoryTree;

    struct Setup {
        log: Identity,
        vkey: Vkey,
        tree: MemoryTree,
        entries: Vec<Vec<u8>>,
    }

    fn setup() -> Setup {
        let log = Identity::from_seed(&[9; 32]);
        let origin = log.default_log_origin();
        let vkey = log.vkey(&origin).unwrap();
        let mut tree = MemoryTree::new();
        let entries: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10]).collect();
        for e in &entries {
            tree.append(e);
        }
        Setup {
            log,
            vkey,
            tree,
            entries,
        }
    }

    fn selection(s: &Setup, index: u64, p: f64) -> Selection {
        let origin = s.log.default_log_origin();
        let cp = Checkpoint::new(&origin, s.tree.size(), s.tree.root());
        let signed = SignedCheckpoint::sign(cp, &s.log.log_signer(&origin).unwrap()).unwrap();
        Selection {
            checkpoint: String::from_utf8(signed.to_bytes()).unwrap(),
            index,
            proof: s
                .tree
                .inclusion_proof(index, s.tree.size())
                .unwrap()
                .iter()
                .map(|h| hex::encode(h.0))
                .collect(),
            probability: p,
        }
    }

    #[test]
    fn only_trusted_validators_with_a_selection_get_a_transcript() {
        let s = setup();
        let vk = Identity::from_seed(&[1; 32]).peer_id();
        let v = crate::to_net_id(&vk).unwrap();
        let stranger = crate::to_net_id(&Identity::from_seed(&[2; 32]).peer_id()).unwrap();
        let trusted = TrustedValidators::only([vk]);
        let root = s.tree.root().0;
        let (sel_i, other_i) = {
            let sel = (0..40u64)
                .find(|&i| agora_verify::selected_for_check(&root, i, 0.3))
                .unwrap();
            let other = (0..40u64)
                .find(|&i| !agora_verify::selected_for_check(&root, i, 0.3))
                .unwrap();
            (sel, other)
        };
        let leaf = |i: u64| agora_tlog::hash::leaf_hash(&s.entries[i as usize]).0;
        let ok = selection(&s, sel_i, 0.3);
        assert_eq!(
            may_release(&v, Some(&ok), &leaf(sel_i), &trusted, Some(&s.vkey), 0.5),
            Ok(())
        );
        // An anonymous peer, or a trusted one without proof, gets nothing.
        assert!(
            may_release(
                &stranger,
                Some(&ok),
                &leaf(sel_i),
                &trusted,
                Some(&s.vkey),
                0.5
            )
            .is_err()
        );
        assert!(may_release(&v, None, &leaf(sel_i), &trusted, Some(&s.vkey), 0.5).is_err());
        assert!(
            may_release(
                &v,
                Some(&ok),
                &leaf(sel_i),
                &TrustedValidators::default(),
                Some(&s.vkey),
                0.5
            )
            .is_err()
        );
        // Another receipt than the proven one; a receipt the root does not select; an
        // inflated probability; a checkpoint of another key.
        assert!(may_release(&v, Some(&ok), &leaf(other_i), &trusted, Some(&s.vkey), 0.5).is_err());
        let unselected = selection(&s, other_i, 0.3);
        assert_eq!(
            may_release(
                &v,
                Some(&unselected),
                &leaf(other_i),
                &trusted,
                Some(&s.vkey),
                0.5
            ),
            Err("the checkpoint does not select this receipt")
        );
        let greedy = selection(&s, other_i, 1.0);
        assert!(
            may_release(
                &v,
                Some(&greedy),
                &leaf(other_i),
                &trusted,
                Some(&s.vkey),
                0.5
            )
            .is_err()
        );
        let other_key = Identity::from_seed(&[3; 32]);
        let other_vkey = other_key.vkey(&s.log.default_log_origin()).unwrap();
        assert!(
            may_release(
                &v,
                Some(&ok),
                &leaf(sel_i),
                &trusted,
                Some(&other_vkey),
                0.5
            )
            .is_err()
        );
        assert!(may_release(&v, Some(&ok), &leaf(sel_i), &trusted, None, 0.5).is_err());
    }
}
