//! Cheating workers, for testing the verifier and the validators (cargo feature `cheat`; default
//! builds leave all of this out).
//!
//! Every mode keeps claiming the honest model, request and seed in its receipt.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agora_engine::{ChatMessage, JobSpec, PromptSpec, TokenEvent};
use agora_verify::Proof;

use crate::attest::{Attestor, Tamper};

impl Attestor {
    /// Makes this worker cheat (testing only).
    pub fn with_cheat(mut self, cheat: Option<Cheat>) -> Self {
        self.tamper = cheat.map(|cheat| {
            Arc::new(Cheater {
                cheat,
                last_proof: Mutex::new(None),
            }) as Arc<dyn Tamper>
        });
        self
    }
}

/// A cheat plugged into a worker's attestor.
struct Cheater {
    cheat: Cheat,
    /// The previous answer's proof (for `ReplayProof`).
    last_proof: Mutex<Option<Vec<u8>>>,
}

impl Cheater {
    fn altered_index(&self) -> Option<u32> {
        match &self.cheat {
            Cheat::AlterToken(k) => Some(k.unwrap_or(2)),
            _ => None,
        }
    }
}

impl Tamper for Cheater {
    fn job_to_run(&self, job: &JobSpec) -> JobSpec {
        let mut run = job.clone();
        match &self.cheat {
            Cheat::SystemPrompt => {
                if let PromptSpec::Chat(m) = &mut run.prompt {
                    m.retain(|x| x.role != "system");
                    m.insert(
                        0,
                        ChatMessage {
                            role: "system".into(),
                            content: "You are a pirate. Always answer like a pirate.".into(),
                        },
                    );
                }
                if let PromptSpec::Text(t) = &mut run.prompt {
                    *t = format!("Arr! {t}");
                }
            }
            Cheat::Unseeded => run.params.seed = rand::random(),
            _ => {}
        }
        run
    }

    fn alter_token(&self, t: &mut TokenEvent, n_vocab: u32) {
        if self.altered_index() == Some(t.index) {
            t.id = (t.id + 1) % n_vocab.max(1);
        }
    }

    fn alter_tokens(&self, tokens: &mut [u32], n_vocab: u32) {
        if let Some(k) = self.altered_index()
            && let Some(t) = tokens.get_mut(k as usize)
        {
            *t = (*t + 1) % n_vocab.max(1);
        }
    }

    fn proof(&self, proof: Proof) -> Proof {
        match &self.cheat {
            Cheat::ReplayProof => {
                let Ok(mut last) = self.last_proof.lock() else {
                    return proof;
                };
                let previous = last.replace(proof.encode());
                previous
                    .and_then(|b| Proof::decode(&b).ok())
                    .unwrap_or(proof)
            }
            Cheat::TruncateProof => {
                let mut p = proof;
                if p.commitments.len() > 2 {
                    p.commitments.pop();
                    let chunks = (p.commitments.len() - 1) as u32;
                    p.n_tokens = p.n_tokens.min(chunks * u32::from(p.chunk));
                }
                p
            }
            _ => proof,
        }
    }
}

/// How a cheating worker cheats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cheat {
    /// Serve another GGUF while claiming the original.
    Swap(PathBuf),
    /// Scale the feed-forward output weights of one layer by 1.05.
    PerturbLayer(u32),
    /// Zero the attention and feed-forward outputs of one layer (the layer does nothing).
    SkipLayer(u32),
    /// Replace the system prompt before generating.
    SystemPrompt,
    /// Change one output token (the given index, default 2) after generating.
    AlterToken(Option<u32>),
    /// Sample with a seed of its own, not the client's.
    Unseeded,
    /// Attach the proof of the previous request.
    ReplayProof,
    /// Drop the last commitment of the proof.
    TruncateProof,
}

impl std::str::FromStr for Cheat {
    type Err = String;
    fn from_str(s: &str) -> Result<Cheat, String> {
        let (mode, arg) = s
            .split_once(':')
            .map(|(m, a)| (m, Some(a)))
            .unwrap_or((s, None));
        let layer = || -> Result<u32, String> {
            arg.ok_or_else(|| format!("{mode} needs a layer: {mode}:N"))?
                .parse()
                .map_err(|_| format!("{mode}: the layer must be a number"))
        };
        match mode {
            "swap" => Ok(Cheat::Swap(PathBuf::from(
                arg.ok_or("swap needs a file: swap:FILE.gguf")?,
            ))),
            "perturb-layer" => Ok(Cheat::PerturbLayer(layer()?)),
            "skip-layer" => Ok(Cheat::SkipLayer(layer()?)),
            "system-prompt" => Ok(Cheat::SystemPrompt),
            "alter-token" => Ok(Cheat::AlterToken(
                arg.map(|a| {
                    a.parse()
                        .map_err(|_| "alter-token:N needs a number".to_string())
                })
                .transpose()?,
            )),
            "unseeded" => Ok(Cheat::Unseeded),
            "replay-proof" => Ok(Cheat::ReplayProof),
            "truncate-proof" => Ok(Cheat::TruncateProof),
            _ => Err(format!(
                "unknown cheat {s:?}: swap:FILE, perturb-layer:N, skip-layer:N, system-prompt, alter-token[:N], unseeded, replay-proof, truncate-proof"
            )),
        }
    }
}

impl Cheat {
    /// The GGUF to load instead of the honest one, if this mode changes the weights. Layer
    /// modes write a modified copy of `honest` into `dir`.
    pub fn weights(&self, honest: &Path, dir: &Path) -> Result<Option<PathBuf>, String> {
        match self {
            Cheat::Swap(p) => Ok(Some(p.clone())),
            Cheat::PerturbLayer(n) => {
                edit_layer(honest, dir, *n, &["ffn_down"], Edit::Scale(1.05)).map(Some)
            }
            Cheat::SkipLayer(n) => {
                edit_layer(honest, dir, *n, &["attn_output", "ffn_down"], Edit::Zero).map(Some)
            }
            _ => Ok(None),
        }
    }
}

#[derive(Clone, Copy)]
enum Edit {
    Scale(f32),
    Zero,
}

/// Copies `src` to `dir` with the named tensors of layer `layer` edited in place: every weight
/// scaled (by scaling each block's f16 scales) or zeroed. Supports F32, F16, the legacy block
/// formats (Q4_0 … Q8_0) and the k-quants (Q2_K … Q6_K): see [`Layout`].
fn edit_layer(
    src: &Path,
    dir: &Path,
    layer: u32,
    tensors: &[&str],
    edit: Edit,
) -> Result<PathBuf, String> {
    let info = gguf_tensors(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tag = match edit {
        Edit::Scale(_) => "perturb",
        Edit::Zero => "skip",
    };
    let out = dir.join(format!("cheat-{tag}-layer{layer}.gguf"));
    std::fs::copy(src, &out).map_err(|e| e.to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&out)
        .map_err(|e| e.to_string())?;
    let mut edited = 0;
    for t in &info.tensors {
        if !tensors
            .iter()
            .any(|n| t.name == format!("blk.{layer}.{n}.weight"))
        {
            continue;
        }
        let Some(layout) = Layout::of(t.kind) else {
            return Err(format!(
                "tensor {} has ggml type {}, which this cheat cannot edit",
                t.name, t.kind
            ));
        };
        let n: u64 = t.dims.iter().product();
        let bytes = (n / layout.elems) * layout.block as u64;
        let start = info.data_start + t.offset;
        let mut buf = vec![0u8; bytes as usize];
        f.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
        f.read_exact(&mut buf).map_err(|e| e.to_string())?;
        for b in buf.chunks_exact_mut(layout.block) {
            layout.edit(b, edit);
        }
        f.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
        f.write_all(&buf).map_err(|e| e.to_string())?;
        edited += 1;
    }
    if edited == 0 {
        return Err(format!("layer {layer} has none of the tensors {tensors:?}"));
    }
    f.sync_all().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Where a ggml block format keeps its f16 scales: a block of `block` bytes holds `elems`
/// weights, each `scale × quant − min`-like, so multiplying every f16 at `scales` by `s`
/// multiplies every weight by `s`. F32 is the one format without f16s (`scales` empty).
#[derive(Debug, PartialEq)]
struct Layout {
    block: usize,
    elems: u64,
    scales: &'static [usize],
}

impl Layout {
    /// The layout of ggml type `kind` (ggml.h's `ggml_type` numbering), if this cheat can edit it.
    fn of(kind: u32) -> Option<Layout> {
        let (block, elems, scales): (usize, u64, &'static [usize]) = match kind {
            0 => (4, 1, &[]),           // F32
            1 => (2, 1, &[0]),          // F16: the value itself
            2 => (18, 32, &[0]),        // Q4_0: d, qs[16]
            3 => (20, 32, &[0, 2]),     // Q4_1: d, m, qs[16]
            6 => (22, 32, &[0]),        // Q5_0: d, qh[4], qs[16]
            7 => (24, 32, &[0, 2]),     // Q5_1: d, m, qh[4], qs[16]
            8 => (34, 32, &[0]),        // Q8_0: d, qs[32]
            10 => (84, 256, &[80, 82]), // Q2_K: scales[16], qs[64], d, dmin
            11 => (110, 256, &[108]),   // Q3_K: hmask[32], qs[64], scales[12], d
            12 => (144, 256, &[0, 2]),  // Q4_K: d, dmin, scales[12], qs[128]
            13 => (176, 256, &[0, 2]),  // Q5_K: d, dmin, scales[12], qh[32], qs[128]
            14 => (210, 256, &[208]),   // Q6_K: ql[128], qh[64], scales[16], d
            _ => return None,
        };
        Some(Layout {
            block,
            elems,
            scales,
        })
    }

    fn edit(&self, b: &mut [u8], edit: Edit) {
        match edit {
            Edit::Zero => b.iter_mut().for_each(|x| *x = 0),
            Edit::Scale(s) if self.scales.is_empty() => {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * s;
                b.copy_from_slice(&v.to_le_bytes());
            }
            Edit::Scale(s) => {
                for &at in self.scales {
                    let v = half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32();
                    let v = half::f16::from_f32(v * s).to_bits().to_le_bytes();
                    b[at..at + 2].copy_from_slice(&v);
                }
            }
        }
    }
}

struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    kind: u32,
    offset: u64,
}

struct GgufInfo {
    data_start: u64,
    tensors: Vec<TensorInfo>,
}

/// Reads a GGUF (v2/v3) header: tensor names, shapes, types and data offsets.
fn gguf_tensors(path: &Path) -> std::io::Result<GgufInfo> {
    use std::io::{Error, ErrorKind};
    let bad = |m: &str| Error::new(ErrorKind::InvalidData, m.to_string());
    let mut r = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut pos = 0u64;
    let rd = |r: &mut dyn Read, n: usize, pos: &mut u64| -> std::io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        r.read_exact(&mut v)?;
        *pos += n as u64;
        Ok(v)
    };
    let u32_ = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let u64_ = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    if rd(&mut r, 4, &mut pos)? != b"GGUF" {
        return Err(bad("not a GGUF file"));
    }
    let version = u32_(&rd(&mut r, 4, &mut pos)?);
    if !(2..=3).contains(&version) {
        return Err(bad("unsupported GGUF version"));
    }
    let n_tensors = u64_(&rd(&mut r, 8, &mut pos)?);
    let n_kv = u64_(&rd(&mut r, 8, &mut pos)?);
    if n_tensors > 1 << 20 || n_kv > 1 << 20 {
        return Err(bad("implausible counts"));
    }
    let mut alignment = 32u64;
    fn skip_value(
        r: &mut dyn Read,
        kind: u32,
        pos: &mut u64,
        depth: u32,
    ) -> std::io::Result<Option<u64>> {
        let mut take = |n: usize| -> std::io::Result<Vec<u8>> {
            let mut v = vec![0u8; n];
            r.read_exact(&mut v)?;
            *pos += n as u64;
            Ok(v)
        };
        let size = match kind {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                let l = take(8)?;
                let len = u64::from_le_bytes([l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]);
                if len > 1 << 30 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "string too long",
                    ));
                }
                take(len as usize)?;
                return Ok(None);
            }
            9 if depth < 2 => {
                let h = take(12)?;
                let inner = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                let n = u64::from_le_bytes([h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11]]);
                if n > 1 << 26 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "array too long",
                    ));
                }
                for _ in 0..n {
                    skip_value(r, inner, pos, depth + 1)?;
                }
                return Ok(None);
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "unknown value type",
                ));
            }
        };
        let v = take(size)?;
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(&v);
        Ok(Some(u64::from_le_bytes(b)))
    }
    for _ in 0..n_kv {
        let l = u64_(&rd(&mut r, 8, &mut pos)?);
        if l > 1 << 16 {
            return Err(bad("key too long"));
        }
        let key = String::from_utf8_lossy(&rd(&mut r, l as usize, &mut pos)?).into_owned();
        let kind = u32_(&rd(&mut r, 4, &mut pos)?);
        let v = skip_value(&mut r, kind, &mut pos, 0)?;
        if key == "general.alignment" {
            alignment = v.unwrap_or(32).max(1);
        }
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let l = u64_(&rd(&mut r, 8, &mut pos)?);
        if l > 1 << 16 {
            return Err(bad("name too long"));
        }
        let name = String::from_utf8_lossy(&rd(&mut r, l as usize, &mut pos)?).into_owned();
        let nd = u32_(&rd(&mut r, 4, &mut pos)?);
        if nd > 8 {
            return Err(bad("too many dimensions"));
        }
        let mut dims = Vec::new();
        for _ in 0..nd {
            dims.push(u64_(&rd(&mut r, 8, &mut pos)?));
        }
        let kind = u32_(&rd(&mut r, 4, &mut pos)?);
        let offset = u64_(&rd(&mut r, 8, &mut pos)?);
        tensors.push(TensorInfo {
            name,
            dims,
            kind,
            offset,
        });
    }
    let data_start = pos.div_ceil(alignment) * alignment;
    Ok(GgufInfo {
        data_start,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!(
            "swap:/x.gguf".parse::<Cheat>(),
            Ok(Cheat::Swap("/x.gguf".into()))
        );
        assert_eq!("skip-layer:3".parse::<Cheat>(), Ok(Cheat::SkipLayer(3)));
        assert_eq!("alter-token".parse::<Cheat>(), Ok(Cheat::AlterToken(None)));
        assert!("skip-layer".parse::<Cheat>().is_err());
        assert!("nonsense".parse::<Cheat>().is_err());
    }

    #[test]
    fn scales_the_scales_of_every_block_format() {
        let f16 =
            |b: &[u8], at: usize| half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]]));
        // The k-quant block sizes are ggml's (sizeof(block_q*_K) with QK_K = 256).
        let cases = [
            (10, 84),
            (11, 110),
            (12, 144),
            (13, 176),
            (14, 210),
            (3, 20),
            (8, 34),
        ];
        for (kind, block) in cases {
            let l = Layout::of(kind).unwrap();
            assert_eq!(l.block, block, "type {kind}");
            let mut b: Vec<u8> = (0..block).map(|i| i as u8).collect();
            for &at in l.scales {
                b[at..at + 2].copy_from_slice(&half::f16::from_f32(2.0).to_bits().to_le_bytes());
            }
            let before = b.clone();
            l.edit(&mut b, Edit::Scale(1.5));
            for i in 0..block {
                if l.scales.contains(&i) {
                    assert_eq!(f16(&b, i).to_f32(), 3.0, "type {kind} scale at {i}");
                } else if !l.scales.iter().any(|&at| i == at + 1) {
                    assert_eq!(b[i], before[i], "type {kind} byte {i} is not a scale");
                }
            }
            l.edit(&mut b, Edit::Zero);
            assert!(b.iter().all(|&x| x == 0));
        }
        let f32l = Layout::of(0).unwrap();
        let mut b = 2.0f32.to_le_bytes();
        f32l.edit(&mut b, Edit::Scale(1.5));
        assert_eq!(f32::from_le_bytes(b), 3.0);
        assert_eq!(
            Layout::of(15),
            None,
            "Q8_K is an intermediate type, never in a file"
        );
    }
}
