//! The self-check a node runs on its engine before serving: are a token's numbers the same bits
//! however the token was computed? Activation proofs rest on that (a verifier recomputes them
//! in another batch, with another thread count); a model whose kernels break it (an
//! architecture or tensor type whose products depend on the batch) can be served, but its
//! answers cannot be proven, and the node must say so instead of signing proofs no one can
//! reproduce.
//!
//! The check runs one short greedy generation three ways and compares every generated token's
//! hidden state and logits bit for bit: alone (one busy slot), among other prompts filling up
//! to eight slots (products over many rows at once), and recomputed by one scoring prefill over
//! prompt and output (what a verifier runs). Blocking: call it before an async runtime starts.

use crate::{
    Capture, ChatMessage, Engine, Event, GenRequest, PromptSpec, SamplingParams, ScoreRequest,
    ScoreSink,
};

/// Tokens each of the self-check's generations produces.
pub const TOKENS: u32 = 16;

/// Most generations the batched run decodes together.
pub const MAX_BATCH: usize = 8;

const PROMPTS: [&str; MAX_BATCH] = [
    "Write a short poem about rain.",
    "Explain gravity to a child.",
    "List five animals and where they live.",
    "What is a CPU?",
    "Tell me about the moon.",
    "How do birds fly?",
    "Name three colours and a fruit of each.",
    "Why is the sea salty?",
];

/// Each generated token's id, hidden state and logits.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Run {
    pub tokens: Vec<u32>,
    pub hidden: Vec<Vec<f32>>,
    pub logits: Vec<Vec<f32>>,
}

/// Runs the self-check: `Ok` when the engine computed the same bits alone, batched and
/// rescored; otherwise one sentence saying what differed (or why the check could not run).
pub fn run(engine: &dyn Engine) -> Result<(), String> {
    let prompts = PROMPTS
        .iter()
        .map(|p| prompt(engine, p))
        .collect::<Result<Vec<_>, _>>()?;
    let alone = generate(engine, &prompts[..1])?.remove(0);
    let n = (engine.info().slots as usize).clamp(1, MAX_BATCH);
    if n > 1 {
        let batched = generate(engine, &prompts[..n])?.remove(0);
        compare(&alone, &batched).map_err(|d| {
            format!(
                "{d} when the same prompt was decoded among {} others",
                n - 1
            )
        })?;
    }
    let rescored = rescore(engine, &prompts[0], &alone.tokens)?;
    compare(&alone, &rescored).map_err(|d| format!("{d} when recomputed by one prefill"))
}

/// Where two runs of the same prompt first differ, as a phrase; `Ok` when they are the same
/// bits throughout.
pub fn compare(a: &Run, b: &Run) -> Result<(), String> {
    if a.tokens != b.tokens {
        let i = a
            .tokens
            .iter()
            .zip(&b.tokens)
            .position(|(x, y)| x != y)
            .unwrap_or(a.tokens.len().min(b.tokens.len()));
        return Err(format!("the output differed from token {i} on"));
    }
    for (what, xs, ys) in [
        ("hidden state", &a.hidden, &b.hidden),
        ("logits", &a.logits, &b.logits),
    ] {
        if xs.len() != ys.len() {
            return Err(format!(
                "{} and {} {what} rows came out",
                xs.len(),
                ys.len()
            ));
        }
        if let Some(i) = xs.iter().zip(ys).position(|(x, y)| !same_bits(x, y)) {
            return Err(format!("the {what} of token {i} had other bits"));
        }
    }
    Ok(())
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// A prompt as a chat (the model's template) or, for a model without one, as plain text.
fn prompt(engine: &dyn Engine, text: &str) -> Result<Vec<u32>, String> {
    let messages = vec![ChatMessage {
        role: "user".into(),
        content: text.into(),
    }];
    let plain = PromptSpec::Text(crate::template::plain_text(&messages));
    engine
        .tokenize(&PromptSpec::Chat(messages))
        .or_else(|_| engine.tokenize(&plain))
        .map_err(|e| format!("the self-check's prompt could not be tokenized: {e}"))
}

/// Greedy generations of every prompt, submitted together; their runs in order.
fn generate(engine: &dyn Engine, prompts: &[Vec<u32>]) -> Result<Vec<Run>, String> {
    let gens = prompts
        .iter()
        .map(|p| {
            engine
                .submit(GenRequest {
                    prompt: p.clone(),
                    params: SamplingParams {
                        temperature: 0.0,
                        top_p: 1.0,
                        top_k: 0,
                        seed: 0,
                    },
                    max_tokens: TOKENS,
                    stop: vec![],
                    ignore_eos: true,
                    capture: Capture {
                        hidden: true,
                        logits: true,
                    },
                    resume: vec![],
                    logit_bias: Default::default(),
                    conversation: None,
                })
                .map_err(|e| format!("the self-check could not start a generation: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    gens.into_iter()
        .map(|mut g| {
            let mut run = Run::default();
            while let Some(ev) = g.events.blocking_recv() {
                match ev {
                    Event::Token(t) => {
                        run.tokens.push(t.id);
                        run.hidden.push(t.hidden.unwrap_or_default());
                        run.logits.push(t.logits.unwrap_or_default());
                    }
                    Event::Done(_) => return Ok(run),
                    Event::Error(e) => {
                        return Err(format!("the self-check's generation failed: {e}"));
                    }
                    _ => {}
                }
            }
            Err("the self-check's generation ended without finishing".to_string())
        })
        .collect()
}

/// One scoring prefill over `prompt` and all but the last of `tokens`: the rows that chose
/// each of `tokens`.
fn rescore(engine: &dyn Engine, prompt: &[u32], tokens: &[u32]) -> Result<Run, String> {
    struct Collect(std::sync::mpsc::Sender<(Vec<f32>, Vec<f32>)>);
    impl ScoreSink for Collect {
        fn row(&mut self, _pos: usize, hidden: &[f32], logits: &[f32]) {
            let _ = self.0.send((hidden.to_vec(), logits.to_vec()));
        }
    }
    let Some((_, head)) = tokens.split_last() else {
        return Err("the self-check's generation produced no tokens".into());
    };
    let mut all = prompt.to_vec();
    all.extend_from_slice(head);
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = engine
        .score(
            ScoreRequest {
                tokens: all,
                from: prompt.len().saturating_sub(1),
            },
            Box::new(Collect(tx)),
        )
        .map_err(|e| format!("the self-check could not start a scoring pass: {e}"))?;
    handle
        .done
        .blocking_recv()
        .map_err(|_| "the self-check's scoring pass ended without an answer".to_string())?
        .map_err(|e| format!("the self-check's scoring pass failed: {e}"))?;
    let (hidden, logits) = rx.try_iter().unzip();
    Ok(Run {
        tokens: tokens.to_vec(),
        hidden,
        logits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tokens: &[u32], h: f32) -> Run {
        Run {
            tokens: tokens.to_vec(),
            hidden: tokens.iter().map(|_| vec![h, 1.0]).collect(),
            logits: tokens.iter().map(|_| vec![0.5, -0.0]).collect(),
        }
    }

    #[test]
    fn runs_compare_bit_for_bit_and_say_where_they_differ() {
        assert_eq!(
            compare(&run(&[1, 2, 3], 0.25), &run(&[1, 2, 3], 0.25)),
            Ok(())
        );
        assert_eq!(
            compare(&run(&[1, 2, 3], 0.25), &run(&[1, 5, 3], 0.25)),
            Err("the output differed from token 1 on".into())
        );
        let mut b = run(&[1, 2, 3], 0.25);
        b.hidden[2][0] = f32::from_bits(0.25f32.to_bits() + 1);
        assert_eq!(
            compare(&run(&[1, 2, 3], 0.25), &b),
            Err("the hidden state of token 2 had other bits".into())
        );
        // +0.0 and -0.0 are equal numbers but other bits: a proof's hash would differ.
        let mut c = run(&[1, 2, 3], 0.25);
        c.logits[0][1] = 0.0;
        assert_eq!(
            compare(&run(&[1, 2, 3], 0.25), &c),
            Err("the logits of token 0 had other bits".into())
        );
        let mut d = run(&[1, 2, 3], 0.25);
        d.logits.pop();
        assert_eq!(
            compare(&run(&[1, 2, 3], 0.25), &d),
            Err("3 and 2 logits rows came out".into())
        );
    }
}
