//! Blocking HTTP clients: a log client (add, checkpoint, tiles, proofs from tiles) and the
//! witness transport the log's publisher uses.
//!
//! Every response body is read with the limit of what the specs let it be, no more: a hash tile
//! of width `W` is `32 × W` bytes, an entry bundle at most `W × (2 + 65,535)` (a full bundle of
//! maximum-size entries is 16,777,472 bytes), a checkpoint at most the signed-note limit
//! ([`agora_tlog::note::MAX_NOTE_LEN`]), an index line 21 bytes. A larger body is refused (from
//! its `Content-Length` before reading, or as soon as reading passes the limit). Error bodies
//! are read up to 4 KiB and cut there.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use agora_log::{WitnessReply, WitnessTransport};
use agora_tlog::hash::Hash;
use agora_tlog::merkle;
use agora_tlog::tile::{
    MAX_ENTRY_LEN, TileHashSource, TileKind, TilePath, TileReader, decode_bundle,
};

use super::{Result, TlogHttpError};

/// Largest checkpoint: the largest signed note the parser takes.
pub const MAX_CHECKPOINT_LEN: u64 = agora_tlog::note::MAX_NOTE_LEN as u64;
/// Largest answer to `POST /add`: a decimal `u64` and a newline.
pub const MAX_INDEX_LEN: u64 = 21;
/// Largest witness answer: cosignature lines ([`agora_tlog::witness::parse_response`]'s limit),
/// or a 409's size line.
pub const MAX_WITNESS_RESPONSE_LEN: u64 = 1 << 16;
/// Largest evidence statement (a DSSE envelope).
pub const MAX_EVIDENCE_LEN: u64 = agora_core::dsse::MAX_ENVELOPE_LEN as u64;
/// How much of an error body is read (the rest is cut).
const MAX_ERROR_BODY: u64 = 4096;
const CACHE_TILES: usize = 16_384;

/// The largest body tile `t` can be: `32 × W` bytes for hashes, `W × (2 + 65,535)` for an entry
/// bundle of `W` entries.
pub fn max_tile_len(t: &TilePath) -> u64 {
    let w = u64::from(t.width);
    match t.kind {
        TileKind::Hashes { .. } => w * 32,
        TileKind::Entries => w * (2 + MAX_ENTRY_LEN as u64),
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// Read a response: a 200's body must be at most `limit` bytes (else an error); any other
/// status's body is read up to 4 KiB and cut there.
fn read_body(
    url: &str,
    resp: ureq::http::Response<ureq::Body>,
    limit: u64,
) -> Result<(u16, Vec<u8>)> {
    let status = resp.status().as_u16();
    let too_large = |what: String| TlogHttpError::Response {
        url: url.to_string(),
        msg: format!("the body is {what}; at most {limit} bytes are allowed"),
    };
    if status != 200 {
        let mut body = Vec::new();
        let _ = std::io::Read::read_to_end(
            &mut std::io::Read::take(resp.into_body().into_reader(), MAX_ERROR_BODY),
            &mut body,
        );
        return Ok((status, body));
    }
    if let Some(n) = resp.body().content_length()
        && n > limit
    {
        return Err(too_large(format!("{n} bytes")));
    }
    let body = resp
        .into_body()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => too_large("longer".into()),
            e => TlogHttpError::Transport {
                url: url.to_string(),
                msg: e.to_string(),
            },
        })?;
    Ok((status, body))
}

fn status_err(url: &str, status: u16, body: &[u8]) -> TlogHttpError {
    TlogHttpError::Status {
        url: url.to_string(),
        status,
        body: String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_string(),
    }
}

/// A client of one log (its URL prefix).
pub struct LogClient {
    base: String,
    agent: ureq::Agent,
    cache: Mutex<HashMap<(u8, u64, u16), Vec<u8>>>,
}

impl LogClient {
    pub fn new(url: &str) -> LogClient {
        LogClient {
            base: url.trim_end_matches('/').to_string(),
            agent: agent(Duration::from_secs(30)),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn get(&self, path: &str, limit: u64) -> Result<(u16, Vec<u8>)> {
        let url = format!("{}/{path}", self.base);
        let resp = self
            .agent
            .get(&url)
            .header("Accept-Encoding", "identity")
            .call()
            .map_err(|e| TlogHttpError::Transport {
                url: url.clone(),
                msg: e.to_string(),
            })?;
        read_body(&url, resp, limit)
    }

    /// Append an entry; returns its index (once durable).
    pub fn add(&self, entry: &[u8]) -> Result<u64> {
        let url = format!("{}/add", self.base);
        let resp = self
            .agent
            .post(&url)
            .header("Content-Type", "application/octet-stream")
            .send(entry)
            .map_err(|e| TlogHttpError::Transport {
                url: url.clone(),
                msg: e.to_string(),
            })?;
        let (status, body) = read_body(&url, resp, MAX_INDEX_LEN)?;
        if status != 200 {
            return Err(status_err(&url, status, &body));
        }
        std::str::from_utf8(&body)
            .ok()
            .and_then(|s| s.trim_end().parse().ok())
            .ok_or(TlogHttpError::Response {
                url,
                msg: "the body is not an index".into(),
            })
    }

    /// The current checkpoint (unverified bytes).
    pub fn checkpoint(&self) -> Result<Vec<u8>> {
        let (status, body) = self.get("checkpoint", MAX_CHECKPOINT_LEN)?;
        if status != 200 {
            return Err(status_err(
                &format!("{}/checkpoint", self.base),
                status,
                &body,
            ));
        }
        Ok(body)
    }

    /// The first checkpoint the log published of tree size at least `size` (unverified bytes);
    /// `None` on 404 (none yet).
    pub fn checkpoint_at_or_after(&self, size: u64) -> Result<Option<Vec<u8>>> {
        let path = format!("checkpoints/{size}");
        let (status, body) = self.get(&path, MAX_CHECKPOINT_LEN)?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => Err(status_err(&format!("{}/{path}", self.base), status, &body)),
        }
    }

    /// A tile or entry bundle; `None` on 404. A missing partial tile falls back to the full one.
    /// A hash tile must be exactly `32 × W` bytes.
    pub fn tile(&self, t: &TilePath) -> Result<Option<Vec<u8>>> {
        let (status, body) = self.get(&t.to_path(), max_tile_len(t))?;
        let body = match status {
            200 => body,
            404 if !t.is_full() => {
                let full = TilePath { width: 256, ..*t };
                let (status, body) = self.get(&full.to_path(), max_tile_len(&full))?;
                match status {
                    200 => truncate(t, body),
                    404 => return Ok(None),
                    s => return Err(status_err(&full.to_path(), s, &body)),
                }
            }
            404 => return Ok(None),
            s => return Err(status_err(&t.to_path(), s, &body)),
        };
        if matches!(t.kind, TileKind::Hashes { .. }) && body.len() as u64 != max_tile_len(t) {
            return Err(TlogHttpError::Response {
                url: format!("{}/{}", self.base, t.to_path()),
                msg: format!("the tile is {} bytes, not {}", body.len(), max_tile_len(t)),
            });
        }
        Ok(Some(body))
    }

    /// The entries of bundle `index`, first `width` of them.
    pub fn entries(&self, index: u64, width: u16) -> Result<Vec<Vec<u8>>> {
        let t = TilePath::entries(index, width);
        let data = self.tile(&t)?.ok_or_else(|| TlogHttpError::Response {
            url: format!("{}/{}", self.base, t.to_path()),
            msg: "entry bundle not found".into(),
        })?;
        let entries = decode_bundle(&data)?;
        if entries.len() != usize::from(width) {
            return Err(TlogHttpError::Response {
                url: format!("{}/{}", self.base, t.to_path()),
                msg: format!("bundle has {} entries, expected {width}", entries.len()),
            });
        }
        Ok(entries.into_iter().map(<[u8]>::to_vec).collect())
    }

    /// The entry at `index` of the tree of `size` leaves (read from its entry bundle).
    pub fn entry(&self, index: u64, size: u64) -> Result<Vec<u8>> {
        if index >= size {
            return Err(TlogHttpError::Response {
                url: self.base.clone(),
                msg: format!("entry {index} is not in a tree of {size} entries"),
            });
        }
        let bundle = index / 256;
        let width = u16::try_from((size - bundle * 256).min(256)).unwrap_or(256);
        let at = usize::try_from(index % 256).unwrap_or(0);
        self.entries(bundle, width)?
            .into_iter()
            .nth(at)
            .ok_or_else(|| TlogHttpError::Response {
                url: self.base.clone(),
                msg: format!("entry {index} is missing from its bundle"),
            })
    }

    /// Inclusion proof for `index` in the tree of `size` leaves, computed from tiles.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        let src = TileHashSource { reader: self, size };
        Ok(merkle::inclusion_proof(&src, index, size)?)
    }

    /// A tlog-proof of entry `index` under `checkpoint` (parsed, and verified where the caller
    /// must), its path computed from tiles.
    pub fn tlog_proof(
        &self,
        index: u64,
        checkpoint: agora_tlog::checkpoint::SignedCheckpoint,
    ) -> Result<agora_tlog::proof::TlogProof> {
        let size = checkpoint.checkpoint.size;
        if index >= size {
            return Err(TlogHttpError::Response {
                url: self.base.clone(),
                msg: format!("entry {index} is not in the current checkpoint (size {size}) yet"),
            });
        }
        Ok(agora_tlog::proof::TlogProof {
            extra: None,
            index,
            path: self.inclusion_proof(index, size)?,
            checkpoint,
        })
    }

    /// Consistency proof from `old` to `new`, computed from tiles.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        let src = TileHashSource {
            reader: self,
            size: new,
        };
        Ok(merkle::consistency_proof(&src, old, new)?)
    }

    /// Root of the tree of `size` leaves, computed from tiles.
    pub fn root(&self, size: u64) -> Result<Hash> {
        let src = TileHashSource { reader: self, size };
        Ok(merkle::root(&src, size)?)
    }
}

/// A partial tile is a prefix of the full one (entry bundles: the first `width` entries).
fn truncate(t: &TilePath, body: Vec<u8>) -> Vec<u8> {
    match t.kind {
        TileKind::Hashes { .. } => {
            let n = usize::from(t.width) * 32;
            body.get(..n).map(<[u8]>::to_vec).unwrap_or(body)
        }
        TileKind::Entries => {
            let Ok(entries) = decode_bundle(&body) else {
                return body;
            };
            agora_tlog::tile::encode_bundle(entries.into_iter().take(usize::from(t.width)))
                .unwrap_or_default()
        }
    }
}

impl TileReader for LogClient {
    fn read_tile(&self, level: u8, index: u64, width: u16) -> agora_tlog::Result<Vec<u8>> {
        let key = (level, index, width);
        if let Some(t) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(t.clone());
        }
        let t = self
            .tile(&TilePath::hashes(level, index, width))
            .ok()
            .flatten()
            .ok_or(agora_tlog::Error::MissingHash { level, index })?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_TILES {
            cache.clear();
        }
        cache.insert(key, t.clone());
        Ok(t)
    }
}

/// The log's way to call witnesses (tlog-witness over HTTP).
pub struct HttpWitnessTransport {
    agent: ureq::Agent,
}

impl HttpWitnessTransport {
    pub fn new(timeout: Duration) -> HttpWitnessTransport {
        HttpWitnessTransport {
            agent: agent(timeout),
        }
    }
}

impl WitnessTransport for HttpWitnessTransport {
    fn add_checkpoint(&self, url: &str, body: &[u8]) -> std::result::Result<WitnessReply, String> {
        let url = format!("{}/add-checkpoint", url.trim_end_matches('/'));
        let resp = self
            .agent
            .post(&url)
            .header("Content-Type", "text/plain; charset=utf-8")
            .send(body)
            .map_err(|e| format!("{url}: {e}"))?;
        // A 409's size line fits too; any other status's body is cut at 4 KiB.
        let (status, body) =
            read_body(&url, resp, MAX_WITNESS_RESPONSE_LEN).map_err(|e| e.to_string())?;
        Ok(WitnessReply { status, body })
    }
}

/// Read a witness's evidence statements (DSSE envelope JSON).
pub fn fetch_evidence(witness_url: &str) -> Result<Vec<Vec<u8>>> {
    let base = witness_url.trim_end_matches('/');
    let a = agent(Duration::from_secs(30));
    let get = |path: String, limit: u64| -> Result<(u16, Vec<u8>)> {
        let resp = a.get(&path).call().map_err(|e| TlogHttpError::Transport {
            url: path.clone(),
            msg: e.to_string(),
        })?;
        read_body(&path, resp, limit)
    };
    let url = format!("{base}/evidence");
    let (status, body) = get(url.clone(), MAX_INDEX_LEN)?;
    if status != 200 {
        return Err(status_err(&url, status, &body));
    }
    let n: u64 = std::str::from_utf8(&body)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or(TlogHttpError::Response {
            url,
            msg: "not a count".into(),
        })?;
    let mut out = Vec::new();
    for i in 0..n.min(10_000) {
        let url = format!("{base}/evidence/{i}");
        let (status, body) = get(url.clone(), MAX_EVIDENCE_LEN)?;
        if status != 200 {
            return Err(status_err(&url, status, &body));
        }
        out.push(body);
    }
    Ok(out)
}
