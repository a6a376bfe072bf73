//! `agora bench-soak`: a devnet of real processes under honest and hostile load for a while.
//!
//! A gateway that runs the log, three workers and a validator (also a worker and a gateway),
//! all on loopback, serve honest clients for `--minutes` while, at the same time:
//! - hostile peers (`agora debug rogue`, a fresh key each time) send garbage, oversized frames,
//!   request floods, resumed tokens a worker must refuse, and false verdicts against workers;
//! - a slowloris client keeps ~50 connections to the gateway's HTTP port sending one header
//!   byte every few seconds, and a few that declare a body and never send it.
//!
//! It samples every process's resident memory, and at the end reads the gateways' reputation
//! tables: no honest worker may be condemned and no process may die (else it exits non-zero).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agora_models::catalog;
use agora_models::store::ModelStore;
use anyhow::{Context, Result, bail};
use clap::Args;
use rand::Rng;
use serde_json::{Value, json};

use crate::proc::{self, Node};
use crate::stats::Percentiles;

#[derive(Args, Debug)]
pub struct BenchSoakArgs {
    /// Minutes of load.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Honest clients sending requests concurrently.
    #[arg(long, default_value_t = 3)]
    pub clients: usize,
    /// Model every worker serves.
    #[arg(long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Also write the conditions and results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The gateway's `--transcript-cap` (transcripts kept for validators; they are most of its
    /// memory): a small one shows the gateway's memory reaching its plateau within a short run.
    #[arg(long, default_value_t = 10_000)]
    pub transcript_cap: usize,
}

/// Each worker's engine: one thread, two slots, a 512-token context (five processes share
/// this machine's cores).
const THREADS: u32 = 1;
const SLOTS: u32 = 2;
const CTX: u32 = 512;
const WORKERS: usize = 3;
/// Slowloris connections (one header byte every few seconds), and stalled bodies.
const SLOW_HEADERS: usize = 50;
const STALLED_BODIES: usize = 4;
const SLOW_BYTE_EVERY: Duration = Duration::from_secs(3);
const RSS_EVERY: Duration = Duration::from_secs(5);
/// One hostile peer every this long (a few a minute).
const ROGUE_EVERY: Duration = Duration::from_secs(12);
/// Longest one rogue run may take before it is killed.
const ROGUE_LIMIT: Duration = Duration::from_secs(60);
/// Longest one honest request may take (then it counts as a transport error).
const REQUEST_LIMIT: Duration = Duration::from_secs(60);
const MODES: [&str; 5] = [
    "garbage",
    "bad-resume",
    "flood",
    "false-verdict",
    "oversized",
];

/// Every child process; all are asked to stop at once when it drops (then SIGKILL after 5 s).
#[derive(Default)]
struct Fleet {
    nodes: Vec<Node>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.proc.terminate();
        }
    }
}

impl Fleet {
    /// Starts `agora node ARGS` in `home` on loopback and waits (at most 120 s) for it.
    fn spawn(&mut self, name: &str, home: &Path, args: &[String]) -> Result<usize> {
        let mut all = strings(&[
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
        ]);
        all.extend_from_slice(args);
        let n = proc::start_node(name, home, &all, Some(&home.join("node.log")))?;
        n.ready.p2p_addr()?;
        eprintln!("  {name}: {}", n.ready.peer_id);
        self.nodes.push(n);
        Ok(self.nodes.len() - 1)
    }
}

/// A node's first p2p address (checked present when it started).
fn p2p(n: &Node) -> String {
    n.ready.p2p.first().cloned().unwrap_or_default()
}

/// The last lines of a node's log.
fn log_tail(n: &Node) -> String {
    n.log
        .as_deref()
        .map(|p| proc::tail(p, 15))
        .unwrap_or_default()
}

/// A node's own home whose model store is the shared one.
fn node_home(dir: &Path, name: &str, models: &Path) -> Result<PathBuf> {
    let h = dir.join(name);
    std::fs::create_dir_all(&h)?;
    std::os::unix::fs::symlink(models, h.join("models"))?;
    Ok(h)
}

pub fn run(home: &Path, a: BenchSoakArgs) -> Result<()> {
    if !(a.minutes > 0.0 && a.minutes <= 24.0 * 60.0) {
        bail!("--minutes must be more than 0 and at most a day");
    }
    if !(1..=64).contains(&a.clients) {
        bail!("--clients must be between 1 and 64");
    }
    let duration = Duration::from_secs_f64(a.minutes * 60.0);
    let warmup = duration
        .mul_f64(0.1)
        .max(Duration::from_secs(30))
        .min(duration / 2);
    let store = ModelStore::open(home, true)?;
    let model = store.resolve_or_fetch(&a.model)?;
    let models = store.root().to_path_buf();
    let dir = tempfile::Builder::new().prefix("agora-soak-").tempdir()?;

    let mut net = Devnet::start(dir.path(), &models, &model.name, a.transcript_cap)?;
    let load = net.load(&a, dir.path(), &model.name, duration)?;
    let rep = net.reputation();
    let memory = memory_report(&net.fleet, &load.rss, warmup);
    let report = json!({
        "conditions": {
            "cpu": crate::cpu_name(), "cores": crate::num_cores(),
            "model": model.name, "workers": WORKERS, "validators": 1, "threads": THREADS,
            "slots": SLOTS, "ctx": CTX, "minutes": a.minutes, "seconds": load.elapsed.as_secs_f64(),
            "warmup_seconds": warmup.as_secs_f64(), "clients": a.clients,
            "slowloris_connections": SLOW_HEADERS, "stalled_bodies": STALLED_BODIES,
            "transcript_cap": a.transcript_cap,
        },
        "honest": load.clients.to_json(load.elapsed),
        "hostile_peers": load.rogues.to_json(),
        "slowloris": load.slow.to_json(),
        "memory": memory,
        "reputation": {
            "honest_condemned": rep.condemned,
            "workers": rep.workers,
            "gateway": rep.gw_view.get("gateway").cloned().unwrap_or(Value::Null),
            "validator_gateway": rep.v_view.get("gateway").cloned().unwrap_or(Value::Null),
        },
        "died": load.died,
        "pass": rep.condemned == 0 && load.died.is_empty(),
    });
    print_report(&report);
    if let Some(path) = &a.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let died = load.died;
    for n in &net.fleet.nodes {
        if died.iter().any(|d| d.starts_with(n.proc.name())) {
            eprintln!("--- the end of {}'s log:\n{}", n.proc.name(), log_tail(n));
        }
    }
    drop(net);
    if !died.is_empty() {
        bail!("{} process(es) died: {}", died.len(), died.join("; "));
    }
    if rep.condemned > 0 {
        bail!("{} honest worker(s) condemned", rep.condemned);
    }
    Ok(())
}

/// The running devnet: a gateway serving the log, a validator and the workers.
struct Devnet {
    fleet: Fleet,
    gw_addr: SocketAddr,
    validator_id: String,
    validator_url: Option<String>,
    /// (name, peer id, p2p address) of every node but the gateway.
    honest: Vec<(String, String, String)>,
}

/// What the load phase saw.
struct Load {
    clients: Honest,
    rogues: Rogues,
    slow: Slow,
    /// Every process's resident memory, sampled every `RSS_EVERY` and once at the end.
    rss: Vec<(Duration, Vec<u64>)>,
    /// The processes that died, as "name: status".
    died: Vec<String>,
    elapsed: Duration,
}

/// How the gateways (the gateway, and the validator's own) see the honest workers.
struct Reputation {
    gw_view: Value,
    v_view: Value,
    workers: Vec<Value>,
    condemned: usize,
}

/// Every process's resident memory now.
fn sample_rss(fleet: &Fleet) -> Vec<u64> {
    fleet.nodes.iter().map(|n| n.proc.rss()).collect()
}

impl Devnet {
    /// Starts the gateway (log), the validator and the workers, and waits until the gateway
    /// lists every worker.
    fn start(dir: &Path, models: &Path, model: &str, transcript_cap: usize) -> Result<Devnet> {
        eprintln!(
            "agora bench-soak: starting a gateway (log), {WORKERS} workers and a validator on loopback…"
        );
        let mut fleet = Fleet::default();
        // The validator's key exists before the gateway starts: the gateway trusts it.
        let vhome = node_home(dir, "validator", models)?;
        let validator_id = proc::init_key(&vhome)?;
        let gw_home = node_home(dir, "gateway", models)?;
        let gw = fleet.spawn(
            "gateway",
            &gw_home,
            &strings(&[
                "--no-worker",
                "--serve-log",
                "--trust-validator",
                &validator_id,
                "--transcript-cap",
                &transcript_cap.to_string(),
            ]),
        )?;
        let (gw_url, gw_p2p) = (
            fleet.nodes[gw]
                .ready
                .url
                .clone()
                .context("the gateway printed no URL")?,
            p2p(&fleet.nodes[gw]),
        );
        let vkey = fleet.nodes[gw]
            .ready
            .log_vkey
            .clone()
            .context("the gateway printed no log key")?;
        let (threads, slots, ctx) = (THREADS.to_string(), SLOTS.to_string(), CTX.to_string());
        let engine = [
            "--model",
            model,
            "--threads",
            &threads,
            "--slots",
            &slots,
            "--ctx",
            &ctx,
            "--bootstrap",
            &gw_p2p,
        ];
        let log_url = format!("{gw_url}/log");
        let validator = fleet.spawn(
            "validator",
            &vhome,
            &strings(
                &[
                    &engine[..],
                    &["--validator", "--log-url", &log_url, "--log-key", &vkey],
                ]
                .concat(),
            ),
        )?;
        if fleet.nodes[validator].ready.peer_id != validator_id {
            bail!("the validator started with another key than `agora init` made");
        }
        for i in 1..=WORKERS {
            let name = format!("worker-{i}");
            let h = node_home(dir, &name, models)?;
            fleet.spawn(
                &name,
                &h,
                &strings(&[&engine[..], &["--no-gateway"]].concat()),
            )?;
        }
        let gw_addr = socket_addr(&gw_url)?;
        wait_workers(gw_addr, model, WORKERS as u64 + 1)?;
        let honest = fleet.nodes[1..]
            .iter()
            .map(|n| (n.proc.name().to_string(), n.ready.peer_id.clone(), p2p(n)))
            .collect();
        let validator_url = fleet.nodes[validator].ready.url.clone();
        Ok(Devnet {
            fleet,
            gw_addr,
            validator_id,
            validator_url,
            honest,
        })
    }

    /// Honest clients, hostile peers and slowloris at once for `duration` (or until a process
    /// dies), while this thread samples memory and watches for deaths.
    fn load(
        &mut self,
        a: &BenchSoakArgs,
        dir: &Path,
        model: &str,
        duration: Duration,
    ) -> Result<Load> {
        eprintln!(
            "soak: {:.1} min of load: {} honest clients, hostile peers, slowloris…",
            a.minutes, a.clients
        );
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        let deadline = t0 + duration;
        let rogue_home = dir.join("rogue");
        std::fs::create_dir_all(&rogue_home)?;
        let mut rss: Vec<(Duration, Vec<u64>)> = Vec::new();
        let mut died: Vec<String> = Vec::new();
        let gw_addr = self.gw_addr;
        let (clients, rogues, slow) = std::thread::scope(|s| {
            let clients: Vec<_> = (0..a.clients)
                .map(|c| {
                    let stop = &stop;
                    s.spawn(move || honest_client(c, gw_addr, model, deadline, stop))
                })
                .collect();
            let rogue = {
                let (stop, rogue_home, honest) = (&stop, &rogue_home, &self.honest);
                s.spawn(move || hostile_peers(rogue_home, honest, model, deadline, stop))
            };
            let slow = {
                let stop = &stop;
                s.spawn(move || slowloris(gw_addr, deadline, stop))
            };
            died = watch(&mut self.fleet, t0, duration, &mut rss);
            stop.store(true, Ordering::Relaxed);
            let mut merged = Honest::default();
            for c in clients {
                merged.merge(c.join().unwrap_or_default());
            }
            (
                merged,
                rogue.join().unwrap_or_default(),
                slow.join().unwrap_or_default(),
            )
        });
        let elapsed = t0.elapsed();
        rss.push((elapsed, sample_rss(&self.fleet)));
        if died.is_empty() {
            died = deaths(&mut self.fleet);
        }
        Ok(Load {
            clients,
            rogues,
            slow,
            rss,
            died,
            elapsed,
        })
    }

    /// Reputation, as the gateways see it: an honest worker is condemned when either gateway
    /// rejected one of its answers or stopped routing to it.
    fn reputation(&self) -> Reputation {
        let gw_view = http_get(self.gw_addr, "/agora/v1/nodes").unwrap_or(Value::Null);
        let v_view = self
            .validator_url
            .as_deref()
            .and_then(|u| socket_addr(u).ok())
            .and_then(|addr| http_get(addr, "/agora/v1/nodes").ok())
            .unwrap_or(Value::Null);
        let mut workers = Vec::new();
        let mut condemned = 0;
        for (name, peer, _) in &self.honest {
            let at_gw = reputation_of(&gw_view, peer);
            // The validator's own gateway: its view of the others (itself it does not list).
            let at_v = (peer != &self.validator_id).then(|| reputation_of(&v_view, peer));
            let bad = |r: &Option<Value>| {
                r.as_ref().is_some_and(|r| {
                    r["rejected"].as_u64().unwrap_or(0) > 0 || r["routed"] == json!(false)
                })
            };
            let is_condemned = bad(&at_gw) || at_v.as_ref().is_some_and(bad);
            condemned += usize::from(is_condemned);
            workers.push(json!({
                "name": name, "peer_id": peer, "condemned": is_condemned,
                "gateway": at_gw, "validator_gateway": at_v.flatten(),
            }));
        }
        Reputation {
            gw_view,
            v_view,
            workers,
            condemned,
        }
    }
}

/// Samples every process's memory every `RSS_EVERY` into `rss` and watches for deaths, until
/// `t0 + duration` or the first death (returned); prints the progress every minute.
fn watch(
    fleet: &mut Fleet,
    t0: Instant,
    duration: Duration,
    rss: &mut Vec<(Duration, Vec<u64>)>,
) -> Vec<String> {
    let deadline = t0 + duration;
    let mut died = Vec::new();
    let mut next_report = t0 + Duration::from_secs(60);
    while Instant::now() < deadline && died.is_empty() {
        rss.push((t0.elapsed(), sample_rss(fleet)));
        died = deaths(fleet);
        if Instant::now() >= next_report {
            eprintln!(
                "soak: {:.0} of {:.0} s",
                t0.elapsed().as_secs_f64(),
                duration.as_secs_f64()
            );
            next_report += Duration::from_secs(60);
        }
        let next = Instant::now() + RSS_EVERY;
        while Instant::now() < next.min(deadline) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    died
}

/// Each process's resident memory after the warm-up, at its peak and at the end.
fn memory_report(fleet: &Fleet, rss: &[(Duration, Vec<u64>)], warmup: Duration) -> Vec<Value> {
    fleet
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let at = |when: Duration| {
                rss.iter()
                    .find(|(t, _)| *t >= when)
                    .or(rss.last())
                    .map(|(_, v)| v[i])
                    .unwrap_or(0)
            };
            let after = at(warmup);
            let peak = rss.iter().map(|(_, v)| v[i]).max().unwrap_or(0);
            let end = rss.last().map(|(_, v)| v[i]).unwrap_or(0);
            json!({
                "name": n.proc.name(), "pid": n.proc.pid(), "after_warmup_mib": mib(after),
                "peak_mib": mib(peak), "end_mib": mib(end),
                "flat": after > 0 && end as f64 <= 1.2 * after as f64,
            })
        })
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1 << 20) as f64 * 10.0).round() / 10.0
}

fn socket_addr(url: &str) -> Result<SocketAddr> {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("not a loopback URL: {url}"))
}

/// The processes that have exited, as "name: status".
fn deaths(fleet: &mut Fleet) -> Vec<String> {
    fleet
        .nodes
        .iter_mut()
        .filter_map(|n| match n.proc.try_wait() {
            Ok(Some(status)) => Some(format!("{}: {status}", n.proc.name())),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", n.proc.name())),
        })
        .collect()
}

/// Waits (at most 60 s) until the gateway lists `n` workers for `model`.
fn wait_workers(gw: SocketAddr, model: &str, n: u64) -> Result<()> {
    let t0 = Instant::now();
    let mut seen = 0;
    while t0.elapsed() < Duration::from_secs(60) {
        seen = http_get(gw, "/v1/models")
            .ok()
            .and_then(|v| {
                v["data"]
                    .as_array()?
                    .iter()
                    .find(|m| m["id"] == model)?
                    .pointer("/agora/workers")?
                    .as_u64()
            })
            .unwrap_or(0);
        if seen >= n {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the gateway saw only {seen} of {n} workers after 60 s")
}

/// `peer`'s reputation in a `/agora/v1/nodes` answer.
fn reputation_of(nodes: &Value, peer: &str) -> Option<Value> {
    nodes["peers"]
        .as_array()?
        .iter()
        .find(|p| p["peer_id"] == peer)
        .map(|p| p["reputation"].clone())
}

// ---- HTTP on raw sockets: every call bounded in time ----

/// Sends one request (`Connection: close`) and reads the whole answer: (status, body).
fn http(addr: SocketAddr, request: &[u8], limit: Duration) -> Result<(u16, Vec<u8>), String> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    s.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if buf.len() > 16 << 20 {
            return Err("an answer over 16 MiB".into());
        }
        if t0.elapsed() > limit {
            return Err(format!("no complete answer within {} s", limit.as_secs()));
        }
    }
    let head_end = find(&buf, b"\r\n\r\n").ok_or("the connection closed before an answer")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let body = &buf[head_end + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body).ok_or("the answer's chunks were cut off")?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn post_request(addr: SocketAddr, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn http_get(addr: SocketAddr, path: &str) -> Result<Value> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, body) =
        http(addr, req.as_bytes(), Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    if status != 200 {
        bail!("GET {path}: {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = find(b, b"\r\n")?;
        let size = std::str::from_utf8(&b[..i]).ok()?.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        b = &b[i + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---- honest clients ----

#[derive(Default)]
struct Honest {
    requests: u64,
    ok: u64,
    r429: u64,
    r503: u64,
    other_4xx: u64,
    other_5xx: u64,
    /// 200 but no complete answer (a stream that ended in an error or without [DONE]).
    broken: u64,
    transport: u64,
    streamed: u64,
    seeded: u64,
    latencies: Vec<Duration>,
    /// The first few failures, for the report.
    errors: Vec<String>,
}

impl Honest {
    fn merge(&mut self, o: Honest) {
        self.requests += o.requests;
        self.ok += o.ok;
        self.r429 += o.r429;
        self.r503 += o.r503;
        self.other_4xx += o.other_4xx;
        self.other_5xx += o.other_5xx;
        self.broken += o.broken;
        self.transport += o.transport;
        self.streamed += o.streamed;
        self.seeded += o.seeded;
        self.latencies.extend(o.latencies);
        for e in o.errors {
            if self.errors.len() < 8 {
                self.errors.push(e);
            }
        }
    }

    /// The figures for the report (`elapsed`: how long the load lasted).
    fn to_json(&self, elapsed: Duration) -> Value {
        let lat = Percentiles::of(self.latencies.clone());
        json!({
            "requests": self.requests, "ok": self.ok, "too_many_requests_429": self.r429,
            "unavailable_503": self.r503, "other_4xx": self.other_4xx,
            "other_5xx": self.other_5xx, "broken": self.broken,
            "transport_errors": self.transport, "streamed": self.streamed,
            "seeded": self.seeded,
            "ok_per_minute": self.ok as f64 / elapsed.as_secs_f64() * 60.0,
            "latency_ms": {"p50": ms(lat.p50), "p90": ms(lat.p90), "p99": ms(lat.p99), "max": ms(lat.max)},
            "first_errors": self.errors,
        })
    }

    fn error(&mut self, what: String) {
        if self.errors.len() < 3 {
            self.errors.push(what);
        }
    }
}

const TOPICS: [&str; 8] = [
    "the sea",
    "a cat",
    "bread",
    "the moon",
    "rain",
    "a library",
    "bicycles",
    "winter",
];

/// One honest client: chat completions one after another until the deadline.
fn honest_client(
    c: usize,
    gw: SocketAddr,
    model: &str,
    deadline: Instant,
    stop: &AtomicBool,
) -> Honest {
    let mut h = Honest::default();
    let mut rng = rand::thread_rng();
    let mut i = 0usize;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        i += 1;
        let topic = TOPICS[rng.gen_range(0..TOPICS.len())];
        let stream = rng.gen_bool(0.4);
        let mut body = json!({
            "model": model,
            "messages": [{"role": "user", "content": format!("Write one sentence about {topic}. ({c}.{i})")}],
            "max_tokens": rng.gen_range(16..=48),
            "stream": stream,
        });
        if rng.gen_bool(0.5) {
            body["seed"] = json!(rng.gen_range(0..1_000_000u64));
            h.seeded += 1;
        }
        if rng.gen_bool(0.3) {
            body["temperature"] = json!(0);
        }
        h.streamed += u64::from(stream);
        h.requests += 1;
        let t0 = Instant::now();
        let req = post_request(gw, "/v1/chat/completions", &body.to_string());
        match http(gw, &req, REQUEST_LIMIT) {
            Ok((200, b)) if complete(&b, stream) => {
                h.ok += 1;
                h.latencies.push(t0.elapsed());
            }
            Ok((200, b)) => {
                h.broken += 1;
                h.error(format!(
                    "200 but {}",
                    String::from_utf8_lossy(&b[b.len().saturating_sub(200)..])
                ));
            }
            Ok((status, b)) => {
                match status {
                    429 => h.r429 += 1,
                    503 => h.r503 += 1,
                    400..=499 => h.other_4xx += 1,
                    _ => h.other_5xx += 1,
                }
                h.error(format!(
                    "{status} {}",
                    String::from_utf8_lossy(&b[..b.len().min(200)])
                ));
                // Back off a little after a refusal, as a real client would.
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                h.transport += 1;
                h.error(e);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    h
}

/// Whether a 200 body is a whole answer: a message, or a stream of events ending in [DONE]
/// without an error event.
fn complete(body: &[u8], stream: bool) -> bool {
    let text = String::from_utf8_lossy(body);
    if !stream {
        return serde_json::from_str::<Value>(&text).ok().is_some_and(|v| {
            v.pointer("/choices/0/message/content")
                .is_some_and(Value::is_string)
        });
    }
    let mut done = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
        } else if serde_json::from_str::<Value>(data)
            .map(|v| v.get("error").is_some())
            .unwrap_or(true)
        {
            return false;
        }
    }
    done
}

// ---- hostile peers ----

#[derive(Default)]
struct Rogues {
    /// Per mode: runs, cut off, failed runs (no report), and (bad-resume) requests answered 400
    /// out of those sent.
    modes: BTreeMap<&'static str, RogueCount>,
    /// The first few failures, for the report.
    errors: Vec<String>,
}

#[derive(Default)]
struct RogueCount {
    runs: u64,
    cut_off: u64,
    failed: u64,
    sent: u64,
    answered_400: u64,
    /// Seconds of the runs that reported.
    seconds: f64,
}

impl Rogues {
    fn to_json(&self) -> Value {
        let modes: serde_json::Map<String, Value> = self
            .modes
            .iter()
            .map(|(m, c)| {
                let reported = c.runs.saturating_sub(c.failed).max(1) as f64;
                let mut v = json!({
                    "runs": c.runs, "cut_off": c.cut_off, "failed": c.failed,
                    "mean_seconds": (c.seconds / reported * 10.0).round() / 10.0,
                    "should_be_cut_off": !matches!(*m, "bad-resume" | "false-verdict"),
                });
                if *m == "bad-resume" {
                    v["sent"] = json!(c.sent);
                    v["answered_400"] = json!(c.answered_400);
                }
                (m.to_string(), v)
            })
            .collect();
        json!({"modes": modes, "first_errors": self.errors})
    }
}

/// Runs `agora debug rogue` against a random honest worker every [`ROGUE_EVERY`], cycling
/// through the modes, until the deadline.
fn hostile_peers(
    home: &Path,
    targets: &[(String, String, String)],
    model: &str,
    deadline: Instant,
    stop: &AtomicBool,
) -> Rogues {
    let mut r = Rogues::default();
    let mut rng = rand::thread_rng();
    let ctx = CTX.to_string();
    // Let the honest load start first.
    let mut next = Instant::now() + Duration::from_secs(3);
    let mut i = 0usize;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = Instant::now() + ROGUE_EVERY;
        let mode = MODES[i % MODES.len()];
        i += 1;
        let (name, _, target) = &targets[rng.gen_range(0..targets.len())];
        let c = r.modes.entry(mode).or_default();
        c.runs += 1;
        let mut cmd = match proc::agora(home) {
            Ok(cmd) => cmd,
            Err(e) => {
                c.failed += 1;
                r.errors.push(format!("{e:#}"));
                break;
            }
        };
        cmd.args(["debug", "rogue", "--target", target, "--mode", mode]);
        match mode {
            "flood" => {
                cmd.args(["--count", "20000"]);
            }
            "bad-resume" => {
                cmd.args(["--model", model, "--ctx", &ctx]);
            }
            _ => {}
        }
        let outcome = run_bounded(cmd, deadline + Duration::from_secs(5), stop);
        match outcome.and_then(|out| {
            serde_json::from_str::<Value>(out.trim()).map_err(|e| format!("{e}: {out:?}"))
        }) {
            Ok(v) => {
                c.cut_off += u64::from(v["cut_off"] == json!(true));
                c.seconds += v["seconds"].as_f64().unwrap_or(0.0);
                if let Some(st) = v["statuses"].as_array() {
                    c.sent += st.len() as u64;
                    c.answered_400 += st.iter().filter(|s| s.as_u64() == Some(400)).count() as u64;
                }
            }
            Err(e) => {
                c.failed += 1;
                if r.errors.len() < 5 {
                    r.errors.push(format!("{mode} against {name}: {e}"));
                }
            }
        }
    }
    r
}

/// Runs a short command to its end, at most [`ROGUE_LIMIT`] or until `until`/`stop` (then it
/// is killed); returns its stdout.
fn run_bounded(mut cmd: Command, until: Instant, stop: &AtomicBool) -> Result<String, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let limit = (Instant::now() + ROGUE_LIMIT).min(until);
    // Drain the pipes on their own threads so that the child never blocks on them.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(r) = r {
                let _ = r.take(1 << 20).read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < limit && !stop.load(Ordering::Relaxed) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => Err(format!("{s}: {}", last_line(&err))),
        None => Err("killed: it ran out of time".into()),
    }
}

fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

// ---- slowloris ----

#[derive(Default)]
struct Slow {
    opened: u64,
    connect_failures: u64,
    /// Per kind ("headers", "body"): connections the server closed, and how long they lived.
    cut_off: BTreeMap<&'static str, (u64, Vec<f64>)>,
    /// Statuses the server answered before closing (e.g. 408, 503).
    statuses: BTreeMap<u16, u64>,
    open_at_end: u64,
}

impl Slow {
    fn to_json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> = self
            .cut_off
            .iter()
            .map(|(k, (n, lives))| {
                let mean = lives.iter().sum::<f64>() / lives.len().max(1) as f64;
                let max = lives.iter().cloned().fold(0.0, f64::max);
                (
                    k.to_string(),
                    json!({"cut_off": n, "mean_lifetime_s": (mean * 10.0).round() / 10.0, "max_lifetime_s": (max * 10.0).round() / 10.0}),
                )
            })
            .collect();
        let statuses: serde_json::Map<String, Value> = self
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect();
        json!({
            "opened": self.opened, "connect_failures": self.connect_failures, "kinds": kinds,
            "answered": statuses, "open_at_end": self.open_at_end,
        })
    }
}

struct SlowConn {
    s: TcpStream,
    kind: &'static str,
    opened: Instant,
    next_byte: Instant,
    sent: usize,
}

const SLOW_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slowloris: ";

fn slow_open(gw: SocketAddr, kind: &'static str) -> std::io::Result<SlowConn> {
    let mut s = TcpStream::connect_timeout(&gw, Duration::from_secs(2))?;
    if kind == "body" {
        // Headers complete, a body declared, a few bytes of it, then nothing.
        s.write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {gw}\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{\"model\": ").as_bytes())?;
    }
    s.set_nonblocking(true)?;
    let now = Instant::now();
    Ok(SlowConn {
        s,
        kind,
        opened: now,
        next_byte: now,
        sent: 0,
    })
}

/// Keeps [`SLOW_HEADERS`] connections sending one header byte every [`SLOW_BYTE_EVERY`] and
/// [`STALLED_BODIES`] connections stalled in their body, reopening each the server cuts off.
fn slowloris(gw: SocketAddr, deadline: Instant, stop: &AtomicBool) -> Slow {
    let mut r = Slow::default();
    let kinds = std::iter::repeat_n("headers", SLOW_HEADERS)
        .chain(std::iter::repeat_n("body", STALLED_BODIES));
    let mut conns: Vec<(&'static str, Option<SlowConn>)> = kinds.map(|k| (k, None)).collect();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        for (kind, slot) in conns.iter_mut() {
            let Some(c) = slot else {
                match slow_open(gw, kind) {
                    Ok(c) => {
                        r.opened += 1;
                        *slot = Some(c);
                    }
                    Err(_) => r.connect_failures += 1,
                }
                continue;
            };
            let closed = match c.s.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    let head = String::from_utf8_lossy(&buf[..n]);
                    if let Some(st) = head
                        .strip_prefix("HTTP/1.1 ")
                        .and_then(|h| h.get(..3))
                        .and_then(|s| s.parse().ok())
                    {
                        *r.statuses.entry(st).or_default() += 1;
                    }
                    true
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if c.kind == "headers" && now >= c.next_byte {
                        let byte = SLOW_HEAD.get(c.sent).copied().unwrap_or(b'a');
                        c.next_byte = now + SLOW_BYTE_EVERY;
                        match c.s.write(&[byte]) {
                            Ok(n) => {
                                c.sent += n;
                                false
                            }
                            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                        }
                    } else {
                        false
                    }
                }
                Err(_) => true,
            };
            if closed {
                let e = r.cut_off.entry(c.kind).or_default();
                e.0 += 1;
                e.1.push(c.opened.elapsed().as_secs_f64());
                *slot = None;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    r.open_at_end = conns.iter().filter(|(_, c)| c.is_some()).count() as u64;
    r
}

// ---- the report ----

fn print_report(r: &Value) {
    print_conditions(&r["conditions"]);
    print_honest(&r["honest"]);
    print_hostile(&r["hostile_peers"]);
    print_slowloris(&r["slowloris"]);
    print_memory(&r["memory"]);
    print_reputation(&r["reputation"]);
    println!();
    println!(
        "honest workers condemned: {} (target 0); processes died: {}; {}",
        r["reputation"]["honest_condemned"],
        r["died"].as_array().map(Vec::len).unwrap_or(0),
        if r["pass"] == json!(true) {
            "PASS"
        } else {
            "FAIL"
        }
    );
}

/// A report value as a table cell: floats with one decimal, null as a dash.
fn cell(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => format!("{:.1}", n.as_f64().unwrap_or(0.0)),
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

fn print_conditions(c: &Value) {
    println!();
    println!(
        "agora bench-soak: {} ({} cores); a gateway serving the log (keeping at most {} transcripts), {} workers and a validator on loopback, each {} with {} thread, {} slots, ctx {}; {} min ({:.0} s), {} honest clients, warm-up {:.0} s",
        c["cpu"].as_str().unwrap_or("?"),
        c["cores"],
        c["transcript_cap"],
        c["workers"],
        c["model"].as_str().unwrap_or("?"),
        c["threads"],
        c["slots"],
        c["ctx"],
        c["minutes"],
        c["seconds"].as_f64().unwrap_or(0.0),
        c["clients"],
        c["warmup_seconds"].as_f64().unwrap_or(0.0),
    );
}

fn print_honest(h: &Value) {
    let f = cell;
    println!();
    println!("| honest requests | count |");
    println!("|---|---:|");
    for (label, key) in [
        ("sent", "requests"),
        ("**served (200, complete)**", "ok"),
        ("429 too many requests", "too_many_requests_429"),
        ("503 unavailable", "unavailable_503"),
        ("other 4xx", "other_4xx"),
        ("other 5xx", "other_5xx"),
        ("200 but broken", "broken"),
        ("transport errors", "transport_errors"),
        ("(streamed)", "streamed"),
        ("(with a seed)", "seeded"),
    ] {
        println!("| {label} | {} |", f(&h[key]));
    }
    let l = &h["latency_ms"];
    println!(
        "\nlatency of served requests: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms; {} served per minute",
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["max"]),
        f(&h["ok_per_minute"])
    );
    for e in h["first_errors"].as_array().into_iter().flatten() {
        println!("  e.g. {}", e.as_str().unwrap_or("").replace('\n', " "));
    }
}

fn print_hostile(hp: &Value) {
    println!();
    println!(
        "| hostile peer (fresh key each run) | runs | cut off | should be | no report | answered 400 | mean s |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|");
    for (m, v) in hp["modes"].as_object().into_iter().flatten() {
        let a400 = if v.get("sent").is_some() {
            format!("{} of {}", v["answered_400"], v["sent"])
        } else {
            "–".into()
        };
        println!(
            "| {m} | {} | {} | {} | {} | {a400} | {} |",
            v["runs"],
            v["cut_off"],
            if v["should_be_cut_off"] == json!(true) {
                "yes"
            } else {
                "no"
            },
            v["failed"],
            cell(&v["mean_seconds"])
        );
    }
    for e in hp["first_errors"].as_array().into_iter().flatten() {
        println!("  e.g. {}", e.as_str().unwrap_or(""));
    }
}

fn print_slowloris(s: &Value) {
    println!();
    println!(
        "slowloris: {} connections opened ({} could not connect), {} still open at the end; answered before closing: {}",
        s["opened"], s["connect_failures"], s["open_at_end"], s["answered"]
    );
    println!();
    println!("| slow client | cut off | mean lifetime (s) | max lifetime (s) |");
    println!("|---|---:|---:|---:|");
    for (k, v) in s["kinds"].as_object().into_iter().flatten() {
        let label = if k == "headers" {
            "one header byte every 3 s"
        } else {
            "declared a body, stalled"
        };
        println!(
            "| {label} | {} | {} | {} |",
            v["cut_off"],
            cell(&v["mean_lifetime_s"]),
            cell(&v["max_lifetime_s"])
        );
    }
}

fn print_memory(memory: &Value) {
    println!();
    println!(
        "| process | RSS after warm-up (MiB) | peak (MiB) | end (MiB) | flat (end ≤ 1.2 × after warm-up) |"
    );
    println!("|---|---:|---:|---:|---|");
    for m in memory.as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {} | {} | {} |",
            m["name"].as_str().unwrap_or("?"),
            cell(&m["after_warmup_mib"]),
            cell(&m["peak_mib"]),
            cell(&m["end_mib"]),
            if m["flat"] == json!(true) {
                "yes"
            } else {
                "**no**"
            }
        );
    }
}

/// The honest workers' standing at the gateway, and both gateways' reputation counters.
fn print_reputation(rep: &Value) {
    let f = cell;
    println!();
    println!("| honest worker | accepted | rejected | violations | routed | condemned |");
    println!("|---|---:|---:|---:|---|---|");
    for w in rep["workers"].as_array().into_iter().flatten() {
        let g = &w["gateway"];
        println!(
            "| {} ({}…) | {} | {} | {} | {} | {} |",
            w["name"].as_str().unwrap_or("?"),
            w["peer_id"].as_str().unwrap_or("").get(..16).unwrap_or(""),
            f(&g["accepted"]),
            f(&g["rejected"]),
            f(&g["violations"]),
            f(&g["routed"]),
            if w["condemned"] == json!(true) {
                "**YES**"
            } else {
                "no"
            }
        );
    }
    let g = &rep["gateway"];
    let vg = &rep["validator_gateway"];
    println!();
    println!("| counter | gateway | validator's gateway |");
    println!("|---|---:|---:|");
    for k in [
        "verdicts_applied",
        "verdicts_ignored",
        "rechecks_confirmed",
        "rechecks_refuted",
        "protocol_violations",
        "transcripts_released",
        "transcripts_refused",
        "receipts_logged",
        "receipts_not_logged",
    ] {
        println!("| {k} | {} | {} |", f(&g[k]), f(&vg[k]));
    }
}
