//! Gossiped verdicts (untrusted network input): parsing, the signature check and the decision
//! a gateway takes on them never panic.
#![no_main]
use agora_node::validator::{TrustedValidators, action, parse_verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = parse_verdict(data) {
        let trusted = TrustedValidators::only([v.validator]);
        let _ = action(&v, &trusted, true);
        let _ = action(&v, &TrustedValidators::default(), false);
    }
});
