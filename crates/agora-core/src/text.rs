//! The normalised form of an answer's text, and its digest: what a receipt's `text` field
//! holds and what a provenance lookup sends, so that a copy and paste of an answer (through an
//! editor, a mail client, another operating system) still matches it.
//!
//! The normalised form of a text (UTF-8) is, in this order:
//!
//! 1. line endings unified: every `\r\n`, and every `\r` left, becomes `\n`;
//! 2. Unicode Normalization Form C (NFC);
//! 3. whitespace (Unicode `White_Space`) at the end of every line removed;
//! 4. whitespace at the start and the end of the whole text removed.
//!
//! Nothing else changes: case, punctuation, inner spaces and blank lines between paragraphs
//! all count. The text digest is the SHA-256 of the normalised form's UTF-8 bytes, so anyone
//! can recompute it with standard tools. A text whose normalised form is empty has no digest
//! (it would match every empty answer), nor does one longer than [`MAX_TEXT`] bytes.

use std::borrow::Cow;

use sha2::Digest as _;

use crate::Sha256;

/// Longest text (in bytes, before normalisation) that has a digest here: 1 MiB, far beyond
/// any answer a node generates.
pub const MAX_TEXT: usize = 1 << 20;

/// Why a text has no digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Nothing is left after normalising.
    #[error("the text is empty (or only whitespace): it matches nothing")]
    Empty,
    /// Longer than [`MAX_TEXT`] bytes (its length).
    #[error("the text is {0} bytes; at most {MAX_TEXT} have a digest")]
    TooLong(usize),
    /// Not UTF-8 (the offset of the first invalid byte).
    #[error("the text is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
}

/// The normalised form of `text` (see the module documentation).
pub fn normalise(text: &str) -> String {
    let unified: Cow<'_, str> = if text.contains('\r') {
        Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(text)
    };
    let nfc = icu_normalizer::ComposingNormalizerBorrowed::new_nfc().normalize(&unified);
    let mut out = String::with_capacity(nfc.len());
    for (i, line) in nfc.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(line.trim_end());
    }
    out.trim().to_string()
}

/// The text digest of `text`: SHA-256 of its normalised form.
pub fn digest(text: &str) -> Result<Sha256, TextError> {
    if text.len() > MAX_TEXT {
        return Err(TextError::TooLong(text.len()));
    }
    let n = normalise(text);
    if n.is_empty() {
        return Err(TextError::Empty);
    }
    Ok(Sha256(sha2::Sha256::digest(n.as_bytes()).into()))
}

/// The text digest of untrusted bytes (a file, standard input).
pub fn digest_bytes(bytes: &[u8]) -> Result<Sha256, TextError> {
    if bytes.len() > MAX_TEXT {
        return Err(TextError::TooLong(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| TextError::NotUtf8(e.valid_up_to()))?;
    digest(text)
}

/// Slots of a text fingerprint.
pub const FINGERPRINT_SLOTS: usize = 64;
/// Slots per band of the fingerprint index (a band's slots all equal: a candidate).
pub const BAND_SLOTS: usize = 2;
/// Fewest words a text needs for a fingerprint (shorter texts say too little to match on).
pub const FINGERPRINT_MIN_WORDS: usize = 8;

/// A MinHash sketch of a text's word triples, for finding edited copies of an answer (opt-in:
/// `"agora": {"provenance": "fingerprint"}`). The text is normalised, lower-cased and cut
/// into words (maximal runs of alphanumeric characters); every run of three consecutive words
/// (a shingle) is hashed (SHA-256 of the words joined by single spaces, first 8 bytes); slot
/// `i` keeps the low 16 bits of the minimum over the shingles of `a_i · h + b_i` (mod 2⁶⁴), with
/// `a_i`, `b_i` drawn from SplitMix64 seeded with `i`. The share of equal slots of two
/// fingerprints estimates the Jaccard similarity of their shingle sets (±0.06 at 64 slots).
///
/// What it reveals: nothing of a text one does not have, but someone holding a candidate text
/// (or candidate phrases) can test whether it is similar to an answer. Hence opt-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u16; FINGERPRINT_SLOTS]);

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Fingerprint {
    /// The fingerprint of `text`; none for a text of fewer than [`FINGERPRINT_MIN_WORDS`]
    /// words or longer than [`MAX_TEXT`] bytes.
    pub fn of(text: &str) -> Option<Fingerprint> {
        if text.len() > MAX_TEXT {
            return None;
        }
        let lower = normalise(text).to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        if words.len() < FINGERPRINT_MIN_WORDS {
            return None;
        }
        let params: Vec<(u64, u64)> = (0..FINGERPRINT_SLOTS as u64)
            .map(|i| (splitmix64(2 * i) | 1, splitmix64(2 * i + 1)))
            .collect();
        let mut mins = [u64::MAX; FINGERPRINT_SLOTS];
        for w in words.windows(3) {
            let d = sha2::Sha256::digest(w.join(" ").as_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[..8]);
            let h = u64::from_be_bytes(b);
            for (m, (a, c)) in mins.iter_mut().zip(&params) {
                *m = (*m).min(a.wrapping_mul(h).wrapping_add(*c));
            }
        }
        let mut slots = [0u16; FINGERPRINT_SLOTS];
        for (s, m) in slots.iter_mut().zip(mins) {
            *s = m as u16;
        }
        Some(Fingerprint(slots))
    }

    /// The estimated Jaccard similarity of the two texts' word triples: the share of equal
    /// slots (0.0 to 1.0).
    pub fn similarity(&self, other: &Fingerprint) -> f64 {
        let same = self.0.iter().zip(&other.0).filter(|(a, b)| a == b).count();
        same as f64 / FINGERPRINT_SLOTS as f64
    }

    /// The index keys of the fingerprint: one per band of [`BAND_SLOTS`] slots (the band's
    /// number and its slots), so that texts with similar fingerprints share some.
    pub fn bands(&self) -> impl Iterator<Item = u64> + '_ {
        self.0
            .chunks(BAND_SLOTS)
            .enumerate()
            .map(|(i, band)| band.iter().fold(i as u64, |k, &s| (k << 16) | u64::from(s)))
    }

    /// Lowercase hex of the slots, big-endian (256 digits).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|s| format!("{s:04x}")).collect()
    }

    /// Parses [`Fingerprint::to_hex`]'s form.
    pub fn from_hex(s: &str) -> Result<Fingerprint, &'static str> {
        if s.len() != 4 * FINGERPRINT_SLOTS || !s.is_ascii() {
            return Err("a fingerprint is 256 hex digits");
        }
        let mut slots = [0u16; FINGERPRINT_SLOTS];
        for (i, slot) in slots.iter_mut().enumerate() {
            *slot = u16::from_str_radix(&s[4 * i..4 * i + 4], 16)
                .map_err(|_| "a fingerprint is 256 hex digits")?;
        }
        Ok(Fingerprint(slots))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Fingerprint::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_copy_with_other_line_endings_and_trailing_spaces_matches() {
        let answer = "Paris is the capital of France.\n\nIt lies on the Seine.";
        let copy = "  Paris is the capital of France.   \r\n\r\nIt lies on the Seine.\t\r\n\n";
        assert_eq!(digest(answer).unwrap(), digest(copy).unwrap());
        let old_mac = "Paris is the capital of France.\r\rIt lies on the Seine.";
        assert_eq!(digest(answer).unwrap(), digest(old_mac).unwrap());
    }

    #[test]
    fn composed_and_decomposed_accents_match() {
        // "é" as one code point and as "e" + combining acute accent.
        assert_eq!(digest("caf\u{e9}").unwrap(), digest("cafe\u{301}").unwrap());
    }

    #[test]
    fn what_counts_still_counts() {
        let d = digest("The cat sat.").unwrap();
        for other in [
            "the cat sat.",
            "The cat sat",
            "The  cat sat.",
            "The cat\nsat.",
        ] {
            assert_ne!(d, digest(other).unwrap(), "{other:?}");
        }
        // A blank line between paragraphs counts.
        assert_ne!(digest("a\n\nb").unwrap(), digest("a\nb").unwrap());
    }

    #[test]
    fn the_digest_is_plain_sha256_of_the_normalised_form() {
        let d = digest("  hello world \n").unwrap();
        assert_eq!(
            d.to_string(),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }

    #[test]
    fn empty_long_and_invalid_texts_have_no_digest() {
        assert_eq!(digest(""), Err(TextError::Empty));
        assert_eq!(digest(" \r\n\t\u{a0}"), Err(TextError::Empty));
        let long = "a".repeat(MAX_TEXT + 1);
        assert_eq!(digest(&long), Err(TextError::TooLong(MAX_TEXT + 1)));
        assert_eq!(digest_bytes(b"ok \xff"), Err(TextError::NotUtf8(3)));
        assert!(digest(&"a".repeat(MAX_TEXT)).is_ok());
    }

    const ANSWER: &str = "The sea covers most of the planet and holds almost all of its water, \
        shaping the weather, feeding millions of people and carrying most of the goods that \
        nations trade with one another across the world.";

    #[test]
    fn an_edited_copy_is_similar_and_another_text_is_not() {
        let a = Fingerprint::of(ANSWER).unwrap();
        // The same text copied: identical.
        assert_eq!(
            Fingerprint::of(&format!("  {}\r\n", ANSWER.to_uppercase())),
            Some(a)
        );
        // About 10 % of the words changed.
        let edited = ANSWER
            .replace("covers", "fills")
            .replace("millions", "billions")
            .replace("goods", "cargo")
            .replace("trade", "exchange");
        let e = Fingerprint::of(&edited).unwrap();
        let s = a.similarity(&e);
        assert!((0.3..1.0).contains(&s), "edited: {s}");
        assert!(a.bands().zip(e.bands()).any(|(x, y)| x == y));
        let other = Fingerprint::of(
            "Paris is the capital of France and lies on the Seine, a river that flows \
             into the English Channel at Le Havre after crossing Normandy.",
        )
        .unwrap();
        assert!(
            a.similarity(&other) < 0.1,
            "unrelated: {}",
            a.similarity(&other)
        );
    }

    #[test]
    fn fingerprints_need_words_and_parse_back() {
        assert_eq!(Fingerprint::of("Too short to say much."), None);
        let a = Fingerprint::of(ANSWER).unwrap();
        assert_eq!(Fingerprint::from_hex(&a.to_hex()), Ok(a));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), a);
        for bad in [
            "",
            "zz",
            &"g".repeat(256),
            &"0".repeat(255),
            &"é".repeat(128),
        ] {
            assert!(Fingerprint::from_hex(bad).is_err(), "{bad}");
        }
        assert_eq!(a.bands().count(), FINGERPRINT_SLOTS / BAND_SLOTS);
    }

    proptest! {
        /// Normalising is idempotent, and line endings never matter.
        #[test]
        fn normalising_twice_changes_nothing(s in "[a-z \t\r\n\u{e9}\u{301}\u{a0}]{0,64}") {
            let n = normalise(&s);
            prop_assert_eq!(&normalise(&n), &n);
        }

        /// Unix, Windows and old Mac line endings give the same form.
        #[test]
        fn line_endings_never_matter(s in "[a-z \t\n\u{e9}\u{301}\u{a0}]{0,64}") {
            let n = normalise(&s);
            prop_assert_eq!(&normalise(&s.replace('\n', "\r\n")), &n);
            prop_assert_eq!(&normalise(&s.replace('\n', "\r")), &n);
        }
    }
}
