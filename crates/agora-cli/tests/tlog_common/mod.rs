//! Helpers for the tlog integration tests: real `agora` processes on loopback.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A private copy of the `agora` binary. The target directory is shared with other worktrees
/// whose builds also write `release/agora`; copying it once per test process pins our build.
/// Copies left by finished test processes are removed.
pub fn agora() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agora-tlog-bin");
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix("agora-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let dst = dir.join(format!("agora-{}", std::process::id()));
        std::fs::copy(env!("CARGO_BIN_EXE_agora"), &dst).unwrap();
        let ok = Command::new(&dst)
            .args(["log", "--help"])
            .output()
            .unwrap()
            .status
            .success();
        assert!(
            ok,
            "{} has no `log` command: another build replaced it",
            dst.display()
        );
        dst
    })
}

/// Run `agora ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(agora())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// Run and require success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "agora {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A running witness of one log, and the tlog-policy file that names it as the quorum.
#[allow(dead_code)] // not every test binary that includes this module starts a witness
pub struct Witness {
    pub server: Server,
    /// Its cosignature key (`agora id`'s `witness-vkey`).
    pub vkey: String,
    /// `witness w1 VKEY URL` and `quorum w1`: what `agora log serve --policy` and
    /// `agora node --log-witnesses` read.
    pub policy: PathBuf,
}

/// Starts a witness for the log whose key is `log_vkey`, its home at `dir/witness`, its stderr
/// in `dir/witness.err` and its policy file at `dir/witnesses`.
#[allow(dead_code)]
pub fn start_witness(dir: &Path, log_vkey: &str) -> Witness {
    let home = dir.join("witness");
    init_home(&home);
    let home = home.to_str().unwrap();
    let vkey = ok(&["id", "--home", home])
        .lines()
        .find_map(|l| l.strip_prefix("witness-vkey").map(|v| v.trim().to_string()))
        .unwrap();
    let server = Server::start(
        &[
            "witness",
            "serve",
            "--home",
            home,
            "--listen",
            "127.0.0.1:0",
            "--log-key",
            log_vkey,
        ],
        &dir.join("witness.err"),
    );
    let policy = dir.join("witnesses");
    std::fs::write(
        &policy,
        format!("witness w1 {vkey} {}\nquorum w1\n", server.url),
    )
    .unwrap();
    Witness {
        server,
        vkey,
        policy,
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `agora init --home HOME`.
pub fn init_home(home: &Path) {
    ok(&["init", "--home", home.to_str().unwrap()]);
}

/// A running `agora log serve` / `agora witness serve`.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub vkey: String,
    pub stderr: PathBuf,
}

impl Server {
    /// Spawn `agora ARGS` and wait for its `listening on` and `vkey` lines.
    pub fn start(args: &[&str], stderr: &Path) -> Server {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr)
            .unwrap();
        let mut child = Command::new(agora())
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let (mut url, mut vkey) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while url.is_none() || vkey.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    if let Some(u) = l.strip_prefix("listening on ") {
                        url = Some(u.to_string());
                    } else if let Some(v) = l.strip_prefix("vkey ") {
                        vkey = Some(v.to_string());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "agora {args:?} did not start:\n{}",
                        std::fs::read_to_string(stderr).unwrap_or_default()
                    );
                }
            }
        }
        Server {
            child,
            url: url.unwrap(),
            vkey: vkey.unwrap(),
            stderr: stderr.to_path_buf(),
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Poll until `f` returns Some, or panic after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET a URL: (status, body).
pub fn get(url: &str) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    match agent.get(url).call() {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.into_body().read_to_vec().unwrap_or_default())
        }
        Err(_) => (0, Vec::new()),
    }
}

/// POST a body: (status, content type, body).
pub fn post(url: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let r = agent.post(url).send(body).unwrap();
    let s = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (s, ct, r.into_body().read_to_vec().unwrap_or_default())
}

/// Size of the log's current checkpoint, if any.
pub fn checkpoint_size(url: &str) -> Option<u64> {
    let (s, body) = get(&format!("{url}/checkpoint"));
    if s != 200 {
        return None;
    }
    String::from_utf8(body).ok()?.lines().nth(1)?.parse().ok()
}
