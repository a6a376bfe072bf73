//! cosignature/v1: signature lines and timestamped signatures never panic; verification of any
//! note against a cosigner key never panics, and a cosignature the fuzzer cannot forge never
//! verifies.
#![no_main]
use agora_core::Identity;
use agora_tlog::Note;
use agora_tlog::cosignature;
use agora_tlog::note::NoteSignature;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cosignature::split_timestamped(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(sig) = NoteSignature::parse_line(s) {
            assert_eq!(sig.to_line(), format!("{s}\n"));
            let _ = cosignature::timestamp(&sig);
        }
    }
    if let Ok(n) = Note::parse(data) {
        let w = Identity::from_seed(&[7; 32]);
        let v = w.witness_vkey("witness.example.com/w1").unwrap();
        let _ = n.verify(&[v]);
    }
});
