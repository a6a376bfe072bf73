//! What a log of statements takes (`agora_log::admission::check_statement`): never panics, and an
//! accepted entry is a canonical envelope whose every signature verifies.
#![no_main]
use agora_core::{Envelope, Statement};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(signers) = agora_log::admission::check_statement(data) {
        let env = Envelope::from_json(data).expect("an accepted entry parses");
        assert_eq!(
            env.to_json().as_bytes(),
            data,
            "accepted entries are canonical"
        );
        let (peers, _) = Statement::open(&env).expect("an accepted statement opens");
        assert_eq!(peers.len(), signers.len());
        assert!(!signers.is_empty());
    }
});
