//! Where did the model get this text? (OLMoTrace's question, answered with proofs.)
//!
//! - [`index`]: one file per dataset version, the records' tokens and their suffix array
//!   (libsais), memory-mapped; 6 bytes per token.
//! - [`search`]: the maximal verbatim spans of a text in an index.
//! - [`report`]: the `agora-trace/1` answer, its offline check and the attribution hook.
//!
//! Tokens are the model's (a [`Tokenize`] given by the caller: this crate does not reach
//! llama.cpp), applied word by word ([`Words`]), so a span is close to what the model saw, and
//! the index is 16-bit.

pub mod index;
pub mod report;
pub mod search;

pub use index::{Builder, Expect, Header, Index, IndexError};
pub use search::{Options, Span};

/// A tokenizer: the model's, or a stand-in in tests.
pub trait Tokenize: Send + Sync {
    /// The tokens of `text` as plain text (no BOS, no special tokens).
    fn tokenize(&self, text: &str) -> Vec<u32>;
    /// The bytes `token` stands for.
    fn piece(&self, token: u32) -> Vec<u8>;
    /// Vocabulary size.
    fn n_vocab(&self) -> u32;
}

/// The tokenization trace indexes use: the text split into words as GPT-2's pre-tokenizer
/// splits it — runs of letters, of digits, of other visible characters, and of whitespace, a
/// single space before a run belonging to that run, runs cut every [`MAX_WORD`] bytes — and
/// each word tokenized alone by the model's tokenizer, memoized (words repeat: a corpus
/// tokenizes at the speed of a hash lookup, not of BPE). Index and query are tokenized the same
/// way, which is all matching needs; for byte-level BPE tokenizers (GPT-2's, SmolLM2's) the
/// tokens are the model's own almost everywhere.
pub struct Words<T> {
    inner: T,
    memo: Vec<Memo>,
}

/// One shard of [`Words`]' memo: words and their tokens.
type Memo = std::sync::Mutex<std::collections::HashMap<Box<str>, Box<[u32]>>>;

/// Longest word tokenized as one (longer runs are cut at a character boundary).
pub const MAX_WORD: usize = 64;
/// Words memoized per shard (64 shards); beyond, words are tokenized without being kept.
const MEMO_PER_SHARD: usize = 1 << 15;

impl<T: Tokenize> Words<T> {
    /// `inner`, word by word.
    pub fn new(inner: T) -> Self {
        Words {
            inner,
            memo: (0..64).map(|_| Default::default()).collect(),
        }
    }

    fn word(&self, w: &str, out: &mut Vec<u32>) {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h =
            BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(w);
        let shard = &self.memo[(h % 64) as usize];
        if let Some(t) = shard.lock().unwrap_or_else(|p| p.into_inner()).get(w) {
            out.extend_from_slice(t);
            return;
        }
        let t = self.inner.tokenize(w);
        out.extend_from_slice(&t);
        let mut m = shard.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() < MEMO_PER_SHARD {
            m.insert(w.into(), t.into_boxed_slice());
        }
    }
}

/// The class of a character for word splitting.
fn class(c: char) -> u8 {
    if c.is_alphabetic() {
        0
    } else if c.is_numeric() {
        1
    } else if c.is_whitespace() {
        2
    } else {
        3
    }
}

/// The words of `text` (see [`Words`]): non-empty, and they concatenate to `text`.
pub fn split_words(text: &str) -> Vec<&str> {
    let at = |p: usize| text.get(p..).and_then(|s| s.chars().next());
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(c) = at(pos) {
        let start = pos;
        let mut p = pos + c.len_utf8();
        // A single space before a run that is not whitespace belongs to that run.
        let k = match at(p) {
            Some(n) if c == ' ' && class(n) != 2 => {
                p += n.len_utf8();
                class(n)
            }
            _ => class(c),
        };
        while let Some(n) = at(p) {
            if class(n) != k || p - start >= MAX_WORD {
                break;
            }
            // A whitespace run leaves its last space to the word after it.
            if k == 2 && n == ' ' && at(p + 1).is_some_and(|m| class(m) != 2) {
                break;
            }
            p += n.len_utf8();
        }
        out.push(&text[start..p]);
        pos = p;
    }
    out
}

impl<T: Tokenize> Tokenize for Words<T> {
    fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        for w in split_words(text) {
            self.word(w, &mut out);
        }
        out
    }
    fn piece(&self, token: u32) -> Vec<u8> {
        self.inner.piece(token)
    }
    fn n_vocab(&self) -> u32 {
        self.inner.n_vocab()
    }
}

/// Tokenizes `texts` on `threads` threads; the result is in order and does not depend on the
/// thread count.
pub fn tokenize_all(tok: &dyn Tokenize, texts: &[String], threads: usize) -> Vec<Vec<u32>> {
    let threads = threads.clamp(1, 64).min(texts.len().max(1));
    if threads == 1 {
        return texts.iter().map(|t| tok.tokenize(t)).collect();
    }
    let per = texts.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = texts
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|t| tok.tokenize(t))
                        .collect::<Vec<Vec<u32>>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Vec<Vec<u32>>>()
    })
}

/// A span of a text found in an index, at its byte offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Byte offset of its start in the text.
    pub start: usize,
    /// Byte offset of its end.
    pub end: usize,
    /// The text there.
    pub text: String,
    /// Its length in tokens.
    pub tokens: usize,
    /// How many times it occurs.
    pub count: u64,
    /// Where: (record index, token offset in the record), at most `max_count`.
    pub occurrences: Vec<(u64, u64)>,
}

/// The maximal spans of `text` in `ix` (see [`search`]), at byte offsets of `text` (trimmed
/// to whole characters).
pub fn find(ix: &Index, tok: &dyn Tokenize, text: &str, opts: Options) -> Vec<Found> {
    let q = tok.tokenize(text);
    let pieces: Vec<Vec<u8>> = q.iter().map(|&t| tok.piece(t)).collect();
    // Byte offset of each token in the concatenated pieces.
    let mut offs = Vec::with_capacity(q.len() + 1);
    let mut at = 0usize;
    for p in &pieces {
        offs.push(at);
        at += p.len();
    }
    offs.push(at);
    let joined: Vec<u8> = pieces.concat();
    // The pieces spell the text, or the text after a space the tokenizer put in front.
    let shift = if joined == text.as_bytes() {
        Some(0)
    } else if joined.first() == Some(&b' ') && &joined[1..] == text.as_bytes() {
        Some(1)
    } else {
        None
    };
    let mut out = Vec::new();
    for span in search::maximal_spans(ix, &q, opts) {
        let (mut a, mut b) = match shift {
            Some(s) => (
                offs[span.start].saturating_sub(s),
                offs[span.start + span.len].saturating_sub(s),
            ),
            None => {
                // Pieces that do not spell the text: find the span's bytes in it.
                let bytes = &joined[offs[span.start]..offs[span.start + span.len]];
                let Ok(s) = std::str::from_utf8(bytes) else {
                    continue;
                };
                let Some(a) = text.find(s) else { continue };
                (a, a + s.len())
            }
        };
        b = b.min(text.len());
        while a < b && !text.is_char_boundary(a) {
            a += 1;
        }
        while b > a && !text.is_char_boundary(b) {
            b -= 1;
        }
        if a >= b {
            continue;
        }
        out.push(Found {
            start: a,
            end: b,
            text: text[a..b].to_string(),
            tokens: span.len,
            count: span.count(),
            occurrences: search::occurrences(ix, &span, opts.max_count as usize),
        });
    }
    out
}

#[cfg(test)]
mod tests;
