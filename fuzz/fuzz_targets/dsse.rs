//! DSSE envelopes and statements: parsing and verification never panic.
#![no_main]
use agora_core::{Envelope, Statement};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Envelope::from_json(data) {
        let _ = e.verify();
        let _ = Statement::from_payload(&e.payload_type, &e.payload);
        let again =
            Envelope::from_json(e.to_json().as_bytes()).expect("re-encoded envelope parses");
        assert_eq!(again, e);
    }
    // Payloads on their own, under both payload types.
    if let Ok(Statement::Evidence(ev)) =
        Statement::from_payload("application/vnd.agora.statement+json", data)
    {
        let _ = ev.verify(None);
    }
    let _ = Statement::from_payload("application/vnd.in-toto+json", data);
});
