//! `agora propose`, `agora vote`, `agora tally` and `agora credit`: a community deciding its
//! models' data mix in its log, and the credit of those who served and whose data was learned
//! from. Every count is recomputed here from the log's entries, each checked to be in the log
//! under a checkpoint the community's witnesses cosigned; nothing is taken from a node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agora_community::history;
use agora_community::read;
use agora_community::rules::Rules;
use agora_community::tally::{Opened, check_proposal};
use agora_core::statement::{
    Choice, Claim, Decision, Evidence, Motion, Proposal, Sha256, Statement, Vote, mix_digest,
};
use anyhow::{Context, Result, bail};

use crate::cmd_model::printable;
use crate::community::{CLog, Community, HttpLog, community, read_utf8};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::cmd_identity::load_identity;

/// Where the community is and which log it uses.
#[derive(Args, Debug, Clone)]
pub struct CommunityArgs {
    /// The community's genesis file [default: $AGORA_HOME/genesis.toml]
    #[arg(long, value_name = "FILE")]
    pub genesis: Option<PathBuf>,
    /// The community's log [default: the URL on its `log` line in the genesis rules]
    #[arg(long = "log", value_name = "URL", env = "AGORA_LOG_URL")]
    pub log: Option<String>,
}

#[derive(Args, Debug)]
pub struct ProposeArgs {
    /// One-line summary
    #[arg(long)]
    pub title: String,
    /// The data mix to adopt (MIX.toml, as `agora model publish --mix` reads it; its datasets
    /// must be logged in the community's log)
    #[arg(
        long,
        value_name = "MIX.toml",
        conflicts_with = "rules",
        required_unless_present = "rules"
    )]
    pub mix: Option<PathBuf>,
    /// New governance rules to adopt instead (the keys of a genesis [governance] table)
    #[arg(long, value_name = "RULES.toml")]
    pub rules: Option<PathBuf>,
    /// The full text, from a file
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    #[command(flatten)]
    pub community: CommunityArgs,
}

#[derive(Args, Debug)]
pub struct VoteArgs {
    /// The proposal: its index in the community's log
    pub proposal: u64,
    /// yes, no or abstain
    pub choice: Choice,
    /// Why, in your words (logged with the vote)
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub community: CommunityArgs,
}

#[derive(Args, Debug)]
pub struct TallyArgs {
    /// The proposal: its index in the community's log
    pub proposal: u64,
    /// Sign the decision and append it to the log (once the vote is closed), and log evidence
    /// against any decision in the log that disagrees with this count
    #[arg(long)]
    pub sign: bool,
    /// Print JSON for programs
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub community: CommunityArgs,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CreditArgs {
    #[command(subcommand)]
    pub cmd: Option<CreditCommand>,
    #[command(flatten)]
    pub period: PeriodArgs,
    /// Sign the ledger and append it to the log
    #[arg(long)]
    pub sign: bool,
    /// Print JSON for programs
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PeriodArgs {
    /// First entry of the period (a checkpoint's size; 0: the log's start)
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// End of the period, exclusive (a checkpoint's size) [default: the latest checkpoint]
    #[arg(long)]
    pub to: Option<u64>,
    #[command(flatten)]
    pub community: CommunityArgs,
}

#[derive(Subcommand, Debug)]
pub enum CreditCommand {
    /// Print a contributor's line of the period's ledger with its Merkle proof (JSON)
    Prove {
        /// The contributor's key
        key: String,
        #[command(flatten)]
        period: PeriodArgs,
    },
    /// Check a proof made by `agora credit prove` on its own
    Check {
        /// The proof file (- for standard input)
        file: PathBuf,
    },
}

fn when(t: u64) -> String {
    format!("{t} (POSIX seconds)")
}

pub fn propose(home: &Path, a: ProposeArgs) -> Result<()> {
    let c = community(home, a.community.genesis.as_deref())?;
    let id = load_identity(home).context("a proposal is signed with this node's key")?;
    if c.rules.proposers == agora_community::rules::Proposers::Members
        && !c.rules.members.contains_key(&id.peer_id())
    {
        bail!(
            "{} is not a listed member of this community, and only members may propose",
            id.peer_id()
        );
    }
    let mut log = CLog::open(&c, a.community.log.as_deref())?;
    let body = match &a.body {
        Some(p) => read_utf8(p, agora_community::tally::MAX_BODY)?,
        None => String::new(),
    };
    let motion = match (&a.mix, &a.rules) {
        (Some(p), _) => {
            let text = read_utf8(p, agora_data::mix::MAX_MIX_BYTES)?;
            let mix =
                agora_data::mix::Mix::parse(&text).with_context(|| p.display().to_string())?;
            let trust = crate::cmd_log::TrustArgs {
                inline: Some(c.rules.log.clone()),
                ..Default::default()
            };
            let mut tlog = crate::provenance::TrustedLog::open(&log.url, &trust)?;
            let mix = crate::cmd_model::logged_datasets(home, &mix, &mut tlog, &log.url)?;
            Motion::Mix {
                digest: mix_digest(&mix),
                mix,
            }
        }
        (None, Some(p)) => {
            let text = read_utf8(p, agora_community::rules::MAX_RULES_BYTES)?;
            Motion::Rules {
                digest: Sha256::of(text.as_bytes()),
                text,
            }
        }
        (None, None) => bail!("say what to adopt: --mix MIX.toml or --rules RULES.toml"),
    };
    let p = Proposal {
        network: c.network.clone(),
        title: a.title,
        body,
        motion,
        proposer: id.peer_id(),
        time: now(),
    };
    check_proposal(&c.rules, &c.network, &p)
        .context("the proposal breaks the community's rules")?;
    let st = Statement::Proposal(p);
    let pid = Sha256::of(&st.to_payload());
    let index = log.append(&st, &id)?;
    log.cover(&c, index)?;
    let opened = history::first_holding(&HttpLog(&log.client), &c.rules.log, index)?;
    println!(
        "proposal logged at {} entry {index} (id sha256:{pid})",
        log.url
    );
    if let Some(o) = opened {
        println!(
            "  voting closes at {} ({} s after checkpoint {} was cosigned): agora vote {index} yes|no|abstain",
            when(o.time.saturating_add(c.rules.voting_period_secs)),
            c.rules.voting_period_secs,
            o.size()
        );
    }
    Ok(())
}

/// Read and check proposal `index` (as a tallier will).
fn read_proposal(c: &Community, log: &CLog, index: u64) -> Result<Opened> {
    let entry = log.entry_checked(index)?;
    Ok(agora_community::tally::open_proposal(
        &c.rules,
        &c.network,
        &log.latest.checkpoint.checkpoint.origin,
        index,
        &entry,
    )?)
}

pub fn vote(home: &Path, a: VoteArgs) -> Result<()> {
    let c = community(home, a.community.genesis.as_deref())?;
    let id = load_identity(home).context("a vote is signed with this node's key")?;
    let log = CLog::open(&c, a.community.log.as_deref())?;
    let p = read_proposal(&c, &log, a.proposal)?;
    if c.rules.min_accepted_verdicts == 0 && !c.rules.members.contains_key(&id.peer_id()) {
        bail!(
            "{} is not a member of this community: its vote would not be counted",
            id.peer_id()
        );
    }
    if a.reason
        .as_ref()
        .is_some_and(|r| r.len() > agora_community::tally::MAX_REASON)
    {
        bail!(
            "the reason is over {} bytes",
            agora_community::tally::MAX_REASON
        );
    }
    let hist = HttpLog(&log.client);
    if let Some(o) = history::first_holding(&hist, &c.rules.log, a.proposal)? {
        let deadline = o.time.saturating_add(c.rules.voting_period_secs);
        if let Some(closed) =
            history::first_attested_at(&hist, &c.rules.log, o.size(), &log.latest, deadline)?
        {
            bail!(
                "voting on proposal {} closed at checkpoint {} (deadline {}): a vote now would not be counted",
                a.proposal,
                closed.size(),
                when(deadline)
            );
        }
    }
    let v = Vote {
        network: c.network.clone(),
        proposal: p.id(),
        choice: a.choice,
        reason: a.reason,
        voter: id.peer_id(),
        time: now(),
    };
    let index = log.append(&Statement::Vote(v), &id)?;
    println!(
        "vote {} on proposal {} logged at {} entry {index} (your last vote before the deadline counts)",
        a.choice.name(),
        a.proposal,
        log.url
    );
    Ok(())
}

pub fn tally(home: &Path, a: TallyArgs) -> Result<i32> {
    let c = community(home, a.community.genesis.as_deref())?;
    let log = CLog::open(&c, a.community.log.as_deref())?;
    let started = std::time::Instant::now();
    let report = log.tally(&c, a.proposal)?;
    let decision = report.decision(&c.network);
    let disputes: Vec<(&agora_community::tally::Logged, bool)> = report
        .tally
        .logged
        .iter()
        .map(|l| (l, decision.as_ref() == Some(&l.decision)))
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(&c.network))?
        );
    } else {
        print_report(
            &report,
            decision.as_ref(),
            &disputes,
            &c.rules,
            started.elapsed(),
        );
    }
    if a.sign {
        let Some(d) = &decision else {
            bail!(
                "voting is open until {}: there is no decision to sign yet",
                when(report.deadline)
            );
        };
        let id = load_identity(home).context("a decision is signed with this node's key")?;
        let st = Statement::Decision(d.clone());
        let index = log.append(&st, &id)?;
        println!(
            "decision signed by {} and logged at entry {index}",
            id.peer_id()
        );
        for (l, agrees) in &disputes {
            if !agrees {
                let ev = Statement::Evidence(Evidence {
                    observer: id.peer_id(),
                    time: now(),
                    claim: Claim::WrongDecision {
                        decision: l.envelope.clone(),
                        recomputed: String::from_utf8_lossy(&st.to_payload()).into_owned(),
                    },
                });
                let i = log.append(&ev, &id)?;
                println!(
                    "evidence against the decision at entry {} logged at entry {i}",
                    l.index
                );
            }
        }
    }
    Ok(if disputes.iter().any(|(_, ok)| !ok) {
        3
    } else {
        0
    })
}

fn print_report(
    r: &read::Report,
    decision: Option<&Decision>,
    disputes: &[(&agora_community::tally::Logged, bool)],
    rules: &Rules,
    took: Duration,
) {
    let p = &r.proposal;
    println!(
        "proposal {} \"{}\" by {} (id sha256:{})",
        p.at.index,
        printable(&p.proposal.title),
        p.proposal.proposer,
        p.id()
    );
    match &p.proposal.motion {
        Motion::Mix { mix, digest } => {
            println!("  adopts the data mix sha256:{digest}:");
            for e in mix {
                println!(
                    "    {} (entry {}), weight {}",
                    printable(&e.name),
                    e.index,
                    e.weight
                );
            }
        }
        Motion::Rules { digest, .. } => println!("  adopts new governance rules sha256:{digest}"),
    }
    println!(
        "  first in checkpoint {} (cosigned at {}); voting closes at {}",
        r.opened_at.size(),
        r.opened_at.time,
        when(r.deadline)
    );
    match &r.closed_at {
        Some(c) => println!(
            "  CLOSED at checkpoint {} (cosigned at {}): votes in the log under it count",
            c.size(),
            c.time
        ),
        None => {
            println!(
                "  OPEN: the latest checkpoint ({}) is cosigned at {}; these counts are live",
                r.latest.size(),
                r.latest.time
            );
            if now() >= r.deadline {
                println!(
                    "  the deadline has passed by this machine's clock: the vote closes at the next cosigned checkpoint, i.e. with the next entry anyone logs"
                );
            }
        }
    }
    let t = &r.tally;
    println!(
        "  eligible weight {}; counted {} vote(s): yes {} / no {} / abstain {}; quorum {} ({}%); {}",
        t.eligible,
        t.counted.len(),
        t.counts.yes,
        t.counts.no,
        t.counts.abstain,
        if t.quorum_met { "met" } else { "NOT met" },
        rules.quorum_percent,
        match (t.adopted, r.closed_at.is_some()) {
            (true, true) => "ADOPTED".to_string(),
            (false, true) => "REJECTED".to_string(),
            (true, false) => "would be adopted if it closed now".to_string(),
            (false, false) => "would not be adopted if it closed now".to_string(),
        }
    );
    for v in &t.counted {
        println!(
            "    counted  entry {:>6} {} {} (weight {}){}",
            v.index,
            v.voter,
            v.choice.name(),
            v.weight,
            v.reason
                .as_deref()
                .map(|s| format!(": {}", printable(s)))
                .unwrap_or_default()
        );
    }
    for x in &t.refused {
        println!(
            "    NOT counted entry {:>6} {}: {}",
            x.index,
            x.voter.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            x.reason
        );
    }
    for (l, agrees) in disputes {
        let by: Vec<String> = l.signers.iter().map(ToString::to_string).collect();
        println!(
            "  decision at entry {} signed by {}: {}",
            l.index,
            by.join(", "),
            if *agrees {
                "agrees with this count, byte for byte"
            } else if decision.is_none() {
                "DISAGREES: the vote is still open"
            } else {
                "DISAGREES with this count (agora tally --sign logs evidence)"
            }
        );
    }
    if let Some(d) = decision {
        println!(
            "  decision: {}",
            String::from_utf8_lossy(&Statement::Decision(d.clone()).to_payload())
        );
    }
    println!(
        "  (every entry of the log's {} re-read and hashed to its cosigned checkpoint; {:.1} s)",
        r.latest.size(),
        took.as_secs_f64()
    );
}

pub fn credit(home: &Path, a: CreditArgs) -> Result<()> {
    match a.cmd {
        Some(CreditCommand::Prove { key, period }) => {
            let (_, _, computed) = compute_ledger(home, &period)?;
            let Some((index, proof)) = computed.prove(&key) else {
                bail!("{key} has no credit in this period");
            };
            let line = &computed.lines[index as usize];
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "ledger": computed.ledger,
                    "line": line,
                    "index": index,
                    "proof": proof.iter().map(|h| h.to_base64()).collect::<Vec<_>>(),
                }))?
            );
            Ok(())
        }
        Some(CreditCommand::Check { file }) => check_proof(&file),
        None => {
            let (c, log, computed) = compute_ledger(home, &a.period)?;
            let l = &computed.ledger;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"ledger": l, "lines": computed.lines,
                        "receipts": computed.receipts, "rejected": computed.rejected,
                        "logged_ledgers": computed.logged.iter().map(|(i, s, ok)|
                            json!({"index": i, "signers": s, "agrees": ok})).collect::<Vec<_>>()}))?
                );
            } else {
                println!(
                    "credit for entries {}..{} of {} ({} receipts credited, {} rejected by validators)",
                    l.from, l.to.size, l.log, computed.receipts, computed.rejected
                );
                println!("  {:<56} {:>12} {:>12}", "key", "compute", "data");
                for line in &computed.lines {
                    println!(
                        "  {:<56} {:>12} {:>12}",
                        printable(&line.key),
                        line.compute,
                        line.data
                    );
                }
                println!(
                    "  total compute {} tokens, data {} tokens, unattributed {}; root sha256:{}",
                    l.compute, l.data, l.unattributed, l.root
                );
                for (i, signers, agrees) in &computed.logged {
                    println!(
                        "  ledger at entry {i} signed by {}: {}",
                        signers.join(", "),
                        if *agrees {
                            "agrees with this computation, byte for byte"
                        } else {
                            "DISAGREES with this computation"
                        }
                    );
                }
            }
            if a.sign {
                let id = load_identity(home).context("a ledger is signed with this node's key")?;
                let index = log.append(&Statement::Ledger(l.clone()), &id)?;
                println!(
                    "ledger signed by {} and logged at entry {index}",
                    id.peer_id()
                );
            }
            let _ = c;
            if computed.logged.iter().any(|(_, _, ok)| !ok) {
                std::process::exit(3);
            }
            Ok(())
        }
    }
}

fn compute_ledger(
    home: &Path,
    p: &PeriodArgs,
) -> Result<(Community, CLog, agora_community::credit::Computed)> {
    let c = community(home, p.community.genesis.as_deref())?;
    let log = CLog::open(&c, p.community.log.as_deref())?;
    let to = p.to.unwrap_or(log.latest.size());
    let computed = read::ledger(
        &c.rules,
        &c.network,
        &HttpLog(&log.client),
        &log.latest,
        p.from,
        to,
    )?;
    Ok((c, log, computed))
}

fn check_proof(file: &Path) -> Result<()> {
    let text = read_utf8(file, 1 << 20)?;
    let v: Value = serde_json::from_str(&text).context("the proof is not JSON")?;
    let ledger: agora_core::statement::Ledger =
        serde_json::from_value(v["ledger"].clone()).context("the proof's ledger")?;
    let line: agora_core::statement::CreditLine =
        serde_json::from_value(v["line"].clone()).context("the proof's line")?;
    let index = v["index"].as_u64().context("the proof's index")?;
    let proof = v["proof"]
        .as_array()
        .context("the proof's hashes")?
        .iter()
        .map(|h| {
            h.as_str()
                .context("a proof hash is not a string")
                .and_then(|s| Ok(agora_tlog::Hash::from_base64(s, "proof hash")?))
        })
        .collect::<Result<Vec<_>>>()?;
    if !agora_community::credit::verify_line(&ledger, &line, index, &proof) {
        bail!("the line is NOT in the ledger: its proof does not lead to the ledger's root");
    }
    println!(
        "OK: {} has compute {} and data {} in the ledger of entries {}..{} of {} (root sha256:{})",
        line.key, line.compute, line.data, ledger.from, ledger.to.size, ledger.log, ledger.root
    );
    Ok(())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
