//! RFC 6962 hashing: leaves are `SHA-256(0x00 || entry)`, interior nodes `SHA-256(0x01 || L || R)`.

use sha2::{Digest, Sha256};
use std::fmt;

use crate::{Error, Result};

/// A SHA-256 Merkle tree hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Length of a hash in bytes.
    pub const LEN: usize = 32;

    /// The root of the empty tree, `SHA-256("")`.
    pub fn empty() -> Hash {
        Hash(Sha256::digest([]).into())
    }

    /// The hash held in exactly 32 bytes; otherwise [`Error::HashLength`] naming `what`.
    pub fn from_slice(b: &[u8], what: &'static str) -> Result<Hash> {
        let arr: [u8; 32] = b
            .try_into()
            .map_err(|_| Error::HashLength { what, len: b.len() })?;
        Ok(Hash(arr))
    }

    /// Parse standard base64 of exactly 32 bytes.
    pub fn from_base64(s: &str, what: &'static str) -> Result<Hash> {
        let b = crate::b64_decode(s, what)?;
        Hash::from_slice(&b, what)
    }

    /// Standard (padded) base64, as in checkpoints and proofs.
    pub fn to_base64(&self) -> String {
        crate::b64_encode(&self.0)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_base64())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// The leaf hash of an entry: `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    Hash(h.finalize().into())
}

/// An interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 1;
    buf[1..33].copy_from_slice(&left.0);
    buf[33..].copy_from_slice(&right.0);
    Hash(Sha256::digest(buf).into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc6962_constants() {
        // Well-known values (also in the conformance vectors).
        assert_eq!(
            Hash::empty().to_base64(),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        // Leaf hash of the empty entry.
        assert_eq!(
            leaf_hash(b"").to_base64(),
            "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0="
        );
    }

    #[test]
    fn base64_roundtrip_and_errors() {
        let h = leaf_hash(b"x");
        assert_eq!(Hash::from_base64(&h.to_base64(), "h"), Ok(h));
        assert_eq!(
            Hash::from_base64("ZG9uJ3QgY2FyZSAy", "root"),
            Err(Error::HashLength {
                what: "root",
                len: 12
            })
        );
        assert_eq!(
            Hash::from_base64("not base64!", "root"),
            Err(Error::Base64 { what: "root" })
        );
    }
}
