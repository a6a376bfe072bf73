//! c2sp.org/signed-note: text signed by one or more keys, Ed25519 signers, and verifier keys.

use ed25519_dalek::{Signature as EdSignature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt;

use crate::{Error, Result, b64_decode, b64_encode};

/// The em dash and space that start every signature line.
pub const SIG_PREFIX: &str = "\u{2014} ";
/// Largest note accepted by [`Note::parse`].
pub const MAX_NOTE_LEN: usize = 1 << 20;
/// Most signature lines accepted by [`Note::parse`] (the spec requires at least 16).
pub const MAX_SIGNATURES: usize = 100;

/// Signature type bytes assigned by the signed-note spec that this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `0x01`: Ed25519 over the note text.
    Ed25519,
    /// `0x04`: timestamped Ed25519 witness cosignatures (c2sp.org/tlog-cosignature).
    CosignatureV1,
}

impl KeyType {
    /// The signature type byte.
    pub fn byte(self) -> u8 {
        match self {
            KeyType::Ed25519 => 0x01,
            KeyType::CosignatureV1 => 0x04,
        }
    }

    /// The key type for a signature type byte; [`Error::UnsupportedKeyType`] for any other byte.
    pub fn from_byte(b: u8) -> Result<KeyType> {
        match b {
            0x01 => Ok(KeyType::Ed25519),
            0x04 => Ok(KeyType::CosignatureV1),
            other => Err(Error::UnsupportedKeyType(other)),
        }
    }
}

/// `SHA-256(name || 0x0A || type || public key)[:4]` as a big-endian u32.
pub fn key_id(name: &str, kind: KeyType, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', kind.byte()]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Key names are non-empty and contain neither Unicode spaces nor `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('+')
        && !name.chars().any(|c| c.is_whitespace() || (c as u32) < 0x20)
}

/// A verifier key: `<name>+<hex key id>+<base64(type || public key)>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Vkey {
    /// The key name (for a log, its origin), valid per [`is_valid_key_name`].
    pub name: String,
    /// [`key_id`] of the name, type and key.
    pub key_id: u32,
    /// The signature type.
    pub kind: KeyType,
    /// The Ed25519 public key.
    pub key: VerifyingKey,
}

impl fmt::Debug for Vkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vkey({self})")
    }
}

impl fmt::Display for Vkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut material = vec![self.kind.byte()];
        material.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            b64_encode(&material)
        )
    }
}

impl Vkey {
    /// The verifier key for `key` under `name`, with its key ID computed;
    /// [`Error::InvalidKeyName`] if the name is not valid.
    pub fn new(name: &str, kind: KeyType, key: VerifyingKey) -> Result<Vkey> {
        if !is_valid_key_name(name) {
            return Err(Error::InvalidKeyName(name.to_string()));
        }
        Ok(Vkey {
            name: name.to_string(),
            key_id: key_id(name, kind, key.as_bytes()),
            kind,
            key,
        })
    }

    /// Parse a vkey string; the key ID must be lowercase hex and match the name and key.
    pub fn parse(s: &str) -> Result<Vkey> {
        if s.len() > 1024 {
            return Err(Error::MalformedVkey("too long"));
        }
        // The base64 key material may itself contain '+'.
        let mut parts = s.splitn(3, '+');
        let (Some(name), Some(id), Some(material)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::MalformedVkey("expected name+id+key"));
        };
        if !is_valid_key_name(name) {
            return Err(Error::InvalidKeyName(name.to_string()));
        }
        if id.len() != 8 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::MalformedVkey(
                "key ID must be 8 lowercase hex digits",
            ));
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| Error::MalformedVkey("bad key ID"))?;
        let material = b64_decode(material, "vkey key material")?;
        let (&ty, key) = material
            .split_first()
            .ok_or(Error::MalformedVkey("empty key material"))?;
        let kind = KeyType::from_byte(ty)?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| Error::MalformedVkey("Ed25519 public key must be 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| Error::MalformedVkey("not a valid Ed25519 public key"))?;
        let v = Vkey::new(name, kind, key)?;
        if v.key_id != id {
            return Err(Error::MalformedVkey("key ID does not match name and key"));
        }
        Ok(v)
    }

    /// Verify one signature (without the 4-byte key ID) over a note text.
    pub fn verify(&self, text: &[u8], sig: &[u8]) -> bool {
        match self.kind {
            KeyType::Ed25519 => {
                let Ok(sig) = EdSignature::from_slice(sig) else {
                    return false;
                };
                self.key.verify_strict(text, &sig).is_ok()
            }
            KeyType::CosignatureV1 => {
                let Ok((ts, sig)) = split_timestamped(sig) else {
                    return false;
                };
                let msg = signed_message(text, ts);
                self.key.verify_strict(&msg, &sig).is_ok()
            }
        }
    }
}

/// Something that signs note texts.
pub trait Signer {
    /// The key name written on signature lines.
    fn name(&self) -> &str;
    /// The key ID written before each signature.
    fn key_id(&self) -> u32;
    /// The signature bytes (without the key ID) over `text`.
    fn sign(&self, text: &[u8]) -> Vec<u8>;
}

/// An Ed25519 note signer (signature type 0x01).
#[derive(Clone)]
pub struct Ed25519Signer {
    name: String,
    key: SigningKey,
    key_id: u32,
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519Signer({}+{:08x})", self.name, self.key_id)
    }
}

impl Ed25519Signer {
    /// A signer for `key` under `name`; [`Error::InvalidKeyName`] if the name is not valid.
    pub fn new(name: &str, key: SigningKey) -> Result<Self> {
        if !is_valid_key_name(name) {
            return Err(Error::InvalidKeyName(name.to_string()));
        }
        let key_id = key_id(name, KeyType::Ed25519, key.verifying_key().as_bytes());
        Ok(Ed25519Signer {
            name: name.to_string(),
            key,
            key_id,
        })
    }

    /// The verifier key (signature type 0x01).
    pub fn vkey(&self) -> Vkey {
        Vkey {
            name: self.name.clone(),
            key_id: self.key_id,
            kind: KeyType::Ed25519,
            key: self.key.verifying_key(),
        }
    }

    /// The Go `golang.org/x/mod/sumdb/note` private key encoding:
    /// `PRIVATE+KEY+<name>+<hex id>+base64(0x01 || seed)`.
    pub fn to_skey(&self) -> String {
        let mut material = vec![KeyType::Ed25519.byte()];
        material.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id,
            b64_encode(&material)
        )
    }

    /// Parse the encoding written by [`Ed25519Signer::to_skey`]; the key ID must match the name
    /// and key. Errors are [`Error::MalformedVkey`], [`Error::Base64`],
    /// [`Error::UnsupportedKeyType`] and [`Error::InvalidKeyName`].
    pub fn from_skey(s: &str) -> Result<Self> {
        let rest = s.strip_prefix("PRIVATE+KEY+").ok_or(Error::MalformedVkey(
            "private key must start with PRIVATE+KEY+",
        ))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(material)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::MalformedVkey("expected PRIVATE+KEY+name+id+key"));
        };
        let material = b64_decode(material, "private key")?;
        let (&ty, seed) = material
            .split_first()
            .ok_or(Error::MalformedVkey("empty key material"))?;
        if KeyType::from_byte(ty)? != KeyType::Ed25519 {
            return Err(Error::UnsupportedKeyType(ty));
        }
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| Error::MalformedVkey("Ed25519 seed must be 32 bytes"))?;
        let signer = Ed25519Signer::new(name, SigningKey::from_bytes(&seed))?;
        if format!("{:08x}", signer.key_id) != id {
            return Err(Error::MalformedVkey("key ID does not match name and key"));
        }
        Ok(signer)
    }
}

impl Signer for Ed25519Signer {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.key_id
    }
    fn sign(&self, text: &[u8]) -> Vec<u8> {
        self.key.sign(text).to_bytes().to_vec()
    }
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NoteSignature {
    /// The signer's key name.
    pub name: String,
    /// The signer's key ID (the first 4 bytes of the decoded signature, big-endian).
    pub key_id: u32,
    /// The signature bytes after the 4-byte key ID.
    pub sig: Vec<u8>,
}

impl NoteSignature {
    /// `— <name> base64(key id || sig)` followed by a newline.
    pub fn to_line(&self) -> String {
        let mut raw = self.key_id.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.sig);
        format!("{SIG_PREFIX}{} {}\n", self.name, b64_encode(&raw))
    }

    /// Parse one signature line (without its newline).
    pub fn parse_line(line: &str) -> Result<NoteSignature> {
        let rest = line.strip_prefix(SIG_PREFIX).ok_or(Error::MalformedNote(
            "signature line must start with an em dash and a space",
        ))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or(Error::MalformedNote("signature line has no signature"))?;
        if !is_valid_key_name(name) {
            return Err(Error::MalformedNote("invalid key name in signature line"));
        }
        let raw = b64_decode(b64, "note signature")
            .map_err(|_| Error::MalformedNote("signature is not valid base64"))?;
        if raw.len() < 5 {
            return Err(Error::MalformedNote("signature is shorter than 5 bytes"));
        }
        Ok(NoteSignature {
            name: name.to_string(),
            key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            sig: raw[4..].to_vec(),
        })
    }
}

/// A signed note: text (ending in a newline) and one or more signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The signed text, including its final newline.
    pub text: String,
    /// The signature lines, in order.
    pub sigs: Vec<NoteSignature>,
}

/// Check the character rules of notes: valid UTF-8 with no control characters but newline.
fn check_note_chars(msg: &[u8]) -> Result<&str> {
    let s = std::str::from_utf8(msg).map_err(|_| Error::MalformedNote("not valid UTF-8"))?;
    if s.bytes().any(|b| b < 0x20 && b != b'\n') {
        return Err(Error::MalformedNote("contains a control character"));
    }
    Ok(s)
}

impl Note {
    /// Parse a signed note (syntax only; see [`Note::verify`]).
    pub fn parse(msg: &[u8]) -> Result<Note> {
        if msg.len() > MAX_NOTE_LEN {
            return Err(Error::MalformedNote("too large"));
        }
        let s = check_note_chars(msg)?;
        let split = s
            .rfind("\n\n")
            .ok_or(Error::MalformedNote("no blank line before the signatures"))?;
        let (text, sigs) = (&s[..split + 1], &s[split + 2..]);
        if sigs.is_empty() {
            return Err(Error::MalformedNote("no signatures"));
        }
        if !sigs.ends_with('\n') {
            return Err(Error::MalformedNote("signatures must end with a newline"));
        }
        let lines: Vec<&str> = sigs[..sigs.len() - 1].split('\n').collect();
        if lines.len() > MAX_SIGNATURES {
            return Err(Error::MalformedNote("too many signatures"));
        }
        let sigs = lines
            .into_iter()
            .map(NoteSignature::parse_line)
            .collect::<Result<Vec<_>>>()?;
        Ok(Note {
            text: text.to_string(),
            sigs,
        })
    }

    /// Sign `text` (which must end in a newline) with every signer.
    pub fn sign(text: &str, signers: &[&dyn Signer]) -> Result<Note> {
        let mut n = Note {
            text: text.to_string(),
            sigs: Vec::new(),
        };
        n.check_text()?;
        for s in signers {
            n.add_signature(*s)?;
        }
        Ok(n)
    }

    fn check_text(&self) -> Result<()> {
        if !self.text.ends_with('\n') {
            return Err(Error::MalformedNote("text must end with a newline"));
        }
        check_note_chars(self.text.as_bytes())?;
        Ok(())
    }

    /// Add (or replace) the signature of `signer`.
    pub fn add_signature(&mut self, signer: &dyn Signer) -> Result<()> {
        if !is_valid_key_name(signer.name()) {
            return Err(Error::InvalidKeyName(signer.name().to_string()));
        }
        self.check_text()?;
        let sig = NoteSignature {
            name: signer.name().to_string(),
            key_id: signer.key_id(),
            sig: signer.sign(self.text.as_bytes()),
        };
        self.sigs
            .retain(|s| !(s.name == sig.name && s.key_id == sig.key_id));
        self.sigs.push(sig);
        Ok(())
    }

    /// The serialised note: text, blank line, signature lines.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.text.clone().into_bytes();
        out.push(b'\n');
        for s in &self.sigs {
            out.extend_from_slice(s.to_line().as_bytes());
        }
        out
    }

    /// Verify the note against `known` keys, as the spec requires: signatures from unknown keys
    /// are ignored, a known key whose signature fails rejects the whole note, and at least one
    /// known key must have signed. Returns the indices in `known` of the keys that signed.
    pub fn verify(&self, known: &[Vkey]) -> Result<Vec<usize>> {
        let mut verified = Vec::new();
        let mut seen = HashSet::new();
        for s in &self.sigs {
            let Some(i) = known
                .iter()
                .position(|k| k.name == s.name && k.key_id == s.key_id)
            else {
                continue;
            };
            if !known[i].verify(self.text.as_bytes(), &s.sig) {
                return Err(Error::InvalidSignature {
                    name: s.name.clone(),
                    key_id: s.key_id,
                });
            }
            if seen.insert(i) {
                verified.push(i);
            }
        }
        if verified.is_empty() {
            return Err(Error::UnverifiedNote);
        }
        Ok(verified)
    }
}

// The cosignature/v1 message format (c2sp.org/tlog-cosignature), here because verifying a
// cosignature is part of verifying a note; `cosignature` re-exports it.

/// The fixed header line of the signed message.
pub const HEADER: &str = "cosignature/v1";

/// The message a cosigner signs: `cosignature/v1\ntime <t>\n` followed by the checkpoint text.
pub fn signed_message(checkpoint_text: &[u8], timestamp: u64) -> Vec<u8> {
    let mut m = format!("{HEADER}\ntime {timestamp}\n").into_bytes();
    m.extend_from_slice(checkpoint_text);
    m
}

/// Split a 72-byte `timestamped_signature` into its timestamp and Ed25519 signature.
pub fn split_timestamped(sig: &[u8]) -> Result<(u64, EdSignature)> {
    if sig.len() != 72 {
        return Err(Error::MalformedCosignature(
            "timestamped signature must be 72 bytes",
        ));
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&sig[..8]);
    let ts = u64::from_be_bytes(ts);
    if ts > i64::MAX as u64 {
        return Err(Error::MalformedCosignature("timestamp exceeds 2^63 - 1"));
    }
    let s = EdSignature::from_slice(&sig[8..])
        .map_err(|_| Error::MalformedCosignature("bad Ed25519 signature"))?;
    Ok((ts, s))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // The worked example of c2sp.org/signed-note.
    const SPEC_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const SPEC_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    // The worked example of golang.org/x/mod/sumdb/note (known private key).
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const GO_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn spec_example_verifies() {
        let v = Vkey::parse(SPEC_VKEY).unwrap();
        assert_eq!(v.key_id, 0x530d903a);
        assert_eq!(v.to_string(), SPEC_VKEY);
        let n = Note::parse(SPEC_NOTE.as_bytes()).unwrap();
        assert_eq!(n.text, "This is an example message.\n");
        assert_eq!(n.sigs.len(), 1);
        assert_eq!(n.sigs[0].key_id, 0x530d903a);
        assert_eq!(n.sigs[0].sig.len(), 64);
        assert_eq!(n.verify(std::slice::from_ref(&v)).unwrap(), vec![0]);
        assert_eq!(n.to_bytes(), SPEC_NOTE.as_bytes());
        // One changed byte of text fails.
        let mut bad = n.clone();
        bad.text = "This is an example message!\n".into();
        assert_eq!(
            bad.verify(&[v]),
            Err(Error::InvalidSignature {
                name: "example.com/foo".into(),
                key_id: 0x530d903a
            })
        );
    }

    #[test]
    fn go_example_signs_byte_for_byte() {
        let signer = Ed25519Signer::from_skey(GO_SKEY).unwrap();
        assert_eq!(signer.to_skey(), GO_SKEY);
        assert_eq!(signer.vkey().to_string(), GO_VKEY);
        let n = Note::sign(GO_TEXT, &[&signer]).unwrap();
        let want = format!("{GO_TEXT}\n{GO_SIG}");
        assert_eq!(String::from_utf8(n.to_bytes()).unwrap(), want);
        let v = Vkey::parse(GO_VKEY).unwrap();
        assert_eq!(
            Note::parse(want.as_bytes()).unwrap().verify(&[v]),
            Ok(vec![0])
        );
    }

    #[test]
    fn unknown_keys_are_ignored_and_needed() {
        let n = Note::parse(SPEC_NOTE.as_bytes()).unwrap();
        let other = Vkey::parse(GO_VKEY).unwrap();
        assert_eq!(
            n.verify(std::slice::from_ref(&other)),
            Err(Error::UnverifiedNote)
        );
        // Same name, different key ID: ignored.
        let mut v = Vkey::parse(SPEC_VKEY).unwrap();
        v.key_id ^= 1;
        assert_eq!(n.verify(&[v]), Err(Error::UnverifiedNote));
    }

    #[test]
    fn malformed_notes_are_rejected() {
        let good = SPEC_NOTE;
        let cases: Vec<(String, &str)> = vec![
            (good.replace("\n\n", "\n"), "no blank line"),
            (good.trim_end().to_string(), "no final newline"),
            (good.replace('\u{2014}', "-"), "ascii dash"),
            (
                good.replace("example.com/foo U", "example.com/foo  U"),
                "two spaces",
            ),
            (
                good.replace("example.com/foo U", "exam+ple.com/foo U"),
                "plus in name",
            ),
            (good.replace("This is", "This\tis"), "tab"),
            (good.replace("This is", "This\ris"), "carriage return"),
            (good.replace("Uw2QOkn8", "Uw2Q*kn8"), "bad base64"),
            (format!("{good}\u{2014} k AAAA\n"), "short signature"),
            (
                "This is an example message.\n\n".to_string(),
                "no signatures",
            ),
            (
                good.replace("\u{2014} example.com/foo ", "\u{2014}  "),
                "empty name",
            ),
        ];
        for (c, why) in cases {
            assert!(Note::parse(c.as_bytes()).is_err(), "{why}: {c:?}");
        }
        assert!(Note::parse(b"\xff\n\n\xe2\x80\x94 a AAAAAAA=\n").is_err());
        // The text may contain blank lines; the last blank line separates the signatures.
        let text = "a\n\nb\n";
        let signer = Ed25519Signer::from_skey(GO_SKEY).unwrap();
        let n = Note::sign(text, &[&signer]).unwrap();
        let parsed = Note::parse(&n.to_bytes()).unwrap();
        assert_eq!(parsed.text, text);
        assert!(parsed.verify(&[signer.vkey()]).is_ok());
        assert!(Note::sign("no newline", &[&signer]).is_err());
    }

    #[test]
    fn vkeys_are_strict() {
        for bad in [
            "example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2",
            "example.com/foo+530d903a",
            "+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k+x",
            // Unknown signature type (key ID adjusted in Go's test).
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(Vkey::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Vkey::parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
            Err(Error::UnsupportedKeyType(0x65))
        );
    }
}
