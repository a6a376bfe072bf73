//! `agora dataset`: datasets as signed statements with record proofs (the curriculum).

use std::path::{Path, PathBuf};
use std::time::Instant;

use agora_api::tlog::LogClient;
use agora_data::check_license;
use agora_datastore::DatasetStore;
use agora_datastore::croissant;
use agora_datastore::store::parse_ref;
use agora_datastore::store::{Manifest, Meta, Progress};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use agora_node::datasets::{LOG_FILE, STATEMENT_FILE, proof_file, statement};

use crate::cmd_identity::load_identity;
use crate::cmd_log::read_policy;

/// Largest proof file read.
const MAX_PROOF_FILE: u64 = 64 << 20;

#[derive(Subcommand, Debug)]
pub enum DatasetCommand {
    /// Ingest files into a new, signed version of a dataset (and log it with --log).
    Add(AddArgs),
    /// List the datasets in the store with their latest version.
    List,
    /// Print a version's manifest (JSON): counts, roots, shards, contributors.
    Show {
        /// NAME or NAME@VERSION (latest by default).
        dataset: String,
    },
    /// Write a self-contained proof that the record with an id is in a dataset (or, with
    /// --absent, that no record has it): the record, its tree path, the signed statement and,
    /// when the statement was logged, its proof under the log's checkpoint.
    Prove {
        /// NAME or NAME@VERSION (latest by default).
        dataset: String,
        /// The record's id.
        #[arg(long)]
        id: String,
        /// Prove that no record has this id.
        #[arg(long)]
        absent: bool,
        /// Write the proof here (default: standard output).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Opt records out: a new version without them, derived from the old one, signed (and
    /// logged with --log), with a proof file per id that it is absent from the new version.
    Remove {
        /// NAME or NAME@VERSION (latest by default).
        dataset: String,
        /// Ids of the records to remove (repeatable).
        #[arg(long, required = true)]
        id: Vec<String>,
        /// Write the absence proofs here, one file per id (default: the current directory).
        #[arg(long, default_value = ".")]
        proofs: PathBuf,
        /// Append the new version's statement to this log.
        #[arg(long, value_name = "URL")]
        log: Option<String>,
    },
    /// Export a version as a Croissant 1.1 dataset (MLCommons; loadable with the Python
    /// `mlcroissant`): DIR/croissant.json (name, version, SPDX licence, source, contributors
    /// with their record counts, the trees' roots, prov:wasDerivedFrom, RAI fields) and
    /// DIR/records.jsonl (one Dolma JSON object per record, in record order, with its sha256 in
    /// the metadata). `agora dataset add --croissant DIR/croissant.json` imports it back.
    Croissant {
        /// NAME or NAME@VERSION (latest by default).
        dataset: String,
        /// The directory to write (created if needed; an earlier export there is replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Build a version's trace index (what `agora trace` searches): its records' tokens, in the
    /// tokenizer of a model, and their suffix array, in one file beside the version
    /// (6 bytes per token; building needs about as much memory). Replaces an earlier index.
    Index {
        /// NAME or NAME@VERSION (latest by default).
        dataset: String,
        /// The model whose tokenizer to use (a stored name or sha256:HEX).
        #[arg(long, default_value = agora_models::DEFAULT_MODEL)]
        tokenizer: String,
        /// Threads tokenizing (the index does not depend on it).
        #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
        threads: usize,
        /// Check the existing index instead (header, version, length and the body's digest).
        #[arg(long)]
        check: bool,
    },
    /// Check a proof file offline and say in one line what it proves.
    Verify {
        /// The proof file.
        proof: PathBuf,
        /// A tlog-policy: also check that the statement is in the log under a checkpoint the
        /// policy trusts (log signature and witness quorum).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// Files or directories: Dolma JSON Lines (`.jsonl`, `.json`, `.ndjson`, optionally `.gz`
    /// or `.zst`), or any other file as one text record whose id is its path. Not with
    /// --croissant, which names the files itself.
    #[arg(required_unless_present = "croissant")]
    pub paths: Vec<PathBuf>,
    /// Import a Croissant dataset (JSON-LD, e.g. what `agora dataset croissant` writes): its
    /// FileObjects are the inputs, local files named relative to FILE's directory (URLs,
    /// absolute paths and `..` are refused) and each checked against its sha256 before
    /// anything is ingested. Name, licence, source (agora:source, url or citeAs) and
    /// contributors (its creators) come from FILE unless given by the flags below.
    #[arg(long, value_name = "FILE", conflicts_with = "paths")]
    pub croissant: Option<PathBuf>,
    /// The dataset's name (letters, digits, `.`, `_`, `-`). Required unless --croissant.
    #[arg(long, required_unless_present = "croissant")]
    pub name: Option<String>,
    /// SPDX licence expression of the data, e.g. `CC-BY-4.0` or `MIT OR Apache-2.0`. Required
    /// unless --croissant.
    #[arg(long, required_unless_present = "croissant")]
    pub license: Option<String>,
    /// Where the data comes from (a URL or a description). Required unless --croissant.
    #[arg(long, required_unless_present = "croissant")]
    pub source: Option<String>,
    /// NAME@VERSION of the dataset this one was derived from.
    #[arg(long, value_name = "NAME@VERSION")]
    pub derived_from: Option<String>,
    /// A contributor credited with the records: KEY or KEY=LABEL (repeatable; with
    /// --croissant, these replace the Croissant file's creators).
    #[arg(long, value_name = "KEY[=LABEL]")]
    pub contributor: Vec<String>,
    /// Count and skip malformed records instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Append the signed statement to this log (e.g. a node's `http://HOST:PORT/log`).
    #[arg(long, value_name = "URL")]
    pub log: Option<String>,
}

pub fn run(home: &Path, cmd: DatasetCommand) -> Result<()> {
    let store = DatasetStore::open(&home.join("datasets"));
    match cmd {
        DatasetCommand::Add(a) => add(home, &store, a),
        DatasetCommand::List => {
            let names = store.names()?;
            if names.is_empty() {
                println!("no datasets yet: add one with `agora dataset add`");
            }
            for n in names {
                let m = store.manifest(&n, None)?;
                println!(
                    "{:<24} v{:<3} {:>10} records {:>12} bytes  {}",
                    m.name, m.version, m.records, m.bytes, m.license
                );
            }
            Ok(())
        }
        DatasetCommand::Show { dataset } => {
            let m = store.find(&dataset)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            Ok(())
        }
        DatasetCommand::Prove {
            dataset,
            id,
            absent,
            out,
        } => {
            let m = store.find(&dataset)?;
            let proof = proof_file(&store, &m, &id, absent)?;
            let text = serde_json::to_string_pretty(&proof)? + "\n";
            match out {
                Some(p) => std::fs::write(&p, text)
                    .with_context(|| format!("cannot write {}", p.display()))?,
                None => print!("{text}"),
            }
            Ok(())
        }
        DatasetCommand::Remove {
            dataset,
            id,
            proofs,
            log,
        } => {
            let old = store.find(&dataset)?;
            let identity = load_identity(home)?;
            let ids: std::collections::BTreeSet<String> = id.into_iter().collect();
            let m = store.remove(&old, &ids, &mut ())?;
            publish(&store, &m, &identity, log.as_deref())?;
            println!(
                "{}: {} records, derived from {} without {} record(s)",
                m.label(),
                m.records,
                old.label(),
                ids.len()
            );
            std::fs::create_dir_all(&proofs)
                .with_context(|| format!("cannot create {}", proofs.display()))?;
            for (i, id) in ids.iter().enumerate() {
                let p = proofs.join(format!("{}-{}-absent-{i}.json", m.name, m.version));
                let proof = proof_file(&store, &m, id, true)?;
                std::fs::write(&p, serde_json::to_string_pretty(&proof)? + "\n")
                    .with_context(|| format!("cannot write {}", p.display()))?;
                println!("  {id:?} is absent: {}", p.display());
            }
            Ok(())
        }
        DatasetCommand::Croissant { dataset, out } => {
            let m = store.find(&dataset)?;
            let signed = store.attached(&m, STATEMENT_FILE)?;
            let file = croissant::export(&store, &m, &out, signed.as_deref())?;
            println!(
                "{}: {} records to {} ({} bytes, sha256 {}) and {}",
                m.label(),
                file.records,
                out.join(croissant::RECORDS_FILE).display(),
                file.bytes,
                file.sha256,
                out.join(croissant::METADATA_FILE).display()
            );
            if !file.numeric.is_empty() {
                eprintln!(
                    "warning: every value of {} reads as a number: mlcroissant (pandas) will load \
                     them as numbers, not the exact strings",
                    file.numeric.join(", ")
                );
            }
            Ok(())
        }
        DatasetCommand::Index {
            dataset,
            tokenizer,
            threads,
            check,
        } => index(home, &store, &dataset, &tokenizer, threads, check),
        DatasetCommand::Verify { proof, policy } => {
            let line = verify(&proof, policy.as_deref())?;
            println!("{line}");
            Ok(())
        }
    }
}

fn index(
    home: &Path,
    store: &DatasetStore,
    dataset: &str,
    tokenizer: &str,
    threads: usize,
    check: bool,
) -> Result<()> {
    use agora_node::trace::{Tokenizers, build_index, index_path, open_index};
    let m = store.find(dataset)?;
    if check {
        let ix = open_index(store, &m)?;
        ix.check_body()?;
        println!(
            "{}: index OK ({} tokens, {} bytes, tokenizer sha256:{})",
            m.label(),
            ix.len(),
            ix.bytes(),
            hex::encode(ix.header().tokenizer)
        );
        return Ok(());
    }
    let models = agora_models::ModelStore::open(home, false)?;
    let weights: agora_core::statement::Sha256 = match tokenizer.strip_prefix("sha256:") {
        Some(h) => h.parse().map_err(|e| anyhow::anyhow!("{tokenizer}: {e}"))?,
        None => models
            .find(tokenizer)?
            .with_context(|| {
                format!("no stored model {tokenizer:?}: `agora model pull {tokenizer}` first")
            })?
            .sha256
            .parse()
            .map_err(|e| anyhow::anyhow!("the store's digest of {tokenizer}: {e}"))?,
    };
    let tok = crate::cmd_trace::StoreTokenizers::new(home)
        .get(&weights)
        .map_err(|e| anyhow::anyhow!(e))?;
    let t0 = Instant::now();
    let mut last = Instant::now();
    let mut text_bytes = 0u64;
    let (h, times) = build_index(
        store,
        &m,
        tok.as_ref(),
        &weights,
        threads,
        &mut |records, bytes| {
            text_bytes = bytes;
            if last.elapsed().as_secs_f64() >= 1.0 {
                last = Instant::now();
                eprint!(
                    "\r  tokenized {records} of {} records, {:.1} MB ({:.1} MB/s)   ",
                    m.records,
                    bytes as f64 / 1e6,
                    bytes as f64 / 1e6 / t0.elapsed().as_secs_f64().max(1e-9)
                );
            }
        },
    )?;
    eprint!("\r{:78}\r", "");
    let path = index_path(store, &m);
    let size = std::fs::metadata(&path).map(|f| f.len()).unwrap_or(0);
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{}: {} records, {} tokens ({:.2} bytes of text per token) indexed in {:.1} s ({:.1} MB of text/s); {} ({:.1} MB, {:.2} bytes per token)",
        m.label(),
        h.records,
        h.tokens - h.records,
        text_bytes as f64 / (h.tokens - h.records).max(1) as f64,
        s,
        text_bytes as f64 / 1e6 / s.max(1e-9),
        path.display(),
        size as f64 / 1e6,
        size as f64 / (h.tokens - h.records).max(1) as f64,
    );
    println!(
        "  read and tokenized in {:.1} s ({threads} threads), suffixes sorted in {:.1} s, written in {:.1} s",
        times.tokenize, times.sort, times.write
    );
    Ok(())
}

/// Prints the ingest's progress every second on stderr.
struct Meter {
    t0: Instant,
    last: Instant,
}

impl Progress for Meter {
    fn update(&mut self, records: u64, bytes: u64) {
        if self.last.elapsed().as_secs_f64() >= 1.0 {
            self.last = Instant::now();
            let s = self.t0.elapsed().as_secs_f64();
            eprint!(
                "\r  {records} records, {:.1} MB ({:.0} MB/s)   ",
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / s.max(1e-9)
            );
        }
    }
}

fn add(home: &Path, store: &DatasetStore, a: AddArgs) -> Result<()> {
    let contributors: Vec<(String, Option<String>)> = a
        .contributor
        .iter()
        .map(|c| match c.split_once('=') {
            Some((k, l)) => (k.to_string(), Some(l.to_string())),
            None => (c.clone(), None),
        })
        .collect();
    let (meta, inputs) = match &a.croissant {
        Some(file) => {
            let (c, dir) = croissant::read(file)
                .with_context(|| format!("cannot import {}", file.display()))?;
            let meta = c.meta(&croissant::Overrides {
                name: a.name.clone(),
                license: a.license.clone(),
                source: a.source.clone(),
                derived_from: a.derived_from.clone(),
                contributors,
            })?;
            check_license(&meta.license).context("the licence")?;
            let inputs = croissant::check_files(&c, &dir)
                .with_context(|| format!("cannot import {}", file.display()))?;
            (meta, inputs)
        }
        None => {
            let (Some(name), Some(license), Some(source)) = (&a.name, &a.license, &a.source) else {
                bail!("--name, --license and --source are required without --croissant");
            };
            check_license(license)?;
            let meta = Meta {
                name: name.clone(),
                license: license.clone(),
                source: source.clone(),
                derived_from: a.derived_from.clone(),
                contributors,
            };
            (meta, a.paths.clone())
        }
    };
    if let Some(d) = &a.derived_from {
        let (n, v) = parse_ref(d)?;
        let v = v.context("--derived-from needs NAME@VERSION")?;
        store
            .manifest(n, Some(v))
            .with_context(|| format!("--derived-from {d}"))?;
    }
    let identity = load_identity(home).context("the statement is signed with this node's key")?;
    let t0 = Instant::now();
    let mut meter = Meter { t0, last: t0 };
    let m = store.ingest(&meta, &inputs, a.skip_bad, &mut meter)?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!();
    println!(
        "{}: {} records, {} bytes in {:.1} s ({:.0} MB/s){}",
        m.label(),
        m.records,
        m.bytes,
        secs,
        m.bytes as f64 / 1e6 / secs.max(1e-9),
        if m.skipped > 0 {
            format!("; {} bad records skipped", m.skipped)
        } else {
            String::new()
        }
    );
    println!("  records root {}", m.record_root);
    println!("  ids root     {}", m.id_root);
    println!("  signed by    {}", identity.peer_id());
    publish(store, &m, &identity, a.log.as_deref())
}

/// Signs the version's statement, stores it beside the version and, with `log`, appends it
/// to that log and records where.
fn publish(
    store: &DatasetStore,
    m: &Manifest,
    identity: &agora_core::Identity,
    log: Option<&str>,
) -> Result<()> {
    let envelope = statement(m)?.sign(identity);
    store.attach(m, STATEMENT_FILE, envelope.to_json().as_bytes())?;
    if let Some(url) = log {
        let index = LogClient::new(url)
            .add(envelope.to_json().as_bytes())
            .with_context(|| format!("appending the statement to {url}"))?;
        store.attach(
            m,
            LOG_FILE,
            json!({"url": url, "index": index}).to_string().as_bytes(),
        )?;
        println!("  logged       {url} entry {index}");
    }
    Ok(())
}

/// Checks a proof file; the one line that says what it proves.
pub fn verify(path: &Path, policy: Option<&Path>) -> Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > MAX_PROOF_FILE {
        bail!("{} is {len} bytes: no proof is that large", path.display());
    }
    let v: Value = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .context("the proof is not JSON")?;
    let policy = policy.map(read_policy).transpose()?;
    agora_data::file::check(&v, policy.as_ref())
        .map(|p| p.line)
        .map_err(anyhow::Error::msg)
}
