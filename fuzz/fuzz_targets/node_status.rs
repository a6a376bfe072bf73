//! Node status messages gossiped by peers (untrusted network input).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = serde_json::from_slice::<agora_net::NodeStatus>(data) {
        let _ = s.serves("smollm2-135m");
        let _ = s.holds_conversation("0123456789abcdef");
        for k in &s.conversations {
            let _ = agora_engine::conversation::from_hex(k);
        }
    }
});
