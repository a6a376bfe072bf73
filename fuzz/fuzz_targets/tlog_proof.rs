//! tlog-proof: parsing never panics and is canonical; verification never panics.
#![no_main]
use agora_tlog::hash::leaf_hash;
use agora_tlog::{Policy, TlogProof};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = TlogProof::parse(data) {
        assert_eq!(p.to_bytes(), data);
        let policy = Policy::parse(
            b"log example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k\nquorum none\n",
        )
        .unwrap();
        let _ = p.verify(&leaf_hash(b"entry"), &policy);
    }
});
