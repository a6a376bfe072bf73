//! tlog-policy: parsing never panics; quorum evaluation never panics.
#![no_main]
use agora_tlog::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Policy::parse(data) {
        let n = p.witnesses.len();
        let all = (0..n).collect();
        let none = Default::default();
        let _ = p.quorum_satisfied(&none);
        let _ = p.quorum_satisfied(&all);
        assert!(!p.quorum_satisfied(&none) || matches!(p.quorum, agora_tlog::policy::Quorum::None));
    }
});
