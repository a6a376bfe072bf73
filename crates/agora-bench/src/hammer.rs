//! Load generator for a log: many keep-alive HTTP/1.1 connections posting entries to `/add`, at a
//! target rate, with a report of throughput, acknowledgement latency and (optionally) the latency
//! from sending an entry to seeing it in a published checkpoint.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agora_api::keepalive::{Conn, split_url};
use agora_api::tlog::{Result, TlogHttpError};
use bytes::Bytes;
use sha2::{Digest, Sha256};

pub use crate::stats::Percentiles;

/// What to send to a log, how fast, and what to measure (also `agora log hammer`'s flags).
#[derive(clap::Args, Clone, Debug)]
pub struct HammerConfig {
    /// Log URL prefix (`http://host:port[/prefix]`)
    pub url: String,
    /// Entries to send in total (0: until --duration)
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Target entries per second over all connections (0: as fast as possible)
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Concurrent connections, each with one request in flight
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Entry size in bytes
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Stop after this long (e.g. 30s)
    #[arg(long, value_parser = crate::parse_duration)]
    pub duration: Option<Duration>,
    /// Entries are a function of (seed, sequence number), so runs with different seeds differ
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write `index sha256(entry)` of every acknowledged entry to this file
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Also measure append -> published checkpoint latency
    #[arg(long)]
    pub checkpoint_latency: bool,
}

impl Default for HammerConfig {
    fn default() -> Self {
        HammerConfig {
            url: String::new(),
            count: 10_000,
            rate: 0.0,
            concurrency: 64,
            size: 512,
            duration: None,
            seed: 0,
            record: None,
            checkpoint_latency: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct HammerReport {
    pub sent: u64,
    pub acked: u64,
    pub overloaded: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub ack_latency: Percentiles,
    pub inclusion_latency: Option<Percentiles>,
    /// Acknowledged entries never seen in a checkpoint before the end of the run.
    pub not_included: u64,
    pub last_error: Option<String>,
}

impl HammerReport {
    pub fn acked_per_sec(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for HammerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sent {}, acknowledged {} ({:.0}/s over {:.2} s), overloaded (503) {}, other errors {}",
            self.sent,
            self.acked,
            self.acked_per_sec(),
            self.elapsed.as_secs_f64(),
            self.overloaded,
            self.errors
        )?;
        writeln!(f, "append -> acknowledged (durable): {}", self.ack_latency)?;
        if let Some(p) = &self.inclusion_latency {
            writeln!(f, "append -> in a published checkpoint: {p}")?;
            if self.not_included > 0 {
                writeln!(
                    f,
                    "acknowledged but not yet in a checkpoint at the end: {}",
                    self.not_included
                )?;
            }
        }
        if let Some(e) = &self.last_error {
            writeln!(f, "last error: {e}")?;
        }
        Ok(())
    }
}

/// The entry with sequence number `seq`: 8 bytes of `seq`, then SHA-256 of (seed, seq) repeated.
pub fn entry(seed: u64, seq: u64, size: usize) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(seq.to_le_bytes());
    let d = h.finalize();
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&seq.to_le_bytes());
    while v.len() < size {
        let n = (size - v.len()).min(32);
        v.extend_from_slice(&d[..n]);
    }
    v.truncate(size);
    v
}

struct Ack {
    index: u64,
    sent_at: Duration,
    latency: Duration,
    digest: [u8; 32],
}

#[derive(Default)]
struct WorkerResult {
    acks: Vec<Ack>,
    sent: u64,
    overloaded: u64,
    errors: u64,
    last_error: Option<String>,
}

/// The tree size in a `/checkpoint` response body (its second line).
fn checkpoint_size(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.lines().nth(1))
        .and_then(|l| l.parse::<u64>().ok())
}

/// Polls `/checkpoint` every 10 ms until `stop` is notified; returns when (since `start`) each
/// larger tree size was first seen.
fn spawn_poller(
    host: String,
    path: String,
    start: Instant,
    stop: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<Vec<(Duration, u64)>> {
    tokio::spawn(async move {
        let mut conn = Conn::new(&host);
        let mut seen: Vec<(Duration, u64)> = Vec::new();
        let stop_wait = stop.notified();
        tokio::pin!(stop_wait);
        loop {
            if let Ok((200, body)) = conn.request("GET", &path, Bytes::new()).await {
                let size = checkpoint_size(&body);
                if let Some(size) = size
                    && seen.last().is_none_or(|l| l.1 < size)
                {
                    seen.push((start.elapsed(), size));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = &mut stop_wait => break,
            }
        }
        seen
    })
}

/// One connection posting entries to `/add`, taking sequence numbers from a shared counter.
struct Worker {
    host: String,
    path: String,
    next: Arc<AtomicU64>,
    cfg: HammerConfig,
    start: Instant,
    deadline: Option<Instant>,
    interval: Option<Duration>,
}

impl Worker {
    async fn run(self) -> WorkerResult {
        let mut r = WorkerResult::default();
        let mut conn = Conn::new(&self.host);
        let mut ticker = self.interval.map(|d| {
            let mut t = tokio::time::interval(d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            if self.cfg.count > 0 && seq >= self.cfg.count {
                break;
            }
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            let e = entry(self.cfg.seed, seq, self.cfg.size);
            let digest: [u8; 32] = Sha256::digest(&e).into();
            let sent_at = self.start.elapsed();
            r.sent += 1;
            let result = conn.request("POST", &self.path, Bytes::from(e)).await;
            let latency = self.start.elapsed() - sent_at;
            r.record(result, sent_at, latency, digest).await;
        }
        r
    }
}

impl WorkerResult {
    /// Count the answer to one `/add`, backing off after a 503 or a transport error.
    async fn record(
        &mut self,
        result: std::result::Result<(u16, Bytes), String>,
        sent_at: Duration,
        latency: Duration,
        digest: [u8; 32],
    ) {
        match result {
            Ok((200, body)) => {
                match std::str::from_utf8(&body)
                    .ok()
                    .and_then(|s| s.trim_end().parse().ok())
                {
                    Some(index) => self.acks.push(Ack {
                        index,
                        sent_at,
                        latency,
                        digest,
                    }),
                    None => {
                        self.errors += 1;
                        self.last_error = Some("bad /add response body".into());
                    }
                }
            }
            Ok((503, _)) => {
                self.overloaded += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok((status, body)) => {
                self.errors += 1;
                self.last_error = Some(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ));
            }
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn join_error(url: &str, e: tokio::task::JoinError) -> TlogHttpError {
    TlogHttpError::Transport {
        url: url.to_string(),
        msg: e.to_string(),
    }
}

/// Run the load generator.
pub async fn run(cfg: HammerConfig) -> Result<HammerReport> {
    let (host, prefix) = split_url(&cfg.url)?;
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    let next = Arc::new(AtomicU64::new(0));
    let conc = cfg.concurrency.max(1);
    let per_worker_interval =
        (cfg.rate > 0.0).then(|| Duration::from_secs_f64(conc as f64 / cfg.rate));

    // Checkpoint poller.
    let poll_stop = Arc::new(tokio::sync::Notify::new());
    let poller = cfg.checkpoint_latency.then(|| {
        spawn_poller(
            host.clone(),
            format!("{prefix}/checkpoint"),
            start,
            poll_stop.clone(),
        )
    });

    let mut workers = Vec::new();
    for _ in 0..conc {
        let worker = Worker {
            host: host.clone(),
            path: format!("{prefix}/add"),
            next: next.clone(),
            cfg: cfg.clone(),
            start,
            deadline,
            interval: per_worker_interval,
        };
        workers.push(tokio::spawn(worker.run()));
    }
    let mut acks = Vec::new();
    let mut report = HammerReport::default();
    for w in workers {
        let r = w.await.map_err(|e| join_error(&cfg.url, e))?;
        report.sent += r.sent;
        report.overloaded += r.overloaded;
        report.errors += r.errors;
        if r.last_error.is_some() {
            report.last_error = r.last_error;
        }
        acks.extend(r.acks);
    }
    report.elapsed = start.elapsed();
    report.acked = acks.len() as u64;
    report.ack_latency = Percentiles::of(acks.iter().map(|a| a.latency).collect());

    if let Some(poller) = poller {
        wait_for_inclusion(&host, &prefix, &acks).await;
        poll_stop.notify_one();
        let seen = poller.await.map_err(|e| join_error(&cfg.url, e))?;
        let (lat, missing) = inclusion_latencies(&acks, &seen);
        report.not_included = missing;
        report.inclusion_latency = Some(Percentiles::of(lat));
    }

    if let Some(path) = &cfg.record {
        write_record(path, &acks)?;
    }
    Ok(report)
}

/// Wait (bounded: 10 s) for a checkpoint that covers every acknowledged entry.
async fn wait_for_inclusion(host: &str, prefix: &str, acks: &[Ack]) {
    let need = acks.iter().map(|a| a.index + 1).max().unwrap_or(0);
    let mut conn = Conn::new(host);
    let wait_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < wait_until {
        if let Ok((200, body)) = conn
            .request("GET", &format!("{prefix}/checkpoint"), Bytes::new())
            .await
            && checkpoint_size(&body).is_some_and(|s| s >= need)
        {
            tokio::time::sleep(Duration::from_millis(30)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// For each acknowledged entry, the time from sending it to the first checkpoint seen that
/// covers it; and how many no checkpoint seen covers.
fn inclusion_latencies(acks: &[Ack], seen: &[(Duration, u64)]) -> (Vec<Duration>, u64) {
    let mut lat = Vec::with_capacity(acks.len());
    let mut missing = 0;
    for a in acks {
        let i = seen.partition_point(|(_, s)| *s <= a.index);
        match seen.get(i) {
            Some((t, _)) => lat.push(t.saturating_sub(a.sent_at)),
            None => missing += 1,
        }
    }
    (lat, missing)
}

/// Write `index sha256(entry)` for every acknowledged entry to `path`.
fn write_record(path: &std::path::Path, acks: &[Ack]) -> Result<()> {
    let io_error = |e: std::io::Error| TlogHttpError::Transport {
        url: path.display().to_string(),
        msg: e.to_string(),
    };
    let f = std::fs::File::create(path).map_err(io_error)?;
    let mut w = std::io::BufWriter::new(f);
    for a in acks {
        let _ = writeln!(w, "{} {}", a.index, hex::encode(a.digest));
    }
    w.flush().map_err(io_error)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_unique_and_sized() {
        assert_eq!(entry(1, 2, 512).len(), 512);
        assert_ne!(entry(1, 2, 512), entry(1, 3, 512));
        assert_ne!(entry(1, 2, 512), entry(2, 2, 512));
        assert_eq!(entry(1, 2, 5).len(), 5);
    }
}
