//! The log's storage in redb. One write transaction per batch holds the entries, every tile they
//! change, the new tree size and the deduplication state, and is committed durably before any entry
//! of the batch is acknowledged. Tiles are therefore always consistent with the entries, whatever
//! moment the process dies at.
//!
//! Deduplication maps leaf hashes to indices. Inserting random keys into a B-tree dirties one page
//! per entry, which would dominate the cost of a commit, so recent entries are kept in memory and
//! moved into the `dedup` table one slice of the key space (first hash byte) per batch, in key
//! order, so that each slice's inserts share pages. For each slice the table records up to which
//! index it is complete (its watermark, committed with the batch); on open, entries above their
//! slice's watermark are put back in memory from the level-0 tiles.
//!
//! Disk budget. What the log stores is counted as [`stored_bytes`]: the entries' bytes, which the
//! store counts in `meta` in the same transaction as each batch (so the count is exact after any
//! crash and costs nothing at open), plus a fixed cost per entry for its index and deduplication
//! records and 32 bytes per stored tile hash, both functions of the tree size alone. An append
//! that would take the count above the budget is refused; nothing stored is ever removed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

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
/// Every published checkpoint by tree size: what dates a community's votes (a checkpoint is
/// published only when the tree grew, so there is at most one per batch of entries).
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");

const META_ORIGIN: &str = "origin";
const META_KEY: &str = "public_key";
const META_SIZE: &str = "size";
const META_CHECKPOINT: &str = "checkpoint";
/// 256 big-endian u64 watermarks: slice `s` of `dedup` holds every entry below `watermark[s]`.
const META_DEDUP_WATERMARKS: &str = "dedup_watermarks";
/// Sum of the lengths of all entries (big-endian u64).
const META_ENTRY_BYTES: &str = "entry_bytes";

/// Bytes counted per entry besides its own: its index key (8) and its deduplication record
/// (32-byte leaf hash and 8-byte index).
pub const PER_ENTRY_BYTES: u64 = 8 + 32 + 8;

/// The bytes a log of `size` entries whose entries hold `entry_bytes` bytes is counted as storing:
/// the entries, [`PER_ENTRY_BYTES`] each, and 32 bytes per tile hash at every level.
pub fn stored_bytes(size: u64, entry_bytes: u64) -> u64 {
    let hashes: u64 = (0..=tile::MAX_LEVEL)
        .map(|l| tile::level_count(l, size))
        .take_while(|&n| n > 0)
        .sum();
    entry_bytes
        .saturating_add(size.saturating_mul(PER_ENTRY_BYTES))
        .saturating_add(hashes.saturating_mul(32))
}

/// Most entries kept in memory for deduplication before extra slices are flushed per batch.
pub const MAX_RECENT: usize = 1 << 20;

/// Entries not yet moved into the `dedup` table.
#[derive(Default)]
struct Recent {
    map: BTreeMap<[u8; 32], u64>,
    watermarks: Vec<u64>,
    cursor: u8,
    /// Sum of the lengths of the committed entries.
    entry_bytes: u64,
}

pub struct LogStore {
    db: Database,
    quick_repair: bool,
    recent: Mutex<Recent>,
    max_recent: usize,
}

/// The recent entries whose hash starts with byte `s`.
fn slice_range(
    map: &BTreeMap<[u8; 32], u64>,
    s: u8,
) -> std::collections::btree_map::Range<'_, [u8; 32], u64> {
    let mut lo = [0u8; 32];
    lo[0] = s;
    match s.checked_add(1) {
        Some(n) => {
            let mut hi = [0u8; 32];
            hi[0] = n;
            map.range(lo..hi)
        }
        None => map.range(lo..),
    }
}

fn decode_u64(b: &[u8], what: &str) -> Result<u64> {
    Ok(u64::from_be_bytes(b.try_into().map_err(|_| {
        Error::Corrupt(format!("{what} is not 8 bytes"))
    })?))
}

fn encode_watermarks(w: &[u64]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_be_bytes()).collect()
}

fn decode_watermarks(b: &[u8]) -> Result<Vec<u64>> {
    if b.len() != 256 * 8 {
        return Err(Error::Corrupt("dedup watermarks are not 2048 bytes".into()));
    }
    Ok(b.chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect())
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
        let watermarks;
        let entry_bytes;
        let mut recent = BTreeMap::new();
        {
            let entries = txn.open_table(ENTRIES)?;
            txn.open_table(DEDUP)?;
            let tiles = txn.open_table(TILES)?;
            let mut meta = txn.open_table(META)?;
            let mut history = txn.open_table(CHECKPOINTS)?;
            // A log made before the history was kept starts it with its latest checkpoint.
            if history.first()?.is_none()
                && let Some(c) = meta.get(META_CHECKPOINT)?.map(|g| g.value().to_vec())
                && let Ok(sc) = agora_tlog::checkpoint::SignedCheckpoint::parse(&c)
            {
                history.insert(sc.checkpoint.size, c.as_slice())?;
            }
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
            watermarks = match meta.get(META_DEDUP_WATERMARKS)? {
                Some(g) => decode_watermarks(g.value())?,
                None => vec![0; 256],
            };
            let counted = meta
                .get(META_ENTRY_BYTES)?
                .map(|g| decode_u64(g.value(), "entry byte count"))
                .transpose()?;
            entry_bytes = match counted {
                Some(n) => n,
                None => {
                    // A database written before the count existed: count once and keep it.
                    let mut n = 0u64;
                    for item in entries.range(0..size)? {
                        n += item?.1.value().len() as u64;
                    }
                    meta.insert(META_ENTRY_BYTES, &n.to_be_bytes()[..])?;
                    n
                }
            };
            // Entries above their slice's watermark are only in memory: rebuild them from the
            // level-0 tiles.
            let lo = watermarks.iter().copied().min().unwrap_or(0).min(size);
            let mut index = lo - lo % TILE_WIDTH;
            while index < size {
                let tile_index = index / TILE_WIDTH;
                let width = tile::tile_width(0, tile_index, size);
                let t = tiles
                    .get((0, tile_index))?
                    .ok_or_else(|| Error::Corrupt(format!("missing level-0 tile {tile_index}")))?;
                let hashes = tile::tile_hashes(t.value())?;
                if hashes.len() < usize::from(width) {
                    return Err(Error::Corrupt(format!("short level-0 tile {tile_index}")));
                }
                for (k, h) in hashes.iter().take(usize::from(width)).enumerate() {
                    let i = tile_index * TILE_WIDTH + k as u64;
                    if i >= lo && i >= watermarks[usize::from(h.0[0])] {
                        recent.insert(h.0, i);
                    }
                }
                index = (tile_index + 1) * TILE_WIDTH;
            }
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
        let recent = Mutex::new(Recent {
            map: recent,
            watermarks,
            cursor: 0,
            entry_bytes,
        });
        Ok((
            LogStore {
                db,
                quick_repair,
                recent,
                max_recent: MAX_RECENT,
            },
            frontier,
        ))
    }

    /// Append a batch durably. `batch` holds each entry with its leaf hash. Entries already in
    /// the log (or earlier in the batch) get their existing index. On success `frontier` is the
    /// new right edge; on error it is unchanged and nothing was written.
    pub fn append(&self, frontier: &mut Frontier, batch: &[(&[u8], Hash)]) -> Result<Vec<u64>> {
        Ok(self
            .append_within(frontier, batch, u64::MAX)?
            .into_iter()
            .map(|i| i.unwrap_or(u64::MAX))
            .collect())
    }

    /// Like [`LogStore::append`], but a new entry that would take [`stored_bytes`] above
    /// `budget` is not written and gets `None` (entries already logged still get their
    /// index).
    pub fn append_within(
        &self,
        frontier: &mut Frontier,
        batch: &[(&[u8], Hash)],
        budget: u64,
    ) -> Result<Vec<Option<u64>>> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let base = frontier.size();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(self.quick_repair);
        let mut f = frontier.clone();
        let mut out = Vec::with_capacity(batch.len());
        let mut full = Vec::new();
        let mut fresh: HashMap<Hash, u64> = HashMap::new();
        let mut entry_bytes = recent.entry_bytes;
        {
            let mut entries = txn.open_table(ENTRIES)?;
            let dedup = txn.open_table(DEDUP)?;
            for (data, h) in batch {
                if data.len() > tile::MAX_ENTRY_LEN {
                    return Err(Error::EntryTooLarge { len: data.len() });
                }
                if let Some(i) = fresh.get(h).or_else(|| recent.map.get(&h.0)) {
                    out.push(Some(*i));
                    continue;
                }
                if let Some(i) = dedup.get(&h.0)?.map(|g| g.value()) {
                    out.push(Some(i));
                    continue;
                }
                let bytes = entry_bytes + data.len() as u64;
                if stored_bytes(f.size() + 1, bytes) > budget {
                    out.push(None);
                    continue;
                }
                let i = f.size();
                entries.insert(i, *data)?;
                f.push(*h, &mut full);
                fresh.insert(*h, i);
                entry_bytes = bytes;
                out.push(Some(i));
            }
        }
        if fresh.is_empty() {
            txn.abort()?;
            return Ok(out);
        }
        // Move one slice of the recent entries (more if too many are held) into the table, in
        // key order; every entry of the slice below `base` is then in the table.
        let mut slices = vec![recent.cursor];
        let mut held = recent.map.len() + fresh.len();
        while held > self.max_recent && slices.len() < 256 {
            let s = recent.cursor.wrapping_add(slices.len() as u8);
            held -= slice_range(&recent.map, s).count();
            slices.push(s);
        }
        let mut watermarks = recent.watermarks.clone();
        {
            let mut dedup = txn.open_table(DEDUP)?;
            for &s in &slices {
                for (k, i) in slice_range(&recent.map, s) {
                    dedup.insert(k, *i)?;
                }
                watermarks[usize::from(s)] = base;
            }
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
            meta.insert(
                META_DEDUP_WATERMARKS,
                encode_watermarks(&watermarks).as_slice(),
            )?;
            meta.insert(META_ENTRY_BYTES, &entry_bytes.to_be_bytes()[..])?;
        }
        txn.commit()?;
        // Committed: update memory to match.
        for &s in &slices {
            let keys: Vec<[u8; 32]> = slice_range(&recent.map, s).map(|(k, _)| *k).collect();
            for k in keys {
                recent.map.remove(&k);
            }
        }
        recent.map.extend(fresh.into_iter().map(|(h, i)| (h.0, i)));
        recent.watermarks = watermarks;
        recent.cursor = recent.cursor.wrapping_add(slices.len() as u8);
        recent.entry_bytes = entry_bytes;
        *frontier = f;
        Ok(out)
    }

    /// Sum of the lengths of the committed entries (see [`stored_bytes`]).
    pub fn entry_bytes(&self) -> u64 {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry_bytes
    }

    /// Entries held in memory for deduplication (not yet in the table).
    pub fn recent_len(&self) -> usize {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
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
        if let Some(i) = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .get(&leaf.0)
        {
            return Ok(Some(*i));
        }
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

    /// Durably record the latest published checkpoint (of tree size `size`), and keep it in
    /// the history.
    pub fn save_checkpoint(&self, size: u64, bytes: &[u8]) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(self.quick_repair);
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_CHECKPOINT, bytes)?;
            let mut history = txn.open_table(CHECKPOINTS)?;
            if history.get(size)?.is_none() {
                history.insert(size, bytes)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The first published checkpoint of tree size at least `size`.
    pub fn checkpoint_at_or_after(&self, size: u64) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let history = txn.open_table(CHECKPOINTS)?;
        let mut range = history.range(size..)?;
        match range.next() {
            Some(r) => Ok(Some(r?.1.value().to_vec())),
            None => Ok(None),
        }
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

    fn batch(data: &[Vec<u8>]) -> Vec<(&[u8], Hash)> {
        data.iter().map(|d| (d.as_slice(), leaf_hash(d))).collect()
    }

    /// Duplicates are found whether they are in memory or in the table, across reopening, and
    /// whatever the flushing cursor did.
    #[test]
    fn dedup_across_slices_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let data: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let mut held = Vec::new();
        {
            let (mut s, mut f) = LogStore::open(&path, "o", &[1; 32], true).unwrap();
            s.max_recent = 500;
            for (k, chunk) in data.chunks(10).enumerate() {
                let idx = s.append(&mut f, &batch(chunk)).unwrap();
                assert_eq!(idx, (k as u64 * 10..k as u64 * 10 + 10).collect::<Vec<_>>());
                assert!(s.recent_len() <= 500 + 10, "{}", s.recent_len());
            }
            held.push(s.recent_len());
            // Every entry is found again, from memory or the table.
            for (i, d) in data.iter().enumerate().step_by(7) {
                assert_eq!(
                    s.append(&mut f, &batch(std::slice::from_ref(d))).unwrap(),
                    vec![i as u64]
                );
                assert_eq!(s.find(&leaf_hash(d)).unwrap(), Some(i as u64));
            }
        }
        for _ in 0..2 {
            let (s, mut f) = LogStore::open(&path, "o", &[1; 32], true).unwrap();
            held.push(s.recent_len());
            for (i, d) in data.iter().enumerate() {
                assert_eq!(s.find(&leaf_hash(d)).unwrap(), Some(i as u64), "entry {i}");
            }
            let again = s.append(&mut f, &batch(&data[2990..])).unwrap();
            assert_eq!(again, (2990..3000).collect::<Vec<_>>());
            assert_eq!(f.size(), 3000);
        }
        // What memory held before closing is what reopening rebuilds.
        assert_eq!(held[0], held[1]);
        assert!(held[0] > 0);
    }

    /// The disk budget: entries beyond it are refused, duplicates still get their index, the
    /// count survives reopening and is rebuilt for a database written before it existed.
    #[test]
    fn budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let data: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1000]).collect();
        // Room for exactly 3 entries of 1000 bytes.
        let budget = stored_bytes(3, 3000);
        {
            let (s, mut f) = LogStore::open(&path, "o", &[1; 32], true).unwrap();
            let got = s.append_within(&mut f, &batch(&data[..2]), budget).unwrap();
            assert_eq!(got, vec![Some(0), Some(1)]);
            let got = s
                .append_within(
                    &mut f,
                    &batch(&[data[2].clone(), data[3].clone(), data[0].clone()]),
                    budget,
                )
                .unwrap();
            assert_eq!(got, vec![Some(2), None, Some(0)]);
            // Full: a small entry still does not fit; a duplicate still gets its index.
            let got = s
                .append_within(&mut f, &batch(&[vec![1], data[1].clone()]), budget)
                .unwrap();
            assert_eq!(got, vec![None, Some(1)]);
            assert_eq!(s.entry_bytes(), 3000);
            assert_eq!(stored_bytes(f.size(), s.entry_bytes()), budget);
        }
        let (s, mut f) = LogStore::open(&path, "o", &[1; 32], true).unwrap();
        assert_eq!((f.size(), s.entry_bytes()), (3, 3000));
        // A larger budget takes more.
        let got = s
            .append_within(&mut f, &batch(&data[3..5]), stored_bytes(5, 5000))
            .unwrap();
        assert_eq!(got, vec![Some(3), Some(4)]);
        // Without the stored count (an older database), opening counts the entries.
        {
            let txn = s.db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .remove(META_ENTRY_BYTES)
                .unwrap();
            txn.commit().unwrap();
        }
        drop(s);
        let (s, _) = LogStore::open(&path, "o", &[1; 32], true).unwrap();
        assert_eq!(s.entry_bytes(), 5000);
        // The count: tiles are 32 bytes per hash at every level.
        assert_eq!(stored_bytes(0, 0), 0);
        assert_eq!(stored_bytes(1, 10), 10 + PER_ENTRY_BYTES + 32);
        assert_eq!(stored_bytes(256, 0), 256 * PER_ENTRY_BYTES + 257 * 32);
        assert_eq!(
            stored_bytes(65_536, 0),
            65_536 * PER_ENTRY_BYTES + (65_536 + 256 + 1) * 32
        );
    }

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
            assert!(matches!(
                s.append(&mut f, &[(big.as_slice(), leaf_hash(&big))]),
                Err(Error::EntryTooLarge { len: 65536 })
            ));
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
