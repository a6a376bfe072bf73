//! Bodies of `POST /agora/v1/trace` (any bytes): parsing never panics, and whatever it accepts
//! is within the stated bounds.
#![no_main]
use agora_trace::report::{MAX_RECORDS_PER_SPAN, MAX_TRACE_TEXT, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::parse(data) {
        assert!(!r.text.trim().is_empty() && r.text.len() <= MAX_TRACE_TEXT);
        assert!(r.datasets.len() <= 64);
        let o = r.options();
        assert!(o.min_tokens >= 1);
        assert!((1..=MAX_RECORDS_PER_SPAN).contains(&o.max_count));
    }
});
