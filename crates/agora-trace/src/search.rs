//! The maximal verbatim spans of a text in an index (OLMoTrace's rule): for each token
//! position of the text, the longest run of tokens from there that occurs somewhere in the
//! dataset; a span is kept when no span starting earlier covers it, it is at least
//! `min_tokens` long and it occurs at most `max_count` times (longer-but-frequent runs are
//! boilerplate, not a source).
//!
//! Cost: the longest match from position i+1 is at least the one from i minus its first token,
//! so each position starts from a binary search for what is already known to match (one random
//! read and a sequential scan per step) and extends token by token, each extension narrowing
//! the suffix range with two binary searches. A 500-token text costs some 10^5 reads of the
//! mapped index, whatever the dataset's size beyond its logarithm.

use crate::index::{Index, SEPARATOR};

/// Longest span looked for, in tokens (longer matches are cut into spans of this length).
pub const MAX_SPAN_TOKENS: usize = 4096;

/// What counts as a span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Shortest span kept, in tokens.
    pub min_tokens: usize,
    /// Spans occurring more often than this are not kept.
    pub max_count: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            min_tokens: 8,
            max_count: 10,
        }
    }
}

/// A maximal span of the query found in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Its first token in the query.
    pub start: usize,
    /// Its length in tokens.
    pub len: usize,
    /// Its suffix-array range: `lo..hi` are the ranks of the suffixes starting with it.
    pub lo: u64,
    /// End of the range.
    pub hi: u64,
}

impl Span {
    /// How many times it occurs in the dataset.
    pub fn count(&self) -> u64 {
        self.hi - self.lo
    }
}

/// The token at `pos + k` of the stream, as an i32 (-1 past the end, which sorts first).
#[inline]
fn at(ix: &Index, pos: u64, k: usize) -> i32 {
    let p = pos + k as u64;
    if p >= ix.len() {
        -1
    } else {
        i32::from(ix.token(p))
    }
}

/// Narrows `lo..hi` (suffixes sharing their first `k` tokens) to those whose token `k` is `c`.
fn narrow(ix: &Index, lo: u64, hi: u64, k: usize, c: i32) -> (u64, u64) {
    let key = |j: u64| at(ix, ix.suffix(j), k);
    let (mut a, mut b) = (lo, hi);
    while a < b {
        let m = a + (b - a) / 2;
        if key(m) < c {
            a = m + 1;
        } else {
            b = m;
        }
    }
    let first = a;
    let mut b = hi;
    while a < b {
        let m = a + (b - a) / 2;
        if key(m) <= c {
            a = m + 1;
        } else {
            b = m;
        }
    }
    (first, a)
}

/// Compares the suffix at `pos` with `seq`, a prefix match counting as equal.
fn cmp(ix: &Index, pos: u64, seq: &[i32]) -> std::cmp::Ordering {
    for (k, &c) in seq.iter().enumerate() {
        let t = at(ix, pos, k);
        if t != c {
            return t.cmp(&c);
        }
    }
    std::cmp::Ordering::Equal
}

/// The range of suffixes starting with `seq`.
fn range(ix: &Index, seq: &[i32]) -> (u64, u64) {
    use std::cmp::Ordering::{Greater, Less};
    let (mut a, mut b) = (0, ix.len());
    while a < b {
        let m = a + (b - a) / 2;
        if cmp(ix, ix.suffix(m), seq) == Less {
            a = m + 1;
        } else {
            b = m;
        }
    }
    let first = a;
    let mut b = ix.len();
    while a < b {
        let m = a + (b - a) / 2;
        if cmp(ix, ix.suffix(m), seq) != Greater {
            a = m + 1;
        } else {
            b = m;
        }
    }
    (first, a)
}

/// The maximal spans of `query` (token ids of the index's tokenizer) in `ix`, in query order.
pub fn maximal_spans(ix: &Index, query: &[u32], opts: Options) -> Vec<Span> {
    // Tokens the index cannot hold never match (-2 is below everything stored).
    let q: Vec<i32> = query
        .iter()
        .map(|&t| {
            if t < u32::from(SEPARATOR) {
                t as i32
            } else {
                -2
            }
        })
        .collect();
    let mut out = Vec::new();
    let mut prev_end = 0usize; // end of the longest match from the previous position
    let mut known = 0usize; // tokens from here known to occur
    for i in 0..q.len() {
        let (mut lo, mut hi) = if known > 0 {
            range(ix, &q[i..i + known])
        } else {
            (0, ix.len())
        };
        let mut k = known;
        if lo >= hi {
            // cannot happen for a sound index; start over from nothing
            (lo, hi, k) = (0, ix.len(), 0);
        }
        while i + k < q.len() && k < MAX_SPAN_TOKENS {
            let (a, b) = narrow(ix, lo, hi, k, q[i + k]);
            if a >= b {
                break;
            }
            (lo, hi) = (a, b);
            k += 1;
        }
        let end = i + k;
        if k > 0 && end > prev_end && k >= opts.min_tokens.max(1) && hi - lo <= opts.max_count {
            out.push(Span {
                start: i,
                len: k,
                lo,
                hi,
            });
        }
        prev_end = prev_end.max(end);
        known = k.saturating_sub(1);
    }
    out
}

/// Where a span occurs: (record, offset of the span's first token in the record), at most
/// `limit` of them, in suffix order.
pub fn occurrences(ix: &Index, span: &Span, limit: usize) -> Vec<(u64, u64)> {
    (span.lo..span.hi)
        .take(limit)
        .filter_map(|j| {
            let pos = ix.suffix(j);
            ix.record_of(pos).map(|(r, start)| (r, pos - start))
        })
        .collect()
}
