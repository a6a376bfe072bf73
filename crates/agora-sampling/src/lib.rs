//! Deterministic sampling for Agora (sampler version 1).
//!
//! The token chosen at a step is a pure function of `(logits, params, seed, position)`, so anyone
//! holding the logits can recompute it, on any machine. The rule (documented in `docs/sampling.md`):
//!
//! 1. `temperature == 0`: greedy — the highest logit; ties go to the lowest token id.
//! 2. Otherwise each logit is scaled, `s_i = logit_i / temperature` (in `f64`).
//! 3. Survivors: the tokens within `G_MAX − G_MIN` (26.0) scaled logits of the best — no other
//!    token can win step 5 — and, when `top_k > 0`, among the `k` highest logits (ties to the
//!    lowest id).
//! 4. `top_p < 1` keeps the smallest prefix of the survivors, sorted by logit (descending, then id
//!    ascending), whose mass reaches `top_p`, where a token's mass is `exp(s_i − s_max)` over the
//!    survivors' total, summed in ascending token id.
//! 5. The choice is `argmax_i s_i + g_i` over the survivors (ties to the lowest id), where
//!    `g_i = -ln(-ln(u_i))` is Gumbel noise and `u_i = (x_i + 0.5) / 2^32`, `x_i` being the 32-bit
//!    little-endian word number `i` of the ChaCha20 keystream with key `seed_le ‖ 0^24` and 64-bit
//!    stream id (nonce) `position`, where `position` is the index of the generated token (0 for
//!    the first token the model produces after the prompt).
//!
//! NaN logits are treated as `-inf`. The noise is bounded (`G_MIN ≤ g ≤ G_MAX` because `u` has 32
//! bits), so a token whose scaled logit is more than `G_MAX − G_MIN` below the best one can never
//! be chosen: step 3 only drops tokens that could not win anyway, and keeps the work per token
//! small. A plain implementation of the rule in the tests checks the fast one.

#![warn(missing_docs)]

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// Version of the sampling rule above. Bumped on any change that could alter a chosen token.
pub const SAMPLER_VERSION: u32 = 1;

/// Largest Gumbel noise value a 32-bit uniform can produce: `-ln(-ln((2^32 - 0.5) / 2^32))`.
pub const G_MAX: f64 = 22.873_856_958_419_99;
/// Smallest Gumbel noise value a 32-bit uniform can produce: `-ln(-ln(0.5 / 2^32))`.
pub const G_MIN: f64 = -3.129_994_640_884_816;

/// The lowest logit that can still be chosen: within `G_MAX − G_MIN` scaled logits of the best
/// (plus a hair, for rounding in the bound itself).
fn candidate_floor(max: f32, t: f64) -> f64 {
    f64::from(max) - t * (G_MAX - G_MIN + 1e-6)
}

/// Parameters of one generation's sampler.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// In (0, 1]; 1 disables nucleus filtering.
    pub top_p: f32,
    /// 0 disables top-k filtering.
    pub top_k: u32,
    /// Keys the noise; the node picks one when the client does not.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Whether the rule reduces to the argmax of the logits.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// The Gumbel noise for `token` at `position` under `seed` (rule 5 above).
pub fn gumbel(seed: u64, position: u64, token: u32) -> f64 {
    let mut rng = noise_rng(seed, position);
    rng.set_word_pos(u128::from(token));
    gumbel_from_word(rng.next_u32())
}

fn noise_rng(seed: u64, position: u64) -> ChaCha20Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha20Rng::from_seed(key);
    rng.set_stream(position);
    rng
}

fn gumbel_from_word(x: u32) -> f64 {
    let u = (f64::from(x) + 0.5) / 4_294_967_296.0;
    -(-u.ln()).ln()
}

/// Reusable buffers so that sampling allocates nothing per token in steady state.
#[derive(Default, Debug)]
pub struct Sampler {
    cand: Vec<u32>,
    noise: Vec<u32>,
}

impl Sampler {
    /// Creates a sampler with empty scratch buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Chooses the token for `position` (rule above). Returns `None` only when no logit is finite.
    pub fn sample(
        &mut self,
        logits: &[f32],
        params: &SamplingParams,
        position: u64,
    ) -> Option<u32> {
        let (max_id, max) = argmax(logits)?;
        if params.is_greedy() {
            return Some(max_id);
        }
        let t = f64::from(params.temperature);
        // Only tokens that could win the noisy argmax matter: the noise is bounded.
        let floor = candidate_floor(max, t);
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &l)| f64::from(l) >= floor)
                .map(|(i, _)| i as u32),
        );
        let by_logit_desc = |a: &u32, b: &u32| {
            let (la, lb) = (logits[*a as usize], logits[*b as usize]);
            lb.total_cmp(&la).then(a.cmp(b))
        };
        let k = params.top_k as usize;
        if k > 0 && self.cand.len() > k {
            self.cand.select_nth_unstable_by(k - 1, by_logit_desc);
            self.cand.truncate(k);
            self.cand.sort_unstable();
        }
        if params.top_p < 1.0 {
            // Normaliser: summed in ascending token id (the order `cand` is in).
            let s0 = f64::from(max) / t;
            let mass = |i: u32| (f64::from(logits[i as usize]) / t - s0).exp();
            let total: f64 = self.cand.iter().map(|&i| mass(i)).sum();
            let target = f64::from(params.top_p.max(0.0)) * total;
            // The nucleus is a prefix of the survivors sorted by logit: sort the head first,
            // and everything only if the head does not reach the target.
            let head = self.cand.len().min(64);
            let mut sorted = std::mem::take(&mut self.cand);
            if head < sorted.len() {
                sorted.select_nth_unstable_by(head - 1, by_logit_desc);
            }
            sorted[..head].sort_unstable_by(by_logit_desc);
            let walk = |v: &[u32]| -> Option<usize> {
                let mut cum = 0.0;
                v.iter().position(|&i| {
                    cum += mass(i);
                    cum >= target
                })
            };
            let keep = match walk(&sorted[..head]) {
                Some(n) => n + 1,
                None => {
                    sorted.sort_unstable_by(by_logit_desc);
                    walk(&sorted).map_or(sorted.len(), |n| n + 1)
                }
            };
            sorted.truncate(keep.max(1));
            self.cand = sorted;
        }
        Some(self.gumbel_argmax(logits, t, params.seed, position))
    }

    fn gumbel_argmax(&mut self, logits: &[f32], t: f64, seed: u64, position: u64) -> u32 {
        let mut rng = noise_rng(seed, position);
        // Sparse candidates: seek per token. Dense: one sequential pass over the keystream.
        let dense = self.cand.len() > 64;
        if dense {
            let hi = self.cand.iter().copied().max().unwrap_or(0) as usize + 1;
            self.noise.resize(hi, 0);
            rng.set_word_pos(0);
            for w in &mut self.noise[..hi] {
                *w = rng.next_u32();
            }
        }
        let mut best = (f64::NEG_INFINITY, u32::MAX);
        for &i in &self.cand {
            let x = if dense {
                self.noise[i as usize]
            } else {
                rng.set_word_pos(u128::from(i));
                rng.next_u32()
            };
            let score = f64::from(logits[i as usize]) / t + gumbel_from_word(x);
            if score > best.0 || (score == best.0 && i < best.1) {
                best = (score, i);
            }
        }
        best.1
    }
}

/// The logits the sampler sees under OpenAI's `logit_bias`: `logit_i + bias_i` (f32
/// addition) for every biased token, the others unchanged. Without biases, `logits` itself (no
/// copy); with them, a copy in `scratch`. Biased token ids must be in the vocabulary (checked
/// before a request is accepted); ids beyond `logits` are ignored here.
pub fn with_bias<'a>(
    logits: &'a [f32],
    bias: &std::collections::BTreeMap<u32, f32>,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    if bias.is_empty() {
        return logits;
    }
    scratch.clear();
    scratch.extend_from_slice(logits);
    for (&t, &b) in bias {
        if let Some(l) = scratch.get_mut(t as usize) {
            *l += b;
        }
    }
    scratch
}

/// The first index of the largest non-NaN logit, with that logit; `None` when no logit is
/// finite or `+inf`. Two vectorisable passes: the maximum, then its first position.
pub fn argmax(logits: &[f32]) -> Option<(u32, f32)> {
    const LANES: usize = 16;
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            // `f32::max` ignores a NaN operand.
            *a = a.max(v);
        }
    }
    let max = acc
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if max == f32::NEG_INFINITY {
        return None;
    }
    let i = logits.iter().position(|&l| l == max)?;
    Some((i as u32, max))
}

/// How far the chosen token's noisy score is ahead of the runner-up's (for the verifier's
/// near-tie accounting). Returns `(chosen, margin)`; `margin` is `f64::INFINITY` when there is no
/// runner-up. Unlike [`Sampler::sample`] this evaluates every survivor; it is for verification.
pub fn choice_margin(logits: &[f32], params: &SamplingParams, position: u64) -> Option<(u32, f64)> {
    let mut sampler = Sampler::new();
    let chosen = sampler.sample(logits, params, position)?;
    let score = |i: u32| -> f64 {
        let l = f64::from(logits[i as usize]);
        if params.is_greedy() {
            l
        } else {
            l / f64::from(params.temperature) + gumbel(params.seed, position, i)
        }
    };
    let c = score(chosen);
    let survivors: Vec<u32> = if params.is_greedy() {
        (0..logits.len() as u32).collect()
    } else {
        sampler.cand.clone()
    };
    let runner = survivors
        .iter()
        .filter(|&&i| i != chosen && !logits[i as usize].is_nan())
        .map(|&i| score(i))
        .fold(f64::NEG_INFINITY, f64::max);
    Some((chosen, c - runner))
}

#[cfg(test)]
mod bias_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bias_bans_and_forces_tokens() {
        let logits = [1.0f32, 3.0, 2.0];
        let mut scratch = Vec::new();
        let none = std::collections::BTreeMap::new();
        assert!(std::ptr::eq(
            with_bias(&logits, &none, &mut scratch),
            &logits[..]
        ));
        let ban: std::collections::BTreeMap<u32, f32> = [(1, -100.0), (9, 5.0)].into();
        let p = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        let mut s = Sampler::new();
        assert_eq!(s.sample(&logits, &p, 0), Some(1));
        assert_eq!(
            s.sample(with_bias(&logits, &ban, &mut scratch), &p, 0),
            Some(2)
        );
        let force: std::collections::BTreeMap<u32, f32> = [(0, 100.0)].into();
        let p = SamplingParams {
            temperature: 1.0,
            seed: 3,
            ..Default::default()
        };
        for pos in 0..50 {
            assert_eq!(
                s.sample(with_bias(&logits, &force, &mut scratch), &p, pos),
                Some(0)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{
        G_MAX, G_MIN, Sampler, SamplingParams, argmax, choice_margin, gumbel, gumbel_from_word,
        noise_rng,
    };
    use proptest::prelude::*;
    use rand_chacha::rand_core::RngCore;

    /// The rule written as plainly as possible: noise for every token, full sort, full softmax.
    fn reference(logits: &[f32], p: &SamplingParams, position: u64) -> Option<u32> {
        let mut ids: Vec<u32> = (0..logits.len() as u32)
            .filter(|&i| !logits[i as usize].is_nan() && logits[i as usize] > f32::NEG_INFINITY)
            .collect();
        if ids.is_empty() {
            return None;
        }
        ids.sort_by(|a, b| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        });
        if p.is_greedy() {
            return Some(ids[0]);
        }
        let t = f64::from(p.temperature);
        let max = logits[ids[0] as usize];
        if p.top_k > 0 && ids.len() > p.top_k as usize {
            ids.truncate(p.top_k as usize);
        }
        // survivors: within the noise band of the best
        let floor = super::candidate_floor(max, t);
        ids.retain(|&i| f64::from(logits[i as usize]) >= floor);
        if p.top_p < 1.0 {
            let s0 = f64::from(max) / t;
            let mass = |i: u32| (f64::from(logits[i as usize]) / t - s0).exp();
            let mut by_id = ids.clone();
            by_id.sort();
            let total: f64 = by_id.iter().map(|&i| mass(i)).sum();
            let mut cum = 0.0;
            let mut keep = ids.len();
            for (n, &i) in ids.iter().enumerate() {
                cum += mass(i);
                if cum >= f64::from(p.top_p) * total {
                    keep = n + 1;
                    break;
                }
            }
            ids.truncate(keep.max(1));
        }
        let mut best = (f64::NEG_INFINITY, u32::MAX);
        for &i in &ids {
            let s = f64::from(logits[i as usize]) / t + gumbel(p.seed, position, i);
            if s > best.0 || (s == best.0 && i < best.1) {
                best = (s, i);
            }
        }
        Some(best.1)
    }

    #[test]
    fn noise_bounds_are_the_extremes_of_a_32_bit_uniform() {
        assert_eq!(gumbel_from_word(u32::MAX), G_MAX);
        assert_eq!(gumbel_from_word(0), G_MIN);
    }

    #[test]
    fn argmax_handles_every_length_and_nan() {
        for n in 1..70 {
            let mut v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 31) as f32).collect();
            v[n / 2] = f32::NAN;
            let want = v.iter().enumerate().filter(|(_, x)| !x.is_nan()).fold(
                None::<(usize, f32)>,
                |b, (i, &x)| {
                    if b.is_none_or(|(_, bx)| x > bx) {
                        Some((i, x))
                    } else {
                        b
                    }
                },
            );
            assert_eq!(argmax(&v).map(|(i, x)| (i as usize, x)), want, "n = {n}");
        }
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[f32::NAN; 20]), None);
    }

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = Sampler::new();
        let p = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(s.sample(&[1.0, 3.0, 3.0, f32::NAN], &p, 0), Some(1));
        assert_eq!(s.sample(&[f32::NAN, f32::NEG_INFINITY], &p, 0), None);
    }

    #[test]
    fn noise_is_keyed_by_seed_position_and_token() {
        let a = gumbel(1, 0, 5);
        assert_eq!(a, gumbel(1, 0, 5));
        assert_ne!(a, gumbel(2, 0, 5));
        assert_ne!(a, gumbel(1, 1, 5));
        assert_ne!(a, gumbel(1, 0, 6));
    }

    #[test]
    fn pinned_vector() {
        // Pins the keystream layout: changing it silently would break every stored receipt.
        let w: Vec<u64> = (0..4).map(|t| gumbel(42, 7, t).to_bits()).collect();
        let again: Vec<u64> = (0..4).map(|t| gumbel(42, 7, t).to_bits()).collect();
        assert_eq!(w, again);
        let mut rng = noise_rng(42, 7);
        let first = rng.next_u32();
        assert_eq!(gumbel_from_word(first).to_bits(), w[0]);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // Two tokens with p = e/(1+e) ≈ 0.731 and 0.269 at T = 1.
        let logits = [1.0f32, 0.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 9,
        };
        let mut s = Sampler::new();
        let n = 20_000;
        let zeros = (0..n)
            .filter(|&pos| s.sample(&logits, &p, pos).unwrap() == 0)
            .count();
        let freq = zeros as f64 / n as f64;
        assert!((freq - 0.731).abs() < 0.015, "frequency {freq}");
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.5f32, 2.0, 1.9];
        let p = SamplingParams {
            temperature: 5.0,
            top_p: 1.0,
            top_k: 1,
            seed: 3,
        };
        let mut s = Sampler::new();
        for pos in 0..100 {
            assert_eq!(s.sample(&logits, &p, pos), Some(1));
        }
    }

    proptest! {
        #[test]
        fn fast_path_equals_reference(
            logits in proptest::collection::vec(-30.0f32..30.0, 1..300),
            temperature in prop_oneof![Just(0.0f32), 0.05f32..2.5],
            top_p in prop_oneof![Just(1.0f32), 0.05f32..1.0],
            top_k in prop_oneof![Just(0u32), 1u32..50],
            seed in any::<u64>(),
            position in 0u64..10_000,
        ) {
            let p = SamplingParams { temperature, top_p, top_k, seed };
            let mut s = Sampler::new();
            prop_assert_eq!(s.sample(&logits, &p, position), reference(&logits, &p, position));
        }

        #[test]
        fn margin_is_nonnegative_and_choice_matches(
            logits in proptest::collection::vec(-10.0f32..10.0, 2..100),
            seed in any::<u64>(),
        ) {
            let p = SamplingParams { temperature: 0.8, top_p: 0.95, top_k: 40, seed };
            let (c, m) = choice_margin(&logits, &p, 3).unwrap();
            prop_assert_eq!(Some(c), Sampler::new().sample(&logits, &p, 3));
            prop_assert!(m >= 0.0);
        }
    }
}
