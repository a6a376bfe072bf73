//! A peer's answer to a transcript request (untrusted network input): the frame, the optional
//! transcript, and the authenticity check a validator applies before judging anyone.
#![no_main]
use agora_net::wire::Framed;
use agora_node::transcript::Transcript;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
        let mut f = Framed::new(Cursor::new(data.to_vec()), 1 << 16);
        while let Ok(Some(Some(t))) = f.recv::<Option<Transcript>>().await {
            let _ = agora_node::validator::authentic(&t, &agora_core::Sha256([0; 32]));
        }
    });
});
