//! What a gateway believes about each worker, and why.
//!
//! Keys are free, so nothing a worker says about itself is believed beyond what it has shown:
//! - **Probation.** A key starts on probation: it gets a small share of the traffic (see
//!   `Gateway::candidates`) until validators this gateway trusts (or its own re-checks) have
//!   accepted [`PROBATION_VERDICTS`] of its answers. Rotating to a fresh key starts over.
//! - **Capacity and speed.** A worker's advertised free slots are believed up to twice the
//!   most generations it has run at once for this gateway (at least one); its advertised speed
//!   up to 1.5× what this gateway measured (20 tokens/s before any measurement).
//! - **Exclusion.** A worker whose cheating is proven (a rejection by a trusted validator, or
//!   one this gateway re-checked itself) gets no more requests, ever; a worker that broke the
//!   generation protocol (a token outside the vocabulary, more tokens than asked for, a receipt
//!   that does not match what it streamed) is cut off for a while that doubles each time.
//!
//! Both tables are bounded: the reputation table evicts the least-known entry when full, and the
//! set of condemned keys (each one cost its owner a proven cheat) is capped too.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agora_net::PeerId;
use serde::Serialize;

/// Accepted verdicts that end a key's probation.
pub const PROBATION_VERDICTS: u32 = 3;
/// Speed believed of a worker this gateway has not measured yet (tokens per second).
pub const UNMEASURED_SPEED: f64 = 20.0;
/// First exclusion after a protocol violation; doubles with each further one.
const VIOLATION_BASE: Duration = Duration::from_secs(60);

/// One worker's record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Reputation {
    /// Accepted answers, by validators this gateway trusts or by its own re-checks.
    pub accepted: u32,
    /// Proven rejections (a trusted validator's, or re-checked here).
    pub rejected: u32,
    /// Generation-protocol violations this gateway saw.
    pub violations: u32,
    /// Most generations it completed for this gateway while running that many at once.
    pub delivered_peak: u32,
    /// Decode speed measured on its answers to this gateway (tokens/s, averaged); 0: none yet.
    pub measured_tps: f64,
    #[serde(skip)]
    excluded_until: Option<Instant>,
    #[serde(skip)]
    touched: Option<Instant>,
}

impl Reputation {
    /// Whether requests may go to this worker now.
    pub fn routable(&self) -> bool {
        self.rejected == 0 && self.excluded_until.is_none_or(|t| t <= Instant::now())
    }

    pub fn on_probation(&self) -> bool {
        self.accepted < PROBATION_VERDICTS
    }
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<PeerId, Reputation>,
    condemned: HashSet<PeerId>,
}

/// The bounded reputation table of one gateway.
#[derive(Debug)]
pub struct Reputations {
    cap: usize,
    condemned_cap: usize,
    inner: Mutex<Table>,
}

impl Default for Reputations {
    fn default() -> Self {
        Self::new(4096, 65_536)
    }
}

impl Reputations {
    pub fn new(cap: usize, condemned_cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            condemned_cap: condemned_cap.max(1),
            inner: Mutex::new(Table::default()),
        }
    }

    fn with<R>(&self, worker: &PeerId, f: impl FnOnce(&mut Reputation) -> R) -> Option<R> {
        let mut t = self.inner.lock().ok()?;
        if !t.map.contains_key(worker) && t.map.len() >= self.cap {
            // Evict the least-known worker, preferring one that is not excluded now (the
            // condemned stay in their own set whatever happens here).
            let victim = t
                .map
                .iter()
                .min_by_key(|(_, r)| (!r.routable(), r.accepted + r.violations, r.touched))
                .map(|(k, _)| *k);
            if let Some(v) = victim {
                t.map.remove(&v);
            }
        }
        let r = t.map.entry(*worker).or_default();
        r.touched = Some(Instant::now());
        Some(f(r))
    }

    /// A verdict that counts here (trusted, or re-checked by this gateway).
    pub fn record_verdict(&self, worker: &PeerId, accept: bool) {
        self.with(worker, |r| {
            if accept {
                r.accepted = r.accepted.saturating_add(1);
            } else {
                r.rejected = r.rejected.saturating_add(1);
            }
        });
        if !accept && let Ok(mut t) = self.inner.lock() {
            if t.condemned.len() >= self.condemned_cap
                && let Some(&old) = t.condemned.iter().next()
            {
                t.condemned.remove(&old);
            }
            t.condemned.insert(*worker);
        }
    }

    /// The worker broke the generation protocol: it is cut off for a while (doubling).
    pub fn record_violation(&self, worker: &PeerId) -> Duration {
        self.with(worker, |r| {
            r.violations = r.violations.saturating_add(1);
            let d = VIOLATION_BASE * 2u32.saturating_pow((r.violations - 1).min(10));
            r.excluded_until = Some(Instant::now() + d);
            d
        })
        .unwrap_or(VIOLATION_BASE)
    }

    /// A generation this worker completed: `concurrent` were running on it at the time.
    pub fn record_delivery(&self, worker: &PeerId, concurrent: u32, tokens: u32, took: Duration) {
        self.with(worker, |r| {
            r.delivered_peak = r.delivered_peak.max(concurrent);
            if tokens >= 4 && !took.is_zero() {
                let tps = f64::from(tokens) / took.as_secs_f64();
                r.measured_tps = if r.measured_tps == 0.0 {
                    tps
                } else {
                    0.8 * r.measured_tps + 0.2 * tps
                };
            }
        });
    }

    pub fn get(&self, worker: &PeerId) -> Reputation {
        self.inner
            .lock()
            .ok()
            .and_then(|t| t.map.get(worker).copied())
            .unwrap_or_default()
    }

    /// Whether requests may go to `worker` now.
    pub fn routable(&self, worker: &PeerId) -> bool {
        let Ok(t) = self.inner.lock() else {
            return false;
        };
        !t.condemned.contains(worker) && t.map.get(worker).is_none_or(Reputation::routable)
    }

    /// Free slots believed of a worker that advertises `slots` (see the module docs).
    pub fn believed_slots(&self, worker: &PeerId, slots: u32) -> u32 {
        let peak = self.get(worker).delivered_peak;
        slots.min(peak.saturating_mul(2).max(1))
    }

    /// Speed believed of a worker that advertises `tps`: the claim, capped by what this gateway
    /// measured (or by [`UNMEASURED_SPEED`] before any delivery). A worker that has not served
    /// yet advertises 0, meaning "not known": it is believed the measurement, or the prior, so
    /// that a newcomer is tried instead of being ranked below everyone forever.
    pub fn believed_speed(&self, worker: &PeerId, tps: f64) -> f64 {
        let measured = self.get(worker).measured_tps;
        if !tps.is_finite() {
            return 0.0;
        }
        if tps <= 0.0 {
            return if measured > 0.0 {
                measured
            } else {
                UNMEASURED_SPEED
            };
        }
        let cap = if measured > 0.0 {
            1.5 * measured
        } else {
            UNMEASURED_SPEED
        };
        tps.min(cap)
    }

    /// Every record, for `/agora/v1/nodes`.
    pub fn all(&self) -> HashMap<PeerId, Reputation> {
        self.inner.lock().map(|t| t.map.clone()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|t| t.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> PeerId {
        crate::to_net_id(&agora_core::Identity::from_seed(&[i; 32]).peer_id())
            .unwrap_or_else(|| panic!("key {i} is not a network id"))
    }

    #[test]
    fn probation_ends_with_verdicts_and_rejection_excludes_for_good() {
        let r = Reputations::default();
        let w = key(1);
        assert!(r.get(&w).on_probation() && r.routable(&w));
        for _ in 0..PROBATION_VERDICTS {
            r.record_verdict(&w, true);
        }
        assert!(!r.get(&w).on_probation());
        r.record_verdict(&w, false);
        assert!(!r.routable(&w));
    }

    #[test]
    fn claims_are_believed_only_as_far_as_delivered() {
        let r = Reputations::default();
        let w = key(2);
        assert_eq!(r.believed_slots(&w, 1_000_000), 1);
        assert_eq!(r.believed_speed(&w, 1e12), UNMEASURED_SPEED);
        assert_eq!(r.believed_speed(&w, f64::NAN), 0.0);
        assert_eq!(
            r.believed_speed(&w, 0.0),
            UNMEASURED_SPEED,
            "not known is the prior"
        );
        assert_eq!(r.believed_speed(&w, 5.0), 5.0);
        r.record_delivery(&w, 3, 100, Duration::from_secs(1));
        assert_eq!(
            r.believed_speed(&w, 0.0),
            100.0,
            "not known is the measurement"
        );
        assert_eq!(r.believed_slots(&w, 1_000_000), 6);
        assert_eq!(r.believed_slots(&w, 4), 4);
        assert_eq!(r.believed_speed(&w, 1e12), 150.0);
    }

    #[test]
    fn violations_exclude_for_a_doubling_while() {
        let r = Reputations::default();
        let w = key(3);
        assert_eq!(r.record_violation(&w), VIOLATION_BASE);
        assert!(!r.routable(&w));
        assert_eq!(r.record_violation(&w), VIOLATION_BASE * 2);
    }

    #[test]
    fn tables_are_bounded_and_keep_the_condemned() {
        let r = Reputations::new(8, 4);
        let cheater = key(200);
        r.record_verdict(&cheater, false);
        for i in 0..50u8 {
            r.record_delivery(&key(i), 1, 10, Duration::from_secs(1));
        }
        assert!(r.len() <= 8);
        assert!(!r.routable(&cheater));
        for i in 100..110u8 {
            r.record_verdict(&key(i), false);
        }
        let t = r.inner.lock().unwrap_or_else(|e| e.into_inner());
        assert!(t.condemned.len() <= 4);
    }
}
