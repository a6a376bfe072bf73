//! Verifiable inference for Agora (no I/O).
//!
//! - [`answer`]: requests, answers and transcripts, and the model-free check of a receipt.
//! - [`proof`]: the activation proof a worker commits to while generating, and its byte format.
//! - [`Checker`]: what a verifier runs over the rows of one prefill of prompt + output on the
//!   same model: every commitment within tolerance, and every output token the seed's choice.
//!
//! Tolerances and how they were measured: `docs/verification.md`.

#![warn(missing_docs)]

pub mod answer;
pub mod proof;

use agora_sampling::{SamplingParams, gumbel};
use serde::Serialize;

pub use proof::{Commitment, Proof, ProofBuilder, ProofError};

use proof::Recompute;

/// How far a recomputation may stray from a proof and still be honest.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerances {
    /// Smallest share of a commitment's indices that must also be in the recomputed top-k.
    pub min_overlap: f32,
    /// Largest error of a committed value, relative to the largest magnitude in the recomputed
    /// vector.
    pub max_value_error: f32,
    /// A token that is not the seed's choice is still accepted when its noisy score is within
    /// this much of the best one (a near-tie, counted).
    pub tie_margin: f64,
    /// Near-ties allowed per 1,000 tokens (plus one), beyond which the output is rejected.
    pub max_ties_per_1000: f64,
}

impl Default for Tolerances {
    /// Calibrated on this project's CPU, where an honest recomputation is bit-exact (the only
    /// error left is the half-precision rounding of committed values, at most 2^-11 of the
    /// vector's scale): see docs/verification.md for the measurements and for the margin these
    /// bounds leave for other CPUs' arithmetic.
    fn default() -> Self {
        Self {
            min_overlap: 0.9,
            max_value_error: 0.004,
            tie_margin: 0.05,
            max_ties_per_1000: 20.0,
        }
    }
}

/// A verifier's conclusion with its statistics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Whether every check passed.
    pub accept: bool,
    /// Why it was rejected (the first failing check).
    pub reason: Option<String>,
    /// Output tokens checked, given ones included.
    pub tokens: u32,
    /// Commitments compared with a recomputation.
    pub commitments_checked: u32,
    /// Lowest top-k overlap over the checked commitments (1 when none was checked); see
    /// [`Tolerances::min_overlap`].
    pub min_overlap: f32,
    /// Largest relative value error over the checked commitments (0 when none was checked); see
    /// [`Tolerances::max_value_error`].
    pub max_value_error: f32,
    /// Tokens that were not the seed's choice but within the tie margin.
    pub near_ties: u32,
    /// Tokens that were not the seed's choice, beyond the margin.
    pub mismatched_tokens: u32,
    /// Index of the first token that failed a check, if any.
    pub first_bad_token: Option<u32>,
    /// Leading tokens handed to the worker (a resumed generation's prefix, produced by a worker
    /// that failed): their hidden states are checked, but the worker did not choose them, so
    /// they are not held against it.
    pub given: u32,
    /// Given tokens that are not the seed's choice either (the prefix was not honest; not this
    /// worker's fault).
    pub given_mismatches: u32,
}

/// Checks a generation against its proof, row by row, as the prefill hands them out.
///
/// Feed [`Checker::row`] with `h_i` and the logits of position `prompt_len - 1 + i` for every
/// output token `i` in order, then call [`Checker::finish`].
#[derive(Debug)]
pub struct Checker {
    proof: Proof,
    params: SamplingParams,
    output: Vec<u32>,
    tol: Tolerances,
    sampler: agora_sampling::Sampler,
    bias: std::collections::BTreeMap<u32, f32>,
    bias_scratch: Vec<f32>,
    given: usize,
    recompute: Recompute,
    next: usize,
    next_commitment: usize,
    report: Report,
}

impl Checker {
    /// `output`: the generated tokens; the proof must cover exactly them.
    pub fn new(
        proof: Proof,
        params: SamplingParams,
        output: Vec<u32>,
        tol: Tolerances,
    ) -> Result<Checker, String> {
        if proof.n_tokens as usize != output.len() {
            return Err(format!(
                "the proof covers {} tokens but the output has {}",
                proof.n_tokens,
                output.len()
            ));
        }
        let recompute = Recompute::new(proof.n_embd as usize, proof.chunk);
        let report = Report {
            accept: true,
            reason: None,
            tokens: output.len() as u32,
            commitments_checked: 0,
            min_overlap: 1.0,
            max_value_error: 0.0,
            near_ties: 0,
            mismatched_tokens: 0,
            first_bad_token: None,
            given: 0,
            given_mismatches: 0,
        };
        Ok(Checker {
            proof,
            params,
            output,
            tol,
            sampler: agora_sampling::Sampler::new(),
            bias: Default::default(),
            bias_scratch: Vec::new(),
            given: 0,
            recompute,
            next: 0,
            next_commitment: 0,
            report,
        })
    }

    /// Applies OpenAI's `logit_bias` before checking each token's choice, as the worker did.
    pub fn with_bias(mut self, bias: std::collections::BTreeMap<u32, f32>) -> Self {
        self.bias = bias;
        self
    }

    /// The first `given` output tokens were handed to the worker, not chosen by it (resume).
    pub fn with_given(mut self, given: usize) -> Self {
        self.given = given.min(self.output.len());
        self.report.given = self.given as u32;
        self
    }

    /// How many rows the checker expects.
    pub fn rows(&self) -> usize {
        self.output.len()
    }

    fn reject(&mut self, token: usize, reason: String) {
        if self.report.accept {
            self.report.accept = false;
            self.report.reason = Some(reason);
            self.report.first_bad_token = Some(token as u32);
        }
    }

    fn check_commitment(&mut self, token: usize, what: &str, recomputed: &[f32]) {
        let Some(c) = self.proof.commitments.get(self.next_commitment).cloned() else {
            self.reject(token, format!("{what}: the proof has no commitment left"));
            return;
        };
        self.next_commitment += 1;
        self.report.commitments_checked += 1;
        if recomputed.len() != self.proof.n_embd as usize {
            self.reject(
                token,
                format!(
                    "{what}: the model's hidden state has {} dimensions, the proof {}",
                    recomputed.len(),
                    self.proof.n_embd
                ),
            );
            return;
        }
        let mine = Commitment::of(recomputed, c.entries.len());
        let overlap = c
            .entries
            .iter()
            .filter(|(i, _)| mine.entries.iter().any(|(j, _)| j == i))
            .count() as f32
            / c.entries.len().max(1) as f32;
        let scale = recomputed
            .iter()
            .fold(0f32, |m, x| m.max(x.abs()))
            .max(f32::MIN_POSITIVE);
        let err = c
            .entries
            .iter()
            .enumerate()
            .map(|(n, &(i, _))| (c.value(n) - recomputed[i as usize]).abs() / scale)
            .fold(0f32, f32::max);
        self.report.min_overlap = self.report.min_overlap.min(overlap);
        self.report.max_value_error = self.report.max_value_error.max(err);
        if overlap < self.tol.min_overlap {
            self.reject(
                token,
                format!("{what}: only {:.0}% of the committed top-{} dimensions are in the recomputed top-{} (need {:.0}%)",
                    overlap * 100.0, c.entries.len(), c.entries.len(), self.tol.min_overlap * 100.0),
            );
        } else if err > self.tol.max_value_error {
            self.reject(
                token,
                format!("{what}: a committed value is off by {:.4} of the vector's scale (tolerance {})", err, self.tol.max_value_error),
            );
        }
    }

    /// The row for output token `self.next`: `hidden` = `h_i`, `logits` at that position.
    pub fn row(&mut self, hidden: &[f32], logits: &[f32]) {
        let i = self.next;
        if i >= self.output.len() {
            self.reject(
                i,
                "the prefill produced more rows than there are output tokens".into(),
            );
            return;
        }
        self.next += 1;
        if i == 0 {
            self.check_commitment(0, "prompt commitment", hidden);
        }
        let last = i + 1 == self.output.len();
        if let Some(mean) = self.recompute.push(hidden, last) {
            let chunk = i / self.proof.chunk.max(1) as usize;
            self.check_commitment(i, &format!("chunk {chunk} commitment"), &mean);
        }
        let token = self.output[i];
        if token as usize >= logits.len() {
            self.reject(i, format!("token {i} ({token}) is not in the vocabulary"));
            return;
        }
        let logits = agora_sampling::with_bias(logits, &self.bias, &mut self.bias_scratch);
        let choice = self.sampler.sample(logits, &self.params, i as u64);
        if i < self.given {
            if choice != Some(token) {
                self.report.given_mismatches += 1;
            }
            return;
        }
        match choice {
            Some(c) if c == token => {}
            choice => {
                let gap = score_gap(logits, &self.params, i as u64, token, choice);
                if gap <= self.tol.tie_margin {
                    self.report.near_ties += 1;
                } else {
                    self.report.mismatched_tokens += 1;
                    self.reject(
                        i,
                        format!(
                            "token {i} is {token}, but the seed chooses {} there (score gap {gap:.3})",
                            choice.map(|c| c.to_string()).unwrap_or_else(|| "nothing".into())
                        ),
                    );
                }
            }
        }
    }

    /// The verdict.
    pub fn finish(mut self) -> Report {
        if self.next != self.output.len() {
            let n = self.next;
            self.reject(
                n,
                format!(
                    "the prefill produced {} rows for {} output tokens",
                    n,
                    self.output.len()
                ),
            );
        }
        if self.next_commitment != self.proof.commitments.len() && self.report.accept {
            let n = self.next;
            self.reject(
                n,
                format!(
                    "{} commitments were checked but the proof has {}",
                    self.next_commitment,
                    self.proof.commitments.len()
                ),
            );
        }
        let allowed = self.tol.max_ties_per_1000 * f64::from(self.report.tokens) / 1000.0 + 1.0;
        if f64::from(self.report.near_ties) > allowed && self.report.accept {
            let n = self.report.tokens;
            self.report.accept = false;
            self.report.reason = Some(format!(
                "{} near-ties in {n} tokens: more than the {allowed:.1} honest arithmetic explains",
                self.report.near_ties
            ));
        }
        self.report
    }
}

/// How far `token`'s noisy score is behind the best one (0 when it is the choice). A token the
/// filters (top-k, top-p) removed is as far behind as its logit is below the last survivor's.
fn score_gap(
    logits: &[f32],
    p: &SamplingParams,
    position: u64,
    token: u32,
    choice: Option<u32>,
) -> f64 {
    let Some(choice) = choice else {
        return f64::INFINITY;
    };
    let l = |t: u32| f64::from(logits[t as usize]);
    if l(token).is_nan() {
        return f64::INFINITY;
    }
    if p.is_greedy() {
        return l(choice) - l(token);
    }
    let t = f64::from(p.temperature);
    let score = |x: u32| l(x) / t + gumbel(p.seed, position, x);
    (score(choice) - score(token)).max(0.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A toy "model": hidden state and logits are functions of the position.
    fn hidden(i: usize) -> Vec<f32> {
        (0..32)
            .map(|d| (((d * 13 + i * 7) % 17) as f32 - 8.0) * 0.25)
            .collect()
    }
    fn logits(i: usize) -> Vec<f32> {
        (0..50)
            .map(|t| ((t * 31 + i * 11) % 23) as f32 * 0.3)
            .collect()
    }

    fn generate(n: usize, params: &SamplingParams) -> (Vec<u32>, Proof) {
        let mut b = ProofBuilder::new(32, 4, 6);
        let mut s = agora_sampling::Sampler::new();
        let mut out = Vec::new();
        for i in 0..n {
            b.push(&hidden(i));
            out.push(s.sample(&logits(i), params, i as u64).unwrap());
        }
        (out, b.finish().unwrap())
    }

    fn check(
        proof: Proof,
        params: SamplingParams,
        out: Vec<u32>,
        perturb: impl Fn(usize, &mut Vec<f32>),
    ) -> Report {
        let n = out.len();
        let mut c = Checker::new(proof, params, out, Tolerances::default()).unwrap();
        for i in 0..n {
            let mut h = hidden(i);
            perturb(i, &mut h);
            c.row(&h, &logits(i));
        }
        c.finish()
    }

    const P: SamplingParams = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        top_k: 0,
        seed: 42,
    };

    #[test]
    fn honest_generation_is_accepted() {
        let (out, proof) = generate(10, &P);
        let r = check(proof, P, out, |_, _| {});
        assert!(r.accept, "{r:?}");
        assert_eq!(r.commitments_checked, 1 + 3);
        assert_eq!(r.max_value_error, 0.0);
    }

    #[test]
    fn altered_token_is_rejected_at_its_index() {
        let (mut out, proof) = generate(10, &P);
        out[6] = (out[6] + 1) % 50;
        let r = check(proof, P, out, |_, _| {});
        assert!(!r.accept);
        assert_eq!(r.first_bad_token, Some(6), "{r:?}");
    }

    #[test]
    fn other_hidden_states_are_rejected() {
        let (out, proof) = generate(10, &P);
        let r = check(proof, P, out, |i, h| {
            if i >= 4 {
                h.reverse();
            }
        });
        assert!(!r.accept);
        assert!(r.reason.as_deref().unwrap().contains("chunk 1"), "{r:?}");
    }

    #[test]
    fn other_seed_is_rejected() {
        let (out, proof) = generate(20, &SamplingParams { seed: 7, ..P });
        let r = check(proof, P, out, |_, _| {});
        assert!(!r.accept && r.mismatched_tokens > 0, "{r:?}");
    }

    #[test]
    fn given_tokens_are_not_held_against_the_worker() {
        let (mut out, proof) = generate(10, &P);
        out[1] = (out[1] + 1) % 50; // a hostile prefix handed over on resume
        let mut c = Checker::new(proof, P, out.clone(), Tolerances::default())
            .unwrap()
            .with_given(3);
        for i in 0..out.len() {
            c.row(&hidden(i), &logits(i));
        }
        let r = c.finish();
        assert!(r.accept, "{r:?}");
        assert_eq!((r.given, r.given_mismatches), (3, 1));
        // The same token outside the given prefix is the worker's: rejected.
        let (mut out, proof) = generate(10, &P);
        out[4] = (out[4] + 1) % 50;
        let mut c = Checker::new(proof, P, out.clone(), Tolerances::default())
            .unwrap()
            .with_given(3);
        for i in 0..out.len() {
            c.row(&hidden(i), &logits(i));
        }
        assert_eq!(c.finish().first_bad_token, Some(4));
    }

    #[test]
    fn logit_bias_is_applied_as_the_worker_did() {
        let bias: std::collections::BTreeMap<u32, f32> = [(7, 100.0)].into();
        let mut s = agora_sampling::Sampler::new();
        let mut scratch = Vec::new();
        let mut b = ProofBuilder::new(32, 4, 6);
        let mut out = Vec::new();
        for i in 0..8 {
            b.push(&hidden(i));
            let l = agora_sampling::with_bias(&logits(i), &bias, &mut scratch).to_vec();
            out.push(s.sample(&l, &P, i as u64).unwrap());
        }
        assert!(out.iter().all(|&t| t == 7));
        let proof = b.finish().unwrap();
        let run = |c: Checker| {
            let mut c = c;
            for i in 0..8 {
                c.row(&hidden(i), &logits(i));
            }
            c.finish()
        };
        let with = Checker::new(proof.clone(), P, out.clone(), Tolerances::default()).unwrap();
        assert!(run(with.with_bias(bias)).accept);
        let without = Checker::new(proof, P, out, Tolerances::default()).unwrap();
        assert!(!run(without).accept);
    }

    #[test]
    fn truncated_proof_is_refused() {
        let (out, proof) = generate(10, &P);
        let mut short = proof.clone();
        short.n_tokens = 9;
        assert!(Checker::new(short, P, out.clone(), Tolerances::default()).is_err());
        let mut fewer = proof;
        fewer.commitments.pop();
        let r = check(fewer, P, out, |_, _| {});
        assert!(!r.accept, "{r:?}");
    }
}

/// Digest of a request under a salt: `SHA-256("agora/request/v1\n" ‖ salt ‖ request JSON)`. The
/// salt keeps a public receipt from revealing its prompt to someone guessing prompts.
pub fn request_digest(salt: &[u8], request_json: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"agora/request/v1\n");
    h.update(salt);
    h.update(request_json);
    h.finalize().into()
}

/// Digest of an output: `SHA-256("agora/output/v1\n" ‖ each token as u32 little-endian)`.
pub fn output_digest(tokens: &[u32]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"agora/output/v1\n");
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

/// Whether log entry `index` is selected for checking, with probability `p`, by the root of a
/// checkpoint that includes it: `SHA-256("agora/select/v1\n" ‖ root ‖ index as u64 big-endian)`,
/// first 8 bytes as a fraction of 2^64, below `p`. A worker cannot know the root when it
/// answers, so it cannot know which answers will be checked.
pub fn selected_for_check(root: &[u8; 32], index: u64, p: f64) -> bool {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"agora/select/v1\n");
    h.update(root);
    h.update(index.to_be_bytes());
    let d: [u8; 32] = h.finalize().into();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(first) as f64) < p.clamp(0.0, 1.0) * 18_446_744_073_709_551_616.0
}

#[cfg(test)]
mod selection_tests {
    use super::selected_for_check;

    #[test]
    fn selects_about_p() {
        let root = [7u8; 32];
        let n = (0..20_000)
            .filter(|&i| selected_for_check(&root, i, 0.1))
            .count();
        assert!((1_700..2_300).contains(&n), "{n}");
        assert!((0..100).all(|i| selected_for_check(&root, i, 1.0)));
        assert!((0..100).all(|i| !selected_for_check(&root, i, 0.0)));
        // another root, another selection
        let other = (0..1000)
            .filter(|&i| {
                selected_for_check(&root, i, 0.5) != selected_for_check(&[8u8; 32], i, 0.5)
            })
            .count();
        assert!(other > 300, "{other}");
    }
}
