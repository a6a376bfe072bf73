//! A pure, bounded reader of a GGUF file's header and metadata, outside llama.cpp.
//!
//! It gives the facts a model statement binds: the architecture (`general.architecture`), the
//! name (`general.name`, if any) and a digest of the tokenizer. It reads the header and the
//! key/value section only, never the tensor infos or the tensor data, and stops there.
//!
//! # Format read
//!
//! Little-endian GGUF, versions 2 and 3 (a big-endian file shows as an unsupported version):
//! ```text
//! magic "GGUF" | version u32 | tensor count u64 | kv count u64 | kv * kv count | (tensor infos...)
//! kv    = key length u64 | key bytes (UTF-8) | value type u32 | value
//! value = u8 (type 0) | i8 (1) | u16 (2) | i16 (3) | u32 (4) | i32 (5) | f32 (6) | bool (7, 1 byte)
//!       | string (8: length u64 | bytes) | u64 (10) | i64 (11) | f64 (12)
//!       | array (9: element type u32 | element count u64 | elements)
//! ```
//! An array's elements are values of its element type, written one after the other; an element
//! of an array of arrays is itself `element type u32 | element count u64 | elements`.
//!
//! # Tokenizer digest
//!
//! [`GgufMeta::tokenizer`] is SHA-256 over, for every key/value whose key starts with
//! `tokenizer.` (byte-wise, case-sensitive), in file order, that key/value's exact bytes as they
//! appear in the file: key length (u64 LE), key bytes, value type (u32 LE), value bytes (for a
//! string its u64 LE length then its bytes; for an array its element type u32 LE, its element
//! count u64 LE, then its elements). The concatenation has no separators and nothing else: no
//! header, no other key. A file with no `tokenizer.` key has the digest of the empty string,
//! `e3b0c442…b855` (see [`GgufMeta::tokenizer_kvs`]).
//!
//! So two files with the same vocabulary, merges, token types, special-token ids and other
//! `tokenizer.*` settings, in the same order, have the same digest whatever their weights,
//! quantisation, name or other metadata; any change to a token, its order or a special id
//! changes it. To recompute it elsewhere (e.g. with the `gguf` Python package): walk the fields,
//! and hash each `tokenizer.` field's raw bytes from the start of its key length to the end of
//! its value.
//!
//! # Hostile input
//!
//! The file may be hostile: this reader never panics and never allocates according to a length
//! it has not checked. Every length is bounded before use ([`MAX_KEY_LEN`], [`MAX_STRING_LEN`],
//! [`MAX_ARRAY_LEN`], [`MAX_ARRAY_DEPTH`], [`MAX_KVS`]) and the whole header plus key/value
//! section is bounded by [`MAX_METADATA_LEN`] bytes, checked before each read, so a file
//! announcing more than fits is refused before its data is read. Strings are read in small
//! chunks and hashed as they go; only the few values kept are stored, along with the keys (to
//! refuse duplicates, as llama.cpp does). Work is linear in the bytes read.
//!
//! [`read_meta`] reads with many small reads: give it a buffered reader (as
//! [`read_meta_file`] does) or a byte slice.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: u64 = 64 * 1024;
/// The longest string value accepted, in bytes.
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// The most elements one array may have.
pub const MAX_ARRAY_LEN: u64 = 16 << 20;
/// The deepest nesting of arrays accepted: an array of arrays of arrays of arrays (4).
pub const MAX_ARRAY_DEPTH: u32 = 4;
/// The most key/value pairs accepted.
pub const MAX_KVS: u64 = 65_536;
/// The most bytes read from the start of the file to the end of the key/value section.
pub const MAX_METADATA_LEN: u64 = 256 << 20;

/// The key prefix whose key/values make the tokenizer digest.
pub const TOKENIZER_PREFIX: &str = "tokenizer.";

/// The GGUF value types, by their code in the file.
mod ty {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// The size in bytes of a value of fixed-size type `t`, `None` for strings, arrays and unknown
/// types.
fn fixed_size(t: u32) -> Option<u64> {
    match t {
        ty::U8 | ty::I8 | ty::BOOL => Some(1),
        ty::U16 | ty::I16 => Some(2),
        ty::U32 | ty::I32 | ty::F32 => Some(4),
        ty::U64 | ty::I64 | ty::F64 => Some(8),
        _ => None,
    }
}

/// The facts read from a GGUF file's header and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufMeta {
    /// The GGUF format version: 2 or 3.
    pub version: u32,
    /// `general.architecture`, e.g. `"llama"`: the model's architecture as llama.cpp knows it.
    pub architecture: String,
    /// `general.name`, if the file has one (free text chosen by whoever converted the model).
    pub name: Option<String>,
    /// The tokenizer digest: SHA-256 over the raw bytes of every `tokenizer.` key/value, in
    /// file order (see the module documentation for the exact definition).
    pub tokenizer: [u8; 32],
    /// How many key/values went into [`Self::tokenizer`]; 0 means the file has no tokenizer
    /// metadata and the digest is that of the empty string.
    pub tokenizer_kvs: u64,
    /// `tokenizer.ggml.model`, e.g. `"gpt2"` or `"llama"`: the tokenizer's kind, if given.
    pub tokenizer_model: Option<String>,
    /// The element count of the `tokenizer.ggml.tokens` array (the vocabulary size), if present.
    pub vocab_size: Option<u64>,
    /// The tensor count announced by the header (the tensor infos themselves are not read).
    pub tensors: u64,
    /// The key/value count announced by the header; all of them were read.
    pub kvs: u64,
    /// Bytes from the start of the file to the end of the key/value section, i.e. the offset at
    /// which the tensor infos start.
    pub metadata_len: u64,
}

impl GgufMeta {
    /// The tokenizer digest as lowercase hex.
    pub fn tokenizer_hex(&self) -> String {
        hex::encode(self.tokenizer)
    }
}

/// Why a file's metadata could not be read. The file is refused as a whole: no partial result.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file does not start with the magic `GGUF`.
    #[error("not a GGUF file (it does not start with the GGUF magic)")]
    NotGguf,
    /// A version other than 2 or 3 (a big-endian file shows here with its version byte-swapped).
    #[error("unsupported GGUF version {0} (only versions 2 and 3 are read)")]
    UnsupportedVersion(u32),
    /// The input ended inside `what`.
    #[error("truncated GGUF: the file ends inside the {what}")]
    Truncated {
        /// The item the input ended in, e.g. `"string"` or `"kv count"`.
        what: &'static str,
    },
    /// `what` is `len` (bytes, elements or levels), more than the `max` this reader accepts.
    #[error("GGUF {what} too large: {len}, at most {max} accepted")]
    TooLarge {
        /// What is too large, e.g. `"key length"`, `"array length"`, `"metadata section"`.
        what: &'static str,
        /// Its size as announced (or where reading would end, for the metadata section).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The key `key` has value (or array element) type `ty`, unknown or not the one its key
    /// requires.
    #[error("GGUF key {key:?} has unexpected or unknown value type {ty}")]
    BadType {
        /// The key (shortened to 128 characters).
        key: String,
        /// The type code found.
        ty: u32,
    },
    /// `what` (a key, or the value of the key named) is not valid UTF-8.
    #[error("GGUF {what} is not valid UTF-8")]
    NotUtf8 {
        /// `"key"` or the key whose string value is not UTF-8.
        what: &'static str,
    },
    /// The key appears twice.
    #[error("GGUF key {0:?} appears twice")]
    Duplicate(String),
    /// A required key is missing.
    #[error("GGUF metadata has no {0:?}")]
    Missing(&'static str),
    /// Reading failed for a reason other than the end of the input.
    #[error("reading GGUF: {0}")]
    Io(#[from] io::Error),
}

/// `key` shortened for an error message.
fn shown(key: &str) -> String {
    match key.char_indices().nth(128) {
        Some((i, _)) => format!("{}…", &key[..i]),
        None => key.to_string(),
    }
}

/// The input, with the count of bytes read and the tokenizer hash fed while `hashing`.
struct Src<R> {
    r: R,
    pos: u64,
    hasher: Sha256,
    hashing: bool,
    scratch: Box<[u8; 8192]>,
}

impl<R: Read> Src<R> {
    /// Refuses to read `n` more bytes if that would pass [`MAX_METADATA_LEN`].
    fn budget(&self, n: u64) -> Result<(), GgufError> {
        let end = self.pos.saturating_add(n);
        if end > MAX_METADATA_LEN {
            return Err(GgufError::TooLarge {
                what: "metadata section",
                len: end,
                max: MAX_METADATA_LEN,
            });
        }
        Ok(())
    }

    /// Fills `buf`, hashing it if hashing.
    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), GgufError> {
        self.budget(buf.len() as u64)?;
        read_exact(&mut self.r, buf, what)?;
        if self.hashing {
            self.hasher.update(&*buf);
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        let mut b = [0u8; 4];
        self.fill(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        let mut b = [0u8; 8];
        self.fill(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads `n` bytes in chunks, hashing them if hashing and appending them to `out` if given.
    fn bytes(
        &mut self,
        n: u64,
        what: &'static str,
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<(), GgufError> {
        self.budget(n)?;
        let mut left = n;
        while left > 0 {
            let k = left.min(self.scratch.len() as u64) as usize;
            let buf = &mut self.scratch[..k];
            read_exact(&mut self.r, buf, what)?;
            if self.hashing {
                self.hasher.update(&*buf);
            }
            if let Some(o) = out.as_deref_mut() {
                o.extend_from_slice(buf);
            }
            self.pos += k as u64;
            left -= k as u64;
        }
        Ok(())
    }

    /// Reads a string value (after its type), keeping its bytes if `keep`.
    fn string(&mut self, keep: bool) -> Result<Vec<u8>, GgufError> {
        let n = self.u64("string length")?;
        if n > MAX_STRING_LEN {
            return Err(GgufError::TooLarge {
                what: "string length",
                len: n,
                max: MAX_STRING_LEN,
            });
        }
        let mut v = Vec::new();
        self.bytes(n, "string", keep.then_some(&mut v))?;
        Ok(v)
    }

    /// Reads (and drops) a value of type `t` of key `key`, at array nesting `depth` (0 for a
    /// key's own value). Returns the element count if it is an array.
    fn value(&mut self, key: &str, t: u32, depth: u32) -> Result<Option<u64>, GgufError> {
        if let Some(size) = fixed_size(t) {
            self.bytes(size, "value", None)?;
            return Ok(None);
        }
        match t {
            ty::STRING => {
                self.string(false)?;
                Ok(None)
            }
            ty::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::TooLarge {
                        what: "array nesting",
                        len: u64::from(depth) + 1,
                        max: u64::from(MAX_ARRAY_DEPTH),
                    });
                }
                let inner = self.u32("array type")?;
                let n = self.u64("array length")?;
                if n > MAX_ARRAY_LEN {
                    return Err(GgufError::TooLarge {
                        what: "array length",
                        len: n,
                        max: MAX_ARRAY_LEN,
                    });
                }
                let least = match inner {
                    ty::STRING => 8,
                    ty::ARRAY => 12,
                    _ => fixed_size(inner).ok_or_else(|| GgufError::BadType {
                        key: shown(key),
                        ty: inner,
                    })?,
                };
                // Refuse an array that cannot fit before reading any of it.
                self.budget(n.saturating_mul(least))?;
                if fixed_size(inner).is_some() {
                    self.bytes(n * least, "array", None)?;
                } else {
                    for _ in 0..n {
                        self.value(key, inner, depth + 1)?;
                    }
                }
                Ok(Some(n))
            }
            _ => Err(GgufError::BadType {
                key: shown(key),
                ty: t,
            }),
        }
    }
}

/// `read_exact`, with the end of input reported as [`GgufError::Truncated`].
fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<(), GgufError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            GgufError::Truncated { what }
        } else {
            GgufError::Io(e)
        }
    })
}

/// Reads the header and metadata of the GGUF file `r` is at the start of, and nothing after
/// them. `r` should be buffered (or a byte slice): this makes many small reads.
pub fn read_meta<R: Read>(r: R) -> Result<GgufMeta, GgufError> {
    let mut s = Src {
        r,
        pos: 0,
        hasher: Sha256::new(),
        hashing: false,
        scratch: Box::new([0u8; 8192]),
    };
    let mut magic = [0u8; 4];
    s.fill(&mut magic, "magic")?;
    if &magic != b"GGUF" {
        return Err(GgufError::NotGguf);
    }
    let version = s.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensors = s.u64("tensor count")?;
    let kvs = s.u64("kv count")?;
    if kvs > MAX_KVS {
        return Err(GgufError::TooLarge {
            what: "kv count",
            len: kvs,
            max: MAX_KVS,
        });
    }

    let mut seen: HashSet<String> = HashSet::new();
    let mut architecture = None;
    let mut name = None;
    let mut tokenizer_model = None;
    let mut vocab_size = None;
    let mut tokenizer_kvs = 0u64;
    for _ in 0..kvs {
        let mut len = [0u8; 8];
        s.fill(&mut len, "key length")?;
        let n = u64::from_le_bytes(len);
        if n > MAX_KEY_LEN {
            return Err(GgufError::TooLarge {
                what: "key length",
                len: n,
                max: MAX_KEY_LEN,
            });
        }
        let mut k = Vec::new();
        s.bytes(n, "key", Some(&mut k))?;
        let key = String::from_utf8(k).map_err(|_| GgufError::NotUtf8 { what: "key" })?;
        if seen.contains(&key) {
            return Err(GgufError::Duplicate(shown(&key)));
        }
        if key.starts_with(TOKENIZER_PREFIX) {
            s.hasher.update(len);
            s.hasher.update(key.as_bytes());
            s.hashing = true;
            tokenizer_kvs += 1;
        }
        let t = s.u32("value type")?;
        let bad = || GgufError::BadType {
            key: shown(&key),
            ty: t,
        };
        // The string values kept, by key.
        let kept: Option<(&'static str, &mut Option<String>)> = match key.as_str() {
            "general.architecture" => Some(("general.architecture", &mut architecture)),
            "general.name" => Some(("general.name", &mut name)),
            "tokenizer.ggml.model" => Some(("tokenizer.ggml.model", &mut tokenizer_model)),
            _ => None,
        };
        if let Some((what, slot)) = kept {
            if t != ty::STRING {
                return Err(bad());
            }
            let v = s.string(true)?;
            *slot = Some(String::from_utf8(v).map_err(|_| GgufError::NotUtf8 { what })?);
        } else if key == "tokenizer.ggml.tokens" {
            if t != ty::ARRAY {
                return Err(bad());
            }
            vocab_size = s.value(&key, t, 0)?;
        } else {
            s.value(&key, t, 0)?;
        }
        s.hashing = false;
        seen.insert(key);
    }

    Ok(GgufMeta {
        version,
        architecture: architecture.ok_or(GgufError::Missing("general.architecture"))?,
        name,
        tokenizer: s.hasher.finalize().into(),
        tokenizer_kvs,
        tokenizer_model,
        vocab_size,
        tensors,
        kvs,
        metadata_len: s.pos,
    })
}

/// [`read_meta`] on the file at `path`, through a [`BufReader`]. An error opening the file is
/// [`GgufError::Io`].
pub fn read_meta_file(path: &Path) -> Result<GgufMeta, GgufError> {
    read_meta(BufReader::with_capacity(64 * 1024, File::open(path)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Builds GGUF bytes, remembering the exact bytes of each key/value.
    struct B {
        kvs: Vec<(String, Vec<u8>)>,
        version: u32,
        tensors: u64,
    }

    fn s(v: &str) -> Vec<u8> {
        let mut b = (v.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(v.as_bytes());
        b
    }

    /// An array value (without the outer type code): element type, count, element bytes.
    fn arr(t: u32, n: u64, elems: &[u8]) -> Vec<u8> {
        let mut b = t.to_le_bytes().to_vec();
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(elems);
        b
    }

    fn strs(v: &[&str]) -> Vec<u8> {
        arr(
            ty::STRING,
            v.len() as u64,
            &v.iter().flat_map(|x| s(x)).collect::<Vec<_>>(),
        )
    }

    impl B {
        fn new() -> Self {
            B {
                kvs: Vec::new(),
                version: 3,
                tensors: 0,
            }
        }
        fn kv(mut self, key: &str, t: u32, value: &[u8]) -> Self {
            let mut b = s(key);
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(value);
            self.kvs.push((key.to_string(), b));
            self
        }
        fn st(self, key: &str, v: &str) -> Self {
            self.kv(key, ty::STRING, &s(v))
        }
        fn bytes(&self) -> Vec<u8> {
            let mut b = b"GGUF".to_vec();
            b.extend_from_slice(&self.version.to_le_bytes());
            b.extend_from_slice(&self.tensors.to_le_bytes());
            b.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
            for (_, kv) in &self.kvs {
                b.extend_from_slice(kv);
            }
            b
        }
        /// The tokenizer digest recomputed from the recorded key/value bytes.
        fn digest(&self) -> [u8; 32] {
            let mut h = Sha256::new();
            for (k, kv) in &self.kvs {
                if k.starts_with("tokenizer.") {
                    h.update(kv);
                }
            }
            h.finalize().into()
        }
    }

    /// A file with every value type, nested arrays and a small tokenizer.
    fn full() -> B {
        let mut nested = Vec::new();
        // [[1u8, 2u8], [], ["a", "bc"]] as an array of arrays.
        nested.extend_from_slice(&arr(ty::U8, 2, &[1, 2]));
        nested.extend_from_slice(&arr(ty::I32, 0, &[]));
        nested.extend_from_slice(&strs(&["a", "bc"]));
        let mut deep = arr(ty::U16, 1, &7u16.to_le_bytes());
        for _ in 0..3 {
            deep = arr(ty::ARRAY, 1, &deep);
        }
        B::new()
            .st("general.architecture", "llama")
            .kv("a.u8", ty::U8, &[200])
            .kv("a.i8", ty::I8, &[0xff])
            .kv("a.u16", ty::U16, &513u16.to_le_bytes())
            .kv("a.i16", ty::I16, &(-2i16).to_le_bytes())
            .kv("a.u32", ty::U32, &70_000u32.to_le_bytes())
            .kv("a.i32", ty::I32, &(-70_000i32).to_le_bytes())
            .kv("a.f32", ty::F32, &1.5f32.to_le_bytes())
            .kv("a.bool", ty::BOOL, &[1])
            .st("general.name", "Tiny Test")
            .kv("a.u64", ty::U64, &u64::MAX.to_le_bytes())
            .kv("a.i64", ty::I64, &i64::MIN.to_le_bytes())
            .kv("a.f64", ty::F64, &2.25f64.to_le_bytes())
            .st("tokenizer.ggml.model", "gpt2")
            .kv(
                "tokenizer.ggml.tokens",
                ty::ARRAY,
                &strs(&["<s>", "a", "b", "ab"]),
            )
            .kv(
                "tokenizer.ggml.token_type",
                ty::ARRAY,
                &arr(
                    ty::I32,
                    4,
                    &[3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0],
                ),
            )
            .kv("tokenizer.ggml.merges", ty::ARRAY, &strs(&["a b"]))
            .kv("tokenizer.ggml.bos_token_id", ty::U32, &0u32.to_le_bytes())
            .kv("a.nested", ty::ARRAY, &arr(ty::ARRAY, 3, &nested))
            .kv("a.deep", ty::ARRAY, &deep)
            .kv("a.empty_str", ty::STRING, &s(""))
            .kv("a.f64s", ty::ARRAY, &arr(ty::F64, 2, &[0u8; 16]))
    }

    #[test]
    fn reads_every_type() {
        let b = full();
        let bytes = b.bytes();
        let m = read_meta(&bytes[..]).unwrap();
        assert_eq!(m.version, 3);
        assert_eq!(m.architecture, "llama");
        assert_eq!(m.name.as_deref(), Some("Tiny Test"));
        assert_eq!(m.tokenizer_model.as_deref(), Some("gpt2"));
        assert_eq!(m.vocab_size, Some(4));
        assert_eq!(m.tensors, 0);
        assert_eq!(m.kvs, b.kvs.len() as u64);
        assert_eq!(m.tokenizer_kvs, 5);
        assert_eq!(m.metadata_len, bytes.len() as u64);
        assert_eq!(m.tokenizer, b.digest());
        assert_eq!(m.tokenizer_hex(), hex::encode(b.digest()));
    }

    #[test]
    fn version_2_and_optional_fields() {
        let mut b = B::new().st("general.architecture", "gpt2");
        b.version = 2;
        b.tensors = 7;
        let m = read_meta(&b.bytes()[..]).unwrap();
        assert_eq!((m.version, m.tensors, m.kvs), (2, 7, 1));
        assert_eq!(m.name, None);
        assert_eq!(m.vocab_size, None);
        assert_eq!(m.tokenizer_model, None);
        assert_eq!(m.tokenizer_kvs, 0);
        // The digest of no tokenizer key is that of the empty string.
        assert_eq!(
            m.tokenizer_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn stops_at_the_end_of_metadata() {
        /// Fails any read: the tensor infos and data must not be touched.
        struct Boom;
        impl Read for Boom {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("read past the metadata"))
            }
        }
        let mut b = full();
        b.tensors = 1;
        let bytes = b.bytes();
        let m = read_meta((&bytes[..]).chain(Boom)).unwrap();
        assert_eq!(m.metadata_len, bytes.len() as u64);
        assert_eq!(m.tensors, 1);
        // While a read inside the metadata that fails is an I/O error, not a truncation.
        let err = read_meta((&bytes[..20]).chain(Boom)).unwrap_err();
        assert!(matches!(err, GgufError::Io(_)), "{err:?}");
    }

    #[test]
    fn digest_ignores_other_keys_and_weights() {
        let base = full();
        let d = read_meta(&base.bytes()[..]).unwrap().tokenizer;
        // Other metadata, other tensor count, other name: same digest.
        let mut other = B::new();
        other.tensors = 300;
        for (k, kv) in &base.kvs {
            if k == "general.name" {
                other = other.st("general.name", "Another name");
            } else if k == "a.u32" {
                other = other.kv("a.u32", ty::U32, &1u32.to_le_bytes());
            } else {
                other.kvs.push((k.clone(), kv.clone()));
            }
        }
        let other = other.st("b.extra", "x");
        let m = read_meta(&other.bytes()[..]).unwrap();
        assert_eq!(m.tokenizer, d);
        assert_eq!(m.name.as_deref(), Some("Another name"));

        // One token changed: another digest.
        let mut changed = B::new();
        for (k, kv) in &base.kvs {
            if k == "tokenizer.ggml.tokens" {
                changed = changed.kv(k, ty::ARRAY, &strs(&["<s>", "a", "b", "ac"]));
            } else {
                changed.kvs.push((k.clone(), kv.clone()));
            }
        }
        let m = read_meta(&changed.bytes()[..]).unwrap();
        assert_ne!(m.tokenizer, d);
        assert_eq!(m.tokenizer, changed.digest());

        // A special-token id changed: another digest.
        let mut special = B::new();
        for (k, kv) in &base.kvs {
            if k == "tokenizer.ggml.bos_token_id" {
                special = special.kv(k, ty::U32, &1u32.to_le_bytes());
            } else {
                special.kvs.push((k.clone(), kv.clone()));
            }
        }
        assert_ne!(read_meta(&special.bytes()[..]).unwrap().tokenizer, d);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = full().bytes();
        for n in 0..bytes.len() {
            match read_meta(&bytes[..n]) {
                Err(GgufError::Truncated { .. }) => {}
                other => panic!("prefix of {n} bytes: {other:?}"),
            }
        }
        assert!(read_meta(&bytes[..]).is_ok());
    }

    #[test]
    fn header_errors() {
        assert!(matches!(
            read_meta(&b"GGML\x03\0\0\0"[..]),
            Err(GgufError::NotGguf)
        ));
        let mut b = B::new().st("general.architecture", "llama");
        for v in [0, 1, 4, 0x0300_0000] {
            b.version = v;
            assert!(
                matches!(read_meta(&b.bytes()[..]), Err(GgufError::UnsupportedVersion(x)) if x == v)
            );
        }
        let b = B::new().st("general.name", "x");
        assert!(matches!(
            read_meta(&b.bytes()[..]),
            Err(GgufError::Missing("general.architecture"))
        ));
    }

    #[test]
    fn type_errors() {
        let b = B::new().kv("general.architecture", ty::U32, &[0; 4]);
        assert!(matches!(read_meta(&b.bytes()[..]),
            Err(GgufError::BadType { key, ty: 4 }) if key == "general.architecture"));
        let b = B::new()
            .st("general.architecture", "llama")
            .kv("x", 13, &[]);
        assert!(matches!(
            read_meta(&b.bytes()[..]),
            Err(GgufError::BadType { ty: 13, .. })
        ));
        let b = B::new()
            .st("general.architecture", "llama")
            .kv("x", ty::ARRAY, &arr(99, 0, &[]));
        assert!(matches!(
            read_meta(&b.bytes()[..]),
            Err(GgufError::BadType { ty: 99, .. })
        ));
        let b = B::new().st("general.architecture", "llama").kv(
            "tokenizer.ggml.tokens",
            ty::STRING,
            &s("x"),
        );
        assert!(matches!(
            read_meta(&b.bytes()[..]),
            Err(GgufError::BadType { ty: 8, .. })
        ));
        // Non-UTF-8 key, non-UTF-8 kept value; a non-UTF-8 value not kept is fine.
        let mut bad_key = (2u64).to_le_bytes().to_vec();
        bad_key.extend_from_slice(&[0xff, 0xfe]);
        bad_key.extend_from_slice(&ty::U8.to_le_bytes());
        bad_key.push(0);
        let mut b = B::new().st("general.architecture", "llama");
        b.kvs.push(("?".into(), bad_key));
        assert!(matches!(
            read_meta(&b.bytes()[..]),
            Err(GgufError::NotUtf8 { what: "key" })
        ));
        let mut v = 2u64.to_le_bytes().to_vec();
        v.extend_from_slice(&[0xc3, 0x28]);
        let b = B::new()
            .st("general.architecture", "llama")
            .kv("general.name", ty::STRING, &v);
        assert!(matches!(
            read_meta(&b.bytes()[..]),
            Err(GgufError::NotUtf8 {
                what: "general.name"
            })
        ));
        let b = B::new().st("general.architecture", "llama").kv(
            "tokenizer.ggml.tokens",
            ty::ARRAY,
            &arr(ty::STRING, 1, &v),
        );
        assert_eq!(read_meta(&b.bytes()[..]).unwrap().vocab_size, Some(1));
        // Duplicate keys are refused.
        let b = B::new()
            .st("general.architecture", "llama")
            .st("general.architecture", "gpt2");
        assert!(
            matches!(read_meta(&b.bytes()[..]), Err(GgufError::Duplicate(k)) if k == "general.architecture")
        );
    }

    fn too_large(bytes: &[u8], what: &str) {
        match read_meta(bytes) {
            Err(GgufError::TooLarge { what: w, .. }) if w == what => {}
            other => panic!("expected {what} too large, got {other:?}"),
        }
    }

    #[test]
    fn absurd_lengths_are_refused() {
        let arch = B::new().st("general.architecture", "llama");
        // Key count.
        let mut h = b"GGUF\x03\0\0\0".to_vec();
        h.extend_from_slice(&0u64.to_le_bytes());
        h.extend_from_slice(&u64::MAX.to_le_bytes());
        too_large(&h, "kv count");
        // Key length.
        let mut b = arch.bytes();
        b[16..24].copy_from_slice(&2u64.to_le_bytes());
        let mut huge_key = b.clone();
        huge_key.extend_from_slice(&u64::MAX.to_le_bytes());
        too_large(&huge_key, "key length");
        let mut big_key = b.clone();
        big_key.extend_from_slice(&(MAX_KEY_LEN + 1).to_le_bytes());
        too_large(&big_key, "key length");
        // String length, array length, array bytes, nesting.
        let with = |v: &[u8], t: u32| arch_kv(t, v);
        too_large(&with(&u64::MAX.to_le_bytes(), ty::STRING), "string length");
        too_large(
            &with(&(MAX_STRING_LEN + 1).to_le_bytes(), ty::STRING),
            "string length",
        );
        too_large(
            &with(&arr(ty::U8, u64::MAX, &[]), ty::ARRAY),
            "array length",
        );
        too_large(
            &with(&arr(ty::STRING, MAX_ARRAY_LEN + 1, &[]), ty::ARRAY),
            "array length",
        );
        // The longest arrays allowed fit in the section budget (16 Mi x 12 bytes < 256 MiB): with
        // no data behind them they are truncated at once, nothing allocated for them.
        for (inner, what) in [
            (ty::ARRAY, "array type"),
            (ty::U64, "array"),
            (ty::STRING, "string length"),
        ] {
            match read_meta(&with(&arr(inner, MAX_ARRAY_LEN, &[]), ty::ARRAY)[..]) {
                Err(GgufError::Truncated { what: w }) if w == what => {}
                other => panic!("{other:?}"),
            }
        }
        let mut deep = arr(ty::U8, 0, &[]);
        for _ in 0..MAX_ARRAY_DEPTH {
            deep = arr(ty::ARRAY, 1, &deep);
        }
        too_large(&with(&deep, ty::ARRAY), "array nesting");
        // One level less is fine.
        let mut ok = arr(ty::U8, 0, &[]);
        for _ in 0..MAX_ARRAY_DEPTH - 1 {
            ok = arr(ty::ARRAY, 1, &ok);
        }
        assert!(read_meta(&with(&ok, ty::ARRAY)[..]).is_ok());
    }

    /// The file with `general.architecture` then one key `x` of type `t` whose value starts with
    /// `v` (possibly truncated).
    fn arch_kv(t: u32, v: &[u8]) -> Vec<u8> {
        B::new()
            .st("general.architecture", "llama")
            .kv("x", t, v)
            .bytes()
    }

    #[test]
    fn the_metadata_budget_holds_across_values() {
        // Many strings each under the string limit but together over the section limit: refused
        // once the total would pass it, without needing the bytes to exist.
        let b = B::new().st("general.architecture", "llama");
        let mut bytes = b.bytes();
        let n = MAX_METADATA_LEN / MAX_STRING_LEN + 1;
        bytes[16..24].copy_from_slice(&(1 + n).to_le_bytes());
        // A generated stream: distinct keys, each with a maximal string.
        struct Repeat {
            n: u64,
            at: usize,
            unit: Vec<u8>,
        }
        impl Read for Repeat {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let mut w = 0;
                while w < buf.len() {
                    if self.at == 0 {
                        if self.n == 0 {
                            break;
                        }
                        // A new key each time: "k" + counter, then a maximal string.
                        self.n -= 1;
                        let key = format!("k{:08}", self.n);
                        self.unit = s(&key);
                        self.unit.extend_from_slice(&ty::STRING.to_le_bytes());
                        self.unit.extend_from_slice(&MAX_STRING_LEN.to_le_bytes());
                        self.unit
                            .resize(self.unit.len() + MAX_STRING_LEN as usize, b'z');
                    }
                    let k = (self.unit.len() - self.at).min(buf.len() - w);
                    buf[w..w + k].copy_from_slice(&self.unit[self.at..self.at + k]);
                    self.at = (self.at + k) % self.unit.len();
                    w += k;
                }
                Ok(w)
            }
        }
        let r = (&bytes[..]).chain(Repeat {
            n,
            at: 0,
            unit: Vec::new(),
        });
        match read_meta(r) {
            Err(GgufError::TooLarge {
                what: "metadata section",
                max,
                ..
            }) => assert_eq!(max, MAX_METADATA_LEN),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mutated_files_never_panic() {
        // A small deterministic fuzz: flip bytes of a valid file (xorshift), expect Ok or Err.
        let base = full().bytes();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            let cut = b.len() - (next() % 8) as usize;
            let _ = read_meta(&b[..cut]);
        }
    }

    #[test]
    fn missing_file_is_io() {
        let err = read_meta_file(Path::new("/nonexistent/agora/model.gguf")).unwrap_err();
        assert!(matches!(err, GgufError::Io(_)));
    }
}
