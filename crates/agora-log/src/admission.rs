//! What a log accepts, and how much of it from whom.
//!
//! - [`Accept`]: a log of statements takes only canonical DSSE envelopes of a known statement
//!   kind whose every signature verifies ([`check_statement`]); `Any` takes any bytes (the Go
//!   interop test and the load generator append raw bytes).
//! - [`Quotas`]: token buckets per signer key and per client address, each bucket counting
//!   entries and bytes, in tables of bounded size. An address is an IPv4 address or an IPv6 /64
//!   (one host usually holds a whole /64).
//!
//! Quotas apply to entries from the network ([`crate::Log::submit`]); entries the node appends
//! itself ([`crate::Log::add`]) are checked against [`Accept`] and the disk budget only.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agora_core::{Envelope, Statement};
use agora_tlog::tile::MAX_ENTRY_LEN;

/// Most signatures on one logged statement (each costs a signature verification).
pub const MAX_STATEMENT_SIGNATURES: usize = 8;

/// Which entries a log takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accept {
    /// Only signed statements ([`check_statement`]).
    #[default]
    Statements,
    /// Any bytes up to 65,535 (for tests and benchmarks of the storage path).
    Any,
}

impl std::str::FromStr for Accept {
    type Err = String;
    fn from_str(s: &str) -> Result<Accept, String> {
        match s {
            "statements" => Ok(Accept::Statements),
            "any" => Ok(Accept::Any),
            _ => Err(format!("{s:?} is not `statements` or `any`")),
        }
    }
}

impl fmt::Display for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accept::Statements => "statements",
            Accept::Any => "any",
        })
    }
}

/// Check that `entry` is a statement a log of statements takes: a DSSE envelope in the
/// canonical encoding `agora` writes (so one signed statement has one encoding), of a known
/// statement kind and version, with between 1 and [`MAX_STATEMENT_SIGNATURES`] signatures, each
/// naming its signer by PeerId and verifying over the exact payload. Returns the signers' public
/// keys, or a sentence saying what is wrong.
pub fn check_statement(entry: &[u8]) -> Result<Vec<[u8; 32]>, String> {
    let env = Envelope::from_json(entry)
        .map_err(|e| format!("the entry is not a signed statement: {e}"))?;
    if env.signatures.is_empty() {
        return Err(
            "the statement is unsigned: a log entry needs at least one DSSE signature".into(),
        );
    }
    if env.signatures.len() > MAX_STATEMENT_SIGNATURES {
        return Err(format!(
            "the statement has {} signatures; a log entry has at most {MAX_STATEMENT_SIGNATURES}",
            env.signatures.len()
        ));
    }
    if env.to_json().as_bytes() != entry {
        return Err(
            "the envelope is not in canonical form: compact JSON with the fields \
             payloadType, payload, signatures (keyid, sig) in that order and standard base64, \
             as `agora` writes it"
                .into(),
        );
    }
    let (signers, _) =
        Statement::open(&env).map_err(|e| format!("the statement is refused: {e}"))?;
    Ok(signers
        .into_iter()
        .map(|p| p.public_key().to_bytes())
        .collect())
}

/// One quota: a token bucket for the entry count and one for the bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    /// Entries per second (0: the count is not limited).
    pub rate: f64,
    /// Bytes per second (0: the volume is not limited).
    pub bytes_rate: f64,
    /// Seconds of rate a full bucket holds: the burst. A byte bucket always holds at least one
    /// entry of the largest size.
    pub burst_secs: f64,
}

impl Quota {
    /// No limit.
    pub const OFF: Quota = Quota {
        rate: 0.0,
        bytes_rate: 0.0,
        burst_secs: 10.0,
    };

    pub fn is_off(&self) -> bool {
        let on = |v: f64| v > 0.0;
        !on(self.rate) && !on(self.bytes_rate)
    }

    fn count_cap(&self) -> f64 {
        (self.rate * self.burst_secs).max(1.0)
    }

    fn bytes_cap(&self) -> f64 {
        (self.bytes_rate * self.burst_secs).max(MAX_ENTRY_LEN as f64)
    }
}

/// The quotas of a log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quotas {
    /// Per signer key (every signer of a statement is charged).
    pub signer: Quota,
    /// Per client address (IPv4 address or IPv6 /64).
    pub address: Quota,
    /// Most keys each table tracks; beyond, idle keys are forgotten, and if none is idle a new
    /// key is refused until one is.
    pub max_tracked: usize,
}

impl Default for Quotas {
    /// A signer may log 10 statements/s and 128 KiB/s, an address 100 entries/s and 1 MiB/s,
    /// each with 10 s of burst; 65,536 keys per table.
    fn default() -> Quotas {
        Quotas {
            signer: Quota {
                rate: 10.0,
                bytes_rate: 128.0 * 1024.0,
                burst_secs: 10.0,
            },
            address: Quota {
                rate: 100.0,
                bytes_rate: 1024.0 * 1024.0,
                burst_secs: 10.0,
            },
            max_tracked: 65_536,
        }
    }
}

impl Quotas {
    /// No quotas at all.
    pub fn off() -> Quotas {
        Quotas {
            signer: Quota::OFF,
            address: Quota::OFF,
            max_tracked: 65_536,
        }
    }
}

/// The key of a client address: an IPv4 address (IPv4-mapped IPv6 included) or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl AddressKey {
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(a) => AddressKey::V4(a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4.octets()),
                None => {
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&a.octets()[..8]);
                    AddressKey::V6(p)
                }
            },
        }
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressKey::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(*a)),
            AddressKey::V6(p) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(o))
            }
        }
    }
}

/// Why a limiter refused.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The bucket of `keys[key]` is empty; it holds enough again after `retry_after`.
    Exhausted { key: usize, retry_after: Duration },
    /// The table is full of active keys.
    TableFull { retry_after: Duration },
}

struct Bucket {
    count: f64,
    bytes: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, q: &Quota, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.count = (self.count + dt * q.rate).min(q.count_cap());
        self.bytes = (self.bytes + dt * q.bytes_rate).min(q.bytes_cap());
    }

    fn is_full(&self, q: &Quota) -> bool {
        self.count >= q.count_cap() && self.bytes >= q.bytes_cap()
    }

    /// How long until this bucket can pay for one entry of `len` bytes (zero: now).
    fn wait_for(&self, q: &Quota, len: usize) -> Duration {
        let mut secs: f64 = 0.0;
        if q.rate > 0.0 && self.count < 1.0 {
            secs = secs.max((1.0 - self.count) / q.rate);
        }
        let len = len as f64;
        if q.bytes_rate > 0.0 && self.bytes < len {
            secs = secs.max((len - self.bytes) / q.bytes_rate);
        }
        Duration::from_secs_f64(secs)
    }

    fn take(&mut self, q: &Quota, len: usize) {
        if q.rate > 0.0 {
            self.count -= 1.0;
        }
        if q.bytes_rate > 0.0 {
            self.bytes -= len as f64;
        }
    }
}

struct Table<K> {
    map: HashMap<K, Bucket>,
    last_sweep: Option<Instant>,
}

/// Token buckets per key in a table of bounded size.
pub struct Limiter<K> {
    quota: Quota,
    max: usize,
    table: Mutex<Table<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    pub fn new(quota: Quota, max_tracked: usize) -> Limiter<K> {
        Limiter {
            quota,
            max: max_tracked.max(1),
            table: Mutex::new(Table {
                map: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    pub fn is_off(&self) -> bool {
        self.quota.is_off()
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    /// Charge one entry of `len` bytes to every key of `keys`, or to none if any of them
    /// cannot pay.
    pub fn take(&self, keys: &[K], len: usize, now: Instant) -> Result<(), Refusal> {
        let q = self.quota;
        if q.is_off() || keys.is_empty() {
            return Ok(());
        }
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let new_keys = keys.iter().filter(|k| !t.map.contains_key(*k)).count();
        if t.map.len() + new_keys > self.max {
            // Forget idle keys (a full bucket is the same as a new one), at most once a second.
            if t.last_sweep
                .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1))
            {
                t.last_sweep = Some(now);
                t.map.retain(|_, b| {
                    b.refill(&q, now);
                    !b.is_full(&q)
                });
            }
            if t.map.len() + new_keys > self.max {
                return Err(Refusal::TableFull {
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        let mut wait = Duration::ZERO;
        let mut worst = 0;
        for (i, k) in keys.iter().enumerate() {
            if let Some(b) = t.map.get_mut(k) {
                b.refill(&q, now);
                let w = b.wait_for(&q, len);
                if w > wait {
                    wait = w;
                    worst = i;
                }
            }
        }
        if wait > Duration::ZERO {
            return Err(Refusal::Exhausted {
                key: worst,
                retry_after: wait,
            });
        }
        for k in keys {
            let b = t.map.entry(k.clone()).or_insert_with(|| Bucket {
                count: q.count_cap(),
                bytes: q.bytes_cap(),
                at: now,
            });
            b.take(&q, len);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_core::Identity;
    use agora_core::statement::{Sha256, Vote};

    fn vote(id: &Identity, n: u64) -> Statement {
        Statement::Vote(Vote {
            proposal: Sha256::of(&n.to_be_bytes()),
            network: String::new(),
            choice: agora_core::statement::Choice::Yes,
            reason: None,
            voter: id.peer_id(),
            time: n,
        })
    }

    #[test]
    fn statements() {
        let id = Identity::from_seed(&[1; 32]);
        let good = vote(&id, 1).sign(&id).to_json();
        assert_eq!(
            check_statement(good.as_bytes()).unwrap(),
            vec![id.public_key().to_bytes()]
        );
        // Not an envelope; unsigned; a forged signature; not canonical; an unknown kind.
        let e = check_statement(b"hello").unwrap_err();
        assert!(e.contains("not a signed statement"), "{e}");
        let mut env = vote(&id, 1).sign(&id);
        env.signatures.clear();
        let e = check_statement(env.to_json().as_bytes()).unwrap_err();
        assert!(e.contains("unsigned"), "{e}");
        let mut env = vote(&id, 1).sign(&id);
        env.signatures[0].sig[3] ^= 1;
        let e = check_statement(env.to_json().as_bytes()).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        let spaced = good.replace(",\"", ", \"");
        let e = check_statement(spaced.as_bytes()).unwrap_err();
        assert!(e.contains("canonical"), "{e}");
        let other = Envelope::sign(
            agora_core::statement::AGORA_PAYLOAD_TYPE,
            br#"{"_type":"https://agora.network/nonsense/v1"}"#.to_vec(),
            &id,
        );
        let e = check_statement(other.to_json().as_bytes()).unwrap_err();
        assert!(e.contains("refused"), "{e}");
        // Too many signatures.
        let mut env = vote(&id, 2).sign(&id);
        for k in 0..MAX_STATEMENT_SIGNATURES {
            env.add_signature(&Identity::from_seed(&[k as u8 + 2; 32]));
        }
        assert!(check_statement(env.to_json().as_bytes()).is_err());
        env.signatures.pop();
        assert_eq!(
            check_statement(env.to_json().as_bytes()).unwrap().len(),
            MAX_STATEMENT_SIGNATURES
        );
    }

    #[test]
    fn buckets() {
        let q = Quota {
            rate: 2.0,
            bytes_rate: 100_000.0,
            burst_secs: 2.0,
        };
        let l: Limiter<u8> = Limiter::new(q, 3);
        let t0 = Instant::now();
        // Burst of 4, then refused with the time to the next token.
        for _ in 0..4 {
            l.take(&[1], 10, t0).unwrap();
        }
        match l.take(&[1], 10, t0) {
            Err(Refusal::Exhausted {
                key: 0,
                retry_after,
            }) => {
                assert_eq!(retry_after, Duration::from_millis(500))
            }
            r => panic!("{r:?}"),
        }
        // Another key is not affected; half a second later key 1 has one token.
        l.take(&[2], 10, t0).unwrap();
        l.take(&[1], 10, t0 + Duration::from_millis(500)).unwrap();
        assert!(l.take(&[1], 10, t0 + Duration::from_millis(500)).is_err());
        // Bytes: a bucket holds 200 kB; 3 entries of 65,535 bytes pass, the 4th waits.
        let l: Limiter<u8> = Limiter::new(q, 3);
        for _ in 0..3 {
            l.take(&[7], 65_535, t0).unwrap();
        }
        assert!(matches!(
            l.take(&[7], 65_535, t0),
            Err(Refusal::Exhausted { .. })
        ));
        // Several keys: all pay or none.
        let l: Limiter<u8> = Limiter::new(q, 8);
        for _ in 0..4 {
            l.take(&[1], 1, t0).unwrap();
        }
        match l.take(&[2, 1], 1, t0) {
            Err(Refusal::Exhausted { key: 1, .. }) => {}
            r => panic!("{r:?}"),
        }
        for _ in 0..4 {
            l.take(&[2], 1, t0).unwrap();
        }
    }

    #[test]
    fn bounded_table() {
        let q = Quota {
            rate: 1.0,
            bytes_rate: 0.0,
            burst_secs: 1.0,
        };
        let l: Limiter<u32> = Limiter::new(q, 2);
        let t0 = Instant::now();
        l.take(&[1], 1, t0).unwrap();
        l.take(&[2], 1, t0).unwrap();
        // Full of active keys: a third is refused.
        assert!(matches!(
            l.take(&[3], 1, t0),
            Err(Refusal::TableFull { .. })
        ));
        // Once the first two have refilled they are forgotten and the third gets in.
        l.take(&[3], 1, t0 + Duration::from_secs(2)).unwrap();
        assert!(l.tracked() <= 2);
        // Off: never refuses, tracks nothing.
        let off: Limiter<u32> = Limiter::new(Quota::OFF, 1);
        for k in 0..100 {
            off.take(&[k], 1, t0).unwrap();
        }
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn address_keys() {
        let k = |s: &str| AddressKey::of(s.parse().unwrap());
        assert_eq!(k("192.0.2.1"), k("::ffff:192.0.2.1"));
        assert_eq!(k("2001:db8::1"), k("2001:db8::ffff:1"));
        assert_ne!(k("2001:db8::1"), k("2001:db8:0:1::1"));
        assert_eq!(k("2001:db8::1").to_string(), "2001:db8::/64");
        assert_eq!(k("192.0.2.1").to_string(), "192.0.2.1");
        assert_eq!("any".parse::<Accept>(), Ok(Accept::Any));
        assert!("all".parse::<Accept>().is_err());
    }
}
