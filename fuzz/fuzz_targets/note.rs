//! Signed notes: parsing never panics, accepted notes re-serialise to the same bytes, and
//! verification against fixed keys never panics.
#![no_main]
use agora_tlog::{Note, Vkey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = Note::parse(data) {
        assert_eq!(
            n.to_bytes(),
            data,
            "a parsed note must re-serialise byte for byte"
        );
        let keys = [
            Vkey::parse("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
                .unwrap(),
            Vkey::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
                .unwrap(),
        ];
        let _ = n.verify(&keys);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(v) = Vkey::parse(s) {
            assert_eq!(v.to_string(), s, "a parsed vkey must re-serialise");
        }
    }
});
