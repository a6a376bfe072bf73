//! Checkpoints: parsing never panics and is canonical.
#![no_main]
use agora_tlog::checkpoint::{Checkpoint, SignedCheckpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = SignedCheckpoint::parse(data) {
        assert_eq!(c.to_bytes(), data);
        assert_eq!(c.checkpoint.to_text(), c.note.text);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(c) = Checkpoint::parse(s) {
            assert_eq!(c.to_text(), s);
        }
    }
});
