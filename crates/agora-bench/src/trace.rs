//! `agora bench-trace`: what tracing a text back to a dataset costs, in one run.
//!
//! 1. A generated corpus (JSON Lines, 1 GB by default: sentences of made-up words drawn from a
//!    Zipf distribution over 50,000 of them, so the tokenizer sees a realistic mix of short
//!    and long words) is ingested by `agora dataset add`.
//! 2. `agora dataset index` builds its trace index with the default model's tokenizer: wall
//!    time, throughput per core, peak resident memory, index bytes per token.
//! 3. Traces of 500-token texts, each half a record's passage and half new text, through the
//!    node's own code path (tokenize, maximal spans, records read and confirmed, inclusion
//!    proofs made): median and p90 latency, and the spans found.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use agora_datastore::DatasetStore;
use agora_datastore::store::Manifest;
use agora_node::trace::Tracer;
use agora_trace::report::Request;
use anyhow::{Context, Result};
use clap::Args;

use crate::tokenizers::StoreTokenizers;
use crate::{cpu_name, num_cores, proc};

#[derive(Args, Debug)]
pub struct BenchTraceArgs {
    /// Size of the generated corpus, in MB.
    #[arg(long, default_value_t = 1024)]
    pub size_mb: u64,
    /// Where the corpus is generated (kept for the next run) and the dataset stored.
    #[arg(long, default_value = "/var/tmp/agora-corpus/trace")]
    pub dir: PathBuf,
    /// Texts traced.
    #[arg(long, default_value_t = 21)]
    pub queries: usize,
    /// Threads tokenizing the index.
    #[arg(long, default_value_t = num_cores())]
    pub threads: usize,
}

/// A deterministic generator (xorshift64*): the same corpus on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const SYLLABLES: &[&str] = &[
    "ka", "to", "ri", "mel", "an", "sor", "ve", "lin", "da", "pra", "quo", "ne", "thi", "gal",
    "or", "us", "ber", "fi", "cla", "mon", "dre", "ap", "ist", "ur", "wen", "zo", "hal", "em",
    "str", "oi", "cen", "ty", "lo", "ma", "gre", "ex", "vi", "pol", "ne", "sa",
];

/// 50,000 made-up words, most frequent first.
fn words() -> Vec<String> {
    let mut rng = Rng(0x5EED_0FC0_FFEE);
    let mut out = Vec::with_capacity(50_000);
    let mut seen = std::collections::HashSet::new();
    while out.len() < 50_000 {
        let n = 1 + (rng.next() % 4) as usize;
        let w: String = (0..n)
            .map(|_| SYLLABLES[(rng.next() % SYLLABLES.len() as u64) as usize])
            .collect();
        if seen.insert(w.clone()) {
            out.push(w);
        }
    }
    out
}

/// A Zipf(1) sampler over `n` ranks (inverse of the cumulative harmonic sums).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut s = 0.0;
        for k in 1..=n {
            s += 1.0 / k as f64;
            cdf.push(s);
        }
        for c in &mut cdf {
            *c /= s;
        }
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// `bytes` of sentences.
fn prose(rng: &mut Rng, words: &[String], zipf: &Zipf, bytes: usize) -> String {
    let mut t = String::with_capacity(bytes + 64);
    let mut start = true;
    while t.len() < bytes {
        let w = &words[zipf.sample(rng)];
        if start {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                t.extend(f.to_uppercase());
                t.push_str(c.as_str());
            }
            start = false;
        } else {
            t.push_str(w);
        }
        match rng.next() % 16 {
            0 => {
                t.push_str(". ");
                start = true;
            }
            1 => t.push_str(", "),
            _ => t.push(' '),
        }
    }
    t.trim_end().to_string()
}

fn generate(path: &Path, bytes: u64) -> Result<u64> {
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let (words, zipf) = (words(), Zipf::new(50_000));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut written, mut i) = (0u64, 0u64);
    while written < bytes {
        let len = 500 + (rng.next() % 3000) as usize;
        let line = serde_json::json!({
            "id": format!("doc-{i:09}"),
            "text": prose(&mut rng, &words, &zipf, len),
            "source": "agora bench-trace",
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

/// Runs an `agora` child to its end: its stdout, wall seconds and peak resident memory.
fn run_child(home: &Path, args: &[&str]) -> Result<(String, f64, u64)> {
    let mut cmd = proc::agora(home)?;
    cmd.args(args);
    let (took, rss, out) = crate::dataset::timed(cmd)?;
    Ok((out, took.as_secs_f64(), rss))
}

/// What the traces measured.
struct Queries {
    /// Seconds per trace (the first, a warm-up, left out).
    times: Vec<f64>,
    /// Spans found in all.
    spans: usize,
    /// Texts whose passage's record was found.
    recalled: usize,
    /// Tokens of all texts.
    tokens: usize,
}

/// `n` traces of texts each made of a random record's passage (~250 tokens) and as much new
/// text, through the node's code path.
fn queries(home: &Path, store: &DatasetStore, m: &Manifest, n: usize) -> Result<Queries> {
    let tokenizers = Arc::new(StoreTokenizers::new(home));
    let tok = agora_node::trace::Tokenizers::get(
        tokenizers.as_ref(),
        &agora_core::statement::Sha256(agora_node::trace::open_index(store, m)?.header().tokenizer),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let tracer = Tracer::new(home, tokenizers);
    let mut query_tokens = 0usize;
    let (words, zipf) = (words(), Zipf::new(50_000));
    let mut rng = Rng(0xA5A5_5A5A_1234_5678);
    let mut times = Vec::new();
    let mut spans = 0usize;
    let mut recalled = 0usize;
    for q in 0..n {
        let r = rng.next() % m.records;
        let rec = store.records_at(m, &[r], usize::MAX)?[0]
            .clone()
            .context("the record was not read")?;
        let words_in: Vec<&str> = rec.text.split(' ').collect();
        let from = (rng.next() % (words_in.len() / 2).max(1) as u64) as usize;
        let passage: String = words_in[from..]
            .iter()
            .scan(0usize, |len, w| {
                *len += w.len() + 1;
                (*len <= 620).then_some(*w)
            })
            .collect::<Vec<_>>()
            .join(" ");
        let fresh = prose(&mut rng, &words, &zipf, 620);
        let text = format!("{fresh} {passage}");
        query_tokens += tok.tokenize(&text).len();
        let req = Request {
            text: text.clone(),
            datasets: vec!["bench".into()],
            min_tokens: None,
            max_count: None,
        };
        let t0 = Instant::now();
        let t = tracer.trace(&req)?;
        let took = t0.elapsed().as_secs_f64();
        if q > 0 {
            times.push(took); // the first warms the tokenizer and the page cache
        }
        spans += t.spans.len();
        if t.spans.iter().any(|s| {
            s.records
                .contains(&agora_trace::report::record_key(&m.label(), r))
        }) {
            recalled += 1;
        }
    }
    Ok(Queries {
        times,
        spans,
        recalled,
        tokens: query_tokens,
    })
}

pub fn run(shared_home: &Path, a: BenchTraceArgs) -> Result<()> {
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
    let home = a.dir.join(format!("home-{}mb", a.size_mb));
    let store = DatasetStore::open(&home.join("datasets"));
    if !home.join("models").exists() {
        std::fs::create_dir_all(&home)?;
        std::os::unix::fs::symlink(shared_home.join("models"), home.join("models"))
            .context("linking the model store")?;
    }
    if store.manifest("bench", None).is_err() {
        eprintln!("agora dataset add…");
        proc::init_key(&home)?;
        let (_, t, _) = run_child(
            &home,
            &[
                "dataset",
                "add",
                corpus.to_str().context("corpus path")?,
                "--name",
                "bench",
                "--license",
                "CC0-1.0",
                "--source",
                "generated",
            ],
        )?;
        eprintln!("  ingested in {t:.1} s");
    }
    let m = store.manifest("bench", None)?;
    eprintln!("agora dataset index ({} threads)…", a.threads);
    let threads = a.threads.to_string();
    let (out, build_s, build_rss) =
        run_child(&home, &["dataset", "index", "bench", "--threads", &threads])?;
    let ix = agora_node::trace::open_index(&store, &m)?;
    let tokens = ix.len() - ix.header().records;
    let index_bytes = ix.bytes();
    drop(ix);
    let text_bytes: u64 = {
        // the figure `dataset index` printed: "(N MB of text/s)" needs the text size; recount
        let mut n = 0u64;
        store.for_each_record(&m, &mut |r| {
            n += r.text.len() as u64;
            Ok(())
        })?;
        n
    };

    let q = queries(&home, &store, &m, a.queries)?;
    let (mut times, spans, recalled, query_tokens) = (q.times, q.spans, q.recalled, q.tokens);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
    let mb = text_bytes as f64 / 1e6;
    println!("{}", out.trim_end());
    println!();
    println!(
        "agora bench-trace: {} ({} cores, {} tokenizing threads); generated corpus of {:.0} MB of text, {} records, {} tokens (default model's tokenizer)",
        cpu_name(),
        num_cores(),
        a.threads,
        mb,
        m.records,
        tokens
    );
    println!();
    println!("| measure | value | target |");
    println!("|---|---:|---|");
    println!(
        "| index build (tokenize, suffix array, write) | {build_s:.1} s = {:.1} MB/s = {:.1} MB/s per core | ≥ 10 MB/s per core |",
        mb / build_s,
        mb / build_s / a.threads.max(1) as f64
    );
    println!(
        "| peak resident memory of the build | {:.0} MB | (6 bytes per token + a batch) |",
        build_rss as f64 / 1e6
    );
    println!(
        "| index size | {:.0} MB = {:.2} bytes per token | ≤ 7 bytes per token |",
        index_bytes as f64 / 1e6,
        index_bytes as f64 / tokens.max(1) as f64
    );
    println!(
        "| trace of a {}-token text (half a record's passage, half new), {} texts | median {:.0} ms, p90 {:.0} ms | ≤ 1 s median |",
        query_tokens / a.queries.max(1),
        times.len(),
        median * 1e3,
        p90 * 1e3
    );
    println!(
        "| the passage's record found | {recalled} of {} texts ({spans} spans in all) | |",
        a.queries
    );
    Ok(())
}
