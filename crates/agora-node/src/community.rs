//! A community's tallies and ledgers over a log store on this machine (the log a node serves,
//! or one a benchmark built): the store as an [`EntrySource`] and a checkpoint [`History`].

use agora_community::history::History;
use agora_community::read::EntrySource;
use agora_log::store::LogStore;

/// A log store, read as a community reads any log.
pub struct StoreLog<'a>(pub &'a LogStore);

impl EntrySource for StoreLog<'_> {
    fn bundle(&self, index: u64, width: u16) -> Result<Vec<Vec<u8>>, String> {
        let data = self
            .0
            .read_bundle(index, width)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("entry bundle {index} is not stored"))?;
        let entries = agora_tlog::tile::decode_bundle(&data).map_err(|e| e.to_string())?;
        Ok(entries.into_iter().map(<[u8]>::to_vec).collect())
    }
}

impl History for StoreLog<'_> {
    fn first_at_or_after(&self, size: u64) -> Result<Option<Vec<u8>>, String> {
        self.0
            .checkpoint_at_or_after(size)
            .map_err(|e| e.to_string())
    }
}
