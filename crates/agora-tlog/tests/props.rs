//! Property tests: for random trees every inclusion proof and every consistency proof verifies,
//! and any one-bit change (of the proof, a root, the leaf, or a size/index) makes it fail. Also,
//! parsers never panic on arbitrary input.

#![allow(clippy::unwrap_used)]

use agora_tlog::checkpoint::SignedCheckpoint;
use agora_tlog::hash::{Hash, leaf_hash};
use agora_tlog::merkle::{self, MemoryTree};
use agora_tlog::tile::{Frontier, TilePath};
use agora_tlog::witness::AddCheckpointRequest;
use agora_tlog::{Note, Policy, TlogProof};
use proptest::prelude::*;

fn tree(n: u64, seed: u64) -> MemoryTree {
    let mut t = MemoryTree::new();
    for i in 0..n {
        t.append(&(i ^ seed).to_le_bytes());
    }
    t
}

fn flip(h: &mut Hash, bit: usize) {
    h.0[(bit / 8) % 32] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn inclusion_proofs(n in 1u64..3000, seed: u64, i_frac in 0.0f64..1.0, bit in 0usize..256, which: usize) {
        let t = tree(n, seed);
        let i = ((n as f64) * i_frac) as u64 % n;
        let root = t.root();
        let leaf = t.leaf_hash(i).unwrap();
        let p = t.inclusion_proof(i, n).unwrap();
        prop_assert!(merkle::verify_inclusion(i, n, &leaf, &p, &root).is_ok());
        // One bit of the proof, the root or the leaf.
        let choices = p.len() + 2;
        match which % choices {
            0 => { let mut r = root; flip(&mut r, bit); prop_assert!(merkle::verify_inclusion(i, n, &leaf, &p, &r).is_err()); }
            1 => { let mut l = leaf; flip(&mut l, bit); prop_assert!(merkle::verify_inclusion(i, n, &l, &p, &root).is_err()); }
            k => { let mut q = p.clone(); flip(&mut q[k - 2], bit); prop_assert!(merkle::verify_inclusion(i, n, &leaf, &q, &root).is_err()); }
        }
        // One bit of the index.
        let j = i ^ (1u64 << (bit % 64));
        if j != i {
            prop_assert!(merkle::verify_inclusion(j, n, &leaf, &p, &root).is_err());
        }
    }

    #[test]
    fn consistency_proofs(n in 1u64..3000, seed: u64, m_frac in 0.0f64..1.0, bit in 0usize..256, which: usize) {
        let t = tree(n, seed);
        let m = 1 + (((n - 1) as f64) * m_frac) as u64;
        let (r1, r2) = (t.root_at(m).unwrap(), t.root());
        let p = t.consistency_proof(m, n).unwrap();
        prop_assert!(merkle::verify_consistency(m, n, &p, &r1, &r2).is_ok());
        let choices = p.len() + 2;
        match which % choices {
            0 => { let mut r = r1; flip(&mut r, bit); prop_assert!(merkle::verify_consistency(m, n, &p, &r, &r2).is_err()); }
            1 => { let mut r = r2; flip(&mut r, bit); prop_assert!(merkle::verify_consistency(m, n, &p, &r1, &r).is_err()); }
            k => { let mut q = p.clone(); flip(&mut q[k - 2], bit); prop_assert!(merkle::verify_consistency(m, n, &q, &r1, &r2).is_err()); }
        }
        let m2 = m ^ (1u64 << (bit % 64));
        if m2 != m && m2 <= n && m2 > 0 {
            prop_assert!(merkle::verify_consistency(m2, n, &p, &r1, &r2).is_err());
        }
    }

    #[test]
    fn frontier_matches_memory_tree(n in 0u64..5000, seed: u64) {
        let t = tree(n, seed);
        let mut f = Frontier::new();
        let mut full = Vec::new();
        for i in 0..n {
            f.push(t.leaf_hash(i).unwrap(), &mut full);
        }
        prop_assert_eq!(f.root(), t.root());
        prop_assert_eq!(full.len() as u64, n / 256 + n / 65536);
    }

    #[test]
    fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Note::parse(&data);
        let _ = SignedCheckpoint::parse(&data);
        let _ = TlogProof::parse(&data);
        let _ = Policy::parse(&data);
        let _ = AddCheckpointRequest::parse(&data);
        let _ = agora_tlog::witness::parse_response(&data);
        if let Ok(s) = std::str::from_utf8(&data) {
            let _ = TilePath::parse(s);
            let _ = agora_tlog::Vkey::parse(s);
        }
        let _ = agora_tlog::tile::decode_bundle(&data);
    }
}

/// Every pair of sizes in a tree of 300 leaves (beyond a tile boundary).
#[test]
fn all_pairs_up_to_300() {
    let t = tree(300, 7);
    let roots: Vec<Hash> = (0..=300).map(|s| t.root_at(s).unwrap()).collect();
    for n in 1..=300u64 {
        for m in 1..=n {
            let p = t.consistency_proof(m, n).unwrap();
            merkle::verify_consistency(m, n, &p, &roots[m as usize], &roots[n as usize]).unwrap();
        }
        for i in (0..n).step_by(7) {
            let p = t.inclusion_proof(i, n).unwrap();
            merkle::verify_inclusion(
                i,
                n,
                &leaf_hash(&(i ^ 7).to_le_bytes()),
                &p,
                &roots[n as usize],
            )
            .unwrap();
        }
    }
}
