//! Checking a model's provenance from the client's side: the tree is built here from log
//! entries (never taken from a node as is), and every entry it rests on is checked to be in the
//! log under a checkpoint the user trusts (`--log-key` / `--policy`), or said not to be.
//!
//! Statements are found through what this machine recorded (the manifests it published, the
//! datasets it logged) and, when a node is named or the log is a node's `/log`, through that
//! node's `GET /agora/v1/models/{digest}/provenance` index. The node is only a finder: what it
//! returns is checked like anything else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agora_api::tlog::LogClient;
use agora_core::statement::Sha256;
use agora_datastore::DatasetStore;
use agora_datastore::store::parse_ref;
use agora_node::datasets::LOG_FILE;
use agora_node::provenance::{self, Entries, Given, Locator, Tree};
use agora_tlog::checkpoint::SignedCheckpoint;
use agora_tlog::hash::leaf_hash;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cmd_log::TrustArgs;

/// Where this machine records the manifests it published: `<sha256>.json` = `{"url", "index",
/// "statement"}` (beside the model store, not in it: a store may be shared by several homes).
pub fn manifests_dir(home: &Path) -> PathBuf {
    home.join("manifests")
}

/// A log as read here: its client, its trusted (or not) checkpoint.
pub struct TrustedLog {
    pub client: LogClient,
    pub checkpoint: SignedCheckpoint,
    /// Whether the checkpoint's signature was checked (`--log-key`/`--policy` given).
    pub verified: bool,
    policy: Option<agora_tlog::policy::Policy>,
    trust: TrustArgs,
}

impl TrustedLog {
    /// Reads the log's checkpoint at `url`, checked as `trust` says.
    pub fn open(url: &str, trust: &TrustArgs) -> Result<TrustedLog> {
        let client = LogClient::new(url);
        // A log publishes its first checkpoint a moment after its first entry.
        let t0 = std::time::Instant::now();
        let bytes = loop {
            match client.checkpoint() {
                Err(agora_api::tlog::TlogHttpError::Status { status: 503, .. })
                    if t0.elapsed().as_secs() < 3 =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                r => break r.with_context(|| format!("reading the checkpoint of {url}"))?,
            }
        };
        let (checkpoint, verified) = trust.open(&bytes)?;
        let policy = match (&trust.inline, &trust.policy) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(p)) => Some(crate::cmd_log::read_policy(p)?),
            (None, None) => None,
        };
        Ok(TrustedLog {
            client,
            checkpoint,
            verified,
            policy,
            trust: trust.clone(),
        })
    }

    /// Waits (up to 10 s) for a checkpoint covering entry `index`, re-reading the log's
    /// checkpoint: an entry just appended is covered by the next one (about a second).
    pub fn cover(&mut self, index: u64) -> Result<()> {
        let t0 = std::time::Instant::now();
        while index >= self.size() && t0.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(250));
            let bytes = self.client.checkpoint()?;
            let (checkpoint, verified) = self.trust.open(&bytes)?;
            if checkpoint.checkpoint.origin != self.origin() {
                bail!("the log changed its origin");
            }
            self.checkpoint = checkpoint;
            self.verified = verified;
        }
        Ok(())
    }

    pub fn origin(&self) -> &str {
        &self.checkpoint.checkpoint.origin
    }

    pub fn size(&self) -> u64 {
        self.checkpoint.checkpoint.size
    }

    /// Whether `entry` is the log's entry `index` under the checkpoint: one line saying how it
    /// was checked, or why it is not.
    pub fn check_inclusion(&self, index: u64, entry: &[u8]) -> Result<String, String> {
        let size = self.size();
        if index >= size {
            return Err(format!(
                "NOT in the log: entry {index} is beyond its checkpoint ({size} entries)"
            ));
        }
        let path = self
            .client
            .inclusion_proof(index, size)
            .map_err(|e| format!("its log proof could not be read: {e}"))?;
        agora_tlog::merkle::verify_inclusion(
            index,
            size,
            &leaf_hash(entry),
            &path,
            &self.checkpoint.checkpoint.root,
        )
        .map_err(|e| format!("NOT in the log at entry {index}: {e}"))?;
        Ok(match &self.policy {
            Some(p) => format!(
                "in the log (checkpoint {size}, signature and {} witness cosignature(s) verified)",
                p.cosigners(&self.checkpoint).map(|c| c.len()).unwrap_or(0)
            ),
            None if self.verified => format!("in the log (checkpoint {size}, signature verified)"),
            None => format!(
                "in the log (checkpoint {size}; its signature NOT checked: pass --log-key or --policy)"
            ),
        })
    }
}

/// Entries from what a node gave, else from the log; locations from the node and this
/// machine's records.
struct Source<'a> {
    log: &'a TrustedLog,
    log_url: String,
    given: Given,
    home: &'a Path,
}

impl Entries for Source<'_> {
    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, String> {
        if let Some(e) = self.given.entries.get(&index) {
            return Ok(Some(e.clone()));
        }
        if index >= self.log.size() {
            return Ok(None);
        }
        self.log
            .client
            .entry(index, self.log.size())
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// `{"url", "index"}` records.
fn recorded(bytes: &[u8], log_url: &str) -> Option<u64> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    (v["url"].as_str()?.trim_end_matches('/') == log_url.trim_end_matches('/'))
        .then(|| v["index"].as_u64())
        .flatten()
}

impl Locator for Source<'_> {
    fn models(&self, weights: &Sha256) -> Result<Vec<u64>, String> {
        let mut out = self.given.models(weights)?;
        let rec = manifests_dir(self.home).join(format!("{weights}.json"));
        if let Ok(b) = std::fs::read(&rec)
            && let Some(i) = recorded(&b, &self.log_url)
        {
            out.push(i);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn datasets(&self, name_version: &str) -> Result<Vec<u64>, String> {
        let mut out = self.given.datasets(name_version)?;
        let store = DatasetStore::open(&self.home.join("datasets"));
        if let Ok((n, Some(v))) = parse_ref(name_version)
            && let Ok(m) = store.manifest(n, Some(v))
            && let Ok(Some(b)) = store.attached(&m, LOG_FILE)
            && let Some(i) = recorded(&b, &self.log_url)
        {
            out.push(i);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// A provenance tree with each entry's inclusion checked.
pub struct Checked {
    pub tree: Tree,
    pub inclusion: BTreeMap<u64, Result<String, String>>,
    /// Why the node's index could not be used, if one was asked.
    pub node_note: Option<String>,
    /// Whether the checkpoint's signature was checked.
    pub verified: bool,
}

impl Checked {
    /// Whether everything is proven: a manifest, nothing flagged, every entry in the log under
    /// a checkpoint whose signature was checked.
    pub fn proven(&self) -> bool {
        self.verified && self.tree.complete() && self.inclusion.values().all(Result::is_ok)
    }

    /// The closing line.
    pub fn verdict(&self) -> &'static str {
        if self.proven() {
            "every statement above is signed, linked and in the log under its signed checkpoint"
        } else if !self.verified && self.tree.complete() {
            "NOT proven: the log's checkpoint signature was not checked (pass --log-key or --policy)"
        } else {
            "NOT fully proven: see the lines marked !"
        }
    }

    pub fn render(&self) -> String {
        let mut out = self.tree.render(&|i| match self.inclusion.get(&i) {
            Some(Ok(s)) => s.clone(),
            Some(Err(e)) => format!("! {e}"),
            None => "not checked".into(),
        });
        if let Some(n) = &self.node_note {
            out.push_str(&format!("(the node's index was not used: {n})\n"));
        }
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "proven": self.proven(),
            "log": self.tree.log,
            "tree": self.tree,
            "inclusion": self.inclusion.iter().map(|(i, r)| (i.to_string(), match r {
                Ok(s) => json!({"ok": true, "how": s}),
                Err(e) => json!({"ok": false, "why": e}),
            })).collect::<serde_json::Map<_, _>>(),
            "node_note": self.node_note,
            "checkpoint_signature_verified": self.verified,
        })
    }
}

/// The node base URL a log URL belongs to, when it is a node's `/log`.
pub fn node_of(log_url: &str) -> Option<String> {
    log_url
        .trim_end_matches('/')
        .strip_suffix("/log")
        .map(str::to_string)
}

/// Builds and checks the provenance of `weights` through the log at `log_url`, asking `node`
/// (default: the node whose `/log` the log is) where the statements are.
pub fn check(
    home: &Path,
    weights: Sha256,
    log: &mut TrustedLog,
    log_url: &str,
    node: Option<&str>,
) -> Result<Checked> {
    let mut given = Given::default();
    let mut node_note = None;
    if let Some(node) = node.map(str::to_string).or_else(|| node_of(log_url)) {
        match agora_api::client::Client::new(&node)
            .get_json(&format!("/agora/v1/models/{weights}/provenance"))
        {
            Ok(v) => {
                if let Some(m) = v["entries"].as_object() {
                    for (i, e) in m {
                        if let (Ok(i), Some(e)) = (i.parse::<u64>(), e.as_str()) {
                            given.entries.insert(i, e.as_bytes().to_vec());
                        }
                    }
                }
            }
            Err(e) => node_note = Some(e.to_string()),
        }
    }
    // A manifest published from here a moment ago may not be under a checkpoint yet.
    let recorded = manifests_dir(home).join(format!("{weights}.json"));
    if let Ok(b) = std::fs::read(&recorded)
        && let Some(i) = self::recorded(&b, log_url)
    {
        log.cover(i)?;
    }
    let log = &*log;
    let src = Source {
        log,
        log_url: log_url.to_string(),
        given,
        home,
    };
    let tree = provenance::build(log.origin(), weights, &src, &src);
    let mut inclusion = BTreeMap::new();
    for i in tree.indices() {
        let r = match src.entry(i) {
            Ok(Some(e)) => log.check_inclusion(i, &e),
            Ok(None) => Err(format!("the log has no entry {i}")),
            Err(e) => Err(e),
        };
        inclusion.insert(i, r);
    }
    Ok(Checked {
        tree,
        inclusion,
        node_note,
        verified: log.verified,
    })
}
