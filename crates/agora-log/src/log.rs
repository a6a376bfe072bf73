//! The log service: a sequencer that batches appends and makes each batch durable before
//! acknowledging it, and a publisher that signs a checkpoint at a fixed interval, gathers witness
//! cosignatures and publishes only with a quorum.
//!
//! Entries from the network go through [`Log::submit`]: the per-address quota, the entry check
//! ([`Accept`]), the per-signer quota, then the sequencer, which refuses new entries beyond the
//! disk budget ([`LogConfig::max_bytes`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use agora_core::Identity;
use agora_tlog::checkpoint::{Checkpoint, SignedCheckpoint};
use agora_tlog::hash::{Hash, leaf_hash};
use agora_tlog::merkle;
use agora_tlog::note::{Ed25519Signer, NoteSignature, Vkey};
use agora_tlog::policy::Policy;
use agora_tlog::tile::{self, Frontier, TileHashSource, TileKind, TilePath};
use agora_tlog::witness::{AddCheckpointRequest, parse_response, parse_size_body};
use tokio::sync::{Notify, oneshot};
use tracing::{Instrument, debug, info, warn};

use crate::admission::{self, Accept, AddressKey, Limiter, Quotas, Refusal};
use crate::store::{LogStore, stored_bytes};
use crate::{Error, Result};

/// Default disk budget of a log: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// How far a witness's cosignature timestamp may be from the log's clock (before the request was
/// sent, or after the answer came) for the log to keep it.
pub const COSIGNATURE_SKEW: u64 = 300;

/// How a log reaches a witness's `add-checkpoint` (implemented with HTTP in `agora-api`). Blocking;
/// the publisher calls it from a blocking task.
pub trait WitnessTransport: Send + Sync + 'static {
    fn add_checkpoint(&self, url: &str, body: &[u8]) -> std::result::Result<WitnessReply, String>;
}

/// A witness's HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessReply {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Checkpoint origin and key name.
    pub origin: String,
    /// Most entries in one durable batch.
    pub batch_max: usize,
    /// How long the sequencer waits for more entries after the first of a batch.
    pub batch_wait: Duration,
    /// Capacity of the append queue; beyond it appends are refused (overload).
    pub queue: usize,
    /// Interval between checkpoints.
    pub checkpoint_interval: Duration,
    /// redb quick-repair (instant recovery after a crash, slightly slower commits).
    pub quick_repair: bool,
    /// Witnesses (with URLs) and the quorum needed before publishing. `None`: no witnessing.
    pub policy: Option<Policy>,
    /// Which entries the log takes.
    pub accept: Accept,
    /// Per-signer and per-address quotas on entries from the network.
    pub quotas: Quotas,
    /// Disk budget in bytes, as [`crate::store::stored_bytes`] counts them; beyond it new entries
    /// are refused.
    pub max_bytes: u64,
}

impl LogConfig {
    pub fn new(origin: &str) -> LogConfig {
        LogConfig {
            origin: origin.to_string(),
            batch_max: 16_384,
            batch_wait: Duration::from_millis(2),
            queue: 65_536,
            checkpoint_interval: Duration::from_secs(1),
            quick_repair: true,
            policy: None,
            accept: Accept::Statements,
            quotas: Quotas::default(),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// Take any bytes, without quotas or budget (for benchmarks of the storage path).
    pub fn unrestricted(mut self) -> LogConfig {
        self.accept = Accept::Any;
        self.quotas = Quotas::off();
        self.max_bytes = u64::MAX;
        self
    }
}

struct Pending {
    entry: Vec<u8>,
    leaf: Hash,
    reply: oneshot::Sender<Result<u64>>,
}

enum Msg {
    Add(Pending),
    Shutdown,
}

/// The size and root of the durable, integrated tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHead {
    pub size: u64,
    pub root: Hash,
}

/// The latest published checkpoint.
#[derive(Clone, Debug)]
pub struct Published {
    pub size: u64,
    pub bytes: Arc<Vec<u8>>,
}

struct Inner {
    store: Arc<LogStore>,
    tx: SyncSender<Msg>,
    head: Mutex<TreeHead>,
    published: RwLock<Option<Published>>,
    signer: Ed25519Signer,
    config: LogConfig,
    transport: Option<Arc<dyn WitnessTransport>>,
    stop: Notify,
    new_checkpoint: tokio::sync::watch::Sender<u64>,
    signers: Limiter<[u8; 32]>,
    addresses: Limiter<AddressKey>,
    warned_no_peer: AtomicBool,
}

/// A running log.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Log {
    /// Open the log stored at `path`, start the sequencer thread and the checkpoint publisher
    /// (must be called within a tokio runtime).
    pub fn open(
        path: &Path,
        id: &Identity,
        config: LogConfig,
        transport: Option<Arc<dyn WitnessTransport>>,
    ) -> Result<Log> {
        let signer = id.log_signer(&config.origin)?;
        let (store, frontier) = LogStore::open(
            path,
            &config.origin,
            id.public_key().as_bytes(),
            config.quick_repair,
        )?;
        let store = Arc::new(store);
        let head = TreeHead {
            size: frontier.size(),
            root: frontier.root(),
        };
        // The last published checkpoint must be a prefix of what is stored.
        let published = match store.checkpoint()? {
            Some(bytes) => {
                let c = SignedCheckpoint::open(&bytes, &signer.vkey())?;
                let src = TileHashSource {
                    reader: &*store,
                    size: head.size,
                };
                if c.checkpoint.size > head.size
                    || merkle::root(&src, c.checkpoint.size)? != c.checkpoint.root
                {
                    return Err(Error::Corrupt(format!(
                        "the published checkpoint at size {} is not a prefix of the stored tree of size {}",
                        c.checkpoint.size, head.size
                    )));
                }
                Some(Published {
                    size: c.checkpoint.size,
                    bytes: Arc::new(bytes),
                })
            }
            None => None,
        };
        info!(origin = %config.origin, size = head.size, "log opened");
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue.max(1));
        let (new_checkpoint, _) =
            tokio::sync::watch::channel(published.as_ref().map_or(0, |p| p.size));
        let signers = Limiter::new(config.quotas.signer, config.quotas.max_tracked);
        let addresses = Limiter::new(config.quotas.address, config.quotas.max_tracked);
        let inner = Arc::new(Inner {
            store,
            tx,
            head: Mutex::new(head),
            published: RwLock::new(published),
            signer,
            config,
            transport,
            stop: Notify::new(),
            new_checkpoint,
            signers,
            addresses,
            warned_no_peer: AtomicBool::new(false),
        });
        let seq_inner = inner.clone();
        let seq = std::thread::Builder::new()
            .name("log-sequencer".into())
            .spawn(move || sequencer(seq_inner, frontier, rx))?;
        let pub_inner = inner.clone();
        tokio::spawn(publisher(pub_inner).instrument(tracing::info_span!("log-publisher")));
        Ok(Log {
            inner,
            threads: Arc::new(Mutex::new(vec![seq])),
        })
    }

    pub fn origin(&self) -> &str {
        &self.inner.config.origin
    }

    pub fn vkey(&self) -> Vkey {
        self.inner.signer.vkey()
    }

    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// Append an entry the node itself vouches for (no quotas): it must be one the log takes
    /// ([`LogConfig::accept`]) and fit the disk budget. Resolves to its index once it is durable.
    pub async fn add(&self, entry: Vec<u8>) -> Result<u64> {
        if entry.len() > tile::MAX_ENTRY_LEN {
            return Err(Error::EntryTooLarge { len: entry.len() });
        }
        self.check(&entry)?;
        let leaf = leaf_hash(&entry);
        self.enqueue(entry, leaf).await
    }

    /// Append an entry received from the network, from `peer` (`None` when the server does not
    /// know the client's address: then no address quota applies). In order: the size limit, the
    /// address's quota, the entry check, the quota of every signer (not charged for an entry
    /// already logged, which anyone may resend), the disk budget.
    pub async fn submit(&self, entry: Vec<u8>, peer: Option<IpAddr>) -> Result<u64> {
        if entry.len() > tile::MAX_ENTRY_LEN {
            return Err(Error::EntryTooLarge { len: entry.len() });
        }
        let now = Instant::now();
        let inner = &self.inner;
        match peer {
            Some(ip) => {
                let key = AddressKey::of(ip);
                inner
                    .addresses
                    .take(&[key], entry.len(), now)
                    .map_err(|r| {
                        quota_error(r, &format!("address {key}"), &inner.config.quotas.address)
                    })?;
            }
            None => {
                if !inner.addresses.is_off() && !inner.warned_no_peer.swap(true, Ordering::Relaxed)
                {
                    warn!(
                        "the server does not pass client addresses: no per-address quota applies"
                    );
                }
            }
        }
        let signers = self.check(&entry)?;
        let leaf = leaf_hash(&entry);
        if !signers.is_empty() && !inner.signers.is_off() {
            if let Some(i) = inner.store.find(&leaf)? {
                return Ok(i);
            }
            inner
                .signers
                .take(&signers, entry.len(), now)
                .map_err(|r| {
                    let who = match &r {
                        Refusal::Exhausted { key, .. } => format!(
                            "signer {}",
                            signers
                                .get(*key)
                                .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(k).ok())
                                .map(|k| agora_core::PeerId(k).to_string())
                                .unwrap_or_default()
                        ),
                        Refusal::TableFull { .. } => "a new signer".to_string(),
                    };
                    quota_error(r, &who, &inner.config.quotas.signer)
                })?;
        }
        self.enqueue(entry, leaf).await
    }

    /// Check an entry against [`LogConfig::accept`]; returns the signers of a statement.
    fn check(&self, entry: &[u8]) -> Result<Vec<[u8; 32]>> {
        match self.inner.config.accept {
            Accept::Any => Ok(Vec::new()),
            Accept::Statements => admission::check_statement(entry).map_err(Error::Rejected),
        }
    }

    /// Bytes the log is counted as storing, and its budget.
    pub fn usage(&self) -> (u64, u64) {
        let size = self.head().size;
        (
            stored_bytes(size, self.inner.store.entry_bytes()),
            self.inner.config.max_bytes,
        )
    }

    async fn enqueue(&self, entry: Vec<u8>, leaf: Hash) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        match self
            .inner
            .tx
            .try_send(Msg::Add(Pending { entry, leaf, reply }))
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(Error::Overloaded),
            Err(TrySendError::Disconnected(_)) => return Err(Error::ShuttingDown),
        }
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// The durable, integrated tree head (possibly ahead of the published checkpoint).
    pub fn head(&self) -> TreeHead {
        *self.inner.head.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest published checkpoint.
    pub fn checkpoint(&self) -> Option<Published> {
        self.inner
            .published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wait until a checkpoint of at least `size` is published.
    pub async fn wait_for_checkpoint(&self, size: u64) {
        let mut rx = self.inner.new_checkpoint.subscribe();
        let _ = rx.wait_for(|s| *s >= size).await;
    }

    /// Read a tile or entry bundle; `None` if it does not exist (yet).
    pub fn read_tile(&self, t: &TilePath) -> Result<Option<Vec<u8>>> {
        match t.kind {
            TileKind::Hashes { level } => self.inner.store.read_tile(level, t.index, t.width),
            TileKind::Entries => self.inner.store.read_bundle(t.index, t.width),
        }
    }

    pub fn store(&self) -> &LogStore {
        &self.inner.store
    }

    /// Stop the publisher and the sequencer (entries already queued are still committed).
    pub fn shutdown(&self) {
        self.inner.stop.notify_waiters();
        self.inner.stop.notify_one();
        let _ = self.inner.tx.send(Msg::Shutdown);
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The error for a quota refusal.
fn quota_error(r: Refusal, who: &str, q: &admission::Quota) -> Error {
    let mut parts = Vec::new();
    if q.rate > 0.0 {
        parts.push(format!("{} entries/s", q.rate));
    }
    if q.bytes_rate > 0.0 {
        parts.push(format!("{} bytes/s", q.bytes_rate));
    }
    let quota = format!("{} (bursts of {} s)", parts.join(" and "), q.burst_secs);
    match r {
        Refusal::Exhausted { retry_after, .. } => Error::Quota {
            who: who.to_string(),
            quota,
            retry_after,
        },
        Refusal::TableFull { retry_after } => Error::Quota {
            who: who.to_string(),
            quota: format!("{quota}; too many active clients are tracked"),
            retry_after,
        },
    }
}

fn sequencer(inner: Arc<Inner>, mut frontier: Frontier, rx: Receiver<Msg>) {
    let cfg = &inner.config;
    let mut stopping = false;
    let mut warned_full: Option<Instant> = None;
    while !stopping {
        let first = match rx.recv() {
            Ok(Msg::Add(p)) => p,
            Ok(Msg::Shutdown) | Err(_) => break,
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + cfg.batch_wait;
        while batch.len() < cfg.batch_max {
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(_) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            stopping = true;
                            break;
                        }
                    }
                }
            };
            match msg {
                Msg::Add(p) => batch.push(p),
                Msg::Shutdown => {
                    stopping = true;
                    break;
                }
            }
        }
        let items: Vec<(&[u8], Hash)> =
            batch.iter().map(|p| (p.entry.as_slice(), p.leaf)).collect();
        let started = Instant::now();
        let result = inner
            .store
            .append_within(&mut frontier, &items, cfg.max_bytes);
        match result {
            Ok(indices) => {
                let head = TreeHead {
                    size: frontier.size(),
                    root: frontier.root(),
                };
                *inner.head.lock().unwrap_or_else(|e| e.into_inner()) = head;
                debug!(
                    batch = batch.len(),
                    size = head.size,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "batch committed"
                );
                let mut full = false;
                for (p, i) in batch.into_iter().zip(indices) {
                    let r = i.ok_or_else(|| {
                        full = true;
                        Error::Full {
                            used: stored_bytes(head.size, inner.store.entry_bytes()),
                            budget: cfg.max_bytes,
                        }
                    });
                    let _ = p.reply.send(r);
                }
                if full && warned_full.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    warned_full = Some(Instant::now());
                    warn!(
                        budget = cfg.max_bytes,
                        "the log is full (--log-max-bytes): new entries are refused"
                    );
                }
            }
            Err(e) => {
                warn!(error = %e, batch = batch.len(), "batch failed");
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
    debug!("sequencer stopped");
}

async fn publisher(inner: Arc<Inner>) {
    let mut ticker = tokio::time::interval(inner.config.checkpoint_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Latest size each witness is known to have cosigned (0: ask it).
    let mut known: HashMap<usize, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = inner.stop.notified() => break,
        }
        let head = *inner.head.lock().unwrap_or_else(|e| e.into_inner());
        let current = inner
            .published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.size);
        if current == Some(head.size) {
            continue;
        }
        match publish(&inner, head, &mut known).await {
            Ok(bytes) => {
                *inner.published.write().unwrap_or_else(|e| e.into_inner()) = Some(Published {
                    size: head.size,
                    bytes: Arc::new(bytes),
                });
                inner.new_checkpoint.send_replace(head.size);
                debug!(size = head.size, "checkpoint published");
            }
            Err(e) => warn!(size = head.size, error = %e, "checkpoint not published"),
        }
    }
    debug!("publisher stopped");
}

async fn publish(
    inner: &Arc<Inner>,
    head: TreeHead,
    known: &mut HashMap<usize, u64>,
) -> Result<Vec<u8>> {
    let cp = Checkpoint::new(&inner.config.origin, head.size, head.root);
    let mut sc = SignedCheckpoint::sign(cp, &inner.signer)?;
    if let Some(policy) = &inner.config.policy {
        let log_signed = Arc::new(sc.to_bytes());
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(transport) = &inner.transport {
            for (i, w) in policy.witnesses.iter().enumerate() {
                let Some(url) = w.url.clone() else { continue };
                let (store, transport, vkey, bytes, text) = (
                    inner.store.clone(),
                    transport.clone(),
                    w.vkey.clone(),
                    log_signed.clone(),
                    sc.note.text.clone(),
                );
                let old = known.get(&i).copied().unwrap_or(0);
                tasks.spawn_blocking(move || {
                    let r = cosign_one(
                        &store,
                        &*transport,
                        &url,
                        &vkey,
                        head.size,
                        old,
                        &bytes,
                        &text,
                    );
                    (i, r)
                });
            }
        }
        while let Some(res) = tasks.join_next().await {
            let Ok((i, r)) = res else { continue };
            let name = String::from_utf8_lossy(&policy.witnesses[i].name).into_owned();
            match r {
                Ok((sigs, size)) => {
                    known.insert(i, size);
                    sc.note.sigs.extend(sigs);
                }
                Err((e, size)) => {
                    if let Some(s) = size {
                        known.insert(i, s);
                    }
                    warn!(witness = %name, error = %e, "no cosignature");
                }
            }
        }
        let cosigned = policy.cosigners(&sc)?;
        if !policy.quorum_satisfied(&cosigned) {
            return Err(Error::NoQuorum(format!(
                "{} of {} witnesses cosigned size {}",
                cosigned.len(),
                policy.witnesses.len(),
                head.size
            )));
        }
    }
    let bytes = sc.to_bytes();
    let store = inner.store.clone();
    let b = bytes.clone();
    tokio::task::spawn_blocking(move || store.save_checkpoint(head.size, &b))
        .await
        .map_err(|e| Error::Task(Arc::new(e)))??;
    Ok(bytes)
}

/// Whether a cosignature dated `t` was made while the request was in flight, give or take
/// [`COSIGNATURE_SKEW`] for clocks: not older than the request (a replayed or stale cosignature)
/// nor in the future (tlog-cosignature lets verifiers refuse those).
fn is_fresh(t: u64, sent: u64, answered: u64) -> bool {
    t.saturating_add(COSIGNATURE_SKEW) >= sent && t <= answered.saturating_add(COSIGNATURE_SKEW)
}

/// Ask one witness to cosign; follows a 409 once or twice to learn its size. Returns the valid
/// cosignature lines and the size the witness now holds, or an error and the size if learned.
#[allow(clippy::too_many_arguments)]
fn cosign_one(
    store: &LogStore,
    transport: &dyn WitnessTransport,
    url: &str,
    vkey: &Vkey,
    size: u64,
    mut old: u64,
    checkpoint: &[u8],
    text: &str,
) -> std::result::Result<(Vec<NoteSignature>, u64), (Error, Option<u64>)> {
    let werr = |msg: String| Error::Witness {
        name: vkey.name.clone(),
        msg,
    };
    let mut learned = None;
    for _ in 0..3 {
        if old > size {
            return Err((
                werr(format!(
                    "witness holds size {old}, larger than the log's {size}"
                )),
                learned,
            ));
        }
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            let src = TileHashSource {
                reader: store,
                size,
            };
            merkle::consistency_proof(&src, old, size).map_err(|e| (e.into(), learned))?
        };
        let body = AddCheckpointRequest {
            old_size: old,
            proof,
            checkpoint: checkpoint.to_vec(),
        }
        .to_bytes();
        let sent = crate::unix_now();
        let reply = transport
            .add_checkpoint(url, &body)
            .map_err(|e| (werr(e), learned))?;
        match reply.status {
            200 => {
                let sigs = parse_response(&reply.body).map_err(|e| (e.into(), learned))?;
                let answered = crate::unix_now();
                let mut stale = None;
                let mut mine = Vec::new();
                for s in sigs {
                    if !(s.name == vkey.name
                        && s.key_id == vkey.key_id
                        && vkey.verify(text.as_bytes(), &s.sig))
                    {
                        continue;
                    }
                    let t = agora_tlog::cosignature::timestamp(&s).unwrap_or(0);
                    if is_fresh(t, sent, answered) {
                        mine.push(s);
                    } else {
                        stale = Some(t);
                    }
                }
                if mine.is_empty() {
                    let msg = match stale {
                        Some(t) => format!(
                            "the cosignature is dated {t}, more than {COSIGNATURE_SKEW} s away from \
                             the log's clock (request sent at {sent}, answered at {answered})"
                        ),
                        None => "no valid cosignature in the response".into(),
                    };
                    return Err((werr(msg), Some(size)));
                }
                return Ok((mine, size));
            }
            409 => {
                let s = parse_size_body(&reply.body).map_err(|e| (e.into(), learned))?;
                if s == old {
                    return Err((
                        werr(format!(
                            "conflict at size {s}: the witness holds a different tree"
                        )),
                        learned,
                    ));
                }
                learned = Some(s);
                old = s;
            }
            status => {
                let msg = String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)])
                    .trim()
                    .to_string();
                return Err((werr(format!("HTTP {status}: {msg}")), learned));
            }
        }
    }
    Err((werr("too many conflicts".into()), learned))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::admission::Quota;
    use agora_core::statement::{Sha256, Vote};

    fn vote(id: &Identity, n: u64) -> Vec<u8> {
        agora_core::Statement::Vote(Vote {
            proposal: Sha256::of(&n.to_be_bytes()),
            network: String::new(),
            choice: agora_core::statement::Choice::Yes,
            reason: None,
            voter: id.peer_id(),
            time: n,
        })
        .sign(id)
        .to_json()
        .into_bytes()
    }

    fn open(dir: &Path, config: LogConfig) -> Log {
        let id = Identity::from_seed(&[1; 32]);
        Log::open(&dir.join("log.redb"), &id, config, None).unwrap()
    }

    #[tokio::test]
    async fn statements_and_quotas() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = LogConfig::new("example.com/log");
        cfg.quotas.signer = Quota {
            rate: 1.0,
            bytes_rate: 0.0,
            burst_secs: 3.0,
        };
        cfg.quotas.address = Quota {
            rate: 1.0,
            bytes_rate: 0.0,
            burst_secs: 8.0,
        };
        let log = open(dir.path(), cfg);
        let (a, b) = (Identity::from_seed(&[2; 32]), Identity::from_seed(&[3; 32]));
        let ip1: IpAddr = "192.0.2.1".parse().unwrap();
        // Not statements: refused, whether trusted or not.
        assert!(matches!(
            log.add(b"plain bytes".to_vec()).await,
            Err(Error::Rejected(_))
        ));
        let mut forged = agora_core::Envelope::from_json(&vote(&a, 1)).unwrap();
        forged.signatures[0].sig[0] ^= 1;
        let r = log.submit(forged.to_json().into_bytes(), None).await;
        assert!(
            matches!(&r, Err(Error::Rejected(m)) if m.contains("does not verify")),
            "{r:?}"
        );
        // Signer a: a burst of 3, then 429 naming it; b still gets in; a duplicate of an entry
        // already logged is answered without charging a.
        for n in 0..3 {
            assert_eq!(log.submit(vote(&a, n), None).await.unwrap(), n);
        }
        match log.submit(vote(&a, 3), None).await {
            Err(Error::Quota {
                who, retry_after, ..
            }) => {
                assert_eq!(who, format!("signer {}", a.peer_id()));
                assert!(retry_after <= Duration::from_secs(1) && retry_after > Duration::ZERO);
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(log.submit(vote(&b, 0), None).await.unwrap(), 3);
        assert_eq!(log.submit(vote(&a, 1), None).await.unwrap(), 1);
        // The node's own appends are not subject to quotas.
        assert_eq!(log.add(vote(&a, 3)).await.unwrap(), 4);
        // Address: a burst of 8 (every request counts, refused or not), then 429; another
        // address is not affected.
        let mut refused = None;
        for n in 0..10 {
            if let Err(e) = log
                .submit(vote(&Identity::from_seed(&[10 + n; 32]), 0), Some(ip1))
                .await
            {
                refused = Some((n, e));
                break;
            }
        }
        let (n, e) = refused.unwrap();
        assert_eq!(n, 8);
        assert!(
            e.to_string()
                .starts_with("address 192.0.2.1 is over its quota"),
            "{e}"
        );
        let ip2: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        assert!(log.submit(vote(&b, 1), Some(ip2)).await.is_ok());
        log.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = LogConfig::new("example.com/log");
        cfg.max_bytes = stored_bytes(3, 3 * 1000);
        cfg.accept = Accept::Any;
        let entries: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000]).collect();
        {
            let log = open(dir.path(), cfg.clone());
            for (i, e) in entries.iter().take(3).enumerate() {
                assert_eq!(log.submit(e.clone(), None).await.unwrap(), i as u64);
            }
            let r = log.submit(entries[3].clone(), None).await;
            assert!(
                matches!(r, Err(Error::Full { used, budget })
                    if used == cfg.max_bytes && budget == cfg.max_bytes),
                "{r:?}"
            );
            assert_eq!(log.submit(entries[1].clone(), None).await.unwrap(), 1);
            assert_eq!(log.usage(), (cfg.max_bytes, cfg.max_bytes));
            log.shutdown();
            // Let the publisher task see the stop and drop the database.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Reopened with a larger budget, everything is there and more fits.
        cfg.max_bytes *= 2;
        let log = open(dir.path(), cfg);
        for (i, e) in entries.iter().take(3).enumerate() {
            assert_eq!(log.store().entry(i as u64).unwrap().as_ref(), Some(e));
        }
        assert_eq!(log.submit(entries[3].clone(), None).await.unwrap(), 3);
        log.shutdown();
    }

    /// A witness answering with cosignatures dated `offset` seconds from now.
    struct Skewed {
        witness: Identity,
        offset: i64,
    }

    impl WitnessTransport for Skewed {
        fn add_checkpoint(
            &self,
            _url: &str,
            body: &[u8],
        ) -> std::result::Result<WitnessReply, String> {
            let req = AddCheckpointRequest::parse(body).map_err(|e| e.to_string())?;
            let sc = SignedCheckpoint::parse(&req.checkpoint).map_err(|e| e.to_string())?;
            let t = crate::unix_now().saturating_add_signed(self.offset);
            let sig = self
                .witness
                .cosigner("w.example")
                .unwrap()
                .cosign(&sc.note.text, t)
                .unwrap();
            Ok(WitnessReply {
                status: 200,
                body: agora_tlog::witness::format_response(&[sig]).into_bytes(),
            })
        }
    }

    #[test]
    fn stale_or_future_cosignatures_are_refused() {
        assert!(is_fresh(1000, 1000, 1001));
        assert!(is_fresh(1000 - COSIGNATURE_SKEW, 1000, 1000));
        assert!(!is_fresh(999 - COSIGNATURE_SKEW, 1000, 1000));
        assert!(is_fresh(1000 + COSIGNATURE_SKEW, 999, 1000));
        assert!(!is_fresh(1001 + COSIGNATURE_SKEW, 999, 1000));
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = LogStore::open(&dir.path().join("l.redb"), "o", &[0; 32], true).unwrap();
        let log = Identity::from_seed(&[1; 32]);
        let signer = log.log_signer("example.com/log").unwrap();
        let sc = SignedCheckpoint::sign(
            Checkpoint::new("example.com/log", 0, Hash::empty()),
            &signer,
        )
        .unwrap();
        let witness = Identity::from_seed(&[5; 32]);
        let vkey = witness.witness_vkey("w.example").unwrap();
        for (offset, ok) in [(0, true), (-60, true), (-3600, false), (3600, false)] {
            let t = Skewed {
                witness: witness.clone(),
                offset,
            };
            let r = cosign_one(&store, &t, "x", &vkey, 0, 0, &sc.to_bytes(), &sc.note.text);
            match r {
                Ok((sigs, 0)) => assert!(ok && sigs.len() == 1, "offset {offset}"),
                Err((e, _)) => {
                    assert!(!ok, "offset {offset}: {e}");
                    assert!(e.to_string().contains("away from the log's clock"), "{e}");
                }
                Ok(_) => panic!("size"),
            }
        }
    }
}
