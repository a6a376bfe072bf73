//! The worker role: runs generations that gateways send over libp2p on the local engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agora_engine::{Engine, Event, PromptSpec};
use agora_net::limits::RateLimiter;
use agora_net::{FramedStream, NetHandle, PeerId};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::attest::Attestor;
use crate::convert::remote_error;
use crate::proto::{GenerateRequest, RemoteError, WorkerFrame};

/// Limits a worker applies to the peers that send it work.
#[derive(Clone, Debug)]
pub struct WorkerLimits {
    /// Requests per second one peer may send on average…
    pub rate: f64,
    /// …with bursts up to this many. Beyond, requests are refused with 429.
    pub burst: f64,
    /// A peer refused this many times within `strike_window` is flooding: it is banned. A
    /// well-behaved gateway backs off after a 429 and never gets near this.
    pub strikes: u32,
    pub strike_window: Duration,
    /// Generation streams handled at once (beyond: refused with 429).
    pub max_streams: usize,
    /// How long a peer may take to send its request frame.
    pub request_timeout: Duration,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            rate: 2000.0,
            burst: 4000.0,
            strikes: 1000,
            strike_window: Duration::from_secs(10),
            max_streams: 256,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Decode speed of recent generations (tokens per second, exponentially averaged).
#[derive(Debug, Default)]
pub struct Speed(AtomicU64);

impl Speed {
    pub fn record(&self, tokens: u32, elapsed: Duration) {
        if tokens < 4 || elapsed.is_zero() {
            return;
        }
        let now = f64::from(tokens) / elapsed.as_secs_f64();
        let old = f64::from_bits(self.0.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            now
        } else {
            0.8 * old + 0.2 * now
        };
        self.0.store(new.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Accepts generation streams until the network stops.
pub async fn serve(
    net: NetHandle,
    engine: Arc<dyn Engine>,
    attestor: Attestor,
    limits: WorkerLimits,
    speed: Arc<Speed>,
) {
    let mut incoming = match net.accept(net.protocols().generate.clone()) {
        Ok(i) => i,
        Err(e) => {
            warn!("cannot accept generation streams: {e}");
            return;
        }
    };
    let mut limiter = RateLimiter::new(limits.rate, limits.burst, 4096);
    let mut strikes: HashMap<PeerId, (u32, Instant)> = HashMap::new();
    let streams = Arc::new(Semaphore::new(limits.max_streams));
    while let Some((peer, stream)) = incoming.next().await {
        if net.is_banned(&peer) {
            continue;
        }
        let mut framed = net.framed(stream);
        let over_rate = !limiter.allow(peer);
        let permit = if over_rate {
            None
        } else {
            Arc::clone(&streams).try_acquire_owned().ok()
        };
        let Some(permit) = permit else {
            let (n, since) = strikes.entry(peer).or_insert((0, Instant::now()));
            if since.elapsed() > limits.strike_window {
                (*n, *since) = (0, Instant::now());
            }
            *n += 1;
            if *n >= limits.strikes {
                net.ban(peer, "request flood");
                strikes.remove(&peer);
                continue;
            }
            if strikes.len() > 4096 {
                strikes.clear();
            }
            let message = if over_rate {
                "too many requests from this peer"
            } else {
                "this worker is handling as many streams as it can"
            };
            let err = RemoteError {
                status: 429,
                message: message.into(),
                param: None,
                code: None,
            };
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    framed.send(&WorkerFrame::Error(err)),
                )
                .await;
                let _ = framed.close().await;
            });
            continue;
        };
        let (net, engine, speed) = (net.clone(), Arc::clone(&engine), Arc::clone(&speed));
        let (timeout, attestor) = (limits.request_timeout, attestor.clone());
        tokio::spawn(async move {
            handle(peer, framed, net, engine, attestor, timeout, speed).await;
            drop(permit);
        });
    }
}

async fn handle(
    peer: PeerId,
    mut s: FramedStream,
    net: NetHandle,
    engine: Arc<dyn Engine>,
    attestor: Attestor,
    timeout: Duration,
    speed: Arc<Speed>,
) {
    let req: GenerateRequest = match s.recv_timeout(timeout).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) if e.is_violation() => {
            net.ban(peer, &format!("protocol violation: {e}"));
            return;
        }
        Err(e) => {
            debug!(%peer, "no request: {e}");
            return;
        }
    };
    let info = engine.info();
    let serves = req.model == info.name
        || req.model.strip_prefix("sha256:").unwrap_or(&req.model) == info.sha256;
    if !serves {
        let err = RemoteError {
            status: 404,
            message: format!("this worker does not serve `{}`", req.model),
            param: Some("model".into()),
            code: Some("model_not_found".into()),
        };
        let _ = s.send(&WorkerFrame::Error(err)).await;
        return;
    }
    let chat = matches!(req.job.prompt, PromptSpec::Chat(_));
    let (mut generation, prompt_tokens) =
        match attestor.start(&engine, &req.job, req.resume.clone()).await {
            Ok(g) => g,
            Err(e) => {
                let err = remote_error(agora_api::backend::prepare_error(e, chat));
                let _ = s.send(&WorkerFrame::Error(err)).await;
                return;
            }
        };
    if s.send(&WorkerFrame::Accepted {
        model: info.name.clone(),
        prompt_tokens,
    })
    .await
    .is_err()
    {
        return;
    }
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    while let Some(ev) = generation.events.recv().await {
        let frame = match ev {
            Event::Token(t) => {
                first.get_or_insert_with(Instant::now);
                WorkerFrame::Token {
                    id: t.id,
                    index: t.index,
                    text: t.text,
                }
            }
            Event::Done(f) => {
                if let Some(t0) = first {
                    speed.record(
                        f.completion_tokens
                            .saturating_sub(req.resume.len() as u32 + 1),
                        t0.elapsed(),
                    );
                }
                let done = WorkerFrame::Done {
                    reason: f.reason,
                    prompt_tokens: f.prompt_tokens,
                    completion_tokens: f.completion_tokens,
                    tail: f.tail,
                    attestation: f.attestation,
                };
                let _ = s.send(&done).await;
                let _ = s.close().await;
                debug!(%peer, elapsed = ?started.elapsed(), "generation done");
                return;
            }
            Event::Error(e) => WorkerFrame::Error(RemoteError {
                status: 500,
                message: e,
                param: None,
                code: None,
            }),
            Event::Worker(_) | Event::Replayed(_) => continue,
        };
        let is_error = matches!(frame, WorkerFrame::Error(_));
        // The gateway went away: dropping the generation frees the slot.
        if s.send(&frame).await.is_err() || is_error {
            return;
        }
    }
}
