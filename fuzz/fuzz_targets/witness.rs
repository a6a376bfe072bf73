//! tlog-witness bodies and tile paths: parsing never panics and is canonical.
#![no_main]
use agora_tlog::tile::{TilePath, decode_bundle};
use agora_tlog::witness::{AddCheckpointRequest, parse_response, parse_size_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = AddCheckpointRequest::parse(data) {
        assert_eq!(r.to_bytes(), data);
    }
    let _ = parse_response(data);
    let _ = parse_size_body(data);
    let _ = decode_bundle(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = TilePath::parse(s) {
            assert_eq!(t.to_path(), s);
        }
    }
});
