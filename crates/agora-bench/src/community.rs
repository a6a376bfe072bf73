//! `agora bench-community`: what recomputing a community's decisions and credit costs anyone.
//!
//! Two real log stores (redb, as a node keeps its log) are filled: one with a mix proposal and
//! `--votes` signed votes by `--members` members (each votes several times; the last counts),
//! one with a model manifest over a two-dataset mix and `--receipts` signed receipts from 64
//! workers, a rejected verdict on every hundredth. Checkpoints cosigned by a witness date the
//! vote. Then the tally and the ledger are computed as `agora tally` and `agora credit` compute
//! them: every entry read back, every signature checked, every entry hashed into the tree and
//! the root compared with the cosigned checkpoint, membership checked per vote. Prints the time
//! and the peak memory of each, with the machine's conditions.

use std::path::{Path, PathBuf};
use std::time::Instant;

use agora_community::history;
use agora_community::rules::Rules;
use agora_core::statement::{
    Choice, Contribution, DatasetPredicate, DigestSet, MixEntry, ModelPredicate, Motion, Proposal,
    Receipt, Sha256, Subject, Verdict, Vote, mix_digest,
};
use agora_core::{Identity, Statement};
use agora_log::store::LogStore;
use agora_node::community::StoreLog;
use agora_tlog::checkpoint::{Checkpoint, SignedCheckpoint};
use agora_tlog::hash::leaf_hash;
use agora_tlog::tile::Frontier;
use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{cpu_name, num_cores};

#[derive(Args, Debug)]
pub struct BenchCommunityArgs {
    /// Votes in the log.
    #[arg(long, default_value_t = 1_000_000)]
    pub votes: u64,
    /// Members (each votes votes/members times; at most 100,000, the rules' limit).
    #[arg(long, default_value_t = 100_000)]
    pub members: u64,
    /// Receipts in the credit log.
    #[arg(long, default_value_t = 1_000_000)]
    pub receipts: u64,
    /// Where the logs are built (kept for the next run with the same sizes).
    #[arg(long, default_value = "/var/tmp/agora-bench/community")]
    pub dir: PathBuf,
}

const NETWORK: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";
const T0: u64 = 1_796_000_000;

fn log_id() -> Identity {
    Identity::from_seed(&[1; 32])
}

fn witness_id() -> Identity {
    Identity::from_seed(&[2; 32])
}

fn member(i: u64) -> Identity {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&i.to_be_bytes());
    Identity::from_seed(&seed)
}

fn rules(members: u64) -> Result<Rules> {
    let log = log_id();
    let policy = format!(
        "log {}\nwitness w1 {}\nquorum w1\n",
        log.vkey(&log.default_log_origin())?,
        witness_id().witness_vkey("w1")?
    );
    let names: Vec<String> = (0..members)
        .map(|i| member(i).peer_id().to_string())
        .collect();
    let text = agora_community::rules::governance_toml(&names, &policy, 3600, 50, 50);
    Ok(Rules::parse(&text.replacen("\n[governance]\n", "", 1))?)
}

/// Saves a checkpoint of the store's current tree, cosigned at `time`.
fn checkpoint(store: &LogStore, frontier: &Frontier, time: u64) -> Result<()> {
    let log = log_id();
    let origin = log.default_log_origin();
    let cp = Checkpoint::new(&origin, frontier.size(), frontier.root());
    let mut sc = SignedCheckpoint::sign(cp, &log.log_signer(&origin)?)?;
    let sig = witness_id().cosigner("w1")?.cosign(&sc.note.text, time)?;
    sc.note.sigs.push(sig);
    store.save_checkpoint(frontier.size(), &sc.to_bytes())?;
    Ok(())
}

fn append(store: &LogStore, frontier: &mut Frontier, entries: &[Vec<u8>]) -> Result<()> {
    let leaves: Vec<(&[u8], agora_tlog::hash::Hash)> = entries
        .iter()
        .map(|e| (e.as_slice(), leaf_hash(e)))
        .collect();
    store.append(frontier, &leaves)?;
    Ok(())
}

/// Opens the store at `path`; `fill` fills a new one. Returns the store.
fn open(
    path: &Path,
    fill: impl FnOnce(&LogStore, &mut Frontier) -> Result<()>,
) -> Result<LogStore> {
    let log = log_id();
    let origin = log.default_log_origin();
    let fresh = !path.exists();
    let (store, mut frontier) = LogStore::open(path, &origin, log.public_key().as_bytes(), false)
        .with_context(|| format!("opening {}", path.display()))?;
    if (fresh || store.size()? == 0)
        && let Err(e) = fill(&store, &mut frontier)
    {
        drop(store);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(store)
}

fn fill_votes(store: &LogStore, frontier: &mut Frontier, votes: u64, members: u64) -> Result<()> {
    let t0 = Instant::now();
    let proposer = member(0);
    let mix = vec![MixEntry {
        name: "stories@1".into(),
        log: log_id().default_log_origin(),
        index: 0,
        dataset: Sha256([3; 32]),
        weight: 1.0,
        tokens: None,
    }];
    let p = Statement::Proposal(Proposal {
        network: NETWORK.into(),
        title: "Adopt stories".into(),
        body: String::new(),
        motion: Motion::Mix {
            digest: mix_digest(&mix),
            mix,
        },
        proposer: proposer.peer_id(),
        time: T0,
    })
    .sign(&proposer);
    let pid = Sha256::of(&p.payload);
    append(store, frontier, &[p.to_json().into_bytes()])?;
    checkpoint(store, frontier, T0)?;
    let ids: Vec<Identity> = (0..members).map(member).collect();
    let chunk = 20_000u64;
    let mut done = 0;
    while done < votes {
        let n: Vec<u64> = (done..(done + chunk).min(votes)).collect();
        let entries = agora_community::parallel::map(&n, num_cores(), |&i| {
            let who = &ids[(i % members) as usize];
            let choice = match i % 3 {
                0 => Choice::Yes,
                1 => Choice::No,
                _ => Choice::Abstain,
            };
            Statement::Vote(Vote {
                network: NETWORK.into(),
                proposal: pid,
                choice,
                reason: None,
                voter: who.peer_id(),
                time: T0 + i,
            })
            .sign(who)
            .to_json()
            .into_bytes()
        });
        append(store, frontier, &entries)?;
        done += n.len() as u64;
        if done.is_multiple_of(200_000) {
            eprintln!("{done} votes logged ({:.0} s)", t0.elapsed().as_secs_f64());
        }
    }
    // Cosigned after the voting period: every vote above is on time.
    checkpoint(store, frontier, T0 + 7200)
}

fn fill_receipts(store: &LogStore, frontier: &mut Frontier, receipts: u64) -> Result<()> {
    let t0 = Instant::now();
    let publisher = member(0);
    let weights = Sha256([9; 32]);
    let mut head = Vec::new();
    let mut mix = Vec::new();
    for (i, (name, who)) in [("stories", "alice"), ("poems", "bob")].iter().enumerate() {
        let d = Statement::Dataset {
            subject: vec![Subject {
                name: format!("{name}.jsonl"),
                digest: DigestSet {
                    sha256: Sha256([i as u8; 32]),
                },
            }],
            predicate: DatasetPredicate {
                name: (*name).into(),
                license: "CC0-1.0".into(),
                source: "bench".into(),
                version: 1,
                records_root: Sha256([5; 32]),
                ids_root: None,
                records: 1000,
                size: 100_000,
                derived_from: None,
                contributors: vec![
                    Contribution {
                        key: (*who).into(),
                        label: None,
                        records: 700,
                    },
                    Contribution {
                        key: format!("{who}-friend"),
                        label: None,
                        records: 300,
                    },
                ],
            },
        }
        .sign(&publisher);
        mix.push(MixEntry {
            name: format!("{name}@1"),
            log: log_id().default_log_origin(),
            index: i as u64,
            dataset: Sha256::of(&d.payload),
            weight: if i == 0 { 3.0 } else { 1.0 },
            tokens: None,
        });
        head.push(d.to_json().into_bytes());
    }
    let m = Statement::Model {
        subject: vec![Subject {
            name: "model.gguf".into(),
            digest: DigestSet { sha256: weights },
        }],
        predicate: ModelPredicate {
            name: "bench".into(),
            architecture: "llama".into(),
            tokenizer: Sha256([4; 32]),
            license: "Apache-2.0".into(),
            resources: vec![],
            base_model: None,
            data_mix: mix,
            declared_data: vec![],
            recipe: None,
            unknown: vec![],
            decision: None,
            chunks: None,
        },
    }
    .sign(&publisher);
    head.push(m.to_json().into_bytes());
    append(store, frontier, &head)?;
    let workers: Vec<Identity> = (0..64).map(|i| member(1_000_000 + i)).collect();
    let validator = member(0);
    let chunk = 20_000u64;
    let mut done = 0;
    while done < receipts {
        let n: Vec<u64> = (done..(done + chunk).min(receipts)).collect();
        let entries: Vec<Vec<Vec<u8>>> = agora_community::parallel::map(&n, num_cores(), |&i| {
            let w = &workers[(i % 64) as usize];
            let r = Statement::Receipt(Receipt {
                model: weights,
                request: Sha256::of(&i.to_be_bytes()),
                output: Sha256::of(&(i + 1).to_be_bytes()),
                seed: i,
                prompt_tokens: 100,
                completion_tokens: 64 + (i % 64) as u32,
                proof: Sha256([8; 32]),
                worker: w.peer_id(),
                time: T0 + i,
                resumed: 0,
                text: None,
                fingerprint: None,
                unverifiable: false,
            })
            .sign(w);
            let mut out = vec![r.to_json().into_bytes()];
            if i.is_multiple_of(100) {
                out.push(
                    Statement::Verdict(Verdict {
                        receipt: Sha256::of(&r.payload),
                        worker: Some(w.peer_id()),
                        validator: validator.peer_id(),
                        accept: false,
                        stats: Default::default(),
                        reason: Some("bench".into()),
                        time: T0 + i,
                    })
                    .sign(&validator)
                    .to_json()
                    .into_bytes(),
                );
            }
            out
        });
        let flat: Vec<Vec<u8>> = entries.into_iter().flatten().collect();
        append(store, frontier, &flat)?;
        done += n.len() as u64;
        if done.is_multiple_of(200_000) {
            eprintln!(
                "{done} receipts logged ({:.0} s)",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    checkpoint(store, frontier, T0 + 7200)
}

/// Peak resident memory since the last reset, in MB; and reset it.
fn peak_mb_and_reset() -> f64 {
    let mb = crate::server::peak_rss_mb(std::process::id());
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    mb
}

pub fn run(a: BenchCommunityArgs) -> Result<()> {
    if a.members == 0 || a.members > agora_community::rules::MAX_MEMBERS as u64 || a.votes == 0 {
        bail!("--members must be 1 to 100000 and --votes at least 1");
    }
    std::fs::create_dir_all(&a.dir)?;
    let rules = rules(a.members)?;
    let vpath = a.dir.join(format!("votes-{}-{}.redb", a.votes, a.members));
    let rpath = a.dir.join(format!("receipts-{}.redb", a.receipts));
    // Built once (kept for the next run), then each opened on its own for its measurement.
    drop(open(&vpath, |s, f| fill_votes(s, f, a.votes, a.members))?);
    drop(open(&rpath, |s, f| fill_receipts(s, f, a.receipts))?);

    // The tally, as `agora tally` computes it.
    let vstore = open(&vpath, |_, _| bail!("{} is empty", vpath.display()))?;
    peak_mb_and_reset();
    let src = StoreLog(&vstore);
    let latest_bytes = vstore.checkpoint()?.context("no checkpoint")?;
    let t0 = Instant::now();
    let latest = history::attest(&rules.log, &latest_bytes)?;
    let report = agora_community::read::tally(&rules, NETWORK, &src, &src, latest, 0)?;
    let tally_secs = t0.elapsed().as_secs_f64();
    let tally_mb = peak_mb_and_reset();
    let t = &report.tally;
    if report.closed_at.is_none() || t.counted.len() as u64 != a.members.min(a.votes) {
        bail!(
            "the tally counted {} votes of {} members (closed: {})",
            t.counted.len(),
            a.members,
            report.closed_at.is_some()
        );
    }
    drop(vstore);

    // The ledger, as `agora credit` computes it.
    let rstore = open(&rpath, |_, _| bail!("{} is empty", rpath.display()))?;
    peak_mb_and_reset();
    let src = StoreLog(&rstore);
    let latest_bytes = rstore.checkpoint()?.context("no checkpoint")?;
    let t0 = Instant::now();
    let latest = history::attest(&rules.log, &latest_bytes)?;
    let size = latest.size();
    let ledger = agora_community::read::ledger(&rules, NETWORK, &src, &latest, 0, size)?;
    let ledger_secs = t0.elapsed().as_secs_f64();
    let ledger_mb = peak_mb_and_reset();
    if ledger.receipts + ledger.rejected != a.receipts {
        bail!(
            "the ledger saw {} receipts of {}",
            ledger.receipts + ledger.rejected,
            a.receipts
        );
    }

    println!(
        "\nmachine: {}, {} cores (signatures checked on all of them); redb log stores at {} (256 MB page cache each, in the peak)",
        cpu_name(),
        num_cores(),
        a.dir.display()
    );
    println!("\n| community | figure | target |");
    println!("|---|---|---|");
    println!(
        "| re-tally of {} votes by {} members (each signature, membership and the tree checked; {} counted, {} superseded) | {:.1} s ({:.0} votes/s), peak {:.0} MB | ≤ 30 s |",
        a.votes,
        a.members,
        t.counted.len(),
        t.refused.len(),
        tally_secs,
        a.votes as f64 / tally_secs,
        tally_mb
    );
    println!(
        "| credit ledger over {} receipts of 64 workers ({} rejected; two datasets, four contributors) | {:.1} s ({:.0} receipts/s), peak {:.0} MB | ≤ 30 s |",
        a.receipts,
        ledger.rejected,
        ledger_secs,
        a.receipts as f64 / ledger_secs,
        ledger_mb
    );
    println!(
        "\ntally: yes {} / no {} / abstain {} of {} eligible; ledger: compute {} tokens, data {} tokens over {} lines",
        t.counts.yes,
        t.counts.no,
        t.counts.abstain,
        t.eligible,
        ledger.ledger.compute,
        ledger.ledger.data,
        ledger.ledger.lines
    );
    Ok(())
}
