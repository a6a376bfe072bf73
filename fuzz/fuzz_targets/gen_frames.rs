//! Generation-protocol frames from peers (untrusted network input): the length-prefixed framing
//! and both message types never panic and never allocate beyond the frame limit, and the checks
//! a worker applies to a request (resumed tokens, logit biases, lengths) never panic either.
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
        while let Ok(Some(r)) = b.recv::<GenerateRequest>().await {
            // What a worker checks before anything reaches llama.cpp.
            let req = agora_engine::GenRequest {
                prompt: vec![1, 2, 3],
                params: r.job.params,
                max_tokens: r.job.max_tokens.unwrap_or(64),
                stop: r.job.stop,
                ignore_eos: r.job.ignore_eos,
                capture: Default::default(),
                resume: r.resume,
                logit_bias: r.job.logit_bias,
                conversation: None,
            };
            let _ = agora_engine::check_request(&req, 512, 49_152);
        }
    });
});
