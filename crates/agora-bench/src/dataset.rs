//! `agora bench-dataset`: what datasets cost, in one run, with the floor they are compared to.
//!
//! 1. Ingest throughput of a generated corpus (JSON Lines, ≥ 1 GB by default) by `agora dataset
//!    add` in a child process, against `sha256sum` of the same bytes (the floor any hashing
//!    ingest pays), and the ingest's peak resident memory.
//! 2. Record-proof verifications per second on one core.
//! 3. The size of a record proof in a dataset of a million records.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agora_data::{Record, Trees};
use agora_datastore::DatasetStore;
use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{cpu_name, num_cores, proc};

#[derive(Args, Debug)]
pub struct BenchDatasetArgs {
    /// Size of the generated corpus, in MB.
    #[arg(long, default_value_t = 1024)]
    pub size_mb: u64,
    /// Where the corpus is generated (kept for the next run).
    #[arg(long, default_value = "/var/tmp/agora-corpus/bench")]
    pub dir: PathBuf,
    /// Records of the dataset whose proof size is reported.
    #[arg(long, default_value_t = 1_000_000)]
    pub proof_records: u64,
}

/// Words the generated texts are made of.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "data",
    "model",
    "network",
    "people",
    "open",
    "record",
    "proof",
    "tree",
    "answer",
    "question",
    "community",
    "language",
    "river",
    "mountain",
    "library",
    "garden",
    "window",
    "morning",
    "evening",
    "history",
];

/// Writes a deterministic JSON Lines corpus of about `bytes` bytes (records of ~1 KiB).
fn generate(path: &Path, bytes: u64) -> Result<u64> {
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut written = 0u64;
    let mut i = 0u64;
    let mut text = String::new();
    while written < bytes {
        text.clear();
        while text.len() < 1000 {
            // xorshift64*: a fixed sequence of words, the same on every machine.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            text.push_str(WORDS[(r >> 33) as usize % WORDS.len()]);
            text.push(' ');
        }
        let line = serde_json::json!({
            "id": format!("doc-{i:09}"),
            "text": text.trim_end(),
            "source": "agora bench-dataset",
        })
        .to_string();
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")?;
        written += line.len() as u64 + 1;
        i += 1;
    }
    w.flush()?;
    std::fs::rename(&tmp, path)?;
    Ok(i)
}

/// Runs `cmd` to its end; its wall time and peak resident memory (bytes).
pub(crate) fn timed(mut cmd: Command) -> Result<(Duration, u64, String)> {
    let t0 = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the command")?;
    let pid = child.id() as libc::pid_t;
    let out = {
        // Reaped by wait4 below, which reports its peak memory; read its output first.
        let mut child = child;
        let mut stdout = String::new();
        if let Some(mut s) = child.stdout.take() {
            use std::io::Read;
            s.read_to_string(&mut stdout)?;
        }
        let mut stderr = String::new();
        if let Some(mut s) = child.stderr.take() {
            use std::io::Read;
            s.read_to_string(&mut stderr)?;
        }
        // Dropping a Child neither waits for nor kills it: wait4 reaps it.
        drop(child);
        (stdout, stderr)
    };
    let mut status = 0;
    // SAFETY: wait4 on our own child's pid with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = t0.elapsed();
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("the command failed: {}", out.1.trim());
    }
    Ok((took, usage.ru_maxrss as u64 * 1024, out.0))
}

pub fn run(a: BenchDatasetArgs) -> Result<()> {
    std::fs::create_dir_all(&a.dir)?;
    let corpus = a.dir.join(format!("corpus-{}mb.jsonl", a.size_mb));
    if !corpus.exists() {
        eprintln!(
            "generating a {} MB corpus at {}…",
            a.size_mb,
            corpus.display()
        );
        generate(&corpus, a.size_mb * 1_000_000)?;
    }
    let bytes = std::fs::metadata(&corpus)?.len();
    let mb = bytes as f64 / 1e6;
    // Warm the page cache so that both read the same cached bytes.
    timed({
        let mut c = Command::new("cat");
        c.arg(&corpus).stdout(Stdio::null());
        c
    })?;

    eprintln!("sha256sum of the corpus…");
    let (sha_t, _, _) = timed({
        let mut c = Command::new("sha256sum");
        c.arg(&corpus);
        c
    })?;

    eprintln!("agora dataset add…");
    let home = tempfile::Builder::new()
        .prefix("agora-bench-dataset-")
        .tempdir_in(&a.dir)?;
    proc::init_key(home.path())?;
    let (ingest_t, ingest_rss, out) = timed({
        let mut c = proc::agora(home.path())?;
        c.args(["dataset", "add"]).arg(&corpus).args([
            "--name",
            "bench",
            "--license",
            "CC0-1.0",
            "--source",
            "generated",
        ]);
        c
    })?;
    let records = out
        .lines()
        .next()
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);

    // Proof verifications per second, one core, on a proof from the ingested dataset.
    let store = DatasetStore::open(&home.path().join("datasets"));
    let m = store.manifest("bench", None)?;
    let roots = m.roots()?;
    let proof = store.prove(&m, &format!("doc-{:09}", records / 2))?;
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(2) {
        for _ in 0..1000 {
            proof.verify(&roots)?;
        }
        n += 1000;
    }
    let verify_rate = n as f64 / t0.elapsed().as_secs_f64();

    // Proof size at a million records.
    let big: Vec<Record> = (0..a.proof_records)
        .map(|i| Record::new(format!("r{i}"), "x"))
        .collect();
    let trees = Trees::of(&big)?;
    let p = trees.prove(a.proof_records / 3, &big[(a.proof_records / 3) as usize])?;
    let path_bytes = p.path.len() * 32;
    let bound = 32 * (a.proof_records as f64).log2().ceil() as usize;
    drop((trees, big));

    let sha_rate = mb / sha_t.as_secs_f64();
    let ingest_rate = mb / ingest_t.as_secs_f64();
    println!();
    println!(
        "agora bench-dataset: {} ({} cores); corpus {:.0} MB of JSON Lines, {} records of ~1 KiB, in the page cache",
        cpu_name(),
        num_cores(),
        mb,
        records
    );
    println!();
    println!("| measure | value | target |");
    println!("|---|---:|---|");
    println!("| `sha256sum` of the corpus | {sha_rate:.0} MB/s | (the floor) |");
    println!(
        "| `agora dataset add` (parse, canonical bytes, two trees, zstd shards, fsync) | {ingest_rate:.0} MB/s = **{:.2}×** sha256sum | ≥ 150 MB/s and ≥ 0.5× |",
        ingest_rate / sha_rate
    );
    println!(
        "| peak resident memory of the ingest | {:.0} MB | ≤ 300 MB |",
        ingest_rss as f64 / 1e6
    );
    println!("| record-proof verifications, one core | {verify_rate:.0}/s | ≥ 200,000/s |");
    println!(
        "| record proof at {} records | {} path bytes + the record ({} bytes here) | ≤ {bound} + the record |",
        a.proof_records,
        path_bytes,
        p.record.len()
    );
    Ok(())
}
