//! c2sp.org/tlog-checkpoint: origin, tree size and root hash, as the text of a signed note.

use crate::hash::Hash;
use crate::note::{Note, Signer, Vkey};
use crate::{Error, Result};

/// A checkpoint body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's unique identity (first line); also the name of its signing key.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// Root hash of the tree of `size` leaves.
    pub root: Hash,
    /// Opaque, non-empty extension lines (not recommended; kept verbatim).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: &str, size: u64, root: Hash) -> Checkpoint {
        Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// Parse a checkpoint from a note text (which ends in a newline).
    pub fn parse(text: &str) -> Result<Checkpoint> {
        let body = text
            .strip_suffix('\n')
            .ok_or(Error::MalformedCheckpoint("text must end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(Error::MalformedCheckpoint("empty origin line"));
        }
        if origin.bytes().any(|b| b < 0x20) {
            return Err(Error::MalformedCheckpoint("control character in origin"));
        }
        let size = lines
            .next()
            .ok_or(Error::MalformedCheckpoint("missing tree size line"))?;
        let size = crate::parse_decimal(size).ok_or(Error::MalformedCheckpoint(
            "tree size must be a decimal with no leading zeroes",
        ))?;
        let root = lines
            .next()
            .ok_or(Error::MalformedCheckpoint("missing root hash line"))?;
        let root = Hash::from_base64(root, "root hash")
            .map_err(|_| Error::MalformedCheckpoint("root hash must be base64 of 32 bytes"))?;
        let mut extensions = Vec::new();
        for l in lines {
            if l.is_empty() {
                return Err(Error::MalformedCheckpoint("empty extension line"));
            }
            if l.bytes().any(|b| b < 0x20) {
                return Err(Error::MalformedCheckpoint(
                    "control character in extension line",
                ));
            }
            extensions.push(l.to_string());
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }

    /// The note text.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            self.root.to_base64()
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }
}

/// A checkpoint together with the note that carries it (log signature and any cosignatures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The body, parsed from `note.text`.
    pub checkpoint: Checkpoint,
    /// The note carrying it, with every signature line.
    pub note: Note,
}

impl SignedCheckpoint {
    /// Parse without verifying any signature.
    pub fn parse(bytes: &[u8]) -> Result<SignedCheckpoint> {
        let note = Note::parse(bytes)?;
        let checkpoint = Checkpoint::parse(&note.text)?;
        Ok(SignedCheckpoint { checkpoint, note })
    }

    /// Parse and verify the log's signature. The log key's name must be the origin.
    pub fn open(bytes: &[u8], log: &Vkey) -> Result<SignedCheckpoint> {
        let c = SignedCheckpoint::parse(bytes)?;
        c.verify_log(log)?;
        Ok(c)
    }

    /// Check that `log` signed the note and that its key name is the origin
    /// ([`Error::OriginMismatch`] otherwise). Other signatures are ignored.
    pub fn verify_log(&self, log: &Vkey) -> Result<()> {
        if self.checkpoint.origin != log.name {
            return Err(Error::OriginMismatch {
                expected: log.name.clone(),
                found: self.checkpoint.origin.clone(),
            });
        }
        self.note.verify(std::slice::from_ref(log))?;
        Ok(())
    }

    /// Sign `checkpoint` as the log. Does not check that the signer's name is the origin.
    pub fn sign(checkpoint: Checkpoint, signer: &dyn Signer) -> Result<SignedCheckpoint> {
        let note = Note::sign(&checkpoint.to_text(), &[signer])?;
        Ok(SignedCheckpoint { checkpoint, note })
    }

    /// The serialised note.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.note.to_bytes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::note::Ed25519Signer;
    use ed25519_dalek::SigningKey;

    const EXAMPLE: &str = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";

    #[test]
    fn spec_example_parses() {
        let c = SignedCheckpoint::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.checkpoint.origin, "example.com/behind-the-sofa");
        assert_eq!(c.checkpoint.size, 20852163);
        assert_eq!(
            c.checkpoint.root.to_base64(),
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
        );
        assert_eq!(c.note.sigs[0].name, "example.com/behind-the-sofa");
        assert_eq!(c.note.sigs[0].key_id, 0x033de0ae);
        assert_eq!(c.checkpoint.to_text(), c.note.text);
        assert_eq!(c.to_bytes(), EXAMPLE.as_bytes());
    }

    #[test]
    fn sign_and_open() {
        let s = Ed25519Signer::new("example.com/log", SigningKey::from_bytes(&[1; 32])).unwrap();
        let cp = Checkpoint::new("example.com/log", 5, Hash::empty());
        let sc = SignedCheckpoint::sign(cp.clone(), &s).unwrap();
        let opened = SignedCheckpoint::open(&sc.to_bytes(), &s.vkey()).unwrap();
        assert_eq!(opened.checkpoint, cp);
        // Ed25519 is deterministic: the same key and text give the same bytes.
        assert_eq!(
            SignedCheckpoint::sign(cp, &s).unwrap().to_bytes(),
            sc.to_bytes()
        );
        let other =
            Ed25519Signer::new("example.com/other", SigningKey::from_bytes(&[1; 32])).unwrap();
        assert!(matches!(
            SignedCheckpoint::open(&sc.to_bytes(), &other.vkey()),
            Err(Error::OriginMismatch { .. })
        ));
    }

    #[test]
    fn malformed_bodies() {
        let r = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
        for (t, why) in [
            (format!("\n5\n{r}\n"), "empty origin"),
            (format!("o\n05\n{r}\n"), "leading zero"),
            (format!("o\n-5\n{r}\n"), "negative"),
            (format!("o\n5\n{r}"), "no final newline"),
            ("o\n5\n".to_string(), "missing root"),
            ("o\n5\nZG9uJ3QgY2FyZSAy\n".to_string(), "short root"),
            (format!("o\n5\n{r}\n\n"), "empty extension"),
            (format!("o\n18446744073709551616\n{r}\n"), "overflow"),
        ] {
            assert!(Checkpoint::parse(&t).is_err(), "{why}");
        }
        let c = Checkpoint::parse(&format!("o\n0\n{r}\next one\n")).unwrap();
        assert_eq!(c.size, 0);
        assert_eq!(c.extensions, vec!["ext one".to_string()]);
    }
}
