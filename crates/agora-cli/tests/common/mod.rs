//! Test harness: real `agora` processes on loopback with the real default model.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const MODEL: &str = "smollm2-135m";

pub fn agora() -> Command {
    Command::new(env!("CARGO_BIN_EXE_agora"))
}

/// The user's Agora home (`AGORA_HOME` or the default), where the model store lives.
pub fn shared_home() -> PathBuf {
    std::env::var_os("AGORA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".local/share/agora")
        })
}

/// A fresh home for one process whose model store is the shared one (a symlink), so nodes find
/// the default model by name without copying it.
pub fn temp_home() -> tempfile::TempDir {
    model_path();
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(shared_home().join("models"), home.path().join("models")).unwrap();
    home
}

/// The GGUF of the default model, pulled once into the user's store (`AGORA_HOME` or default).
pub fn model_path() -> PathBuf {
    catalog_model_path(MODEL)
}

/// The GGUF of a catalog model, pulled once per test process into the user's store.
pub fn catalog_model_path(name: &str) -> PathBuf {
    static PATHS: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = paths.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let out = agora()
        .args(["model", "pull", name])
        .output()
        .expect("run agora model pull");
    assert!(
        out.status.success(),
        "could not pull {name} (scripts/test.sh installs what this needs): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let digest = line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let p = shared_home()
        .join("models/blobs")
        .join(format!("sha256-{digest}.gguf"));
    assert!(p.is_file(), "{} missing after pull", p.display());
    paths.push((name.to_string(), p.clone()));
    p
}

/// Creates the node key in `home` (`agora init`) and returns its peer id.
pub fn peer_id_of(home: &tempfile::TempDir) -> String {
    let out = agora()
        .env("AGORA_HOME", home.path())
        .args(["init"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("peer-id").map(|p| p.trim().to_string()))
        .expect("agora id prints the peer id")
}

/// A running `agora node`, killed on drop.
pub struct Node {
    pub child: Child,
    /// The HTTP API (empty for a worker without a gateway).
    pub url: String,
    pub addr: String,
    pub peer_id: String,
    /// Peer-to-peer addresses, each ending in `/p2p/<peer id>`.
    pub p2p: Vec<String>,
    /// The verifier key of the log this node serves (`--serve-log`).
    pub log_vkey: Option<String>,
    pub home: tempfile::TempDir,
}

impl Node {
    /// Starts a node on a free port with the default model and extra flags.
    pub fn start(extra: &[&str]) -> Node {
        Self::start_in(temp_home(), extra)
    }

    /// Starts a node with its home at `home` (which must hold or link the model store).
    pub fn start_in(home: tempfile::TempDir, extra: &[&str]) -> Node {
        Self::start_model(home, MODEL, extra)
    }

    /// Starts a node serving `model` (a catalog name: pulled first with
    /// [`catalog_model_path`]) with its home at `home`.
    pub fn start_model(home: tempfile::TempDir, model: &str, extra: &[&str]) -> Node {
        catalog_model_path(model);
        Self::start_env(home, model, extra, &[])
    }

    /// Starts a node serving `model` (which it may have to fetch) with extra environment
    /// variables.
    pub fn start_env(
        home: tempfile::TempDir,
        model: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Node {
        let mut cmd = agora();
        cmd.env("AGORA_HOME", home.path())
            .envs(envs.iter().copied())
            .args(["node", "--listen", "127.0.0.1:0", "--model", model])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn agora node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let (mut url, mut peer, mut p2p) = (String::new(), String::new(), Vec::new());
            let mut vkey = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(u) = line.strip_prefix("listening on ") {
                    url = u.trim().to_string();
                } else if let Some(p) = line.strip_prefix("peer id: ") {
                    peer = p.trim().to_string();
                } else if let Some(a) = line.strip_prefix("p2p: ") {
                    p2p.push(a.trim().to_string());
                } else if line.trim_start().starts_with("log:")
                    && let Some((_, v)) = line.split_once("(vkey ")
                {
                    vkey = Some(v.trim_end_matches(')').to_string());
                } else if line.starts_with("Ctrl-C stops the node.")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send((url.clone(), peer.clone(), p2p.clone(), vkey.clone()));
                }
            }
        });
        let (url, peer_id, p2p, log_vkey) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("node did not start within 120 s");
        let addr = url.trim_start_matches("http://").to_string();
        Node {
            child,
            url,
            addr,
            peer_id,
            p2p,
            log_vkey,
            home,
        }
    }

    /// Resident memory of the node process, in bytes.
    pub fn rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = s
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        kb * 1024
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let resp = ureq_agent()
            .get(&format!("{}{path}", self.url))
            .call()
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn get_text(&self, path: &str) -> String {
        ureq_agent()
            .get(&format!("{}{path}", self.url))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap()
    }

    /// POSTs raw bytes; returns status, headers of interest and the parsed body.
    pub fn post_raw(&self, path: &str, body: &[u8]) -> (u16, Option<String>, Value) {
        let resp = ureq_agent()
            .post(&format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .send(body)
            .unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.into_body().read_to_string().unwrap();
        (
            status,
            retry,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, _, v) = self.post_raw(path, body.to_string().as_bytes());
        (s, v)
    }

    /// Streams a request; returns the concatenated text and every JSON event.
    pub fn stream(&self, path: &str, body: &Value) -> (String, Vec<Value>) {
        let client = agora_api::client::Client::new(&self.url);
        let mut text = String::new();
        let end = client.stream(path, body, |t| text.push_str(t)).unwrap();
        (text, end.events)
    }

    /// Polls `/health` until `pred` holds, or panics after `timeout`.
    pub fn wait_health(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let (_, h) = self.get("/health");
            if pred(&h) {
                return h;
            }
            assert!(
                t0.elapsed() < timeout,
                "health never satisfied the condition: {h}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a request that declares a `len`-byte body but sends only its first KiB, and reads
    /// the answer (for body-limit tests: the server must answer from the header alone).
    pub fn post_declared_length(&self, path: &str, len: usize) -> (u16, Value) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n", self.addr).unwrap();
        s.write_all(&vec![b'a'; 1024]).unwrap();
        let mut resp = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => resp.extend_from_slice(&buf[..n]),
            }
            if let Some(i) = find(&resp, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&resp[..i]).to_string();
                let clen: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if resp.len() >= i + 4 + clen {
                    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                    let body = serde_json::from_slice(&resp[i + 4..i + 4 + clen]).unwrap();
                    return (status, body);
                }
            }
        }
        panic!("no complete response: {}", String::from_utf8_lossy(&resp));
    }

    /// A raw connection that sends a streaming request and returns the socket after reading
    /// `events` SSE data lines (for hang-up tests).
    pub fn open_stream(&self, body: &Value, events: usize) -> TcpStream {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let b = body.to_string();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            self.addr,
            b.len(),
            b
        )
        .unwrap();
        let mut seen = 0;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "stream refused: {head}");
        buf.clear();
        while seen < events {
            s.read_exact(&mut byte).unwrap();
            buf.push(byte[0]);
            if buf.ends_with(b"\n\n") && String::from_utf8_lossy(&buf).contains("data:") {
                seen += 1;
                buf.clear();
            }
        }
        s
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn ureq_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .new_agent()
}

pub fn chat(content: &str) -> Value {
    serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": content}]})
}

/// The assistant text of a non-streaming chat response.
pub fn content(v: &Value) -> String {
    v.pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no content in {v}"))
        .to_string()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Flag lists joined into one argument list.
pub fn args<'a>(parts: &[&'a [&'a str]]) -> Vec<&'a str> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

/// Waits until the gateway lists `n` workers for the model.
pub fn wait_workers(gw: &Node, n: u64) {
    let t0 = Instant::now();
    loop {
        let (_, v) = gw.get("/v1/models");
        let workers = v["data"]
            .as_array()
            .and_then(|d| d.iter().find(|m| m["id"] == MODEL))
            .map(|m| m["agora"]["workers"].as_u64().unwrap_or(0));
        if workers == Some(n) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the gateway never saw {n} workers: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
