//! Dataset proofs (untrusted files): reading a record or absence proof and checking it against
//! roots never panics.
#![no_main]
use agora_data::{AbsenceProof, RecordProof, Roots};
use agora_tlog::hash::Hash;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let roots = Roots {
        records: v["size"].as_u64().unwrap_or(1),
        record_root: Hash([7; 32]),
        id_root: Hash::empty(),
    };
    if let Ok(p) = RecordProof::from_json(&v) {
        let _ = p.verify(&roots);
    }
    if let Ok(p) = AbsenceProof::from_json(&v) {
        let _ = p.verify(&roots);
    }
});
