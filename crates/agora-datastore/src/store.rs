//! The dataset store under `$AGORA_HOME/datasets`:
//!
//! ```text
//! datasets/<name>/<version>/manifest.json       what the dataset statement says, and more
//! datasets/<name>/<version>/shards/<sha256>.zst records (length-prefixed canonical bytes), zstd
//! datasets/<name>/<version>/records.leaves      32-byte leaf hash per record, in record order
//! datasets/<name>/<version>/ids.leaves          72 bytes per record (id key, record leaf hash,
//!                                               record index), sorted by id key
//! datasets/tmp/                                 ingests in progress
//! ```
//!
//! An ingest writes everything into a directory under `tmp/` and renames it into place as its
//! last step, so a failed or interrupted ingest leaves nothing a reader could see (and the next
//! ingest clears what it left in `tmp/`). Memory stays bounded whatever the input's size: one
//! record, one shard's compressor, and one sort chunk of id entries ([`SORT_CHUNK`]) at a time.

use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use agora_data::{
    AbsenceProof, IdLeaf, Record, RecordProof, RootBuilder, Roots, id_leaf_hash, record::id_key,
};
use agora_tlog::hash::{Hash, leaf_hash};
use agora_tlog::merkle;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::input::{self, InputError};
use crate::leaves::{CACHE_LEVEL, Cached, LeafFile};

/// Records per shard are cut at this many canonical bytes.
pub const SHARD_BYTES: u64 = 64 << 20;
/// Id entries sorted in memory at once before spilling to disk (72 bytes each: 36 MiB).
pub const SORT_CHUNK: usize = 512 * 1024;
/// zstd level of the shards.
const ZSTD_LEVEL: i32 = 1;
/// Bytes of an id entry: key, record digest, record index.
const ID_ENTRY: usize = 72;
/// The record tree's cached subtree roots, beside its leaves (see [`Cached`]).
const CACHE_FILE: &str = "records.l10";

/// Why a dataset cannot be ingested, found or proven.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file of the store cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// An input file or record is bad.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Two records share an id.
    #[error("the id {id:?} appears twice (records {first} and {second})")]
    DuplicateId {
        /// The repeated id.
        id: String,
        /// The first record with it.
        first: u64,
        /// The second.
        second: u64,
    },
    /// A dataset name that cannot be a directory name.
    #[error(
        "{0:?} is not a dataset name: use letters, digits, '.', '_' and '-' (at most 64, not starting with '.')"
    )]
    BadName(String),
    /// A version that is not a number (`NAME@VERSION`).
    #[error("{0:?} is not a version number (NAME@VERSION, e.g. fortunes@2)")]
    BadVersion(String),
    /// No such dataset or version.
    #[error("no dataset {0} in the store")]
    NotFound(String),
    /// No record with this id.
    #[error("no record has the id {id:?} in {dataset}")]
    NoSuchId {
        /// The id.
        id: String,
        /// `name@version`.
        dataset: String,
    },
    /// A record has the id whose absence was asked for.
    #[error("{dataset} has a record with the id {id:?}: its absence cannot be proven")]
    Present {
        /// The id.
        id: String,
        /// `name@version`.
        dataset: String,
    },
    /// The store's files disagree with each other.
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    /// The inputs held no record.
    #[error("the inputs hold no record")]
    Empty,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One shard of a dataset version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// SHA-256 of the compressed file (its name is `<sha256>.zst`).
    pub sha256: String,
    /// Index of its first record.
    pub first: u64,
    /// Records in it.
    pub records: u64,
    /// Canonical bytes of its records.
    pub bytes: u64,
}

/// A contributor credited in a dataset, with the records credited to them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contributor {
    /// Their key (an Agora peer id or any stable identifier).
    pub key: String,
    /// A human label, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Records credited to them.
    pub records: u64,
}

/// What an ingest is told about the dataset.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    /// The dataset's name.
    pub name: String,
    /// SPDX licence expression.
    pub license: String,
    /// Where the data comes from.
    pub source: String,
    /// `name@version` of the dataset this one derives from.
    pub derived_from: Option<String>,
    /// Contributors (key, label), credited with every record of this ingest.
    pub contributors: Vec<(String, Option<String>)>,
}

/// A stored dataset version: what its statement says and where its records are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The dataset's name.
    pub name: String,
    /// Its version (1, 2, …).
    pub version: u32,
    /// SPDX licence expression.
    pub license: String,
    /// Where the data comes from.
    pub source: String,
    /// `name@version` it derives from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<String>,
    /// Contributors with their record counts.
    #[serde(default)]
    pub contributors: Vec<Contributor>,
    /// Number of records.
    pub records: u64,
    /// Canonical bytes of all records.
    pub bytes: u64,
    /// Root of the record tree, hex.
    pub record_root: String,
    /// Root of the id tree, hex.
    pub id_root: String,
    /// The shards, in record order.
    pub shards: Vec<Shard>,
    /// Bad records skipped (`--skip-bad`).
    #[serde(default)]
    pub skipped: u64,
}

impl Manifest {
    /// `name@version`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The roots proofs are checked against.
    pub fn roots(&self) -> Result<Roots, StoreError> {
        let h = |s: &str| -> Result<Hash, StoreError> {
            let b = hex::decode(s).map_err(|_| StoreError::Corrupt(format!("root {s:?}")))?;
            Hash::from_slice(&b, "root").map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        Ok(Roots {
            records: self.records,
            record_root: h(&self.record_root)?,
            id_root: h(&self.id_root)?,
        })
    }
}

/// `NAME` or `NAME@VERSION` (the latest version when none is given).
pub fn parse_ref(s: &str) -> Result<(&str, Option<u32>), StoreError> {
    match s.split_once('@') {
        Some((n, v)) => v
            .parse()
            .map(|v| (n, Some(v)))
            .map_err(|_| StoreError::BadVersion(v.to_string())),
        None => Ok((s, None)),
    }
}

/// Checks a dataset name: letters, digits, `.`, `_`, `-`; 1 to 64 bytes; no leading dot.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

/// The datasets under one directory.
pub struct DatasetStore {
    root: PathBuf,
    sort_chunk: usize,
    threads: usize,
}

/// What an ingest reports as it goes.
pub trait Progress {
    /// `records` read so far, `bytes` of input consumed so far (canonical bytes).
    fn update(&mut self, records: u64, bytes: u64);
}

impl Progress for () {
    fn update(&mut self, _: u64, _: u64) {}
}

impl DatasetStore {
    /// The store at `root` (created on first ingest).
    pub fn open(root: &Path) -> Self {
        DatasetStore {
            root: root.to_path_buf(),
            sort_chunk: SORT_CHUNK,
            threads: 2,
        }
    }

    /// Threads an ingest uses (default 2): with 2 or more, reading and parsing run on their
    /// own thread ahead of hashing, compressing and writing. The result does not depend on it.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Sorts at most `entries` id entries in memory at once (default [`SORT_CHUNK`]): less
    /// memory, more temporary runs. The roots do not depend on it.
    pub fn with_sort_chunk(mut self, entries: usize) -> Self {
        self.sort_chunk = entries.max(1);
        self
    }

    /// The directory of `name`'s version `version`.
    pub(crate) fn dir(&self, name: &str, version: u32) -> PathBuf {
        self.root.join(name).join(version.to_string())
    }

    /// Hands every record of a stored version to `each`, in record order, reading its shards
    /// one record at a time; stops at the first error `each` returns.
    pub fn for_each_record(
        &self,
        m: &Manifest,
        each: &mut dyn FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let dir = self.dir(&m.name, m.version);
        for shard in &m.shards {
            let path = dir.join("shards").join(format!("{}.zst", shard.sha256));
            let f = File::open(&path).map_err(io_at(&path))?;
            let mut r = BufReader::new(zstd::stream::read::Decoder::new(f).map_err(io_at(&path))?);
            for _ in 0..shard.records {
                let bytes = read_entry(&mut r).map_err(io_at(&path))?;
                each(Record::decode(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?)?;
            }
        }
        Ok(())
    }

    /// Every version of `name`, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<u32>, StoreError> {
        check_name(name)?;
        let dir = self.root.join(name);
        let mut v = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(io_at(&dir)(e)),
        };
        for e in rd {
            let e = e.map_err(io_at(&dir))?;
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                v.push(n);
            }
        }
        v.sort_unstable();
        Ok(v)
    }

    /// Every dataset name in the store, sorted.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(io_at(&self.root)(e)),
        };
        for e in rd {
            let e = e.map_err(io_at(&self.root))?;
            let name = e.file_name().to_string_lossy().to_string();
            if name != "tmp" && check_name(&name).is_ok() && e.path().is_dir() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The manifest of `name` at `version` (the latest when `None`).
    pub fn manifest(&self, name: &str, version: Option<u32>) -> Result<Manifest, StoreError> {
        let version = match version {
            Some(v) => v,
            None => *self
                .versions(name)?
                .last()
                .ok_or_else(|| StoreError::NotFound(name.to_string()))?,
        };
        let path = self.dir(name, version).join("manifest.json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!("{name}@{version}")));
            }
            Err(e) => return Err(io_at(&path)(e)),
        };
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))
    }

    /// The manifest of `NAME` (its latest version) or `NAME@VERSION`.
    pub fn find(&self, dataset: &str) -> Result<Manifest, StoreError> {
        let (name, version) = parse_ref(dataset)?;
        self.manifest(name, version)
    }

    /// Reads `inputs` into a new version of `meta.name`. With `skip_bad`, bad records are
    /// counted and skipped instead of failing the ingest.
    pub fn ingest(
        &self,
        meta: &Meta,
        inputs: &[PathBuf],
        skip_bad: bool,
        progress: &mut dyn Progress,
    ) -> Result<Manifest, StoreError> {
        let threads = self.threads;
        self.build(meta, progress, &mut |sink| {
            read_all(inputs, skip_bad, threads, sink)
        })
    }

    /// A new version of `m`'s dataset without the records whose ids are in `ids`, derived from
    /// `m` (same licence, source and contributors; contributors' counts are the new version's).
    /// Every id must be in `m`. The caller proves each absent from the result.
    pub fn remove(
        &self,
        m: &Manifest,
        ids: &std::collections::BTreeSet<String>,
        progress: &mut dyn Progress,
    ) -> Result<Manifest, StoreError> {
        let (_, leaves) = self.leaf_files(m)?;
        for id in ids {
            self.index_in(m, &leaves, id)?;
        }
        let meta = Meta {
            name: m.name.clone(),
            license: m.license.clone(),
            source: m.source.clone(),
            derived_from: Some(m.label()),
            contributors: m
                .contributors
                .iter()
                .map(|c| (c.key.clone(), c.label.clone()))
                .collect(),
        };
        self.build(&meta, progress, &mut |sink| {
            self.for_each_record(m, &mut |rec| {
                if ids.contains(&rec.id) {
                    Ok(())
                } else {
                    sink(Prepared::of(&rec))
                }
            })?;
            Ok(0)
        })
    }

    /// Builds a new version of `meta.name` from the records `feed` hands to its sink, in a
    /// temporary directory renamed into place at the end.
    fn build(
        &self,
        meta: &Meta,
        progress: &mut dyn Progress,
        feed: &mut dyn FnMut(&mut Sink<'_>) -> Result<u64, StoreError>,
    ) -> Result<Manifest, StoreError> {
        check_name(&meta.name)?;
        let tmp_root = self.root.join("tmp");
        // What an interrupted ingest left behind is nobody's.
        let _ = fs::remove_dir_all(&tmp_root);
        fs::create_dir_all(&tmp_root).map_err(io_at(&tmp_root))?;
        let work = tempfile::Builder::new()
            .prefix("ingest-")
            .tempdir_in(&tmp_root)
            .map_err(io_at(&tmp_root))?;
        let out = work.path().join("version");
        let shards_dir = out.join("shards");
        fs::create_dir_all(&shards_dir).map_err(io_at(&shards_dir))?;

        let mut w = Writer::new(&out, work.path(), self.sort_chunk)?;
        let skipped = feed(&mut |p| {
            w.push(p)?;
            progress.update(w.count, w.bytes);
            Ok(())
        })?;
        if w.count == 0 {
            return Err(StoreError::Empty);
        }
        let version = self.versions(&meta.name)?.last().map_or(1, |v| v + 1);
        let (roots, shards, bytes) = w.finish()?;
        let records = roots.records;
        let manifest = Manifest {
            name: meta.name.clone(),
            version,
            license: meta.license.clone(),
            source: meta.source.clone(),
            derived_from: meta.derived_from.clone(),
            contributors: meta
                .contributors
                .iter()
                .map(|(key, label)| Contributor {
                    key: key.clone(),
                    label: label.clone(),
                    records,
                })
                .collect(),
            records,
            bytes,
            record_root: hex::encode(roots.record_root.0),
            id_root: hex::encode(roots.id_root.0),
            shards,
            skipped,
        };
        let mpath = out.join("manifest.json");
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        write_synced(&mpath, &json)?;
        let dest = self.dir(&meta.name, version);
        let parent = self.root.join(&meta.name);
        fs::create_dir_all(&parent).map_err(io_at(&parent))?;
        fs::rename(&out, &dest).map_err(io_at(&dest))?;
        sync_dir(&parent)?;
        Ok(manifest)
    }

    /// Writes `bytes` as `file` (a plain file name) in a stored version, atomically (a
    /// temporary file renamed): the signed statement, where it was logged.
    pub fn attach(&self, m: &Manifest, file: &str, bytes: &[u8]) -> Result<(), StoreError> {
        check_name(file)?;
        let dir = self.dir(&m.name, m.version);
        let tmp = dir.join(format!(".{file}.tmp"));
        write_synced(&tmp, bytes)?;
        let dest = dir.join(file);
        fs::rename(&tmp, &dest).map_err(io_at(&dest))?;
        sync_dir(&dir)
    }

    /// A file [`DatasetStore::attach`] wrote, if there is one.
    pub fn attached(&self, m: &Manifest, file: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_name(file)?;
        let path = self.dir(&m.name, m.version).join(file);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Record `index` of a stored version.
    pub fn record(&self, m: &Manifest, index: u64) -> Result<Record, StoreError> {
        read_record(&self.dir(&m.name, m.version), &m.shards, index)
    }

    fn leaf_files(&self, m: &Manifest) -> Result<(LeafFile, LeafFile), StoreError> {
        let dir = self.dir(&m.name, m.version);
        let rp = dir.join("records.leaves");
        let ip = dir.join("ids.leaves");
        let records = LeafFile::open(&rp, 32, record_leaf).map_err(io_at(&rp))?;
        let ids = LeafFile::open(&ip, ID_ENTRY, id_entry_leaf).map_err(io_at(&ip))?;
        if records.len() != m.records || ids.len() != m.records {
            return Err(StoreError::Corrupt(format!(
                "{} lists {} records but its leaf files hold {} and {}",
                m.label(),
                m.records,
                records.len(),
                ids.len()
            )));
        }
        Ok((records, ids))
    }

    /// Position in the id tree of the first entry whose key is ≥ `key`, and whether it is equal.
    fn search(ids: &LeafFile, key: &[u8; 32]) -> Result<(u64, bool), std::io::Error> {
        let (mut lo, mut hi) = (0u64, ids.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if ids.entry(mid)?[..32] < key[..] {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let equal = lo < ids.len() && ids.entry(lo)?[..32] == key[..];
        Ok((lo, equal))
    }

    /// The index (record order) of the record with id `id` in a stored version.
    pub fn index_of(&self, m: &Manifest, id: &str) -> Result<u64, StoreError> {
        let (_, ids) = self.leaf_files(m)?;
        self.index_in(m, &ids, id)
    }

    /// [`DatasetStore::index_of`] over the version's opened id leaves.
    fn index_in(&self, m: &Manifest, ids: &LeafFile, id: &str) -> Result<u64, StoreError> {
        let dir = self.dir(&m.name, m.version);
        let (pos, found) = Self::search(ids, &id_key(id)).map_err(io_at(&dir))?;
        if !found {
            return Err(StoreError::NoSuchId {
                id: id.to_string(),
                dataset: m.label(),
            });
        }
        let e = ids.entry(pos).map_err(io_at(&dir))?;
        Ok(u64::from_be_bytes(e[64..72].try_into().unwrap_or([0; 8])))
    }

    /// The proof that the record with id `id` is in a stored version.
    pub fn prove(&self, m: &Manifest, id: &str) -> Result<RecordProof, StoreError> {
        let (records, ids) = self.leaf_files(m)?;
        let index = self.index_in(m, &ids, id)?;
        let record = self.record(m, index)?;
        self.prove_record(m, &records, index, &record)
    }

    /// The proof that `record`, read from the store, is record `index` of a stored version.
    pub fn prove_index(
        &self,
        m: &Manifest,
        index: u64,
        record: &Record,
    ) -> Result<RecordProof, StoreError> {
        let (records, _) = self.leaf_files(m)?;
        self.prove_record(m, &records, index, record)
    }

    /// A record proof through the version's cached subtree roots (`records.l10`, made on first
    /// use): checked against the manifest's root before it is returned, and made again from the
    /// leaves alone, with the cache rebuilt, when the cache was damaged.
    fn prove_record(
        &self,
        m: &Manifest,
        records: &LeafFile,
        index: u64,
        record: &Record,
    ) -> Result<RecordProof, StoreError> {
        let dir = self.dir(&m.name, m.version);
        let cache = dir.join(CACHE_FILE);
        let prove = |roots: Vec<Hash>| -> Result<RecordProof, StoreError> {
            let path = merkle::inclusion_proof(&Cached::new(records, roots), index, m.records)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(RecordProof {
                record: record.encode(),
                index,
                size: m.records,
                path,
            })
        };
        let want = (m.records >> CACHE_LEVEL) as usize;
        let cached = fs::read(&cache)
            .ok()
            .filter(|b| b.len() == want * 32)
            .map(|b| {
                b.chunks_exact(32)
                    .map(|c| {
                        let mut h = [0u8; 32];
                        h.copy_from_slice(c);
                        Hash(h)
                    })
                    .collect()
            });
        if let Some(roots) = cached {
            let proof = prove(roots)?;
            if proof.verify(&m.roots()?).is_ok() {
                return Ok(proof);
            }
        }
        // No cache, or a damaged one: the roots from the leaves, kept for next time.
        let roots = Cached::roots_of(records).map_err(io_at(&dir))?;
        let bytes: Vec<u8> = roots.iter().flat_map(|h| h.0).collect();
        // A cache that cannot be written is only slower next time.
        let tmp = dir.join(format!(".{CACHE_FILE}.tmp"));
        if write_synced(&tmp, &bytes).is_ok() {
            let _ = fs::rename(&tmp, &cache);
        }
        prove(roots)
    }

    /// The records at `indices` (any order, repeats allowed) of a stored version, reading each
    /// shard once, up to the last record wanted from it. At most `max_bytes` of records (their
    /// canonical bytes, in index order) are kept: those beyond are `None`.
    pub fn records_at(
        &self,
        m: &Manifest,
        indices: &[u64],
        max_bytes: usize,
    ) -> Result<Vec<Option<Record>>, StoreError> {
        let dir = self.dir(&m.name, m.version);
        let mut want: Vec<u64> = indices.to_vec();
        want.sort_unstable();
        want.dedup();
        let mut found = std::collections::BTreeMap::new();
        let mut kept = 0usize;
        'shards: for shard in &m.shards {
            let range = shard.first..shard.first + shard.records;
            let here: Vec<u64> = want.iter().copied().filter(|i| range.contains(i)).collect();
            let Some(&last) = here.last() else { continue };
            let path = dir.join("shards").join(format!("{}.zst", shard.sha256));
            let f = File::open(&path).map_err(io_at(&path))?;
            let mut r = BufReader::new(zstd::stream::read::Decoder::new(f).map_err(io_at(&path))?);
            for i in shard.first..=last {
                let bytes = read_entry(&mut r).map_err(io_at(&path))?;
                if here.binary_search(&i).is_ok() {
                    if kept + bytes.len() > max_bytes {
                        break 'shards;
                    }
                    kept += bytes.len();
                    found.insert(
                        i,
                        Record::decode(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    );
                }
            }
        }
        Ok(indices.iter().map(|i| found.get(i).cloned()).collect())
    }

    /// The directory of a stored version (its shards, leaves, statement and indexes).
    pub fn version_dir(&self, m: &Manifest) -> PathBuf {
        self.dir(&m.name, m.version)
    }

    /// The proof that no record of a stored version has the id `id`.
    pub fn prove_absent(&self, m: &Manifest, id: &str) -> Result<AbsenceProof, StoreError> {
        let (_, ids) = self.leaf_files(m)?;
        let dir = self.dir(&m.name, m.version);
        let (pos, found) = Self::search(&ids, &id_key(id)).map_err(io_at(&dir))?;
        if found {
            return Err(StoreError::Present {
                id: id.to_string(),
                dataset: m.label(),
            });
        }
        let leaf = |i: u64| -> Result<IdLeaf, StoreError> {
            let e = ids.entry(i).map_err(io_at(&dir))?;
            let mut key = [0u8; 32];
            let mut digest = [0u8; 32];
            key.copy_from_slice(&e[..32]);
            digest.copy_from_slice(&e[32..64]);
            Ok(IdLeaf {
                index: i,
                key,
                digest,
                path: merkle::inclusion_proof(&ids, i, m.records)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            })
        };
        Ok(AbsenceProof {
            id: id.to_string(),
            size: m.records,
            before: if pos > 0 { Some(leaf(pos - 1)?) } else { None },
            after: if pos < m.records {
                Some(leaf(pos)?)
            } else {
                None
            },
        })
    }
}

fn record_leaf(e: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(&e[..32]);
    Hash(h)
}

fn id_entry_leaf(e: &[u8]) -> Hash {
    let mut key = [0u8; 32];
    let mut digest = [0u8; 32];
    key.copy_from_slice(&e[..32]);
    digest.copy_from_slice(&e[32..64]);
    id_leaf_hash(&key, &digest)
}

/// Records handed from the reading thread to the writing one at a time.
const BATCH: usize = 256;
/// Batches in flight between them.
const BATCHES_IN_FLIGHT: usize = 8;

/// A record ready to write: its id key, its leaf hash and its canonical bytes (the hashing is
/// done on the reading thread, which balances the two threads' work).
struct Prepared {
    key: [u8; 32],
    leaf: Hash,
    bytes: Vec<u8>,
}

impl Prepared {
    fn of(rec: &Record) -> Prepared {
        let bytes = rec.encode();
        Prepared {
            key: id_key(&rec.id),
            leaf: leaf_hash(&bytes),
            bytes,
        }
    }
}

type Batch = Vec<Prepared>;

/// Where records go to be written, in order.
type Sink<'a> = dyn FnMut(Prepared) -> Result<(), StoreError> + 'a;

/// Reads every record of `inputs` in order and hands each, prepared, to `sink`;
/// returns how many bad records were skipped (`skip_bad`). With `threads >= 2` the reading and
/// parsing run on a thread of their own, at most [`BATCHES_IN_FLIGHT`] batches ahead, in the
/// same order: the result is the same.
fn read_all(
    inputs: &[PathBuf],
    skip_bad: bool,
    threads: usize,
    sink: &mut Sink<'_>,
) -> Result<u64, StoreError> {
    let files = input::files(inputs)?;
    let produce = |emit: &mut dyn FnMut(Record) -> bool| -> Result<u64, StoreError> {
        let mut skipped = 0u64;
        let mut failure: Option<StoreError> = None;
        for (path, id) in &files {
            input::read_file(path, id, &mut |r| match r {
                Ok(rec) => emit(rec),
                Err(e) if skip_bad && e.is_bad_record() => {
                    skipped += 1;
                    true
                }
                Err(e) => {
                    failure = Some(e.into());
                    false
                }
            })?;
            if let Some(e) = failure.take() {
                return Err(e);
            }
        }
        Ok(skipped)
    };
    if threads < 2 {
        let mut failure = None;
        let skipped = produce(&mut |rec| match sink(Prepared::of(&rec)) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        })?;
        return failure.map_or(Ok(skipped), Err);
    }
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(BATCHES_IN_FLIGHT);
        let reader = std::thread::Builder::new()
            .name("agora-ingest-read".into())
            .spawn_scoped(scope, move || {
                let mut batch: Batch = Vec::with_capacity(BATCH);
                let skipped = produce(&mut |rec| {
                    batch.push(Prepared::of(&rec));
                    if batch.len() < BATCH {
                        return true;
                    }
                    // A closed channel: the writer failed and stopped.
                    tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        .is_ok()
                })?;
                if !batch.is_empty() {
                    let _ = tx.send(batch);
                }
                Ok(skipped)
            })
            .map_err(|source| StoreError::Io {
                path: PathBuf::from("(reading thread)"),
                source,
            })?;
        let mut written: Result<(), StoreError> = Ok(());
        for batch in rx.iter() {
            for p in batch {
                written = sink(p);
                if written.is_err() {
                    break;
                }
            }
            if written.is_err() {
                break;
            }
        }
        // Dropping the receiver (end of scope) stops the reader at its next send.
        drop(rx);
        let skipped = reader
            .join()
            .map_err(|_| StoreError::Corrupt("the reading thread panicked".into()))?;
        written?;
        skipped
    })
}

/// Reads one length-prefixed entry.
fn read_entry(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > agora_data::record::MAX_RECORD_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "an entry larger than a record may be",
        ));
    }
    let mut b = vec![0u8; n];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(io_at(path))?;
    f.write_all(bytes).map_err(io_at(path))?;
    f.sync_all().map_err(io_at(path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// Writes one version's files as records stream in.
struct Writer {
    out: PathBuf,
    work: PathBuf,
    shard: Option<(zstd::stream::write::Encoder<'static, HashingFile>, Shard)>,
    shards: Vec<Shard>,
    leaves: BufWriter<File>,
    roots: RootBuilder,
    ids: Vec<[u8; ID_ENTRY]>,
    runs: Vec<PathBuf>,
    sort_chunk: usize,
    count: u64,
    bytes: u64,
}

/// A file that hashes what is written to it.
struct HashingFile {
    file: BufWriter<File>,
    hash: Sha256,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Writer {
    fn new(out: &Path, work: &Path, sort_chunk: usize) -> Result<Self, StoreError> {
        let lp = out.join("records.leaves");
        let leaves = BufWriter::new(File::create(&lp).map_err(io_at(&lp))?);
        Ok(Writer {
            out: out.to_path_buf(),
            work: work.to_path_buf(),
            shard: None,
            shards: Vec::new(),
            leaves,
            roots: RootBuilder::new(),
            ids: Vec::new(),
            runs: Vec::new(),
            sort_chunk,
            count: 0,
            bytes: 0,
        })
    }

    fn shard_path(&self) -> PathBuf {
        self.out.join("shards").join("open.zst")
    }

    /// Adds the next record: its id and canonical bytes.
    fn push(&mut self, p: Prepared) -> Result<(), StoreError> {
        let Prepared { key, leaf, bytes } = p;
        if let Err(e) = self.leaves.write_all(&leaf.0) {
            return Err(io_at(&self.out.join("records.leaves"))(e));
        }
        self.roots.push(leaf);
        let mut entry = [0u8; ID_ENTRY];
        entry[..32].copy_from_slice(&key);
        entry[32..64].copy_from_slice(&leaf.0);
        entry[64..].copy_from_slice(&self.count.to_be_bytes());
        self.ids.push(entry);
        if self.ids.len() >= self.sort_chunk {
            self.spill()?;
        }
        if self.shard.is_none() {
            let p = self.shard_path();
            let file = HashingFile {
                file: BufWriter::new(File::create(&p).map_err(io_at(&p))?),
                hash: Sha256::new(),
            };
            let enc = zstd::stream::write::Encoder::new(file, ZSTD_LEVEL).map_err(io_at(&p))?;
            let s = Shard {
                sha256: String::new(),
                first: self.count,
                records: 0,
                bytes: 0,
            };
            self.shard = Some((enc, s));
        }
        if let Some((enc, s)) = self.shard.as_mut() {
            let written = enc
                .write_all(&(bytes.len() as u32).to_be_bytes())
                .and_then(|()| enc.write_all(&bytes));
            if let Err(e) = written {
                return Err(io_at(&self.out.join("shards").join("open.zst"))(e));
            }
            s.records += 1;
            s.bytes += bytes.len() as u64;
            if s.bytes >= SHARD_BYTES {
                self.close_shard()?;
            }
        }
        self.count += 1;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn close_shard(&mut self) -> Result<(), StoreError> {
        let Some((enc, mut s)) = self.shard.take() else {
            return Ok(());
        };
        let p = self.shard_path();
        let mut file = enc.finish().map_err(io_at(&p))?;
        file.file.flush().map_err(io_at(&p))?;
        file.file.get_ref().sync_all().map_err(io_at(&p))?;
        s.sha256 = hex::encode(file.hash.finalize());
        let dest = self.out.join("shards").join(format!("{}.zst", s.sha256));
        fs::rename(&p, &dest).map_err(io_at(&dest))?;
        self.shards.push(s);
        Ok(())
    }

    /// Sorts the id entries held and writes them out as a run.
    fn spill(&mut self) -> Result<(), StoreError> {
        self.ids.sort_unstable();
        let p = self.work.join(format!("run-{}", self.runs.len()));
        let mut f = BufWriter::new(File::create(&p).map_err(io_at(&p))?);
        for e in &self.ids {
            f.write_all(e).map_err(io_at(&p))?;
        }
        f.flush().map_err(io_at(&p))?;
        self.ids.clear();
        self.runs.push(p);
        Ok(())
    }

    /// Closes the last shard, merges the id runs into `ids.leaves` (refusing a repeated id),
    /// and returns the roots, the shards and the canonical byte count.
    fn finish(mut self) -> Result<(Roots, Vec<Shard>, u64), StoreError> {
        self.close_shard()?;
        let lp = self.out.join("records.leaves");
        self.leaves.flush().map_err(io_at(&lp))?;
        self.leaves.get_ref().sync_all().map_err(io_at(&lp))?;
        self.spill()?;
        let ip = self.out.join("ids.leaves");
        let mut out = BufWriter::new(File::create(&ip).map_err(io_at(&ip))?);
        let mut readers = Vec::new();
        for p in &self.runs {
            readers.push(BufReader::new(File::open(p).map_err(io_at(p))?));
        }
        let mut heap = BinaryHeap::new();
        let next = |r: &mut BufReader<File>| -> std::io::Result<Option<[u8; ID_ENTRY]>> {
            let mut e = [0u8; ID_ENTRY];
            match r.read_exact(&mut e) {
                Ok(()) => Ok(Some(e)),
                Err(x) if x.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(x) => Err(x),
            }
        };
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(e) = next(r).map_err(io_at(&self.work))? {
                heap.push(std::cmp::Reverse((e, i)));
            }
        }
        let mut id_roots = RootBuilder::new();
        let mut last: Option<[u8; ID_ENTRY]> = None;
        while let Some(std::cmp::Reverse((e, i))) = heap.pop() {
            if let Some(prev) = last
                && prev[..32] == e[..32]
            {
                return Err(self.duplicate(&prev, &e));
            }
            out.write_all(&e).map_err(io_at(&ip))?;
            id_roots.push(id_entry_leaf(&e));
            last = Some(e);
            if let Some(n) = next(&mut readers[i]).map_err(io_at(&self.work))? {
                heap.push(std::cmp::Reverse((n, i)));
            }
        }
        out.flush().map_err(io_at(&ip))?;
        out.get_ref().sync_all().map_err(io_at(&ip))?;
        let roots = Roots {
            records: self.count,
            record_root: self.roots.root(),
            id_root: id_roots.root(),
        };
        Ok((roots, self.shards, self.bytes))
    }

    /// The error for two entries with the same key, naming the id (read back from the shards).
    fn duplicate(&self, a: &[u8; ID_ENTRY], b: &[u8; ID_ENTRY]) -> StoreError {
        let index = |e: &[u8; ID_ENTRY]| u64::from_be_bytes(e[64..].try_into().unwrap_or([0; 8]));
        let (first, second) = {
            let (x, y) = (index(a), index(b));
            (x.min(y), x.max(y))
        };
        let id = read_record(&self.out, &self.shards, first)
            .map(|r| r.id)
            .unwrap_or_else(|_| "?".into());
        StoreError::DuplicateId { id, first, second }
    }
}

/// Record `index` of the version in `dir` whose shards are `shards`.
fn read_record(dir: &Path, shards: &[Shard], index: u64) -> Result<Record, StoreError> {
    let shard = shards
        .iter()
        .find(|s| (s.first..s.first + s.records).contains(&index))
        .ok_or_else(|| StoreError::Corrupt(format!("no shard holds record {index}")))?;
    let path = dir.join("shards").join(format!("{}.zst", shard.sha256));
    let f = File::open(&path).map_err(io_at(&path))?;
    let mut r = BufReader::new(zstd::stream::read::Decoder::new(f).map_err(io_at(&path))?);
    for i in shard.first..=index {
        let bytes = read_entry(&mut r).map_err(io_at(&path))?;
        if i == index {
            return Record::decode(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()));
        }
    }
    Err(StoreError::Corrupt(format!("record {index} missing")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_data::Trees;

    fn meta(name: &str) -> Meta {
        Meta {
            name: name.into(),
            license: "CC0-1.0".into(),
            source: "test".into(),
            ..Meta::default()
        }
    }

    fn jsonl(records: &[Record]) -> String {
        records
            .iter()
            .map(|r| serde_json::json!({"id": r.id, "text": r.text}).to_string() + "\n")
            .collect()
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record::new(format!("r{i}"), format!("text number {i}")))
            .collect()
    }

    #[test]
    fn proofs_through_a_damaged_subtree_cache_still_verify() {
        let home = tempfile::tempdir().unwrap();
        let input = home.path().join("in.jsonl");
        let recs = records(2100);
        std::fs::write(&input, jsonl(&recs)).unwrap();
        let store = DatasetStore::open(&home.path().join("datasets"));
        let m = store
            .ingest(&meta("big"), std::slice::from_ref(&input), false, &mut ())
            .unwrap();
        let roots = m.roots().unwrap();
        let cache = store.version_dir(&m).join(CACHE_FILE);
        for i in [0u64, 1500, 2099] {
            let p = store.prove_index(&m, i, &recs[i as usize]).unwrap();
            assert_eq!(p.verify(&roots).unwrap(), recs[i as usize]);
            assert_eq!(std::fs::metadata(&cache).unwrap().len(), 2 * 32);
            // Damaged: two wrong roots of the right size. The proof is made again from the
            // leaves and the cache rebuilt.
            std::fs::write(&cache, vec![7u8; 64]).unwrap();
            let p = store.prove_index(&m, i, &recs[i as usize]).unwrap();
            assert_eq!(p.verify(&roots).unwrap(), recs[i as usize]);
            assert_ne!(std::fs::read(&cache).unwrap(), vec![7u8; 64]);
        }
    }

    #[test]
    fn an_ingest_gives_the_roots_of_the_records_and_proves_from_disk() {
        let home = tempfile::tempdir().unwrap();
        let input = home.path().join("in.jsonl");
        let recs = records(1000);
        std::fs::write(&input, jsonl(&recs)).unwrap();
        let store = DatasetStore::open(&home.path().join("datasets"));
        let m = store
            .ingest(
                &meta("quotes"),
                std::slice::from_ref(&input),
                false,
                &mut (),
            )
            .unwrap();
        assert_eq!((m.version, m.records), (1, 1000));
        let want = Trees::of(&recs).unwrap().roots();
        let roots = m.roots().unwrap();
        assert_eq!(roots, want);
        // Proofs made from disk verify against the manifest's roots.
        for i in [0usize, 1, 499, 999] {
            let p = store.prove(&m, &recs[i].id).unwrap();
            assert_eq!(p.verify_id(&roots, &recs[i].id).unwrap(), recs[i]);
        }
        // Records by index, in any order, within a byte budget; proofs by index through the
        // cached subtree roots, which a damaged cache cannot spoil.
        let got = store.records_at(&m, &[999, 3, 3, 500], usize::MAX).unwrap();
        let want: Vec<Option<Record>> = [999, 3, 3, 500]
            .iter()
            .map(|&i| Some(recs[i].clone()))
            .collect();
        assert_eq!(got, want);
        let one = recs[3].encode().len();
        let got = store.records_at(&m, &[500, 3], one).unwrap();
        assert_eq!(got, vec![None, Some(recs[3].clone())]);
        for i in [0u64, 700, 999] {
            let p = store.prove_index(&m, i, &recs[i as usize]).unwrap();
            assert_eq!(p.verify(&roots).unwrap(), recs[i as usize]);
        }
        store
            .prove_absent(&m, "not-there")
            .unwrap()
            .verify(&roots)
            .unwrap();
        assert!(matches!(
            store.prove_absent(&m, "r5"),
            Err(StoreError::Present { .. })
        ));
        assert!(matches!(
            store.prove(&m, "nope"),
            Err(StoreError::NoSuchId { .. })
        ));
        // The same input again: a new version with the same roots.
        let m2 = store
            .ingest(&meta("quotes"), &[input], false, &mut ())
            .unwrap();
        assert_eq!(m2.version, 2);
        assert_eq!((&m2.record_root, &m2.id_root), (&m.record_root, &m.id_root));
        assert_eq!(store.manifest("quotes", None).unwrap(), m2);
        assert_eq!(store.names().unwrap(), ["quotes"]);
        // One thread (no pipeline) gives the same roots.
        let one = DatasetStore::open(&home.path().join("one")).with_threads(1);
        let m1 = one
            .ingest(
                &meta("quotes"),
                &[home.path().join("in.jsonl")],
                false,
                &mut (),
            )
            .unwrap();
        assert_eq!((&m1.record_root, &m1.id_root), (&m.record_root, &m.id_root));
        // Sorting the ids in 16 runs of 64 changes nothing.
        let small = DatasetStore::open(&home.path().join("other")).with_sort_chunk(64);
        let input = home.path().join("in.jsonl");
        let m3 = small
            .ingest(&meta("quotes"), &[input], false, &mut ())
            .unwrap();
        assert_eq!((&m3.record_root, &m3.id_root), (&m.record_root, &m.id_root));
        small
            .prove_absent(&m3, "x")
            .unwrap()
            .verify(&roots)
            .unwrap();
    }

    #[test]
    fn a_failed_ingest_leaves_nothing_and_names_the_problem() {
        let home = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(&home.path().join("datasets"));
        let dup = home.path().join("dup.jsonl");
        let mut recs = records(10);
        recs[7].id = "r2".into();
        std::fs::write(&dup, jsonl(&recs)).unwrap();
        let e = store
            .ingest(&meta("d"), std::slice::from_ref(&dup), false, &mut ())
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::DuplicateId { id, first: 2, second: 7 } if id == "r2"),
            "{e}"
        );
        let bad = home.path().join("bad.jsonl");
        std::fs::write(&bad, "{\"id\":\"a\",\"text\":\"x\"}\n{oops\n").unwrap();
        let e = store
            .ingest(&meta("d"), std::slice::from_ref(&bad), false, &mut ())
            .unwrap_err();
        assert!(e.to_string().contains("bad.jsonl:2"), "{e}");
        assert!(store.versions("d").unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(home.path().join("datasets/tmp"))
                .unwrap()
                .count(),
            0,
            "nothing left in tmp"
        );
        // --skip-bad counts and goes on.
        let m = store.ingest(&meta("d"), &[bad], true, &mut ()).unwrap();
        assert_eq!((m.records, m.skipped), (1, 1));
        assert!(matches!(
            store.ingest(&meta("../x"), &[dup], false, &mut ()),
            Err(StoreError::BadName(_))
        ));
    }
}
