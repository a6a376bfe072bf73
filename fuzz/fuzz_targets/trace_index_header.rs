//! Trace index headers (any bytes, made to carry the magic and a matching seal so the field
//! checks are reached): parsing never panics, what it accepts has a layout without overflow,
//! and it encodes back to a header that parses to the same thing.
#![no_main]
use agora_trace::index::{HEADER_BYTES, Header, MAGIC};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    // As is: almost always refused (the seal), never a panic.
    let _ = Header::parse(data);
    let mut h = data.to_vec();
    h.resize(HEADER_BYTES, 0);
    h[..8].copy_from_slice(MAGIC);
    let seal: [u8; 32] = Sha256::digest(&h[..HEADER_BYTES - 32]).into();
    h[HEADER_BYTES - 32..].copy_from_slice(&seal);
    if let Ok(header) = Header::parse(&h) {
        let layout = header.layout().expect("a parsed header has a layout");
        assert!(layout.len >= layout.suffixes && layout.suffixes >= layout.starts);
        let again = Header::parse(&header.encode().expect("a parsed header encodes"))
            .expect("an encoded header parses");
        assert_eq!(again, header);
    }
});
