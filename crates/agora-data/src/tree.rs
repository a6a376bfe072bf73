//! The two Merkle trees of a dataset version (RFC 6962, the same hashing as the logs):
//!
//! - the **record tree**: leaf `i` is `leaf_hash(canonical bytes of record i)`, in input order.
//!   An inclusion proof shows a record, byte for byte, at its place in the dataset.
//! - the **id tree**: one leaf per record, sorted by `id_key(id)` (SHA-256 of the id), each
//!   `leaf_hash(id_key ‖ record leaf hash)`, binding the id to the record's leaf in the record
//!   tree (one hash of the record's bytes serves both trees). Two adjacent leaves whose keys bracket an
//!   id's key prove that no record has that id: the non-inclusion proof behind "my opted-out
//!   document is not in version 4".
//!
//! Ids are unique within a dataset; a repeated id is refused when the trees are built.

use agora_tlog::hash::{Hash, leaf_hash};
use agora_tlog::merkle::MemoryTree;

use crate::proof::{AbsenceProof, IdLeaf, RecordProof};
pub use crate::proof::{Roots, id_leaf_hash};
use crate::record::{Record, id_key};

/// Why a dataset's trees cannot be built or a proof made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// Two records share an id.
    #[error("the id {id:?} appears twice (records {first} and {second})")]
    DuplicateId {
        /// The repeated id.
        id: String,
        /// The first record with it (input order).
        first: u64,
        /// The second.
        second: u64,
    },
    /// No record has the id asked about.
    #[error("no record has the id {0:?}")]
    NoSuchId(String),
    /// A record has the id whose absence was asked for.
    #[error("a record has the id {0:?}: its absence cannot be proven")]
    Present(String),
    /// An index past the last record.
    #[error("record {index} is not in a dataset of {count}")]
    NoSuchIndex {
        /// The index asked for.
        index: u64,
        /// Records in the dataset.
        count: u64,
    },
    /// The Merkle code refused (an internal inconsistency).
    #[error(transparent)]
    Tlog(#[from] agora_tlog::Error),
}

/// Builds both trees from records given in order. Holds 32 bytes per record per tree level
/// (about 64 bytes per record per tree) plus 72 bytes per record for the id sort: a million
/// records take about 200 MB.
#[derive(Default)]
pub struct TreeBuilder {
    records: MemoryTree,
    /// (id key, the record's leaf hash, record index)
    ids: Vec<([u8; 32], [u8; 32], u64)>,
}

impl TreeBuilder {
    /// A builder with no records.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next record from its canonical bytes and id; returns its index.
    pub fn push(&mut self, id: &str, canonical: &[u8]) -> u64 {
        let leaf = leaf_hash(canonical);
        let digest = leaf.0;
        let index = self.records.push_leaf_hash(leaf);
        self.ids.push((id_key(id), digest, index));
        index
    }

    /// Adds the next record; returns its index.
    pub fn push_record(&mut self, r: &Record) -> u64 {
        self.push(&r.id, &r.encode())
    }

    /// Number of records so far.
    pub fn len(&self) -> u64 {
        self.records.size()
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sorts the ids and builds the id tree. `id_of` names a record by index, for the error
    /// about a repeated id.
    pub fn finish(mut self, id_of: impl Fn(u64) -> String) -> Result<Trees, TreeError> {
        self.ids
            .sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
        if let Some(w) = self.ids.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(TreeError::DuplicateId {
                id: id_of(w[0].2),
                first: w[0].2,
                second: w[1].2,
            });
        }
        let mut id_tree = MemoryTree::new();
        for (key, digest, _) in &self.ids {
            id_tree.push_leaf_hash(id_leaf_hash(key, digest));
        }
        Ok(Trees {
            records: self.records,
            id_tree,
            ids: self.ids,
        })
    }
}

/// Both trees of a dataset version, ready to prove.
pub struct Trees {
    records: MemoryTree,
    id_tree: MemoryTree,
    /// Sorted by key.
    ids: Vec<([u8; 32], [u8; 32], u64)>,
}

impl Trees {
    /// Builds the trees of `records` (in order).
    pub fn of(records: &[Record]) -> Result<Trees, TreeError> {
        let mut b = TreeBuilder::new();
        for r in records {
            b.push_record(r);
        }
        b.finish(|i| {
            records
                .get(i as usize)
                .map(|r| r.id.clone())
                .unwrap_or_default()
        })
    }

    /// The roots and the record count, for the dataset statement.
    pub fn roots(&self) -> Roots {
        Roots {
            records: self.records.size(),
            record_root: self.records.root(),
            id_root: self.id_tree.root(),
        }
    }

    /// The index (in input order) of the record with id `id`, if any.
    pub fn index_of(&self, id: &str) -> Option<u64> {
        let key = id_key(id);
        self.ids
            .binary_search_by(|e| e.0.cmp(&key))
            .ok()
            .map(|p| self.ids[p].2)
    }

    /// The proof that `record` (whose canonical bytes are at `index`) is in the dataset.
    pub fn prove(&self, index: u64, record: &Record) -> Result<RecordProof, TreeError> {
        let count = self.records.size();
        if index >= count {
            return Err(TreeError::NoSuchIndex { index, count });
        }
        Ok(RecordProof {
            record: record.encode(),
            index,
            size: count,
            path: self.records.inclusion_proof(index, count)?,
        })
    }

    /// The proof that no record has the id `id`: the id-tree leaves on either side of its key.
    pub fn prove_absent(&self, id: &str) -> Result<AbsenceProof, TreeError> {
        let key = id_key(id);
        let p = match self.ids.binary_search_by(|e| e.0.cmp(&key)) {
            Ok(_) => return Err(TreeError::Present(id.to_string())),
            Err(p) => p,
        };
        let size = self.id_tree.size();
        Ok(AbsenceProof {
            id: id.to_string(),
            size,
            before: if p > 0 {
                Some(self.id_leaf(p as u64 - 1)?)
            } else {
                None
            },
            after: if p < self.ids.len() {
                Some(self.id_leaf(p as u64)?)
            } else {
                None
            },
        })
    }

    /// The id-tree leaf at `pos` (records sorted by id key) with its inclusion path.
    pub fn id_leaf(&self, pos: u64) -> Result<IdLeaf, TreeError> {
        let size = self.id_tree.size();
        let (key, digest, _) = usize::try_from(pos)
            .ok()
            .and_then(|p| self.ids.get(p))
            .copied()
            .ok_or(TreeError::NoSuchIndex {
                index: pos,
                count: size,
            })?;
        Ok(IdLeaf {
            index: pos,
            key,
            digest,
            path: self.id_tree.inclusion_proof(pos, size)?,
        })
    }
}

/// The root of an RFC 6962 tree computed from its leaf hashes as they stream past, in
/// O(log n) memory: the complete subtrees of the compact range, largest first.
#[derive(Clone, Debug, Default)]
pub struct RootBuilder {
    /// (height, hash) of each complete subtree, heights strictly decreasing.
    stack: Vec<(u32, Hash)>,
    count: u64,
}

impl RootBuilder {
    /// The builder of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.stack.last() {
            if h != node.0 {
                break;
            }
            self.stack.pop();
            node = (h + 1, agora_tlog::hash::node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.count += 1;
    }

    /// Leaves added so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no leaf was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The root of the leaves so far (the empty tree's hash for none).
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return Hash::empty();
        };
        for (_, left) in it {
            acc = agora_tlog::hash::node_hash(left, &acc);
        }
        acc
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod root_tests {
    use super::*;

    #[test]
    fn streaming_roots_match_the_memory_tree() {
        let mut mem = MemoryTree::new();
        let mut stream = RootBuilder::new();
        assert_eq!(stream.root(), mem.root());
        for i in 0..300u32 {
            let h = leaf_hash(&i.to_be_bytes());
            mem.push_leaf_hash(h);
            stream.push(h);
            assert_eq!(stream.root(), mem.root(), "after {} leaves", i + 1);
        }
        assert_eq!(stream.len(), 300);
    }
}
