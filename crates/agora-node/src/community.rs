//! A community's tallies and ledgers over a log store on this machine (the log a node serves,
//! or one a benchmark built): the store as an [`EntrySource`] and a checkpoint [`History`].

use agora_community::history::History;
use agora_community::read::EntrySource;
use agora_log::store::LogStore;

/// A log store, read as a community reads any log.
pub struct StoreLog<'a>(pub &'a LogStore);

impl EntrySource for StoreLog<'_> {
    fn bundle(&self, index: u64, width: u16) -> Result<Vec<Vec<u8>>, String> {
        let data = self
            .0
            .read_bundle(index, width)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("entry bundle {index} is not stored"))?;
        let entries = agora_tlog::tile::decode_bundle(&data).map_err(|e| e.to_string())?;
        Ok(entries.into_iter().map(<[u8]>::to_vec).collect())
    }
}

impl History for StoreLog<'_> {
    fn first_at_or_after(&self, size: u64) -> Result<Option<Vec<u8>>, String> {
        self.0
            .checkpoint_at_or_after(size)
            .map_err(|e| e.to_string())
    }
}

/// Most proposals a node lists.
pub const MAX_LISTED: usize = 10_000;

/// The community routes of a node that keeps the community's log.
pub struct Served {
    rules: agora_community::rules::Rules,
    network: String,
    log: agora_log::Log,
    list: std::sync::Mutex<Listed>,
    cache: std::sync::Mutex<Option<(String, u64, serde_json::Value)>>,
}

#[derive(Default)]
struct Listed {
    scanned: u64,
    proposals: Vec<serde_json::Value>,
    truncated: bool,
}

impl Served {
    /// Serves the community of the genesis `text` over `log`, when the genesis has governance
    /// rules and the log is the community's (`None` otherwise, with the reason).
    pub fn new(text: &str, log: agora_log::Log) -> Result<Served, String> {
        let rules = agora_community::rules::Rules::from_genesis(text)
            .map_err(|e| e.to_string())?
            .ok_or("the genesis has no [governance] rules")?;
        let origin = log.vkey().name.clone();
        if origin != rules.log_origin() {
            return Err(format!(
                "this node's log ({origin}) is not the community's ({})",
                rules.log_origin()
            ));
        }
        Ok(Served {
            network: agora_net::NetworkId::from_genesis(text.as_bytes()).to_string(),
            rules,
            log,
            list: Default::default(),
            cache: Default::default(),
        })
    }

    fn latest(&self) -> Result<agora_community::history::Attested, agora_api::error::ApiError> {
        let c = self.log.checkpoint().ok_or_else(|| {
            agora_api::error::ApiError::unavailable("no checkpoint published yet", 1)
        })?;
        agora_community::history::attest(&self.rules.log, &c.bytes).map_err(|e| {
            agora_api::error::ApiError::unavailable(
                format!("the latest checkpoint is not cosigned as the rules require: {e}"),
                1,
            )
        })
    }

    /// `compute` keyed by `key` at the log's `size`, reusing the last answer.
    fn cached(
        &self,
        key: String,
        size: u64,
        compute: impl FnOnce() -> Result<serde_json::Value, agora_api::error::ApiError>,
    ) -> Result<serde_json::Value, agora_api::error::ApiError> {
        if let Some((k, s, v)) = &*self.cache.lock().unwrap_or_else(|e| e.into_inner())
            && *k == key
            && *s == size
        {
            return Ok(v.clone());
        }
        let v = compute()?;
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, size, v.clone()));
        Ok(v)
    }

    fn index_of(&self, id: &str) -> Result<u64, agora_api::error::ApiError> {
        if let Ok(i) = id.parse::<u64>() {
            return Ok(i);
        }
        let id = id.strip_prefix("sha256:").unwrap_or(id);
        agora_api::community::CommunityService::proposals(self)?;
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.proposals
            .iter()
            .find(|p| p["id"] == id)
            .and_then(|p| p["index"].as_u64())
            .ok_or_else(|| {
                agora_api::error::ApiError::not_found(format!(
                    "no proposal {id} in this community's log"
                ))
            })
    }
}

fn api_err(e: agora_community::Error) -> agora_api::error::ApiError {
    match e {
        agora_community::Error::Proposal(m) => agora_api::error::ApiError::not_found(m),
        e => agora_api::error::ApiError::internal(e.to_string()),
    }
}

impl agora_api::community::CommunityService for Served {
    fn proposals(&self) -> Result<serde_json::Value, agora_api::error::ApiError> {
        let size = self.log.checkpoint().map_or(0, |c| c.size);
        let store = self.log.store();
        let origin = self.log.vkey().name.clone();
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        while list.scanned < size {
            let i = list.scanned;
            list.scanned += 1;
            let Ok(Some(entry)) = store.entry(i) else {
                continue;
            };
            // The type before the signature: only proposals are checked.
            let Ok(env) = agora_core::Envelope::from_json(&entry) else {
                continue;
            };
            let kind = b"https://agora.network/proposal/";
            if !env.payload.windows(kind.len()).any(|w| w == kind) {
                continue;
            }
            if let Ok(p) = agora_community::tally::open_proposal(
                &self.rules,
                &self.network,
                &origin,
                i,
                &entry,
            ) {
                if list.proposals.len() >= MAX_LISTED {
                    list.truncated = true;
                    continue;
                }
                list.proposals.push(serde_json::json!({
                    "index": i,
                    "id": p.id().to_string(),
                    "title": p.proposal.title,
                    "proposer": p.proposal.proposer.to_string(),
                    "subject": p.subject().to_string(),
                    "kind": match p.proposal.motion {
                        agora_core::statement::Motion::Mix { .. } => "mix",
                        agora_core::statement::Motion::Rules { .. } => "rules",
                    },
                }));
            }
        }
        Ok(serde_json::json!({
            "network": self.network,
            "log": origin,
            "scanned": list.scanned,
            "truncated": list.truncated,
            "proposals": list.proposals,
        }))
    }

    fn proposal(&self, id: &str) -> Result<serde_json::Value, agora_api::error::ApiError> {
        let index = self.index_of(id)?;
        let latest = self.latest()?;
        let size = latest.size();
        self.cached(format!("proposal {index}"), size, || {
            let src = StoreLog(self.log.store());
            let r =
                agora_community::read::tally(&self.rules, &self.network, &src, &src, latest, index)
                    .map_err(api_err)?;
            Ok(r.to_json(&self.network))
        })
    }

    fn credit(
        &self,
        from: u64,
        to: Option<u64>,
    ) -> Result<serde_json::Value, agora_api::error::ApiError> {
        let latest = self.latest()?;
        let size = latest.size();
        let to = to.unwrap_or(size);
        if to > size {
            return Err(agora_api::error::ApiError::invalid(
                format!("the period ends at {to}, beyond the log's checkpoint ({size} entries)"),
                Some("period"),
            ));
        }
        self.cached(format!("credit {from}..{to}"), size, || {
            let src = StoreLog(self.log.store());
            let c =
                agora_community::read::ledger(&self.rules, &self.network, &src, &latest, from, to)
                    .map_err(api_err)?;
            Ok(serde_json::json!({
                "ledger": c.ledger,
                "lines": c.lines,
                "receipts": c.receipts,
                "rejected": c.rejected,
            }))
        })
    }
}
