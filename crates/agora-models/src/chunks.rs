//! Model files cut into chunks that can be checked one by one, for transfers between peers.
//!
//! A file of `size` bytes is cut into 1 MiB chunks (the last one shorter); its *chunk list* is
//! `size` (u64, little-endian) followed by the SHA-256 of every chunk in order, and its *chunk
//! root* is the SHA-256 of that list. A catalog entry and a model's statement in the log carry
//! the root beside the file's SHA-256, so a downloader that knows the root checks the list a
//! peer sends against it and then every chunk against the list before writing it: a peer that
//! sends other bytes under the right name is caught at its first bad chunk, not after the whole
//! file. The whole file's SHA-256 is still checked before it enters the store.
//!
//! A one-level tree of 1 MiB leaves rather than BLAKE3/BAO's 1 KiB tree: peers exchange whole
//! chunks, so nothing finer than a chunk is ever checked, and the list of a 250 MB model is 8 KB
//! (a 256 GiB model's, the largest accepted, 8 MiB: one frame). SHA-256 runs at the CPU's SHA
//! extensions' speed and is already in the build.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Bytes per chunk (the last chunk of a file may be shorter).
pub const CHUNK: u64 = 1 << 20;

/// Most chunks a file may have: 256 GiB. Bounds the list a peer may send (8 MiB).
pub const MAX_CHUNKS: u64 = 1 << 18;

/// Why a chunk list or a chunk is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("a chunk list of {0} bytes is not 8 bytes of size and whole 32-byte hashes")]
    Length(usize),
    #[error("a chunk list of {hashes} hashes does not fit a file of {size} bytes")]
    Count { size: u64, hashes: u64 },
    #[error("a file of {0} bytes is larger than the 256 GiB a chunk list can describe")]
    TooLarge(u64),
    #[error("the chunk list's root is {actual}, not the expected {expected}")]
    Root { expected: String, actual: String },
    #[error("chunk {0} is not in the list")]
    Index(u64),
    #[error("chunk {index} is {actual} bytes, not {expected}")]
    ChunkLength {
        index: u64,
        expected: u64,
        actual: u64,
    },
    #[error("chunk {0}'s bytes do not hash to the list's entry")]
    ChunkHash(u64),
}

/// A file's size and the SHA-256 of each of its chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkList {
    size: u64,
    hashes: Vec<[u8; 32]>,
}

/// Chunks a file of `size` bytes has.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

impl ChunkList {
    /// The list of everything `r` yields (`size` bytes are expected: fewer or more is an error).
    pub fn of_reader(mut r: impl Read, size: u64) -> io::Result<Self> {
        if chunk_count(size) > MAX_CHUNKS {
            return Err(io::Error::other(ChunkError::TooLarge(size)));
        }
        let mut hashes = Vec::with_capacity(chunk_count(size) as usize);
        let mut buf = vec![0u8; CHUNK as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK) as usize;
            r.read_exact(&mut buf[..n])?;
            hashes.push(Sha256::digest(&buf[..n]).into());
            left -= n as u64;
        }
        if r.read(&mut [0u8; 1])? != 0 {
            return Err(io::Error::other(
                "the file grew while its chunks were hashed",
            ));
        }
        Ok(Self { size, hashes })
    }

    /// The list of the file at `path`.
    pub fn of_file(path: &Path) -> io::Result<Self> {
        let f = File::open(path)?;
        let size = f.metadata()?.len();
        Self::of_reader(io::BufReader::with_capacity(CHUNK as usize, f), size)
    }

    /// The list's bytes: size (u64 LE), then each chunk's SHA-256.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.hashes.len());
        out.extend_from_slice(&self.size.to_le_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Parses a list (from a peer: bounded, and consistent with its size).
    pub fn decode(bytes: &[u8]) -> Result<Self, ChunkError> {
        if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(32) {
            return Err(ChunkError::Length(bytes.len()));
        }
        let (size, rest) = bytes.split_at(8);
        let mut s = [0u8; 8];
        s.copy_from_slice(size);
        let size = u64::from_le_bytes(s);
        if chunk_count(size) > MAX_CHUNKS {
            return Err(ChunkError::TooLarge(size));
        }
        let hashes: Vec<[u8; 32]> = rest
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        if hashes.len() as u64 != chunk_count(size) {
            return Err(ChunkError::Count {
                size,
                hashes: hashes.len() as u64,
            });
        }
        Ok(Self { size, hashes })
    }

    /// Parses a list and checks it against the expected root (lowercase hex).
    pub fn decode_checked(bytes: &[u8], root: &str) -> Result<Self, ChunkError> {
        let actual = hex::encode(Sha256::digest(bytes));
        if actual != root {
            return Err(ChunkError::Root {
                expected: root.into(),
                actual,
            });
        }
        Self::decode(bytes)
    }

    /// The root: SHA-256 of [`Self::encode`], lowercase hex.
    pub fn root(&self) -> String {
        hex::encode(Sha256::digest(self.encode()))
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many chunks the file has.
    pub fn count(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// Offset and length of chunk `index` in the file.
    pub fn range(&self, index: u64) -> Result<(u64, u64), ChunkError> {
        if index >= self.count() {
            return Err(ChunkError::Index(index));
        }
        let offset = index * CHUNK;
        Ok((offset, (self.size - offset).min(CHUNK)))
    }

    /// Checks that `data` is chunk `index`.
    pub fn check(&self, index: u64, data: &[u8]) -> Result<(), ChunkError> {
        let (_, len) = self.range(index)?;
        if data.len() as u64 != len {
            return Err(ChunkError::ChunkLength {
                index,
                expected: len,
                actual: data.len() as u64,
            });
        }
        if <[u8; 32]>::from(Sha256::digest(data)) != self.hashes[index as usize] {
            return Err(ChunkError::ChunkHash(index));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn a_list_round_trips_and_checks_each_chunk() {
        let bytes = data(2 * CHUNK as usize + 123);
        let list = ChunkList::of_reader(&bytes[..], bytes.len() as u64).unwrap();
        assert_eq!(list.count(), 3);
        assert_eq!(list.range(2).unwrap(), (2 * CHUNK, 123));
        let enc = list.encode();
        assert_eq!(enc.len(), 8 + 3 * 32);
        let back = ChunkList::decode_checked(&enc, &list.root()).unwrap();
        assert_eq!(back, list);
        for i in 0..3 {
            let (o, l) = list.range(i).unwrap();
            list.check(i, &bytes[o as usize..(o + l) as usize]).unwrap();
        }
        let mut bad = bytes[..CHUNK as usize].to_vec();
        bad[7] ^= 1;
        assert_eq!(list.check(0, &bad), Err(ChunkError::ChunkHash(0)));
        assert!(matches!(
            list.check(2, &bytes[..124]),
            Err(ChunkError::ChunkLength { .. })
        ));
        assert_eq!(list.check(3, &[]), Err(ChunkError::Index(3)));
        // Another list under the expected root is refused.
        let other = ChunkList::of_reader(&bad[..], bad.len() as u64).unwrap();
        assert!(matches!(
            ChunkList::decode_checked(&other.encode(), &list.root()),
            Err(ChunkError::Root { .. })
        ));
    }

    #[test]
    fn malformed_lists_are_refused() {
        assert_eq!(ChunkList::decode(&[1, 2]), Err(ChunkError::Length(2)));
        assert_eq!(ChunkList::decode(&[0; 8 + 31]), Err(ChunkError::Length(39)));
        // Size says two chunks, one hash given.
        let mut b = (CHUNK + 1).to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 32]);
        assert_eq!(
            ChunkList::decode(&b),
            Err(ChunkError::Count {
                size: CHUNK + 1,
                hashes: 1
            })
        );
        assert_eq!(
            ChunkList::decode(&u64::MAX.to_le_bytes()),
            Err(ChunkError::TooLarge(u64::MAX))
        );
        // A reader shorter or longer than announced is an error.
        assert!(ChunkList::of_reader(&data(10)[..], 11).is_err());
        assert!(ChunkList::of_reader(&data(10)[..], 9).is_err());
        assert_eq!(ChunkList::of_reader(&[][..], 0).unwrap().count(), 0);
    }
}
