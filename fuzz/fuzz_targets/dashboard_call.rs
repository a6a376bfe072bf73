//! The dashboard's WebAssembly checks (`agora-wasm`): whatever a page hands them (transcripts,
//! checkpoints, policies, tiles, log entries, all fetched from untrusted servers), the answer is
//! JSON saying ok or why not, never a panic. Inputs are requests as the page writes them: the
//! fuzzer mutates seeds of every operation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = agora_wasm::call(data);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("answers are JSON");
    assert!(v.get("ok").and_then(serde_json::Value::as_bool).is_some());
});
