//! `agora log bench`: durable appends/s, append-to-checkpoint latency, inclusion-proof
//! verifications/s and tile reads/s on this machine, printed with their conditions and compared
//! with the targets of issue 3.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agora_api::keepalive::Conn;

use crate::hammer::{self, HammerConfig, HammerReport};
use agora_log::{Log, LogConfig};
use agora_tlog::hash::leaf_hash;
use agora_tlog::merkle;
use agora_tlog::tile::{TileHashSource, TilePath};
use bytes::Bytes;
use clap::Args;

use crate::parse_duration;

const TARGET_APPENDS: f64 = 20_000.0;
const TARGET_P99: Duration = Duration::from_millis(1500);
const TARGET_VERIFY: f64 = 200_000.0;

fn check(ok: bool) -> &'static str {
    if ok { "meets target" } else { "BELOW target" }
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    print_conditions(&a, cores);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // 1. Sustained durable appends (then 3 and 4 on the log it filled).
    let dir1 = tempfile::tempdir_in(&a.dir)?;
    let (thr, size, verify_rate, tile_rate) = rt.block_on(throughput_phases(&a, dir1.path()))?;
    drop(dir1);

    // 2. Latency at a fixed rate, fresh log.
    let dir2 = tempfile::tempdir_in(&a.dir)?;
    let lat: HammerReport = rt.block_on(fixed_rate_latency(&a, dir2.path()))?;

    Summary {
        cores,
        size,
        thr,
        lat,
        verify_rate,
        tile_rate,
    }
    .print(&a);
    Ok(())
}

/// The header: the machine, the database and the setting of every run.
fn print_conditions(a: &BenchArgs, cores: usize) {
    println!("agora log bench");
    println!(
        "conditions: {cores} cores ({}), database in {} (redb, durable commit per batch, quick-repair on),",
        crate::cpu_name(),
        a.dir.display()
    );
    println!(
        "  load generator and log in one process over loopback HTTP/1.1 keep-alive; 512-byte unique entries;"
    );
    println!(
        "  checkpoint interval 1 s, no witnesses; sequencer batch <= 16384 entries, wait 2 ms"
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "  load average before the run (1/5/15 min): {} (other work on the machine lowers every figure)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// [1] sustained appends on a fresh log, then [3] proof verifications and [4] tile reads on
/// the tree it built. Returns the append report, the tree size and the two rates.
async fn throughput_phases(
    a: &BenchArgs,
    dir: &Path,
) -> anyhow::Result<(HammerReport, u64, f64, f64)> {
    let (log, addr, stop) =
        start_log(dir, LogConfig::new("bench.agora/log").unrestricted()).await?;
    println!(
        "\n[1] sustained appends: {} connections, as fast as possible, {:.0} s",
        a.concurrency,
        a.duration.as_secs_f64()
    );
    let report = hammer::run(HammerConfig {
        url: format!("http://{addr}"),
        count: 0,
        rate: 0.0,
        concurrency: a.concurrency,
        size: 512,
        duration: Some(a.duration),
        seed: 1,
        record: None,
        checkpoint_latency: true,
    })
    .await?;
    print!("{report}");
    let size = log.head().size;

    // 3. Inclusion-proof verifications on one core.
    println!("\n[3] inclusion-proof verifications on one thread, tree of {size} leaves");
    let verify_rate = inclusion_verifications(&log, size.max(1)).await?;

    // 4. Tile reads over HTTP.
    let full_tiles = size / 256;
    println!(
        "\n[4] tile reads over HTTP: 64 connections, random full level-0 tiles of {full_tiles}, 5 s"
    );
    let tile_rate = tile_reads(addr, full_tiles).await;
    println!("{tile_rate:.0} tile reads/s (8 KiB each)");
    let _ = stop.send(());
    tokio::task::spawn_blocking(move || log.shutdown()).await?;
    Ok((report, size, verify_rate, tile_rate))
}

/// Verifies 2048 inclusion proofs of random leaves of a tree of `store_size`, over and over for
/// 2 s on one blocking thread; prints and returns the verifications per second.
async fn inclusion_verifications(log: &Log, store_size: u64) -> anyhow::Result<f64> {
    let (proofs, root) = {
        let src = TileHashSource {
            reader: log.store(),
            size: store_size,
        };
        let root = merkle::root(&src, store_size)?;
        let mut proofs = Vec::new();
        let mut x = 0x9e3779b97f4a7c15u64;
        for _ in 0..2048 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = x % store_size;
            let entry = log.store().entry(i)?.unwrap_or_default();
            proofs.push((
                i,
                leaf_hash(&entry),
                merkle::inclusion_proof(&src, i, store_size)?,
            ));
        }
        (proofs, root)
    };
    let verify_rate = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_secs(2) {
            for (i, leaf, p) in &proofs {
                if merkle::verify_inclusion(*i, store_size, leaf, p, &root).is_ok() {
                    n += 1;
                }
            }
        }
        n as f64 / t.elapsed().as_secs_f64()
    })
    .await?;
    println!(
        "{verify_rate:.0} verifications/s ({} hashes per proof)",
        merkle::inclusion_proof(
            &TileHashSource {
                reader: log.store(),
                size: store_size
            },
            0,
            store_size
        )?
        .len()
    );
    Ok(verify_rate)
}

/// Full level-0 tiles (of `full_tiles`) read per second over 64 connections for 5 s (0 when
/// there is no full tile).
async fn tile_reads(addr: SocketAddr, full_tiles: u64) -> f64 {
    if full_tiles == 0 {
        return 0.0;
    }
    let count = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let (count, host) = (count.clone(), addr.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(&host);
            let mut x = w.wrapping_mul(0x9e3779b97f4a7c15) | 1;
            while Instant::now() < end {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let path = format!("/{}", TilePath::hashes(0, x % full_tiles, 256).to_path());
                if let Ok((200, body)) = conn.request("GET", &path, Bytes::new()).await
                    && body.len() == 8192
                {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    count.load(Ordering::Relaxed) as f64 / 5.0
}

/// [2] append-to-checkpoint latency at a fixed rate for 10 s, on a fresh log.
async fn fixed_rate_latency(a: &BenchArgs, dir: &Path) -> anyhow::Result<HammerReport> {
    let (log, addr, stop) =
        start_log(dir, LogConfig::new("bench.agora/log").unrestricted()).await?;
    println!(
        "\n[2] latency at a fixed {:.0} entries/s for 10 s, 1 s checkpoint interval",
        a.latency_rate
    );
    let r = hammer::run(HammerConfig {
        url: format!("http://{addr}"),
        count: 0,
        rate: a.latency_rate,
        concurrency: 256,
        size: 512,
        duration: Some(Duration::from_secs(10)),
        seed: 2,
        record: None,
        checkpoint_latency: true,
    })
    .await?;
    print!("{r}");
    let _ = stop.send(());
    tokio::task::spawn_blocking(move || log.shutdown()).await?;
    Ok(r)
}

/// Every figure of the run, compared with the targets.
struct Summary {
    cores: usize,
    /// The log's size after [1].
    size: u64,
    /// [1]'s report.
    thr: HammerReport,
    /// [2]'s report.
    lat: HammerReport,
    verify_rate: f64,
    tile_rate: f64,
}

impl Summary {
    fn print(&self, a: &BenchArgs) {
        let (thr, verify_rate, tile_rate) = (&self.thr, self.verify_rate, self.tile_rate);
        let p99_max = thr.inclusion_latency.as_ref().map(|p| p.p99);
        let p99_rate = self.lat.inclusion_latency.as_ref().map(|p| p.p99);
        println!(
            "\nsummary ({} cores; log size after [1]: {} entries)",
            self.cores, self.size
        );
        println!(
            "  durable appends/s (512 B, {} conns):       {:>9.0}   target >= {:.0}: {}",
            a.concurrency,
            thr.acked_per_sec(),
            TARGET_APPENDS,
            check(thr.acked_per_sec() >= TARGET_APPENDS)
        );
        if let Some(p) = p99_rate {
            println!(
                "  p99 append -> checkpoint at {:>6.0}/s:     {:>9.3} s target <= {:.1} s: {}",
                a.latency_rate,
                p.as_secs_f64(),
                TARGET_P99.as_secs_f64(),
                check(p <= TARGET_P99)
            );
        }
        if let Some(p) = p99_max {
            println!(
                "  p99 append -> checkpoint at max rate:     {:>9.3} s target <= {:.1} s: {}",
                p.as_secs_f64(),
                TARGET_P99.as_secs_f64(),
                check(p <= TARGET_P99)
            );
        }
        println!(
            "  inclusion-proof verifications/s, 1 core:  {:>9.0}   target >= {:.0}: {}",
            verify_rate,
            TARGET_VERIFY,
            check(verify_rate >= TARGET_VERIFY)
        );
        println!("  tile reads/s over HTTP (64 conns):        {tile_rate:>9.0}   (no target)");
        println!(
            "  peer: Tessera's POSIX backend publishes about 10,000 appends/s on 7 cores (its published figure; not measured here)"
        );
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Seconds of sustained appends
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent connections of the load generator
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// Rate of the latency run (entries/s)
    #[arg(long, default_value_t = 10_000.0)]
    pub latency_rate: f64,
    /// Directory for the temporary database
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
}

/// Start a log in-process on a free loopback port (used by the benchmark).
pub async fn start_log(
    dir: &Path,
    config: LogConfig,
) -> anyhow::Result<(Log, SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let id = agora_core::Identity::generate(&mut rand::rngs::OsRng);
    let log = Log::open(&dir.join("log.redb"), &id, config, None)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = log.clone();
    tokio::spawn(async move {
        // The benchmark's own load: many connections, no header deadline worth the name.
        let cfg = agora_api::ApiConfig {
            max_connections: 4096,
            ..agora_api::ApiConfig::default()
        };
        let _ = agora_api::serve_log(listener, served, &cfg, async {
            let _ = rx.await;
        })
        .await;
    });
    Ok((log, addr, tx))
}
