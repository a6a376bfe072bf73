//! Texts handed to `agora provenance` (any bytes): the digest never panics, and the normalised
//! form it hashes is a fixed point (normalising it again changes nothing), so a copy of a copy
//! still matches.
#![no_main]
use agora_core::text::{MAX_TEXT, digest, digest_bytes, normalise};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = digest_bytes(data) else {
        return;
    };
    assert!(data.len() <= MAX_TEXT);
    let Ok(text) = std::str::from_utf8(data) else {
        panic!("a digest of bytes that are not UTF-8");
    };
    let n = normalise(text);
    assert_eq!(normalise(&n), n);
    assert_eq!(digest(&n), Ok(d));
});
