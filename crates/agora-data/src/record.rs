//! One record of a dataset, its canonical bytes, and the Dolma JSON line it is read from.
//!
//! # Canonical encoding (`AGR1`)
//!
//! A record's canonical bytes are what its Merkle leaves hash, so they must be the same on
//! every machine and in every version. They are
//!
//! ```text
//! record := "AGR1" field+
//! field  := tag (1 byte) length (4 bytes, big-endian) value (length bytes)
//! tags   := 1 id | 2 text | 3 source | 4 added | 5 created | 6 metadata
//! ```
//!
//! Fields appear in increasing tag order, each at most once; `id` and `text` always, the others
//! only when present. Every value is UTF-8; `metadata` is canonical JSON: object keys sorted by
//! their UTF-8 bytes, no whitespace, strings escaped as `serde_json` writes them, numbers as
//! `serde_json` prints the parsed value. Decoding accepts exactly these bytes (no unknown,
//! repeated or out-of-order tag, nothing after the last field), so a record has one encoding
//! and `decode(encode(r)) == r`, `encode(decode(b)) == b`.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The first bytes of every canonical record.
pub const MAGIC: &[u8; 4] = b"AGR1";
/// Largest record accepted (canonical bytes): 16 MiB.
pub const MAX_RECORD_BYTES: usize = 16 << 20;
/// Longest record id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

const TAG_ID: u8 = 1;
const TAG_TEXT: u8 = 2;
const TAG_SOURCE: u8 = 3;
const TAG_ADDED: u8 = 4;
const TAG_CREATED: u8 = 5;
const TAG_METADATA: u8 = 6;

/// One document of a dataset, with the fields of a Dolma record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Unique within the dataset; what proofs of presence and absence name.
    pub id: String,
    /// The document's text.
    pub text: String,
    /// Where the document came from (a URL or a collection name).
    pub source: Option<String>,
    /// When it was added to the dataset, as written in the input (Dolma: ISO 8601).
    pub added: Option<String>,
    /// When the document was created, as written in the input.
    pub created: Option<String>,
    /// Anything else, as canonical JSON (see the module docs).
    pub metadata: Option<String>,
}

/// Why bytes or a JSON line are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The line is not JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// The line is JSON but not an object.
    #[error("a record must be a JSON object")]
    NotAnObject,
    /// A required field is absent.
    #[error("the record has no `{0}` (a string is required)")]
    Missing(&'static str),
    /// A field that must be a string is not.
    #[error("`{0}` must be a string")]
    NotAString(&'static str),
    /// The id is the empty string.
    #[error("the id is empty")]
    EmptyId,
    /// The id is longer than [`MAX_ID_BYTES`].
    #[error("the id is {0} bytes; at most {MAX_ID_BYTES} are allowed")]
    IdTooLong(usize),
    /// The record is larger than [`MAX_RECORD_BYTES`].
    #[error("the record is {0} bytes; at most {MAX_RECORD_BYTES} are allowed")]
    TooLarge(usize),
    /// The bytes are not exactly one record's canonical encoding.
    #[error("not a canonical record: {0}")]
    Encoding(&'static str),
}

impl Record {
    /// A record with only an id and a text.
    pub fn new(id: impl Into<String>, text: impl Into<String>) -> Record {
        Record {
            id: id.into(),
            text: text.into(),
            source: None,
            added: None,
            created: None,
            metadata: None,
        }
    }

    /// Reads one Dolma JSON line: `{"id", "text", "source", "added", "created", "metadata"}`.
    /// `id` may be a string or an integer (written as its decimal digits); other top-level
    /// fields are kept in `metadata` under their own names, so nothing in the input is lost.
    pub fn from_json(line: &str) -> Result<Record, RecordError> {
        let v: Value = serde_json::from_str(line).map_err(|e| RecordError::Json(e.to_string()))?;
        let Value::Object(mut obj) = v else {
            return Err(RecordError::NotAnObject);
        };
        let id = match obj.remove("id") {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            Some(_) => return Err(RecordError::NotAString("id")),
            None => return Err(RecordError::Missing("id")),
        };
        let text = match obj.remove("text") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(RecordError::NotAString("text")),
            None => return Err(RecordError::Missing("text")),
        };
        let mut optional = |name: &'static str| match obj.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(RecordError::NotAString(name)),
        };
        let source = optional("source")?;
        let added = optional("added")?;
        let created = optional("created")?;
        let metadata = match obj.remove("metadata") {
            None | Some(Value::Null) if obj.is_empty() => None,
            None | Some(Value::Null) => Some(canonical_json(&Value::Object(obj))),
            Some(m) if obj.is_empty() => Some(canonical_json(&m)),
            Some(m) => {
                // Unknown top-level fields join the metadata rather than vanish.
                obj.insert("metadata".into(), m);
                Some(canonical_json(&Value::Object(obj)))
            }
        };
        let r = Record {
            id,
            text,
            source,
            added,
            created,
            metadata,
        };
        r.check()?;
        Ok(r)
    }

    /// Checks the limits: a non-empty id of at most [`MAX_ID_BYTES`], at most
    /// [`MAX_RECORD_BYTES`] in all.
    pub fn check(&self) -> Result<(), RecordError> {
        if self.id.is_empty() {
            return Err(RecordError::EmptyId);
        }
        if self.id.len() > MAX_ID_BYTES {
            return Err(RecordError::IdTooLong(self.id.len()));
        }
        let size = self.encoded_len();
        if size > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(size));
        }
        Ok(())
    }

    fn fields(&self) -> [(u8, Option<&str>); 6] {
        [
            (TAG_ID, Some(&self.id)),
            (TAG_TEXT, Some(&self.text)),
            (TAG_SOURCE, self.source.as_deref()),
            (TAG_ADDED, self.added.as_deref()),
            (TAG_CREATED, self.created.as_deref()),
            (TAG_METADATA, self.metadata.as_deref()),
        ]
    }

    /// Length of the canonical bytes.
    pub fn encoded_len(&self) -> usize {
        MAGIC.len()
            + self
                .fields()
                .iter()
                .filter_map(|(_, v)| v.map(|v| 5 + v.len()))
                .sum::<usize>()
    }

    /// The canonical bytes (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        for (tag, value) in self.fields() {
            if let Some(v) = value {
                out.push(tag);
                // Values longer than u32::MAX cannot pass `check`; saturate rather than wrap.
                out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_be_bytes());
                out.extend_from_slice(v.as_bytes());
            }
        }
        out
    }

    /// Reads canonical bytes, refusing anything that is not exactly one record's encoding.
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let mut rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(RecordError::Encoding("it does not start with AGR1"))?;
        let mut values: [Option<String>; 6] = Default::default();
        let mut last = 0u8;
        while !rest.is_empty() {
            if rest.len() < 5 {
                return Err(RecordError::Encoding("a field header is cut short"));
            }
            let tag = rest[0];
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if !(TAG_ID..=TAG_METADATA).contains(&tag) {
                return Err(RecordError::Encoding("unknown field tag"));
            }
            if tag <= last {
                return Err(RecordError::Encoding("fields out of order or repeated"));
            }
            last = tag;
            let body = rest
                .get(5..5 + len)
                .ok_or(RecordError::Encoding("a field runs past the end"))?;
            let s = std::str::from_utf8(body)
                .map_err(|_| RecordError::Encoding("a field is not UTF-8"))?;
            values[usize::from(tag - 1)] = Some(s.to_string());
            rest = &rest[5 + len..];
        }
        let [id, text, source, added, created, metadata] = values;
        let r = Record {
            id: id.ok_or(RecordError::Missing("id"))?,
            text: text.ok_or(RecordError::Missing("text"))?,
            source,
            added,
            created,
            metadata,
        };
        if let Some(m) = &r.metadata {
            let v: Value = serde_json::from_str(m)
                .map_err(|_| RecordError::Encoding("metadata is not JSON"))?;
            if canonical_json(&v) != *m {
                return Err(RecordError::Encoding("metadata is not canonical JSON"));
            }
        }
        r.check()?;
        Ok(r)
    }

    /// SHA-256 of the canonical bytes.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

/// The key a record id sorts by in the id tree: SHA-256 of its UTF-8 bytes.
pub fn id_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Canonical JSON: object keys sorted by their bytes, no whitespace (see the module docs).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(k) {
                    write_canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_dolma_line_keeps_every_field() {
        let r = Record::from_json(
            r#"{"id": 7, "text": "hello", "source": "s", "added": "2024-01-01",
                "metadata": {"b": 1, "a": [true, null]}, "lang": "en"}"#,
        )
        .unwrap();
        assert_eq!(r.id, "7");
        assert_eq!(r.source.as_deref(), Some("s"));
        assert_eq!(r.created, None);
        assert_eq!(
            r.metadata.as_deref(),
            Some(r#"{"lang":"en","metadata":{"a":[true,null],"b":1}}"#)
        );
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn bad_lines_say_why() {
        let e = |l: &str| Record::from_json(l).unwrap_err();
        assert!(matches!(e("{"), RecordError::Json(_)));
        assert_eq!(e("[1]"), RecordError::NotAnObject);
        assert_eq!(e(r#"{"text": "x"}"#), RecordError::Missing("id"));
        assert_eq!(e(r#"{"id": "a"}"#), RecordError::Missing("text"));
        assert_eq!(
            e(r#"{"id": "a", "text": 1}"#),
            RecordError::NotAString("text")
        );
        assert_eq!(e(r#"{"id": "", "text": "x"}"#), RecordError::EmptyId);
        let long = format!(r#"{{"id": "{}", "text": "x"}}"#, "i".repeat(2000));
        assert_eq!(e(&long), RecordError::IdTooLong(2000));
    }

    #[test]
    fn decoding_refuses_every_other_encoding() {
        let r = Record::new("a", "b");
        let good = r.encode();
        assert_eq!(Record::decode(&good).unwrap(), r);
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Record::decode(&trailing).is_err());
        // text before id
        let mut swapped = MAGIC.to_vec();
        swapped.extend_from_slice(&[2, 0, 0, 0, 1, b'b', 1, 0, 0, 0, 1, b'a']);
        assert_eq!(
            Record::decode(&swapped),
            Err(RecordError::Encoding("fields out of order or repeated"))
        );
        let mut meta = r.clone();
        meta.metadata = Some("{ }".into());
        assert_eq!(
            Record::decode(&meta.encode()),
            Err(RecordError::Encoding("metadata is not canonical JSON"))
        );
        assert!(Record::decode(&good[..good.len() - 1]).is_err());
        assert!(Record::decode(b"AGR2").is_err());
    }

    fn any_record() -> impl Strategy<Value = Record> {
        (
            "[a-z0-9/._-]{1,40}",
            any::<String>(),
            proptest::option::of(any::<String>()),
            proptest::option::of("[0-9TZ:-]{0,25}"),
            proptest::option::of(any::<String>()),
            proptest::option::of(prop_oneof![
                Just(r#"{"a":1}"#.to_string()),
                Just("[]".to_string()),
                Just(r#""x""#.to_string())
            ]),
        )
            .prop_map(|(id, text, source, added, created, metadata)| Record {
                id,
                text,
                source,
                added,
                created,
                metadata,
            })
    }

    proptest! {
        #[test]
        fn encoding_round_trips(r in any_record()) {
            let b = r.encode();
            prop_assert_eq!(b.len(), r.encoded_len());
            let back = Record::decode(&b).unwrap();
            prop_assert_eq!(back.encode(), b);
            prop_assert_eq!(back, r);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Record::decode(&b);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&b);
            let _ = Record::decode(&with_magic);
        }
    }
}
