//! Peer ids parsed once: a re-tally checks a million signatures by the same hundred thousand
//! members, and parsing a peer id decompresses its curve point (a fifth of a signature check).

use std::collections::HashMap;
use std::sync::RwLock;

use agora_core::identity::PeerId;

/// Most keys kept (about 300 bytes each).
pub const MAX_KEYS: usize = 1 << 18;

/// Peer ids by their text, shared by the checking threads; bounded.
#[derive(Default)]
pub struct KeyCache(RwLock<HashMap<Box<str>, PeerId>>);

impl KeyCache {
    /// A cache holding `keys` already.
    pub fn with(keys: impl IntoIterator<Item = PeerId>) -> KeyCache {
        let map = keys
            .into_iter()
            .take(MAX_KEYS)
            .map(|p| (p.to_string().into_boxed_str(), p))
            .collect();
        KeyCache(RwLock::new(map))
    }

    /// The peer id `s` names, when it is known or parses (and is then kept, up to the bound).
    pub fn resolve(&self, s: &str) -> Option<PeerId> {
        if let Some(p) = self.0.read().unwrap_or_else(|e| e.into_inner()).get(s) {
            return Some(*p);
        }
        let p: PeerId = s.parse().ok()?;
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map.len() < MAX_KEYS {
            map.insert(s.into(), p);
        }
        Some(p)
    }
}
