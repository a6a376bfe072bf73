//! A misbehaving model server, for testing the fetcher (feature `cheat`; never in default
//! builds): it corrupts one chunk it sends, or dies in the middle of a transfer.

use std::str::FromStr;

/// How a server misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehave {
    /// Flips a byte of the N-th chunk it sends (counted from 0, over all streams).
    Corrupt(u64),
    /// Ends the process abruptly instead of sending its N-th chunk.
    DieAt(u64),
}

impl Misbehave {
    /// Applies the misbehaviour to the `n`-th chunk about to be sent.
    pub(crate) fn apply(&self, n: u64, data: &mut [u8]) {
        match *self {
            Misbehave::Corrupt(k) if k == n => {
                if let Some(b) = data.get_mut(data.len() / 2) {
                    *b ^= 0x5a;
                }
            }
            Misbehave::DieAt(k) if k == n => {
                eprintln!("test misbehaviour: dying at chunk {n}");
                std::process::exit(3);
            }
            _ => {}
        }
    }
}

impl FromStr for Misbehave {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mode, n) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected corrupt:N or die-at:N"))?;
        let n: u64 = n
            .parse()
            .map_err(|_| format!("{s:?}: N must be a number"))?;
        match mode {
            "corrupt" => Ok(Misbehave::Corrupt(n)),
            "die-at" => Ok(Misbehave::DieAt(n)),
            _ => Err(format!("{s:?}: expected corrupt:N or die-at:N")),
        }
    }
}
