//! DSSE envelopes (github.com/secure-systems-lab/dsse, protocol v1). Signatures cover
//! `PAE(payloadType, payload)` over the exact payload bytes; nothing is re-serialised before
//! verification. Each signature's `keyid` is the signer's PeerId, which embeds its public key.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, PeerId};
use crate::{Error, Result};

/// Largest envelope accepted by [`Envelope::from_json`].
pub const MAX_ENVELOPE_LEN: usize = 4 << 20;
/// Most signatures accepted on one envelope.
pub const MAX_SIGNATURES: usize = 64;

/// The pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal bytes.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// One signature of an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeSignature {
    /// The signer's PeerId (empty when absent from the JSON).
    pub keyid: String,
    /// The Ed25519 signature over [`pae`] of the payload type and payload (64 bytes when valid).
    pub sig: Vec<u8>,
}

/// A DSSE envelope, its payload decoded from base64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// How to interpret the payload (`payloadType`), e.g. a statement's media type.
    pub payload_type: String,
    /// The exact signed bytes.
    pub payload: Vec<u8>,
    /// The signatures, in order.
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<WireSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSignature {
    #[serde(default)]
    keyid: String,
    sig: String,
}

/// DSSE allows standard or URL-safe base64.
fn b64(s: &str, what: &str) -> Result<Vec<u8>> {
    STANDARD
        .decode(s)
        .or_else(|_| URL_SAFE.decode(s))
        .map_err(|_| Error::MalformedEnvelope(format!("{what} is not valid base64")))
}

/// Serializes as the JSON object [`Envelope::to_json`] writes (parse with
/// [`Envelope::from_json`], which bounds what it accepts).
impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.wire().serialize(s)
    }
}

impl Envelope {
    /// Sign `payload` (exact bytes) as `payload_type`.
    pub fn sign(payload_type: &str, payload: Vec<u8>, id: &Identity) -> Envelope {
        let mut e = Envelope {
            payload_type: payload_type.to_string(),
            payload,
            signatures: Vec::new(),
        };
        e.add_signature(id);
        e
    }

    /// Append a signature by `id`, its keyid being `id`'s PeerId.
    pub fn add_signature(&mut self, id: &Identity) {
        let sig = id
            .signing_key()
            .sign(&pae(&self.payload_type, &self.payload));
        self.signatures.push(EnvelopeSignature {
            keyid: id.peer_id().to_string(),
            sig: sig.to_bytes().to_vec(),
        });
    }

    /// The JSON envelope, with standard base64 payload and signatures.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.wire()).unwrap_or_default()
    }

    /// The JSON form, with standard base64 payload and signatures.
    fn wire(&self) -> WireEnvelope {
        WireEnvelope {
            payload_type: self.payload_type.clone(),
            payload: STANDARD.encode(&self.payload),
            signatures: self
                .signatures
                .iter()
                .map(|s| WireSignature {
                    keyid: s.keyid.clone(),
                    sig: STANDARD.encode(&s.sig),
                })
                .collect(),
        }
    }

    /// Parse a JSON envelope (standard or URL-safe base64, no unknown fields) without verifying
    /// it; [`Error::MalformedEnvelope`] when it is larger than [`MAX_ENVELOPE_LEN`], has an empty
    /// payload type, more than [`MAX_SIGNATURES`] signatures, or is otherwise invalid.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(Error::MalformedEnvelope("larger than 4 MiB".into()));
        }
        let w: WireEnvelope =
            serde_json::from_slice(bytes).map_err(|e| Error::MalformedEnvelope(e.to_string()))?;
        if w.payload_type.is_empty() {
            return Err(Error::MalformedEnvelope("empty payloadType".into()));
        }
        if w.signatures.len() > MAX_SIGNATURES {
            return Err(Error::MalformedEnvelope("too many signatures".into()));
        }
        let payload = b64(&w.payload, "payload")?;
        let signatures = w
            .signatures
            .into_iter()
            .map(|s| {
                Ok(EnvelopeSignature {
                    sig: b64(&s.sig, "signature")?,
                    keyid: s.keyid,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Envelope {
            payload_type: w.payload_type,
            payload,
            signatures,
        })
    }

    /// Verify every signature over the exact payload bytes; returns the signers. Every
    /// signature must name its signer by PeerId and verify, and there must be at least one.
    pub fn verify(&self) -> Result<Vec<PeerId>> {
        self.verify_with(&|_| None)
    }

    /// [`Envelope::verify`], with keyids already known (parsed once, e.g. a community's
    /// members) resolved by `known` instead of parsed again: parsing a PeerId decompresses its
    /// curve point, a fifth of the cost of a signature check.
    pub fn verify_with(&self, known: &dyn Fn(&str) -> Option<PeerId>) -> Result<Vec<PeerId>> {
        if self.signatures.is_empty() {
            return Err(Error::NoSignatures);
        }
        let msg = pae(&self.payload_type, &self.payload);
        let mut signers = Vec::new();
        for (index, s) in self.signatures.iter().enumerate() {
            let peer: PeerId = match known(&s.keyid) {
                // Only a resolution that is the keyid's own text is kept for later parses.
                Some(p) if p.to_string() == s.keyid => {
                    crate::identity::remember(&s.keyid, p);
                    p
                }
                _ => s.keyid.parse().map_err(|_| Error::UnknownKeyId {
                    index,
                    keyid: s.keyid.clone(),
                })?,
            };
            let bad = || Error::BadSignature {
                index,
                keyid: s.keyid.clone(),
            };
            let sig = Signature::from_slice(&s.sig).map_err(|_| bad())?;
            peer.public_key()
                .verify_strict(&msg, &sig)
                .map_err(|_| bad())?;
            if !signers.contains(&peer) {
                signers.push(peer);
            }
        }
        Ok(signers)
    }

    /// Verify, and require a signature by `key`.
    pub fn verify_signed_by(&self, key: &VerifyingKey) -> Result<()> {
        let signers = self.verify()?;
        if signers.iter().any(|p| p.public_key() == *key) {
            Ok(())
        } else {
            Err(Error::NotSignedBy(PeerId(*key).to_string()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_spec() {
        // The example of the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn sign_verify_and_tamper() {
        let id = Identity::from_seed(&[1; 32]);
        let e = Envelope::sign("application/x", b"{\"a\": 1}".to_vec(), &id);
        let j = e.to_json();
        let e2 = Envelope::from_json(j.as_bytes()).unwrap();
        assert_eq!(e2, e);
        assert_eq!(serde_json::to_string(&e).unwrap(), j);
        assert_eq!(e2.verify().unwrap(), vec![id.peer_id()]);
        assert!(e2.verify_signed_by(&id.public_key()).is_ok());
        let other = Identity::from_seed(&[2; 32]);
        assert!(matches!(
            e2.verify_signed_by(&other.public_key()),
            Err(Error::NotSignedBy(_))
        ));
        // Payload bytes that mean the same JSON still fail: no re-serialisation.
        let mut t = e2.clone();
        t.payload = b"{\"a\":1}".to_vec();
        assert!(matches!(
            t.verify(),
            Err(Error::BadSignature { index: 0, .. })
        ));
        let mut t = e2.clone();
        t.payload_type = "application/y".into();
        assert!(matches!(t.verify(), Err(Error::BadSignature { .. })));
        let mut t = e2.clone();
        t.signatures[0].keyid = other.peer_id().to_string();
        assert!(matches!(t.verify(), Err(Error::BadSignature { .. })));
        let mut t = e2.clone();
        t.signatures[0].keyid = "key-1".into();
        assert!(matches!(t.verify(), Err(Error::UnknownKeyId { .. })));
        let mut t = e2.clone();
        t.signatures.clear();
        assert_eq!(t.verify(), Err(Error::NoSignatures));
        // Two signers.
        let mut t = e2;
        t.add_signature(&other);
        assert_eq!(t.verify().unwrap().len(), 2);
    }

    #[test]
    fn malformed_envelopes() {
        for bad in [
            "",
            "{}",
            "[]",
            r#"{"payloadType":"a","payload":"!!","signatures":[]}"#,
            r#"{"payloadType":"","payload":"","signatures":[]}"#,
            r#"{"payloadType":"a","payload":"","signatures":[{"sig":"%"}]}"#,
            r#"{"payloadType":"a","payload":"","signatures":[],"extra":1}"#,
            r#"{"payloadType":"a","payload":"","signatures":[{"keyid":"k"}]}"#,
        ] {
            assert!(
                matches!(
                    Envelope::from_json(bad.as_bytes()),
                    Err(Error::MalformedEnvelope(_))
                ),
                "{bad}"
            );
        }
        // URL-safe base64 is allowed by DSSE.
        let e = Envelope::from_json(br#"{"payloadType":"a","payload":"-_8=","signatures":[]}"#)
            .unwrap();
        assert_eq!(e.payload, vec![0xfb, 0xff]);
    }
}
