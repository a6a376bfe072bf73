//! Threads that follow the CPU actually available. A volunteer's machine is also used for other
//! work; llama.cpp's threads wait for each other at every step of a decode (OpenMP barriers,
//! spinning), so one thread descheduled by another process stalls them all — measured here:
//! with one of two cores busy, decoding falls from ~120 tokens/s to under 1. The engine asks
//! [`Watch`] twice a second how many cores others want and decodes with the rest.
//!
//! What others want is read from `/proc`: all CPUs' busy time (`/proc/stat`) minus this
//! process's (`/proc/self/stat`) is what others used. When the machine is saturated, the
//! scheduler shares it between every runnable thread, so others used less than they want: with
//! `n` threads of ours using `s` cores and others using `o`, others want `n · o / s`. Changing
//! the thread count changes no bit of what is computed (a row's numbers do not depend on it:
//! `bitexact` tests it), only how fast.

use std::time::Duration;

/// How often the watcher samples.
pub const INTERVAL: Duration = Duration::from_millis(500);

/// CPU time counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Busy time of all CPUs (ticks).
    pub busy: u64,
    /// Busy + idle time of all CPUs (ticks).
    pub total: u64,
    /// This process's user + system time (ticks).
    pub own: u64,
}

/// Reads the counters; `None` where `/proc` is not Linux's.
pub fn sample() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse(&stat, &own)
}

/// Parses `/proc/stat` and `/proc/self/stat`.
pub fn parse(stat: &str, own: &str) -> Option<Sample> {
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice: inside user and nice]
    if v.len() < 8 {
        return None;
    }
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    let total = busy + v[3] + v[4];
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &own[own.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // state is field 3 (index 0 here); utime and stime are fields 14 and 15.
    let own = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Sample { busy, total, own })
}

/// CPUs of the machine as `/proc/stat` counts them (its `cpuN` lines).
pub fn cpus() -> Option<u32> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let n = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    (n > 0).then_some(n as u32)
}

/// The threads to decode with, given the machine's `cpus`, the `max` configured, the `threads`
/// in use and the cores this process (`own`) and others (`others`) used over the last
/// interval: the cores others want, rounded up past 0.3 of a core, are left to them; at least
/// one thread, at most `max`.
pub fn threads_for(cpus: u32, max: u32, threads: u32, own: f64, others: f64) -> u32 {
    let cpus_f = f64::from(cpus);
    let saturated = own + others >= cpus_f - 0.15;
    let wanted = if saturated && own > 0.1 {
        f64::from(threads) * others / own
    } else {
        others
    };
    let leave = (wanted - 0.3).ceil().max(0.0);
    let free = (cpus_f - leave).floor().max(1.0) as u32;
    free.clamp(1, max.max(1))
}

/// Follows the counters and proposes thread counts, changing only when two samples in a row
/// agree (no flapping on a spike).
#[derive(Debug)]
pub struct Watch {
    cpus: u32,
    max: u32,
    last: Sample,
    pending: Option<u32>,
}

impl Watch {
    /// Starts watching (`None` without Linux's `/proc`).
    pub fn new(max: u32) -> Option<Watch> {
        Some(Watch {
            cpus: cpus()?,
            max,
            last: sample()?,
            pending: None,
        })
    }

    /// With `now` sampled and `threads` in use: the thread count to switch to, if any.
    pub fn next(&mut self, now: Sample, threads: u32) -> Option<u32> {
        let dt = now.total.saturating_sub(self.last.total);
        if dt == 0 {
            return None;
        }
        let cores = |ticks: u64| ticks as f64 / dt as f64 * f64::from(self.cpus);
        let own = cores(now.own.saturating_sub(self.last.own));
        let all = cores(now.busy.saturating_sub(self.last.busy));
        let others = (all - own).max(0.0);
        self.last = now;
        let want = threads_for(self.cpus, self.max, threads, own, others);
        if want == threads {
            self.pending = None;
            return None;
        }
        if self.pending == Some(want) {
            self.pending = None;
            return Some(want);
        }
        self.pending = Some(want);
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn others_get_the_cores_they_want() {
        // Quiet: all threads.
        assert_eq!(threads_for(2, 2, 2, 2.0, 0.02), 2);
        assert_eq!(threads_for(16, 16, 16, 16.0, 0.2), 16);
        // One of two cores wanted by another process: sharing 3 threads on 2 cores, it got
        // 2/3 of a core and we 4/3; it wants 1.
        assert_eq!(threads_for(2, 2, 2, 4.0 / 3.0, 2.0 / 3.0), 1);
        // Once we use one thread, it gets its core and we keep one.
        assert_eq!(threads_for(2, 2, 1, 1.0, 1.0), 1);
        // It stops: back to two.
        assert_eq!(threads_for(2, 2, 1, 1.0, 0.0), 2);
        // 8 of 16 cores wanted: 24 threads shared 16 cores.
        assert_eq!(
            threads_for(16, 16, 16, 16.0 * 16.0 / 24.0, 8.0 * 16.0 / 24.0),
            8
        );
        // Never below one, never above the configured maximum.
        assert_eq!(threads_for(2, 2, 2, 0.1, 1.95), 1);
        assert_eq!(threads_for(16, 4, 4, 4.0, 0.0), 4);
    }

    #[test]
    fn proc_files_are_parsed() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 50 2 25 500 10 0 1 1 0 0\n";
        let own = "1234 (agora node) S 1 2 3 4 5 6 7 8 9 10 70 30 0 0 20 0 1 0";
        let s = parse(stat, own).unwrap();
        assert_eq!(s.busy, 100 + 5 + 50 + 1 + 2 + 3);
        assert_eq!(s.total, s.busy + 1000 + 20);
        assert_eq!(s.own, 100);
        assert!(parse("intr 1 2\n", own).is_none());
        assert!(parse(stat, "garbage").is_none());
        // this machine's own files parse
        if std::path::Path::new("/proc/stat").exists() {
            assert!(sample().is_some());
            assert!(cpus().unwrap() >= 1);
        }
    }

    #[test]
    fn a_change_needs_two_samples_in_a_row() {
        let mut w = Watch {
            cpus: 2,
            max: 2,
            last: Sample::default(),
            pending: None,
        };
        let mut t = 0u64;
        let mut own_t = 0u64;
        let mut busy_t = 0u64;
        // 100 ticks per interval per CPU: we use 4/3 cores, others 2/3.
        let mut step = |own: u64, others: u64| {
            t += 200;
            own_t += own;
            busy_t += own + others;
            Sample {
                busy: busy_t,
                total: t,
                own: own_t,
            }
        };
        assert_eq!(w.next(step(133, 67), 2), None);
        assert_eq!(w.next(step(133, 67), 2), Some(1));
        // a one-sample dip does not switch back
        assert_eq!(w.next(step(100, 0), 1), None);
        assert_eq!(w.next(step(100, 100), 1), None);
        assert_eq!(w.next(step(100, 0), 1), None);
        assert_eq!(w.next(step(100, 0), 1), Some(2));
    }
}
