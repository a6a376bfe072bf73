//! c2sp.org/tlog-proof: an offline-verifiable proof that an entry is in a log, under a checkpoint
//! that may carry witness cosignatures.

use crate::checkpoint::SignedCheckpoint;
use crate::hash::Hash;
use crate::merkle;
use crate::policy::Policy;
use crate::{Error, Result, b64_decode, b64_encode};

/// The first line of every tlog-proof.
pub const HEADER: &str = "c2sp.org/tlog-proof@v1";
/// Most inclusion proof lines accepted (a tree of 2^63 leaves needs 63).
pub const MAX_PATH: usize = 63;

/// A tlog-proof: an entry's index, its inclusion proof and the checkpoint it is proven under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlogProof {
    /// Opaque, unauthenticated extra data.
    pub extra: Option<Vec<u8>>,
    /// Index of the entry's leaf in the log.
    pub index: u64,
    /// The inclusion proof, from the leaf's sibling up.
    pub path: Vec<Hash>,
    /// The checkpoint whose root `path` leads to, with its signatures and cosignatures.
    pub checkpoint: SignedCheckpoint,
}

impl TlogProof {
    /// Parse a tlog-proof without verifying it (see [`TlogProof::verify`]). Errors are
    /// [`Error::MalformedProof`], or the note and checkpoint errors of its checkpoint.
    pub fn parse(bytes: &[u8]) -> Result<TlogProof> {
        if bytes.len() > crate::note::MAX_NOTE_LEN + 8192 {
            return Err(Error::MalformedProof("too large"));
        }
        let s = std::str::from_utf8(bytes).map_err(|_| Error::MalformedProof("not valid UTF-8"))?;
        let mut rest = s;
        let mut next_line = |what: &'static str| -> Result<&str> {
            let (line, r) = rest.split_once('\n').ok_or(Error::MalformedProof(what))?;
            rest = r;
            Ok(line)
        };
        if next_line("missing header line")? != HEADER {
            return Err(Error::MalformedProof(
                "first line must be c2sp.org/tlog-proof@v1",
            ));
        }
        let mut line = next_line("missing index line")?;
        let mut extra = None;
        if let Some(e) = line.strip_prefix("extra ") {
            if e.is_empty() {
                return Err(Error::MalformedProof("empty extra data"));
            }
            extra = Some(
                b64_decode(e, "extra data")
                    .map_err(|_| Error::MalformedProof("extra data is not valid base64"))?,
            );
            line = next_line("missing index line")?;
        }
        let index = line
            .strip_prefix("index ")
            .and_then(crate::parse_decimal)
            .ok_or(Error::MalformedProof(
                "expected index line with a decimal with no leading zeroes",
            ))?;
        let mut path = Vec::new();
        loop {
            let l = next_line("missing empty line before the checkpoint")?;
            if l.is_empty() {
                break;
            }
            if path.len() == MAX_PATH {
                return Err(Error::MalformedProof("too many inclusion proof lines"));
            }
            path.push(
                Hash::from_base64(l, "proof hash")
                    .map_err(|_| Error::MalformedProof("proof line is not base64 of 32 bytes"))?,
            );
        }
        let checkpoint = SignedCheckpoint::parse(rest.as_bytes())?;
        Ok(TlogProof {
            extra,
            index,
            path,
            checkpoint,
        })
    }

    /// The serialised proof, as [`TlogProof::parse`] reads it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("{HEADER}\n");
        if let Some(e) = &self.extra {
            s.push_str(&format!("extra {}\n", b64_encode(e)));
        }
        s.push_str(&format!("index {}\n", self.index));
        for h in &self.path {
            s.push_str(&h.to_base64());
            s.push('\n');
        }
        s.push('\n');
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.checkpoint.to_bytes());
        out
    }

    /// Verify offline: the checkpoint is signed by a log of the policy and cosigned by a quorum,
    /// and `leaf` (the leaf hash of the entry) is at `index` under its root.
    pub fn verify(&self, leaf: &Hash, policy: &Policy) -> Result<&SignedCheckpoint> {
        let verified = policy.verify_checkpoint(&self.checkpoint.to_bytes())?;
        if verified != self.checkpoint {
            return Err(Error::MalformedProof("checkpoint does not round-trip"));
        }
        let cp = &self.checkpoint.checkpoint;
        merkle::verify_inclusion(self.index, cp.size, leaf, &self.path, &cp.root)?;
        Ok(&self.checkpoint)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::hash::leaf_hash;
    use crate::merkle::MemoryTree;
    use crate::note::Ed25519Signer;
    use ed25519_dalek::SigningKey;

    fn make() -> (TlogProof, Policy, Hash) {
        let log =
            Ed25519Signer::new("example.com/fancylog", SigningKey::from_bytes(&[5; 32])).unwrap();
        let mut t = MemoryTree::new();
        for i in 0..100u32 {
            t.append(&i.to_be_bytes());
        }
        let cp = Checkpoint::new("example.com/fancylog", 100, t.root());
        let sc = SignedCheckpoint::sign(cp, &log).unwrap();
        let p = TlogProof {
            extra: Some(b"age-v1.2.1-darwin-arm64.tar.gz".to_vec()),
            index: 73,
            path: t.inclusion_proof(73, 100).unwrap(),
            checkpoint: sc,
        };
        let policy =
            Policy::parse(format!("log {}\nquorum none\n", log.vkey()).as_bytes()).unwrap();
        (p, policy, leaf_hash(&73u32.to_be_bytes()))
    }

    #[test]
    fn roundtrip_and_verify() {
        let (p, policy, leaf) = make();
        let b = p.to_bytes();
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(text.starts_with(
            "c2sp.org/tlog-proof@v1\nextra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6\nindex 73\n"
        ));
        let q = TlogProof::parse(&b).unwrap();
        assert_eq!(q, p);
        assert_eq!(q.to_bytes(), b);
        assert!(q.verify(&leaf, &policy).is_ok());
        assert_eq!(
            q.verify(&leaf_hash(b"other"), &policy),
            Err(Error::RootMismatch)
        );
        let mut q2 = q.clone();
        q2.index = 72;
        assert!(q2.verify(&leaf, &policy).is_err());
        let mut q3 = q;
        q3.extra = None;
        let b3 = q3.to_bytes();
        assert!(
            String::from_utf8(b3.clone())
                .unwrap()
                .starts_with("c2sp.org/tlog-proof@v1\nindex 73\n")
        );
        assert_eq!(TlogProof::parse(&b3).unwrap(), q3);
    }

    #[test]
    fn spec_example_structure() {
        // The example of c2sp.org/tlog-proof, with its elided signatures replaced by a real one.
        let (p, _, _) = make();
        let sig = p.checkpoint.note.sigs[0].to_line();
        let ex = format!(
            "c2sp.org/tlog-proof@v1\nextra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ\nindex 73894\ngSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=\nB95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=\nEKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=\nRoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=\nAHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=\n\nexample.com/fancylog\n109482\nsFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n\n{sig}"
        );
        let q = TlogProof::parse(ex.as_bytes()).unwrap();
        assert_eq!(q.index, 73894);
        assert_eq!(q.path.len(), 5);
        assert_eq!(q.checkpoint.checkpoint.size, 109482);
        assert_eq!(q.to_bytes(), ex.as_bytes());
    }

    #[test]
    fn malformed_proofs() {
        let (p, _, _) = make();
        let good = String::from_utf8(p.to_bytes()).unwrap();
        let first_hash = p.path[0].to_base64();
        for (bad, why) in [
            (
                good.replace("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2"),
                "version",
            ),
            (good.replace("index 73", "index 073"), "leading zero"),
            (good.replace("index 73", "index  73"), "double space"),
            (good.replace("extra YWdl", "extra *Wdl"), "extra base64"),
            (
                good.replace(&format!("{first_hash}\n"), "\n"),
                "blank proof line",
            ),
            (good.replace(&first_hash, "ZG9uJ3QgY2FyZSAy"), "short hash"),
            (
                good.replace("\n\nexample.com", "\nexample.com"),
                "no blank line",
            ),
            (good.replacen("index 73\n", "", 1), "no index"),
            (good.replace("extra ", "extra  "), "extra double space"),
        ] {
            assert!(TlogProof::parse(bad.as_bytes()).is_err(), "{why}");
        }
        let many = format!(
            "c2sp.org/tlog-proof@v1\nindex 0\n{}\n{}",
            format!("{first_hash}\n").repeat(64),
            String::from_utf8(p.checkpoint.to_bytes()).unwrap()
        );
        assert_eq!(
            TlogProof::parse(many.as_bytes()),
            Err(Error::MalformedProof("too many inclusion proof lines"))
        );
    }
}
