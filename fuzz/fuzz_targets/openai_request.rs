//! OpenAI request bodies (untrusted HTTP input): parsing and validation never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agora_api::openai::parse_chat_request(data);
    let _ = agora_api::openai::parse_completion_request(data);
});
