//! Datasets as proofs, for Agora's curriculum: what a model learned from, provable down to
//! single records.
//!
//! A dataset version is a sequence of [`Record`]s, each with one canonical byte encoding
//! ([`record`]), and two RFC 6962 trees over them ([`tree`]): one in record order, one sorted by
//! the digest of each record's id. Their roots, signed in a `dataset` statement and logged, let
//! anyone check offline that a record is in the dataset ([`RecordProof`]) or that no record has
//! a given id ([`AbsenceProof`]).
//!
//! [`file`] checks the self-contained proof file a node serves and `agora dataset prove` writes.
//!
//! Pure: no I/O. Reading files, storing shards and signing statements are the caller's.
#![warn(missing_docs)]

pub mod file;
pub mod license;
pub mod mix;
pub mod proof;
pub mod record;
pub mod tree;

pub use license::{LicenseError, check_license};
pub use mix::{Mix, MixError};
pub use proof::{AbsenceProof, IdLeaf, MalformedProof, ProofError, RecordProof};
pub use record::{Record, RecordError};
pub use tree::{RootBuilder, Roots, TreeBuilder, TreeError, Trees, id_leaf_hash};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dataset(n: usize, salt: u32) -> Vec<Record> {
        (0..n)
            .map(|i| Record::new(format!("doc-{salt}-{i}"), format!("text {i} of {salt}")))
            .collect()
    }

    /// Flips bit `bit` of byte `i % len` of `b` (no-op on empty input).
    fn flip(b: &mut [u8], i: usize, bit: u8) {
        if !b.is_empty() {
            let n = b.len();
            b[i % n] ^= 1 << (bit % 8);
        }
    }

    #[test]
    fn an_empty_dataset_proves_every_id_absent() {
        let t = Trees::of(&[]).unwrap();
        let roots = t.roots();
        assert_eq!(roots.records, 0);
        t.prove_absent("anything").unwrap().verify(&roots).unwrap();
    }

    #[test]
    fn a_repeated_id_is_refused() {
        let mut d = dataset(5, 0);
        d[3].id = d[1].id.clone();
        assert!(matches!(
            Trees::of(&d),
            Err(TreeError::DuplicateId {
                first: 1,
                second: 3,
                ..
            })
        ));
    }

    #[test]
    fn a_present_id_cannot_be_proven_absent_nor_an_absent_one_present() {
        let d = dataset(10, 1);
        let t = Trees::of(&d).unwrap();
        assert!(matches!(
            t.prove_absent(&d[4].id),
            Err(TreeError::Present(_))
        ));
        assert_eq!(t.index_of(&d[4].id), Some(4));
        assert_eq!(t.index_of("nope"), None);
        // A record proof for record 4 does not prove record 5's id.
        let p = t.prove(4, &d[4]).unwrap();
        assert!(matches!(
            p.verify_id(&t.roots(), &d[5].id),
            Err(ProofError::WrongId { .. })
        ));
    }

    #[test]
    fn neighbours_that_skip_a_leaf_do_not_prove_absence() {
        let d = dataset(16, 2);
        let t = Trees::of(&d).unwrap();
        let roots = t.roots();
        let mut p = t.prove_absent("not-there").unwrap();
        p.verify(&roots).unwrap();
        // Replace the `after` neighbour by the next leaf: still in the tree, still bracketing,
        // but a leaf is skipped (the one that could hold the id).
        if let (Some(_), Some(a)) = (&p.before, &p.after)
            && a.index + 1 < roots.records
        {
            let further = t.id_leaf(a.index + 1).unwrap();
            p.after = Some(further);
            assert!(matches!(
                p.verify(&roots),
                Err(ProofError::NotAdjacent { .. }) | Err(ProofError::NotBracketed)
            ));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn every_record_proves_present_and_tampering_fails(
            n in 1usize..70, salt in any::<u32>(), i in any::<usize>(), byte in any::<usize>(), bit in any::<u8>(),
        ) {
            let d = dataset(n, salt);
            let t = Trees::of(&d).unwrap();
            let roots = t.roots();
            for (k, r) in d.iter().enumerate() {
                let p = t.prove(k as u64, r).unwrap();
                prop_assert_eq!(&p.verify_id(&roots, &r.id).unwrap(), r);
            }
            let k = i % n;
            let good = t.prove(k as u64, &d[k]).unwrap();
            // one bit of the record
            let mut p = good.clone();
            flip(&mut p.record, byte, bit);
            prop_assert!(p.verify(&roots).is_err());
            // one bit of the path
            if !good.path.is_empty() {
                let mut p = good.clone();
                let j = byte % p.path.len();
                flip(&mut p.path[j].0, byte / 7, bit);
                prop_assert!(p.verify(&roots).is_err());
            }
            // one bit of the root
            let mut bad = roots;
            flip(&mut bad.record_root.0, byte, bit);
            prop_assert!(good.verify(&bad).is_err());
            // another index
            let mut p = good.clone();
            p.index = (p.index + 1 + (byte as u64 % n as u64)) % n as u64;
            if p.index != good.index {
                prop_assert!(p.verify(&roots).is_err());
            }
        }

        #[test]
        fn every_absent_id_proves_absent_and_tampering_fails(
            n in 0usize..70, salt in any::<u32>(), probe in any::<u64>(), byte in any::<usize>(), bit in any::<u8>(),
        ) {
            let d = dataset(n, salt);
            let t = Trees::of(&d).unwrap();
            let roots = t.roots();
            let id = format!("absent-{probe}");
            let good = t.prove_absent(&id).unwrap();
            good.verify(&roots).unwrap();
            // The same proof does not clear a present id.
            if let Some(r) = d.first() {
                let mut p = good.clone();
                p.id = r.id.clone();
                prop_assert!(p.verify(&roots).is_err() || t.prove_absent(&r.id).is_ok());
            }
            // one bit of the id root
            let mut bad = roots;
            flip(&mut bad.id_root.0, byte, bit);
            prop_assert!(good.verify(&bad).is_err());
            // one bit of a neighbour's key, digest or path
            for which in 0..2 {
                let mut p = good.clone();
                let leaf = if which == 0 { p.before.as_mut() } else { p.after.as_mut() };
                if let Some(l) = leaf {
                    match byte % 3 {
                        0 => flip(&mut l.key, byte / 3, bit),
                        1 => flip(&mut l.digest, byte / 3, bit),
                        _ if !l.path.is_empty() => {
                            let j = byte % l.path.len();
                            flip(&mut l.path[j].0, byte / 5, bit);
                        }
                        _ => flip(&mut l.key, byte / 3, bit),
                    }
                    prop_assert!(p.verify(&roots).is_err());
                }
            }
            // dropping a neighbour
            if n > 0 {
                let mut p = good.clone();
                if p.before.is_some() && p.after.is_some() {
                    p.before = None;
                    prop_assert!(p.verify(&roots).is_err());
                }
            }
        }

        #[test]
        fn proofs_survive_json(n in 1usize..40, salt in any::<u32>(), probe in any::<u64>()) {
            let d = dataset(n, salt);
            let t = Trees::of(&d).unwrap();
            let p = t.prove(probe % n as u64, &d[(probe % n as u64) as usize]).unwrap();
            prop_assert_eq!(RecordProof::from_json(&p.to_json()).unwrap(), p);
            let a = t.prove_absent(&format!("x{probe}")).unwrap();
            prop_assert_eq!(AbsenceProof::from_json(&a.to_json()).unwrap(), a);
        }

        #[test]
        fn the_same_records_give_the_same_roots(n in 0usize..40, salt in any::<u32>()) {
            let d = dataset(n, salt);
            prop_assert_eq!(Trees::of(&d).unwrap().roots(), Trees::of(&d.clone()).unwrap().roots());
        }
    }
}
