//! Log entries as a tallier and a credit ledger read them (anyone may log anything a log
//! accepts): proposals, votes, decisions, verdicts, receipts, manifests and ledgers, well-formed
//! or not, never panic the count; the statement parser never panics on any payload.
#![no_main]
use std::sync::OnceLock;

use agora_community::credit::Ledgerer;
use agora_community::rules::Rules;
use agora_community::tally::{Opened, Tallier, open_proposal};
use agora_core::Identity;
use agora_core::statement::{AGORA_PAYLOAD_TYPE, MixEntry, Motion, Proposal, Sha256, Statement, mix_digest};
use libfuzzer_sys::fuzz_target;

const NET: &str = "abababababababababababababababababababababababababababababababab";

fn world() -> &'static (Rules, Opened) {
    static W: OnceLock<(Rules, Opened)> = OnceLock::new();
    W.get_or_init(|| {
        let log = Identity::from_seed(&[1; 32]);
        let w = Identity::from_seed(&[2; 32]);
        let m = Identity::from_seed(&[3; 32]);
        let policy = format!(
            "log {}\nwitness w1 {}\nquorum w1\n",
            log.vkey(&log.default_log_origin()).unwrap(),
            w.witness_vkey("w1").unwrap()
        );
        let text = agora_community::rules::governance_toml(&[m.peer_id().to_string()], &policy, 60, 50, 50);
        let rules = Rules::parse(&text.replacen("\n[governance]\n", "", 1)).unwrap();
        let mix = vec![MixEntry {
            name: "d@1".into(),
            log: log.default_log_origin(),
            index: 0,
            dataset: Sha256([7; 32]),
            weight: 1.0,
            tokens: None,
        }];
        let p = Statement::Proposal(Proposal {
            network: NET.into(),
            title: "t".into(),
            body: String::new(),
            motion: Motion::Mix { digest: mix_digest(&mix), mix },
            proposer: m.peer_id(),
            time: 0,
        });
        let entry = p.sign(&m).to_json().into_bytes();
        let opened = open_proposal(&rules, NET, &log.default_log_origin(), 0, &entry).unwrap();
        (rules, opened)
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = Statement::from_payload(AGORA_PAYLOAD_TYPE, data);
    let (rules, opened) = world();
    let _ = open_proposal(rules, NET, "o", 1, data);
    let entries = vec![opened.envelope.clone(), data.to_vec(), data.to_vec()];
    let mut t = Tallier::new(rules, NET, opened, Some(2)).threads(1);
    if t.push(0, &entries).is_ok() {
        let _ = t.finish();
    }
    let mut l = Ledgerer::new(rules, NET, "o", 0, 3).threads(1);
    if l.push(0, &entries).is_ok() {
        let _ = l.finish(Sha256([0; 32]));
    }
});
