//! The c2sp.org/tlog-tiles layout: tile paths, tile widths for a tree size, the right edge of a
//! growing tree kept as partial tiles, and proofs computed from tiles.

use crate::hash::{Hash, node_hash};
use crate::merkle::HashSource;
use crate::{Error, Result};

/// Tiles are subtrees of height 8: 256 hashes wide when full.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes (or entries) in a full tile: `2^TILE_HEIGHT`.
pub const TILE_WIDTH: u64 = 256;
/// The largest tile level allowed in a path.
pub const MAX_LEVEL: u8 = 63;
/// Entries in an entry bundle are uint16 length-prefixed.
pub const MAX_ENTRY_LEN: usize = u16::MAX as usize;

/// What a tile holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TileKind {
    /// Merkle tree hashes at tile level `level`.
    Hashes {
        /// Tile level, 0..=[`MAX_LEVEL`]; a level-`L` tile holds hashes of subtrees of `256^L`
        /// leaves.
        level: u8,
    },
    /// An entry bundle.
    Entries,
}

/// A tile resource: `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TilePath {
    /// Hash tile (and its level) or entry bundle.
    pub kind: TileKind,
    /// Position of the tile within its level, `N` in the path.
    pub index: u64,
    /// 1..=256; 256 means a full tile (no `.p/` suffix).
    pub width: u16,
}

impl TilePath {
    /// The hash tile `index` at `level` (`width` as in [`TilePath::width`]).
    pub fn hashes(level: u8, index: u64, width: u16) -> TilePath {
        TilePath {
            kind: TileKind::Hashes { level },
            index,
            width,
        }
    }

    /// The entry bundle `index` (`width` as in [`TilePath::width`]).
    pub fn entries(index: u64, width: u16) -> TilePath {
        TilePath {
            kind: TileKind::Entries,
            index,
            width,
        }
    }

    /// Whether the tile is full (width 256).
    pub fn is_full(&self) -> bool {
        u64::from(self.width) == TILE_WIDTH
    }

    /// The path relative to the log prefix, e.g. `tile/0/x001/234.p/5`.
    pub fn to_path(&self) -> String {
        let mut s = String::from("tile/");
        match self.kind {
            TileKind::Hashes { level } => s.push_str(&level.to_string()),
            TileKind::Entries => s.push_str("entries"),
        }
        s.push('/');
        s.push_str(&encode_index(self.index));
        if !self.is_full() {
            s.push_str(".p/");
            s.push_str(&self.width.to_string());
        }
        s
    }

    /// Parse a path relative to the log prefix (starting with `tile/`). Only the canonical
    /// encoding is accepted.
    pub fn parse(path: &str) -> Result<TilePath> {
        if path.len() > 128 {
            return Err(Error::TilePath("too long"));
        }
        let rest = path
            .strip_prefix("tile/")
            .ok_or(Error::TilePath("must start with tile/"))?;
        let (first, rest) = rest
            .split_once('/')
            .ok_or(Error::TilePath("missing tile index"))?;
        let kind = if first == "entries" {
            TileKind::Entries
        } else {
            let level = crate::parse_decimal(first)
                .filter(|l| *l <= u64::from(MAX_LEVEL))
                .ok_or(Error::TilePath("level must be a decimal between 0 and 63"))?;
            TileKind::Hashes { level: level as u8 }
        };
        let (index_part, width) = match rest.split_once(".p/") {
            Some((idx, w)) => {
                let w = crate::parse_decimal(w)
                    .filter(|w| (1..TILE_WIDTH).contains(w))
                    .ok_or(Error::TilePath("partial width must be between 1 and 255"))?;
                (idx, w as u16)
            }
            None => (rest, TILE_WIDTH as u16),
        };
        let elems: Vec<&str> = index_part.split('/').collect();
        let mut index: u64 = 0;
        for (i, e) in elems.iter().enumerate() {
            let last = i + 1 == elems.len();
            let digits = if last {
                *e
            } else {
                e.strip_prefix('x').ok_or(Error::TilePath(
                    "index elements but the last must start with x",
                ))?
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::TilePath("index elements must be three digits"));
            }
            let d: u64 = digits
                .parse()
                .map_err(|_| Error::TilePath("index elements must be three digits"))?;
            index = index
                .checked_mul(1000)
                .and_then(|v| v.checked_add(d))
                .ok_or(Error::TilePath("index too large"))?;
        }
        let t = TilePath { kind, index, width };
        if t.to_path() != path {
            return Err(Error::TilePath("not in canonical form"));
        }
        Ok(t)
    }
}

/// `N` encoded as zero-padded 3-digit path elements, all but the last prefixed with `x`.
pub fn encode_index(mut n: u64) -> String {
    let mut s = format!("{:03}", n % 1000);
    while n >= 1000 {
        n /= 1000;
        s = format!("x{:03}/{s}", n % 1000);
    }
    s
}

/// Number of hashes stored at tile level `level` for a tree of `size` leaves (the number of
/// complete subtrees of `256^level` leaves).
pub fn level_count(level: u8, size: u64) -> u64 {
    let shift = u32::from(level) * TILE_HEIGHT;
    if shift >= 64 { 0 } else { size >> shift }
}

/// Width of tile `index` at `level` in a tree of `size` leaves; 0 when the tile does not exist.
pub fn tile_width(level: u8, index: u64, size: u64) -> u16 {
    let count = level_count(level, size);
    let start = match index.checked_mul(TILE_WIDTH) {
        Some(s) => s,
        None => return 0,
    };
    if count <= start {
        0
    } else {
        (count - start).min(TILE_WIDTH) as u16
    }
}

/// The root of a complete binary tree over `hashes` (a power-of-two count).
pub fn complete_root(hashes: &[Hash]) -> Hash {
    debug_assert!(hashes.len().is_power_of_two());
    if hashes.len() == 1 {
        return hashes[0];
    }
    let mut level: Vec<Hash> = hashes
        .chunks_exact(2)
        .map(|p| node_hash(&p[0], &p[1]))
        .collect();
    while level.len() > 1 {
        level = level
            .chunks_exact(2)
            .map(|p| node_hash(&p[0], &p[1]))
            .collect();
    }
    level[0]
}

/// Split tile bytes into hashes; the length must be a multiple of 32.
pub fn tile_hashes(data: &[u8]) -> Result<Vec<Hash>> {
    if !data.len().is_multiple_of(32) {
        return Err(Error::MalformedTile("length is not a multiple of 32"));
    }
    Ok(data
        .chunks_exact(32)
        .map(|c| {
            let mut a = [0u8; 32];
            a.copy_from_slice(c);
            Hash(a)
        })
        .collect())
}

/// Encode entries as an entry bundle (uint16 big-endian length prefixes).
pub fn encode_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for e in entries {
        let len = u16::try_from(e.len()).map_err(|_| Error::MalformedTile("entry too long"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Split an entry bundle into its entries.
pub fn decode_bundle(data: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 2 {
            return Err(Error::MalformedTile("truncated entry length"));
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        if rest.len() < len {
            return Err(Error::MalformedTile("truncated entry"));
        }
        out.push(&rest[..len]);
        rest = &rest[len..];
        if out.len() as u64 > TILE_WIDTH {
            return Err(Error::MalformedTile("more than 256 entries in a bundle"));
        }
    }
    Ok(out)
}

/// A tile that became full while appending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullTile {
    /// Tile level.
    pub level: u8,
    /// Tile index within the level.
    pub index: u64,
    /// Its 256 hashes, left to right.
    pub hashes: Vec<Hash>,
}

/// The right edge of a growing tree: for each tile level, the hashes of the partial tile (fewer
/// than 256). Together with the full tiles already written it is the whole tree; the root and every
/// partial tile come from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    partial: Vec<Vec<Hash>>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuild from stored partial tiles; `partial[l]` must hold exactly the partial tile width
    /// at level `l` for `size`.
    pub fn from_partials(size: u64, mut partial: Vec<Vec<Hash>>) -> Result<Self> {
        while partial.last().is_some_and(|p| p.is_empty()) {
            partial.pop();
        }
        for (l, p) in partial.iter().enumerate() {
            let want = level_count(l as u8, size) % TILE_WIDTH;
            if p.len() as u64 != want {
                return Err(Error::MalformedTile(
                    "partial tile width does not match the size",
                ));
            }
        }
        let max_level = (0..8u8)
            .rev()
            .find(|l| !level_count(*l, size).is_multiple_of(TILE_WIDTH));
        if max_level.map_or(0, |l| usize::from(l) + 1) > partial.len() {
            return Err(Error::MalformedTile("missing partial tile"));
        }
        Ok(Frontier { size, partial })
    }

    /// Number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The partial tile hashes at `level` (empty if none).
    pub fn partial(&self, level: u8) -> &[Hash] {
        self.partial.get(usize::from(level)).map_or(&[], |v| v)
    }

    /// Number of tile levels held: one above the highest non-empty partial tile (0 when empty).
    pub fn levels(&self) -> u8 {
        self.partial.len() as u8
    }

    /// Append a leaf hash; tiles that become full are pushed to `full`.
    pub fn push(&mut self, leaf: Hash, full: &mut Vec<FullTile>) {
        self.size += 1;
        let mut h = leaf;
        let mut level = 0usize;
        loop {
            if self.partial.len() == level {
                self.partial.push(Vec::with_capacity(TILE_WIDTH as usize));
            }
            self.partial[level].push(h);
            if self.partial[level].len() as u64 != TILE_WIDTH {
                break;
            }
            let hashes = std::mem::take(&mut self.partial[level]);
            h = complete_root(&hashes);
            let index = level_count(level as u8 + 1, self.size) - 1;
            full.push(FullTile {
                level: level as u8,
                index,
                hashes,
            });
            level += 1;
        }
    }

    /// The root hash of the tree.
    pub fn root(&self) -> Hash {
        let mut subtrees = Vec::new();
        for p in self.partial.iter().rev() {
            let mut start = 0usize;
            for bit in (0..8).rev() {
                let chunk = 1usize << bit;
                if p.len() & chunk != 0 {
                    subtrees.push(complete_root(&p[start..start + chunk]));
                    start += chunk;
                }
            }
        }
        let Some((last, rest)) = subtrees.split_last() else {
            return Hash::empty();
        };
        rest.iter().rev().fold(*last, |acc, h| node_hash(h, &acc))
    }
}

/// Anything that can read tiles: returns the first `width` hashes of tile `(level, index)`.
pub trait TileReader {
    /// The first `width` hashes of tile `(level, index)`, concatenated (`32 * width` bytes).
    fn read_tile(&self, level: u8, index: u64, width: u16) -> Result<Vec<u8>>;
}

impl<T: TileReader + ?Sized> TileReader for &T {
    fn read_tile(&self, level: u8, index: u64, width: u16) -> Result<Vec<u8>> {
        (**self).read_tile(level, index, width)
    }
}

/// Complete-subtree hashes of a tree of a given size, computed from its tiles, so that proofs can
/// be generated (and tiles checked) with [`crate::merkle`].
pub struct TileHashSource<R> {
    /// Where the tiles come from.
    pub reader: R,
    /// The tree size: it fixes the width of every tile read.
    pub size: u64,
}

impl<R: TileReader> HashSource for TileHashSource<R> {
    fn subtree(&self, level: u8, index: u64) -> Result<Hash> {
        let missing = Error::MissingHash { level, index };
        if level >= 64 {
            return Err(missing);
        }
        let tile_level = (u32::from(level) / TILE_HEIGHT) as u8;
        let r = u32::from(level) % TILE_HEIGHT;
        let first = index
            .checked_shl(r)
            .filter(|f| f >> r == index)
            .ok_or(missing.clone())?;
        let n = first / TILE_WIDTH;
        let off = (first % TILE_WIDTH) as usize;
        let count = 1usize << r;
        let width = tile_width(tile_level, n, self.size);
        if off + count > usize::from(width) {
            return Err(missing);
        }
        let data = self.reader.read_tile(tile_level, n, width)?;
        if data.len() != usize::from(width) * 32 {
            return Err(Error::MalformedTile("tile has the wrong length"));
        }
        let hashes = tile_hashes(&data[off * 32..(off + count) * 32])?;
        Ok(complete_root(&hashes))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;
    use crate::merkle::{self, MemoryTree};
    use std::collections::HashMap;

    #[test]
    fn paths_match_the_spec() {
        assert_eq!(encode_index(1234067), "x001/x234/067");
        assert_eq!(
            TilePath::hashes(0, 1234067, 256).to_path(),
            "tile/0/x001/x234/067"
        );
        assert_eq!(TilePath::hashes(2, 5, 17).to_path(), "tile/2/005.p/17");
        assert_eq!(
            TilePath::entries(1000, 3).to_path(),
            "tile/entries/x001/000.p/3"
        );
        for p in [
            "tile/0/000",
            "tile/63/x001/x234/067",
            "tile/entries/005.p/255",
            "tile/1/x018/x446/x744/x073/x709/x551/615",
        ] {
            assert_eq!(TilePath::parse(p).unwrap().to_path(), p);
        }
        assert_eq!(
            TilePath::parse("tile/1/x018/x446/x744/x073/x709/x551/615")
                .unwrap()
                .index,
            u64::MAX
        );
        for bad in [
            "tile/64/000",
            "tile/01/000",
            "tile/0/5",
            "tile/0/0005",
            "tile/0/x000/005",
            "tile/0/001/002",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/0/000.p/05",
            "tile/0/000.p/",
            "tile/data/000",
            "tile/0/x01a/000",
            "tile/1/x018/x446/x744/x073/x709/x551/616",
            "tile/0/000/",
            "tiles/0/000",
            "tile/0",
            "tile/-1/000",
        ] {
            assert!(TilePath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn widths_match_the_spec_example() {
        // "a tree of size 70,000 will be represented by 273 full level 0 tiles, one partial level 0
        // tile of width 112, one full level 1 tile, one partial level 1 tile of width 17, and one
        // partial level 2 tile of width 1."
        let s = 70_000;
        assert_eq!(tile_width(0, 272, s), 256);
        assert_eq!(tile_width(0, 273, s), 112);
        assert_eq!(tile_width(0, 274, s), 0);
        assert_eq!(tile_width(1, 0, s), 256);
        assert_eq!(tile_width(1, 1, s), 17);
        assert_eq!(tile_width(2, 0, s), 1);
        assert_eq!(tile_width(3, 0, s), 0);
        // "a tree of size 256 will be represented by a full level 0 tile and a partial level 1
        // tile of width 1."
        assert_eq!(tile_width(0, 0, 256), 256);
        assert_eq!(tile_width(0, 1, 256), 0);
        assert_eq!(tile_width(1, 0, 256), 1);
    }

    #[test]
    fn bundles_roundtrip() {
        let entries: Vec<&[u8]> = vec![b"", b"a", &[7u8; 300]];
        let b = encode_bundle(entries.clone()).unwrap();
        assert_eq!(decode_bundle(&b).unwrap(), entries);
        assert!(decode_bundle(&b[..b.len() - 1]).is_err());
        assert!(decode_bundle(&[0]).is_err());
        assert!(encode_bundle([&[0u8; 65536][..]]).is_err());
    }

    /// Tiles held in a map, as a log would store them.
    #[derive(Default)]
    struct MapTiles(HashMap<(u8, u64), Vec<Hash>>);

    impl TileReader for MapTiles {
        fn read_tile(&self, level: u8, index: u64, width: u16) -> Result<Vec<u8>> {
            let t = self
                .0
                .get(&(level, index))
                .ok_or(Error::MissingHash { level, index })?;
            if t.len() < usize::from(width) {
                return Err(Error::MissingHash { level, index });
            }
            Ok(t[..usize::from(width)].iter().flat_map(|h| h.0).collect())
        }
    }

    #[test]
    fn frontier_and_tiles_agree_with_the_memory_tree() {
        let mut mem = MemoryTree::new();
        let mut fr = Frontier::new();
        let mut tiles = MapTiles::default();
        let mut full = Vec::new();
        let sizes = [
            1u64, 2, 255, 256, 257, 511, 512, 1000, 65535, 65536, 65537, 70_000,
        ];
        let mut i = 0u64;
        for &s in &sizes {
            while i < s {
                let h = leaf_hash(&i.to_le_bytes());
                mem.push_leaf_hash(h);
                fr.push(h, &mut full);
                i += 1;
            }
            for t in full.drain(..) {
                assert_eq!(t.hashes.len(), 256);
                tiles.0.insert((t.level, t.index), t.hashes);
            }
            for l in 0..fr.levels() {
                let idx = level_count(l + 1, s);
                if !fr.partial(l).is_empty() {
                    tiles.0.insert((l, idx), fr.partial(l).to_vec());
                }
            }
            assert_eq!(fr.size(), s);
            assert_eq!(fr.root(), mem.root(), "root at size {s}");
            let src = TileHashSource {
                reader: &tiles,
                size: s,
            };
            assert_eq!(merkle::root(&src, s).unwrap(), mem.root());
            for idx in [0, s / 3, s - 1] {
                assert_eq!(
                    merkle::inclusion_proof(&src, idx, s).unwrap(),
                    mem.inclusion_proof(idx, s).unwrap()
                );
            }
            for old in [1, s / 2 + 1, s - 1] {
                if old >= 1 && old <= s {
                    assert_eq!(
                        merkle::consistency_proof(&src, old, s).unwrap(),
                        mem.consistency_proof(old, s).unwrap()
                    );
                }
            }
            // Rebuilding from the partial tiles gives the same frontier.
            let parts = (0..fr.levels()).map(|l| fr.partial(l).to_vec()).collect();
            assert_eq!(Frontier::from_partials(s, parts).unwrap(), fr);
        }
        assert!(Frontier::from_partials(70_000, vec![vec![Hash::empty(); 3]]).is_err());
        assert!(Frontier::from_partials(70_000, vec![]).is_err());
    }
}
