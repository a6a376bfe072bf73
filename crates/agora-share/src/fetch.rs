//! Fetching a model from the peers that hold it: several at once, every chunk checked against
//! the chunk list before it is written, resumable, and nothing in the store until the whole
//! file's SHA-256 is the one asked for.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_models::ModelStore;
use agora_models::chunks::{ChunkError, ChunkList};
use agora_models::store::{StoreError, StoredModel};
use agora_net::{NetHandle, PeerId};
use indicatif::ProgressBar;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::proto::{MAX_REPLY, Reply, Request, What, provider_key};

/// The model wanted.
#[derive(Clone, Debug)]
pub struct Want {
    /// The file's SHA-256, lowercase hex.
    pub sha256: String,
    /// The chunk root (lowercase hex), when known from the catalog or the model's statement in
    /// a log: then a peer's list is checked against it and every chunk as it arrives. Without
    /// it the first list a peer gives is used, and a lying peer is caught only by the whole
    /// file's digest at the end.
    pub root: Option<String>,
    /// Whether the root is beyond doubt (compiled into the catalog): a peer whose list does not
    /// match it is then banned. A root from a manifest (anyone may log one) or from the user may
    /// be the wrong one, so a mismatch only drops the peer: an honest peer is never banned on a
    /// signer's say-so.
    pub root_trusted: bool,
    /// The name it is stored under.
    pub name: String,
    pub license: Option<String>,
}

/// How patient and how wide a fetch is.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// How long to look for providers before giving up (peers may still be connecting).
    pub find_for: Duration,
    /// How long one chunk may take before its peer counts as stalled and is dropped.
    pub chunk_timeout: Duration,
    /// Peers downloaded from at once.
    pub max_peers: usize,
    /// Requests in flight on each peer's stream.
    pub depth: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            find_for: Duration::from_secs(60),
            chunk_timeout: Duration::from_secs(30),
            max_peers: 4,
            depth: 4,
        }
    }
}

/// Why a fetch failed. Chunks already checked stay in the partial file for the next try.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "no peer offers sha256:{digest} (looked for {waited:?}); is a node that has it connected?"
    )]
    NoProviders { digest: String, waited: Duration },
    #[error("no peer gave a valid chunk list for sha256:{digest} ({tried} tried)")]
    NoList { digest: String, tried: usize },
    #[error(
        "every peer was dropped with {have} of {total} chunks here (kept in {partial}); run the pull again to resume"
    )]
    Stalled {
        have: u64,
        total: u64,
        partial: PathBuf,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a fetch did.
#[derive(Debug)]
pub struct Report {
    pub model: StoredModel,
    /// Bytes received in checked chunks (not counting the chunk list).
    pub bytes: u64,
    /// Chunks found already checked in the partial file of an earlier try.
    pub resumed_chunks: u64,
    /// Chunks each peer delivered.
    pub chunks_by_peer: HashMap<PeerId, u64>,
    /// Peers dropped, and why.
    pub dropped: Vec<(PeerId, String)>,
    pub elapsed: Duration,
}

/// Fetches `want` from peers into `store`. Returns at once when the store already holds it.
pub async fn fetch(
    net: &NetHandle,
    store: &ModelStore,
    want: &Want,
    cfg: &FetchConfig,
) -> Result<Report, FetchError> {
    let t0 = Instant::now();
    if let Some(m) = store.find(&want.sha256)?
        && store.blob_path(&m.sha256).is_file()
    {
        return Ok(Report {
            model: m,
            bytes: 0,
            resumed_chunks: 0,
            chunks_by_peer: HashMap::new(),
            dropped: Vec::new(),
            elapsed: t0.elapsed(),
        });
    }
    let mut dropped: Vec<(PeerId, String)> = Vec::new();
    let mut providers = find(net, &want.sha256, cfg.find_for, &dropped).await?;
    tracing::debug!(
        providers = providers.len(),
        secs = t0.elapsed().as_secs_f64(),
        "providers found"
    );
    let list = Arc::new(chunk_list(net, want, cfg, &mut providers, &mut dropped).await?);
    tracing::debug!(secs = t0.elapsed().as_secs_f64(), "chunk list");
    store.note(format!(
        "fetching {} (sha256:{}…, {} MB) from {} peer(s), every 1 MiB chunk checked{}",
        want.name,
        &want.sha256[..12],
        list.size() / 1_000_000,
        providers.len().min(cfg.max_peers),
        if want.root.is_some() {
            " against the known chunk root"
        } else {
            " against a peer's chunk list (no root known: the whole file's digest decides)"
        }
    ));
    let partial = store.partial_path(&want.sha256);
    let (job, resumed_chunks) = prepare(net, store, want, cfg, &list, &partial).await?;
    let (chunks_by_peer, bytes) =
        download(&job, net, want, cfg, providers, &mut dropped, &partial).await?;
    job.bar.finish_and_clear();
    tracing::debug!(secs = t0.elapsed().as_secs_f64(), "chunks all here");
    let model = store_download(job, store, want, &partial).await?;
    net.provide(provider_key(&want.sha256));
    info!(
        model = %model.name,
        bytes,
        secs = t0.elapsed().as_secs_f64(),
        "fetched from peers"
    );
    Ok(Report {
        model,
        bytes,
        resumed_chunks,
        chunks_by_peer,
        dropped,
        elapsed: t0.elapsed(),
    })
}

/// Opens the partial file, hashes what an earlier try left in it, and sets up the job: the
/// chunks still missing, the progress bar. Also returns how many chunks were resumed.
async fn prepare(
    net: &NetHandle,
    store: &ModelStore,
    want: &Want,
    cfg: &FetchConfig,
    list: &Arc<ChunkList>,
    partial: &std::path::Path,
) -> Result<(Arc<Job>, u64), FetchError> {
    let (file, missing) = open_partial(partial, list).await?;
    let resumed_chunks = list.count() - missing.len() as u64;
    let missing_bytes: u64 = missing
        .iter()
        .map(|&i| list.range(i).map_or(0, |r| r.1))
        .sum();
    let frontier = Arc::new(Mutex::new(Frontier::new(list.count(), &missing)));
    {
        // Chunks resumed from an earlier try are hashed now, as far as they are contiguous.
        let (fr, f, l) = (Arc::clone(&frontier), Arc::clone(&file), Arc::clone(list));
        tokio::task::spawn_blocking(move || match fr.lock() {
            Ok(mut fr) => fr.advance(&f, &l),
            Err(_) => Err(std::io::Error::other("the digest's state was poisoned")),
        })
        .await
        .map_err(|e| io("hashing the partial download", std::io::Error::other(e)))?
        .map_err(|e| io("hashing the partial download", e))?;
    }
    if resumed_chunks > 0 {
        store.note(format!(
            "resuming: {resumed_chunks} of {} chunks already here",
            list.count()
        ));
    }
    let bar = store.bar(
        Some(list.size()),
        &format!("fetching {} from peers", want.name),
    );
    bar.inc(list.size() - missing_bytes);
    let job = Arc::new(Job {
        net: net.clone(),
        digest: want.sha256.clone(),
        list: Arc::clone(list),
        file,
        queue: Mutex::new(missing.into_iter().collect()),
        frontier,
        bar,
        cfg: cfg.clone(),
    });
    Ok((job, resumed_chunks))
}

/// Runs a worker per provider (up to `max_peers`) until every chunk is here, looking for
/// other providers when all of them are gone. Returns the chunks each peer gave and the bytes.
async fn download(
    job: &Arc<Job>,
    net: &NetHandle,
    want: &Want,
    cfg: &FetchConfig,
    mut providers: Vec<PeerId>,
    dropped: &mut Vec<(PeerId, String)>,
    partial: &std::path::Path,
) -> Result<(HashMap<PeerId, u64>, u64), FetchError> {
    let mut chunks_by_peer: HashMap<PeerId, u64> = HashMap::new();
    let mut bytes = 0u64;
    loop {
        let mut set = JoinSet::new();
        for &p in providers.iter().take(cfg.max_peers) {
            let job = Arc::clone(job);
            set.spawn(async move { (p, job.worker(p).await) });
        }
        while let Some(done) = set.join_next().await {
            let Ok((peer, outcome)) = done else { continue };
            *chunks_by_peer.entry(peer).or_default() += outcome.chunks;
            bytes += outcome.bytes;
            match outcome.end {
                End::Done => {}
                End::Fatal(e) => return Err(e),
                End::Dropped { reason, ban } => {
                    warn!(%peer, "dropped from the download: {reason}");
                    if ban {
                        net.ban(peer, &reason);
                    }
                    dropped.push((peer, reason));
                }
            }
        }
        if job.left() == 0 {
            return Ok((chunks_by_peer, bytes));
        }
        // Some chunks are left and every peer tried is gone: look for others.
        let wait = cfg.find_for.min(Duration::from_secs(10));
        providers = match find(net, &want.sha256, wait, dropped).await {
            Ok(p) => p,
            Err(_) => {
                job.bar.abandon();
                return Err(FetchError::Stalled {
                    have: job.list.count() - job.left(),
                    total: job.list.count(),
                    partial: partial.to_path_buf(),
                });
            }
        };
    }
}

/// Syncs the finished file and hands it to the store, with the digest the frontier computed
/// over its bytes in order when it reached the end.
async fn store_download(
    job: Arc<Job>,
    store: &ModelStore,
    want: &Want,
    partial: &std::path::Path,
) -> Result<StoredModel, FetchError> {
    let f = Arc::clone(&job.file);
    tokio::task::spawn_blocking(move || f.sync_all())
        .await
        .map_err(|e| io("syncing the download", std::io::Error::other(e)))?
        .map_err(|e| io("syncing the download", e))?;
    let digest = job.frontier.lock().ok().and_then(|f| f.finish());
    drop(job);
    let (store, want, partial) = (store.clone(), want.clone(), partial.to_path_buf());
    tokio::task::spawn_blocking(move || {
        store.commit_download(
            &partial,
            &want.sha256,
            &want.name,
            format!("peers:sha256:{}", want.sha256),
            want.license.clone(),
            digest.as_deref(),
        )
    })
    .await
    .map_err(|e| io("storing the download", std::io::Error::other(e)))?
    .map_err(FetchError::from)
}

fn io(context: &str, source: std::io::Error) -> FetchError {
    FetchError::Io {
        context: context.into(),
        source,
    }
}

/// Peers that offer `digest`: provider records on the DHT, and live peers whose status says
/// they serve it; banned and already dropped peers left out. Waits up to `wait` for one.
async fn find(
    net: &NetHandle,
    digest: &str,
    wait: Duration,
    dropped: &[(PeerId, String)],
) -> Result<Vec<PeerId>, FetchError> {
    let t0 = Instant::now();
    let sha = format!("sha256:{digest}");
    loop {
        let mut found: Vec<PeerId> = net
            .live_peers()
            .into_iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.serves(&sha)))
            .map(|p| p.peer_id)
            .collect();
        let from_dht = tokio::time::timeout(
            Duration::from_secs(10),
            net.find_providers(provider_key(digest), Duration::from_millis(100)),
        )
        .await
        .unwrap_or_default();
        for p in from_dht {
            if !found.contains(&p) {
                found.push(p);
            }
        }
        found.retain(|p| {
            !net.is_banned(p) && !dropped.iter().any(|(d, _)| d == p) && *p != net.peer_id()
        });
        if !found.is_empty() {
            // Peers this node is connected to first: a provider record may outlive its node.
            let connected: Vec<PeerId> = net
                .peers()
                .into_iter()
                .filter(|p| p.connected)
                .map(|p| p.peer_id)
                .collect();
            found.sort_by_key(|p| !connected.contains(p));
            return Ok(found);
        }
        if t0.elapsed() >= wait {
            return Err(FetchError::NoProviders {
                digest: digest.into(),
                waited: t0.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The chunk list, from the first provider that gives a valid one (checked against the root
/// when known). Providers that give a bad one are dropped and banned.
async fn chunk_list(
    net: &NetHandle,
    want: &Want,
    cfg: &FetchConfig,
    providers: &mut Vec<PeerId>,
    dropped: &mut Vec<(PeerId, String)>,
) -> Result<ChunkList, FetchError> {
    let tried = providers.len();
    let mut i = 0;
    while i < providers.len() {
        let peer = providers[i];
        let got = async {
            let mut s = tokio::time::timeout(
                Duration::from_secs(10),
                net.open(peer, net.protocols().model.clone()),
            )
            .await
            .map_err(|_| ("could not open a stream".to_string(), false))?
            .map_err(|e| (e.to_string(), false))?;
            s.send(&Request {
                digest: want.sha256.clone(),
                what: What::List,
            })
            .await
            .map_err(|e| (e.to_string(), false))?;
            let frame = tokio::time::timeout(cfg.chunk_timeout, s.recv_bytes(MAX_REPLY))
                .await
                .map_err(|_| {
                    (
                        format!("no chunk list within {:?}", cfg.chunk_timeout),
                        false,
                    )
                })?
                .map_err(|e| (e.to_string(), e.is_violation()))?
                .ok_or(("closed the stream".to_string(), false))?;
            match Reply::decode(frame).map_err(|e| (e.to_string(), true))? {
                Reply::Refused(r) => Err((format!("refused the chunk list: {r}"), true)),
                Reply::Data(d) => match &want.root {
                    Some(root) => ChunkList::decode_checked(&d, root).map_err(|e| {
                        let root_mismatch = matches!(e, ChunkError::Root { .. });
                        (
                            format!("sent a bad chunk list: {e}"),
                            !root_mismatch || want.root_trusted,
                        )
                    }),
                    None => ChunkList::decode(&d)
                        .map_err(|e| (format!("sent a bad chunk list: {e}"), true)),
                },
            }
        }
        .await;
        match got {
            Ok(list) => return Ok(list),
            Err((reason, ban)) => {
                warn!(%peer, "no chunk list: {reason}");
                if ban {
                    net.ban(peer, &reason);
                }
                dropped.push((peer, reason));
                providers.remove(i);
            }
        }
        if providers.is_empty() {
            break;
        }
        i %= providers.len().max(1);
    }
    Err(FetchError::NoList {
        digest: want.sha256.clone(),
        tried,
    })
}

/// Opens (creating or resuming) the partial file: its missing chunks, in order. A partial file
/// of the right size is kept and every chunk in it checked; one of another size is started
/// over.
async fn open_partial(
    path: &std::path::Path,
    list: &Arc<ChunkList>,
) -> Result<(Arc<File>, Vec<u64>), FetchError> {
    let (path, list) = (path.to_path_buf(), Arc::clone(list));
    tokio::task::spawn_blocking(move || {
        let ctx = || format!("opening {}", path.display());
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&ctx(), e))?;
        let len = f.metadata().map_err(|e| io(&ctx(), e))?.len();
        let mut missing = Vec::new();
        if len == list.size() {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; agora_models::chunks::CHUNK as usize];
            for i in 0..list.count() {
                let (offset, n) = list.range(i).unwrap_or((0, 0));
                let buf = &mut buf[..n as usize];
                let ok = f.read_exact_at(buf, offset).is_ok() && list.check(i, buf).is_ok();
                if !ok {
                    missing.push(i);
                }
            }
        } else {
            f.set_len(0).map_err(|e| io(&ctx(), e))?;
            f.set_len(list.size()).map_err(|e| io(&ctx(), e))?;
            missing.extend(0..list.count());
        }
        Ok((Arc::new(f), missing))
    })
    .await
    .map_err(|e| io("opening the partial download", std::io::Error::other(e)))?
}

/// One fetch's shared state.
struct Job {
    net: NetHandle,
    digest: String,
    list: Arc<ChunkList>,
    file: Arc<File>,
    /// Chunks nobody holds yet; a dropped peer's chunks in flight go back.
    queue: Mutex<VecDeque<u64>>,
    frontier: Arc<Mutex<Frontier>>,
    bar: ProgressBar,
    cfg: FetchConfig,
}

/// How one peer's part of a fetch ended.
enum End {
    /// No chunk left to ask it for.
    Done,
    /// It stalled, closed, refused or sent wrong bytes; `ban` when it broke the protocol or lied.
    Dropped { reason: String, ban: bool },
    /// The download cannot go on (the disk failed).
    Fatal(FetchError),
}

struct Outcome {
    chunks: u64,
    bytes: u64,
    end: End,
}

impl Job {
    fn left(&self) -> u64 {
        self.queue.lock().map(|q| q.len() as u64).unwrap_or(0)
    }

    fn take(&self) -> Option<u64> {
        self.queue.lock().ok()?.pop_front()
    }

    fn give_back(&self, chunks: impl IntoIterator<Item = u64>) {
        if let Ok(mut q) = self.queue.lock() {
            for c in chunks {
                q.push_front(c);
            }
        }
    }

    /// Downloads chunks from `peer` until none is left or the peer is dropped, keeping up to
    /// `depth` requests in flight on one stream.
    async fn worker(&self, peer: PeerId) -> Outcome {
        let mut out = Outcome {
            chunks: 0,
            bytes: 0,
            end: End::Done,
        };
        let mut inflight: VecDeque<u64> = VecDeque::new();
        let end = self.run(peer, &mut inflight, &mut out).await;
        self.give_back(inflight.into_iter().rev());
        out.end = end;
        out
    }

    async fn run(&self, peer: PeerId, inflight: &mut VecDeque<u64>, out: &mut Outcome) -> End {
        let dropped = |reason: String, ban: bool| End::Dropped { reason, ban };
        let mut s = match tokio::time::timeout(
            Duration::from_secs(10),
            self.net.open(peer, self.net.protocols().model.clone()),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return dropped(e.to_string(), false),
            Err(_) => return dropped("could not open a stream within 10 s".into(), false),
        };
        loop {
            while inflight.len() < self.cfg.depth.max(1) {
                let Some(i) = self.take() else { break };
                inflight.push_back(i);
                let req = Request {
                    digest: self.digest.clone(),
                    what: What::Chunk(i),
                };
                if let Err(e) = s.send(&req).await {
                    return dropped(e.to_string(), false);
                }
            }
            let Some(&i) = inflight.front() else {
                return End::Done;
            };
            let frame =
                match tokio::time::timeout(self.cfg.chunk_timeout, s.recv_bytes(MAX_REPLY)).await {
                    Err(_) => {
                        return dropped(
                            format!(
                                "stalled: chunk {i} did not come within {:?}",
                                self.cfg.chunk_timeout
                            ),
                            false,
                        );
                    }
                    Ok(Err(e)) => return dropped(e.to_string(), e.is_violation()),
                    Ok(Ok(None)) => return dropped("closed the stream".into(), false),
                    Ok(Ok(Some(f))) => f,
                };
            let data = match Reply::decode(frame) {
                Err(e) => return dropped(format!("sent a malformed reply: {e}"), true),
                Ok(Reply::Refused(r)) => {
                    return dropped(
                        format!("offered the model but refused chunk {i}: {r}"),
                        true,
                    );
                }
                Ok(Reply::Data(d)) => d,
            };
            if let Err(e) = self.list.check(i, &data) {
                return dropped(format!("sent wrong bytes: {e}"), true);
            }
            let Ok((offset, len)) = self.list.range(i) else {
                return dropped(format!("chunk {i} is not in the list"), true);
            };
            let (f, fr, list) = (
                Arc::clone(&self.file),
                Arc::clone(&self.frontier),
                Arc::clone(&self.list),
            );
            let wrote = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                f.write_all_at(&data, offset)?;
                drop(data);
                let mut fr = fr
                    .lock()
                    .map_err(|_| std::io::Error::other("the digest's state was poisoned"))?;
                fr.done(i);
                fr.advance(&f, &list)
            })
            .await;
            match wrote {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return End::Fatal(io("writing the download", e)),
                Err(e) => return End::Fatal(io("writing the download", std::io::Error::other(e))),
            }
            inflight.pop_front();
            out.chunks += 1;
            out.bytes += len;
            self.bar.inc(len);
        }
    }
}

/// The whole file's SHA-256, computed in file order while the download runs: each time the
/// contiguous run of written chunks from the start grows, the new chunks are read back from the
/// file (still in the page cache) and hashed. So the digest covers the file's own bytes, and
/// no second pass over the file is needed at the end.
struct Frontier {
    next: u64,
    hasher: sha2::Sha256,
    done: Vec<bool>,
    buf: Vec<u8>,
}

impl Frontier {
    fn new(count: u64, missing: &[u64]) -> Self {
        let mut done = vec![true; count as usize];
        for &m in missing {
            if let Some(d) = done.get_mut(m as usize) {
                *d = false;
            }
        }
        Self {
            next: 0,
            hasher: sha2::Digest::new(),
            done,
            buf: Vec::new(),
        }
    }

    fn done(&mut self, i: u64) {
        if let Some(d) = self.done.get_mut(i as usize) {
            *d = true;
        }
    }

    /// Hashes every written chunk from `next` on until one is missing.
    fn advance(&mut self, f: &File, list: &ChunkList) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        while self.done.get(self.next as usize) == Some(&true) {
            let (offset, len) = list
                .range(self.next)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.buf.resize(len as usize, 0);
            f.read_exact_at(&mut self.buf, offset)?;
            sha2::Digest::update(&mut self.hasher, &self.buf);
            self.next += 1;
        }
        if self.next as usize == self.done.len() {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// The digest (lowercase hex), once every chunk was hashed.
    fn finish(&self) -> Option<String> {
        (self.next as usize == self.done.len())
            .then(|| hex::encode(sha2::Digest::finalize(self.hasher.clone())))
    }
}
