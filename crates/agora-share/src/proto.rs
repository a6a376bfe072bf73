//! The model protocol's messages (`/agora/<net>/model/1`), pure and bounded: what a fuzz target
//! feeds with arbitrary bytes.
//!
//! On one stream the asker sends requests one after the other, each a JSON frame
//! `{"digest": "<64 hex>", "what": "list"}` or `{"digest": "<64 hex>", "what": {"chunk": N}}`,
//! and the server answers each with one binary frame: `0x00` then the bytes (the chunk list, or
//! chunk N), or `0x01` then a UTF-8 reason it refuses (at most 256 bytes).

use serde::{Deserialize, Serialize};

use agora_models::chunks::{CHUNK, MAX_CHUNKS};

/// A request's frame is small: a digest and an index.
pub const MAX_REQUEST: usize = 256;

/// The largest reply: a chunk list of the most chunks (8 MiB + 8), or one chunk, plus the tag.
pub const MAX_REPLY: usize = 1 + 8 + 32 * MAX_CHUNKS as usize;

/// The longest refusal reason sent or accepted.
pub const MAX_REASON: usize = 256;

const _: () = assert!((CHUNK as usize) < MAX_REPLY);

/// What an asker wants of a model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The model file's SHA-256, lowercase hex.
    pub digest: String,
    pub what: What,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum What {
    /// The chunk list ([`agora_models::chunks::ChunkList::encode`]).
    List,
    /// One chunk's bytes.
    Chunk(u64),
}

/// Why a message is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("not a request: {0}")]
    Json(String),
    #[error("the digest is not 64 lowercase hex digits")]
    Digest,
    #[error("chunk index {0} is beyond the largest file")]
    Index(u64),
    #[error("an empty reply")]
    Empty,
    #[error("a reply with the unknown tag {0}")]
    Tag(u8),
    #[error("a refusal whose reason is not short UTF-8 text")]
    Reason,
}

impl Request {
    /// Parses and checks a request frame (from a peer).
    pub fn parse(frame: &[u8]) -> Result<Request, ProtoError> {
        if frame.len() > MAX_REQUEST {
            return Err(ProtoError::Json(format!("{} bytes", frame.len())));
        }
        let r: Request =
            serde_json::from_slice(frame).map_err(|e| ProtoError::Json(e.to_string()))?;
        r.check()?;
        Ok(r)
    }

    /// Checks what serde cannot: the digest's form and the index's range.
    pub fn check(&self) -> Result<(), ProtoError> {
        if !is_digest(&self.digest) {
            return Err(ProtoError::Digest);
        }
        match self.what {
            What::Chunk(i) if i >= MAX_CHUNKS => Err(ProtoError::Index(i)),
            _ => Ok(()),
        }
    }
}

/// Whether `s` is a SHA-256 in lowercase hex.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A server's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Data(Vec<u8>),
    Refused(String),
}

impl Reply {
    /// The frame: the tag, then the bytes or the reason (cut to [`MAX_REASON`] bytes at a
    /// character boundary).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Data(d) => {
                let mut out = Vec::with_capacity(1 + d.len());
                out.push(0);
                out.extend_from_slice(d);
                out
            }
            Reply::Refused(r) => {
                let mut end = r.len().min(MAX_REASON);
                while !r.is_char_boundary(end) {
                    end -= 1;
                }
                let mut out = vec![1];
                out.extend_from_slice(&r.as_bytes()[..end]);
                out
            }
        }
    }

    /// Parses a frame (from a peer).
    pub fn decode(mut frame: Vec<u8>) -> Result<Reply, ProtoError> {
        match frame.first().copied() {
            None => Err(ProtoError::Empty),
            Some(0) => {
                frame.remove(0);
                Ok(Reply::Data(frame))
            }
            Some(1) => {
                let r = &frame[1..];
                if r.len() > MAX_REASON {
                    return Err(ProtoError::Reason);
                }
                let s = std::str::from_utf8(r).map_err(|_| ProtoError::Reason)?;
                Ok(Reply::Refused(
                    s.chars().filter(|c| !c.is_control()).collect(),
                ))
            }
            Some(t) => Err(ProtoError::Tag(t)),
        }
    }
}

/// The DHT key under which nodes announce they hold the model with this SHA-256 (raw bytes).
pub fn provider_key(digest: &str) -> Vec<u8> {
    let mut k = b"/agora/model/sha256/".to_vec();
    k.extend_from_slice(digest.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_read_as_documented_and_are_checked() {
        let d = "ab".repeat(32);
        let r: Request =
            serde_json::from_str(&format!(r#"{{"digest":"{d}","what":{{"chunk":7}}}}"#)).unwrap();
        assert_eq!(r.what, What::Chunk(7));
        r.check().unwrap();
        let l: Request =
            serde_json::from_str(&format!(r#"{{"digest":"{d}","what":"list"}}"#)).unwrap();
        assert_eq!(l.what, What::List);
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            format!(r#"{{"digest":"{d}","what":"list"}}"#)
        );
        let bad = Request {
            digest: "AB".repeat(32),
            what: What::List,
        };
        assert_eq!(bad.check(), Err(ProtoError::Digest));
        let far = Request {
            digest: d.clone(),
            what: What::Chunk(MAX_CHUNKS),
        };
        assert_eq!(far.check(), Err(ProtoError::Index(MAX_CHUNKS)));
        assert!(
            serde_json::from_str::<Request>(&format!(r#"{{"digest":"{d}","what":"list","x":1}}"#))
                .is_err()
        );
    }

    #[test]
    fn replies_round_trip_and_bad_frames_are_refused() {
        for r in [
            Reply::Data(vec![1, 2, 3]),
            Reply::Data(vec![]),
            Reply::Refused("not stored here".into()),
        ] {
            assert_eq!(Reply::decode(r.encode()).unwrap(), r);
        }
        // A long reason is cut at a character boundary; a control character is dropped.
        let long = Reply::Refused("é".repeat(200));
        assert_eq!(long.encode().len(), 1 + 256);
        assert_eq!(
            Reply::decode(vec![1, b'a', 0x1b, b'b']).unwrap(),
            Reply::Refused("ab".into())
        );
        assert_eq!(Reply::decode(vec![]), Err(ProtoError::Empty));
        assert_eq!(Reply::decode(vec![9]), Err(ProtoError::Tag(9)));
        assert_eq!(Reply::decode(vec![1, 0xff]), Err(ProtoError::Reason));
        assert_eq!(
            Reply::decode([vec![1], vec![b'a'; 257]].concat()),
            Err(ProtoError::Reason)
        );
    }
}
