//! Identity: an Ed25519 key, the PeerId libp2p derives from it, and C2SP verifier keys.

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use std::fmt;
use std::str::FromStr;

use agora_tlog::cosignature::Cosigner;
use agora_tlog::note::{Ed25519Signer, KeyType, Vkey};

use crate::{Error, Result};

/// First line of the key file.
pub const KEY_FILE_HEADER: &str = "agora-ed25519-key v1";

/// A node's identity: one Ed25519 key for libp2p, statements, log checkpoints and cosignatures.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.peer_id())
    }
}

impl Identity {
    /// A new random identity.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Identity {
        Identity {
            key: SigningKey::generate(rng),
        }
    }

    /// The identity whose Ed25519 secret key is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Identity {
        Identity {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The Ed25519 signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The libp2p PeerId of the public key.
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.public_key())
    }

    /// The key file: a header line and the base64 seed on the second line.
    pub fn to_key_file(&self) -> String {
        use base64::Engine;
        format!(
            "{KEY_FILE_HEADER}\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(self.key.as_bytes())
        )
    }

    /// Parse a key file written by [`Identity::to_key_file`] (surrounding whitespace on the key
    /// line is ignored); [`Error::MalformedKeyFile`] otherwise.
    pub fn from_key_file(s: &str) -> Result<Identity> {
        use base64::Engine;
        let mut lines = s.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(Error::MalformedKeyFile(
                "the first line must be `agora-ed25519-key v1`",
            ));
        }
        let seed = lines
            .next()
            .ok_or(Error::MalformedKeyFile("missing the key line"))?;
        if lines.next().is_some() {
            return Err(Error::MalformedKeyFile("unexpected lines after the key"));
        }
        let seed = base64::engine::general_purpose::STANDARD
            .decode(seed.trim())
            .map_err(|_| Error::MalformedKeyFile("the key is not valid base64"))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| Error::MalformedKeyFile("the key must be 32 bytes"))?;
        Ok(Identity::from_seed(&seed))
    }

    /// The default log origin (and checkpoint key name) of this identity.
    pub fn default_log_origin(&self) -> String {
        format!("agora.log/{}", self.peer_id())
    }

    /// The default witness name of this identity.
    pub fn default_witness_name(&self) -> String {
        format!("agora.witness/{}", self.peer_id())
    }

    /// A checkpoint signer (signed-note Ed25519, type 0x01) named `origin`.
    pub fn log_signer(&self, origin: &str) -> Result<Ed25519Signer> {
        Ok(Ed25519Signer::new(origin, self.key.clone())?)
    }

    /// A cosigner (cosignature/v1, type 0x04) named `name`.
    pub fn cosigner(&self, name: &str) -> Result<Cosigner> {
        Ok(Cosigner::new(name, self.key.clone())?)
    }

    /// The C2SP verifier key of this identity under `name` for note signatures.
    pub fn vkey(&self, name: &str) -> Result<Vkey> {
        Ok(Vkey::new(name, KeyType::Ed25519, self.public_key())?)
    }

    /// The C2SP verifier key of this identity under `name` for witness cosignatures.
    pub fn witness_vkey(&self, name: &str) -> Result<Vkey> {
        Ok(Vkey::new(name, KeyType::CosignatureV1, self.public_key())?)
    }
}

/// A libp2p PeerId of an Ed25519 key: the identity multihash of the protobuf-encoded public key
/// (`0x08 0x01 0x12 0x20 || key`), in base58btc. It embeds the whole key, so the key can be
/// recovered from it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub VerifyingKey);

const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

impl PeerId {
    /// The binary PeerId: the identity multihash header `0x00 0x24`, then the 36-byte
    /// protobuf-encoded key.
    pub fn to_bytes(&self) -> [u8; 38] {
        let mut b = [0u8; 38];
        b[..6].copy_from_slice(&PEER_ID_PREFIX);
        b[6..].copy_from_slice(self.0.as_bytes());
        b
    }

    /// The Ed25519 public key it embeds.
    pub fn public_key(&self) -> VerifyingKey {
        self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.to_bytes()).into_string())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl FromStr for PeerId {
    type Err = Error;

    fn from_str(s: &str) -> Result<PeerId> {
        if s.len() > 64 {
            return Err(Error::MalformedPeerId("too long"));
        }
        if let Some(p) = LAST.with(|l| {
            l.borrow()
                .as_ref()
                .filter(|(b, n, _)| &b[..*n] == s.as_bytes())
                .map(|(_, _, p)| *p)
        }) {
            return Ok(p);
        }
        let p = parse_peer_id(s)?;
        remember(s, p);
        Ok(p)
    }
}

thread_local! {
    /// A statement names its signer twice (the DSSE keyid and a field such as `voter` or
    /// `worker`): the last PeerId parsed (or resolved) on this thread is kept, so the second
    /// parse costs no point decompression (a large part of re-checking a log).
    static LAST: std::cell::RefCell<Option<([u8; 64], usize, PeerId)>> =
        const { std::cell::RefCell::new(None) };
}

/// Keep `p` as the PeerId `s` parses to (the last one of this thread).
pub(crate) fn remember(s: &str, p: PeerId) {
    if s.len() <= 64 {
        let mut b = [0u8; 64];
        b[..s.len()].copy_from_slice(s.as_bytes());
        LAST.with(|l| *l.borrow_mut() = Some((b, s.len(), p)));
    }
}

fn parse_peer_id(s: &str) -> Result<PeerId> {
    let b = bs58::decode(s)
        .into_vec()
        .map_err(|_| Error::MalformedPeerId("not base58btc"))?;
    if b.len() != 38 || b[..6] != PEER_ID_PREFIX {
        return Err(Error::MalformedPeerId(
            "not an identity multihash of an Ed25519 public key",
        ));
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&b[6..]);
    let key = VerifyingKey::from_bytes(&k)
        .map_err(|_| Error::MalformedPeerId("not a valid Ed25519 public key"))?;
    Ok(PeerId(key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The Ed25519 vector of rust-libp2p (`keypair_protobuf_roundtrip_ed25519`) and the libp2p
    /// peer-ids spec: seed, protobuf public key, and the PeerId other implementations derive.
    #[test]
    fn libp2p_vector() {
        let seed: [u8; 32] =
            hex::decode("7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d")
                .unwrap()
                .try_into()
                .unwrap();
        let id = Identity::from_seed(&seed);
        assert_eq!(
            hex::encode(id.public_key().as_bytes()),
            "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
        );
        assert_eq!(
            hex::encode(&id.peer_id().to_bytes()[2..]),
            "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
        );
        let p = id.peer_id().to_string();
        assert_eq!(p, "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq");
        assert_eq!(p.parse::<PeerId>().unwrap(), id.peer_id());
    }

    #[test]
    fn peer_id_errors() {
        assert!("".parse::<PeerId>().is_err());
        assert!("0OIl".parse::<PeerId>().is_err());
        // A sha256 multihash PeerId (RSA-style) is not an Ed25519 identity one.
        assert!(
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
                .parse::<PeerId>()
                .is_err()
        );
    }

    #[test]
    fn key_file_roundtrip() {
        let id = Identity::from_seed(&[9; 32]);
        let f = id.to_key_file();
        assert!(f.starts_with("agora-ed25519-key v1\n"));
        assert_eq!(
            Identity::from_key_file(&f).unwrap().public_key(),
            id.public_key()
        );
        assert!(Identity::from_key_file("agora-ed25519-key v2\nAAAA\n").is_err());
        assert!(Identity::from_key_file("agora-ed25519-key v1\nAAAA\n").is_err());
        assert!(Identity::from_key_file(&format!("{f}extra\n")).is_err());
    }

    #[test]
    fn vkeys() {
        let id = Identity::from_seed(&[9; 32]);
        let origin = id.default_log_origin();
        let v = id.vkey(&origin).unwrap();
        assert_eq!(Vkey::parse(&v.to_string()).unwrap(), v);
        assert!(v.to_string().starts_with(&format!("{origin}+")));
        let w = id.witness_vkey(&id.default_witness_name()).unwrap();
        assert_eq!(w.kind, KeyType::CosignatureV1);
        assert_eq!(id.cosigner(&id.default_witness_name()).unwrap().vkey(), w);
    }
}
