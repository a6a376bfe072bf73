//! The model protocol (`/agora/<net>/model/1`): a request frame from an asker, a reply frame
//! from a server, a chunk list and the chunks checked against it. Hostile bytes never panic and
//! never allocate beyond the frame's own size.
#![no_main]
use libfuzzer_sys::fuzz_target;

use agora_models::chunks::ChunkList;
use agora_share::proto::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let _ = Request::parse(rest);
        }
        1 => {
            let _ = Reply::decode(rest.to_vec());
        }
        _ => {
            // A list, then a chunk to check against it: the list's length in the first 2 bytes.
            let n = rest.len().min(rest.first().map_or(0, |&b| usize::from(b) * 32 + 8));
            let (list, chunk) = rest.split_at(n);
            if let Ok(l) = ChunkList::decode(list) {
                let _ = ChunkList::decode_checked(list, &l.root());
                for i in 0..l.count().min(4) {
                    let _ = l.check(i, chunk);
                }
                let _ = l.range(u64::MAX);
            }
        }
    }
});
