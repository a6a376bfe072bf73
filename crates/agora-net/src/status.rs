//! What each node tells the network about itself, and what a node knows of its peers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// A model a worker serves.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServedModel {
    pub name: String,
    /// `sha256:<hex>` of the GGUF.
    pub digest: String,
    pub n_ctx: u32,
    /// The worker's engine failed its self-check (a token's numbers depended on its batch), so
    /// its answers come without proofs anyone can reproduce: gateways prefer other workers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverifiable: bool,
}

/// A node's status, gossiped every few seconds and answered on the status protocol.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeStatus {
    pub version: String,
    /// Whether this node runs generations for others.
    pub worker: bool,
    /// Whether this node serves the HTTP API.
    pub gateway: bool,
    pub models: Vec<ServedModel>,
    pub slots: u32,
    pub free_slots: u32,
    pub queue: u32,
    /// Measured decode speed of recent generations, tokens per second (0 = not measured yet).
    pub tokens_per_second: f64,
    /// Unix time in milliseconds when this status was made.
    pub time_ms: u64,
    /// Conversation keys (16 hex digits each, at most [`MAX_CONVERSATIONS`]) of the chat
    /// prompts whose token states this worker's prefix cache holds: a gateway sends a
    /// conversation's next turn here. A hint, never trusted for anything else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conversations: Vec<String>,
}

/// The most conversation keys a status carries (and a gateway reads).
pub const MAX_CONVERSATIONS: usize = 64;

impl ServedModel {
    /// Whether `model` (a name, a `sha256:` digest or a bare digest) names this model.
    pub fn is(&self, model: &str) -> bool {
        self.name == model
            || self.digest == model
            || self.digest.strip_prefix("sha256:") == Some(model)
    }
}

impl NodeStatus {
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.is(model))
    }

    /// Whether this worker says its prefix cache holds the conversation whose key (16 hex
    /// digits) is `key`; only the first [`MAX_CONVERSATIONS`] keys are read.
    pub fn holds_conversation(&self, key: &str) -> bool {
        self.conversations
            .iter()
            .take(MAX_CONVERSATIONS)
            .any(|k| k == key)
    }

    /// The served model that `model` names, if any.
    pub fn model(&self, model: &str) -> Option<&ServedModel> {
        self.models.iter().find(|m| m.is(model))
    }
}

/// What we know of one peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub status: Option<NodeStatus>,
    /// When the status was received (local clock).
    pub status_at: Option<Instant>,
    pub connected: bool,
    pub addrs: Vec<Multiaddr>,
    pub rtt: Option<Duration>,
    pub agent: Option<String>,
}

impl PeerInfo {
    fn new(peer_id: PeerId) -> Self {
        Self {
            peer_id,
            status: None,
            status_at: None,
            connected: false,
            addrs: Vec::new(),
            rtt: None,
            agent: None,
        }
    }

    /// Connected, with a status younger than `max_age`.
    pub fn is_live(&self, max_age: Duration) -> bool {
        self.connected && self.status_at.is_some_and(|t| t.elapsed() <= max_age)
    }
}

/// Peers of our network, bounded in size.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: HashMap<PeerId, PeerInfo>,
    cap: usize,
}

impl PeerTable {
    pub fn new(cap: usize) -> Self {
        Self {
            peers: HashMap::new(),
            cap,
        }
    }

    fn entry(&mut self, peer: PeerId) -> Option<&mut PeerInfo> {
        if !self.peers.contains_key(&peer) {
            if self.peers.len() >= self.cap {
                // Make room by forgetting a disconnected peer; refuse when all are connected.
                let victim = self
                    .peers
                    .values()
                    .find(|p| !p.connected)
                    .map(|p| p.peer_id)?;
                self.peers.remove(&victim);
            }
            self.peers.insert(peer, PeerInfo::new(peer));
        }
        self.peers.get_mut(&peer)
    }

    pub fn set_connected(&mut self, peer: PeerId, connected: bool) {
        if !connected {
            // A disconnect never creates an entry (a banned peer's last disconnect, say).
            if let Some(p) = self.peers.get_mut(&peer) {
                p.connected = false;
            }
        } else if let Some(p) = self.entry(peer) {
            p.connected = true;
        }
    }

    pub fn set_status(&mut self, peer: PeerId, status: NodeStatus) {
        if let Some(p) = self.entry(peer) {
            p.status = Some(status);
            p.status_at = Some(Instant::now());
        }
    }

    pub fn set_identity(&mut self, peer: PeerId, agent: String, addrs: Vec<Multiaddr>) {
        if let Some(p) = self.entry(peer) {
            p.agent = Some(agent);
            p.addrs = addrs.into_iter().take(16).collect();
        }
    }

    pub fn set_rtt(&mut self, peer: PeerId, rtt: Duration) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.rtt = Some(rtt);
        }
    }

    pub fn remove(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    pub fn get(&self, peer: &PeerId) -> Option<&PeerInfo> {
        self.peers.get(peer)
    }

    pub fn all(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self.peers.values().cloned().collect();
        v.sort_by_key(|p| p.peer_id.to_base58());
        v
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn serves_by_name_or_digest() {
        let s = NodeStatus {
            models: vec![ServedModel {
                name: "m".into(),
                digest: "sha256:abcd".into(),
                n_ctx: 8,
                unverifiable: false,
            }],
            ..Default::default()
        };
        assert!(s.serves("m") && s.serves("sha256:abcd") && s.serves("abcd"));
        assert!(!s.serves("n"));
    }

    #[test]
    fn table_is_bounded_and_keeps_connected_peers() {
        let mut t = PeerTable::new(2);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        t.set_connected(a, true);
        t.set_connected(b, true);
        t.set_connected(c, true); // no room: all connected
        assert!(t.get(&c).is_none());
        t.set_connected(b, false);
        t.set_connected(c, true); // b is forgotten
        assert!(t.get(&b).is_none() && t.get(&c).is_some());
        assert_eq!(t.all().len(), 2);
    }
}
