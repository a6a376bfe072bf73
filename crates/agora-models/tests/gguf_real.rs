//! The GGUF metadata reader on the real default model (SmolLM2-135M-Instruct), which
//! `scripts/test.sh` pulls before the tests run. Fails, rather than passing silently, if the model
//! is missing.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use agora_models::gguf::read_meta_file;

/// The default model's blob, under the default `AGORA_HOME` (`~/.local/share/agora`).
const BLOB: &str =
    "models/blobs/sha256-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53.gguf";

#[test]
fn default_model_metadata() {
    let home = std::env::var_os("HOME").expect("HOME is not set");
    let path = PathBuf::from(home).join(".local/share/agora").join(BLOB);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo run --release -p agora-cli -- model pull smollm2-135m` \
         (scripts/test.sh does) before this test",
        path.display()
    );
    let t = Instant::now();
    let m = read_meta_file(&path).unwrap();
    let took = t.elapsed();
    eprintln!(
        "{}: version {} architecture {:?} name {:?} tokenizer model {:?} vocab {:?} \
         tensors {} kvs {} tokenizer kvs {} metadata {} bytes, tokenizer sha256 {}; read in {:?}",
        path.display(),
        m.version,
        m.architecture,
        m.name,
        m.tokenizer_model,
        m.vocab_size,
        m.tensors,
        m.kvs,
        m.tokenizer_kvs,
        m.metadata_len,
        m.tokenizer_hex(),
        took
    );
    assert_eq!(m.version, 3);
    assert_eq!(m.architecture, "llama");
    assert_eq!(m.name.as_deref(), Some("Smollm2 135M 8k Lc100K Mix1 Ep2"));
    assert_eq!(m.tokenizer_model.as_deref(), Some("gpt2"));
    assert_eq!(m.vocab_size, Some(49152));
    assert_eq!((m.tensors, m.kvs, m.tokenizer_kvs), (272, 33, 12));
    assert_eq!(m.metadata_len, 1_769_507);
    // Recomputed independently (a 25-line Python walk of the key/values, hashing the raw bytes
    // of each `tokenizer.` one, `tokenizer.chat_template` included).
    assert_eq!(
        m.tokenizer_hex(),
        "12f2daa6c7965ba929ba3b14b5ba2e057ef538bf9fcc25f3a25be1e6c538e715"
    );
    // Milliseconds in practice (about 5 ms for these 1.7 MB); generous for a loaded machine.
    assert!(took.as_secs() < 5, "reading the metadata took {took:?}");
}
