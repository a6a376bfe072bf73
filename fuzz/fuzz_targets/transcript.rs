//! Transcripts (`agora verify FILE`, and what validators fetch from gateways): parsing and the
//! signature and digest checks never panic on untrusted bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = agora_node::transcript::Transcript::parse(data) {
        let _ = t.check();
    }
});
