//! Conversation keys. A chat client re-sends the whole history each turn, so a follow-up turn's
//! messages are the previous turn's messages, the answer, and a new user message. An engine that
//! keeps a finished prompt's token states (a prefix cache) says which message lists it holds by
//! their keys; a gateway finds the worker holding a turn's history by the key of its messages
//! without the last two. The key is a digest, not the text: it tells nobody what was said.

use sha2::{Digest, Sha256};

use crate::{ChatMessage, PromptSpec};

/// The key of a message list: the first 8 bytes of the SHA-256 of its roles and contents, each
/// length-prefixed (a boundary cannot be shifted to forge a match).
pub fn key(messages: &[ChatMessage]) -> u64 {
    let mut h = Sha256::new();
    for m in messages {
        for part in [m.role.as_bytes(), m.content.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first)
}

/// The key of a chat prompt's messages (what an engine holds once it has run the prompt).
pub fn of_prompt(prompt: &PromptSpec) -> Option<u64> {
    match prompt {
        PromptSpec::Chat(m) if !m.is_empty() => Some(key(m)),
        _ => None,
    }
}

/// The key of the turn a chat prompt continues: its messages without the last two (the
/// previous answer and the new question). None for a first turn or a raw prompt.
pub fn continued(prompt: &PromptSpec) -> Option<u64> {
    let PromptSpec::Chat(m) = prompt else {
        return None;
    };
    let before = m.len().checked_sub(2).filter(|&n| n > 0)?;
    Some(key(&m[..before]))
}

/// A key as statuses carry it: 16 lowercase hex digits.
pub fn to_hex(key: u64) -> String {
    format!("{key:016x}")
}

/// A key from a status (None unless exactly 16 hex digits).
pub fn from_hex(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
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
    fn a_follow_up_continues_the_previous_turn() {
        let turn1 = vec![msg("system", "s"), msg("user", "q1")];
        let mut turn2 = turn1.clone();
        turn2.extend([msg("assistant", "a1"), msg("user", "q2")]);
        let held = of_prompt(&PromptSpec::Chat(turn1.clone())).unwrap();
        assert_eq!(continued(&PromptSpec::Chat(turn2.clone())), Some(held));
        // A first turn, a raw prompt: nothing continued.
        assert_eq!(continued(&PromptSpec::Chat(turn1)), None);
        assert_eq!(continued(&PromptSpec::Text("x".into())), None);
        assert_eq!(of_prompt(&PromptSpec::Text("x".into())), None);
        // A role/content boundary cannot be shifted to forge a match.
        assert_ne!(key(&[msg("system", "su"), msg("ser", "q1")]), held);
        assert_ne!(key(&[msg("systems", ""), msg("user", "q1")]), held);
    }

    #[test]
    fn keys_round_trip_through_hex_and_junk_is_refused() {
        for k in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(from_hex(&to_hex(k)), Some(k));
        }
        for junk in [
            "",
            "0",
            "0123456789abcdeg",
            "0123456789abcdef0",
            "+123456789abcdef",
        ] {
            assert_eq!(from_hex(junk), None, "{junk}");
        }
    }
}
