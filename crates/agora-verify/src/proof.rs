//! The activation proof: compact commitments to the final-norm hidden states of a generation.
//!
//! Token `i` of a generation was chosen from the logits at position `p_i = prompt_len - 1 + i`;
//! `h_i` is the final-norm hidden state there (so `h_0` is that of the last prompt token). The
//! proof holds:
//!
//! - a **prompt commitment**: the top-`k` entries (by magnitude) of `h_0`, which depends on the
//!   whole prompt;
//! - one **chunk commitment** per `chunk` consecutive tokens: the top-`k` entries of the mean of
//!   their `h_i`.
//!
//! A commitment is `k` pairs (dimension index, value as IEEE half), indices ascending.
//!
//! ## Byte format, version 1 (little-endian)
//!
//! ```text
//! offset  size  field
//! 0       4     magic "AGPF"
//! 4       1     version = 1
//! 5       2     chunk   tokens per chunk commitment (1..=4096)
//! 7       2     k       entries per commitment (1..=n_embd, ≤ 1024)
//! 9       2     n_embd  width of the hidden state (1..=65535)
//! 11      4     n_tokens generated tokens covered (≥ 1)
//! 15      …     1 + ceil(n_tokens / chunk) commitments, each k × (u16 index, u16 half)
//! ```
//!
//! Indices must be strictly ascending and below `n_embd`; values must be finite. Anything else —
//! wrong magic, unknown version, a length that does not match the header, trailing bytes — is a
//! precise [`ProofError`]. With the defaults (`chunk` 16, `k` 16) a proof costs 4 bytes per
//! generated token plus 79 bytes.

use half::f16;
use sha2::{Digest, Sha256};

/// The first four bytes of every proof.
pub const MAGIC: [u8; 4] = *b"AGPF";
/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Length of the header in bytes; the commitments follow it.
pub const HEADER_LEN: usize = 15;
/// Default tokens per chunk commitment.
pub const DEFAULT_CHUNK: u16 = 16;
/// Default entries per commitment.
pub const DEFAULT_K: u16 = 16;
/// Largest `k` accepted.
pub const MAX_K: u16 = 1024;
/// Largest `chunk` accepted.
pub const MAX_CHUNK: u16 = 4096;

/// Why bytes are not a proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Fewer bytes than the header; the length is attached.
    #[error("the proof is {0} bytes, shorter than its {HEADER_LEN}-byte header")]
    Short(usize),
    /// The bytes do not start with [`MAGIC`].
    #[error("the proof does not start with the magic \"AGPF\"")]
    Magic,
    /// A version other than [`VERSION`]; the version byte is attached.
    #[error("unknown proof version {0} (this build reads version {VERSION})")]
    Version(u8),
    /// A header field out of its range; which rule is attached.
    #[error("invalid proof header: {0}")]
    Header(&'static str),
    /// The length is not what the header implies (missing or trailing bytes).
    #[error("the proof should be {expected} bytes for its header, but is {actual}")]
    Length {
        /// Length the header implies, in bytes.
        expected: usize,
        /// Actual length in bytes.
        actual: usize,
    },
    /// A commitment entry breaks the format.
    #[error("commitment {commitment}: {what}")]
    Entry {
        /// Position of the commitment (0 is the prompt commitment).
        commitment: usize,
        /// Which rule it breaks.
        what: &'static str,
    },
}

/// Top-`k` entries of one vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commitment {
    /// (dimension, IEEE half bits), dimensions strictly ascending.
    pub entries: Vec<(u16, u16)>,
}

impl Commitment {
    /// The top-`k` entries of `v` by magnitude (ties to the lower index), as halves.
    pub fn of(v: &[f32], k: usize) -> Commitment {
        let k = k.min(v.len());
        let mut idx: Vec<u32> = (0..v.len() as u32).collect();
        let by_magnitude = |a: &u32, b: &u32| {
            let (x, y) = (v[*a as usize].abs(), v[*b as usize].abs());
            y.total_cmp(&x).then(a.cmp(b))
        };
        if k > 0 && k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by_magnitude);
        }
        idx.truncate(k);
        idx.sort_unstable();
        Commitment {
            entries: idx
                .into_iter()
                .map(|i| (i as u16, f16::from_f32(v[i as usize]).to_bits()))
                .collect(),
        }
    }

    /// The value of entry `i` as `f32`. Panics if `i` is not below `entries.len()`.
    pub fn value(&self, i: usize) -> f32 {
        f16::from_bits(self.entries[i].1).to_f32()
    }
}

/// An activation proof (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// Tokens per chunk commitment, 1..=[`MAX_CHUNK`].
    pub chunk: u16,
    /// Entries per commitment, 1..=min([`MAX_K`], `n_embd`).
    pub k: u16,
    /// Width of the hidden state, at least 1.
    pub n_embd: u16,
    /// Generated tokens covered, at least 1.
    pub n_tokens: u32,
    /// The prompt commitment, then one per chunk.
    pub commitments: Vec<Commitment>,
}

/// Number of commitments a proof of `n_tokens` tokens with chunks of `chunk` holds.
pub fn commitments_for(n_tokens: u32, chunk: u16) -> usize {
    1 + (n_tokens as usize).div_ceil(chunk.max(1) as usize)
}

impl Proof {
    /// The version-1 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.commitments.len() * self.k as usize * 4);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.chunk.to_le_bytes());
        out.extend_from_slice(&self.k.to_le_bytes());
        out.extend_from_slice(&self.n_embd.to_le_bytes());
        out.extend_from_slice(&self.n_tokens.to_le_bytes());
        for c in &self.commitments {
            for &(i, v) in &c.entries {
                out.extend_from_slice(&i.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// SHA-256 of the encoding (what a receipt holds).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Parses version-1 bytes, accepting exactly what the format allows.
    pub fn decode(bytes: &[u8]) -> Result<Proof, ProofError> {
        if bytes.len() < HEADER_LEN {
            return Err(ProofError::Short(bytes.len()));
        }
        if bytes[..4] != MAGIC {
            return Err(ProofError::Magic);
        }
        if bytes[4] != VERSION {
            return Err(ProofError::Version(bytes[4]));
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let (chunk, k, n_embd) = (u16_at(5), u16_at(7), u16_at(9));
        let n_tokens = u32::from_le_bytes([bytes[11], bytes[12], bytes[13], bytes[14]]);
        if chunk == 0 || chunk > MAX_CHUNK {
            return Err(ProofError::Header("chunk must be 1..=4096"));
        }
        if n_embd == 0 {
            return Err(ProofError::Header("n_embd must be at least 1"));
        }
        if k == 0 || k > MAX_K || k > n_embd {
            return Err(ProofError::Header("k must be 1..=min(1024, n_embd)"));
        }
        if n_tokens == 0 {
            return Err(ProofError::Header("a proof covers at least one token"));
        }
        // In u64: on 32-bit targets (the dashboard's WebAssembly) these products overflow usize.
        let n64 = 1 + u64::from(n_tokens).div_ceil(u64::from(chunk));
        let expected = HEADER_LEN as u64 + n64 * u64::from(k) * 4;
        if bytes.len() as u64 != expected {
            return Err(ProofError::Length {
                expected: usize::try_from(expected).unwrap_or(usize::MAX),
                actual: bytes.len(),
            });
        }
        // The length matched, so the count fits in memory.
        let n = usize::try_from(n64).unwrap_or(usize::MAX);
        let mut commitments = Vec::with_capacity(n);
        let mut at = HEADER_LEN;
        for c in 0..n {
            let mut entries = Vec::with_capacity(k as usize);
            let mut prev: Option<u16> = None;
            for _ in 0..k {
                let (i, v) = (u16_at(at), u16_at(at + 2));
                at += 4;
                if i >= n_embd {
                    return Err(ProofError::Entry {
                        commitment: c,
                        what: "an index is not below n_embd",
                    });
                }
                if prev.is_some_and(|p| i <= p) {
                    return Err(ProofError::Entry {
                        commitment: c,
                        what: "indices are not strictly ascending",
                    });
                }
                if !f16::from_bits(v).is_finite() {
                    return Err(ProofError::Entry {
                        commitment: c,
                        what: "a value is not finite",
                    });
                }
                prev = Some(i);
                entries.push((i, v));
            }
            commitments.push(Commitment { entries });
        }
        Ok(Proof {
            chunk,
            k,
            n_embd,
            n_tokens,
            commitments,
        })
    }

    /// Bytes of proof per generated token.
    pub fn bytes_per_token(&self) -> f64 {
        self.encode().len() as f64 / f64::from(self.n_tokens.max(1))
    }
}

/// Builds a proof while a generation runs: feed it `h_i` of every token, in order.
#[derive(Clone, Debug)]
pub struct ProofBuilder {
    chunk: u16,
    k: u16,
    n_embd: usize,
    acc: Vec<f64>,
    in_chunk: u32,
    n_tokens: u32,
    commitments: Vec<Commitment>,
}

impl ProofBuilder {
    /// A builder for hidden states of width `n_embd`; `chunk` is clamped to 1..=[`MAX_CHUNK`]
    /// and `k` to 1..=min([`MAX_K`], `n_embd`).
    pub fn new(n_embd: usize, chunk: u16, k: u16) -> Self {
        let chunk = chunk.clamp(1, MAX_CHUNK);
        let k = k
            .clamp(1, MAX_K)
            .min(n_embd.clamp(1, u16::MAX as usize) as u16);
        Self {
            chunk,
            k,
            n_embd,
            acc: vec![0.0; n_embd],
            in_chunk: 0,
            n_tokens: 0,
            commitments: Vec::new(),
        }
    }

    /// Adds `h_i`, the hidden state of the step that chose the next token.
    pub fn push(&mut self, hidden: &[f32]) {
        let h = &hidden[..hidden.len().min(self.n_embd)];
        if self.n_tokens == 0 {
            self.commitments.push(Commitment::of(h, self.k as usize));
        }
        for (a, &x) in self.acc.iter_mut().zip(h) {
            *a += f64::from(x);
        }
        self.in_chunk += 1;
        self.n_tokens += 1;
        if self.in_chunk == u32::from(self.chunk) {
            self.close_chunk();
        }
    }

    fn close_chunk(&mut self) {
        let n = f64::from(self.in_chunk);
        let mean: Vec<f32> = self.acc.iter().map(|&a| (a / n) as f32).collect();
        self.commitments
            .push(Commitment::of(&mean, self.k as usize));
        self.acc.iter_mut().for_each(|a| *a = 0.0);
        self.in_chunk = 0;
    }

    /// Tokens pushed so far.
    pub fn tokens(&self) -> u32 {
        self.n_tokens
    }

    /// The proof, or `None` when no token was pushed.
    pub fn finish(mut self) -> Option<Proof> {
        if self.n_tokens == 0 {
            return None;
        }
        if self.in_chunk > 0 {
            self.close_chunk();
        }
        Some(Proof {
            chunk: self.chunk,
            k: self.k,
            n_embd: self.n_embd.min(u16::MAX as usize) as u16,
            n_tokens: self.n_tokens,
            commitments: self.commitments,
        })
    }
}

/// Chunk means of recomputed hidden states, commitment by commitment (the verifier's side).
#[derive(Clone, Debug)]
pub(crate) struct Recompute {
    chunk: u32,
    acc: Vec<f64>,
    in_chunk: u32,
}

impl Recompute {
    pub(crate) fn new(n_embd: usize, chunk: u16) -> Self {
        Self {
            chunk: u32::from(chunk.max(1)),
            acc: vec![0.0; n_embd],
            in_chunk: 0,
        }
    }

    /// Adds `h_i`; returns the chunk's mean when `h_i` completes it (or is the last token).
    pub(crate) fn push(&mut self, hidden: &[f32], last: bool) -> Option<Vec<f32>> {
        for (a, &x) in self.acc.iter_mut().zip(hidden) {
            *a += f64::from(x);
        }
        self.in_chunk += 1;
        if self.in_chunk == self.chunk || last {
            let n = f64::from(self.in_chunk);
            let mean = self.acc.iter().map(|&a| (a / n) as f32).collect();
            self.acc.iter_mut().for_each(|a| *a = 0.0);
            self.in_chunk = 0;
            return Some(mean);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn headers_whose_length_overflows_32_bits_are_refused() {
        // chunk 1, k 1024, n_embd 1024: n_tokens 2^22 - 1 makes n·k·4 = 2^34 (0 in 32 bits), and
        // u32::MAX tokens make 1 + n wrap; both must be refused by length, not read.
        for n_tokens in [(1u32 << 22) - 1, u32::MAX] {
            let mut b = Vec::from(MAGIC);
            b.push(VERSION);
            for v in [1u16, 1024, 1024] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&n_tokens.to_le_bytes());
            assert!(matches!(Proof::decode(&b), Err(ProofError::Length { .. })));
        }
    }

    fn sample_proof() -> Proof {
        let mut b = ProofBuilder::new(8, 2, 3);
        for t in 0..5 {
            let h: Vec<f32> = (0..8)
                .map(|i| ((i * 7 + t * 3) % 11) as f32 - 5.0)
                .collect();
            b.push(&h);
        }
        b.finish().unwrap()
    }

    #[test]
    fn commitment_takes_largest_magnitudes_ties_to_lower_index() {
        let c = Commitment::of(&[0.5, -3.0, 2.0, 3.0, -0.1], 2);
        assert_eq!(
            c.entries.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(c.value(0), -3.0);
    }

    #[test]
    fn builder_shape_and_round_trip() {
        let p = sample_proof();
        assert_eq!(p.n_tokens, 5);
        assert_eq!(p.commitments.len(), commitments_for(5, 2));
        assert_eq!(p.commitments.len(), 4); // prompt + 3 chunks (2, 2, 1)
        let bytes = p.encode();
        assert_eq!(bytes.len(), HEADER_LEN + 4 * 3 * 4);
        assert_eq!(Proof::decode(&bytes).unwrap(), p);
    }

    /// A pinned test vector: the exact bytes of a small proof (docs/verification.md).
    #[test]
    fn test_vector() {
        let p = sample_proof();
        assert_eq!(
            hex::encode(p.encode()),
            "414750460102000300080005000000000000c50300004506000044000000c3010000430400004100000041040000c1070000c3000000c4030000c506000045"
        );
        assert_eq!(
            hex::encode(p.digest()),
            hex::encode(sha2::Sha256::digest(p.encode()))
        );
    }

    #[test]
    fn precise_errors() {
        let good = sample_proof().encode();
        assert_eq!(Proof::decode(&good[..10]), Err(ProofError::Short(10)));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Proof::decode(&b), Err(ProofError::Magic));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(Proof::decode(&b), Err(ProofError::Version(2)));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(Proof::decode(&b), Err(ProofError::Length { .. })));
        assert!(matches!(
            Proof::decode(&good[..good.len() - 4]),
            Err(ProofError::Length { .. })
        ));
        let mut b = good.clone();
        b[7] = 0; // k = 0
        b[8] = 0;
        assert!(matches!(Proof::decode(&b), Err(ProofError::Header(_))));
        let mut b = good.clone();
        b[HEADER_LEN] = 200; // index ≥ n_embd
        assert!(matches!(
            Proof::decode(&b),
            Err(ProofError::Entry { commitment: 0, .. })
        ));
        let mut b = good.clone();
        b[HEADER_LEN + 2] = 0x00;
        b[HEADER_LEN + 3] = 0x7c; // +inf
        assert!(matches!(Proof::decode(&b), Err(ProofError::Entry { .. })));
        let mut b = good;
        b[HEADER_LEN + 4] = 0; // second index = first → not ascending
        assert!(matches!(Proof::decode(&b), Err(ProofError::Entry { .. })));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Proof::decode(&bytes);
        }

        #[test]
        fn accepted_bytes_reencode_identically(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = sample_proof().encode();
            let n = b.len();
            for (i, x) in tail.iter().enumerate() { b[HEADER_LEN + (i % (n - HEADER_LEN))] ^= x; }
            if let Ok(p) = Proof::decode(&b) {
                prop_assert_eq!(p.encode(), b);
            }
        }
    }
}
