//! Agora's benchmarks, load generators and local networks: tools, kept out of the product.
//!
//! Each benchmark runs the peer it compares against in the same run and prints ratios with the
//! conditions they were measured under (machine, threads, model, sizes):
//! - [`server`] (`agora bench`): an Agora node against llama.cpp's own `llama-server`;
//! - [`net`] (`agora bench-net`): what the network layer costs;
//! - [`soak`] (`agora bench-soak`): a devnet under honest and hostile load for a while;
//! - [`verify`] (`agora bench-verify`): the detection matrix and the costs of verifiability;
//! - [`dataset`] (`agora bench-dataset`): dataset ingest against `sha256sum`, proofs;
//! - [`log`] (`agora log bench`) and [`hammer`] (`agora log hammer`): the transparency log.
//!
//! [`devnet`] (`agora devnet`, `agora demo`) starts a whole network on this machine. All child
//! processes go through [`proc`], all statistics through [`stats`].

pub mod busy;
pub mod chat;
pub mod community;
pub mod dataset;
pub mod devnet;
pub mod hammer;
pub mod log;
pub mod net;
pub mod proc;
pub mod provenance;
pub mod server;
pub mod soak;
pub mod stats;
pub mod tokenizers;
pub mod trace;
pub mod transfer;
pub mod verify;

use std::time::Duration;

/// The CPU model, as the benchmarks print it with their conditions.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The cores this process may use.
pub fn num_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Parses `1s`, `250ms`, `2m` or plain seconds (`0.5`), for command-line flags.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 1s, 250ms)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
