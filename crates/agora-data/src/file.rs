//! The self-contained proof file (`agora-dataset-proof/1`) that `agora dataset prove` writes and
//! nodes serve at `/agora/v1/datasets/{name}/proof`: a dataset's signed statement, a record's
//! inclusion proof (or an id's absence proof) against its roots, and optionally the statement's
//! proof under a log checkpoint. [`check`] is what `agora dataset verify` and the dashboard run.

use agora_core::Envelope;
use agora_core::statement::Statement;
use agora_tlog::Policy;
use agora_tlog::hash::{Hash, leaf_hash};
use agora_tlog::proof::TlogProof;
use serde_json::Value;

use crate::{AbsenceProof, RecordProof, Roots};

/// The `format` of a proof file.
pub const PROOF_FORMAT: &str = "agora-dataset-proof/1";

/// What a proof file proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proved {
    /// One line saying what was proved, by whom, and what of the log was checked.
    pub line: String,
    /// The id proven present (with its record's text) or absent.
    pub id: String,
    /// The proven record's text (for a presence proof).
    pub text: Option<String>,
    /// The dataset, `name@version`.
    pub dataset: String,
    /// The statement's index in the log, when its log proof was checked under a policy.
    pub logged: Option<u64>,
}

/// Checks a proof file's JSON: the statement's signature, the record (or absence) proof against
/// its roots, and, with a `policy`, the statement's log proof (log signature and witness
/// quorum). Every failure is one sentence.
pub fn check(v: &Value, policy: Option<&Policy>) -> Result<Proved, String> {
    if v["format"] != PROOF_FORMAT {
        return Err(format!("not an {PROOF_FORMAT} file"));
    }
    // The statement exactly as signed and logged (its bytes are the log entry).
    let env_json = v["statement"]
        .as_str()
        .ok_or("`statement` is not a string")?
        .as_bytes();
    let envelope = Envelope::from_json(env_json)
        .map_err(|e| format!("the statement is not a DSSE envelope: {e}"))?;
    let (signers, statement) = Statement::open(&envelope)
        .map_err(|e| format!("the statement's signature does not verify: {e}"))?;
    let Statement::Dataset { predicate: d, .. } = statement else {
        return Err("the statement is not a dataset statement".into());
    };
    let signer = signers.first().map(ToString::to_string).unwrap_or_default();
    let roots = Roots {
        records: d.records,
        record_root: Hash(d.records_root.0),
        id_root: Hash(d.ids_root.map(|h| h.0).unwrap_or([0; 32])),
    };
    let label = format!("{}@{}", d.name, d.version);
    let (what, id, text) = if let Some(p) = v.get("present") {
        let p = RecordProof::from_json(p).map_err(|e| e.to_string())?;
        let r = p
            .verify(&roots)
            .map_err(|e| format!("the record proof does not verify: {e}"))?;
        let line = format!(
            "record {:?} ({} bytes of text) is record {} of {label} ({} records, {})",
            r.id,
            r.text.len(),
            p.index,
            d.records,
            d.license
        );
        (line, r.id, Some(r.text))
    } else if let Some(a) = v.get("absent") {
        if d.ids_root.is_none() {
            return Err(
                "the statement has no ids root: absence cannot be proven against it".into(),
            );
        }
        let a = AbsenceProof::from_json(a).map_err(|e| e.to_string())?;
        a.verify(&roots)
            .map_err(|e| format!("the absence proof does not verify: {e}"))?;
        let line = format!(
            "no record of {label} ({} records) has the id {:?}",
            d.records, a.id
        );
        (line, a.id, None)
    } else {
        return Err("the proof has neither `present` nor `absent`".into());
    };
    let mut index = None;
    let logged = match (v.get("log"), policy) {
        (Some(l), Some(policy)) => {
            let text = l["tlog_proof"]
                .as_str()
                .ok_or("`log.tlog_proof` is missing")?;
            let p = TlogProof::parse(text.as_bytes())
                .map_err(|e| format!("the log proof is malformed: {e}"))?;
            let sc = p
                .verify(&leaf_hash(env_json), policy)
                .map_err(|e| format!("the statement's log proof does not verify: {e}"))?;
            index = Some(p.index);
            format!(
                "; the statement is entry {} of {} (checkpoint of {}, log signature and {} witness cosignature(s) verified)",
                p.index,
                sc.checkpoint.origin,
                sc.checkpoint.size,
                // The checkpoint verified, so its cosignatures did.
                policy.cosigners(sc).map(|c| c.len()).unwrap_or(0)
            )
        }
        (Some(_), None) => "; its log proof was not checked (pass --policy)".to_string(),
        (None, _) => "; the statement carries no log proof".to_string(),
    };
    Ok(Proved {
        line: format!("OK: {what}; signed by {signer}{logged}"),
        id,
        text,
        dataset: label,
        logged: index,
    })
}
