//! Traces as a node returns them (any bytes): reading and checking never panic; what checks
//! cites only records the trace holds, in text order.
#![no_main]
use agora_trace::report::{parse, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = parse(data) else { return };
    let text = "Call me Ishmael. Some years ago, never mind how long precisely.";
    for given in [None, Some(text)] {
        if let Ok(c) = verify(&t, given, None) {
            assert_eq!(c.spans.len(), t.spans.len());
            assert!(c.spans.windows(2).all(|w| w[0].start <= w[1].start));
            for s in &c.spans {
                assert!(s.start < s.end);
            }
        }
    }
});
