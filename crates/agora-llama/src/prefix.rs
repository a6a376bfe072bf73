//! The prompt-prefix cache: token states kept after a sequence ends, for a later request that
//! starts with the same tokens (a conversation's next turn re-sends the whole history; a system
//! prompt is shared).
//!
//! Reuse must not change a bit of what is computed, and it does not because of a property the
//! engine already rests on: a token's numbers are the same bits however it was computed — in a
//! prompt's prefill chunk, as an output row of a batch, or alone (the Q4_1 tile kernel computes
//! each product in the single product's order; the bf16 flash-attention path is per row).
//! `bitexact` holds the engine to it: rows computed after a prefix prefilled in chunks and after
//! the same prefix computed as output rows are the same bits, and a conversation's answers,
//! hidden states and logits are the same with and without reuse. So a finished sequence keeps
//! every position it computed (prompt and fed answer tokens), and a new one reuses the longest
//! common prefix with it, up to its own last prompt token (which must produce logits), then
//! prefills the rest in the usual aligned chunks.
//!
//! Two tiers. Idle slots hold what their last sequence computed, at no cost beyond the slots'
//! own memory; a new request takes the slot it reuses most, else an empty one, else the least
//! recently used — at once, never waiting for a cached prefix to be given up. When a slot's
//! states are about to be dropped (its new sequence does not continue them), they are copied
//! to host memory first (`prefix_cache_bytes`, least recently used out), and a later prompt
//! that continues them further than any slot does gets them copied back into a slot. Each
//! sequence has its own KV stream whose cells start at 0, so the copied-back cells are where a
//! fresh prefill would have put them: the same bytes in the same places.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::session::{LlamaStateSeqFlags, SeqState};

use agora_engine::PrefixStats;

use crate::{Seq, Shared, Work};

/// States worth copying out: a slot loses at least this many tokens.
const MIN_SPILL: usize = 64;
/// A copy is put back only when it saves at least this many tokens of prefill over the best
/// slot (copying costs about as much as prefilling a few tokens).
const MIN_RESTORE_GAIN: usize = 32;

/// A slot's states in host memory.
struct Spilled {
    tokens: Vec<u32>,
    conversation: Option<u64>,
    state: SeqState,
    used: u64,
}

/// Where a new sequence goes and what it starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    /// Index into the free slot ids.
    pub k: usize,
    /// Positions it reuses.
    pub reuse: usize,
    /// The host-memory copy to put back into the slot first.
    restore: Option<usize>,
}

pub(crate) struct PrefixCache {
    on: bool,
    /// Tokens each slot's cache holds (positions 0..len), by slot id.
    held: Vec<Vec<u32>>,
    /// The conversation key of the chat prompt each slot holds whole, by slot id.
    conversations: Vec<Option<u64>>,
    /// When each slot was last released (for least-recently-used choice).
    used: Vec<u64>,
    clock: u64,
    /// Copies of states slots gave up, and their budget in bytes.
    spilled: Vec<Spilled>,
    budget: u64,
    stats: PrefixStats,
}

/// Positions `held` and `tokens` share, up to `limit`.
fn common(held: &[u32], tokens: &[u32], limit: usize) -> usize {
    held.iter()
        .zip(tokens)
        .take(limit)
        .take_while(|(a, b)| a == b)
        .count()
}

impl PrefixCache {
    pub(crate) fn new(slots: usize, on: bool, budget: u64) -> PrefixCache {
        PrefixCache {
            on,
            held: vec![Vec::new(); slots],
            conversations: vec![None; slots],
            used: vec![0; slots],
            clock: 0,
            spilled: Vec::new(),
            budget: if on { budget } else { 0 },
            stats: PrefixStats::default(),
        }
    }

    /// Which of the `free` slot ids a job with these tokens goes to, and how many positions of
    /// its cache (or of a host-memory copy put back into it) it reuses.
    pub(crate) fn choose(&self, free: &[i32], tokens: &[u32], prefill_end: usize) -> Choice {
        let limit = prefill_end.min(tokens.len());
        let age = |id: i32| {
            let held = self.held.get(id as usize).map_or(0, Vec::len);
            if held == 0 {
                0
            } else {
                1 + self.used.get(id as usize).copied().unwrap_or(0)
            }
        };
        let mut best = Choice {
            k: 0,
            reuse: 0,
            restore: None,
        };
        let mut best_age = u64::MAX;
        let mut best_worth = 0;
        for (k, &id) in free.iter().enumerate() {
            let held = self.held.get(id as usize).map_or(&[][..], Vec::as_slice);
            let reuse = common(held, tokens, limit);
            // Most reuse; then an empty slot; then the least recently used. A few shared
            // tokens (a chat template's header) are not worth another prompt's states when an
            // empty slot loses nothing.
            let worth = if reuse < held.len() && reuse < MIN_RESTORE_GAIN {
                0
            } else {
                reuse
            };
            let age = age(id);
            if k == 0 || worth > best_worth || (worth == best_worth && age < best_age) {
                (best.k, best.reuse, best_age, best_worth) = (k, reuse, age, worth);
            }
        }
        let copy = self
            .spilled
            .iter()
            .enumerate()
            .map(|(i, s)| (i, common(&s.tokens, tokens, limit)))
            .max_by_key(|&(_, n)| n)
            .filter(|&(_, n)| n >= best.reuse + MIN_RESTORE_GAIN);
        if let Some((i, n)) = copy {
            // Into an empty slot, else the least recently used one (its states are copied out).
            let k = (0..free.len()).min_by_key(|&k| age(free[k])).unwrap_or(0);
            best = Choice {
                k,
                reuse: n,
                restore: Some(i),
            };
        }
        best
    }

    /// Slot `id` is taken as `choice` says: what the new sequence does not continue leaves the
    /// KV cache (copied to host memory first when worth it), or a host-memory copy replaces it.
    /// Returns the positions the sequence starts with.
    pub(crate) fn take(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        id: i32,
        choice: Choice,
        prefill_end: usize,
    ) -> usize {
        let Some(held) = self.held.get_mut(id as usize) else {
            return 0;
        };
        let kept = if choice.restore.is_some() {
            0
        } else {
            choice.reuse
        };
        let held = std::mem::take(held);
        // The copy to put back leaves host memory before anything is copied out: copying the
        // slot's own states out may evict or reorder the copies (indices change).
        let copy = choice
            .restore
            .filter(|&i| i < self.spilled.len())
            .map(|i| self.spilled.swap_remove(i));
        let conversation = self
            .conversations
            .get_mut(id as usize)
            .and_then(Option::take);
        self.stats.cached_tokens -= held.len() as u64;
        if held.len() >= kept + MIN_SPILL {
            self.spill(ctx, id, held, conversation);
        }
        let reuse = match copy {
            Some(copy) => self.restore(ctx, id, copy, choice.reuse),
            None => {
                let _ = ctx.clear_kv_cache_seq(Some(id as u32), Some(kept as u32), None);
                kept
            }
        };
        self.stats.lookups += 1;
        self.stats.prompt_tokens += prefill_end as u64;
        if reuse > 0 {
            self.stats.hits += 1;
            self.stats.reused_tokens += reuse as u64;
        }
        reuse
    }

    /// Copies slot `id`'s states (its `tokens`) to host memory, making room by dropping the
    /// least recently used copies; a copy that another one continues is dropped too.
    fn spill(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        id: i32,
        tokens: Vec<u32>,
        conversation: Option<u64>,
    ) {
        if self.budget == 0 {
            return;
        }
        // The stream holds exactly `tokens` (what retire kept); nothing else is copied.
        let _ = ctx.clear_kv_cache_seq(Some(id as u32), Some(tokens.len() as u32), None);
        if self
            .spilled
            .iter()
            .any(|s| s.tokens.len() >= tokens.len() && s.tokens.starts_with(&tokens))
        {
            return;
        }
        let Ok(state) = ctx.state_seq_get(id, LlamaStateSeqFlags::empty()) else {
            return;
        };
        let size = state.byte_len() as u64;
        if size > self.budget {
            return;
        }
        self.spilled.retain(|s| !tokens.starts_with(&s.tokens));
        while self.spilled_bytes() + size > self.budget {
            let Some(oldest) = (0..self.spilled.len()).min_by_key(|&i| self.spilled[i].used) else {
                break;
            };
            self.spilled.swap_remove(oldest);
        }
        self.clock += 1;
        self.spilled.push(Spilled {
            tokens,
            conversation,
            state,
            used: self.clock,
        });
        self.count_spilled();
    }

    /// Puts a host-memory copy (taken out of `spilled`: the slot holds it now) into slot `id`,
    /// keeping its first `reuse` positions. Returns the positions kept: 0 if llama.cpp refused
    /// the copy (the sequence is then prefilled whole).
    fn restore(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        id: i32,
        copy: Spilled,
        reuse: usize,
    ) -> usize {
        let _ = ctx.clear_kv_cache_seq(Some(id as u32), None, None);
        self.count_spilled();
        if ctx.state_seq_set(&copy.state, id).is_err() {
            let _ = ctx.clear_kv_cache_seq(Some(id as u32), None, None);
            return 0;
        }
        let _ = ctx.clear_kv_cache_seq(Some(id as u32), Some(reuse as u32), None);
        self.stats.restored += 1;
        reuse
    }

    fn spilled_bytes(&self) -> u64 {
        self.spilled.iter().map(|s| s.state.byte_len() as u64).sum()
    }

    fn count_spilled(&mut self) {
        self.stats.host_bytes = self.spilled_bytes();
        self.stats.host_tokens = self.spilled.iter().map(|s| s.tokens.len() as u64).sum();
    }

    /// A sequence leaves its slot: the states of the tokens it computed stay (when the cache is
    /// on and the sequence did not fail); a failed one's slot is emptied.
    pub(crate) fn retire(&mut self, ctx: &mut LlamaContext<'_>, s: &Seq) {
        let keep = if self.on && s.cacheable { s.kv } else { 0 };
        let _ = ctx.clear_kv_cache_seq(Some(s.id as u32), Some(keep as u32), None);
        if let Some(held) = self.held.get_mut(s.id as usize) {
            self.stats.cached_tokens -= held.len() as u64;
            held.clear();
            held.extend_from_slice(&s.feed[..keep.min(s.feed.len())]);
            if let Work::Gen(g) = &s.work
                && keep > s.feed.len()
            {
                // Fed answer tokens: what was sampled after the prompt and the resumed tokens.
                let fed = g.generated.get(g.resumed..).unwrap_or_default();
                held.extend(fed.iter().take(keep - s.feed.len()));
            }
            // Never more positions than tokens known (the cleared rest is not held).
            if held.len() < keep {
                let _ = ctx.clear_kv_cache_seq(Some(s.id as u32), Some(held.len() as u32), None);
            }
            self.stats.cached_tokens += held.len() as u64;
            // The slot holds the whole chat prompt: its next turn may come here.
            if let (Work::Gen(g), Some(c)) = (&s.work, self.conversations.get_mut(s.id as usize)) {
                *c = g
                    .req
                    .conversation
                    .filter(|_| held.len() >= g.req.prompt.len());
            }
            self.clock += 1;
            self.used[s.id as usize] = self.clock;
        }
    }

    pub(crate) fn publish(&self, shared: &Shared) {
        *shared.prefix.lock().unwrap_or_else(|e| e.into_inner()) = self.stats;
        let mut held = shared
            .conversations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        held.clear();
        held.extend(self.conversations.iter().flatten());
        held.extend(self.spilled.iter().filter_map(|s| s.conversation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_with(held: Vec<Vec<u32>>) -> PrefixCache {
        let mut c = PrefixCache::new(held.len(), true, 0);
        for (i, h) in held.into_iter().enumerate() {
            c.used[i] = i as u64 + 1;
            c.held[i] = h;
        }
        c
    }

    #[test]
    fn a_slot_goes_to_what_continues_it_and_a_template_header_does_not_evict() {
        let a: Vec<u32> = (1..=100).collect();
        let b: Vec<u32> = (1000..1080).collect();
        let c = cache_with(vec![a.clone(), Vec::new(), b.clone()]);
        let free = [0, 1, 2];
        let pick = |tokens: &[u32]| {
            let ch = c.choose(&free, tokens, tokens.len());
            (free[ch.k], ch.reuse, ch.restore)
        };
        // A follow-up of what slot 0 holds reuses all of it.
        let mut next = a.clone();
        next.extend([7, 7, 7]);
        assert_eq!(pick(&next), (0, 100, None));
        // Three shared tokens (a template header) go to the empty slot instead.
        let header: Vec<u32> = [1, 2, 3, 555, 556].into();
        assert_eq!(pick(&header), (1, 0, None));
        // A long shared prefix (a system prompt) is worth the slot.
        let mut shared: Vec<u32> = (1..=40).collect();
        shared.push(9999);
        assert_eq!(pick(&shared), (0, 40, None));
        // With no empty slot, the least recently used one goes.
        let full = cache_with(vec![a.clone(), b.clone()]);
        let ch = full.choose(&[1, 0], &[42, 43], 2);
        assert_eq!(([1, 0][ch.k], ch.reuse), (0, 0));
        // The last prompt token is never reused (it must produce logits).
        assert_eq!(c.choose(&free, &next, 50).reuse, 50);
    }
}
