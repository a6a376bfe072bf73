//! Activation proofs (agora-verify's byte format): untrusted bytes from workers, transcripts
//! and peers. Decoding never panics, and whatever decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = agora_verify::Proof::decode(data) {
        assert_eq!(p.encode(), data, "a decoded proof re-encodes to its bytes");
        let _ = p.bytes_per_token();
    }
});
