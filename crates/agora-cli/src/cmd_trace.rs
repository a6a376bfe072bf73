//! `agora trace FILE|-`: where did the model get this text? The longest spans of the text that
//! occur verbatim in the datasets of a model's curriculum, each with the records it occurs in,
//! their inclusion proofs, licences and contributors — found by this machine's dataset store or
//! by a node (`--node`), and checked here either way: a node that lies is caught.
//!
//! Also the tokenizers the trace indexes use (`agora dataset index`), loaded from the model
//! store by digest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agora_core::statement::Sha256;
use agora_models::ModelStore;
use agora_node::trace::Tracer;
use agora_trace::report::{self, Checked, MAX_TRACE_TEXT, Request, Trace};
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::cmd_log::TrustArgs;
pub use agora_bench::tokenizers::StoreTokenizers;

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// The text: a file, or `-` for standard input (at most 64 KiB of UTF-8).
    pub file: PathBuf,
    /// Search these datasets (NAME or NAME@VERSION, repeatable).
    #[arg(long, value_name = "NAME[@VERSION]")]
    pub dataset: Vec<String>,
    /// Search the curriculum of this model (a stored name or sha256:HEX): the datasets of its
    /// manifest's mix and of its base models', as the log proves them. Default, with --node
    /// and no --dataset: the model that answered with this text, found by its receipt in the
    /// log (as `agora provenance` finds it); else every indexed dataset.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// The log holding the receipts and manifests (default: the node's `/log`).
    #[arg(long, value_name = "URL")]
    pub log: Option<String>,
    /// Trust for the log: with `--log-key` or `--policy`, each dataset statement's log proof is
    /// checked too (and a statement without one rejects the trace).
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Ask this node (it holds the datasets and their indexes); default: this machine's store.
    #[arg(long, value_name = "URL")]
    pub node: Option<String>,
    /// Shortest span reported, in the model's tokens.
    #[arg(long, default_value_t = 8)]
    pub min_tokens: usize,
    /// Spans occurring more often than this are common phrases, not sources: not reported.
    #[arg(long, default_value_t = 10)]
    pub max_count: u64,
    /// Write the trace as received (agora-trace/1 JSON) to this file.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Check a saved trace against the text instead of asking anyone.
    #[arg(long, value_name = "TRACE.json", conflicts_with_all = ["node", "save"])]
    pub check: Option<PathBuf>,
    /// Print the checked trace and its attribution as JSON.
    #[arg(long)]
    pub json: bool,
}

fn read_text(file: &Path) -> Result<String> {
    let bytes = crate::cmd_provenance::read_text(file, MAX_TRACE_TEXT)?;
    if bytes.len() > MAX_TRACE_TEXT {
        bail!("the text is longer than {MAX_TRACE_TEXT} bytes: trace a part of it");
    }
    String::from_utf8(bytes).context("the text is not UTF-8")
}

/// The log policy the statements' proofs must satisfy, from --policy or --log-key.
fn policy(trust: &TrustArgs) -> Result<Option<agora_tlog::policy::Policy>> {
    if let Some(p) = &trust.policy {
        return Ok(Some(crate::cmd_log::read_policy(p)?));
    }
    if let Some(k) = &trust.log_key {
        let text = format!("log {k}\nquorum none\n");
        return Ok(Some(
            agora_tlog::policy::Policy::parse(text.as_bytes()).context("invalid --log-key")?,
        ));
    }
    Ok(None)
}

/// The log receipts and manifests are read from: --log, else the node's.
fn log_url(a: &TraceArgs) -> Result<String> {
    match (&a.log, &a.node) {
        (Some(l), _) => Ok(l.clone()),
        (None, Some(n)) => Ok(format!("{}/log", n.trim_end_matches('/'))),
        (None, None) => bail!("name the log holding the model's manifest with --log URL"),
    }
}

/// The weights `model` names (a stored name or sha256:HEX).
fn weights_of(home: &Path, model: &str) -> Result<Sha256> {
    if let Some(hex) = model.strip_prefix("sha256:") {
        return hex
            .parse::<Sha256>()
            .map_err(|e| anyhow::anyhow!("{model}: {e}"));
    }
    let store = ModelStore::open(home, false)?;
    let m = store
        .find(model)?
        .with_context(|| format!("no stored model {model:?}: name it by sha256:HEX or pull it"))?;
    m.sha256
        .parse::<Sha256>()
        .map_err(|e| anyhow::anyhow!("the store's digest of {model}: {e}"))
}

/// The datasets of the curriculum of the model with `weights`, as the log proves them.
fn curriculum(home: &Path, a: &TraceArgs, weights: Sha256) -> Result<Vec<String>> {
    let log_url = log_url(a)?;
    let mut tlog = crate::provenance::TrustedLog::open(&log_url, &a.trust)?;
    let checked = crate::provenance::check(home, weights, &mut tlog, &log_url, a.node.as_deref())?;
    fn collect(m: &agora_node::provenance::ModelNode, out: &mut Vec<String>) {
        for d in &m.datasets {
            if d.statement.is_some() && !out.contains(&d.name) {
                out.push(d.name.clone());
            }
        }
        if let Some(b) = &m.base {
            collect(b, out);
        }
    }
    let mut out = Vec::new();
    collect(&checked.tree.model, &mut out);
    if out.is_empty() {
        bail!(
            "the log proves no dataset in the curriculum of sha256:{weights}: `agora model provenance sha256:{weights} --log {log_url}` says why"
        );
    }
    Ok(out)
}

/// The models whose receipts in the log have exactly this text (each fully checked, as
/// `agora provenance` checks them).
fn answering_models(a: &TraceArgs, node: &str, text: &str) -> Result<Vec<Sha256>> {
    use crate::cmd_provenance::{Want, check_answer};
    let digest = agora_core::text::digest(text)?;
    let answer = agora_api::client::Client::new(node)
        .get_json(&format!("/agora/v1/provenance?digest={digest}"))
        .with_context(|| format!("asking {node} for the text's receipts"))?;
    let mut tlog = crate::provenance::TrustedLog::open(&log_url(a)?, &a.trust)?;
    let report = check_answer(&answer, Want::Digest(digest), &mut tlog)?;
    let mut out = Vec::new();
    for m in report.matches.iter().filter(|m| m.proven()) {
        if let Ok(r) = &m.receipt
            && !out.contains(&r.model)
        {
            eprintln!(
                "the text is the answer of receipt {} (model sha256:{}): tracing through its curriculum",
                m.index, r.model
            );
            out.push(r.model);
        }
    }
    Ok(out)
}

pub fn run(home: &Path, a: TraceArgs) -> Result<i32> {
    let text = read_text(&a.file)?;
    let policy = policy(&a.trust)?;
    let trace: Trace = if let Some(saved) = &a.check {
        let bytes =
            std::fs::read(saved).with_context(|| format!("cannot read {}", saved.display()))?;
        report::parse(&bytes)?
    } else {
        let mut datasets = a.dataset.clone();
        let models = match (&a.model, &a.node) {
            (Some(m), _) => vec![weights_of(home, m)?],
            (None, Some(node)) if a.dataset.is_empty() => match answering_models(&a, node, &text) {
                Ok(found) if found.is_empty() => {
                    eprintln!(
                        "no receipt in the log has exactly this text: searching every dataset {node} has indexed"
                    );
                    found
                }
                Ok(found) => found,
                Err(e) => {
                    eprintln!(
                        "the answering model could not be looked up ({}): searching every dataset {node} has indexed",
                        crate::explain(&e)
                    );
                    Vec::new()
                }
            },
            _ => Vec::new(),
        };
        for w in models {
            for d in curriculum(home, &a, w)? {
                if !datasets.contains(&d) {
                    datasets.push(d);
                }
            }
        }
        let req = Request {
            text: text.clone(),
            datasets,
            min_tokens: Some(a.min_tokens),
            max_count: Some(a.max_count),
        };
        req.check()?;
        match &a.node {
            Some(node) => {
                let v = agora_api::client::Client::new(node)
                    .post_json("/agora/v1/trace", &serde_json::to_value(&req)?)
                    .with_context(|| format!("{node} could not trace the text"))?;
                serde_json::from_value(v).context("the node's answer is not a trace")?
            }
            None => Tracer::new(home, Arc::new(StoreTokenizers::new(home))).trace(&req)?,
        }
    };
    if let Some(out) = &a.save {
        std::fs::write(out, serde_json::to_vec_pretty(&trace)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    let checked = match report::verify(&trace, Some(&text), policy.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("REJECTED: the trace does not check: {e}");
            return Ok(2);
        }
    };
    let attribution = report::attribution(&checked, &trace.text_sha256, text.len() as u64);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "checked": checked,
                "attribution": attribution,
                "notes": trace.notes,
            }))?
        );
    } else {
        print!(
            "{}",
            render(&checked, &trace, &attribution, policy.is_some())
        );
    }
    Ok(if checked.spans.is_empty() { 1 } else { 0 })
}

fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn render(c: &Checked, trace: &Trace, a: &report::Attribution, logged_checked: bool) -> String {
    let mut out = String::new();
    for d in c.datasets.values() {
        out += &format!(
            "dataset {} ({} records, licence {}; statement signed by {}{})\n",
            printable(&d.dataset),
            d.records,
            printable(&d.license),
            d.signer,
            match &d.logged {
                Some(l) => format!("; {l}"),
                None if logged_checked => String::new(),
                None => "; its place in the log not checked (pass --log-key or --policy)".into(),
            }
        );
        for k in &d.contributors {
            out += &format!(
                "  contributor {}{}: {} records\n",
                printable(&k.key),
                k.label
                    .as_deref()
                    .map(|l| format!(" ({})", printable(l)))
                    .unwrap_or_default(),
                k.records
            );
        }
    }
    if c.spans.is_empty() {
        out += &format!(
            "no span of at least {} tokens occurring at most {} times was found verbatim in these datasets\n",
            trace.min_tokens, trace.max_count
        );
    } else {
        out += &format!(
            "{} span(s) found verbatim (at least {} tokens, at most {} occurrences):\n",
            c.spans.len(),
            trace.min_tokens,
            trace.max_count
        );
    }
    for s in &c.spans {
        let shown: String = s.text.chars().take(100).collect();
        out += &format!(
            "  bytes {}..{} ({} tokens, {} occurrence(s)): \"{}{}\"\n",
            s.start,
            s.end,
            s.tokens,
            s.count,
            printable(&shown),
            if shown.len() < s.text.len() {
                "…"
            } else {
                ""
            }
        );
        for r in &s.records {
            out += &format!(
                "    in {} record {:?} (#{}): {}\n",
                printable(&r.dataset),
                printable(&r.id),
                r.index,
                if r.proven {
                    "inclusion proof verified"
                } else {
                    "cited without proof"
                }
            );
        }
    }
    for n in &trace.notes {
        out += &format!("note: {}\n", printable(n));
    }
    out += &format!(
        "attribution ({}): {} of {} bytes covered",
        report::ATTRIBUTION_FORMAT,
        a.covered_bytes,
        a.text_bytes
    );
    for d in &a.datasets {
        out += &format!(
            "; {} ({}): {} bytes [{}]",
            printable(&d.dataset),
            printable(&d.license),
            d.bytes,
            d.contributors
                .iter()
                .map(|k| format!("{} {}", printable(&k.key), k.bytes))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out += "\n";
    out
}
