//! The trace index of one dataset version: its records' tokens in record order, each followed
//! by a separator, and the suffix array of that token stream, in one memory-mapped file.
//!
//! ```text
//! offset 0     header, 4096 bytes (below)
//! 4096         tokens    u16 LE × tokens      every record's tokens, then SEPARATOR
//! (8-aligned)  starts    u64 LE × records     where each record's tokens begin
//!              suffixes  u32 LE × tokens      the suffix array (libsais16)
//! ```
//!
//! Header: magic `AGTRACE1`, format u32 = 1, vocabulary size u32, records u64, tokens u64, the
//! dataset's record-tree root (32), the tokenizer's model sha256 (32), the body's sha256 (32),
//! the dataset label (`name@version`, u16 length + bytes, at most [`MAX_LABEL`]), zeros, and
//! the sha256 of the first 4064 bytes in the last 32. Opening an index checks the header's own
//! digest, that it names the version asked for (label, record count and record root) and that
//! the file has exactly the length the header implies; the body's digest is checked on demand
//! ([`Index::check_body`]). A damaged body cannot make a false claim: every span the index
//! finds is confirmed against the record's text before it is reported, and the client checks
//! each record's inclusion proof.
//!
//! Size: 6 bytes per token (2 for the token, 4 for its suffix) plus 8 per record. Tokens are
//! 16-bit: a tokenizer with more than 65,535 tokens is refused; a version of more than
//! [`MAX_TOKENS`] tokens (about 8 GB of English text) too.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use sha2::{Digest, Sha256};

/// First bytes of an index file.
pub const MAGIC: &[u8; 8] = b"AGTRACE1";
/// The format this code writes and reads.
pub const FORMAT: u32 = 1;
/// Bytes of the header.
pub const HEADER_BYTES: usize = 4096;
/// Ends every record's tokens; larger than any token, so no match crosses a record boundary.
pub const SEPARATOR: u16 = u16::MAX;
/// Most tokens (separators included) one index holds: libsais16's 32-bit limit.
pub const MAX_TOKENS: u64 = i32::MAX as u64;
/// Longest dataset label in a header.
pub const MAX_LABEL: usize = 256;

const DIGESTS_AT: usize = 36;
const LABEL_AT: usize = DIGESTS_AT + 96;
const SEAL_AT: usize = HEADER_BYTES - 32;

/// Why an index cannot be built or used.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The header is not one this code wrote (or was damaged).
    #[error("not a trace index: {0}")]
    Header(String),
    /// The file is shorter or longer than its header says.
    #[error(
        "the trace index is {actual} bytes but its header implies {expected}: truncated or damaged"
    )]
    Length {
        /// What the header implies.
        expected: u64,
        /// What is on disk.
        actual: u64,
    },
    /// The index was built for another dataset version (or before records were removed).
    #[error("the trace index was built for {built} and does not match {wanted}")]
    Stale {
        /// What the header names.
        built: String,
        /// The version asked for.
        wanted: String,
    },
    /// The body's digest does not match the header.
    #[error("the trace index's body does not match its digest: damaged")]
    Body,
    /// The input cannot be indexed.
    #[error("{0}")]
    Input(String),
    /// libsais failed.
    #[error("suffix array construction failed (libsais16 returned {0})")]
    Sais(i32),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an index says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// `name@version` of the dataset version.
    pub dataset: String,
    /// Its record-tree root.
    pub record_root: [u8; 32],
    /// Its records.
    pub records: u64,
    /// SHA-256 of the model file whose tokenizer made the tokens.
    pub tokenizer: [u8; 32],
    /// That tokenizer's vocabulary size.
    pub n_vocab: u32,
    /// Tokens in the stream, one separator per record included.
    pub tokens: u64,
    /// SHA-256 of everything after the header.
    pub body_sha256: [u8; 32],
}

/// Where the sections are, from a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Offset of the tokens.
    pub tokens: u64,
    /// Offset of the record starts.
    pub starts: u64,
    /// Offset of the suffix array.
    pub suffixes: u64,
    /// The file's length.
    pub len: u64,
}

impl Header {
    /// The header as written.
    pub fn encode(&self) -> Result<Vec<u8>, IndexError> {
        if self.dataset.len() > MAX_LABEL {
            return Err(IndexError::Input(format!(
                "dataset label of {} bytes (at most {MAX_LABEL})",
                self.dataset.len()
            )));
        }
        let mut h = vec![0u8; HEADER_BYTES];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
        h[12..16].copy_from_slice(&self.n_vocab.to_le_bytes());
        h[16..24].copy_from_slice(&self.records.to_le_bytes());
        h[24..32].copy_from_slice(&self.tokens.to_le_bytes());
        // 32..36 reserved (zero)
        h[DIGESTS_AT..DIGESTS_AT + 32].copy_from_slice(&self.record_root);
        h[DIGESTS_AT + 32..DIGESTS_AT + 64].copy_from_slice(&self.tokenizer);
        h[DIGESTS_AT + 64..DIGESTS_AT + 96].copy_from_slice(&self.body_sha256);
        let label = self.dataset.as_bytes();
        h[LABEL_AT..LABEL_AT + 2].copy_from_slice(&(label.len() as u16).to_le_bytes());
        h[LABEL_AT + 2..LABEL_AT + 2 + label.len()].copy_from_slice(label);
        let seal: [u8; 32] = Sha256::digest(&h[..SEAL_AT]).into();
        h[SEAL_AT..].copy_from_slice(&seal);
        Ok(h)
    }

    /// Parses and checks a header (the first [`HEADER_BYTES`] of an index file).
    pub fn parse(h: &[u8]) -> Result<Header, IndexError> {
        let bad = |s: &str| IndexError::Header(s.to_string());
        if h.len() < HEADER_BYTES {
            return Err(bad("shorter than a header"));
        }
        let h = &h[..HEADER_BYTES];
        if &h[..8] != MAGIC {
            return Err(bad("wrong magic"));
        }
        let seal: [u8; 32] = Sha256::digest(&h[..SEAL_AT]).into();
        if h[SEAL_AT..] != seal {
            return Err(bad("the header's digest does not match (damaged)"));
        }
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let d32 = |i: usize| {
            let mut b = [0u8; 32];
            b.copy_from_slice(&h[i..i + 32]);
            b
        };
        let format = u32_at(8);
        if format != FORMAT {
            return Err(IndexError::Header(format!(
                "format {format} (this agora reads {FORMAT}): rebuild it"
            )));
        }
        let n_vocab = u32_at(12);
        let records = u64_at(16);
        let tokens = u64_at(24);
        if n_vocab == 0 || n_vocab > u32::from(SEPARATOR) {
            return Err(bad("vocabulary size out of range"));
        }
        if tokens > MAX_TOKENS || records > tokens {
            return Err(bad("token or record count out of range"));
        }
        let len = usize::from(u16::from_le_bytes([h[LABEL_AT], h[LABEL_AT + 1]]));
        if len > MAX_LABEL {
            return Err(bad("label too long"));
        }
        let dataset = std::str::from_utf8(&h[LABEL_AT + 2..LABEL_AT + 2 + len])
            .map_err(|_| bad("label is not UTF-8"))?
            .to_string();
        let header = Header {
            dataset,
            record_root: d32(DIGESTS_AT),
            tokenizer: d32(DIGESTS_AT + 32),
            body_sha256: d32(DIGESTS_AT + 64),
            records,
            n_vocab,
            tokens,
        };
        header.layout()?;
        Ok(header)
    }

    /// Where the sections are.
    pub fn layout(&self) -> Result<Layout, IndexError> {
        let over = || IndexError::Header("sizes overflow".into());
        let tokens = HEADER_BYTES as u64;
        let starts = self
            .tokens
            .checked_mul(2)
            .and_then(|b| b.checked_add(tokens))
            .map(|e| e.next_multiple_of(8))
            .ok_or_else(over)?;
        let suffixes = self
            .records
            .checked_mul(8)
            .and_then(|b| b.checked_add(starts))
            .ok_or_else(over)?;
        let len = self
            .tokens
            .checked_mul(4)
            .and_then(|b| b.checked_add(suffixes))
            .ok_or_else(over)?;
        Ok(Layout {
            tokens,
            starts,
            suffixes,
            len,
        })
    }
}

/// What an index must have been built for.
#[derive(Clone, Debug)]
pub struct Expect {
    /// `name@version`.
    pub dataset: String,
    /// The version's record count.
    pub records: u64,
    /// The version's record root.
    pub record_root: [u8; 32],
}

/// An open index.
pub struct Index {
    header: Header,
    layout: Layout,
    map: Mmap,
    path: PathBuf,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("header", &self.header)
            .field("path", &self.path)
            .finish()
    }
}

impl Index {
    /// Opens the index at `path`, checking it was built for `expect`.
    pub fn open(path: &Path, expect: &Expect) -> Result<Index, IndexError> {
        let mut f = File::open(path).map_err(io(path))?;
        let actual = f.metadata().map_err(io(path))?.len();
        let mut h = vec![0u8; HEADER_BYTES];
        if actual < HEADER_BYTES as u64 {
            return Err(IndexError::Length {
                expected: HEADER_BYTES as u64,
                actual,
            });
        }
        f.read_exact(&mut h).map_err(io(path))?;
        let header = Header::parse(&h)?;
        if header.dataset != expect.dataset
            || header.records != expect.records
            || header.record_root != expect.record_root
        {
            return Err(IndexError::Stale {
                built: format!(
                    "{} ({} records, root {})",
                    header.dataset,
                    header.records,
                    &hex::encode(header.record_root)[..16]
                ),
                wanted: format!(
                    "{} ({} records, root {})",
                    expect.dataset,
                    expect.records,
                    &hex::encode(expect.record_root)[..16]
                ),
            });
        }
        let layout = header.layout()?;
        if actual != layout.len {
            return Err(IndexError::Length {
                expected: layout.len,
                actual,
            });
        }
        // SAFETY: the file is opened read-only and index files are only ever replaced by
        // rename, never written in place; a concurrent truncation by another program could
        // still fault, as with any mapped file.
        let map = unsafe { Mmap::map(&f) }.map_err(io(path))?;
        Ok(Index {
            header,
            layout,
            map,
            path: path.to_path_buf(),
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Tokens in the stream (separators included).
    pub fn len(&self) -> u64 {
        self.header.tokens
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.header.tokens == 0
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.layout.len
    }

    /// Token `i` of the stream (`i < len()`).
    #[inline]
    pub fn token(&self, i: u64) -> u16 {
        let at = (self.layout.tokens + 2 * i) as usize;
        match self.map.get(at..at + 2) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]),
            None => SEPARATOR,
        }
    }

    /// Where the suffix of rank `j` starts (`j < len()`).
    #[inline]
    pub fn suffix(&self, j: u64) -> u64 {
        let at = (self.layout.suffixes + 4 * j) as usize;
        match self.map.get(at..at + 4) {
            Some(b) => u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            None => u64::MAX,
        }
    }

    /// Where record `r`'s tokens begin.
    pub fn start(&self, r: u64) -> u64 {
        let at = (self.layout.starts + 8 * r) as usize;
        match self.map.get(at..at + 8) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            }
            None => u64::MAX,
        }
    }

    /// The record holding stream position `pos`, and the position of its first token.
    pub fn record_of(&self, pos: u64) -> Option<(u64, u64)> {
        let (mut lo, mut hi) = (0u64, self.header.records);
        // the last record whose start is ≤ pos
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.start(mid) <= pos {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return None;
        }
        Some((lo - 1, self.start(lo - 1)))
    }

    /// Checks the body against the header's digest (reads the whole file).
    pub fn check_body(&self) -> Result<(), IndexError> {
        let d: [u8; 32] = Sha256::digest(&self.map[HEADER_BYTES..]).into();
        if d == self.header.body_sha256 {
            Ok(())
        } else {
            Err(IndexError::Body)
        }
    }
}

/// Builds an index in memory (6 bytes per token: the tokens and their suffix array) and
/// writes it atomically.
pub struct Builder {
    tokens: Vec<u16>,
    starts: Vec<u64>,
    n_vocab: u32,
}

impl Builder {
    /// A builder for tokens of a vocabulary of `n_vocab`.
    pub fn new(n_vocab: u32) -> Result<Builder, IndexError> {
        if n_vocab == 0 || n_vocab > u32::from(SEPARATOR) {
            return Err(IndexError::Input(format!(
                "a tokenizer of {n_vocab} tokens cannot be indexed (16-bit tokens: at most {})",
                SEPARATOR
            )));
        }
        Ok(Builder {
            tokens: Vec::new(),
            starts: Vec::new(),
            n_vocab,
        })
    }

    /// Adds the next record's tokens.
    pub fn push(&mut self, record: &[u32]) -> Result<(), IndexError> {
        let total = self.tokens.len() as u64 + record.len() as u64 + 1;
        if total > MAX_TOKENS {
            return Err(IndexError::Input(format!(
                "more than {MAX_TOKENS} tokens: too large for one trace index"
            )));
        }
        self.starts.push(self.tokens.len() as u64);
        for &t in record {
            if t >= self.n_vocab {
                return Err(IndexError::Input(format!(
                    "token {t} outside the vocabulary of {}",
                    self.n_vocab
                )));
            }
            self.tokens.push(t as u16);
        }
        self.tokens.push(SEPARATOR);
        Ok(())
    }

    /// Records pushed so far.
    pub fn records(&self) -> u64 {
        self.starts.len() as u64
    }

    /// Tokens pushed so far (separators included).
    pub fn tokens(&self) -> u64 {
        self.tokens.len() as u64
    }

    /// Sorts the suffixes and writes the index to `path`; see [`Builder::finish_timed`].
    pub fn finish(
        self,
        path: &Path,
        dataset: &str,
        record_root: [u8; 32],
        tokenizer: [u8; 32],
    ) -> Result<Header, IndexError> {
        self.finish_timed(path, dataset, record_root, tokenizer)
            .map(|(h, _)| h)
    }

    /// Sorts the suffixes and writes the index to `path` (through a temporary file beside it,
    /// synced and renamed: an interrupted build leaves no index). `dataset`, `record_root` and
    /// `tokenizer` go into the header. Also returns the seconds spent sorting and writing.
    pub fn finish_timed(
        self,
        path: &Path,
        dataset: &str,
        record_root: [u8; 32],
        tokenizer: [u8; 32],
    ) -> Result<(Header, [f64; 2]), IndexError> {
        let t0 = std::time::Instant::now();
        let n = self.tokens.len();
        let mut sa = vec![0i32; n];
        if n > 0 {
            let n32 = i32::try_from(n).map_err(|_| IndexError::Input("too many tokens".into()))?;
            // SAFETY: `tokens` holds n u16s and `sa` n i32s; fs = 0 extra space; no freq table.
            let rc = unsafe {
                libsais_sys::libsais16::libsais16(
                    self.tokens.as_ptr(),
                    sa.as_mut_ptr(),
                    n32,
                    0,
                    std::ptr::null_mut(),
                )
            };
            if rc != 0 {
                return Err(IndexError::Sais(rc));
            }
        }
        let sorted = t0.elapsed().as_secs_f64();
        let mut header = Header {
            dataset: dataset.to_string(),
            record_root,
            records: self.starts.len() as u64,
            tokenizer,
            n_vocab: self.n_vocab,
            tokens: n as u64,
            body_sha256: [0; 32],
        };
        let layout = header.layout()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_else(|| "trace.idx".into())
        ));
        let f = File::create(&tmp).map_err(io(&tmp))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut body = Sha256::new();
        let mut put = |w: &mut BufWriter<File>, b: &[u8]| -> Result<(), IndexError> {
            body.update(b);
            w.write_all(b).map_err(io(&tmp))
        };
        w.write_all(&vec![0u8; HEADER_BYTES]).map_err(io(&tmp))?;
        let mut buf = Vec::with_capacity(1 << 16);
        for chunk in self.tokens.chunks(1 << 15) {
            buf.clear();
            for t in chunk {
                buf.extend_from_slice(&t.to_le_bytes());
            }
            put(&mut w, &buf)?;
        }
        let pad = (layout.starts - layout.tokens - 2 * n as u64) as usize;
        put(&mut w, &vec![0u8; pad])?;
        for chunk in self.starts.chunks(1 << 13) {
            buf.clear();
            for s in chunk {
                buf.extend_from_slice(&s.to_le_bytes());
            }
            put(&mut w, &buf)?;
        }
        for chunk in sa.chunks(1 << 14) {
            buf.clear();
            for s in chunk {
                buf.extend_from_slice(&(*s as u32).to_le_bytes());
            }
            put(&mut w, &buf)?;
        }
        header.body_sha256 = body.finalize().into();
        w.seek(SeekFrom::Start(0)).map_err(io(&tmp))?;
        w.write_all(&header.encode()?).map_err(io(&tmp))?;
        let f = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io(path))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok((header, [sorted, t0.elapsed().as_secs_f64() - sorted]))
    }
}
