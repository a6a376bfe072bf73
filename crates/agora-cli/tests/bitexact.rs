//! Activation proofs rest on one property of the engine: the hidden states and logits of a
//! token are the same bits however the token was computed — decoded alone, decoded in a batch
//! with other slots, or recomputed by one scoring prefill with another thread count. Agora's
//! patched llama.cpp computes Q4_1 products in tiles for batches (vendor/llama-cpp-sys-2) and
//! keeps every other type on its per-row products; these tests hold it to that property on
//! each catalog model: SmolLM2-135M (Q4_1, llama architecture, chat) and Gemma 3 270M (Q4_K,
//! Q6_K and Q8_0, gemma3 architecture with sliding-window layers, a base model prompted with
//! plain text).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use agora_engine::{
    Capture, ChatMessage, Engine, Event, GenRequest, PromptSpec, SamplingParams, ScoreRequest,
    ScoreSink,
};
use agora_llama::{LlamaConfig, LlamaEngine};

type Rows = Arc<Mutex<Vec<(Vec<f32>, Vec<f32>)>>>;
struct Collect(Rows);
impl ScoreSink for Collect {
    fn row(&mut self, _pos: usize, hidden: &[f32], logits: &[f32]) {
        self.0
            .lock()
            .unwrap()
            .push((hidden.to_vec(), logits.to_vec()));
    }
}

/// A catalog model, and how to prompt it.
#[derive(Clone, Copy)]
struct Model {
    name: &'static str,
    /// Instruction-tuned with a chat template; else prompted with plain text.
    chat: bool,
    /// Bytes of one token's keys and values in every layer (bf16): layers × key-value heads ×
    /// (key + value width) × 2.
    kv_per_token: u64,
}

const SMOLLM2: Model = Model {
    name: "smollm2-135m",
    chat: true,
    kv_per_token: 30 * 3 * (64 + 64) * 2,
};
const GEMMA3: Model = Model {
    name: "gemma3-270m",
    chat: false,
    // heads of 256, not n_embd / n_head = 160
    kv_per_token: 18 * (256 + 256) * 2,
};

fn engine(m: Model, threads: u32) -> LlamaEngine {
    let mut c = LlamaConfig::new(common::catalog_model_path(m.name), "m".into(), "0".into());
    c.threads = threads;
    c.slots = 8;
    c.ctx = 2048;
    LlamaEngine::load(c).unwrap()
}

/// The prompt of a conversation: the chat template's, or for a base model the turns as text.
fn prompt(e: &LlamaEngine, m: Model, messages: &[(&str, &str)]) -> Vec<u32> {
    let messages: Vec<ChatMessage> = messages
        .iter()
        .map(|(role, content)| ChatMessage {
            role: (*role).into(),
            content: (*content).into(),
        })
        .collect();
    let spec = if m.chat {
        PromptSpec::Chat(messages)
    } else {
        PromptSpec::Text(agora_engine::template::plain_text(&messages))
    };
    e.tokenize(&spec).unwrap()
}

fn request(e: &LlamaEngine, m: Model, text: &str, seed: u64) -> GenRequest {
    let prompt = prompt(e, m, &[("user", text)]);
    GenRequest {
        prompt,
        params: SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 0,
            seed,
        },
        max_tokens: 40,
        stop: vec![],
        ignore_eos: true,
        capture: Capture {
            hidden: true,
            logits: true,
        },
        resume: vec![],
        logit_bias: Default::default(),
        conversation: None,
    }
}

/// Token ids, hidden states and logits of each generated token.
type Out = (Vec<u32>, Vec<Vec<f32>>, Vec<Vec<f32>>);

async fn collect(mut g: agora_engine::Generation) -> Out {
    let (mut ids, mut hs, mut ls) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(ev) = g.events.recv().await {
        match ev {
            Event::Token(t) => {
                ids.push(t.id);
                hs.push(t.hidden.unwrap());
                ls.push(t.logits.unwrap());
            }
            Event::Done(_) => break,
            Event::Error(e) => panic!("generation failed: {e}"),
            _ => {}
        }
    }
    (ids, hs, ls)
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The tests, once per catalog model.
macro_rules! for_each_model {
    ($($module:ident = $model:expr;)*) => {$(
        mod $module {
            #[test]
            fn hidden_states_and_logits_are_the_same_bits_alone_batched_and_rescored() {
                super::alone_batched_rescored($model)
            }
            #[test]
            fn a_prefix_prefilled_in_chunks_and_one_computed_row_by_row_give_the_same_rows() {
                super::chunks_and_rows($model)
            }
            #[test]
            fn a_reused_prompt_prefix_computes_the_same_bits() {
                super::reused_prefix($model)
            }
            #[test]
            fn the_nodes_self_check_passes() {
                super::self_check_passes($model)
            }
            #[test]
            fn the_stated_kv_cache_size_is_the_models_own() {
                super::kv_cache_size($model)
            }
        }
    )*};
}

for_each_model! {
    smollm2 = super::SMOLLM2;
    gemma3 = super::GEMMA3;
}

/// What `agora node` runs before serving (alone, among eight, rescored; greedy) finds the
/// same bits on every catalog model, so they are served with proofs.
fn self_check_passes(m: Model) {
    let e = engine(m, 2);
    assert_eq!(agora_engine::selfcheck::run(&e), Ok(()));
}

/// What `/health` states as the KV cache's size (2048 tokens in each of 8 slots).
fn kv_cache_size(m: Model) {
    let e = engine(m, 1);
    assert_eq!(e.info().kv_bytes, m.kv_per_token * 2048 * 8);
}

fn alone_batched_rescored(m: Model) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prompts = [
        "Write a poem about rain.",
        "Explain gravity to a child.",
        "List five animals.",
        "What is a CPU?",
        "Tell me about the moon.",
        "How do birds fly?",
        "Name three colours.",
        "Why is the sea salty?",
    ];
    let two = engine(m, 2);

    // Alone: one slot busy, every matrix product has one column.
    let alone = rt.block_on(collect(
        two.submit(request(&two, m, prompts[0], 11)).unwrap(),
    ));

    // Batched: eight slots decode together (tiles of columns), the first request among them.
    let batched: Vec<Out> = rt.block_on(async {
        let gens: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| two.submit(request(&two, m, p, 11 + i as u64)).unwrap())
            .collect();
        let mut outs = Vec::new();
        for g in gens {
            outs.push(collect(g).await);
        }
        outs
    });
    assert_eq!(alone.0, batched[0].0, "batched decoding chose other tokens");
    for i in 0..alone.1.len() {
        assert!(
            same_bits(&alone.1[i], &batched[0].1[i]),
            "hidden state {i} differs in a batch"
        );
        assert!(
            same_bits(&alone.2[i], &batched[0].2[i]),
            "logits {i} differ in a batch"
        );
    }

    // Rescored: one prefill over prompt + output, on an engine with one thread.
    let one = engine(m, 1);
    let req = request(&one, m, prompts[0], 11);
    let from = req.prompt.len() - 1;
    let mut tokens = req.prompt.clone();
    tokens.extend_from_slice(&alone.0[..alone.0.len() - 1]);
    let rows: Rows = Arc::default();
    let h = one
        .score(
            ScoreRequest { tokens, from },
            Box::new(Collect(rows.clone())),
        )
        .unwrap();
    rt.block_on(h.done).unwrap().unwrap();
    let rows = rows.lock().unwrap();
    assert_eq!(rows.len(), alone.1.len());
    for (i, (h, l)) in rows.iter().enumerate() {
        assert!(
            same_bits(&alone.1[i], h),
            "hidden state {i} differs when rescored"
        );
        assert!(same_bits(&alone.2[i], l), "logits {i} differ when rescored");
    }
}

fn engine_with_cache(m: Model, prefix_cache: bool) -> LlamaEngine {
    let mut c = LlamaConfig::new(common::catalog_model_path(m.name), "m".into(), "0".into());
    c.threads = 2;
    c.slots = 1;
    c.ctx = 3072;
    c.prefix_cache = prefix_cache;
    // Room for the first conversation's copy (about 1,250 tokens: 29 MB for SmolLM2, 23 MB
    // for Gemma) but, for SmolLM2, not for it and the next one's together: copying the next
    // one out evicts whatever the copy to put back no longer protects.
    c.prefix_cache_bytes = 32 << 20;
    LlamaEngine::load(c).unwrap()
}

fn turn(e: &LlamaEngine, m: Model, messages: &[(&str, &str)], seed: u64) -> GenRequest {
    GenRequest {
        prompt: prompt(e, m, messages),
        max_tokens: 24,
        ..request(e, m, "", seed)
    }
}

/// A token's numbers do not depend on how it was batched: the rows after a prefix prefilled in
/// aligned chunks (what a prompt gets) and after the same prefix computed as output rows (what
/// a generated or scored token gets) are the same bits. The prefix cache reuses answer tokens'
/// states in the next turn's prompt because of it.
fn chunks_and_rows(m: Model) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = engine_with_cache(m, false);
    let system = "You are a patient teacher who explains the sea. ".repeat(30);
    let tokens = turn(
        &e,
        m,
        &[("system", system.as_str()), ("user", "Tell me more.")],
        1,
    )
    .prompt;
    let n = tokens.len();
    assert!(n > 300, "{n}");
    let score = |from: usize| {
        let rows: Rows = Arc::default();
        let h = e
            .score(
                ScoreRequest {
                    tokens: tokens.clone(),
                    from,
                },
                Box::new(Collect(rows.clone())),
            )
            .unwrap();
        rt.block_on(h.done).unwrap().unwrap();
        rows.lock().unwrap().clone()
    };
    let row_by_row = score(0);
    let after_chunks = score(n - 10);
    assert_eq!((row_by_row.len(), after_chunks.len()), (n, 10));
    for i in 0..10 {
        let (a, b) = (&row_by_row[n - 10 + i], &after_chunks[i]);
        assert!(
            same_bits(&a.0, &b.0),
            "hidden state of row {} differs",
            n - 10 + i
        );
        assert!(same_bits(&a.1, &b.1), "logits of row {} differ", n - 10 + i);
    }
}

/// A conversation's next turn reuses the states the cache kept — the first turn's prompt and
/// answer, copied out of the engine's one slot to host memory when another conversation took
/// the slot, and copied back — and computes the same bits as without the cache: token ids,
/// hidden states and logits of every generated token, and the rows a scoring pass over it
/// reads back.
fn reused_prefix(m: Model) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let system = "You are a patient teacher. ".repeat(200);
    let first = [("system", system.as_str()), ("user", "What is the tide?")];
    let cached = engine_with_cache(m, true);
    let first_req = turn(&cached, m, &first, 3);
    let first_len = first_req.prompt.len();
    let answer = rt.block_on(collect(cached.submit(first_req).unwrap())).0;
    let answer: String = answer
        .iter()
        .filter(|&&t| !cached.is_eog(t))
        .map(|&t| String::from_utf8_lossy(&cached.token_piece(t).unwrap_or_default()).into_owned())
        .collect();
    // Another conversation takes the only slot: the first one's states go to host memory.
    let sailor = "You are a sailor who loves knots. ".repeat(60);
    let other = [("system", sailor.as_str()), ("user", "Tie one.")];
    rt.block_on(collect(cached.submit(turn(&cached, m, &other, 5)).unwrap()));
    let before = cached.load().prefix;
    assert!(before.host_tokens as usize > first_len, "{before:?}");
    let second = [
        ("system", system.as_str()),
        ("user", "What is the tide?"),
        ("assistant", answer.as_str()),
        ("user", "Why does the moon cause it?"),
    ];
    let with = rt.block_on(collect(
        cached.submit(turn(&cached, m, &second, 4)).unwrap(),
    ));
    let stats = cached.load().prefix;
    assert_eq!(
        (stats.hits - before.hits, stats.restored),
        (1, 1),
        "{stats:?}"
    );
    // The first prompt, and the answer's tokens as far as the template re-tokenizes them alike.
    let reused = (stats.reused_tokens - before.reused_tokens) as usize;
    assert!(reused > first_len, "{stats:?}, first prompt {first_len}");
    // The sailor's states went out to host memory in turn; the copied-back ones left it.
    assert!(stats.host_tokens > 0 && stats.host_bytes > 0, "{stats:?}");

    let fresh = engine_with_cache(m, false);
    let without = rt.block_on(collect(fresh.submit(turn(&fresh, m, &second, 4)).unwrap()));
    assert_eq!(fresh.load().prefix.hits, 0);
    assert_eq!(with.0, without.0, "the reused prefix changed the tokens");
    for i in 0..with.1.len() {
        assert!(
            same_bits(&with.1[i], &without.1[i]),
            "hidden state {i} differs with reuse"
        );
        assert!(
            same_bits(&with.2[i], &without.2[i]),
            "logits {i} differ with reuse"
        );
    }

    // A scoring pass (what a verifier runs) over the same conversation reuses what the
    // generation left, and reads back the same rows.
    let req = turn(&cached, m, &second, 4);
    let from = req.prompt.len() - 1;
    let mut tokens = req.prompt.clone();
    tokens.extend_from_slice(&with.0[..with.0.len() - 1]);
    let rows: Rows = Arc::default();
    let h = cached
        .score(
            ScoreRequest { tokens, from },
            Box::new(Collect(rows.clone())),
        )
        .unwrap();
    rt.block_on(h.done).unwrap().unwrap();
    assert_eq!(cached.load().prefix.hits, stats.hits + 1);
    let rows = rows.lock().unwrap();
    assert_eq!(rows.len(), with.1.len());
    for (i, (h, l)) in rows.iter().enumerate() {
        assert!(
            same_bits(&with.1[i], h),
            "hidden state {i} differs when rescored with reuse"
        );
        assert!(
            same_bits(&with.2[i], l),
            "logits {i} differ when rescored with reuse"
        );
    }
}
