//! How far apart are the numbers of incremental decoding and of one scoring prefill over the
//! same tokens? Prints per-prompt maxima; used to calibrate the verifier's tolerances.
//!
//! cargo run --release -p agora-llama --example drift -- MODEL.gguf [THREADS_GEN] [THREADS_SCORE] [TOKENS]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use agora_engine::{
    Capture, ChatMessage, Engine, Event, GenRequest, PromptSpec, SamplingParams, ScoreRequest,
    ScoreSink,
};
use agora_llama::{LlamaConfig, LlamaEngine};

/// (position, hidden state, logits) of each scored row.
type Row = (usize, Vec<f32>, Vec<f32>);
struct Rows(Arc<Mutex<Vec<Row>>>);
impl ScoreSink for Rows {
    fn row(&mut self, pos: usize, hidden: &[f32], logits: &[f32]) {
        self.0
            .lock()
            .unwrap()
            .push((pos, hidden.to_vec(), logits.to_vec()));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args[1].clone();
    let tg: u32 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(2);
    let ts: u32 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(tg);
    let n_out: u32 = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(96);
    let mk = |threads| {
        let mut c = LlamaConfig::new(path.clone().into(), "m".into(), "0".into());
        c.threads = threads;
        c.slots = 4;
        c.ctx = 1024;
        LlamaEngine::load(c).unwrap()
    };
    let generator = mk(tg);
    let score = if ts == tg { None } else { Some(mk(ts)) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prompts = [
        "Write a poem about rain.",
        "Explain gravity to a child.",
        "List five animals.",
        "What is a CPU?",
    ];
    for (pi, p) in prompts.iter().enumerate() {
        let prompt = generator
            .tokenize(&PromptSpec::Chat(vec![ChatMessage {
                role: "user".into(),
                content: p.to_string(),
            }]))
            .unwrap();
        let req = GenRequest {
            prompt: prompt.clone(),
            params: SamplingParams {
                temperature: 0.8,
                top_p: 0.95,
                top_k: 0,
                seed: 7 + pi as u64,
            },
            max_tokens: n_out,
            stop: vec![],
            ignore_eos: true,
            capture: Capture {
                hidden: true,
                logits: true,
            },
            resume: vec![],
            logit_bias: Default::default(),
            conversation: None,
        };
        let mut g = generator.submit(req).unwrap();
        let mut toks = Vec::new();
        let mut hs = Vec::new();
        let mut ls = Vec::new();
        rt.block_on(async {
            while let Some(ev) = g.events.recv().await {
                match ev {
                    Event::Token(t) => {
                        toks.push(t.id);
                        hs.push(t.hidden.unwrap());
                        ls.push(t.logits.unwrap());
                    }
                    Event::Done(_) | Event::Error(_) => break,
                    _ => {}
                }
            }
        });
        let mut tokens = prompt.clone();
        tokens.extend_from_slice(&toks[..toks.len() - 1]);
        let rows = Arc::new(Mutex::new(Vec::new()));
        let e: &LlamaEngine = score.as_ref().unwrap_or(&generator);
        let h = e
            .score(
                ScoreRequest {
                    tokens,
                    from: prompt.len() - 1,
                },
                Box::new(Rows(rows.clone())),
            )
            .unwrap();
        rt.block_on(h.done).unwrap().unwrap();
        let rows = rows.lock().unwrap();
        let (mut hmax, mut hrel, mut lmax) = (0f32, 0f32, 0f32);
        let mut flips = 0;
        let mut sampler = agora_sampling::Sampler::new();
        let params = SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 0,
            seed: 7 + pi as u64,
        };
        for (i, (pos, h2, l2)) in rows.iter().enumerate() {
            assert_eq!(*pos, prompt.len() - 1 + i);
            let norm = hs[i].iter().map(|x| x * x).sum::<f32>().sqrt();
            for (a, b) in hs[i].iter().zip(h2) {
                hmax = hmax.max((a - b).abs());
                hrel = hrel.max((a - b).abs() / norm);
            }
            for (a, b) in ls[i].iter().zip(l2) {
                lmax = lmax.max((a - b).abs());
            }
            if pi == 0 && (i < 4 || i % 16 == 0) {
                let d: f32 = hs[i]
                    .iter()
                    .zip(h2)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                println!("  row {i}: hidden max |diff| {d:.3e}");
            }
            if sampler.sample(l2, &params, i as u64) != Some(toks[i]) {
                flips += 1;
            }
        }
        println!(
            "prompt {pi}: {} tokens; hidden max |diff| {hmax:.3e} (rel {hrel:.3e}); logits max |diff| {lmax:.3e}; sampling flips {flips}",
            rows.len()
        );
    }
}
