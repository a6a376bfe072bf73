//! Child processes of benchmarks and local networks: `agora` itself (a node, `agora init`) or a
//! peer compared against (llama-server). One helper for all of them:
//! - every child dies with this process (`PR_SET_PDEATHSIG`), so none outlives a killed run;
//! - every [`Proc`] is stopped when dropped: SIGTERM, then SIGKILL after 5 s;
//! - [`start_node`] waits for `agora node` to print that it is ready and reads what it printed
//!   about itself (peer id, p2p and HTTP addresses, log key), draining its stdout to the end so
//!   that it never blocks on a full pipe.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a node may take to load its model and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped child gets to exit before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Makes the child of `cmd` receive SIGTERM when this process dies.
pub fn dies_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl in the child before exec; it only asks the kernel to signal the child when
    // this process dies.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd
}

/// `agora` (this very executable) with `AGORA_HOME` set to `home`, dying with this process.
pub fn agora(home: &Path) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe().context("finding the agora executable")?);
    cmd.env("AGORA_HOME", home);
    dies_with_parent(&mut cmd);
    Ok(cmd)
}

/// A running child process, stopped when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Spawns `cmd` (made to die with this process) under a name used in messages.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        dies_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Resident memory in bytes (0 when it cannot be read).
    pub fn rss(&self) -> u64 {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", self.pid())) else {
            return 0;
        };
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Asks the process to stop (SIGTERM) without waiting: stop many at once, then drop them.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on a pid this process spawned and has not reaped.
        unsafe {
            libc::kill(self.pid() as i32, libc::SIGTERM);
        }
    }

    fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.terminate();
        let t0 = Instant::now();
        while t0.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops every process at once (SIGTERM to all, then each gets the rest of the grace time).
pub fn stop_all(procs: impl IntoIterator<Item = Proc>) {
    let procs: Vec<Proc> = procs.into_iter().collect();
    for p in &procs {
        p.terminate();
    }
    drop(procs);
}

/// What `agora node` printed about itself before it was ready.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    pub peer_id: String,
    /// Its peer-to-peer addresses, each ending in `/p2p/<peer id>`.
    pub p2p: Vec<String>,
    /// Its HTTP API (`None` for a worker without one).
    pub url: Option<String>,
    /// The verifier key of the log it serves (`--serve-log`).
    pub log_vkey: Option<String>,
}

impl Ready {
    /// Its first peer-to-peer address.
    pub fn p2p_addr(&self) -> Result<&str> {
        self.p2p
            .first()
            .map(String::as_str)
            .context("the node printed no p2p address")
    }

    /// Reads one line of the node's stdout; true when the node is ready.
    fn read(&mut self, line: &str) -> bool {
        if let Some(p) = line.strip_prefix("peer id: ") {
            self.peer_id = p.trim().to_string();
        } else if let Some(a) = line.strip_prefix("p2p: ") {
            self.p2p.push(a.trim().to_string());
        } else if let Some(u) = line.strip_prefix("listening on ") {
            self.url = Some(u.trim().to_string());
        } else if line.trim_start().starts_with("log:")
            && let Some((_, v)) = line.split_once("(vkey ")
        {
            self.log_vkey = Some(v.trim().trim_end_matches(')').to_string());
        }
        line.starts_with("Ctrl-C stops the node.")
    }
}

/// A running `agora node`.
#[derive(Debug)]
pub struct Node {
    pub proc: Proc,
    pub ready: Ready,
    /// Where its stderr goes, when kept.
    pub log: Option<PathBuf>,
}

/// Starts `agora node ARGS` in `home`, its stderr written to `log` (or discarded), and waits
/// (at most 120 s) until it is ready.
pub fn start_node(name: &str, home: &Path, args: &[String], log: Option<&Path>) -> Result<Node> {
    let mut cmd = agora(home)?;
    cmd.arg("node").args(args).stdout(Stdio::piped());
    match log {
        Some(path) => {
            let f = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            cmd.stderr(f);
        }
        None => {
            cmd.stderr(Stdio::null());
        }
    }
    let mut proc = Proc::spawn(name, cmd)?;
    let stdout = proc.take_stdout().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut ready = Ready::default();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if ready.read(&line)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(ready.clone());
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(ready) => Ok(Node {
            proc,
            ready,
            log: log.map(Path::to_path_buf),
        }),
        Err(_) => match log {
            Some(path) => bail!("{name} did not start:\n{}", tail(path, 15)),
            None => bail!("{name} did not start"),
        },
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A TCP port free on loopback now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits (at most `within`) until the gateway at `url` lists `n` workers for its first model.
pub fn wait_workers(url: &str, n: u64, within: Duration) -> Result<()> {
    let client = agora_api::client::Client::new(url);
    let t0 = Instant::now();
    let mut seen = 0;
    while t0.elapsed() < within {
        seen = client
            .get_json("/v1/models")
            .ok()
            .and_then(|v| v.pointer("/data/0/agora/workers").and_then(|w| w.as_u64()))
            .unwrap_or(0);
        if seen >= n {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "the gateway saw only {seen} of {n} workers after {} s",
        within.as_secs()
    )
}

/// `agora init` in `home`: the new node's peer id.
pub fn init_key(home: &Path) -> Result<String> {
    let out = agora(home)?.arg("init").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("peer-id").map(|p| p.trim().to_string()))
        .context("`agora init` printed no peer-id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reads_what_a_node_prints() {
        let mut r = Ready::default();
        assert!(!r.read("peer id: 12D3KooWabc"));
        assert!(!r.read("p2p: /ip4/127.0.0.1/tcp/1/p2p/12D3KooWabc"));
        assert!(!r.read("p2p: /ip4/127.0.0.1/udp/1/quic-v1/p2p/12D3KooWabc"));
        assert!(!r.read("listening on http://127.0.0.1:8080"));
        assert!(!r.read("  log: /tmp/x (vkey agora+1234+AQ==)"));
        assert!(r.read("Ctrl-C stops the node."));
        assert_eq!(r.peer_id, "12D3KooWabc");
        assert_eq!(
            r.p2p_addr().ok(),
            Some("/ip4/127.0.0.1/tcp/1/p2p/12D3KooWabc")
        );
        assert_eq!(r.url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(r.log_vkey.as_deref(), Some("agora+1234+AQ=="));
    }

    #[test]
    fn a_dropped_process_is_stopped() {
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        let p = Proc::spawn("sleep", cmd).expect("spawn sleep");
        let pid = p.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        let t0 = Instant::now();
        drop(p);
        assert!(
            t0.elapsed() < STOP_GRACE,
            "SIGTERM should end sleep at once"
        );
        // Reaped: the pid is gone (or reused by an unrelated process, not a zombie of ours).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(!stat.contains("(sleep) Z"), "{stat}");
    }
}
