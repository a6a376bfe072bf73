//! Fixed-size leaf entries in a file, read as a Merkle tree: proofs are made from disk in
//! O(n) reads and O(log n) memory, whatever the dataset's size.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use agora_data::RootBuilder;
use agora_tlog::hash::Hash;
use agora_tlog::merkle::HashSource;

/// A file of `entry`-byte entries, each turned into a leaf hash by `leaf`.
pub struct LeafFile {
    file: File,
    entry: usize,
    count: u64,
    leaf: fn(&[u8]) -> Hash,
}

impl LeafFile {
    /// Opens `path`, whose length must be a multiple of `entry`.
    pub fn open(path: &Path, entry: usize, leaf: fn(&[u8]) -> Hash) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if entry == 0 || len % entry as u64 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a whole number of entries", path.display()),
            ));
        }
        Ok(LeafFile {
            file,
            entry,
            count: len / entry as u64,
            leaf,
        })
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether the file has no entry.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The raw bytes of entry `i`.
    pub fn entry(&self, i: u64) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; self.entry];
        self.file.read_exact_at(&mut b, i * self.entry as u64)?;
        Ok(b)
    }

    /// The hash of the complete subtree over entries `[lo, lo + n)`, reading them in chunks.
    fn range_root(&self, lo: u64, n: u64) -> std::io::Result<Hash> {
        const CHUNK: u64 = 1 << 14;
        let mut rb = RootBuilder::new();
        let mut buf = Vec::new();
        let mut at = lo;
        while at < lo + n {
            let k = CHUNK.min(lo + n - at);
            buf.resize(k as usize * self.entry, 0);
            self.file.read_exact_at(&mut buf, at * self.entry as u64)?;
            for e in buf.chunks_exact(self.entry) {
                rb.push((self.leaf)(e));
            }
            at += k;
        }
        Ok(rb.root())
    }
}

impl HashSource for LeafFile {
    fn subtree(&self, level: u8, index: u64) -> agora_tlog::Result<Hash> {
        let missing = agora_tlog::Error::MissingHash { level, index };
        let n = 1u64.checked_shl(u32::from(level)).ok_or(missing.clone())?;
        let lo = index.checked_mul(n).ok_or(missing.clone())?;
        if lo.checked_add(n).is_none_or(|hi| hi > self.count) {
            return Err(missing);
        }
        self.range_root(lo, n).map_err(|_| missing)
    }
}

/// Level of the subtrees [`Cached`] keeps: one hash per 1,024 leaves.
pub const CACHE_LEVEL: u8 = 10;

/// A [`LeafFile`] with the roots of its complete subtrees of `2^CACHE_LEVEL` leaves at hand,
/// so a proof hashes some `n / 1024 + 1024 · log n` nodes instead of all `n` leaves.
pub struct Cached<'a> {
    leaves: &'a LeafFile,
    roots: Vec<Hash>,
}

impl<'a> Cached<'a> {
    /// The roots of `leaves`' complete subtrees of `2^CACHE_LEVEL` leaves, in order (reads the
    /// whole file once).
    pub fn roots_of(leaves: &LeafFile) -> std::io::Result<Vec<Hash>> {
        let n = 1u64 << CACHE_LEVEL;
        (0..leaves.len() / n)
            .map(|i| leaves.range_root(i * n, n))
            .collect()
    }

    /// `leaves` with `roots` (from [`Cached::roots_of`]); wrong roots only make proofs that do
    /// not verify.
    pub fn new(leaves: &'a LeafFile, roots: Vec<Hash>) -> Self {
        Cached { leaves, roots }
    }
}

impl HashSource for Cached<'_> {
    fn subtree(&self, level: u8, index: u64) -> agora_tlog::Result<Hash> {
        if level < CACHE_LEVEL {
            return self.leaves.subtree(level, index);
        }
        let missing = agora_tlog::Error::MissingHash { level, index };
        let k = 1u64
            .checked_shl(u32::from(level - CACHE_LEVEL))
            .ok_or(missing.clone())?;
        let lo = index.checked_mul(k).ok_or(missing.clone())?;
        let hi = lo.checked_add(k).ok_or(missing.clone())?;
        let (Ok(lo), Ok(hi)) = (usize::try_from(lo), usize::try_from(hi)) else {
            return Err(missing);
        };
        let Some(roots) = self.roots.get(lo..hi) else {
            return self.leaves.subtree(level, index);
        };
        // A perfect tree over equal complete subtrees: their roots stand in for its leaves.
        let mut rb = RootBuilder::new();
        for r in roots {
            rb.push(*r);
        }
        Ok(rb.root())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_tlog::hash::leaf_hash;
    use agora_tlog::merkle::{self, MemoryTree};

    /// A leaf file of `n` leaves in `dir`, and the same tree in memory.
    fn leaves(dir: &Path, n: u64) -> (LeafFile, MemoryTree) {
        let path = dir.join("leaves");
        let mut mem = MemoryTree::new();
        let mut bytes = Vec::new();
        for i in 0..n as u32 {
            let h = leaf_hash(&i.to_be_bytes());
            mem.push_leaf_hash(h);
            bytes.extend_from_slice(&h.0);
        }
        std::fs::write(&path, bytes).unwrap();
        let f = LeafFile::open(&path, 32, |e| {
            Hash::from_slice(e, "leaf").unwrap_or_else(|_| Hash::empty())
        })
        .unwrap();
        (f, mem)
    }

    #[test]
    fn proofs_from_disk_match_the_memory_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (f, mem) = leaves(dir.path(), 77);
        assert_eq!(f.len(), 77);
        assert_eq!(merkle::root(&f, 77).unwrap(), mem.root());
        for i in [0u64, 1, 31, 64, 76] {
            assert_eq!(
                merkle::inclusion_proof(&f, i, 77).unwrap(),
                mem.inclusion_proof(i, 77).unwrap()
            );
        }
    }

    #[test]
    fn cached_subtrees_give_the_same_proofs() {
        let dir = tempfile::tempdir().unwrap();
        let n = 5 * 1024 + 77;
        let (f, mem) = leaves(dir.path(), n);
        let roots = Cached::roots_of(&f).unwrap();
        assert_eq!(roots.len(), 5);
        let c = Cached::new(&f, roots);
        for i in [0u64, 1023, 1024, 4095, 5000, n - 1] {
            assert_eq!(
                merkle::inclusion_proof(&c, i, n).unwrap(),
                mem.inclusion_proof(i, n).unwrap()
            );
        }
    }
}
