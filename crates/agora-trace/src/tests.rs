#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use agora_core::Identity;
use agora_core::statement::{
    Contribution, DatasetPredicate, DigestSet, Sha256 as Digest32, Statement, Subject,
};
use agora_data::{Record, Trees};
use proptest::prelude::*;

use super::*;
use crate::report::{
    DatasetRef, TraceError, TracedRecord, TracedSpan, attribution, record_key, text_sha256, verify,
};

/// Test-only stand-in for a model's tokenizer: one token per byte (so pieces spell the text).
struct ByteTokens;

impl Tokenize for ByteTokens {
    fn tokenize(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }
    fn piece(&self, token: u32) -> Vec<u8> {
        vec![token as u8]
    }
    fn n_vocab(&self) -> u32 {
        256
    }
}

fn build(dir: &std::path::Path, records: &[Vec<u32>], n_vocab: u32) -> (Index, Header) {
    let mut b = Builder::new(n_vocab).unwrap();
    for r in records {
        b.push(r).unwrap();
    }
    let path = dir.join("trace.idx");
    let h = b.finish(&path, "t@1", [7; 32], [9; 32]).unwrap();
    let ix = Index::open(&path, &expect(records.len() as u64)).unwrap();
    (ix, h)
}

fn expect(records: u64) -> Expect {
    Expect {
        dataset: "t@1".into(),
        records,
        record_root: [7; 32],
    }
}

/// Longest prefix of `q[i..]` occurring in any record (no crossing separators), and how often.
fn naive_longest(records: &[Vec<u32>], q: &[u32], i: usize) -> (usize, u64) {
    let mut best = (0, 0);
    for len in 1..=q.len() - i {
        let pat = &q[i..i + len];
        let count: u64 = records
            .iter()
            .map(|r| r.windows(len).filter(|w| *w == pat).count() as u64)
            .sum();
        if count == 0 {
            break;
        }
        best = (len, count);
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Words are non-empty, bounded, and spell the text.
    #[test]
    fn words_spell_the_text(text in "[ a-zé0-9\\n.,!]{0,200}") {
        let words = split_words(&text);
        prop_assert_eq!(words.concat(), text.clone());
        for w in &words {
            prop_assert!(!w.is_empty() && w.len() <= MAX_WORD + 4, "{:?}", w);
        }
    }

    /// The suffix array sorts the stream's suffixes (a suffix running past the end first).
    #[test]
    fn suffixes_are_sorted(records in prop::collection::vec(prop::collection::vec(0u32..4, 0..20), 0..8)) {
        let dir = tempfile::tempdir().unwrap();
        let (ix, h) = build(dir.path(), &records, 4);
        let stream: Vec<u16> = (0..ix.len()).map(|i| ix.token(i)).collect();
        prop_assert_eq!(h.tokens as usize, records.iter().map(|r| r.len() + 1).sum::<usize>());
        let mut want: Vec<u64> = (0..ix.len()).collect();
        want.sort_by(|&a, &b| stream[a as usize..].cmp(&stream[b as usize..]));
        let got: Vec<u64> = (0..ix.len()).map(|j| ix.suffix(j)).collect();
        prop_assert_eq!(got, want);
        ix.check_body().unwrap();
    }

    /// The maximal spans are exactly those the definition gives, found by brute force.
    #[test]
    fn spans_match_brute_force(
        records in prop::collection::vec(prop::collection::vec(0u32..3, 0..24), 1..6),
        q in prop::collection::vec(0u32..4, 0..30),
        min in 1usize..4,
        max_count in 1u64..6,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (ix, _) = build(dir.path(), &records, 4);
        let got = search::maximal_spans(&ix, &q, Options { min_tokens: min, max_count });
        let mut want = Vec::new();
        let mut prev_end = 0;
        for i in 0..q.len() {
            let (len, count) = naive_longest(&records, &q, i);
            if len > 0 && i + len > prev_end && len >= min && count <= max_count {
                want.push((i, len, count));
            }
            prev_end = prev_end.max(i + len);
        }
        let got: Vec<(usize, usize, u64)> = got.iter().map(|s| (s.start, s.len, s.count())).collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn words_split_as_gpt2_does() {
    assert_eq!(
        split_words("Hello, world!  It's 2026.\n  Done"),
        vec![
            "Hello", ",", " world", "!", " ", " It", "'", "s", " 2026", ".", "\n ", " Done"
        ]
    );
    let long = "a".repeat(150);
    assert_eq!(split_words(&long).len(), 3);
    // Word by word, memoized: the same tokens as the tokenizer gives each word.
    let w = Words::new(ByteTokens);
    let t = "the cat and the hat and the cat";
    assert_eq!(w.tokenize(t), ByteTokens.tokenize(t));
    assert_eq!(w.tokenize(t), ByteTokens.tokenize(t));
}

#[test]
fn occurrences_name_the_record_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<Vec<u32>> = ["the quick brown fox", "jumps over", "a quick brown dog"]
        .iter()
        .map(|s| ByteTokens.tokenize(s))
        .collect();
    let (ix, _) = build(dir.path(), &recs, 256);
    let found = find(
        &ix,
        &ByteTokens,
        "so quick brown!",
        Options {
            min_tokens: 5,
            max_count: 10,
        },
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].text, " quick brown");
    assert_eq!((found[0].start, found[0].end), (2, 14));
    let mut occ = found[0].occurrences.clone();
    occ.sort();
    assert_eq!(occ, vec![(0, 3), (2, 1)]);
    assert_eq!(ix.record_of(0), Some((0, 0)));
    assert_eq!(ix.record_of(20), Some((1, 20)));
}

#[test]
fn a_text_made_of_two_records_gives_two_spans() {
    let dir = tempfile::tempdir().unwrap();
    let texts = [
        "It is a truth universally acknowledged.",
        "Call me Ishmael, some years ago.",
        "All happy families are alike; each unhappy family is unhappy in its own way.",
    ];
    let recs: Vec<Vec<u32>> = texts.iter().map(|s| ByteTokens.tokenize(s)).collect();
    let (ix, _) = build(dir.path(), &recs, 256);
    let text = format!("{} Zq xv kj wq {}", texts[2], texts[1]);
    let found = find(&ix, &ByteTokens, &text, Options::default());
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].text, texts[2]);
    assert_eq!(found[0].occurrences, vec![(2, 0)]);
    assert!(texts[1].contains(&found[1].text) && found[1].text.len() >= texts[1].len() - 1);
    assert_eq!(found[1].occurrences[0].0, 1);
}

#[test]
fn damaged_truncated_and_stale_indexes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let recs = vec![vec![1, 2, 3], vec![2, 3]];
    let (_, h) = build(dir.path(), &recs, 4);
    let path = dir.path().join("trace.idx");
    let good = std::fs::read(&path).unwrap();
    assert_eq!(Header::parse(&good).unwrap(), h);
    // another version
    let err = Index::open(&path, &expect(3)).unwrap_err();
    assert!(matches!(err, IndexError::Stale { .. }), "{err}");
    let mut e = expect(2);
    e.record_root = [8; 32];
    assert!(matches!(
        Index::open(&path, &e),
        Err(IndexError::Stale { .. })
    ));
    // truncated
    std::fs::write(&path, &good[..good.len() - 1]).unwrap();
    assert!(matches!(
        Index::open(&path, &expect(2)),
        Err(IndexError::Length { .. })
    ));
    std::fs::write(&path, &good[..100]).unwrap();
    assert!(matches!(
        Index::open(&path, &expect(2)),
        Err(IndexError::Length { .. })
    ));
    // a header byte flipped
    let mut bad = good.clone();
    bad[20] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        Index::open(&path, &expect(2)),
        Err(IndexError::Header(_))
    ));
    // a body byte flipped: opens, but its digest says so
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let ix = Index::open(&path, &expect(2)).unwrap();
    assert!(matches!(ix.check_body(), Err(IndexError::Body)));
    // missing
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        Index::open(&path, &expect(2)),
        Err(IndexError::Io { .. })
    ));
    // a tokenizer too large for 16 bits, tokens outside the vocabulary
    assert!(Builder::new(70_000).is_err());
    let mut b = Builder::new(4).unwrap();
    assert!(b.push(&[4]).is_err());
}

/// A signed dataset statement over `records`, and the proofs of its records.
fn signed(records: &[Record]) -> (String, Trees) {
    let trees = Trees::of(records).unwrap();
    let roots = trees.roots();
    let st = Statement::Dataset {
        subject: vec![Subject {
            name: "s.zst".into(),
            digest: DigestSet {
                sha256: Digest32([1; 32]),
            },
        }],
        predicate: DatasetPredicate {
            name: "books".into(),
            version: 1,
            license: "CC-BY-4.0".into(),
            source: "test".into(),
            records_root: Digest32(roots.record_root.0),
            ids_root: Some(Digest32(roots.id_root.0)),
            records: records.len() as u64,
            size: 0,
            derived_from: None,
            contributors: vec![
                Contribution {
                    key: "alice".into(),
                    label: None,
                    records: 3,
                },
                Contribution {
                    key: "bob".into(),
                    label: None,
                    records: 1,
                },
            ],
        },
    };
    let id = Identity::from_seed(&[5; 32]);
    (st.sign(&id).to_json(), trees)
}

fn report(text: &str, records: &[Record], statement: &str, trees: &Trees) -> report::Trace {
    let span_text = "each unhappy family";
    let start = text.find(span_text).unwrap();
    let mut recs = BTreeMap::new();
    recs.insert(
        record_key("books@1", 2),
        TracedRecord {
            dataset: "books@1".into(),
            id: records[2].id.clone(),
            index: 2,
            proof: Some(trees.prove(2, &records[2]).unwrap().to_json()),
        },
    );
    let mut datasets = BTreeMap::new();
    datasets.insert(
        "books@1".to_string(),
        DatasetRef {
            statement: statement.to_string(),
            tokenizer: format!("sha256:{}", "00".repeat(32)),
            log: None,
        },
    );
    report::Trace {
        format: report::FORMAT.into(),
        text_sha256: text_sha256(text),
        min_tokens: 8,
        max_count: 10,
        datasets,
        spans: vec![TracedSpan {
            start,
            end: start + span_text.len(),
            text: span_text.into(),
            tokens: span_text.len(),
            count: 1,
            records: vec![record_key("books@1", 2)],
        }],
        records: recs,
        notes: vec![],
    }
}

#[test]
fn reports_are_checked_and_lies_caught() {
    let records: Vec<Record> = [
        "It is a truth universally acknowledged.",
        "Call me Ishmael.",
        "All happy families are alike; each unhappy family is unhappy in its own way.",
        "Mother died today.",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| Record::new(format!("r{i}"), *t))
    .collect();
    let (statement, trees) = signed(&records);
    let text = "Say: each unhappy family, they wrote.";
    let good = report(text, &records, &statement, &trees);
    let checked = verify(&good, Some(text), None).unwrap();
    assert_eq!(checked.spans.len(), 1);
    assert!(checked.spans[0].records[0].proven);
    assert_eq!(checked.datasets["books@1"].license, "CC-BY-4.0");
    // the attribution: 19 bytes, split 3:1 between alice and bob by record counts
    let a = attribution(&checked, &good.text_sha256, text.len() as u64);
    assert_eq!(a.covered_bytes, 19);
    assert_eq!(a.datasets[0].bytes, 19);
    let shares: Vec<(String, u64)> = a.datasets[0]
        .contributors
        .iter()
        .map(|c| (c.key.clone(), c.bytes))
        .collect();
    assert_eq!(shares, vec![("alice".into(), 15), ("bob".into(), 4)]);

    // Each lie is caught.
    let lie = |f: &dyn Fn(&mut report::Trace)| {
        let mut t = good.clone();
        f(&mut t);
        verify(&t, Some(text), None).unwrap_err()
    };
    // a span the record does not contain
    let e = lie(&|t| {
        t.spans[0].text = "each unhappy famine".into();
    });
    assert!(matches!(e, TraceError::Span { .. }), "{e}");
    // a span at the wrong offsets
    let e = lie(&|t| {
        t.spans[0].start += 1;
        t.spans[0].end += 1;
    });
    assert!(matches!(e, TraceError::Span { .. }), "{e}");
    // another record's proof under this record's name
    let e = lie(&|t| {
        let r = t.records.get_mut("books@1#2").unwrap();
        r.proof = Some(trees.prove(1, &records[1]).unwrap().to_json());
    });
    assert!(matches!(e, TraceError::Record { .. }), "{e}");
    // a forged record (text changed inside the proof)
    let e = lie(&|t| {
        let forged = Record::new("r2", "each unhappy family is happy");
        let mut p = trees.prove(2, &records[2]).unwrap();
        p.record = forged.encode();
        t.records.get_mut("books@1#2").unwrap().proof = Some(p.to_json());
    });
    assert!(matches!(e, TraceError::Record { .. }), "{e}");
    // a statement whose signature does not verify
    let e = lie(&|t| {
        let d = t.datasets.get_mut("books@1").unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&d.statement).unwrap();
        v["signatures"][0]["sig"] = serde_json::Value::String("AAAA".repeat(22) + "AA==");
        d.statement = v.to_string();
    });
    assert!(matches!(e, TraceError::Statement { .. }), "{e}");
    // a trace of another text
    assert_eq!(
        verify(&good, Some("another text"), None).unwrap_err(),
        TraceError::OtherText
    );
    // asked to check logging without log proofs
    let policy = agora_tlog::policy::Policy::parse(b"quorum none\n").unwrap();
    assert!(matches!(
        verify(&good, Some(text), Some(&policy)),
        Err(TraceError::Log { .. })
    ));
}
