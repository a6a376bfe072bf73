//! The log's storage in redb. One write transaction per batch holds the entries, their
//! deduplication index, every tile they change and the new tree size, and is committed durably
//! before any entry of the batch is acknowledged. Tiles are therefore always consistent with the
//! entries, whatever moment the process dies at.

use std::collections::HashMap;
use std::path::Path;

use agora_tlog::hash::Hash;
use agora_tlog::tile::{self, Frontier, TILE_WIDTH};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{Error, Result};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const DEDUP: TableDefinition<&[u8; 32], u64> = TableDefinition::new("dedup");
/// `(tile level, tile index)` → the tile's hashes so far (a partial tile grows in place until
/// full; a prefix of a stored tile is the partial tile of a smaller tree).
const TILES: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("tiles");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_ORIGIN: &str = "origin";
const META_KEY: &str = "public_key";
const META_SIZE: &str = "size";
const META_CHECKPOINT: &str = "checkpoint";

pub struct LogStore {
    db: Database,
    quick_repair: bool,
}

fn hashes_bytes(h: &[Hash]) -> Vec<u8> {
    h.iter().flat_map(|h| h.0).collect()
}

impl LogStore {
    /// Open (or create) the database of the log `origin` with key `public_key`, and rebuild the
    /// right edge of the tree from the stored partial tiles.
    pub fn open(
        path: &Path,
        origin: &str,
        public_key: &[u8; 32],
        quick_repair: bool,
    ) -> Result<(LogStore, Frontier)> {
        let db = Database::builder().set_cache_size(256 << 20).create(path)?;
        let txn = db.begin_write()?;
        let size;
        let mut partial = Vec::new();
        {
            txn.open_table(ENTRIES)?;
            txn.open_table(DEDUP)?;
            let tiles = txn.open_table(TILES)?;
            let mut meta = txn.open_table(META)?;
            let stored_origin = meta.get(META_ORIGIN)?.map(|g| g.value().to_vec());
            match stored_origin {
                None => {
                    meta.insert(META_ORIGIN, origin.as_bytes())?;
                    meta.insert(META_KEY, &public_key[..])?;
                    meta.insert(META_SIZE, &0u64.to_be_bytes()[..])?;
                }
                Some(o) => {
                    let key = meta.get(META_KEY)?.map(|g| g.value().to_vec());
                    if o != origin.as_bytes() || key.as_deref() != Some(&public_key[..]) {
                        return Err(Error::WrongDatabase {
                            expected: format!("log {origin}"),
                            found: format!("log {}", String::from_utf8_lossy(&o)),
                        });
                    }
                }
            }
            size = match meta.get(META_SIZE)? {
                Some(g) => u64::from_be_bytes(
                    g.value()
                        .try_into()
                        .map_err(|_| Error::Corrupt("size is not 8 bytes".into()))?,
                ),
                None => return Err(Error::Corrupt("missing size".into())),
            };
            for level in 0..8u8 {
                let width = tile::level_count(level, size) % TILE_WIDTH;
                let index = tile::level_count(level + 1, size);
                if width == 0 {
                    partial.push(Vec::new());
                    continue;
                }
                let t = tiles.get((level, index))?.ok_or_else(|| {
                    Error::Corrupt(format!("missing partial tile {level}/{index}"))
                })?;
                let hashes = tile::tile_hashes(t.value())?;
                if hashes.len() as u64 != width {
                    return Err(Error::Corrupt(format!(
                        "partial tile {level}/{index} has {} hashes, expected {width}",
                        hashes.len()
                    )));
                }
                partial.push(hashes);
            }
        }
        txn.commit()?;
        let frontier = Frontier::from_partials(size, partial)?;
        Ok((LogStore { db, quick_repair }, frontier))
    }

    /// Append a batch durably. `batch` holds each entry with its leaf hash. Entries already in
    /// the log (or earlier in the batch) get their existing index. On success `frontier` is the
    /// new right edge; on error it is unchanged and nothing was written.
    pub fn append(&self, frontier: &mut Frontier, batch: &[(&[u8], Hash)]) -> Result<Vec<u64>> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(self.quick_repair);
        let mut f = frontier.clone();
        let mut out = Vec::with_capacity(batch.len());
        let mut full = Vec::new();
        let mut fresh: HashMap<Hash, u64> = HashMap::new();
        {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut dedup = txn.open_table(DEDUP)?;
            for (data, h) in batch {
                if data.len() > tile::MAX_ENTRY_LEN {
                    return Err(Error::EntryTooLarge { len: data.len() });
                }
                if let Some(i) = fresh.get(h) {
                    out.push(*i);
                    continue;
                }
                if let Some(i) = dedup.get(&h.0)?.map(|g| g.value()) {
                    out.push(i);
                    continue;
                }
                let i = f.size();
                entries.insert(i, *data)?;
                dedup.insert(&h.0, i)?;
                f.push(*h, &mut full);
                fresh.insert(*h, i);
                out.push(i);
            }
        }
        if fresh.is_empty() {
            txn.abort()?;
            return Ok(out);
        }
        {
            let mut tiles = txn.open_table(TILES)?;
            for t in &full {
                tiles.insert((t.level, t.index), hashes_bytes(&t.hashes).as_slice())?;
            }
            for level in 0..f.levels() {
                let p = f.partial(level);
                if !p.is_empty() {
                    let index = tile::level_count(level + 1, f.size());
                    tiles.insert((level, index), hashes_bytes(p).as_slice())?;
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_SIZE, &f.size().to_be_bytes()[..])?;
        }
        txn.commit()?;
        *frontier = f;
        Ok(out)
    }

    /// The first `width` hashes of tile `(level, index)`, if that many are stored.
    pub fn read_tile(&self, level: u8, index: u64, width: u16) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let tiles = txn.open_table(TILES)?;
        let Some(t) = tiles.get((level, index))? else {
            return Ok(None);
        };
        let need = usize::from(width) * 32;
        let v = t.value();
        Ok((v.len() >= need).then(|| v[..need].to_vec()))
    }

    /// The entry bundle of the first `width` entries of bundle `index`, if all are stored.
    pub fn read_bundle(&self, index: u64, width: u16) -> Result<Option<Vec<u8>>> {
        let Some(start) = index.checked_mul(TILE_WIDTH) else {
            return Ok(None);
        };
        let end = start + u64::from(width);
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let mut out = Vec::new();
        let mut n = 0u64;
        for item in entries.range(start..end)? {
            let (k, v) = item?;
            if k.value() != start + n {
                return Err(Error::Corrupt(format!("missing entry {}", start + n)));
            }
            let v = v.value();
            let len = u16::try_from(v.len())
                .map_err(|_| Error::Corrupt("stored entry longer than 65535 bytes".into()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(v);
            n += 1;
        }
        Ok((n == u64::from(width)).then_some(out))
    }

    pub fn entry(&self, index: u64) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        Ok(entries.get(index)?.map(|g| g.value().to_vec()))
    }

    /// Index of an entry with this leaf hash, if logged.
    pub fn find(&self, leaf: &Hash) -> Result<Option<u64>> {
        let txn = self.db.begin_read()?;
        let dedup = txn.open_table(DEDUP)?;
        Ok(dedup.get(&leaf.0)?.map(|g| g.value()))
    }

    pub fn size(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let g = meta
            .get(META_SIZE)?
            .ok_or_else(|| Error::Corrupt("missing size".into()))?;
        Ok(u64::from_be_bytes(g.value().try_into().map_err(|_| {
            Error::Corrupt("size is not 8 bytes".into())
        })?))
    }

    /// Durably record the latest published checkpoint.
    pub fn save_checkpoint(&self, bytes: &[u8]) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(self.quick_repair);
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_CHECKPOINT, bytes)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn checkpoint(&self) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(META_CHECKPOINT)?.map(|g| g.value().to_vec()))
    }
}

/// Reads tiles for proofs ([`agora_tlog::tile::TileHashSource`]).
impl agora_tlog::tile::TileReader for LogStore {
    fn read_tile(&self, level: u8, index: u64, width: u16) -> agora_tlog::Result<Vec<u8>> {
        LogStore::read_tile(self, level, index, width)
            .ok()
            .flatten()
            .ok_or(agora_tlog::Error::MissingHash { level, index })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_tlog::hash::leaf_hash;
    use agora_tlog::merkle::{self, MemoryTree};
    use agora_tlog::tile::TileHashSource;

    #[test]
    fn append_dedup_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let key = [1u8; 32];
        let mut mem = MemoryTree::new();
        {
            let (s, mut f) = LogStore::open(&path, "o", &key, true).unwrap();
            let data: Vec<Vec<u8>> = (0..700u32).map(|i| i.to_be_bytes().to_vec()).collect();
            for chunk in data.chunks(97) {
                let batch: Vec<(&[u8], Hash)> =
                    chunk.iter().map(|d| (d.as_slice(), leaf_hash(d))).collect();
                let idx = s.append(&mut f, &batch).unwrap();
                for (d, i) in chunk.iter().zip(idx) {
                    assert_eq!(mem.append(d), i);
                }
            }
            assert_eq!(f.root(), mem.root());
            // Duplicates, within a batch and against the store.
            let x = b"fresh".to_vec();
            let batch = vec![
                (x.as_slice(), leaf_hash(&x)),
                (&data[5][..], leaf_hash(&data[5])),
                (x.as_slice(), leaf_hash(&x)),
            ];
            assert_eq!(s.append(&mut f, &batch).unwrap(), vec![700, 5, 700]);
            mem.append(&x);
            // Only duplicates: nothing written.
            let batch = vec![(&data[6][..], leaf_hash(&data[6]))];
            assert_eq!(s.append(&mut f, &batch).unwrap(), vec![6]);
            assert_eq!(s.size().unwrap(), 701);
            let big = vec![0u8; 65536];
            assert_eq!(
                s.append(&mut f, &[(big.as_slice(), leaf_hash(&big))]),
                Err(Error::EntryTooLarge { len: 65536 })
            );
            assert_eq!(f.size(), 701);
        }
        // Reopen: the frontier comes back from the partial tiles.
        let (s, f) = LogStore::open(&path, "o", &key, true).unwrap();
        assert_eq!(f.size(), 701);
        assert_eq!(f.root(), mem.root());
        let src = TileHashSource {
            reader: &s,
            size: 701,
        };
        assert_eq!(merkle::root(&src, 701).unwrap(), mem.root());
        assert_eq!(
            merkle::consistency_proof(&src, 300, 701).unwrap(),
            mem.consistency_proof(300, 701).unwrap()
        );
        // Bundles and tiles.
        let b = s.read_bundle(2, 189).unwrap().unwrap();
        let entries = tile::decode_bundle(&b).unwrap();
        assert_eq!(entries.len(), 189);
        assert_eq!(entries[0], &512u32.to_be_bytes());
        assert_eq!(entries[188], b"fresh");
        assert!(s.read_bundle(2, 190).unwrap().is_none());
        assert!(s.read_tile(0, 2, 190).unwrap().is_none());
        assert_eq!(s.read_tile(0, 0, 256).unwrap().unwrap().len(), 8192);
        assert_eq!(s.read_tile(1, 0, 2).unwrap().unwrap().len(), 64);
        // Another log's key is refused.
        drop(s);
        assert!(matches!(
            LogStore::open(&path, "o", &[2u8; 32], true),
            Err(Error::WrongDatabase { .. })
        ));
    }
}
