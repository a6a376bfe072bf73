//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver, against a devnet of real processes on loopback — a
//! gateway that is also a worker and keeps its own log, a witness that cosigns it, and a second
//! worker.
//!
//! What it shows: the Chat page streams an answer whose Verify button reports success (checks run
//! in the page's WebAssembly); a saved transcript with one byte altered, and a log whose tiles a
//! proxy alters, are reported as failures with their reason; the Network page lists every
//! worker; the Log page shows a checkpoint cosigned by the witness; a model and a proposal named
//! `<img src=x onerror=alert(1)>` render as text and no script runs; the page makes no request
//! outside the node (the browser resolves no other host, and its network log is checked).
//! Screenshots of every page go to `docs/screenshots/`; the figures (time to interactive,
//! module size, in-browser verification time) are printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod tlog_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agora_core::Identity;
use agora_core::statement::{Kind, Statement};
use base64::Engine as _;
use common::{Node, args};
use serde_json::{Value, json};
use tlog_common::{post, wait_for};

const XSS: &str = "<img src=x onerror=alert(1)>";
/// Small nodes: one thread each, so two share the two cores with the browser.
const SMALL: &[&str] = &["--threads", "1", "--slots", "2", "--ctx", "1024"];

// ---------- a small WebDriver client ----------

struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        let port = tlog_common::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) must be installed");
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", Duration::from_secs(20), || {
            ureq_get(&format!("{base}/status")).ok()
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         // The network cable pulled: no name resolves but loopback's.
                         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync"],
            },
            "goog:loggingPrefs": {"performance": "ALL"},
        }}});
        let v = send("POST", &format!("{base}/session"), Some(&caps));
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            base,
            session,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let v = send(
            method,
            &format!("{}/session/{}{path}", self.base, self.session),
            body,
        );
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(&json!({ "url": url })));
    }

    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    /// Polls `script` (returning a value) until it is truthy.
    fn until(&self, what: &str, secs: u64, script: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{what}: not within {secs} s; page text:\n{}",
                self.js("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Navigates to `#/page` and waits until it has rendered.
    fn page(&self, base: &str, page: &str) {
        self.go(&format!("{base}/#/{page}"));
        self.until(
            &format!("the {page} page"),
            60,
            &format!(
                "const m = document.querySelector('main'); return m && m.dataset.page === '{page}' && m.dataset.ready === '1'"
            ),
        );
    }

    fn screenshot(&self, name: &str) {
        let v = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        let dir = repo().join("docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(&json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(&json!({})));
    }

    /// Whether an alert is open (a script ran `alert`).
    fn alert_open(&self) -> bool {
        let v = send(
            "GET",
            &format!("{}/session/{}/alert/text", self.base, self.session),
            None,
        );
        v["value"].get("error").is_none()
    }

    /// Every URL the browser requested since the last call (Chrome's performance log).
    fn requests(&self) -> Vec<String> {
        let v = self.cmd("POST", "/se/log", Some(&json!({"type": "performance"})));
        let mut urls = Vec::new();
        for e in v.as_array().cloned().unwrap_or_default() {
            let Ok(m) = serde_json::from_str::<Value>(e["message"].as_str().unwrap_or("")) else {
                continue;
            };
            if m["message"]["method"] == "Network.requestWillBeSent"
                && let Some(u) = m["message"]["params"]["request"]["url"].as_str()
            {
                urls.push(u.to_string());
            }
        }
        urls
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = send_opt(
            "DELETE",
            &format!("{}/session/{}", self.base, self.session),
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

fn ureq_get(url: &str) -> Result<String, ureq::Error> {
    agent().get(url).call()?.into_body().read_to_string()
}

fn send_opt(method: &str, url: &str, body: Option<&Value>) -> Result<Value, ureq::Error> {
    let a = agent();
    let resp = match method {
        "GET" => a.get(url).call()?,
        "DELETE" => a.delete(url).call()?,
        _ => a
            .post(url)
            .header("content-type", "application/json")
            .send(body.map(Value::to_string).unwrap_or_else(|| "{}".into()))?,
    };
    let text = resp.into_body().read_to_string()?;
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn send(method: &str, url: &str, body: Option<&Value>) -> Value {
    send_opt(method, url, body).unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

// ---------- a proxy that alters the log's hash tiles ----------

/// Forwards every request to `upstream`; flips a byte of every hash tile (`/log/tile/<level>/…`).
fn tampering_proxy(upstream: String) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let altered = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&altered);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let upstream = upstream.clone();
            let flag = Arc::clone(&flag);
            std::thread::spawn(move || {
                let _ = proxy_one(conn, &upstream, &flag);
            });
        }
    });
    (url, altered)
}

fn proxy_one(conn: TcpStream, upstream: &str, altered: &AtomicBool) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("/").to_string(),
    );
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let a = agent();
    let url = format!("{upstream}{path}");
    let resp = if method == "POST" {
        a.post(&url)
            .header("content-type", "application/json")
            .send(&body[..])
    } else {
        a.get(&url).call()
    }
    .map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let mut data = Vec::new();
    resp.into_body()
        .into_reader()
        .take(64 << 20)
        .read_to_end(&mut data)?;
    let tile = path.starts_with("/log/tile/") && !path.starts_with("/log/tile/entries/");
    if tile && status == 200 && !data.is_empty() {
        // One bit of every hash: whichever a proof reads is wrong.
        for h in data.chunks_mut(32) {
            h[0] ^= 1;
        }
        altered.store(true, Ordering::SeqCst);
    }
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        data.len()
    )?;
    w.write_all(&data)?;
    w.flush()
}

// ---------- the devnet ----------

fn run_ok(home: &Path, a: &[&str]) -> String {
    let o = common::agora()
        .env("AGORA_HOME", home)
        .args(a)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "agora {a:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A model statement with a hostile name, logged in the gateway's log (the proposal with one
/// comes through `agora propose`).
fn log_hostile_model(log: &str, by: &Identity) {
    let model = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": XSS, "digest": {"sha256": "ab".repeat(32)}}],
        "predicateType": Kind::Model.type_uri(),
        "predicate": {"name": XSS, "architecture": "llama", "tokenizer": "00".repeat(32),
                      "license": XSS, "data_mix": []},
    });
    let model = Statement::from_payload(
        Kind::Model.payload_type(),
        &serde_json::to_vec(&model).unwrap(),
    )
    .unwrap();
    let (status, body, _) = post(&format!("{log}/add"), model.sign(by).to_json().as_bytes());
    assert_eq!(status, 200, "{body}");
}

#[test]
fn the_dashboard_verifies_in_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    // The gateway's home first: the witness must know its log's key.
    let gw_home = common::temp_home();
    run_ok(gw_home.path(), &["init"]);
    let id = run_ok(gw_home.path(), &["id"]);
    let field = |name: &str| {
        id.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap()
    };
    let (log_vkey, gw_peer) = (field("vkey"), field("peer-id"));
    let witness = tlog_common::start_witness(dir.path(), &log_vkey);
    let witness_vkey = &witness.vkey;
    // A community of one member whose log is the gateway's, cosigned by the witness.
    let community = dir.path().join("community-policy");
    std::fs::write(
        &community,
        format!("log {log_vkey}\nwitness w1 {witness_vkey}\nquorum w1\n"),
    )
    .unwrap();
    run_ok(
        gw_home.path(),
        &[
            "init",
            "--network",
            "dashland",
            "--log-policy",
            community.to_str().unwrap(),
            "--member",
            &gw_peer,
        ],
    );
    let genesis = gw_home.path().join("genesis.toml");
    let gw = Node::start_in(
        gw_home,
        &args(&[
            &["--no-mdns", "--validator", "--check-probability", "1"],
            &["--probation-probability", "1"],
            &["--serve-log", "--log-witnesses"],
            &[witness.policy.to_str().unwrap()],
            &["--p2p-listen", "/ip4/127.0.0.1/tcp/0"],
            SMALL,
        ]),
    );
    assert_eq!(gw.log_vkey.as_deref(), Some(log_vkey.as_str()));
    let worker = Node::start(&args(&[
        &["--no-gateway", "--no-mdns", "--bootstrap"],
        &[gw.p2p[0].as_str()],
        &["--network-file", genesis.to_str().unwrap()],
        &["--p2p-listen", "/ip4/127.0.0.1/tcp/0"],
        SMALL,
    ]));
    common::wait_workers(&gw, 2);
    let gw_id =
        Identity::from_key_file(&std::fs::read_to_string(gw.home.path().join("key")).unwrap())
            .unwrap();
    let log = format!("{}/log", gw.url);
    log_hostile_model(&log, &gw_id);
    // A dataset (one record's text is hostile), signed and logged; the default model's
    // manifest naming it in its mix; and a proposal with a hostile title that the member
    // votes for.
    let home = gw.home.path();
    let corpus = dir.path().join("corpus.jsonl");
    std::fs::write(
        &corpus,
        format!(
            "{}\n{}\n",
            json!({"id": "doc-1", "text": "The sea is wide and the sky is blue."}),
            json!({"id": "doc-2", "text": XSS}),
        ),
    )
    .unwrap();
    run_ok(
        home,
        &[
            "dataset",
            "add",
            corpus.to_str().unwrap(),
            "--name",
            "dashdata",
            "--license",
            "CC-BY-4.0",
            "--source",
            "test",
            "--contributor",
            "ada=Ada Lovelace",
            "--log",
            &log,
        ],
    );
    let mix = dir.path().join("mix.toml");
    std::fs::write(
        &mix,
        "license = \"Apache-2.0\"\nname = \"smol-dash\"\n\
         [[dataset]]\nname = \"dashdata@1\"\nweight = 1.0\n",
    )
    .unwrap();
    run_ok(
        home,
        &[
            "model",
            "publish",
            "smollm2-135m",
            "--mix",
            mix.to_str().unwrap(),
            "--log",
            &log,
            "--log-key",
            &log_vkey,
        ],
    );
    let rules = dir.path().join("rules.toml");
    let g = std::fs::read_to_string(&genesis).unwrap();
    std::fs::write(&rules, g.split("[governance]\n").nth(1).unwrap()).unwrap();
    let out = run_ok(
        home,
        &[
            "propose",
            "--title",
            XSS,
            "--rules",
            rules.to_str().unwrap(),
            "--log",
            &log,
        ],
    );
    let proposal = out
        .lines()
        .find(|l| l.contains("proposal logged"))
        .and_then(|l| l.rsplit("entry ").next())
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no proposal index in: {out}"));
    run_ok(home, &["vote", &proposal.to_string(), "yes", "--log", &log]);

    // The page's headers: a strict policy on every dashboard response (404s too), assets sent
    // compressed; the log readable from any origin.
    let a = agent();
    let r = a.get(&format!("{}/", gw.url)).call().unwrap();
    let csp = r
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self' 'wasm-unsafe-eval'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let r = a.get(&format!("{}/ui/nope.js", gw.url)).call().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.headers().get("content-security-policy").is_some());
    let r = a
        .get(&format!("{}/ui/agora.wasm", gw.url))
        .header("accept-encoding", "gzip")
        .call()
        .unwrap();
    assert_eq!(r.headers().get("content-encoding").unwrap(), "gzip");
    let served = r
        .into_body()
        .with_config()
        .limit(8 << 20)
        .read_to_vec()
        .unwrap();
    assert!(served.len() < 400 << 10, "{} bytes", served.len());
    let r = a.get(&format!("{log}/checkpoint")).call().unwrap();
    assert_eq!(r.headers().get("access-control-allow-origin").unwrap(), "*");

    let b = Browser::start();

    // ---- first load: time to interactive, over loopback, fresh profile ----
    b.go(&format!("{}/#/chat", gw.url));
    let interactive: f64 = b
        .until(
            "the page interactive",
            60,
            "return document.body.dataset.interactive",
        )
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let timing = b.js("const n = performance.getEntriesByType('navigation')[0]; \
         return {html: n.responseEnd, wasm: Number(document.body.dataset.wasm)}");

    // ---- Chat: a streamed answer, verified in the page ----
    b.until(
        "models listed",
        30,
        "return document.querySelectorAll('#model option').length",
    );
    b.type_into("#prompt", "Name three colours.");
    b.click("#send");
    b.until(
        "the answer's Verify button",
        120,
        "return document.querySelector('.assistant button.verify')",
    );
    let answer = b.js("return document.querySelector('.assistant .answer').textContent");
    assert!(
        !answer.as_str().unwrap().trim().is_empty(),
        "no answer text"
    );
    b.click(".assistant button.verify");
    let verdict = b.until(
        "the verification report",
        60,
        "const r = document.querySelector('.assistant [data-verify]'); return r && r.dataset.verify",
    );
    let report = b.js("return document.querySelector('.assistant .report').innerText");
    assert_eq!(verdict, "ok", "chat answer not verified:\n{report}");
    let report = report.as_str().unwrap().to_string();
    assert!(
        report.contains("inclusion proof") && report.contains("cosigned by w1"),
        "{report}"
    );
    b.screenshot("chat");

    // ---- Verify: a saved transcript, then the same with one byte altered ----
    let saved = dir.path().join("answer.json");
    run_ok(
        dir.path(),
        &[
            "chat",
            "--url",
            &gw.url,
            "--seed",
            "7",
            "--max-tokens",
            "24",
            "--save",
            saved.to_str().unwrap(),
            "What is a log?",
        ],
    );
    let good = std::fs::read_to_string(&saved).unwrap();
    let verify_file = |b: &Browser, base: &str, path: &Path| -> (String, String, f64) {
        b.page(base, "verify");
        // A report from an earlier run must not be read for this one.
        b.js("document.querySelector('#verify-result').replaceChildren()");
        b.type_into("#transcript-file", path.to_str().unwrap());
        let v = b.until(
            "the transcript's report",
            60,
            "const r = document.querySelector('#verify-result [data-verify]'); return r && r.dataset.verify",
        );
        let text = b.js("return document.querySelector('#verify-result').innerText");
        let ms = b.js("return document.querySelector('#verify-result [data-verify]').dataset.ms");
        (
            v.as_str().unwrap().to_string(),
            text.as_str().unwrap().to_string(),
            ms.as_str().unwrap().parse().unwrap(),
        )
    };
    // The gateway's validator re-checks every receipt: wait for its verdict on this one.
    let t: Value = serde_json::from_str(&good).unwrap();
    let digest = agora_core::text::digest(t["output"]["text"].as_str().unwrap()).unwrap();
    wait_for("the validator's verdict", Duration::from_secs(120), || {
        let (_, v) = gw.get(&format!("/agora/v1/provenance?digest={digest}"));
        (!v["receipts"][0]["verdicts"].as_array()?.is_empty()).then_some(())
    });
    let mut times = Vec::new();
    for _ in 0..5 {
        let (v, text, ms) = verify_file(&b, &gw.url, &saved);
        assert_eq!(v, "ok", "saved transcript not verified:\n{text}");
        assert!(text.contains("accepted this answer"), "{text}");
        times.push(ms);
    }
    b.screenshot("verify");
    // One byte of the answer's text altered: the text digest no longer matches.
    let text = t["output"]["text"].as_str().unwrap();
    let mut bytes = text.as_bytes().to_vec();
    let at = bytes.iter().position(u8::is_ascii_alphabetic).unwrap();
    bytes[at] ^= 0x20; // the case of one letter
    let altered_text = String::from_utf8(bytes).unwrap();
    let bad = good.replacen(
        &serde_json::to_string(text).unwrap(),
        &serde_json::to_string(&altered_text).unwrap(),
        1,
    );
    assert_ne!(bad, good);
    let bad_path = dir.path().join("altered.json");
    std::fs::write(&bad_path, &bad).unwrap();
    let (v, report, _) = verify_file(&b, &gw.url, &bad_path);
    assert_eq!(v, "failed", "{report}");
    assert!(report.contains("text digest does not match"), "{report}");
    b.screenshot("verify-altered");

    // ---- a proxy that alters the log's tiles: inclusion fails, with the reason ----
    let (proxy, altered) = tampering_proxy(gw.url.clone());
    let (v, report, _) = verify_file(&b, &proxy, &saved);
    assert!(altered.load(Ordering::SeqCst), "the proxy altered no tile");
    assert_eq!(v, "failed", "{report}");
    assert!(
        report.contains("not under the checkpoint's root"),
        "{report}"
    );

    // ---- Network: every worker listed ----
    b.page(&gw.url, "network");
    b.until(
        "the worker listed",
        30,
        &format!(
            "return document.querySelector('tr.peer[data-peer=\"{}\"]')",
            worker.peer_id
        ),
    );
    // The gateway works too: it is listed as a worker beside the other one.
    for id in [&gw.peer_id, &worker.peer_id] {
        let row = b.js(&format!(
            "const r = document.querySelector('tr.peer[data-peer=\"{id}\"]'); \
             return r && r.children[1].textContent"
        ));
        assert!(
            row.as_str().is_some_and(|r| r.contains("worker")),
            "{id}: {row}"
        );
    }
    b.screenshot("network");

    // ---- Log: a cosigned checkpoint; hostile names shown as text ----
    b.page(&gw.url, "log");
    let cp = b.js("return document.querySelector('#checkpoint').dataset.verify");
    assert_eq!(
        cp,
        "ok",
        "{}",
        b.js("return document.querySelector('main').innerText")
    );
    let cosigners = b.js("return document.querySelectorAll('.cosigner').length");
    assert!(cosigners.as_u64().unwrap() >= 1);
    let kinds = b.js("return [...document.querySelectorAll('tr.entry')].map(r => r.dataset.kind)");
    let kinds: Vec<&str> = kinds
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        kinds.contains(&"model") && kinds.contains(&"proposal") && kinds.contains(&"receipt"),
        "{kinds:?}"
    );
    let main_text = b.js("return document.querySelector('main').innerText");
    assert!(main_text.as_str().unwrap().contains(XSS), "{main_text}");
    assert_eq!(b.js("return document.querySelectorAll('img').length"), 0);
    assert!(!b.alert_open(), "a script from a statement ran");
    // One entry's inclusion, proved in the page.
    b.click("tr.entry button");
    b.until(
        "an entry proved",
        30,
        "return [...document.querySelectorAll('tr.entry td')].some(td => td.innerText.includes('✓'))",
    );
    b.screenshot("log");

    // ---- Models: the manifest's and the dataset's statements checked and proved in the
    // page; a record looked up and proven; its hostile text shown as text ----
    b.page(&gw.url, "models");
    let main_text = b.js("return document.querySelector('main').innerText");
    let checked = b.js("return document.querySelectorAll('.model .checked').length");
    assert!(checked.as_u64().unwrap() >= 2, "{main_text}");
    let main_text = main_text.as_str().unwrap();
    assert!(
        main_text.contains("dashdata@1")
            && main_text.contains("CC-BY-4.0")
            && main_text.contains("Ada Lovelace"),
        "{main_text}"
    );
    b.type_into("#record-id", "doc-2");
    b.click("#record-lookup");
    let v = b.until(
        "the record's proof",
        30,
        "const r = document.querySelector('#record-result [data-verify]'); return r && r.dataset.verify",
    );
    let proved = b.js("return document.querySelector('#record-result').innerText");
    assert_eq!(v, "ok", "{proved}");
    let proved = proved.as_str().unwrap();
    assert!(
        proved.contains("is record 1 of dashdata@1")
            && proved.contains("witness cosignature")
            && proved.contains(XSS),
        "{proved}"
    );
    assert_eq!(b.js("return document.querySelectorAll('img').length"), 0);
    b.screenshot("models");

    // ---- Community: the proposal, its hostile title as text, its live tally ----
    b.page(&gw.url, "community");
    let card = b.js(&format!(
        "const c = document.querySelector('.proposal[data-index=\"{proposal}\"]'); \
         return c && {{title: c.querySelector('h2').textContent, tally: c.querySelector('.tally').textContent}}"
    ));
    assert_eq!(card["title"], XSS, "{card}");
    assert!(
        card["tally"].as_str().unwrap().starts_with("yes 1"),
        "{card}"
    );
    assert_eq!(b.js("return document.querySelectorAll('img').length"), 0);
    assert!(!b.alert_open(), "a script from a proposal ran");
    b.screenshot("community");

    // ---- Chinese catalogue ----
    b.js("localStorage.setItem('agora.lang', 'zh'); location.reload()");
    b.until(
        "the page in Chinese",
        30,
        "return document.querySelector('nav a[data-page=\"log\"]')?.textContent === '日志'",
    );
    b.until(
        "the log page",
        30,
        "return document.querySelector('main').dataset.ready === '1'",
    );
    b.screenshot("log-zh");
    assert!(!b.alert_open());

    // ---- no request left the node ----
    let urls = b.requests();
    assert!(!urls.is_empty());
    let foreign: Vec<&String> = urls
        .iter()
        .filter(|u| {
            !(u.starts_with(&gw.url)
                || u.starts_with(&proxy)
                || u.starts_with("data:")
                || u.starts_with("blob:"))
        })
        .collect();
    assert!(foreign.is_empty(), "requests outside the node: {foreign:?}");

    // ---- figures ----
    let wasm = agora_web_wasm();
    let gz = gzip_len(&wasm);
    times.sort_by(f64::total_cmp);
    println!(
        "dashboard: first load to interactive {interactive:.0} ms (page {:.0} ms, checks compiled {:.0} ms; loopback, fresh profile, headless Chromium, nodes idle); \
         agora.wasm {} KB, {} KB gzipped; in-browser verification of a receipt with its \
         inclusion proof and cosignature: median {:.1} ms of {} (min {:.1}, max {:.1})",
        timing["html"].as_f64().unwrap_or(0.0),
        timing["wasm"].as_f64().unwrap_or(0.0),
        wasm.len() / 1024,
        gz / 1024,
        times[times.len() / 2],
        times.len(),
        times[0],
        times[times.len() - 1]
    );
    drop(b);
    drop(worker);
    drop(gw);
}

fn agora_web_wasm() -> Vec<u8> {
    std::fs::read(repo().join("crates/agora-web/assets/agora.wasm")).unwrap()
}

fn gzip_len(data: &[u8]) -> usize {
    let mut c = Command::new("gzip")
        .arg("-9")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data));
    let mut out = Vec::new();
    c.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    w.join().unwrap().unwrap();
    c.wait().unwrap();
    out.len()
}
