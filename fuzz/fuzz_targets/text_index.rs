//! The text index scans every entry of a log (anyone can append entries): arbitrary entries —
//! here the input split at NUL bytes — never panic the scan or a lookup, and whatever a lookup
//! returns is a receipt entry whose text digest is the one asked for.
#![no_main]
use agora_core::statement::Sha256;
use agora_core::{Envelope, Statement};
use agora_node::provenance::Entries;
use agora_node::text_index::{MAX_MATCHES, TextIndex};
use libfuzzer_sys::fuzz_target;

struct Log(Vec<Vec<u8>>);

impl Entries for Log {
    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.get(index as usize).cloned())
    }
}

fuzz_target!(|data: &[u8]| {
    let log = Log(data.split(|&b| b == 0).map(<[u8]>::to_vec).collect());
    let index = TextIndex::default();
    if index.catch_up(log.0.len() as u64, &log).is_err() {
        return;
    }
    // Look up every digest a receipt among the entries names, and one nobody does.
    let mut asked = vec![Sha256([0; 32])];
    for e in &log.0 {
        if let Ok(env) = Envelope::from_json(e)
            && let Ok(Statement::Receipt(r)) = Statement::from_payload(&env.payload_type, &env.payload)
            && let Some(d) = r.text
        {
            asked.push(d);
        }
    }
    for d in asked {
        let Ok((found, _)) = index.find(&d, &log) else {
            continue;
        };
        assert!(found.len() <= MAX_MATCHES);
        for f in found {
            let env = Envelope::from_json(&f.entry).expect("a returned entry is an envelope");
            let st = Statement::from_payload(&env.payload_type, &env.payload).expect("a statement");
            assert!(matches!(st, Statement::Receipt(r) if r.text == Some(d)));
        }
    }
});
