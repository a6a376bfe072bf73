//! The dashboard's checks, for WebAssembly (no I/O).
//!
//! A page cannot trust the node that served it, so it checks what it shows itself, with the same
//! code as the CLI: [`agora_verify::answer::Transcript::check`] for receipts and transcripts,
//! [`agora_tlog`] for checkpoints, cosignatures and inclusion proofs, [`agora_core`] for signed
//! statements. The page fetches bytes (checkpoints, tiles, entries) and hands them here; nothing
//! here trusts them.
//!
//! The interface is deliberately small and needs no generated glue: JSON in, JSON out, through
//! linear memory ([`agora_alloc`], [`agora_call`], [`agora_free`]). Byte strings travel as
//! standard base64. Every answer is `{"ok": true, …}` or `{"ok": false, "error": "…"}`; no input
//! makes it panic (fuzzed through [`call`]).
//!
//! Operations (`"op"`):
//! - `transcript` `{transcript}`: the receipt's signature and every digest it covers.
//! - `checkpoint` `{policy, checkpoint}`: signed by the policy's log, cosigned by its quorum.
//! - `tiles` `{index, size}`: the tile paths an inclusion proof of `index` needs.
//! - `inclusion` `{policy, checkpoint, index, entry, tiles}`: `entry` is at `index` under the
//!   verified checkpoint, the proof computed from the given tiles.
//! - `statement` `{entry | entry_text}`: a log entry's signatures verified and its statement
//!   decoded.
//! - `record_proof` `{proof, policy?}`: a dataset proof file (a record in a dataset, or an id
//!   absent from it), as `agora dataset verify` checks it.
//! - `sha256` `{text}`: the SHA-256 of a text (the page pins the log policy by it).
//! - `text_digest` `{text}`: the digest a receipt records for a text (what provenance looks up).

use std::collections::HashMap;

use agora_core::{Envelope, Sha256, Statement};
use agora_tlog::checkpoint::SignedCheckpoint;
use agora_tlog::hash::{Hash, leaf_hash};
use agora_tlog::tile::{TileHashSource, TilePath, TileReader};
use agora_tlog::{Policy, merkle};
use agora_verify::answer::Transcript;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// Largest request [`call`] takes (a transcript with its proof, or tiles for a deep proof).
pub const MAX_INPUT: usize = 8 << 20;

/// Most tiles an `inclusion` request may carry (a proof of a 2^64-leaf tree reads fewer).
const MAX_TILES: usize = 64;

/// One request, answered: `input` is the request's JSON, the result is the answer's JSON.
pub fn call(input: &[u8]) -> Vec<u8> {
    let answer = match run(input) {
        Ok(mut v) => {
            if let Value::Object(m) = &mut v {
                m.insert("ok".into(), Value::Bool(true));
            }
            v
        }
        Err(e) => json!({"ok": false, "error": e}),
    };
    serde_json::to_vec(&answer).unwrap_or_else(|_| b"{\"ok\":false}".to_vec())
}

type R<T> = Result<T, String>;

fn run(input: &[u8]) -> R<Value> {
    if input.len() > MAX_INPUT {
        return Err(format!("the request is larger than {MAX_INPUT} bytes"));
    }
    let req: Value = serde_json::from_slice(input).map_err(|e| format!("not JSON: {e}"))?;
    match str_field(&req, "op")? {
        "transcript" => transcript(&req),
        "checkpoint" => {
            let (policy, c) = checkpoint(&req)?;
            Ok(describe_checkpoint(&policy, &c))
        }
        "tiles" => tiles(&req),
        "inclusion" => inclusion(&req),
        "statement" => statement(&entry_field(&req)?),
        "record_proof" => record_proof(&req),
        "sha256" => {
            Ok(json!({ "digest": Sha256::of(str_field(&req, "text")?.as_bytes()).to_string() }))
        }
        "text_digest" => {
            let d =
                agora_core::text::digest(str_field(&req, "text")?).map_err(|e| e.to_string())?;
            Ok(json!({ "digest": d.to_string() }))
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

fn str_field<'a>(v: &'a Value, k: &str) -> R<&'a str> {
    v.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string field {k:?}"))
}

fn u64_field(v: &Value, k: &str) -> R<u64> {
    v.get(k)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("missing number field {k:?}"))
}

fn bytes_field(v: &Value, k: &str) -> R<Vec<u8>> {
    STANDARD
        .decode(str_field(v, k)?)
        .map_err(|_| format!("field {k:?} is not base64"))
}

/// A log entry given as `entry_text` (a string) or `entry` (base64).
fn entry_field(v: &Value) -> R<Vec<u8>> {
    match v.get("entry_text").and_then(Value::as_str) {
        Some(s) => Ok(s.as_bytes().to_vec()),
        None => bytes_field(v, "entry"),
    }
}

/// The transcript check of `agora verify`, less re-running the model.
fn transcript(req: &Value) -> R<Value> {
    let t = match req.get("transcript") {
        Some(Value::String(s)) => Transcript::parse(s.as_bytes()),
        Some(v) => Transcript::parse(v.to_string().as_bytes()),
        None => return Err("missing field \"transcript\"".into()),
    }
    .map_err(|e| e.to_string())?;
    let c = t.check().map_err(|e| e.to_string())?;
    let proof = agora_verify::Proof::decode(&c.proof_bytes)
        .map_err(|e| format!("the activation proof is malformed: {e}"))?;
    let env = receipt_envelope(&t)?;
    let r = &c.receipt;
    let item = |code: &str, text: &str| json!({"code": code, "text": text});
    let mut checked = vec![
        item(
            "signature",
            "receipt signed by the worker it names (Ed25519, DSSE)",
        ),
        item("request", "request digest (salted) matches the request"),
        item("output", "output digest matches the tokens"),
        item(
            "proof",
            "proof digest matches the proof, whose format decodes",
        ),
    ];
    let mut not_checked = vec![item(
        "model",
        "that the model computed these tokens: re-running it is a validator's job (see verdicts)",
    )];
    // Only a receipt with a text digest binds the text shown to the tokens.
    if r.text.is_some() {
        checked.push(item("text", "text digest matches the text"));
    } else {
        not_checked.push(item(
            "textUnbound",
            "the text shown: this receipt carries no text digest, so only the tokens are bound",
        ));
    }
    checked.push(item("counts", "seed and token count match the receipt"));
    Ok(json!({
        "worker": r.worker.to_string(),
        "model": t.model,
        "weights": r.model.to_string(),
        "receipt_digest": c.receipt_digest.to_string(),
        "seed": r.seed,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "proof_bytes": c.proof_bytes.len(),
        "proof_tokens": proof.n_tokens,
        "text": t.output.text,
        "log": t.log.as_ref().map(|l| json!({"url": l.url, "index": l.index})),
        // The exact bytes the log holds for this receipt (what inclusion is checked against).
        "entry": STANDARD.encode(env.to_json()),
        "leaf": hex::encode(leaf_hash(env.to_json().as_bytes()).0),
        "text_digest": r.text.as_ref().map(|d| d.to_string()),
        // Codes for the page's catalogues, with the English text.
        "checked": checked,
        "not_checked": not_checked,
    }))
}

fn receipt_envelope(t: &Transcript) -> R<Envelope> {
    let bytes = serde_json::to_vec(&t.receipt).map_err(|e| e.to_string())?;
    Envelope::from_json(&bytes).map_err(|e| e.to_string())
}

/// The checkpoint in `req`, verified under the policy in `req`.
fn checkpoint(req: &Value) -> R<(Policy, SignedCheckpoint)> {
    let policy =
        Policy::parse(str_field(req, "policy")?.as_bytes()).map_err(|e| format!("policy: {e}"))?;
    let c = policy
        .verify_checkpoint(str_field(req, "checkpoint")?.as_bytes())
        .map_err(|e| format!("checkpoint: {e}"))?;
    Ok((policy, c))
}

fn describe_checkpoint(policy: &Policy, c: &SignedCheckpoint) -> Value {
    let keys = policy.witness_vkeys();
    let cosigners: Vec<Value> = policy
        .cosigners(c)
        .map(|set| {
            let mut v: Vec<usize> = set.into_iter().collect();
            v.sort_unstable();
            v
        })
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| {
            let k = keys.get(i)?;
            let name = String::from_utf8_lossy(&policy.witnesses.get(i)?.name).into_owned();
            let time = c
                .note
                .sigs
                .iter()
                .find(|s| s.name == k.name && s.key_id == k.key_id)
                .and_then(|s| agora_tlog::cosignature::timestamp(s).ok());
            Some(json!({"name": name, "key": k.name, "time": time}))
        })
        .collect();
    json!({
        "origin": c.checkpoint.origin,
        "size": c.checkpoint.size,
        "root": hex::encode(c.checkpoint.root.0),
        "cosigners": cosigners,
        "witnesses": policy.witnesses.len(),
    })
}

/// Records which tiles a proof reads, answering with zeros (paths do not depend on hashes).
struct Recorder {
    seen: std::cell::RefCell<Vec<TilePath>>,
}

impl TileReader for Recorder {
    fn read_tile(&self, level: u8, index: u64, width: u16) -> agora_tlog::Result<Vec<u8>> {
        let t = TilePath::hashes(level, index, width);
        let mut seen = self.seen.borrow_mut();
        if !seen.contains(&t) {
            seen.push(t);
        }
        Ok(vec![0; usize::from(width) * 32])
    }
}

fn tiles(req: &Value) -> R<Value> {
    let (index, size) = (u64_field(req, "index")?, u64_field(req, "size")?);
    let rec = Recorder {
        seen: Default::default(),
    };
    merkle::inclusion_proof(&TileHashSource { reader: &rec, size }, index, size)
        .map_err(|e| e.to_string())?;
    let paths: Vec<String> = rec
        .seen
        .into_inner()
        .iter()
        .map(TilePath::to_path)
        .collect();
    Ok(json!({ "tiles": paths }))
}

/// Tiles given by the page, by path.
struct Given(HashMap<String, Vec<u8>>);

impl TileReader for Given {
    fn read_tile(&self, level: u8, index: u64, width: u16) -> agora_tlog::Result<Vec<u8>> {
        self.0
            .get(&TilePath::hashes(level, index, width).to_path())
            .cloned()
            .ok_or(agora_tlog::Error::MissingHash { level, index })
    }
}

fn inclusion(req: &Value) -> R<Value> {
    let (policy, c) = checkpoint(req)?;
    let index = u64_field(req, "index")?;
    let entry = entry_field(req)?;
    let Some(Value::Object(given)) = req.get("tiles") else {
        return Err("missing object field \"tiles\"".into());
    };
    if given.len() > MAX_TILES {
        return Err(format!("more than {MAX_TILES} tiles"));
    }
    let mut tiles = HashMap::new();
    for (path, b64) in given {
        let bytes = b64
            .as_str()
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| format!("tile {path} is not base64"))?;
        tiles.insert(path.clone(), bytes);
    }
    let size = c.checkpoint.size;
    if index >= size {
        return Err(format!(
            "entry {index} is not in the checkpoint yet (size {size})"
        ));
    }
    let src = TileHashSource {
        reader: Given(tiles),
        size,
    };
    let path = merkle::inclusion_proof(&src, index, size).map_err(|e| format!("tiles: {e}"))?;
    let leaf: Hash = leaf_hash(&entry);
    merkle::verify_inclusion(index, size, &leaf, &path, &c.checkpoint.root).map_err(|_| {
        format!(
            "entry {index} is not under the checkpoint's root: a tile or the entry was altered \
             ({} proof hashes from {} tiles)",
            path.len(),
            src.reader.0.len()
        )
    })?;
    let mut out = describe_checkpoint(&policy, &c);
    if let Value::Object(m) = &mut out {
        m.insert("index".into(), json!(index));
        m.insert("proof_hashes".into(), json!(path.len()));
    }
    Ok(out)
}

/// A dataset proof file (`agora-dataset-proof/1`), checked as `agora dataset verify` checks it.
fn record_proof(req: &Value) -> R<Value> {
    let policy = match req.get("policy").and_then(Value::as_str) {
        Some(p) => Some(Policy::parse(p.as_bytes()).map_err(|e| format!("policy: {e}"))?),
        None => None,
    };
    let proof = req.get("proof").ok_or("missing field \"proof\"")?;
    let p = agora_data::file::check(proof, policy.as_ref())?;
    Ok(
        json!({ "line": p.line, "id": p.id, "text": p.text, "dataset": p.dataset, "logged": p.logged }),
    )
}

/// A log entry: its envelope's signatures verified, its statement decoded and shown as signed.
fn statement(entry: &[u8]) -> R<Value> {
    let env = Envelope::from_json(entry).map_err(|e| e.to_string())?;
    let (signers, st) = Statement::open(&env).map_err(|e| e.to_string())?;
    let payload: Value = serde_json::from_slice(&env.payload).map_err(|e| e.to_string())?;
    Ok(json!({
        "kind": st.kind().name(),
        "signers": signers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "digest": Sha256::of(&env.payload).to_string(),
        "statement": payload,
    }))
}

/// Memory for a request of `len` bytes, for the page to fill (freed by [`agora_call`]).
#[unsafe(no_mangle)]
pub extern "C" fn agora_alloc(len: usize) -> *mut u8 {
    Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>()
}

/// Frees `len` bytes at `ptr` from [`agora_alloc`] or [`agora_call`].
///
/// # Safety
/// `ptr` and `len` must come from one of those calls, once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agora_free(ptr: *mut u8, len: usize) {
    if !ptr.is_null() {
        // SAFETY: the caller hands back a buffer of exactly `len` bytes allocated here.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
    }
}

/// Answers the request of `len` bytes at `ptr` (which it frees). Returns a buffer holding the
/// answer's length (4 bytes, little-endian) then the answer; free it with [`agora_free`] and
/// its length + 4.
///
/// # Safety
/// `ptr` and `len` must come from [`agora_alloc`], filled by the caller.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agora_call(ptr: *mut u8, len: usize) -> *mut u8 {
    // SAFETY: as above; the request buffer is taken back and freed here.
    let input = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) };
    let answer = call(&input);
    let n = u32::try_from(answer.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(answer.len() + 4);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&answer);
    Box::into_raw(out.into_boxed_slice()).cast::<u8>()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_tlog::checkpoint::Checkpoint;
    use agora_tlog::cosignature::Cosigner;
    use agora_tlog::note::Ed25519Signer;
    use agora_tlog::tile::{Frontier, level_count};
    use ed25519_dalek::SigningKey;

    fn ask(v: Value) -> Value {
        serde_json::from_slice(&call(v.to_string().as_bytes())).unwrap()
    }

    /// A log of `n` entries, its tiles by path, and a cosigned checkpoint with its policy.
    struct Log {
        entries: Vec<Vec<u8>>,
        tiles: HashMap<String, String>,
        checkpoint: String,
        policy: String,
    }

    fn log(n: u64) -> Log {
        let signer =
            Ed25519Signer::new("example.com/log", SigningKey::from_bytes(&[7; 32])).unwrap();
        let witness = Cosigner::new("w.example", SigningKey::from_bytes(&[8; 32])).unwrap();
        let mut fr = Frontier::new();
        let (mut full, mut tiles, mut entries) = (Vec::new(), HashMap::new(), Vec::new());
        for i in 0..n {
            let e = format!("entry {i}").into_bytes();
            fr.push(leaf_hash(&e), &mut full);
            entries.push(e);
        }
        let enc = |hs: &[Hash]| STANDARD.encode(hs.iter().flat_map(|h| h.0).collect::<Vec<u8>>());
        for t in full.drain(..) {
            tiles.insert(
                TilePath::hashes(t.level, t.index, 256).to_path(),
                enc(&t.hashes),
            );
        }
        for l in 0..fr.levels() {
            let p = fr.partial(l);
            if !p.is_empty() {
                let path = TilePath::hashes(l, level_count(l + 1, n), p.len() as u16).to_path();
                tiles.insert(path, enc(p));
            }
        }
        let mut c =
            SignedCheckpoint::sign(Checkpoint::new("example.com/log", n, fr.root()), &signer)
                .unwrap();
        c.note
            .sigs
            .push(witness.cosign(&c.note.text, 1_700_000_000).unwrap());
        Log {
            entries,
            tiles,
            checkpoint: String::from_utf8(c.to_bytes()).unwrap(),
            policy: format!(
                "log {}\nwitness w {}\nquorum w\n",
                signer.vkey(),
                witness.vkey()
            ),
        }
    }

    fn inclusion(l: &Log, index: u64, tiles: &HashMap<String, String>) -> Value {
        ask(
            json!({"op": "inclusion", "policy": l.policy, "checkpoint": l.checkpoint,
                   "index": index, "entry": STANDARD.encode(&l.entries[index as usize]),
                   "tiles": tiles}),
        )
    }

    #[test]
    fn inclusion_from_the_tiles_the_page_is_told_to_fetch() {
        for n in [1u64, 2, 300, 70_000] {
            let l = log(n);
            for index in [0, n / 2, n - 1] {
                let need = ask(json!({"op": "tiles", "index": index, "size": n}));
                assert_eq!(need["ok"], true, "{need}");
                let paths: Vec<&str> = need["tiles"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap())
                    .collect();
                let given: HashMap<String, String> = paths
                    .iter()
                    .map(|p| (p.to_string(), l.tiles[*p].clone()))
                    .collect();
                let r = inclusion(&l, index, &given);
                assert_eq!(r["ok"], true, "n={n} index={index}: {r}");
                assert_eq!(r["size"], n);
                assert_eq!(r["cosigners"][0]["name"], "w");
                // One altered bit in any tile given: refused, with the reason.
                for p in &paths {
                    let mut bad = given.clone();
                    let mut bytes = STANDARD.decode(&bad[*p]).unwrap();
                    // One bit of every hash (which ones a proof reads depends on the index).
                    for h in bytes.chunks_mut(32) {
                        h[0] ^= 1;
                    }
                    bad.insert(p.to_string(), STANDARD.encode(&bytes));
                    let r = inclusion(&l, index, &bad);
                    if n > 1 {
                        assert_eq!(r["ok"], false, "altered {p} accepted");
                        assert!(r["error"].as_str().unwrap().contains("not under"), "{r}");
                    } else {
                        // A tree of one entry has no proof hashes: no tile is read.
                        assert_eq!(r["ok"], true);
                    }
                }
            }
            // Another entry at that index: refused.
            let mut other = json!({"op": "inclusion", "policy": l.policy, "checkpoint": l.checkpoint,
                                   "index": 0, "entry": STANDARD.encode(b"forged"), "tiles": l.tiles.iter().take(64).collect::<HashMap<_, _>>()});
            assert_eq!(ask(other.take())["ok"], false);
        }
    }

    #[test]
    fn checkpoints_need_the_log_and_the_quorum() {
        let l = log(10);
        let ok = ask(json!({"op": "checkpoint", "policy": l.policy, "checkpoint": l.checkpoint}));
        assert_eq!(ok["ok"], true, "{ok}");
        assert_eq!(ok["cosigners"][0]["time"], 1_700_000_000u64);
        // Without the witness's cosignature the quorum is not met.
        let bare: String = l
            .checkpoint
            .lines()
            .filter(|line| !line.contains("w.example") && !line.starts_with("— w "))
            .map(|line| format!("{line}\n"))
            .collect();
        let r = ask(json!({"op": "checkpoint", "policy": l.policy, "checkpoint": bare}));
        assert_eq!(r["ok"], false, "{r}");
        // Another log's key: refused.
        let other = log(10);
        let policy = l.policy.replace("quorum w", "quorum none");
        let forged = other
            .checkpoint
            .replace("example.com/log\n10", "example.com/log\n11");
        let r = ask(json!({"op": "checkpoint", "policy": policy, "checkpoint": forged}));
        assert_eq!(r["ok"], false, "{r}");
    }

    #[test]
    fn a_real_transcript_checks_and_one_altered_byte_does_not() {
        let text = include_str!("../../../fuzz/seeds/transcript/answer.json");
        let r = ask(json!({"op": "transcript", "transcript": text}));
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["checked"].as_array().unwrap().len() >= 5);
        let t: Value = serde_json::from_str(text).unwrap();
        // The same answer with one token changed: the output digest no longer matches.
        let mut bad = t.clone();
        let tok = bad["output"]["tokens"][0].as_u64().unwrap();
        bad["output"]["tokens"][0] = json!(tok ^ 1);
        let r = ask(json!({"op": "transcript", "transcript": bad}));
        assert_eq!(r["ok"], false);
        assert!(
            r["error"].as_str().unwrap().contains("output digest"),
            "{r}"
        );
        // The receipt as logged opens as a signed receipt statement.
        let entry = t_entry(&t);
        let s = ask(json!({"op": "statement", "entry": entry}));
        assert_eq!(s["kind"], "receipt", "{s}");
    }

    fn t_entry(t: &Value) -> String {
        let r = ask(json!({"op": "transcript", "transcript": t}));
        r["entry"].as_str().unwrap().to_string()
    }

    #[test]
    fn garbage_is_an_answer_not_a_panic() {
        for input in [
            &b""[..],
            b"null",
            b"{}",
            b"{\"op\": 3}",
            b"{\"op\": \"nope\"}",
            b"{\"op\": \"tiles\", \"index\": 5, \"size\": 5}",
            b"{\"op\": \"statement\", \"entry\": \"!!\"}",
            b"{\"op\": \"inclusion\", \"policy\": \"\", \"checkpoint\": \"\"}",
            b"{\"op\": \"text_digest\", \"text\": \"\"}",
        ] {
            let v: Value = serde_json::from_slice(&call(input)).unwrap();
            assert_eq!(v["ok"], false, "{}", String::from_utf8_lossy(input));
            assert!(v["error"].is_string());
        }
    }

    #[test]
    fn the_memory_interface_round_trips() {
        let req = br#"{"op":"text_digest","text":"Hello"}"#;
        let p = agora_alloc(req.len());
        // SAFETY: p holds req.len() bytes from agora_alloc; agora_call takes them back.
        let out = unsafe {
            std::ptr::copy_nonoverlapping(req.as_ptr(), p, req.len());
            agora_call(p, req.len())
        };
        // SAFETY: agora_call returns 4 length bytes then that many bytes.
        let answer = unsafe {
            let n = u32::from_le_bytes(std::slice::from_raw_parts(out, 4).try_into().unwrap());
            let a = std::slice::from_raw_parts(out.add(4), n as usize).to_vec();
            agora_free(out, n as usize + 4);
            a
        };
        let v: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["digest"].as_str().unwrap().len(), 64);
    }
}
