//! Data mixes (`agora model publish --mix`, a file anyone may hand over): parsing any text never
//! panics, and every accepted mix keeps the bounds the parser promises.
#![no_main]
use agora_data::mix::{MAX_ENTRIES, MAX_STRING, Mix, split_name_version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Mix::parse(text) else {
        return;
    };
    assert!(m.datasets.len() <= MAX_ENTRIES && m.declared.len() <= MAX_ENTRIES);
    assert!(m.license.len() <= MAX_STRING);
    for d in &m.datasets {
        assert!(d.weight.is_finite() && d.weight > 0.0);
        assert!(split_name_version(&d.name).is_some());
        assert_eq!(d.log.is_some(), d.index.is_some());
    }
});
