//! RFC 6962 / RFC 9162 Merkle tree proofs: generation from any source of complete-subtree hashes,
//! and verification.
//!
//! The verification functions follow the reference semantics of transparency-dev/merkle, whose
//! conformance vectors they pass (see `tests/vectors.rs`).

use crate::hash::{Hash, node_hash};
use crate::{Error, Result};

/// The most hashes any proof in a tree of at most 2^64 - 1 leaves can have.
pub const MAX_PROOF_LEN: usize = 64;

/// Anything that can give the hash of a complete subtree: the subtree of `2^level` leaves that
/// starts at leaf `index << level`.
pub trait HashSource {
    /// The hash of that subtree, or [`Error::MissingHash`] when it is not available.
    fn subtree(&self, level: u8, index: u64) -> Result<Hash>;
}

impl<T: HashSource + ?Sized> HashSource for &T {
    fn subtree(&self, level: u8, index: u64) -> Result<Hash> {
        (**self).subtree(level, index)
    }
}

/// Largest power of two strictly below `n` (n >= 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[lo:hi])` for a non-empty range of a tree.
pub fn range_hash<S: HashSource + ?Sized>(src: &S, lo: u64, hi: u64) -> Result<Hash> {
    if hi <= lo {
        return Err(Error::IndexOutOfRange {
            index: lo,
            size: hi,
        });
    }
    let n = hi - lo;
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        let level = n.trailing_zeros() as u8;
        return src.subtree(level, lo >> level);
    }
    let k = split_point(n);
    let left = range_hash(src, lo, lo + k)?;
    let right = range_hash(src, lo + k, hi)?;
    Ok(node_hash(&left, &right))
}

/// The root hash of the tree of `size` leaves (the empty hash for size 0).
pub fn root<S: HashSource + ?Sized>(src: &S, size: u64) -> Result<Hash> {
    if size == 0 {
        return Ok(Hash::empty());
    }
    range_hash(src, 0, size)
}

/// RFC 6962 `PATH(index, D[0:size])`, from the leaf's sibling up to the root's child.
pub fn inclusion_proof<S: HashSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>> {
    if index >= size {
        return Err(Error::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    // Walk down from the root, remembering siblings, then reverse.
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            proof.push(range_hash(src, lo + k, hi)?);
            hi = lo + k;
        } else {
            proof.push(range_hash(src, lo, lo + k)?);
            lo += k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// RFC 6962 `PROOF(old, D[0:new])` for `0 < old <= new`; empty when `old == new`.
pub fn consistency_proof<S: HashSource + ?Sized>(src: &S, old: u64, new: u64) -> Result<Vec<Hash>> {
    if old > new {
        return Err(Error::SizeOrder { old, new });
    }
    if old == 0 {
        return Err(Error::EmptyOldTree);
    }
    let mut proof = Vec::new();
    if old == new {
        return Ok(proof);
    }
    // SUBPROOF(m, D[lo:hi], b), iteratively; elements are produced root-first and reversed.
    let (mut m, mut lo, mut hi, mut b) = (old, 0u64, new, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !b {
                proof.push(range_hash(src, lo, hi)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            proof.push(range_hash(src, lo + k, hi)?);
            hi = lo + k;
        } else {
            proof.push(range_hash(src, lo, lo + k)?);
            m -= k;
            lo += k;
            b = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Number of proof hashes below and above the point where the leaf's path joins the right border.
fn decomp_incl_proof(index: u64, size: u64) -> (usize, usize) {
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = (index >> inner).count_ones() as usize;
    (inner, border)
}

fn chain_inner(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        seed = if (index >> i) & 1 == 0 {
            node_hash(&seed, h)
        } else {
            node_hash(h, &seed)
        };
    }
    seed
}

fn chain_inner_right(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        if (index >> i) & 1 == 1 {
            seed = node_hash(h, &seed);
        }
    }
    seed
}

fn chain_border_right(mut seed: Hash, proof: &[Hash]) -> Hash {
    for h in proof {
        seed = node_hash(h, &seed);
    }
    seed
}

/// The root implied by an inclusion proof for `leaf` at `index` in a tree of `size` leaves.
pub fn root_from_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash]) -> Result<Hash> {
    if index >= size {
        return Err(Error::IndexOutOfRange { index, size });
    }
    let (inner, border) = decomp_incl_proof(index, size);
    if proof.len() != inner + border {
        return Err(Error::ProofLength {
            got: proof.len(),
            want: inner + border,
        });
    }
    let res = chain_inner(*leaf, &proof[..inner], index);
    Ok(chain_border_right(res, &proof[inner..]))
}

/// Check that `leaf` is at `index` in the tree of `size` leaves with the given root.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<()> {
    if root_from_inclusion(index, size, leaf, proof)? == *root {
        Ok(())
    } else {
        Err(Error::RootMismatch)
    }
}

/// Both roots a consistency proof leads to: `(old root, new root)`. `old_root` is only used when
/// `old` is a power of two, where the proof omits it.
fn consistency_roots(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: Option<&Hash>,
) -> Result<(Hash, Hash)> {
    if old > new {
        return Err(Error::SizeOrder { old, new });
    }
    if old == 0 {
        return Err(Error::EmptyOldTree);
    }
    if old == new {
        return Err(Error::NonEmptyProof);
    }
    if proof.is_empty() {
        return Err(Error::EmptyProof);
    }
    let (mut inner, border) = decomp_incl_proof(old - 1, new);
    let shift = old.trailing_zeros() as usize;
    inner -= shift;
    let (seed, start) = if old == 1u64 << shift {
        match old_root {
            Some(r) => (*r, 0),
            None => return Err(Error::OldRootNotDerivable),
        }
    } else {
        (proof[0], 1)
    };
    if proof.len() != start + inner + border {
        return Err(Error::ProofLength {
            got: proof.len(),
            want: start + inner + border,
        });
    }
    let proof = &proof[start..];
    let mask = (old - 1) >> shift;
    let h1 = chain_inner_right(seed, &proof[..inner], mask);
    let h1 = chain_border_right(h1, &proof[inner..]);
    let h2 = chain_inner(seed, &proof[..inner], mask);
    let h2 = chain_border_right(h2, &proof[inner..]);
    Ok((h1, h2))
}

/// Check that the tree of `new` leaves with `new_root` extends the tree of `old` leaves with
/// `old_root`. Following the reference semantics, `old == 0` is an error: consistency with the
/// empty tree is trivially true and proves nothing, so callers handle that case themselves.
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<()> {
    if old > new {
        return Err(Error::SizeOrder { old, new });
    }
    if old == 0 {
        return Err(Error::EmptyOldTree);
    }
    if old == new {
        if !proof.is_empty() {
            return Err(Error::NonEmptyProof);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(Error::RootMismatch)
        };
    }
    let (h1, h2) = consistency_roots(old, new, proof, Some(old_root))?;
    if h1 == *old_root && h2 == *new_root {
        Ok(())
    } else {
        Err(Error::RootMismatch)
    }
}

/// The same check over raw byte strings, with the reference implementation's treatment of
/// hashes of the wrong length (equal-size trees compare roots as bytes; everything else needs
/// 32-byte hashes). Used for conformance vectors and by callers holding unparsed input.
pub fn verify_consistency_bytes(
    old: u64,
    new: u64,
    proof: &[&[u8]],
    old_root: &[u8],
    new_root: &[u8],
) -> Result<()> {
    if old > new {
        return Err(Error::SizeOrder { old, new });
    }
    if old == 0 {
        return Err(Error::EmptyOldTree);
    }
    if old == new {
        if !proof.is_empty() {
            return Err(Error::NonEmptyProof);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(Error::RootMismatch)
        };
    }
    let proof = proof
        .iter()
        .map(|p| Hash::from_slice(p, "proof hash"))
        .collect::<Result<Vec<_>>>()?;
    let r1 = Hash::from_slice(old_root, "old root")?;
    let r2 = Hash::from_slice(new_root, "new root")?;
    verify_consistency(old, new, &proof, &r1, &r2)
}

/// The root of the tree at size `old` that a consistency proof *commits the new tree to*, after
/// checking that the proof leads to `new_root`. Under SHA-256 collision resistance this is the
/// only old root consistent with `new_root`, so a log that signed `(new, new_root)` and also
/// `(old, r)` with `r` different from the result has signed two inconsistent trees. Only possible
/// when `old` is not a power of two (otherwise the proof omits the old root).
pub fn implied_old_root(old: u64, new: u64, proof: &[Hash], new_root: &Hash) -> Result<Hash> {
    let (h1, h2) = consistency_roots(old, new, proof, None)?;
    if h2 == *new_root {
        Ok(h1)
    } else {
        Err(Error::RootMismatch)
    }
}

/// An in-memory Merkle tree holding every complete subtree hash. For tests, tools and small
/// trees; the log service keeps its tree in tiles instead.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Append an entry (hashed with [`crate::hash::leaf_hash`]); returns its index.
    pub fn append(&mut self, entry: &[u8]) -> u64 {
        self.push_leaf_hash(crate::hash::leaf_hash(entry))
    }

    /// Append a leaf hash; returns its index.
    pub fn push_leaf_hash(&mut self, h: Hash) -> u64 {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(h);
        let index = self.levels[0].len() as u64 - 1;
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
        index
    }

    /// The root hash at the current size.
    pub fn root(&self) -> Hash {
        self.root_at(self.size()).unwrap_or_else(|_| Hash::empty())
    }

    /// The root hash of the first `size` leaves; [`Error::IndexOutOfRange`] if `size` exceeds
    /// the tree.
    pub fn root_at(&self, size: u64) -> Result<Hash> {
        if size > self.size() {
            return Err(Error::IndexOutOfRange {
                index: size,
                size: self.size(),
            });
        }
        root(self, size)
    }

    /// [`inclusion_proof`] for leaf `index` in the tree of its first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        if size > self.size() {
            return Err(Error::IndexOutOfRange {
                index: size,
                size: self.size(),
            });
        }
        inclusion_proof(self, index, size)
    }

    /// [`consistency_proof`] between the trees of its first `old` and `new` leaves.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        if new > self.size() {
            return Err(Error::IndexOutOfRange {
                index: new,
                size: self.size(),
            });
        }
        consistency_proof(self, old, new)
    }

    /// The leaf hash at `index`, if the tree has that many leaves.
    pub fn leaf_hash(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }
}

impl HashSource for MemoryTree {
    fn subtree(&self, level: u8, index: u64) -> Result<Hash> {
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(Error::MissingHash { level, index })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    /// RFC 6962 MTH straight from the definition, for cross-checking.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => Hash::empty(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn tree(n: u64) -> (MemoryTree, Vec<Hash>) {
        let mut t = MemoryTree::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let h = leaf_hash(&i.to_be_bytes());
            leaves.push(h);
            t.push_leaf_hash(h);
        }
        (t, leaves)
    }

    #[test]
    fn roots_match_definition() {
        let (t, leaves) = tree(70);
        for s in 0..=70u64 {
            assert_eq!(
                t.root_at(s).unwrap(),
                mth(&leaves[..s as usize]),
                "size {s}"
            );
        }
    }

    /// Every inclusion and consistency proof between every pair of sizes up to 40 verifies, and
    /// every single-bit change of a proof, a root or a leaf makes it fail.
    #[test]
    fn exhaustive_small_trees() {
        let (t, _) = tree(40);
        for n in 1..=40u64 {
            let root = t.root_at(n).unwrap();
            for i in 0..n {
                let leaf = t.leaf_hash(i).unwrap();
                let p = t.inclusion_proof(i, n).unwrap();
                verify_inclusion(i, n, &leaf, &p, &root).unwrap();
                for j in 0..p.len() {
                    let mut q = p.clone();
                    q[j].0[(i as usize + j) % 32] ^= 1 << (j % 8);
                    assert!(verify_inclusion(i, n, &leaf, &q, &root).is_err());
                }
                let mut bad_leaf = leaf;
                bad_leaf.0[0] ^= 0x80;
                assert!(verify_inclusion(i, n, &bad_leaf, &p, &root).is_err());
                if n > 1 {
                    assert!(verify_inclusion((i + 1) % n, n, &leaf, &p, &root).is_err());
                }
            }
            for m in 1..=n {
                let old_root = t.root_at(m).unwrap();
                let p = t.consistency_proof(m, n).unwrap();
                verify_consistency(m, n, &p, &old_root, &root).unwrap();
                if !m.is_power_of_two() && m < n {
                    assert_eq!(implied_old_root(m, n, &p, &root).unwrap(), old_root);
                }
                for j in 0..p.len() {
                    let mut q = p.clone();
                    q[j].0[j % 32] ^= 4;
                    assert!(verify_consistency(m, n, &q, &old_root, &root).is_err());
                }
                let mut r = old_root;
                r.0[31] ^= 1;
                assert!(verify_consistency(m, n, &p, &r, &root).is_err());
            }
        }
    }

    #[test]
    fn proof_errors_are_precise() {
        let (t, _) = tree(8);
        let root = t.root();
        let leaf = t.leaf_hash(0).unwrap();
        assert_eq!(
            verify_inclusion(8, 8, &leaf, &[], &root),
            Err(Error::IndexOutOfRange { index: 8, size: 8 })
        );
        assert_eq!(
            verify_inclusion(0, 8, &leaf, &[], &root),
            Err(Error::ProofLength { got: 0, want: 3 })
        );
        assert_eq!(
            verify_consistency(3, 2, &[], &root, &root),
            Err(Error::SizeOrder { old: 3, new: 2 })
        );
        assert_eq!(
            verify_consistency(0, 2, &[], &root, &root),
            Err(Error::EmptyOldTree)
        );
        assert_eq!(
            verify_consistency(2, 8, &[], &root, &root),
            Err(Error::EmptyProof)
        );
        assert_eq!(
            implied_old_root(4, 8, &[root], &root),
            Err(Error::OldRootNotDerivable)
        );
    }
}
