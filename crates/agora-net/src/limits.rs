//! Per-peer request rate limiting (token buckets), bounded in the number of peers tracked.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

/// A token bucket per peer: `rate` requests per second on average, bursts up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    cap: usize,
    buckets: HashMap<PeerId, (f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64, cap: usize) -> Self {
        Self {
            rate,
            burst,
            cap,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `peer`; `false` when the peer is over its rate.
    pub fn allow(&mut self, peer: PeerId) -> bool {
        self.allow_at(peer, Instant::now())
    }

    fn allow_at(&mut self, peer: PeerId, now: Instant) -> bool {
        if !self.buckets.contains_key(&peer) && self.buckets.len() >= self.cap {
            // Forget the peer seen longest ago: a full table never grows.
            if let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(p, _)| *p)
            {
                self.buckets.remove(&oldest);
            }
        }
        let (tokens, last) = self.buckets.entry(peer).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills() {
        let mut r = RateLimiter::new(10.0, 5.0, 8);
        let p = PeerId::random();
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| r.allow_at(p, t0)).count(), 5);
        assert!(r.allow_at(p, t0 + Duration::from_millis(150)));
        assert!(!r.allow_at(p, t0 + Duration::from_millis(150)));
    }

    #[test]
    fn bounded_table() {
        let mut r = RateLimiter::new(1.0, 1.0, 3);
        for _ in 0..100 {
            r.allow(PeerId::random());
        }
        assert_eq!(r.buckets.len(), 3);
    }
}
