//! `agora bench-provenance`: what "was this text produced here?" costs a node that holds a log.
//!
//! A real log store (redb, as `agora node --serve-log` keeps it) is filled with signed receipts
//! carrying text digests, one verdict for every tenth; then the text index is built from it as
//! a node builds it (scanning every entry), and exact lookups are timed, half for texts that
//! are there and half for texts that are not — each confirmed against the stored entry, as the
//! route does. Prints build throughput, lookup percentiles and the index's bytes per receipt.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agora_core::statement::{Receipt, Sha256, Verdict};
use agora_core::{Identity, Statement};
use agora_log::store::LogStore;
use agora_node::text_index::TextIndex;
use agora_tlog::hash::leaf_hash;
use anyhow::{Context, Result, bail};
use clap::Args;

use crate::stats::Percentiles;
use crate::{cpu_name, num_cores};

#[derive(Args, Debug)]
pub struct BenchProvenanceArgs {
    /// Receipts in the log.
    #[arg(long, default_value_t = 1_000_000)]
    pub receipts: u64,
    /// Lookups timed (half found, half not).
    #[arg(long, default_value_t = 20_000)]
    pub lookups: u64,
    /// Where the log is built (kept for the next run with the same --receipts).
    #[arg(long, default_value = "/var/tmp/agora-bench/provenance")]
    pub dir: PathBuf,
}

/// The text of receipt `i` (its digest is what the receipt carries).
fn text(i: u64) -> String {
    format!("Answer number {i}: the quick brown fox jumps over the lazy dog.")
}

pub fn run(a: BenchProvenanceArgs) -> Result<()> {
    if a.receipts == 0 || a.lookups == 0 {
        bail!("--receipts and --lookups must be at least 1");
    }
    std::fs::create_dir_all(&a.dir)?;
    let path = a.dir.join(format!("log-{}.redb", a.receipts));
    let origin = "agora.bench/provenance";
    let (store, mut frontier) = LogStore::open(&path, origin, &[0; 32], false)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut size = store.size()?;
    let verdicts = a.receipts / 10;
    let want = a.receipts + verdicts;
    if size != want && size != 0 {
        bail!(
            "{} holds {size} entries, not {want}: remove it and run again",
            path.display()
        );
    }
    if size == 0 {
        fill(&store, &mut frontier, a.receipts)?;
        size = store.size()?;
    }
    let bytes = store.entry_bytes();

    // The index, built as a node builds it.
    let index = TextIndex::default();
    let t0 = Instant::now();
    index.catch_up(size, &store).map_err(anyhow::Error::msg)?;
    let build = t0.elapsed();

    // Lookups: even ones for logged texts, odd ones for texts nobody generated.
    let mut found = Vec::new();
    let mut absent = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..a.lookups {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let i = state % a.receipts;
        let (digest, expect) = if n % 2 == 0 {
            (agora_core::text::digest(&text(i))?, true)
        } else {
            (
                agora_core::text::digest(&format!("nobody wrote {i}"))?,
                false,
            )
        };
        let t = Instant::now();
        let (hits, _) = index.find(&digest, &store).map_err(anyhow::Error::msg)?;
        let took = t.elapsed();
        if hits.is_empty() == expect {
            bail!(
                "lookup {n}: found {} receipts, expected {expect}",
                hits.len()
            );
        }
        if expect && i.is_multiple_of(10) != (hits[0].verdicts.len() == 1) {
            bail!("lookup {n}: the verdict of receipt {i} was not returned");
        }
        if expect {
            found.push(took);
        } else {
            absent.push(took);
        }
    }
    let (found, absent) = (Percentiles::of(found), Percentiles::of(absent));
    let index_bytes = 16 * (a.receipts + verdicts);
    println!(
        "\nmachine: {}, {} cores; one thread; a redb log store of {size} entries ({} receipts, {verdicts} verdicts, {:.0} MB of entries) at {}",
        cpu_name(),
        num_cores(),
        a.receipts,
        bytes as f64 / 1e6,
        path.display()
    );
    println!("\n| text provenance | figure |");
    println!("|---|---|");
    println!(
        "| index build (scan of every entry) | {:.1} s: {:.0} entries/s, {:.1} MB/s of log |",
        build.as_secs_f64(),
        size as f64 / build.as_secs_f64(),
        bytes as f64 / 1e6 / build.as_secs_f64()
    );
    let row = |label: &str, p: &Percentiles| {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {label} | p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n={}) |",
            ms(p.p50),
            ms(p.p99),
            ms(p.max),
            p.count
        );
    };
    row(
        "exact lookup, text logged (receipt + verdicts read)",
        &found,
    );
    row("exact lookup, text not logged", &absent);
    println!(
        "| index memory | {:.1} MB (16 bytes per receipt or verdict) |",
        index_bytes as f64 / 1e6
    );
    Ok(())
}

/// Appends `receipts` signed receipts with text digests to `store`, and a verdict on every
/// tenth.
fn fill(store: &LogStore, frontier: &mut agora_tlog::tile::Frontier, receipts: u64) -> Result<()> {
    let worker = Identity::from_seed(&[1; 32]);
    let validator = Identity::from_seed(&[2; 32]);
    let t0 = Instant::now();
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(1100);
    let flush = |batch: &mut Vec<Vec<u8>>, frontier: &mut _| -> Result<()> {
        let leaves: Vec<(&[u8], agora_tlog::hash::Hash)> =
            batch.iter().map(|e| (e.as_slice(), leaf_hash(e))).collect();
        store.append(frontier, &leaves)?;
        batch.clear();
        Ok(())
    };
    for i in 0..receipts {
        let digest = agora_core::text::digest(&text(i))?;
        let receipt = Statement::Receipt(Receipt {
            model: Sha256([7; 32]),
            request: Sha256::of(&i.to_be_bytes()),
            output: Sha256::of(text(i).as_bytes()),
            seed: i,
            prompt_tokens: 300,
            completion_tokens: 64,
            proof: Sha256([9; 32]),
            worker: worker.peer_id(),
            time: 1_796_000_000 + i,
            resumed: 0,
            text: Some(digest),
            fingerprint: None,
            unverifiable: false,
        })
        .sign(&worker);
        let payload_digest = Sha256::of(&receipt.payload);
        batch.push(receipt.to_json().into_bytes());
        if i.is_multiple_of(10) {
            let v = Statement::Verdict(Verdict {
                receipt: payload_digest,
                worker: Some(worker.peer_id()),
                validator: validator.peer_id(),
                accept: true,
                stats: Default::default(),
                reason: None,
                time: 1_796_000_000 + i,
            })
            .sign(&validator);
            batch.push(v.to_json().into_bytes());
        }
        if batch.len() >= 1000 {
            flush(&mut batch, frontier)?;
        }
        if (i + 1).is_multiple_of(100_000) {
            eprintln!(
                "{} receipts logged ({:.0} s)",
                i + 1,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    flush(&mut batch, frontier)?;
    eprintln!(
        "log of {} entries written in {:.0} s",
        store.size()?,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
