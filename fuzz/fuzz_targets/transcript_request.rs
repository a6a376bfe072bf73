//! Transcript requests from peers (untrusted network input): the frame, the request with its
//! selection proof, and the release rule a gateway applies to it (checkpoint signature,
//! inclusion proof, selection) never panic.
#![no_main]
use agora_net::wire::Framed;
use agora_node::proto::TranscriptRequest;
use agora_node::validator::TrustedValidators;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = agora_core::Identity::from_seed(&[7; 32]);
    let Some(peer) = agora_node::to_net_id(&key.peer_id()) else {
        return;
    };
    let trusted = TrustedValidators::only([key.peer_id()]);
    let Ok(vkey) = key.vkey(&key.default_log_origin()) else {
        return;
    };
    let mut reqs = Vec::new();
    futures::executor::block_on(async {
        let mut f = Framed::new(Cursor::new(data.to_vec()), 1 << 16);
        while let Ok(Some(r)) = f.recv::<TranscriptRequest>().await {
            reqs.push(r);
        }
    });
    if let Ok(r) = serde_json::from_slice::<TranscriptRequest>(data) {
        reqs.push(r);
    }
    for r in reqs {
        let _ = r.receipt.parse::<agora_core::Sha256>();
        let _ = agora_node::disclosure::may_release(
            &peer,
            r.selection.as_ref(),
            &[0; 32],
            &trusted,
            Some(&vkey),
            0.5,
        );
    }
});
