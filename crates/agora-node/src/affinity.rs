//! Conversation-aware routing, from the gateway's own memory: a chat client re-sends the whole
//! history each turn, and the worker that answered the previous turn still holds that history's
//! token states in its prefix cache. The gateway remembers which worker answered which message
//! list (by its [`conversation::key`]) and offers the next turn — whose messages are that list
//! plus the answer and a new user message — to the same worker first, when it has room.
//! Workers also list the conversations they hold in their statuses (read by the gateway
//! directly); this memory covers the seconds before a worker's next status. Bounded: the oldest
//! entries go first.
//!
//! [`conversation::key`]: agora_engine::conversation::key

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Conversations remembered.
pub const MAX_CONVERSATIONS: usize = 4096;

/// Workers by conversation key, and the keys in the order they came (oldest first).
type Remembered<T> = (HashMap<u64, T>, VecDeque<u64>);

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
    /// The worker that answered the message list with this key, if remembered.
    pub fn previous(&self, key: u64) -> Option<T> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0.get(&key).copied()
    }

    /// Remembers that `worker` answers the message list with this key.
    pub fn record(&self, key: u64, worker: T) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        if map.insert(key, worker).is_none() {
            order.push_back(key);
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
    use agora_engine::conversation::{continued, of_prompt};
    use agora_engine::{ChatMessage, PromptSpec};

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
        a.record(of_prompt(&PromptSpec::Chat(turn1.clone())).unwrap(), 7);
        let mut turn2 = turn1.clone();
        turn2.extend([msg("assistant", "a1"), msg("user", "q2")]);
        let next = continued(&PromptSpec::Chat(turn2)).unwrap();
        assert_eq!(a.previous(next), Some(7));
        // Another conversation: nothing.
        let other = vec![
            msg("system", "t"),
            msg("user", "q1"),
            msg("assistant", "a1"),
            msg("user", "q2"),
        ];
        assert_eq!(
            a.previous(continued(&PromptSpec::Chat(other)).unwrap()),
            None
        );
    }

    #[test]
    fn it_is_bounded() {
        let a: Affinity<usize> = Affinity::default();
        for i in 0..MAX_CONVERSATIONS + 10 {
            a.record(i as u64, i);
        }
        assert_eq!(a.previous(0), None);
        assert_eq!(
            a.previous(MAX_CONVERSATIONS as u64 + 9),
            Some(MAX_CONVERSATIONS + 9)
        );
        let g = a.inner.lock().unwrap();
        assert_eq!(
            (g.0.len(), g.1.len()),
            (MAX_CONVERSATIONS, MAX_CONVERSATIONS)
        );
    }
}
