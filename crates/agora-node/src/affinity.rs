//! Conversation-aware routing: a chat client re-sends the whole history each turn, and the worker
//! that answered the previous turn still holds that history's token states in its prefix cache.
//! The gateway remembers which worker answered which message list (by digest) and offers the
//! next turn — whose messages are that list plus the answer and a new user message — to the same
//! worker first, when it has room. Bounded: the oldest entries go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use agora_engine::{ChatMessage, PromptSpec};
use sha2::{Digest, Sha256};

/// Conversations remembered.
pub const MAX_CONVERSATIONS: usize = 4096;

/// The digest of a message list (roles and contents, in order).
fn key(messages: &[ChatMessage]) -> [u8; 32] {
    let mut h = Sha256::new();
    for m in messages {
        for part in [m.role.as_bytes(), m.content.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    h.finalize().into()
}

/// Workers by message-list digest, and the digests in the order they came (oldest first).
type Remembered<T> = (HashMap<[u8; 32], T>, VecDeque<[u8; 32]>);

/// Which worker (of type `T`) answered which message list, most recent first to survive.
pub struct Affinity<T> {
    inner: Mutex<Remembered<T>>,
}

impl<T: Copy> Default for Affinity<T> {
    fn default() -> Self {
        Affinity {
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }
}

impl<T: Copy> Affinity<T> {
    /// The worker that answered the turn before this prompt's last user message, if known: the
    /// prompt's messages without the last two (the previous answer and the new question).
    pub fn previous(&self, prompt: &PromptSpec) -> Option<T> {
        let PromptSpec::Chat(m) = prompt else {
            return None;
        };
        let before = m.len().checked_sub(2).filter(|&n| n > 0)?;
        let k = key(&m[..before]);
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0.get(&k).copied()
    }

    /// Remembers that `worker` answers this prompt.
    pub fn record(&self, prompt: &PromptSpec, worker: T) {
        let PromptSpec::Chat(m) = prompt else {
            return;
        };
        let k = key(m);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        if map.insert(k, worker).is_none() {
            order.push_back(k);
            while order.len() > MAX_CONVERSATIONS {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn the_next_turn_finds_the_worker_of_the_last() {
        let a: Affinity<u32> = Affinity::default();
        let turn1 = vec![msg("system", "s"), msg("user", "q1")];
        a.record(&PromptSpec::Chat(turn1.clone()), 7);
        let mut turn2 = turn1.clone();
        turn2.extend([msg("assistant", "a1"), msg("user", "q2")]);
        assert_eq!(a.previous(&PromptSpec::Chat(turn2.clone())), Some(7));
        // Another conversation, a raw prompt, a first turn: nothing.
        let other = vec![
            msg("system", "t"),
            msg("user", "q1"),
            msg("assistant", "a1"),
            msg("user", "q2"),
        ];
        assert_eq!(a.previous(&PromptSpec::Chat(other)), None);
        assert_eq!(a.previous(&PromptSpec::Text("x".into())), None);
        assert_eq!(a.previous(&PromptSpec::Chat(turn1)), None);
        // A role/content boundary cannot be shifted to forge a match.
        let shifted = vec![
            msg("system", "s"),
            msg("user", "q"),
            msg("assistant", "1a1"),
            msg("user", "q2"),
        ];
        assert_eq!(a.previous(&PromptSpec::Chat(shifted)), None);
    }

    #[test]
    fn it_is_bounded() {
        let a: Affinity<usize> = Affinity::default();
        for i in 0..MAX_CONVERSATIONS + 10 {
            a.record(&PromptSpec::Chat(vec![msg("user", &i.to_string())]), i);
        }
        let g = a.inner.lock().unwrap();
        assert_eq!(
            (g.0.len(), g.1.len()),
            (MAX_CONVERSATIONS, MAX_CONVERSATIONS)
        );
    }
}
