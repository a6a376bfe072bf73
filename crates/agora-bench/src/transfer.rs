//! `agora bench-transfer`: how fast a model comes from peers, against a plain TCP copy of the
//! same file on the same loopback, and how much memory the fetching process needs.
//!
//! For 1, 2 and 3 peers holding the model (`agora node --no-worker`, sharing this machine's
//! store), a fresh `agora model pull sha256:…` into an empty store is timed (wall time of the
//! whole command: joining the network, finding providers, the chunk list, every chunk checked
//! and written, the whole file's digest, the store's rename), with its peak RSS (`wait4`). The
//! baseline, run alternately in the same run: the file sent over one TCP connection on
//! loopback and written to a file in the same directory, then fsynced.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use agora_models::store::ModelStore;
use anyhow::{Context, Result, bail};
use clap::Args;

use crate::proc;

#[derive(Args, Debug)]
pub struct BenchTransferArgs {
    /// Model to transfer (a catalog name or a stored model).
    #[arg(long, default_value = "gemma3-270m")]
    pub model: String,
    /// Transfers measured per setting (the median is printed).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Most peers to fetch from (each count from 1 up to it is measured).
    #[arg(long, default_value_t = 3)]
    pub max_peers: usize,
}

/// One pull: wall seconds and peak RSS in bytes.
fn pull(sha256: &str, boot: &str, dir: &Path) -> Result<(f64, u64)> {
    let home = tempfile::tempdir_in(dir)?;
    let mut cmd = proc::agora(home.path())?;
    cmd.args(["model", "pull", &format!("sha256:{sha256}")])
        .args(["--no-mdns", "--bootstrap", boot])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("starting agora model pull")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let (status, maxrss_kb) = wait4(child.id() as i32)?;
    let secs = t0.elapsed().as_secs_f64();
    let lines = lines.join().unwrap_or_default();
    if status != 0 {
        bail!("agora model pull failed:\n{}", lines.join("\n"));
    }
    Ok((secs, maxrss_kb * 1024))
}

/// Waits for `pid` (a child of this process): its exit status and peak RSS in KiB.
fn wait4(pid: i32) -> Result<(i32, u64)> {
    let mut status = 0i32;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with pointers to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, usage.ru_maxrss.max(0) as u64))
}

/// The file sent over one loopback TCP connection and written to `dir`, then fsynced.
fn tcp_copy(file: &Path, dir: &Path) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let src = file.to_path_buf();
    let server = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut f = std::fs::File::open(src)?;
        std::io::copy(&mut f, &mut s)
    });
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    let out = dir.join("tcp-copy.gguf");
    let mut f = std::fs::File::create(&out)?;
    std::io::copy(&mut s, &mut f)?;
    f.sync_all()?;
    let secs = t0.elapsed().as_secs_f64();
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the TCP sender panicked"))??;
    std::fs::remove_file(&out)?;
    Ok(secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn run(home: &Path, a: BenchTransferArgs) -> Result<()> {
    if a.rounds == 0 || a.max_peers == 0 {
        bail!("--rounds and --max-peers must be at least 1");
    }
    let store = ModelStore::open(home, true)?;
    let model = store.resolve_or_fetch(&a.model)?;
    let size = std::fs::metadata(&model.path)?.len();
    let models = store.root().to_path_buf();
    // Fresh stores and the TCP copy's file go where the store is (the same disk).
    let work = tempfile::tempdir_in(store.root().join("tmp"))?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "bench-transfer: {} ({} MB), {} cores, loopback, {} rounds per setting (median)",
        model.name,
        size / 1_000_000,
        cores,
        a.rounds
    );
    println!(
        "{:<8} {:>9} {:>9} {:>11} {:>9} {:>14}",
        "PEERS", "PULL s", "MB/s", "TCP COPY s", "RATIO", "PEAK RSS MiB"
    );
    let mut peers: Vec<proc::Node> = Vec::new();
    let mut homes = Vec::new();
    for n in 1..=a.max_peers {
        while peers.len() < n {
            let h = tempfile::tempdir()?;
            std::os::unix::fs::symlink(&models, h.path().join("models"))?;
            let mut args: Vec<String> = [
                "--no-worker",
                "--listen",
                "127.0.0.1:0",
                "--no-mdns",
                "--p2p-listen",
                "/ip4/127.0.0.1/tcp/0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(first) = peers.first() {
                args.extend([
                    "--bootstrap".to_string(),
                    first.ready.p2p_addr()?.to_string(),
                ]);
            }
            peers.push(proc::start_node("peer", h.path(), &args, None)?);
            homes.push(h);
        }
        // The pull bootstraps from the last peer started, so that all must be found.
        let boot = peers[n - 1].ready.p2p_addr()?.to_string();
        std::thread::sleep(Duration::from_secs(2));
        // A warm-up pull, unmeasured (page cache, provider records).
        pull(&model.sha256, &boot, work.path())?;
        let (mut pulls, mut copies, mut rss) = (Vec::new(), Vec::new(), 0u64);
        for _ in 0..a.rounds {
            let (secs, peak) = pull(&model.sha256, &boot, work.path())?;
            pulls.push(secs);
            rss = rss.max(peak);
            copies.push(tcp_copy(&model.path, work.path())?);
        }
        let (p, c) = (median(pulls), median(copies));
        println!(
            "{:<8} {:>9.2} {:>9.0} {:>11.2} {:>8.2}x {:>14.1}",
            n,
            p,
            size as f64 / 1e6 / p,
            c,
            c / p,
            rss as f64 / (1 << 20) as f64
        );
    }
    println!(
        "RATIO is the TCP copy's time over the pull's (1.0 = as fast as a plain copy; target >= 0.8)."
    );
    proc::stop_all(peers.into_iter().map(|n| n.proc));
    Ok(())
}
