//! Turns token pieces into text a client may see: whole UTF-8 characters only, stop sequences
//! cut out, and nothing emitted that a later token could reveal to be the start of a stop
//! sequence.

/// What one pushed piece produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Text that is final; may be empty when the piece was held back.
    Text(String),
    /// A stop sequence was completed: this text precedes it and generation must end.
    Stop(String),
}

/// Incremental detokenizer with stop sequences.
#[derive(Debug, Default)]
pub struct TextStream {
    stops: Vec<String>,
    /// Bytes of an incomplete UTF-8 character.
    partial: Vec<u8>,
    /// Decoded text not yet emitted (possible prefix of a stop sequence).
    held: String,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            partial: Vec::new(),
            held: String::new(),
        }
    }

    /// Adds the bytes of one token.
    pub fn push(&mut self, piece: &[u8]) -> Step {
        self.partial.extend_from_slice(piece);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // An invalid sequence (not merely incomplete) becomes U+FFFD now.
            Err(_) => {
                let s = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                self.held.push_str(&s);
                return self.scan();
            }
        };
        let rest = self.partial.split_off(valid);
        let text = std::mem::replace(&mut self.partial, rest);
        // `text` is valid UTF-8 by construction.
        self.held.push_str(&String::from_utf8_lossy(&text));
        self.scan()
    }

    fn scan(&mut self) -> Step {
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            return Step::Stop(out);
        }
        // Keep back the longest suffix of `held` that starts some stop sequence.
        let mut keep = 0;
        for stop in &self.stops {
            for (i, _) in self.held.char_indices() {
                let tail = &self.held[i..];
                if stop.starts_with(tail) {
                    keep = keep.max(tail.len());
                    break;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        Step::Text(out)
    }

    /// Everything still held, at the end of generation.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        if !self.partial.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        out
    }
}

/// The text a generation's `tokens` show a client: each token's piece through a
/// [`TextStream`] with the job's stop sequences, up to the first end-of-generation token
/// (unless `ignore_eos`) or stop sequence — what a gateway derives from the same tokens. A
/// token without a piece adds nothing.
pub fn render(
    tokens: &[u32],
    stops: &[String],
    ignore_eos: bool,
    piece: impl Fn(u32) -> Option<Vec<u8>>,
    is_eog: impl Fn(u32) -> bool,
) -> String {
    let mut stream = TextStream::new(stops.to_vec());
    let mut out = String::new();
    for &t in tokens {
        if !ignore_eos && is_eog(t) {
            break;
        }
        match stream.push(&piece(t).unwrap_or_default()) {
            Step::Text(s) => out.push_str(&s),
            Step::Stop(s) => {
                out.push_str(&s);
                return out;
            }
        }
    }
    out.push_str(&stream.finish());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (String, bool) {
        let mut t = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match t.push(p) {
                Step::Text(s) => out.push_str(&s),
                Step::Stop(s) => {
                    out.push_str(&s);
                    return (out, true);
                }
            }
        }
        out.push_str(&t.finish());
        (out, false)
    }

    #[test]
    fn render_stops_at_the_end_token_or_a_stop_sequence() {
        let vocab: [&[u8]; 5] = [b"Hel", b"lo", b" wor", b"ld", b"<end>"];
        let piece = |t: u32| vocab.get(t as usize).map(|p| p.to_vec());
        let eog = |t: u32| t == 4;
        assert_eq!(render(&[0, 1, 2, 3], &[], false, piece, eog), "Hello world");
        assert_eq!(render(&[0, 1, 4, 2], &[], false, piece, eog), "Hello");
        assert_eq!(render(&[0, 1, 4], &[], true, piece, eog), "Hello<end>");
        assert_eq!(
            render(&[0, 1, 2, 3], &["o w".into()], false, piece, eog),
            "Hell"
        );
        // A token outside the vocabulary adds nothing.
        assert_eq!(render(&[0, 99, 1], &[], false, piece, eog), "Hello");
    }

    #[test]
    fn plain_text_passes_through() {
        assert_eq!(run(&[], &[b"Hel", b"lo"]), ("Hello".into(), false));
    }

    #[test]
    fn split_utf8_is_joined() {
        let e = "é".as_bytes();
        assert_eq!(
            run(&[], &[b"caf", &e[..1], &e[1..]]),
            ("café".into(), false)
        );
        let mut t = TextStream::new(vec![]);
        assert_eq!(t.push(&e[..1]), Step::Text(String::new()));
    }

    #[test]
    fn stop_across_tokens_is_cut() {
        assert_eq!(
            run(&["\n\n"], &[b"one", b"\n", b"\ntwo"]),
            ("one".into(), true)
        );
        assert_eq!(
            run(&["END"], &[b"abcE", b"N", b"Dxyz"]),
            ("abc".into(), true)
        );
    }

    #[test]
    fn held_prefix_is_released_when_it_diverges() {
        let mut t = TextStream::new(vec!["STOP".into()]);
        assert_eq!(t.push(b"go ST"), Step::Text("go ".into()));
        assert_eq!(t.push(b"AY"), Step::Text("STAY".into()));
        assert_eq!(t.finish(), "");
    }

    #[test]
    fn earliest_stop_wins() {
        assert_eq!(run(&["b", "a"], &[b"xxab"]), ("xx".into(), true));
    }

    #[test]
    fn invalid_utf8_becomes_replacement() {
        assert_eq!(run(&[], &[b"a\xff", b"b"]), ("a\u{fffd}b".into(), false));
        assert_eq!(run(&[], &[b"a\xc3"]), ("a\u{fffd}".into(), false));
    }
}
