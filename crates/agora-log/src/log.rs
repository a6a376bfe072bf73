//! The log service: a sequencer that batches appends and makes each batch durable before
//! acknowledging it, and a publisher that signs a checkpoint at a fixed interval, gathers witness
//! cosignatures and publishes only with a quorum.

use std::collections::HashMap;
use std::path::Path;
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

use crate::store::LogStore;
use crate::{Error, Result};

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
        }
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

    /// Append an entry; resolves to its index once it is durable.
    pub async fn add(&self, entry: Vec<u8>) -> Result<u64> {
        if entry.len() > tile::MAX_ENTRY_LEN {
            return Err(Error::EntryTooLarge { len: entry.len() });
        }
        let leaf = leaf_hash(&entry);
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

fn sequencer(inner: Arc<Inner>, mut frontier: Frontier, rx: Receiver<Msg>) {
    let cfg = &inner.config;
    let mut stopping = false;
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
        let result = inner.store.append(&mut frontier, &items);
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
                for (p, i) in batch.into_iter().zip(indices) {
                    let _ = p.reply.send(Ok(i));
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
    tokio::task::spawn_blocking(move || store.save_checkpoint(&b))
        .await
        .map_err(|e| Error::Storage(e.to_string()))??;
    Ok(bytes)
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
        let reply = transport
            .add_checkpoint(url, &body)
            .map_err(|e| (werr(e), learned))?;
        match reply.status {
            200 => {
                let sigs = parse_response(&reply.body).map_err(|e| (e.into(), learned))?;
                let mine: Vec<NoteSignature> = sigs
                    .into_iter()
                    .filter(|s| {
                        s.name == vkey.name
                            && s.key_id == vkey.key_id
                            && vkey.verify(text.as_bytes(), &s.sig)
                    })
                    .collect();
                if mine.is_empty() {
                    return Err((
                        werr("no valid cosignature in the response".into()),
                        Some(size),
                    ));
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
