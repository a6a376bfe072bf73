//! Generation-protocol frames from peers (untrusted network input): the length-prefixed framing
//! and both message types never panic and never allocate beyond the frame limit.
#![no_main]
use agora_net::wire::Framed;
use agora_node::proto::{GenerateRequest, WorkerFrame};
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
        let mut a = Framed::new(Cursor::new(data.to_vec()), 1 << 16);
        while let Ok(Some(_)) = a.recv::<WorkerFrame>().await {}
        let mut b = Framed::new(Cursor::new(data.to_vec()), 1 << 16);
        while let Ok(Some(_)) = b.recv::<GenerateRequest>().await {}
    });
});
