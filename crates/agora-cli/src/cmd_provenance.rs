//! `agora provenance FILE|-`: was this text produced on this network, by which model, on which
//! worker, when, and did validators check it?
//!
//! Only the text's digest leaves this machine (SHA-256 of its normalised form,
//! `agora_core::text`). A node that holds the network's log answers with log entries; nothing it
//! says is taken as is: every receipt's signature, text digest and inclusion in the log under a
//! checkpoint the user trusts (`--log-key`/`--policy`) is checked here, and so is every verdict
//! on it. A text that matches no receipt has "no record in this network's log" — which never
//! means it was written by a person.

use std::io::Read;
use std::path::{Path, PathBuf};

use agora_core::statement::{Receipt, Sha256, Verdict};
use agora_core::text::Fingerprint;
use agora_core::{Envelope, Statement};
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::cmd_log::TrustArgs;
use crate::provenance::TrustedLog;

#[derive(Args, Debug)]
pub struct ProvenanceArgs {
    /// The text to look up: a file, or `-` for standard input (at most 1 MiB of UTF-8).
    pub file: PathBuf,
    /// The node to ask: one that holds the network's log (its gateway with `--serve-log`).
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub node: String,
    /// The log to check the answer against (default: the node's `/log`).
    #[arg(long, value_name = "URL")]
    pub log: Option<String>,
    /// Trust for the log: without `--log-key` or `--policy`, inclusion is checked against a
    /// checkpoint whose signature is not, and the answer says so.
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print the text's digest and stop (nothing is sent anywhere).
    #[arg(long)]
    pub digest_only: bool,
    /// Also look for edited copies: receipts whose (opt-in) fingerprint is similar to the
    /// text's. Sends the text's fingerprint, a MinHash sketch of its word triples (see
    /// docs/provenance.md for what it reveals).
    #[arg(long)]
    pub fuzzy: bool,
    /// The least estimated similarity `--fuzzy` reports (0.1 to 1; about 0.5 for a text with a
    /// tenth of its words changed).
    #[arg(long, default_value_t = agora_api::provenance::DEFAULT_MIN_SIMILARITY)]
    pub min_similarity: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a receipt must match.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    /// Exactly the text: its digest.
    Digest(Sha256),
    /// An edited copy: a fingerprint at least this similar.
    Similar(Fingerprint, f64),
}

/// Exit status: 0 found (at least one receipt fully checked), 1 no record, 2 could not check
/// (including a node whose answer does not check).
pub fn run(home: &Path, a: ProvenanceArgs) -> Result<i32> {
    let bytes = read_text(&a.file, agora_core::text::MAX_TEXT)?;
    let digest = agora_core::text::digest_bytes(&bytes)
        .with_context(|| format!("{} has no text digest", a.file.display()))?;
    if a.digest_only {
        println!("{digest}");
        return Ok(0);
    }
    let node = a.node.trim_end_matches('/').to_string();
    let log_url = a.log.clone().unwrap_or_else(|| format!("{node}/log"));
    let min = a.min_similarity;
    if !(agora_api::provenance::MIN_SIMILARITY_FLOOR..=1.0).contains(&min) {
        bail!(
            "--min-similarity must be between {} and 1",
            agora_api::provenance::MIN_SIMILARITY_FLOOR
        );
    }
    // Checked before anything is sent: a text too short for a fingerprint says so.
    let fingerprint = match a.fuzzy {
        true => Some(
            std::str::from_utf8(&bytes)
                .ok()
                .and_then(Fingerprint::of)
                .with_context(|| {
                    format!(
                        "{} is too short for --fuzzy (fewer than {} words)",
                        a.file.display(),
                        agora_core::text::FINGERPRINT_MIN_WORDS
                    )
                })?,
        ),
        false => None,
    };
    let client = agora_api::client::Client::new(&node);
    let answer = client
        .get_json(&format!("/agora/v1/provenance?digest={digest}"))
        .with_context(|| format!("asking {node} for the text's receipts"))?;
    let mut log = TrustedLog::open(&log_url, &a.trust)?;
    let mut report = check_answer(&answer, Want::Digest(digest), &mut log)?;
    if let Some(fp) = fingerprint {
        let answer = client
            .get_json(&format!(
                "/agora/v1/provenance?fingerprint={}&min={min}",
                fp.to_hex()
            ))
            .with_context(|| format!("asking {node} for receipts of similar texts"))?;
        let similar = check_answer(&answer, Want::Similar(fp, min), &mut log)?;
        let exact: Vec<u64> = report.matches.iter().map(|m| m.index).collect();
        report.similar = Some(
            similar
                .matches
                .into_iter()
                .filter(|m| !exact.contains(&m.index))
                .collect(),
        );
        report.more |= similar.more;
    }
    let curricula = curricula(home, &report, &mut log, &log_url, &node);
    if a.json {
        let mut v = report.to_json();
        v["curricula"] = curricula
            .iter()
            .map(|(m, c)| (m.to_string(), json!(c)))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report.render(&curricula));
    }
    Ok(report.status())
}

/// The bytes of `file` (`-`: standard input), at most `max` and one more, read to tell a text
/// that is too long.
pub(crate) fn read_text(file: &Path, max: usize) -> Result<Vec<u8>> {
    let limit = max as u64 + 1;
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin().take(limit).read_to_end(&mut bytes)?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .take(limit)
            .read_to_end(&mut bytes)?;
    }
    Ok(bytes)
}

/// One receipt the node returned, as checked here.
#[derive(Debug)]
pub struct Match {
    pub index: u64,
    /// The receipt, when its signature checks and its text digest is the text's.
    pub receipt: Result<Receipt, String>,
    /// For a fuzzy match: the similarity computed here.
    pub similarity: Option<f64>,
    /// How its inclusion in the log was checked, or why it is not in it.
    pub inclusion: Result<String, String>,
    pub verdicts: Vec<Judged>,
}

impl Match {
    pub(crate) fn proven(&self) -> bool {
        self.receipt.is_ok() && self.inclusion.is_ok()
    }
}

/// A verdict on a receipt, as checked here.
#[derive(Debug)]
pub struct Judged {
    pub index: u64,
    pub verdict: Result<Verdict, String>,
    pub inclusion: Result<String, String>,
}

/// What the lookup showed.
#[derive(Debug)]
pub struct Report {
    pub digest: Sha256,
    pub log: String,
    pub checkpoint_size: u64,
    pub signature_checked: bool,
    pub matches: Vec<Match>,
    /// With `--fuzzy`: receipts of similar texts (those not found exactly).
    pub similar: Option<Vec<Match>>,
    /// The node said more receipts matched than it returned.
    pub more: bool,
}

/// Checks a node's answer (`GET /agora/v1/provenance`) for what was asked against `log`.
pub fn check_answer(answer: &Value, want: Want, log: &mut TrustedLog) -> Result<Report> {
    let origin = answer["log"].as_str().unwrap_or_default();
    if origin != log.origin() {
        bail!(
            "the node answered for log {origin:?}, but the log checked here is {:?}",
            log.origin()
        );
    }
    let Some(receipts) = answer["receipts"].as_array() else {
        bail!("the node's answer lists no receipts (not a provenance answer)");
    };
    let mut matches = Vec::new();
    let mut gave_up = false;
    for r in receipts.iter().take(agora_node::text_index::MAX_MATCHES) {
        let (index, entry) = entry_of(r)?;
        cover(log, index, &mut gave_up)?;
        let inclusion = log.check_inclusion(index, entry.as_bytes());
        let opened = open_receipt(entry.as_bytes(), want);
        let mut verdicts = Vec::new();
        if let Ok((_, payload_digest)) = &opened {
            for v in r["verdicts"]
                .as_array()
                .into_iter()
                .flatten()
                .take(agora_node::text_index::MAX_VERDICTS)
            {
                let (vi, ve) = entry_of(v)?;
                cover(log, vi, &mut gave_up)?;
                verdicts.push(Judged {
                    index: vi,
                    verdict: open_verdict(ve.as_bytes(), payload_digest),
                    inclusion: log.check_inclusion(vi, ve.as_bytes()),
                });
            }
        }
        let similarity = match (&opened, want) {
            (Ok((r, _)), Want::Similar(fp, _)) => r.fingerprint.map(|f| fp.similarity(&f)),
            _ => None,
        };
        matches.push(Match {
            index,
            receipt: opened.map(|(r, _)| r),
            similarity,
            inclusion,
            verdicts,
        });
    }
    if let Want::Similar(..) = want {
        matches.sort_by(|a, b| {
            b.similarity
                .unwrap_or(0.0)
                .total_cmp(&a.similarity.unwrap_or(0.0))
        });
    }
    Ok(Report {
        digest: match want {
            Want::Digest(d) => d,
            Want::Similar(..) => Sha256([0; 32]),
        },
        log: log.origin().to_string(),
        checkpoint_size: log.size(),
        signature_checked: log.verified,
        matches,
        similar: None,
        more: answer["more"].as_bool().unwrap_or(false),
    })
}

/// Waits for a checkpoint covering `index` (an entry appended a moment ago is covered by the
/// next one), but once only: after one wait in vain, an index beyond the checkpoint is simply
/// reported as not in the log (a node could name many).
fn cover(log: &mut TrustedLog, index: u64, gave_up: &mut bool) -> Result<()> {
    if index >= log.size() && !*gave_up {
        log.cover(index)?;
        *gave_up = index >= log.size();
    }
    Ok(())
}

fn entry_of(v: &Value) -> Result<(u64, &str)> {
    match (v["index"].as_u64(), v["entry"].as_str()) {
        (Some(i), Some(e)) => Ok((i, e)),
        _ => bail!("the node's answer has an entry without an index or its bytes"),
    }
}

/// The receipt in `entry` with the SHA-256 of its payload, when it is a receipt signed by the
/// worker it names and its text digest is the one wanted (or its fingerprint similar enough,
/// as computed here).
fn open_receipt(entry: &[u8], want: Want) -> Result<(Receipt, Sha256), String> {
    let env = Envelope::from_json(entry).map_err(|e| format!("not a signed statement: {e}"))?;
    let (signers, st) = Statement::open(&env).map_err(|e| format!("does not check: {e}"))?;
    let Statement::Receipt(r) = st else {
        return Err(format!("a {} statement, not a receipt", st.kind().name()));
    };
    if !signers.contains(&r.worker) {
        return Err(format!("not signed by the worker it names ({})", r.worker));
    }
    let payload = Sha256::of(&env.payload);
    match (want, &r.text, &r.fingerprint) {
        (Want::Digest(want), Some(d), _) if *d == want => Ok((r, payload)),
        (Want::Digest(_), Some(d), _) => Err(format!("its text digest is {d}, not the text's")),
        (Want::Digest(_), None, _) => Err("it has no text digest".into()),
        (Want::Similar(fp, min), _, Some(f)) => {
            let s = fp.similarity(f);
            if s >= min {
                Ok((r, payload))
            } else {
                Err(format!(
                    "its fingerprint is only {:.0} % similar to the text's (below {:.0} %)",
                    s * 100.0,
                    min * 100.0
                ))
            }
        }
        (Want::Similar(..), _, None) => Err("it has no fingerprint".into()),
    }
}

/// The verdict in `entry`, when it is signed by the validator it names and judges `receipt`.
fn open_verdict(entry: &[u8], receipt: &Sha256) -> Result<Verdict, String> {
    let env = Envelope::from_json(entry).map_err(|e| format!("not a signed statement: {e}"))?;
    let (signers, st) = Statement::open(&env).map_err(|e| format!("does not check: {e}"))?;
    let Statement::Verdict(v) = st else {
        return Err(format!("a {} statement, not a verdict", st.kind().name()));
    };
    if !signers.contains(&v.validator) {
        return Err(format!(
            "not signed by the validator it names ({})",
            v.validator
        ));
    }
    if &v.receipt != receipt {
        return Err("it judges another receipt".into());
    }
    Ok(v)
}

impl Report {
    fn all(&self) -> impl Iterator<Item = &Match> {
        self.matches.iter().chain(self.similar.iter().flatten())
    }

    /// 0 found and proven (exactly or, with `--fuzzy`, similar), 1 no record, 2 the node
    /// returned receipts none of which checks.
    pub fn status(&self) -> i32 {
        if self.all().any(Match::proven) {
            0
        } else if self.all().next().is_none() {
            1
        } else {
            2
        }
    }

    fn render(&self, curricula: &[(Sha256, Vec<String>)]) -> String {
        let mut out = format!("text digest: {}\n", self.digest);
        let trust = if self.signature_checked {
            "signature checked"
        } else {
            "signature NOT checked: pass --log-key or --policy"
        };
        let proven = self.matches.iter().filter(|m| m.proven()).count();
        out.push_str(&if self.matches.is_empty() {
            format!(
                "NO RECORD in this network's log ({}, checkpoint of {} entries, {trust}) of \
                 exactly this text.\n\
                 This does not mean a person wrote the text: only that no answer logged here \
                 had exactly this text (after normalising line endings, Unicode and surrounding \
                 whitespace).\n",
                self.log, self.checkpoint_size
            )
        } else if proven > 0 {
            format!(
                "FOUND: {proven} answer(s) in {} had exactly this text ({trust})\n",
                self.log
            )
        } else {
            format!(
                "NOT PROVEN: the node returned {} receipt(s) and none checks — its answer cannot be trusted\n",
                self.matches.len()
            )
        });
        for m in &self.matches {
            out.push_str(&format!("\nreceipt at entry {}:\n", m.index));
            out.push_str(&m.render(curricula));
        }
        if let Some(similar) = &self.similar {
            let proven = similar.iter().filter(|m| m.proven()).count();
            out.push_str(&if similar.is_empty() {
                "\nSIMILAR: none — no answer that asked for a fingerprint is similar to this text \
                 (answers without one are never found this way).\n"
                    .to_string()
            } else if proven > 0 {
                format!("\nSIMILAR: {proven} answer(s) with a fingerprint resemble this text\n")
            } else {
                format!(
                    "\nSIMILAR, NOT PROVEN: the node returned {} receipt(s) and none checks\n",
                    similar.len()
                )
            });
            for m in similar {
                out.push_str(&format!("\nreceipt at entry {}", m.index));
                if let Some(s) = m.similarity {
                    out.push_str(&format!(
                        " (about {:.0} % of word triples shared, estimated here)",
                        s * 100.0
                    ));
                }
                out.push_str(":\n");
                out.push_str(&m.render(curricula));
            }
        }
        if self.more {
            out.push_str("\n(more receipts matched; the node returned the first ones)\n");
        }
        out
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "digest": self.digest.to_string(),
            "log": self.log,
            "checkpoint_size": self.checkpoint_size,
            "checkpoint_signature_verified": self.signature_checked,
            "found": self.matches.iter().any(Match::proven),
            "more": self.more,
            "receipts": self.matches.iter().map(Match::to_json).collect::<Vec<_>>(),
        });
        if let Some(similar) = &self.similar {
            v["similar"] = similar
                .iter()
                .map(Match::to_json)
                .collect::<Vec<_>>()
                .into();
            v["found_similar"] = similar.iter().any(Match::proven).into();
        }
        v
    }
}

impl Match {
    fn render(&self, curricula: &[(Sha256, Vec<String>)]) -> String {
        let mut out = String::new();
        match &self.receipt {
            Ok(r) => {
                out.push_str(&format!("  model:     sha256:{}\n", r.model));
                out.push_str(&format!("  worker:    {}\n", r.worker));
                out.push_str(&format!(
                    "  time:      {} (the worker's clock)\n",
                    utc(r.time)
                ));
                out.push_str(&format!(
                    "  tokens:    {} generated after {} of prompt\n",
                    r.completion_tokens, r.prompt_tokens
                ));
            }
            Err(e) => out.push_str(&format!("  ! the receipt does not check: {e}\n")),
        }
        match &self.inclusion {
            Ok(how) => out.push_str(&format!("  log:       {how}\n")),
            Err(e) => out.push_str(&format!("  ! {e}\n")),
        }
        let Ok(r) = &self.receipt else {
            return out;
        };
        if self.verdicts.is_empty() {
            out.push_str("  verdicts:  none logged: no validator has re-run this answer\n");
        }
        for j in &self.verdicts {
            match (&j.verdict, &j.inclusion) {
                (Ok(v), Ok(_)) => out.push_str(&format!(
                    "  verdict:   {} by validator {} (entry {}, in the log)\n",
                    if v.accept { "ACCEPTED" } else { "REJECTED" },
                    v.validator,
                    j.index
                )),
                (Err(e), _) | (_, Err(e)) => {
                    out.push_str(&format!("  ! verdict at entry {}: {e}\n", j.index));
                }
            }
        }
        if let Some((_, lines)) = curricula.iter().find(|(d, _)| *d == r.model) {
            out.push_str("  curriculum:\n");
            for l in lines {
                out.push_str(&format!("    {l}\n"));
            }
        }
        out
    }

    fn to_json(&self) -> Value {
        let res = |r: &Result<String, String>| match r {
            Ok(s) => json!({"ok": true, "how": s}),
            Err(e) => json!({"ok": false, "why": e}),
        };
        json!({
            "index": self.index,
            "similarity": self.similarity,
            "receipt": match &self.receipt {
                Ok(r) => json!({"ok": true, "receipt": r}),
                Err(e) => json!({"ok": false, "why": e}),
            },
            "inclusion": res(&self.inclusion),
            "verdicts": self.verdicts.iter().map(|j| json!({
                "index": j.index,
                "verdict": match &j.verdict {
                    Ok(v) => json!({"ok": true, "verdict": v}),
                    Err(e) => json!({"ok": false, "why": e}),
                },
                "inclusion": res(&j.inclusion),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The curriculum (model provenance, checked) of each distinct model among the proven
/// receipts, as lines to show.
fn curricula(
    home: &Path,
    report: &Report,
    log: &mut TrustedLog,
    log_url: &str,
    node: &str,
) -> Vec<(Sha256, Vec<String>)> {
    let mut out: Vec<(Sha256, Vec<String>)> = Vec::new();
    for m in report.all().filter(|m| m.proven()) {
        let Ok(r) = &m.receipt else { continue };
        if out.iter().any(|(d, _)| *d == r.model) {
            continue;
        }
        let lines = match crate::provenance::check(home, r.model, log, log_url, Some(node)) {
            Ok(c) => {
                let mut l: Vec<String> = c.render().lines().map(str::to_string).collect();
                l.push(format!("({})", c.verdict()));
                l
            }
            Err(e) => vec![format!("not checked: {}", crate::explain(&e))],
        };
        out.push((r.model, lines));
    }
    out
}

/// POSIX seconds as an ISO 8601 UTC time (proleptic Gregorian calendar).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_117_130), "2026-12-01T09:25:30Z");
    }
}
