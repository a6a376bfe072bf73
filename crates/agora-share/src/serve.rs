//! Serving the models in this node's store to peers, chunk by chunk.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_models::ModelStore;
use agora_models::chunks::ChunkList;
use agora_net::NetHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::proto::{MAX_REQUEST, Reply, Request, What, provider_key};

/// Streams served at once; a peer asking for more is turned away (its stream closed).
pub const MAX_STREAMS: usize = 16;
/// Chunk lists kept in memory (each is 32 bytes per MiB of model).
const LISTS_KEPT: usize = 8;
/// How long a stream may stay idle between requests.
const IDLE: Duration = Duration::from_secs(30);
/// How often the store is looked at again for models added while the node runs (`agora model
/// add` or `pull` in another process): listing it reads one small index file.
pub const RESCAN: Duration = Duration::from_secs(10);

/// What this node does with the model protocol: which store it serves, how fast.
pub struct Sharing {
    store: ModelStore,
    lists: Mutex<VecDeque<(String, Arc<ChunkList>)>>,
    limiter: Option<Limiter>,
    /// Bytes of chunks and lists sent.
    pub sent: AtomicU64,
    /// Test-only misbehaviour (feature `cheat`).
    #[cfg(feature = "cheat")]
    misbehave: Option<crate::cheat::Misbehave>,
    #[cfg(feature = "cheat")]
    chunks_sent: AtomicU64,
}

impl Sharing {
    /// Serves `store`; `upload_limit` in bytes per second over all peers together (`None`:
    /// as fast as the network goes).
    pub fn new(store: ModelStore, upload_limit: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            store,
            lists: Mutex::new(VecDeque::new()),
            limiter: upload_limit.map(Limiter::new),
            sent: AtomicU64::new(0),
            #[cfg(feature = "cheat")]
            misbehave: None,
            #[cfg(feature = "cheat")]
            chunks_sent: AtomicU64::new(0),
        })
    }

    /// The same, serving wrong bytes or dying as `m` says (tests of the fetcher only).
    #[cfg(feature = "cheat")]
    pub fn misbehaving(
        store: ModelStore,
        upload_limit: Option<u64>,
        m: crate::cheat::Misbehave,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            lists: Mutex::new(VecDeque::new()),
            limiter: upload_limit.map(Limiter::new),
            sent: AtomicU64::new(0),
            misbehave: Some(m),
            chunks_sent: AtomicU64::new(0),
        })
    }

    /// Gives the network every model in the store to announce on the DHT (it announces a
    /// digest once, then again as it changes and every few minutes; one it already has is
    /// ignored, so this may run again and again).
    pub fn announce(&self, net: &NetHandle) {
        match self.store.list() {
            Ok(models) => {
                for m in models {
                    if self.store.blob_path(&m.sha256).is_file() {
                        net.provide(provider_key(&m.sha256));
                    }
                }
            }
            Err(e) => warn!("cannot list the stored models to offer them to peers: {e}"),
        }
    }

    /// Announces the store's models now, then those added later, every [`RESCAN`], until the
    /// network stops.
    pub async fn keep_announcing(self: Arc<Self>, net: NetHandle) {
        let mut tick = tokio::time::interval(RESCAN);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if net.is_closed() {
                return;
            }
            self.announce(&net);
        }
    }

    /// Answers the model protocol until the network stops.
    pub async fn serve(self: Arc<Self>, net: NetHandle) {
        use futures::StreamExt;
        let mut incoming = match net.accept(net.protocols().model.clone()) {
            Ok(i) => i,
            Err(e) => {
                warn!("cannot serve models to peers: {e}");
                return;
            }
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
        while let Some((peer, stream)) = incoming.next().await {
            if net.is_banned(&peer) {
                continue;
            }
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                debug!(%peer, "too many model streams: refusing one");
                continue;
            };
            let s = net.framed(stream);
            let this = Arc::clone(&self);
            tokio::spawn(async move {
                this.stream(s, peer).await;
                drop(permit);
            });
        }
    }

    async fn stream(&self, mut s: agora_net::FramedStream, peer: agora_net::PeerId) {
        loop {
            let frame = match tokio::time::timeout(IDLE, s.recv_bytes(MAX_REQUEST)).await {
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) | Err(_) => return,
                Ok(Err(e)) => {
                    debug!(%peer, "model stream: {e}");
                    return;
                }
            };
            let reply = match Request::parse(&frame) {
                Ok(req) => {
                    let reply = self.answer(&req).await;
                    self.tamper(req.what, reply)
                }
                Err(e) => Reply::Refused(format!("bad request: {e}")),
            };
            if let Reply::Data(d) = &reply {
                if let Some(l) = &self.limiter {
                    l.take(d.len() as u64).await;
                }
                self.sent.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            if s.send_bytes(&reply.encode()).await.is_err() {
                return;
            }
        }
    }

    async fn answer(&self, req: &Request) -> Reply {
        let list = match self.list(&req.digest).await {
            Ok(l) => l,
            Err(why) => return Reply::Refused(why),
        };
        match req.what {
            What::List => Reply::Data(list.encode()),
            What::Chunk(i) => {
                let Ok((offset, len)) = list.range(i) else {
                    return Reply::Refused(format!("the model has {} chunks", list.count()));
                };
                let path = self.store.blob_path(&req.digest);
                let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                    use std::os::unix::fs::FileExt;
                    let f = std::fs::File::open(path)?;
                    let mut buf = vec![0u8; len as usize];
                    f.read_exact_at(&mut buf, offset)?;
                    Ok(buf)
                })
                .await;
                match read {
                    Ok(Ok(b)) => Reply::Data(b),
                    _ => Reply::Refused("the model could not be read here".into()),
                }
            }
        }
    }

    /// The chunk list of a stored model (computed once, kept for the last few models asked).
    async fn list(&self, digest: &str) -> Result<Arc<ChunkList>, String> {
        if let Some(l) = self.lists.lock().ok().and_then(|l| {
            l.iter()
                .find(|(d, _)| d == digest)
                .map(|(_, l)| Arc::clone(l))
        }) {
            return Ok(l);
        }
        let path = self.store.blob_path(digest);
        if !path.is_file() {
            return Err("not stored here".into());
        }
        let t0 = Instant::now();
        let list = tokio::task::spawn_blocking(move || ChunkList::of_file(&path))
            .await
            .map_err(|_| "the model could not be read here".to_string())?
            .map_err(|e| format!("the model could not be read here: {e}"))?;
        info!(
            model = digest,
            chunks = list.count(),
            "chunk list computed in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        let list = Arc::new(list);
        if let Ok(mut l) = self.lists.lock() {
            if l.len() >= LISTS_KEPT {
                l.pop_front();
            }
            l.push_back((digest.to_string(), Arc::clone(&list)));
        }
        Ok(list)
    }

    #[cfg(not(feature = "cheat"))]
    fn tamper(&self, _what: What, reply: Reply) -> Reply {
        reply
    }

    #[cfg(feature = "cheat")]
    fn tamper(&self, what: What, reply: Reply) -> Reply {
        let (Some(m), What::Chunk(_), Reply::Data(mut d)) = (&self.misbehave, what, reply.clone())
        else {
            return reply;
        };
        let n = self.chunks_sent.fetch_add(1, Ordering::Relaxed);
        m.apply(n, &mut d);
        Reply::Data(d)
    }
}

/// A token bucket over all streams: bytes per second, with a burst of a tenth of a second (at
/// least one chunk's worth, so that one chunk never waits for itself).
struct Limiter {
    rate: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl Limiter {
    fn new(bytes_per_second: u64) -> Self {
        Self {
            rate: bytes_per_second.max(1) as f64,
            state: tokio::sync::Mutex::new((0.0, Instant::now())),
        }
    }

    /// Waits until `n` bytes may go. Waiters queue on the lock, so the rate holds overall.
    async fn take(&self, n: u64) {
        let mut st = self.state.lock().await;
        let burst = (self.rate / 10.0).max(agora_models::chunks::CHUNK as f64);
        let now = Instant::now();
        st.0 = (st.0 + now.duration_since(st.1).as_secs_f64() * self.rate).min(burst);
        st.1 = now;
        st.0 -= n as f64;
        if st.0 < 0.0 {
            let wait = Duration::from_secs_f64(-st.0 / self.rate);
            tokio::time::sleep(wait).await;
            st.0 = 0.0;
            st.1 = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_upload_limit_holds_over_many_takes() {
        let l = Limiter::new(4 << 20);
        let t0 = Instant::now();
        for _ in 0..40 {
            l.take(1 << 20).await;
        }
        // 40 MiB at 4 MiB/s: 10 s, less the one-chunk burst the bucket starts without.
        let took = t0.elapsed().as_secs_f64();
        assert!((9.5..=10.5).contains(&took), "{took}");
    }
}
