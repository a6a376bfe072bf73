//! Reading a log's entries by index: what the provenance tree and the text index scan, from a
//! log store, a node's answer or a test's list alike.

/// Log entries by index.
pub trait Entries {
    /// The entry at `index`, `None` when the log has none there.
    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, String>;
}

impl Entries for agora_log::store::LogStore {
    fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, String> {
        agora_log::store::LogStore::entry(self, index).map_err(|e| e.to_string())
    }
}
