//! Dataset input (untrusted files): a Dolma JSON line and a record's canonical bytes are read
//! without panicking, and whatever is accepted round-trips through the canonical encoding.
#![no_main]
use agora_data::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data)
        && let Ok(r) = Record::from_json(line)
    {
        assert_eq!(Record::decode(&r.encode()).ok().as_ref(), Some(&r));
    }
    if let Ok(r) = Record::decode(data) {
        assert_eq!(r.encode(), data);
    }
});
