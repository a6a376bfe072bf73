//! What does a scoring pass cost next to the generation it checks? Generates 128 tokens
//! (hidden states captured, as an attested worker does), then scores prompt + output on the
//! same engine with a sink that does nothing, and prints both times.
//!
//! cargo run --release -p agora-llama --example passcost -- MODEL.gguf [THREADS]
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use agora_engine::{
    Capture, ChatMessage, Engine, Event, GenRequest, PromptSpec, SamplingParams, ScoreRequest,
    ScoreSink,
};
use agora_llama::{LlamaConfig, LlamaEngine};

struct Nothing;
impl ScoreSink for Nothing {
    fn row(&mut self, _pos: usize, _hidden: &[f32], _logits: &[f32]) {}
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut c = LlamaConfig::new(args[1].clone().into(), "m".into(), "0".into());
    c.threads = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(2);
    c.slots = 2;
    c.ctx = 1024;
    let e = LlamaEngine::load(c).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prompt = e
        .tokenize(&PromptSpec::Chat(vec![ChatMessage {
            role: "user".into(),
            content: "Write a long story about the sea.".into(),
        }]))
        .unwrap();
    let (mut tg, mut ts) = (0.0, 0.0);
    for round in 0..6 {
        let req = GenRequest {
            prompt: prompt.clone(),
            params: SamplingParams {
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
                seed: 0,
            },
            max_tokens: 128,
            stop: vec![],
            ignore_eos: true,
            capture: Capture {
                hidden: true,
                logits: false,
            },
            resume: vec![],
            logit_bias: Default::default(),
            conversation: None,
        };
        let t0 = Instant::now();
        let mut g = e.submit(req).unwrap();
        let mut toks = Vec::new();
        rt.block_on(async {
            while let Some(ev) = g.events.recv().await {
                match ev {
                    Event::Token(t) => toks.push(t.id),
                    Event::Done(_) | Event::Error(_) => break,
                    _ => {}
                }
            }
        });
        let gen_s = t0.elapsed().as_secs_f64();
        let mut tokens = prompt.clone();
        tokens.extend_from_slice(&toks[..toks.len() - 1]);
        let t1 = Instant::now();
        let h = e
            .score(
                ScoreRequest {
                    tokens,
                    from: prompt.len() - 1,
                },
                Box::new(Nothing),
            )
            .unwrap();
        rt.block_on(h.done).unwrap().unwrap();
        let score_s = t1.elapsed().as_secs_f64();
        println!(
            "round {round}: prompt {} + output {} tokens: generation {gen_s:.3} s, scoring {score_s:.3} s ({:.3}x)",
            prompt.len(),
            toks.len(),
            score_s / gen_s
        );
        if round > 0 {
            tg += gen_s;
            ts += score_s;
        }
    }
    println!("rounds 1-5: scoring / generation = {:.3}x", ts / tg);
}
