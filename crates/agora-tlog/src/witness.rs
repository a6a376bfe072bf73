//! The c2sp.org/tlog-witness wire format (add-checkpoint request and response bodies), and the
//! check that two checkpoints of one log prove a split view.

use crate::checkpoint::SignedCheckpoint;
use crate::hash::Hash;
use crate::merkle;
use crate::note::{NoteSignature, Vkey};
use crate::{Error, Result};

/// Most consistency proof lines a client may send.
pub const MAX_PROOF_LINES: usize = 63;
/// Content type of a 409 response body.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// The body of `POST <prefix>/add-checkpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpointRequest {
    /// The tree size of the latest checkpoint the client believes the witness cosigned.
    pub old_size: u64,
    /// Consistency proof from `old_size` to the checkpoint's size (at most
    /// [`MAX_PROOF_LINES`] hashes).
    pub proof: Vec<Hash>,
    /// The checkpoint note, verbatim (parsed by the witness so that it can answer with the
    /// status codes the spec assigns).
    pub checkpoint: Vec<u8>,
}

impl AddCheckpointRequest {
    /// Parse a request body (the checkpoint is kept unparsed); [`Error::WitnessRequest`] if
    /// malformed.
    pub fn parse(body: &[u8]) -> Result<AddCheckpointRequest> {
        if body.len() > crate::note::MAX_NOTE_LEN + 8192 {
            return Err(Error::WitnessRequest("too large"));
        }
        let mut rest = body;
        let mut next_line = |what: &'static str| -> Result<&[u8]> {
            let i = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or(Error::WitnessRequest(what))?;
            let (line, r) = (&rest[..i], &rest[i + 1..]);
            rest = r;
            Ok(line)
        };
        let old = next_line("missing old size line")?;
        let old_size = old
            .strip_prefix(b"old ")
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(crate::parse_decimal)
            .ok_or(Error::WitnessRequest(
                "first line must be `old <size>` with no leading zeroes",
            ))?;
        let mut proof = Vec::new();
        loop {
            let l = next_line("missing empty line before the checkpoint")?;
            if l.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(Error::WitnessRequest(
                    "more than 63 consistency proof lines",
                ));
            }
            let s = std::str::from_utf8(l)
                .map_err(|_| Error::WitnessRequest("proof line is not base64"))?;
            proof.push(
                Hash::from_base64(s, "consistency proof hash")
                    .map_err(|_| Error::WitnessRequest("proof line is not base64 of 32 bytes"))?,
            );
        }
        Ok(AddCheckpointRequest {
            old_size,
            proof,
            checkpoint: rest.to_vec(),
        })
    }

    /// The request body, as [`AddCheckpointRequest::parse`] reads it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("old {}\n", self.old_size);
        for h in &self.proof {
            s.push_str(&h.to_base64());
            s.push('\n');
        }
        s.push('\n');
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.checkpoint);
        out
    }
}

/// Parse a 200 response: one or more note signature lines, each ending in a newline.
pub fn parse_response(body: &[u8]) -> Result<Vec<NoteSignature>> {
    if body.len() > 1 << 16 {
        return Err(Error::WitnessResponse("too large"));
    }
    let s = std::str::from_utf8(body).map_err(|_| Error::WitnessResponse("not valid UTF-8"))?;
    let s = s
        .strip_suffix('\n')
        .ok_or(Error::WitnessResponse("must end with a newline"))?;
    if s.bytes().any(|b| b < 0x20 && b != b'\n') {
        return Err(Error::WitnessResponse("control character"));
    }
    let sigs = s
        .split('\n')
        .map(NoteSignature::parse_line)
        .collect::<Result<Vec<_>>>()
        .map_err(|_| Error::WitnessResponse("malformed signature line"))?;
    if sigs.len() > crate::note::MAX_SIGNATURES {
        return Err(Error::WitnessResponse("too many signatures"));
    }
    Ok(sigs)
}

/// Format a 200 response body: one signature line per cosignature.
pub fn format_response(sigs: &[NoteSignature]) -> String {
    sigs.iter().map(NoteSignature::to_line).collect()
}

/// Parse a 409 response body: the witness's latest size and a newline.
pub fn parse_size_body(body: &[u8]) -> Result<u64> {
    body.strip_suffix(b"\n")
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(crate::parse_decimal)
        .ok_or(Error::WitnessResponse(
            "409 body must be a decimal size and a newline",
        ))
}

/// How two checkpoints of one log prove that it showed two histories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitView {
    /// Two different roots for the same tree size.
    SameSize {
        /// The tree size both checkpoints claim.
        size: u64,
    },
    /// A consistency proof that leads to the larger checkpoint's root commits it to an old root
    /// different from the one the log signed at the smaller size.
    Inconsistent {
        /// Size of the smaller checkpoint.
        old_size: u64,
        /// Size of the larger checkpoint.
        new_size: u64,
        /// The root at `old_size` the proof commits the larger checkpoint to.
        implied_old_root: Hash,
    },
}

/// Check that checkpoints `a` and `b`, both signed by `log`, and a consistency proof from the
/// smaller to the larger, prove a split view. Anyone holding only the log's public key can run it.
pub fn verify_split_view(log: &Vkey, a: &[u8], b: &[u8], proof: &[Hash]) -> Result<SplitView> {
    let a = SignedCheckpoint::open(a, log)?;
    let b = SignedCheckpoint::open(b, log)?;
    let (old, new) = if a.checkpoint.size <= b.checkpoint.size {
        (&a.checkpoint, &b.checkpoint)
    } else {
        (&b.checkpoint, &a.checkpoint)
    };
    if old.size == new.size {
        if old.root == new.root {
            return Err(Error::NotEvidence("same size and same root"));
        }
        return Ok(SplitView::SameSize { size: old.size });
    }
    if old.size == 0 {
        return Err(Error::NotEvidence(
            "every tree is consistent with the empty tree",
        ));
    }
    match merkle::implied_old_root(old.size, new.size, proof, &new.root) {
        Ok(h) if h != old.root => Ok(SplitView::Inconsistent {
            old_size: old.size,
            new_size: new.size,
            implied_old_root: h,
        }),
        Ok(_) => Err(Error::NotEvidence("the checkpoints are consistent")),
        Err(Error::OldRootNotDerivable) => Err(Error::NotEvidence(
            "the old size is a power of two, so the proof cannot commit to an old root",
        )),
        Err(_) => Err(Error::NotEvidence(
            "the proof does not lead to the larger checkpoint's root",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::merkle::MemoryTree;
    use crate::note::Ed25519Signer;
    use ed25519_dalek::SigningKey;

    // The example request of c2sp.org/tlog-witness.
    const EXAMPLE: &str = "old 20852014
PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=
jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=
5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=
/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=

example.com/behind-the-sofa
20852163
CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=
\u{2014} example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=
";

    #[test]
    fn spec_example_request() {
        let r = AddCheckpointRequest::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(r.old_size, 20852014);
        assert_eq!(r.proof.len(), 4);
        let c = SignedCheckpoint::parse(&r.checkpoint).unwrap();
        assert_eq!(c.checkpoint.size, 20852163);
        assert_eq!(c.note.sigs.len(), 2);
        assert_eq!(c.note.sigs[1].key_id, 0xa292ea05);
        assert_eq!(r.to_bytes(), EXAMPLE.as_bytes());
    }

    #[test]
    fn spec_example_response() {
        let body = "\u{2014} witness.example/w1 CMp+6LWBU0anHGH5aNDTJkH/gj79sG+T6+iP2ThYN5krrDJbR1HDnucjL39QsZTSvVjyQLrdk3DXDqI5G2HgLatVs0pWh6Up69HVOw==\n\u{2014} witness.example/w1 I7rEps0pvK2UqkS2gSpVUDhrhVtQV9lgF6pRrWAvjJHjyWpW7VcE3SiOlVlbQNt64vWhO+DlkL0+UfzuOBMh9ChdMkP1vi/lCAsmlw==\n\u{2014} witness.example/w2 AWui8Sk55XjYLOijihBjhqEH6nS1ndDymE0a+6idX7pLcnoB+dhnz0854aLZgrrKbYKA7nC3HNJhm/kWl7oJlqU3rXXvpysAdyP3wQ==\n";
        let sigs = parse_response(body.as_bytes()).unwrap();
        assert_eq!(sigs.len(), 3);
        assert_eq!(sigs[2].name, "witness.example/w2");
        assert_eq!(format_response(&sigs), body);
        assert!(parse_response(b"").is_err());
        assert!(parse_response(&body.as_bytes()[..body.len() - 1]).is_err());
        assert_eq!(parse_size_body(b"20852014\n"), Ok(20852014));
        assert!(parse_size_body(b"020852014\n").is_err());
        assert!(parse_size_body(b"1").is_err());
    }

    #[test]
    fn malformed_requests() {
        for (bad, why) in [
            (
                EXAMPLE.replace("old 20852014", "old 020852014"),
                "leading zero",
            ),
            (
                EXAMPLE.replace("old 20852014", "old  20852014"),
                "two spaces",
            ),
            (EXAMPLE.replace("old 20852014", "new 20852014"), "keyword"),
            (
                EXAMPLE.replace(
                    "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=",
                    "ZG9uJ3QgY2FyZSAy",
                ),
                "short hash",
            ),
            ("old 5\n".to_string(), "no blank line"),
            (
                format!(
                    "old 5\n{}\n",
                    "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n".repeat(64)
                ),
                "64 lines",
            ),
        ] {
            assert!(
                AddCheckpointRequest::parse(bad.as_bytes()).is_err(),
                "{why}"
            );
        }
    }

    #[test]
    fn split_views() {
        let log = Ed25519Signer::new("example.com/log", SigningKey::from_bytes(&[3; 32])).unwrap();
        let sign = |t: &MemoryTree, n: u64| {
            SignedCheckpoint::sign(
                Checkpoint::new("example.com/log", n, t.root_at(n).unwrap()),
                &log,
            )
            .unwrap()
            .to_bytes()
        };
        let mut honest = MemoryTree::new();
        let mut fork = MemoryTree::new();
        for i in 0..10u8 {
            honest.append(&[i]);
            fork.append(&[if i == 2 { 99 } else { i }]);
        }
        let v = log.vkey();
        // Same size, different roots.
        assert_eq!(
            verify_split_view(&v, &sign(&honest, 5), &sign(&fork, 5), &[]),
            Ok(SplitView::SameSize { size: 5 })
        );
        // Size 5 from the honest tree, size 9 from the fork with the fork's own valid proof.
        let p = fork.consistency_proof(5, 9).unwrap();
        assert!(matches!(
            verify_split_view(&v, &sign(&honest, 5), &sign(&fork, 9), &p),
            Ok(SplitView::Inconsistent {
                old_size: 5,
                new_size: 9,
                ..
            })
        ));
        // Honest checkpoints are not evidence.
        let p = honest.consistency_proof(5, 9).unwrap();
        assert_eq!(
            verify_split_view(&v, &sign(&honest, 5), &sign(&honest, 9), &p),
            Err(Error::NotEvidence("the checkpoints are consistent"))
        );
        assert!(verify_split_view(&v, &sign(&honest, 5), &sign(&honest, 5), &[]).is_err());
        // A garbled proof is not evidence.
        let mut p = fork.consistency_proof(5, 9).unwrap();
        p[0].0[0] ^= 1;
        assert!(verify_split_view(&v, &sign(&honest, 5), &sign(&fork, 9), &p).is_err());
        // Power-of-two old size: not derivable.
        let p = fork.consistency_proof(4, 9).unwrap();
        assert!(verify_split_view(&v, &sign(&honest, 4), &sign(&fork, 9), &p).is_err());
        // Checkpoints signed by another key are rejected.
        let other =
            Ed25519Signer::new("example.com/log", SigningKey::from_bytes(&[4; 32])).unwrap();
        let forged = SignedCheckpoint::sign(
            Checkpoint::new("example.com/log", 5, fork.root_at(5).unwrap()),
            &other,
        )
        .unwrap()
        .to_bytes();
        assert!(verify_split_view(&v, &sign(&honest, 5), &forged, &[]).is_err());
    }
}
