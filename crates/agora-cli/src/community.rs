//! A community as this machine knows it (its genesis rules and network id) and its log read
//! under the genesis policy: what `agora propose`, `vote`, `tally` and `credit` share, and what
//! `agora model publish --decision` uses to re-count a decision.

use std::path::Path;
use std::time::Duration;

use agora_api::tlog::LogClient;
use agora_community::history::{self, Attested, History};
use agora_community::read::{self, EntrySource};
use agora_community::rules::Rules;
use agora_core::dsse::Envelope;
use agora_core::statement::{Sha256, Statement};
use anyhow::{Context, Result, bail};

/// A community as this machine knows it: its rules and network id, from its genesis.
pub struct Community {
    pub rules: Rules,
    pub network: String,
}

pub fn community(home: &Path, genesis: Option<&Path>) -> Result<Community> {
    let path = genesis
        .map(Path::to_path_buf)
        .unwrap_or_else(|| agora_node::network::genesis_path(home));
    let bytes = read_utf8(&path, agora_community::rules::MAX_RULES_BYTES)
        .with_context(|| {
            format!(
                "{}: a community's commands need its genesis file (agora init --network NAME --member … --log-policy FILE)",
                path.display()
            )
        })?;
    let rules = Rules::from_genesis(&bytes)
        .with_context(|| path.display().to_string())?
        .ok_or(agora_community::Error::NoGovernance)
        .with_context(|| path.display().to_string())?;
    Ok(Community {
        network: agora_net::NetworkId::from_genesis(bytes.as_bytes()).to_string(),
        rules,
    })
}

/// The community's log, at a checkpoint its policy verifies.
pub struct CLog {
    pub client: LogClient,
    pub url: String,
    pub latest: Attested,
}

impl CLog {
    pub fn open(c: &Community, url: Option<&str>) -> Result<CLog> {
        let url = match url {
            Some(u) => u.to_string(),
            None => c
                .rules
                .log
                .logs
                .first()
                .and_then(|l| l.url.clone())
                .context("the genesis names no URL for the community's log: give --log URL")?,
        };
        let client = LogClient::new(&url);
        let latest = latest(&client, c, &url)?;
        Ok(CLog {
            client,
            url,
            latest,
        })
    }

    /// Re-read the checkpoint until it holds entry `index` (up to 15 s: the next checkpoint
    /// must be cosigned).
    pub fn cover(&mut self, c: &Community, index: u64) -> Result<()> {
        let t0 = std::time::Instant::now();
        while index >= self.latest.size() {
            if t0.elapsed() > Duration::from_secs(15) {
                bail!(
                    "no cosigned checkpoint holds entry {index} after 15 s: are the community's witnesses up?"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
            self.latest = latest(&self.client, c, &self.url)?;
        }
        Ok(())
    }

    /// Proposal `index`'s tally, every entry read from this log and checked.
    pub fn tally(&self, c: &Community, index: u64) -> Result<read::Report> {
        let src = HttpLog(&self.client);
        Ok(read::tally(
            &c.rules,
            &c.network,
            &src,
            &src,
            self.latest.clone(),
            index,
        )?)
    }

    /// Entry `index`, checked by its inclusion proof under the latest checkpoint.
    pub fn entry_checked(&self, index: u64) -> Result<Vec<u8>> {
        if index >= self.latest.size() {
            bail!(
                "entry {index} is beyond the log's checkpoint ({} entries)",
                self.latest.size()
            );
        }
        let size = self.latest.size();
        let entry = self
            .client
            .entry(index, size)
            .with_context(|| format!("reading entry {index} of {}", self.url))?;
        let proof = self.client.inclusion_proof(index, size)?;
        agora_tlog::merkle::verify_inclusion(
            index,
            size,
            &agora_tlog::hash::leaf_hash(&entry),
            &proof,
            &self.latest.checkpoint.checkpoint.root,
        )
        .with_context(|| format!("entry {index} is not in the log under its checkpoint"))?;
        Ok(entry)
    }

    pub fn append(&self, st: &Statement, id: &agora_core::Identity) -> Result<u64> {
        let entry = st.sign(id).to_json();
        self.client
            .add(entry.as_bytes())
            .with_context(|| format!("appending the {} to {}", st.kind().name(), self.url))
    }
}

fn latest(client: &LogClient, c: &Community, url: &str) -> Result<Attested> {
    let t0 = std::time::Instant::now();
    let bytes = loop {
        match client.checkpoint() {
            Err(agora_api::tlog::TlogHttpError::Status { status: 503, .. })
                if t0.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(250));
            }
            r => break r.with_context(|| format!("reading the checkpoint of {url}"))?,
        }
    };
    history::attest(&c.rules.log, &bytes).with_context(|| {
        format!("the checkpoint of {url} does not verify under the community's log policy")
    })
}

/// A log over HTTP, read as a community reads any log.
pub struct HttpLog<'a>(pub &'a LogClient);

impl EntrySource for HttpLog<'_> {
    fn bundle(&self, index: u64, width: u16) -> std::result::Result<Vec<Vec<u8>>, String> {
        self.0.entries(index, width).map_err(|e| e.to_string())
    }
}

impl History for HttpLog<'_> {
    fn first_at_or_after(&self, size: u64) -> std::result::Result<Option<Vec<u8>>, String> {
        self.0
            .checkpoint_at_or_after(size)
            .map_err(|e| e.to_string())
    }
}

/// The decision at `index` of the community's log at `log_url`, checked: it adopted the mix
/// whose digest is `mix`, and a re-count of its proposal under this machine's genesis rules
/// gives the same decision byte for byte. Returns where it is, for a manifest to cite.
pub fn confirm_decision(
    home: &Path,
    log_url: &str,
    index: u64,
    mix: &Sha256,
) -> Result<agora_core::statement::LogRef> {
    let c = community(home, None).context("checking the decision needs the community's rules")?;
    let mut log = CLog::open(&c, Some(log_url))?;
    log.cover(&c, index)?;
    let entry = log.entry_checked(index)?;
    let env = Envelope::from_json(&entry).context("the decision is not a signed statement")?;
    let (_, st) = Statement::open(&env).context("the decision does not check")?;
    let Statement::Decision(d) = st else {
        bail!(
            "entry {index} is a {} statement, not a decision",
            st.kind().name()
        );
    };
    if d.subject != *mix {
        bail!(
            "the decision at entry {index} is about the mix sha256:{}, not this one (sha256:{mix}): publish the mix it adopted, exactly",
            d.subject
        );
    }
    if !d.adopted {
        bail!("the decision at entry {index} did not adopt its mix");
    }
    let report = log.tally(&c, d.proposal.index)?;
    if report.decision(&c.network).as_ref() != Some(&d) {
        bail!(
            "the decision at entry {index} is not what its proposal's votes give: `agora tally {}` shows the count",
            d.proposal.index
        );
    }
    println!(
        "  decision entry {index}: proposal {} adopted (yes {} / no {} / abstain {}), re-counted here",
        d.proposal.index, d.counts.yes, d.counts.no, d.counts.abstain
    );
    Ok(agora_core::statement::LogRef {
        log: log.latest.checkpoint.checkpoint.origin.clone(),
        index,
        statement: Sha256::of(&env.payload),
    })
}

/// A UTF-8 file (or `-`: standard input) of at most `max` bytes.
pub fn read_utf8(path: &Path, max: usize) -> Result<String> {
    let bytes = crate::cmd_provenance::read_text(path, max)?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))
}
