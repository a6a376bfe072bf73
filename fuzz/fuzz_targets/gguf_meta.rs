//! GGUF metadata: reading hostile bytes never panics, never allocates beyond its bounds, and
//! always ends (in an error or the metadata).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agora_models::gguf::read_meta(data);
});
