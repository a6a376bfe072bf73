//! The tokenizers trace indexes use (`agora dataset index`, `agora trace`, the node's trace
//! route), loaded by model digest from the model store: llama.cpp's, vocabulary only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agora_core::statement::Sha256;
use agora_models::ModelStore;
use agora_node::trace::Tokenizers;
use agora_trace::Tokenize;

/// A model's tokenizer, from llama.cpp.
struct LlamaTok(agora_llama::Tokenizer);

impl Tokenize for LlamaTok {
    fn tokenize(&self, text: &str) -> Vec<u32> {
        self.0.tokenize(text)
    }
    fn piece(&self, token: u32) -> Vec<u8> {
        self.0.piece(token)
    }
    fn n_vocab(&self) -> u32 {
        self.0.n_vocab()
    }
}

/// The tokenizers of the models in `$AGORA_HOME/models`, loaded once each, word by word
/// ([`agora_trace::Words`]: the tokenization trace indexes are built and searched with).
pub struct StoreTokenizers {
    home: PathBuf,
    loaded: Mutex<HashMap<[u8; 32], Arc<dyn Tokenize>>>,
}

impl StoreTokenizers {
    /// The models under `home`.
    pub fn new(home: &Path) -> Self {
        StoreTokenizers {
            home: home.to_path_buf(),
            loaded: Mutex::new(HashMap::new()),
        }
    }
}

impl Tokenizers for StoreTokenizers {
    fn get(&self, weights: &Sha256) -> Result<Arc<dyn Tokenize>, String> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = loaded.get(&weights.0) {
            return Ok(Arc::clone(t));
        }
        let store = ModelStore::open(&self.home, false).map_err(|e| e.to_string())?;
        let hex = hex::encode(weights.0);
        let path = store.blob_path(&hex);
        if !path.exists() {
            return Err(format!(
                "no model with sha256 {hex} in {}: `agora model pull` or `agora model add` it",
                store.root().display()
            ));
        }
        let t: Arc<dyn Tokenize> = Arc::new(agora_trace::Words::new(LlamaTok(
            agora_llama::Tokenizer::load(&path).map_err(|e| e.to_string())?,
        )));
        loaded.insert(weights.0, Arc::clone(&t));
        Ok(t)
    }
}
