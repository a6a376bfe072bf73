//! Record proofs, checked offline against the roots a dataset statement carries.
//!
//! - [`RecordProof`]: this record, byte for byte, is record `index` of the dataset (an RFC 6962
//!   inclusion proof in the record tree).
//! - [`AbsenceProof`]: no record of the dataset has this id (the id-tree leaves on either side of
//!   the id's key, each with its inclusion proof, adjacent in the tree).
//!
//! A proof of a dataset of `N` records carries at most `⌈log₂ N⌉` hashes per leaf it shows.

use agora_tlog::hash::{Hash, leaf_hash};
use agora_tlog::merkle;
use serde_json::Value;

use crate::record::{Record, RecordError, id_key};

/// The roots and counts a dataset statement carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roots {
    /// Number of records.
    pub records: u64,
    /// Root of the record tree.
    pub record_root: Hash,
    /// Root of the id tree.
    pub id_root: Hash,
}

/// The id-tree leaf of one record.
fn id_leaf_bytes(key: &[u8; 32], digest: &[u8; 32]) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[..32].copy_from_slice(key);
    b[32..].copy_from_slice(digest);
    b
}

/// Hash of an id-tree leaf: `leaf_hash(id_key ‖ the record's leaf hash in the record tree)`.
pub fn id_leaf_hash(key: &[u8; 32], digest: &[u8; 32]) -> Hash {
    leaf_hash(&id_leaf_bytes(key, digest))
}

/// Why a proof does not prove what it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The record in the proof is not a canonical record.
    #[error("the record is not valid: {0}")]
    Record(#[from] RecordError),
    /// The proof and the statement disagree on the number of records.
    #[error("the proof is for a dataset of {proof} records, the statement says {statement}")]
    Size {
        /// Records the proof was made for.
        proof: u64,
        /// Records the statement's roots cover.
        statement: u64,
    },
    /// The inclusion path does not hash up to the root.
    #[error("the path does not lead to the dataset's {tree} root: {source}")]
    Path {
        /// Which tree: `record` or `id`.
        tree: &'static str,
        /// What the Merkle check found.
        #[source]
        source: agora_tlog::Error,
    },
    /// A proof of another record than the one asked about.
    #[error("the record's id is {found:?}, not {wanted:?}")]
    WrongId {
        /// The id of the record in the proof.
        found: String,
        /// The id asked about.
        wanted: String,
    },
    /// A neighbour's key is on the wrong side of the id's key.
    #[error("the neighbouring leaves do not bracket the id's key")]
    NotBracketed,
    /// The two neighbours have a leaf between them (which could hold the id).
    #[error("the neighbouring leaves are not adjacent (indexes {before} and {after})")]
    NotAdjacent {
        /// Index of the leaf below the id's key.
        before: u64,
        /// Index of the leaf above it.
        after: u64,
    },
    /// A proof of absence in a non-empty dataset with no leaf in it.
    #[error("a proof of absence needs a neighbouring leaf (none given)")]
    NoNeighbour,
    /// Only a leaf above the id's key is given, and it is not the first leaf.
    #[error("the first leaf given is not the first of the tree (index {0})")]
    NotFirst(u64),
    /// Only a leaf below the id's key is given, and it is not the last leaf.
    #[error("the last leaf given is not the last of the tree (index {index} of {size})")]
    NotLast {
        /// Index of the leaf given.
        index: u64,
        /// Leaves in the tree.
        size: u64,
    },
    /// A dataset of 0 records whose id root is not the empty tree's, or with leaves shown.
    #[error("the dataset is empty but its id root is not the empty tree's")]
    NotEmpty,
}

/// A record and its place in the record tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordProof {
    /// The record's canonical bytes.
    pub record: Vec<u8>,
    /// Its index in input order.
    pub index: u64,
    /// Records in the dataset.
    pub size: u64,
    /// RFC 6962 inclusion path, leaf's sibling first.
    pub path: Vec<Hash>,
}

impl RecordProof {
    /// Checks the proof against a dataset's roots; returns the record it proves present.
    pub fn verify(&self, roots: &Roots) -> Result<Record, ProofError> {
        if self.size != roots.records {
            return Err(ProofError::Size {
                proof: self.size,
                statement: roots.records,
            });
        }
        let record = Record::decode(&self.record)?;
        merkle::verify_inclusion(
            self.index,
            self.size,
            &leaf_hash(&self.record),
            &self.path,
            &roots.record_root,
        )
        .map_err(|source| ProofError::Path {
            tree: "record",
            source,
        })?;
        Ok(record)
    }

    /// [`RecordProof::verify`], and the record's id must be `id`.
    pub fn verify_id(&self, roots: &Roots, id: &str) -> Result<Record, ProofError> {
        let r = self.verify(roots)?;
        if r.id != id {
            return Err(ProofError::WrongId {
                found: r.id,
                wanted: id.to_string(),
            });
        }
        Ok(r)
    }
}

/// One leaf of the id tree with its inclusion path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdLeaf {
    /// Its index in the id tree (records sorted by id key).
    pub index: u64,
    /// SHA-256 of the record's id.
    pub key: [u8; 32],
    /// The record's leaf hash in the record tree (`leaf_hash` of its canonical bytes).
    pub digest: [u8; 32],
    /// RFC 6962 inclusion path in the id tree, leaf's sibling first.
    pub path: Vec<Hash>,
}

impl IdLeaf {
    fn verify(&self, size: u64, root: &Hash) -> Result<(), ProofError> {
        merkle::verify_inclusion(
            self.index,
            size,
            &id_leaf_hash(&self.key, &self.digest),
            &self.path,
            root,
        )
        .map_err(|source| ProofError::Path { tree: "id", source })
    }
}

/// Proof that no record of a dataset has the id `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsenceProof {
    /// The id no record has.
    pub id: String,
    /// Records in the dataset.
    pub size: u64,
    /// The leaf with the largest key below the id's (none when the id's key is the smallest).
    pub before: Option<IdLeaf>,
    /// The leaf with the smallest key above the id's (none when the id's key is the largest).
    pub after: Option<IdLeaf>,
}

impl AbsenceProof {
    /// Checks the proof against a dataset's roots.
    pub fn verify(&self, roots: &Roots) -> Result<(), ProofError> {
        if self.size != roots.records {
            return Err(ProofError::Size {
                proof: self.size,
                statement: roots.records,
            });
        }
        let key = id_key(&self.id);
        if self.size == 0 {
            return if roots.id_root == Hash::empty()
                && self.before.is_none()
                && self.after.is_none()
            {
                Ok(())
            } else {
                Err(ProofError::NotEmpty)
            };
        }
        if let Some(b) = &self.before {
            b.verify(self.size, &roots.id_root)?;
            if b.key >= key {
                return Err(ProofError::NotBracketed);
            }
        }
        if let Some(a) = &self.after {
            a.verify(self.size, &roots.id_root)?;
            if a.key <= key {
                return Err(ProofError::NotBracketed);
            }
        }
        match (&self.before, &self.after) {
            (Some(b), Some(a)) if a.index != b.index + 1 => Err(ProofError::NotAdjacent {
                before: b.index,
                after: a.index,
            }),
            (None, Some(a)) if a.index != 0 => Err(ProofError::NotFirst(a.index)),
            (Some(b), None) if b.index + 1 != self.size => Err(ProofError::NotLast {
                index: b.index,
                size: self.size,
            }),
            (None, None) => Err(ProofError::NoNeighbour),
            _ => Ok(()),
        }
    }
}

/// Why a proof in JSON cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed proof: {0}")]
pub struct MalformedProof(pub String);

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, MalformedProof> {
    v.get(name)
        .ok_or_else(|| MalformedProof(format!("no `{name}`")))
}

fn u64_field(v: &Value, name: &str) -> Result<u64, MalformedProof> {
    field(v, name)?
        .as_u64()
        .ok_or_else(|| MalformedProof(format!("`{name}` is not a number")))
}

fn bytes32(v: &Value, what: &str) -> Result<[u8; 32], MalformedProof> {
    let s = v
        .as_str()
        .ok_or_else(|| MalformedProof(format!("`{what}` is not a string")))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| MalformedProof(format!("`{what}` is not 32 bytes of hex")))?;
    Ok(out)
}

fn path_of(v: &Value) -> Result<Vec<Hash>, MalformedProof> {
    let a = field(v, "path")?
        .as_array()
        .ok_or_else(|| MalformedProof("`path` is not a list".into()))?;
    if a.len() > merkle::MAX_PROOF_LEN {
        return Err(MalformedProof(
            "`path` is longer than any tree needs".into(),
        ));
    }
    a.iter().map(|h| bytes32(h, "path").map(Hash)).collect()
}

fn path_json(path: &[Hash]) -> Value {
    Value::Array(
        path.iter()
            .map(|h| Value::String(hex::encode(h.0)))
            .collect(),
    )
}

impl RecordProof {
    /// The proof as JSON (hashes in hex, the record's canonical bytes in hex).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "record": hex::encode(&self.record),
            "index": self.index,
            "size": self.size,
            "path": path_json(&self.path),
        })
    }

    /// Reads [`RecordProof::to_json`]'s form; checks shape and bounds, not the proof.
    pub fn from_json(v: &Value) -> Result<Self, MalformedProof> {
        let record = field(v, "record")?
            .as_str()
            .ok_or_else(|| MalformedProof("`record` is not a string".into()))?;
        if record.len() > 2 * crate::record::MAX_RECORD_BYTES {
            return Err(MalformedProof(
                "`record` is larger than a record may be".into(),
            ));
        }
        Ok(RecordProof {
            record: hex::decode(record)
                .map_err(|_| MalformedProof("`record` is not hex".into()))?,
            index: u64_field(v, "index")?,
            size: u64_field(v, "size")?,
            path: path_of(v)?,
        })
    }
}

impl IdLeaf {
    fn to_json(&self) -> Value {
        serde_json::json!({
            "index": self.index,
            "key": hex::encode(self.key),
            "digest": hex::encode(self.digest),
            "path": path_json(&self.path),
        })
    }

    fn from_json(v: &Value) -> Result<Self, MalformedProof> {
        Ok(IdLeaf {
            index: u64_field(v, "index")?,
            key: bytes32(field(v, "key")?, "key")?,
            digest: bytes32(field(v, "digest")?, "digest")?,
            path: path_of(v)?,
        })
    }
}

impl AbsenceProof {
    /// The proof as JSON (hashes in hex).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "size": self.size,
            "before": self.before.as_ref().map(IdLeaf::to_json),
            "after": self.after.as_ref().map(IdLeaf::to_json),
        })
    }

    /// Reads [`AbsenceProof::to_json`]'s form; checks shape and bounds, not the proof.
    pub fn from_json(v: &Value) -> Result<Self, MalformedProof> {
        let id = field(v, "id")?
            .as_str()
            .ok_or_else(|| MalformedProof("`id` is not a string".into()))?;
        if id.len() > crate::record::MAX_ID_BYTES {
            return Err(MalformedProof("`id` is longer than an id may be".into()));
        }
        let leaf = |name: &str| -> Result<Option<IdLeaf>, MalformedProof> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(l) => IdLeaf::from_json(l).map(Some),
            }
        };
        Ok(AbsenceProof {
            id: id.to_string(),
            size: u64_field(v, "size")?,
            before: leaf("before")?,
            after: leaf("after")?,
        })
    }
}
