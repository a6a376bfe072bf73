//! `agora verify FILE`: check a saved answer offline, on this machine's copy of the model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agora_core::statement::Statement;
use agora_engine::Engine;
use agora_llama::{LlamaConfig, LlamaEngine};
use agora_models::store::ModelStore;
use agora_node::transcript::Transcript;
use agora_verify::Tolerances;
use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A transcript: what `agora chat --save FILE` writes, or what a gateway keeps.
    pub file: PathBuf,
    /// CPU threads for the check (default: all cores).
    #[arg(long)]
    pub threads: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Trust for the log the receipt was appended to: with it, the receipt's and the model's
    /// statements are checked under a checkpoint whose signature is verified.
    #[command(flatten)]
    pub trust: crate::cmd_log::TrustArgs,
    /// A node to ask where the model's statements are (default: the node whose /log holds the
    /// receipt).
    #[arg(long, value_name = "URL")]
    pub node: Option<String>,
    /// Do not look up the receipt and the model's provenance in the log.
    #[arg(long)]
    pub offline: bool,
}

/// Largest transcript read (bytes).
const MAX_TRANSCRIPT: u64 = 64 << 20;

/// Exit status: 0 accepted, 1 rejected, 2 could not be checked (among others: the worker
/// marked the answer unverifiable, its engine having failed its self-check).
pub fn run(home: &Path, a: VerifyArgs) -> Result<i32> {
    let meta =
        std::fs::metadata(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    if meta.len() > MAX_TRANSCRIPT {
        bail!(
            "{} is larger than {} bytes: not a transcript",
            a.file.display(),
            MAX_TRANSCRIPT
        );
    }
    let bytes = std::fs::read(&a.file)?;
    let t = Transcript::parse(&bytes)?;
    let checked = match t.check() {
        Ok(c) => c,
        Err(e) => {
            println!("REJECTED: {e}");
            return Ok(1);
        }
    };
    let r = &checked.receipt;
    let store = ModelStore::open(home, true)?;
    let digest = r.model.to_string();
    let model = store
        .find(&digest)?
        .with_context(|| format!("this machine has no model sha256:{digest} (the receipt's); fetch it with `agora model pull` or `agora model add`"))?;
    let path = store.resolve_or_fetch(&model.name)?.path;
    let mut cfg = LlamaConfig::new(path, model.name.clone(), model.sha256.clone());
    cfg.threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    cfg.slots = 1;
    // The context is sized from what the transcript really holds, not from what the receipt
    // claims: a prompt has at most one token per byte of its request (plus the template's
    // own tokens), and the output is the tokens listed (check() matched their count).
    let request_bytes = serde_json::to_vec(&t.request).map(|v| v.len()).unwrap_or(0);
    let prompt_bound = (request_bytes as u64 + 1024).min(u64::from(r.prompt_tokens));
    let ctx = prompt_bound + t.output.tokens.len() as u64 + 16;
    cfg.ctx = u32::try_from(ctx).unwrap_or(u32::MAX).max(256);
    let engine: Arc<dyn Engine> = Arc::new(LlamaEngine::load(cfg)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t0 = std::time::Instant::now();
    let result = rt.block_on(agora_node::verifier::verify(
        &engine,
        &t,
        Tolerances::default(),
    ));
    let elapsed = t0.elapsed();
    // Where the answer came from: the receipt in the log, the model's manifest and data.
    let provenance = match (&t.log, a.offline) {
        (Some(l), false) => Some(log_provenance(home, &t, l, &a)),
        _ => None,
    };
    match result {
        Ok((_, report)) => {
            if a.json {
                let mut v = serde_json::to_value(&report)?;
                if let (Some(p), Some(o)) = (&provenance, v.as_object_mut()) {
                    o.insert(
                        "provenance".into(),
                        match p {
                            Ok(p) => p.json.clone(),
                            Err(e) => serde_json::json!({"error": e.to_string()}),
                        },
                    );
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{}",
                    if report.accept {
                        "ACCEPTED"
                    } else {
                        "REJECTED"
                    }
                );
                if let Some(reason) = &report.reason {
                    println!("  reason:      {reason}");
                }
                println!("  worker:      {}", r.worker);
                println!("  model:       {} (sha256:{}…)", model.name, &digest[..12]);
                println!(
                    "  tokens:      {} generated after {} of prompt, seed {}",
                    report.tokens, r.prompt_tokens, r.seed
                );
                println!(
                    "  commitments: {} checked; worst index overlap {:.0}%, worst value error {:.2e}",
                    report.commitments_checked,
                    report.min_overlap * 100.0,
                    report.max_value_error
                );
                println!(
                    "  sampling:    {} near-ties, {} mismatched tokens",
                    report.near_ties, report.mismatched_tokens
                );
                println!("  checked in {:.2} s", elapsed.as_secs_f64());
                match &provenance {
                    Some(Ok(p)) => print!("{}", p.text),
                    Some(Err(e)) => println!("  provenance:  not checked: {}", crate::explain(e)),
                    None if a.offline => {}
                    None => println!(
                        "  provenance:  the transcript does not say which log holds its receipt"
                    ),
                }
            }
            Ok(if report.accept { 0 } else { 1 })
        }
        Err(e @ agora_node::verifier::VerifyError::Unverifiable) => {
            println!("UNVERIFIABLE: {e}");
            Ok(2)
        }
        Err(e) if e.condemns_worker() => {
            println!("REJECTED: {e}");
            Ok(1)
        }
        Err(e) => {
            eprintln!("cannot check: {e}");
            Ok(2)
        }
    }
}

/// The receipt's log entry and the answering model's provenance, checked.
struct Provenance {
    text: String,
    json: serde_json::Value,
}

fn log_provenance(
    home: &Path,
    t: &Transcript,
    l: &agora_engine::LogRef,
    a: &VerifyArgs,
) -> Result<Provenance> {
    use crate::provenance::{TrustedLog, check};
    let mut log = TrustedLog::open(&l.url, &a.trust)?;
    log.cover(l.index)?;
    let receipt = agora_core::Envelope::from_json(&serde_json::to_vec(&t.receipt)?)
        .context("the receipt is not an envelope")?;
    let entry = receipt.to_json();
    let receipt_line = match log.check_inclusion(l.index, entry.as_bytes()) {
        Ok(how) => format!("entry {} of {}: {how}", l.index, log.origin()),
        Err(e) => format!("! entry {} of {}: {e}", l.index, log.origin()),
    };
    let Statement::Receipt(r) = Statement::from_payload(&receipt.payload_type, &receipt.payload)?
    else {
        bail!("the receipt is not a receipt statement");
    };
    let checked = check(home, r.model, &mut log, &l.url, a.node.as_deref())?;
    let mut text = format!("  receipt:     {receipt_line}\n  provenance:\n");
    for line in checked.render().lines() {
        text.push_str(&format!("    {line}\n"));
    }
    text.push_str(&format!("    ({})\n", checked.verdict()));
    let mut json = checked.to_json();
    json["receipt"] = serde_json::json!(receipt_line);
    Ok(Provenance { text, json })
}
