//! A community's rules: the `[governance]` table of its genesis policy (`$AGORA_HOME/genesis.toml`,
//! whose SHA-256 is the network id, so the rules are part of what identifies the community).
//!
//! ```toml
//! name = "kenya"
//!
//! [governance]
//! members = ["12D3KooW…", "12D3KooW…"]   # who may vote (Agora peer ids)
//! weights = { "12D3KooW…" = 2 }          # optional: a member's weight (default 1)
//! min_accepted_verdicts = 0              # also members: workers with at least N accepted
//!                                        #   verdicts by validators, logged before the proposal
//! validators = ["12D3KooW…"]             # whose verdicts count (default: the members)
//! proposers = "members"                  # "members" or "anyone"
//! voting_period_secs = 604800            # from the checkpoint that first holds the proposal
//! quorum_percent = 50                    # of the eligible weight that must vote
//! threshold_percent = 50                 # `yes` must be more than this share of yes + no
//! base_share_percent = 50                # credit: share of a fine-tuned model's data credit
//!                                        #   that goes to its base model's data
//! derived_share_percent = 50             # credit: share of a derived dataset's that goes to
//!                                        #   the dataset it derives from
//! log = """                              # the community's log and witnesses (tlog-policy):
//! log agora.log/12D3KooW… <vkey>         #   votes count under a checkpoint cosigned by a
//! witness w1 <vkey>                      #   quorum of these witnesses, at the time they attest
//! quorum w1
//! """
//! ```
//!
//! Parsing is strict (unknown keys are errors naming the line) and bounded (the file, the
//! member list), so a hostile genesis or rules proposal costs little.

use std::collections::{BTreeMap, HashMap, HashSet};

use agora_core::identity::PeerId;
use agora_tlog::policy::{Policy, Quorum};
use serde::Deserialize;

use crate::{Error, Result};

/// Largest genesis or rules text read.
pub const MAX_RULES_BYTES: usize = 8 << 20;
/// Most listed members (and most listed validators).
pub const MAX_MEMBERS: usize = 100_000;
/// Longest voting period: a year.
pub const MAX_PERIOD_SECS: u64 = 366 * 86_400;

/// Who may propose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proposers {
    /// Listed members only (not workers qualified by verdicts).
    Members,
    /// Any key.
    Anyone,
}

/// A community's governance rules, checked.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Listed members and their weights.
    pub members: HashMap<PeerId, u64>,
    /// Listed members in file order (for display).
    pub member_list: Vec<PeerId>,
    /// Workers with at least this many accepted verdicts by validators are also members
    /// (weight 1); 0: off.
    pub min_accepted_verdicts: u64,
    /// Whose verdicts count (for membership and for excluding rejected receipts from credit).
    pub validators: HashSet<PeerId>,
    /// Who may propose.
    pub proposers: Proposers,
    /// Voting period, in seconds after the checkpoint that first holds the proposal.
    pub voting_period_secs: u64,
    /// Percent of the eligible weight that must vote (yes, no or abstain).
    pub quorum_percent: u64,
    /// `yes` must be more than this percent of `yes + no`.
    pub threshold_percent: u64,
    /// Credit: percent of a model's data credit that goes to its base model's data.
    pub base_share_percent: u64,
    /// Credit: percent of a derived dataset's credit that goes to the dataset it derives from.
    pub derived_share_percent: u64,
    /// The community's log and witnesses.
    pub log: Policy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    members: Vec<String>,
    #[serde(default)]
    weights: BTreeMap<String, u64>,
    #[serde(default)]
    min_accepted_verdicts: u64,
    #[serde(default)]
    validators: Option<Vec<String>>,
    #[serde(default)]
    proposers: Option<String>,
    voting_period_secs: u64,
    quorum_percent: u64,
    threshold_percent: u64,
    #[serde(default)]
    base_share_percent: Option<u64>,
    #[serde(default)]
    derived_share_percent: Option<u64>,
    log: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenesisFile {
    #[allow(dead_code)]
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    created_unix: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    nonce: Option<String>,
    #[serde(default)]
    governance: Option<RulesFile>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Rules(msg.into())
}

fn peer(s: &str, what: &str) -> Result<PeerId> {
    s.parse()
        .map_err(|e| bad(format!("{what} {s:?} is not a peer id: {e}")))
}

fn percent(v: u64, what: &str) -> Result<u64> {
    if v > 100 {
        return Err(bad(format!("{what} is {v}: at most 100")));
    }
    Ok(v)
}

impl Rules {
    /// The rules of a genesis policy's text; `Ok(None)` when it has no `[governance]` table.
    pub fn from_genesis(text: &str) -> Result<Option<Rules>> {
        if text.len() > MAX_RULES_BYTES {
            return Err(bad(format!("the genesis is over {MAX_RULES_BYTES} bytes")));
        }
        let g: GenesisFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        g.governance.map(Rules::check).transpose()
    }

    /// Rules written on their own (the text of a rules proposal: the `[governance]` table's
    /// keys at the top level).
    pub fn parse(text: &str) -> Result<Rules> {
        if text.len() > MAX_RULES_BYTES {
            return Err(bad(format!("the rules are over {MAX_RULES_BYTES} bytes")));
        }
        let f: RulesFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        Rules::check(f)
    }

    fn check(f: RulesFile) -> Result<Rules> {
        if f.members.is_empty() {
            return Err(bad(
                "members is empty: a community needs at least one member",
            ));
        }
        if f.members.len() > MAX_MEMBERS {
            return Err(bad(format!("more than {MAX_MEMBERS} members")));
        }
        let mut members = HashMap::new();
        let mut member_list = Vec::new();
        for m in &f.members {
            let p = peer(m, "member")?;
            if members.insert(p, 1u64).is_some() {
                return Err(bad(format!("member {m} is listed twice")));
            }
            member_list.push(p);
        }
        for (k, w) in &f.weights {
            let p = peer(k, "weighted key")?;
            let Some(slot) = members.get_mut(&p) else {
                return Err(bad(format!("weights names {k}, who is not a member")));
            };
            if *w == 0 || *w > 1_000_000 {
                return Err(bad(format!("the weight of {k} is {w}: from 1 to 1000000")));
            }
            *slot = *w;
        }
        let validators = match &f.validators {
            None => member_list.iter().copied().collect(),
            Some(v) => {
                if v.len() > MAX_MEMBERS {
                    return Err(bad(format!("more than {MAX_MEMBERS} validators")));
                }
                v.iter()
                    .map(|s| peer(s, "validator"))
                    .collect::<Result<HashSet<_>>>()?
            }
        };
        let proposers = match f.proposers.as_deref() {
            None | Some("members") => Proposers::Members,
            Some("anyone") => Proposers::Anyone,
            Some(o) => {
                return Err(bad(format!(
                    "proposers is {o:?}: \"members\" or \"anyone\""
                )));
            }
        };
        if f.voting_period_secs == 0 || f.voting_period_secs > MAX_PERIOD_SECS {
            return Err(bad(format!(
                "voting_period_secs is {}: from 1 to {MAX_PERIOD_SECS}",
                f.voting_period_secs
            )));
        }
        let log = Policy::parse(f.log.as_bytes())
            .map_err(|e| bad(format!("log is not a tlog-policy: {e}")))?;
        if log.logs.len() != 1 {
            return Err(bad(format!(
                "log names {} logs: a community has exactly one",
                log.logs.len()
            )));
        }
        if log.witnesses.is_empty() || log.quorum == Quorum::None {
            return Err(bad(
                "log needs witnesses and a quorum: deadlines are the times a quorum of witnesses attests, not the log's own word",
            ));
        }
        Ok(Rules {
            members,
            member_list,
            min_accepted_verdicts: f.min_accepted_verdicts,
            validators,
            proposers,
            voting_period_secs: f.voting_period_secs,
            quorum_percent: percent(f.quorum_percent, "quorum_percent")?,
            threshold_percent: percent(f.threshold_percent, "threshold_percent")?,
            base_share_percent: percent(f.base_share_percent.unwrap_or(50), "base_share_percent")?,
            derived_share_percent: percent(
                f.derived_share_percent.unwrap_or(50),
                "derived_share_percent",
            )?,
            log,
        })
    }

    /// The origin of the community's log.
    pub fn log_origin(&self) -> &str {
        self.log
            .logs
            .first()
            .map(|l| l.vkey.name.as_str())
            .unwrap_or("")
    }

    /// Whether the votes cast reach the quorum.
    pub fn quorum_met(&self, cast: u64, eligible: u64) -> bool {
        eligible > 0
            && u128::from(cast) * 100 >= u128::from(self.quorum_percent) * u128::from(eligible)
    }

    /// Whether `yes` is above the threshold.
    pub fn threshold_met(&self, yes: u64, no: u64) -> bool {
        yes > 0
            && u128::from(yes) * 100
                > u128::from(self.threshold_percent) * (u128::from(yes) + u128::from(no))
    }
}

/// The `[governance]` table `agora init --network` writes.
pub fn governance_toml(
    members: &[String],
    log_policy: &str,
    voting_period_secs: u64,
    quorum_percent: u64,
    threshold_percent: u64,
) -> String {
    let members = members
        .iter()
        .map(|m| format!("{m:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut policy = log_policy.trim_end().to_string();
    policy.push('\n');
    format!(
        "\n[governance]\n\
         # Who may vote; weights = {{ \"PEER\" = 2 }} gives a member more weight (default 1).\n\
         members = [{members}]\n\
         # Also members: workers with at least this many accepted verdicts (0: off).\n\
         min_accepted_verdicts = 0\n\
         proposers = \"members\"\n\
         # Voting closes this long after the checkpoint that first holds the proposal.\n\
         voting_period_secs = {voting_period_secs}\n\
         # Percent of the eligible weight that must vote; yes must exceed this share of yes + no.\n\
         quorum_percent = {quorum_percent}\n\
         threshold_percent = {threshold_percent}\n\
         # Credit: shares of data credit passed to base models and source datasets.\n\
         base_share_percent = 50\n\
         derived_share_percent = 50\n\
         # The community's log and the witnesses whose cosignatures date its checkpoints.\n\
         log = \"\"\"\n{policy}\"\"\"\n"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_core::Identity;

    pub(crate) fn policy() -> String {
        let log = Identity::from_seed(&[1; 32]);
        let w = Identity::from_seed(&[2; 32]);
        let origin = log.default_log_origin();
        format!(
            "log {}\nwitness w1 {}\nquorum w1\n",
            log.vkey(&origin).unwrap(),
            w.witness_vkey("w1").unwrap()
        )
    }

    fn members(n: u8) -> Vec<String> {
        (0..n)
            .map(|i| Identity::from_seed(&[10 + i; 32]).peer_id().to_string())
            .collect()
    }

    #[test]
    fn written_rules_parse_back() {
        let text = format!(
            "name = \"k\"\ncreated_unix = 1\nnonce = \"00\"\n{}",
            governance_toml(&members(3), &policy(), 60, 50, 50)
        );
        let r = Rules::from_genesis(&text).unwrap().unwrap();
        assert_eq!(r.members.len(), 3);
        assert_eq!(r.voting_period_secs, 60);
        assert_eq!(r.validators.len(), 3);
        assert!(r.log_origin().starts_with("agora.log/"));
        assert!(r.quorum_met(2, 3) && !r.quorum_met(1, 3));
        assert!(r.threshold_met(2, 1) && !r.threshold_met(1, 1) && !r.threshold_met(0, 0));
        // A genesis without governance has no rules.
        assert!(Rules::from_genesis("name = \"agora\"\n").unwrap().is_none());
    }

    #[test]
    fn bad_rules_say_why() {
        let ok = governance_toml(&members(2), &policy(), 60, 50, 50);
        let body = ok.replacen("\n[governance]\n", "", 1);
        assert!(Rules::parse(&body).is_ok());
        for (from, to, why) in [
            (
                "voting_period_secs = 60",
                "voting_period_secs = 0",
                "voting_period_secs",
            ),
            (
                "quorum_percent = 50",
                "quorum_percent = 101",
                "quorum_percent",
            ),
            (
                "proposers = \"members\"",
                "proposers = \"kings\"",
                "proposers",
            ),
            (
                "min_accepted_verdicts = 0",
                "min_accepted_verdicts = 0\nextra = 1",
                "extra",
            ),
            ("quorum w1", "quorum none", "witnesses"),
        ] {
            let e = Rules::parse(&body.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{from} -> {to}: {e}");
        }
        let e = Rules::parse(&body.replace(&members(2)[0], "alice"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a peer id"), "{e}");
        let dup = body.replace(&members(2)[1], &members(2)[0]);
        assert!(
            Rules::parse(&dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(Rules::parse("members = []").is_err());
        assert!(Rules::parse("\u{0}").is_err());
    }
}
