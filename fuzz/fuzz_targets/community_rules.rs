//! A community's genesis rules (a genesis file handed to every node, and the text of a rules
//! proposal anyone may log): parsing any text never panics, and accepted rules keep the bounds
//! the parser promises.
#![no_main]
use agora_community::rules::{MAX_MEMBERS, MAX_PERIOD_SECS, Rules};
use libfuzzer_sys::fuzz_target;

fn check(r: &Rules) {
    assert!(!r.members.is_empty() && r.members.len() <= MAX_MEMBERS);
    assert!(r.members.values().all(|&w| w >= 1));
    assert!(r.voting_period_secs >= 1 && r.voting_period_secs <= MAX_PERIOD_SECS);
    assert!(r.quorum_percent <= 100 && r.threshold_percent <= 100);
    assert!(!r.log.witnesses.is_empty());
    assert_eq!(r.log.logs.len(), 1);
    let _ = r.quorum_met(u64::MAX, u64::MAX);
    let _ = r.threshold_met(u64::MAX, u64::MAX);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Some(r)) = Rules::from_genesis(text) {
        check(&r);
    }
    if let Ok(r) = Rules::parse(text) {
        check(&r);
    }
});
