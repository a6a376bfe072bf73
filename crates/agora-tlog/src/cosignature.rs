//! c2sp.org/tlog-cosignature: `cosignature/v1`, timestamped Ed25519 witness cosignatures.

use ed25519_dalek::{Signer as _, SigningKey};
use std::fmt;

use crate::note::{KeyType, NoteSignature, Vkey, is_valid_key_name, key_id};
use crate::{Error, Result};

pub use crate::note::{HEADER, signed_message, split_timestamped};

/// The timestamp of a cosignature line.
pub fn timestamp(sig: &NoteSignature) -> Result<u64> {
    split_timestamped(&sig.sig).map(|(t, _)| t)
}

/// A witness cosigning key.
#[derive(Clone)]
pub struct Cosigner {
    name: String,
    key: SigningKey,
    key_id: u32,
}

impl fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cosigner({}+{:08x})", self.name, self.key_id)
    }
}

impl Cosigner {
    /// A cosigner for `key` under `name`; [`Error::InvalidKeyName`] if the name is not valid.
    pub fn new(name: &str, key: SigningKey) -> Result<Cosigner> {
        if !is_valid_key_name(name) {
            return Err(Error::InvalidKeyName(name.to_string()));
        }
        let key_id = key_id(name, KeyType::CosignatureV1, key.verifying_key().as_bytes());
        Ok(Cosigner {
            name: name.to_string(),
            key,
            key_id,
        })
    }

    /// The witness's key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID (computed for signature type 0x04).
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The verifier key (signature type 0x04).
    pub fn vkey(&self) -> Vkey {
        Vkey {
            name: self.name.clone(),
            key_id: self.key_id,
            kind: KeyType::CosignatureV1,
            key: self.key.verifying_key(),
        }
    }

    /// Cosign a checkpoint note text at `timestamp` (POSIX seconds, at most 2^63 - 1).
    pub fn cosign(&self, checkpoint_text: &str, timestamp: u64) -> Result<NoteSignature> {
        if timestamp > i64::MAX as u64 {
            return Err(Error::MalformedCosignature("timestamp exceeds 2^63 - 1"));
        }
        let sig = self
            .key
            .sign(&signed_message(checkpoint_text.as_bytes(), timestamp));
        let mut raw = timestamp.to_be_bytes().to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        Ok(NoteSignature {
            name: self.name.clone(),
            key_id: self.key_id,
            sig: raw,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::note::Note;

    // The example of c2sp.org/tlog-cosignature.
    const EXAMPLE: &str = "example.com/behind-the-sofa
20852163
CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=
\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==
";

    #[test]
    fn spec_example_fields() {
        let n = Note::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(n.sigs.len(), 2);
        // The log's Ed25519 signature: key ID then 64 signature bytes.
        assert_eq!(n.sigs[0].key_id, 0x033de0ae);
        assert_eq!(n.sigs[0].sig.len(), 64);
        // The witness cosignature: key ID, then the timestamp of the spec's signed message.
        let w = &n.sigs[1];
        assert_eq!(w.name, "witness.example.com/w1");
        assert_eq!(w.key_id, 0x8d66cf3f);
        assert_eq!(w.sig.len(), 72);
        assert_eq!(timestamp(w).unwrap(), 1679315147);
        // The signed message, exactly as the spec shows it.
        assert_eq!(
            signed_message(n.text.as_bytes(), 1679315147),
            b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
    }

    #[test]
    fn cosign_and_verify() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let c = Cosigner::new("witness.example.com/w1", key).unwrap();
        let v = c.vkey();
        assert_eq!(v.kind, KeyType::CosignatureV1);
        let parsed = Vkey::parse(&v.to_string()).unwrap();
        assert_eq!(parsed, v);
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let sig = c.cosign(text, 1679315147).unwrap();
        assert_eq!(timestamp(&sig).unwrap(), 1679315147);
        let note = Note {
            text: text.into(),
            sigs: vec![sig.clone()],
        };
        assert_eq!(note.verify(std::slice::from_ref(&v)), Ok(vec![0]));
        // The same key as a plain Ed25519 key has a different key ID and is ignored.
        let ed = Vkey::new(&v.name, KeyType::Ed25519, v.key).unwrap();
        assert_ne!(ed.key_id, v.key_id);
        assert_eq!(note.verify(&[ed]), Err(Error::UnverifiedNote));
        // Changing the timestamp breaks the signature.
        let mut bad = note.clone();
        bad.sigs[0].sig[7] ^= 1;
        assert!(matches!(
            bad.verify(&[v]),
            Err(Error::InvalidSignature { .. })
        ));
        assert!(c.cosign(text, 1 << 63).is_err());
    }

    #[test]
    fn oversized_timestamps_are_rejected() {
        // The tlog-witness example response line: its timestamp exceeds 2^63 - 1.
        let line = "\u{2014} witness.example/w1 CMp+6LWBU0anHGH5aNDTJkH/gj79sG+T6+iP2ThYN5krrDJbR1HDnucjL39QsZTSvVjyQLrdk3DXDqI5G2HgLatVs0pWh6Up69HVOw==";
        let s = NoteSignature::parse_line(line).unwrap();
        assert_eq!(
            timestamp(&s),
            Err(Error::MalformedCosignature("timestamp exceeds 2^63 - 1"))
        );
        assert!(split_timestamped(&[0u8; 71]).is_err());
    }
}
