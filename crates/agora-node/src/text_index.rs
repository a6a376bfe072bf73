//! Finds receipts by the digest of their text, and verdicts by the receipt they judge: the
//! index behind `GET /agora/v1/provenance?digest=…` ("was this text produced here?").
//!
//! Built by scanning a log's entries (so anyone holding the log can rebuild it, and nothing in
//! it is trusted: every answer is the log entries themselves, which the client checks). Kept
//! compact — 16 bytes per receipt or verdict: the first 8 bytes of the digest and the entry's
//! index, in a sorted array with a small unsorted tail merged in as it fills. A short key can
//! collide; candidates are confirmed against the full digest in their entry before they are
//! returned.

use std::sync::Mutex;

use agora_core::statement::{Receipt, Sha256};
use agora_core::text::Fingerprint;
use agora_core::{Envelope, Statement};

use crate::entries::Entries;

/// Most receipts and verdicts indexed (16 bytes each: 512 MiB). Beyond, the index says so.
pub const MAX_TEXT_INDEXED: usize = 32 << 20;
/// Most receipts returned for one text (the same short text may be generated many times).
pub const MAX_MATCHES: usize = 16;
/// Most verdicts returned for one receipt.
pub const MAX_VERDICTS: usize = 16;
/// Unsorted entries kept before they are merged into the sorted array.
const TAIL: usize = 4096;

/// Digest-prefix → entry index pairs.
#[derive(Default)]
struct Keys {
    sorted: Vec<(u64, u64)>,
    tail: Vec<(u64, u64)>,
}

impl Keys {
    fn push(&mut self, key: u64, index: u64) {
        self.tail.push((key, index));
        if self.tail.len() >= TAIL {
            self.tail.sort_unstable();
            let tail = std::mem::take(&mut self.tail);
            let old = std::mem::take(&mut self.sorted);
            self.sorted = merge(old, tail);
        }
    }

    fn len(&self) -> usize {
        self.sorted.len() + self.tail.len()
    }

    /// The entry indexes under `key`, in log order.
    fn get(&self, key: u64) -> Vec<u64> {
        let from = self.sorted.partition_point(|&(k, _)| k < key);
        let mut out: Vec<u64> = self.sorted[from..]
            .iter()
            .take_while(|&&(k, _)| k == key)
            .map(|&(_, i)| i)
            .collect();
        out.extend(
            self.tail
                .iter()
                .filter(|&&(k, _)| k == key)
                .map(|&(_, i)| i),
        );
        out.sort_unstable();
        out
    }
}

fn merge(a: Vec<(u64, u64)>, b: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x <= y => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, _) => b.next(),
        };
        match next {
            Some(p) => out.push(p),
            None => return out,
        }
    }
}

fn key(d: &Sha256) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&d.0[..8]);
    u64::from_be_bytes(k)
}

#[derive(Default)]
struct Scanned {
    next: u64,
    texts: Keys,
    verdicts: Keys,
    /// Fingerprinted receipts, under each band of their fingerprint.
    bands: Keys,
}

impl Scanned {
    fn keys(&self) -> usize {
        self.texts.len() + self.verdicts.len() + self.bands.len()
    }
}

/// Receipts by text digest and verdicts by receipt digest, of one log.
#[derive(Default)]
pub struct TextIndex {
    inner: Mutex<Scanned>,
}

/// One receipt whose text digest (or fingerprint) matches, with the verdicts logged on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub index: u64,
    pub entry: Vec<u8>,
    /// For a fingerprint lookup: the estimated similarity of the texts (0 to 1).
    pub similarity: Option<f64>,
    /// (index, entry) of each verdict on this receipt, at most [`MAX_VERDICTS`].
    pub verdicts: Vec<(u64, Vec<u8>)>,
}

/// What a log entry says, for the index: the text digest of a receipt, or the receipt a
/// verdict judges. Signatures are not checked here (the client checks what it is given).
enum Indexed {
    /// A receipt, and the SHA-256 of its payload (what verdicts name).
    Receipt(Box<Receipt>, Sha256),
    Verdict(Sha256),
}

fn classify(entry: &[u8]) -> Option<Indexed> {
    let env = Envelope::from_json(entry).ok()?;
    match Statement::from_payload(&env.payload_type, &env.payload).ok()? {
        Statement::Receipt(r) => Some(Indexed::Receipt(Box::new(r), Sha256::of(&env.payload))),
        Statement::Verdict(v) => Some(Indexed::Verdict(v.receipt)),
        _ => None,
    }
}

/// Most candidate receipts a fingerprint lookup reads (those sharing the most bands first).
pub const MAX_CANDIDATES: usize = 1024;

impl TextIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Scanned> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Scans entries from where the last scan stopped up to `size` (exclusive).
    pub fn catch_up(&self, size: u64, entries: &dyn Entries) -> Result<(), String> {
        let mut s = self.lock();
        while s.next < size {
            let i = s.next;
            if let Some(e) = entries.entry(i)? {
                match classify(&e) {
                    _ if s.keys() >= MAX_TEXT_INDEXED => {
                        return Err(format!(
                            "the log holds more than {MAX_TEXT_INDEXED} receipts, verdicts and \
                             fingerprint bands; this node indexes no more"
                        ));
                    }
                    Some(Indexed::Receipt(r, _)) => {
                        if let Some(d) = r.text {
                            s.texts.push(key(&d), i);
                        }
                        if let Some(f) = r.fingerprint {
                            for b in f.bands() {
                                s.bands.push(b, i);
                            }
                        }
                    }
                    Some(Indexed::Verdict(d)) => s.verdicts.push(key(&d), i),
                    None => {}
                }
            }
            s.next = i + 1;
        }
        Ok(())
    }

    /// How many entries have been scanned.
    pub fn scanned(&self) -> u64 {
        self.lock().next
    }

    /// The receipts whose text digest is `digest` (at most [`MAX_MATCHES`], oldest first), each
    /// with the verdicts on it; and whether more receipts matched than were returned.
    pub fn find(
        &self,
        digest: &Sha256,
        entries: &dyn Entries,
    ) -> Result<(Vec<Found>, bool), String> {
        let candidates = self.lock().texts.get(key(digest));
        let mut found = Vec::new();
        let mut more = false;
        for i in candidates {
            let Some(entry) = entries.entry(i)? else {
                continue;
            };
            let Some(Indexed::Receipt(r, receipt)) = classify(&entry) else {
                continue;
            };
            if r.text.as_ref() != Some(digest) {
                continue; // a short-key collision
            }
            if found.len() == MAX_MATCHES {
                more = true;
                break;
            }
            let verdicts = self.verdicts_on(&receipt, entries)?;
            found.push(Found {
                index: i,
                entry,
                similarity: None,
                verdicts,
            });
        }
        Ok((found, more))
    }

    /// The fingerprinted receipts whose fingerprint's estimated similarity to `fp` is at least
    /// `min` (most similar first, at most [`MAX_MATCHES`]), with their verdicts; and whether
    /// more matched (or more candidates were left unread) than were returned.
    pub fn find_similar(
        &self,
        fp: &Fingerprint,
        min: f64,
        entries: &dyn Entries,
    ) -> Result<(Vec<Found>, bool), String> {
        let mut shared: std::collections::HashMap<u64, u32> = Default::default();
        {
            let s = self.lock();
            for b in fp.bands() {
                for i in s.bands.get(b) {
                    *shared.entry(i).or_default() += 1;
                }
            }
        }
        let mut candidates: Vec<(u32, u64)> = shared.into_iter().map(|(i, n)| (n, i)).collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let mut more = candidates.len() > MAX_CANDIDATES;
        let mut scored = Vec::new();
        for &(_, i) in candidates.iter().take(MAX_CANDIDATES) {
            let Some(entry) = entries.entry(i)? else {
                continue;
            };
            let Some(Indexed::Receipt(r, receipt)) = classify(&entry) else {
                continue;
            };
            let Some(theirs) = r.fingerprint else {
                continue;
            };
            let sim = fp.similarity(&theirs);
            if sim >= min {
                scored.push((sim, i, entry, receipt));
            }
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        if scored.len() > MAX_MATCHES {
            more = true;
            scored.truncate(MAX_MATCHES);
        }
        let mut found = Vec::new();
        for (sim, index, entry, receipt) in scored {
            found.push(Found {
                index,
                entry,
                similarity: Some(sim),
                verdicts: self.verdicts_on(&receipt, entries)?,
            });
        }
        Ok((found, more))
    }

    /// The verdicts logged on the receipt whose payload digest is `receipt` (at most
    /// [`MAX_VERDICTS`]).
    fn verdicts_on(
        &self,
        receipt: &Sha256,
        entries: &dyn Entries,
    ) -> Result<Vec<(u64, Vec<u8>)>, String> {
        let vs = self.lock().verdicts.get(key(receipt));
        let mut verdicts = Vec::new();
        for v in vs {
            let Some(ve) = entries.entry(v)? else {
                continue;
            };
            if matches!(classify(&ve), Some(Indexed::Verdict(d)) if d == *receipt) {
                verdicts.push((v, ve));
                if verdicts.len() == MAX_VERDICTS {
                    break;
                }
            }
        }
        Ok(verdicts)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_core::Identity;
    use agora_core::statement::{Receipt, Verdict};
    use std::collections::BTreeMap;

    struct Log(Vec<Vec<u8>>);

    impl Entries for Log {
        fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.get(index as usize).cloned())
        }
    }

    fn receipt(id: &Identity, text: Option<Sha256>, time: u64) -> Vec<u8> {
        fingerprinted(id, text, None, time)
    }

    fn fingerprinted(
        id: &Identity,
        text: Option<Sha256>,
        fingerprint: Option<Fingerprint>,
        time: u64,
    ) -> Vec<u8> {
        let r = Receipt {
            model: Sha256([1; 32]),
            request: Sha256([2; 32]),
            output: Sha256([3; 32]),
            seed: 1,
            prompt_tokens: 1,
            completion_tokens: 1,
            proof: Sha256([4; 32]),
            worker: id.peer_id(),
            time,
            resumed: 0,
            text,
            fingerprint,
            unverifiable: false,
        };
        Statement::Receipt(r).sign(id).to_json().into_bytes()
    }

    fn verdict(id: &Identity, receipt_entry: &[u8], accept: bool) -> Vec<u8> {
        let env = Envelope::from_json(receipt_entry).unwrap();
        Statement::Verdict(Verdict {
            receipt: Sha256::of(&env.payload),
            worker: None,
            validator: id.peer_id(),
            accept,
            stats: BTreeMap::new(),
            reason: None,
            time: 9,
        })
        .sign(id)
        .to_json()
        .into_bytes()
    }

    #[test]
    fn receipts_are_found_by_text_with_their_verdicts() {
        let id = Identity::from_seed(&[7; 32]);
        let a = agora_core::text::digest("an answer").unwrap();
        let b = agora_core::text::digest("another answer").unwrap();
        // `c` shares `a`'s first 8 bytes: a short-key collision that must not be returned.
        let mut c = a;
        c.0[31] ^= 1;
        let mut log = vec![b"not a statement".to_vec()];
        log.push(receipt(&id, Some(a), 1)); // 1
        log.push(receipt(&id, Some(b), 2)); // 2
        log.push(receipt(&id, None, 3)); // 3
        log.push(receipt(&id, Some(c), 4)); // 4
        let v = verdict(&id, &log[1], true);
        log.push(v); // 5
        // Enough receipts to merge the tail into the sorted array, then one more `a`.
        for t in 0..TAIL as u64 {
            let d = agora_core::text::digest(&format!("filler {t}")).unwrap();
            log.push(receipt(&id, Some(d), 10 + t));
        }
        log.push(receipt(&id, Some(a), 5));
        let last = log.len() as u64 - 1;
        let log = Log(log);
        let index = TextIndex::default();
        // Scanned in two steps, as a growing log is.
        index.catch_up(3, &log).unwrap();
        index.catch_up(log.0.len() as u64, &log).unwrap();
        assert_eq!(index.scanned(), log.0.len() as u64);
        let (found, more) = index.find(&a, &log).unwrap();
        assert!(!more);
        assert_eq!(
            found.iter().map(|f| f.index).collect::<Vec<_>>(),
            vec![1, last]
        );
        assert_eq!(found[0].verdicts.len(), 1);
        assert_eq!(found[0].verdicts[0].0, 5);
        assert!(found[1].verdicts.is_empty());
        let (found, _) = index.find(&b, &log).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].index, 2);
        let nobody = agora_core::text::digest("nobody wrote this").unwrap();
        assert!(index.find(&nobody, &log).unwrap().0.is_empty());
    }

    #[test]
    fn edited_texts_are_found_by_their_fingerprints() {
        let id = Identity::from_seed(&[9; 32]);
        let sea = "The sea covers most of the planet and holds almost all of its water, \
                   shaping the weather, feeding millions of people and carrying most goods.";
        let edited = sea
            .replace("covers", "fills")
            .replace("millions", "billions");
        let river = "A river runs from the mountains to the sea, carving valleys, carrying \
                     silt and watering the fields of the farmers who live along its banks.";
        let fp = |t: &str| Fingerprint::of(t).unwrap();
        let digest = |t: &str| agora_core::text::digest(t).ok();
        let log = Log(vec![
            fingerprinted(&id, digest(sea), Some(fp(sea)), 1),
            fingerprinted(&id, digest(river), Some(fp(river)), 2),
            // The same text without a fingerprint: found exactly, never by similarity.
            fingerprinted(&id, digest(sea), None, 3),
        ]);
        let index = TextIndex::default();
        index.catch_up(3, &log).unwrap();
        let (found, more) = index.find_similar(&fp(&edited), 0.3, &log).unwrap();
        assert!(!more);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].index, 0);
        let s = found[0].similarity.unwrap();
        assert!((0.3..1.0).contains(&s), "{s}");
        // Exact lookups find both receipts of the unedited text, and none of the edited one.
        assert_eq!(index.find(&digest(sea).unwrap(), &log).unwrap().0.len(), 2);
        assert!(
            index
                .find(&digest(&edited).unwrap(), &log)
                .unwrap()
                .0
                .is_empty()
        );
        // A stricter threshold finds nothing.
        assert!(
            index
                .find_similar(&fp(&edited), 0.99, &log)
                .unwrap()
                .0
                .is_empty()
        );
    }

    #[test]
    fn at_most_max_matches_are_returned() {
        let id = Identity::from_seed(&[8; 32]);
        let a = agora_core::text::digest("Hello!").unwrap();
        let log = Log((0..MAX_MATCHES as u64 + 3)
            .map(|t| receipt(&id, Some(a), t))
            .collect());
        let index = TextIndex::default();
        index.catch_up(log.0.len() as u64, &log).unwrap();
        let (found, more) = index.find(&a, &log).unwrap();
        assert_eq!(found.len(), MAX_MATCHES);
        assert!(more);
    }

    #[test]
    fn merging_keeps_every_pair_in_order() {
        let mut k = Keys::default();
        for i in 0..3 * TAIL as u64 + 5 {
            k.push(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 1000, i);
        }
        assert_eq!(k.len(), 3 * TAIL + 5);
        assert!(k.sorted.windows(2).all(|w| w[0] <= w[1]));
        let all: usize = (0..1000).map(|key| k.get(key).len()).sum();
        assert_eq!(all, 3 * TAIL + 5);
    }
}
