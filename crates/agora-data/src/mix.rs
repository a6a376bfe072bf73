//! Data mixes: the `MIX.toml` file `agora model publish --mix` reads, saying what a model was
//! trained on.
//!
//! ```toml
//! license = "Apache-2.0"              # SPDX expression of the weights (required)
//! name = "my-model"                   # the model's name (default: its name in the store)
//! recipe = "train.yaml"               # the training recipe, relative to this file
//! unknown = ["the order of the data"] # what is not known, said plainly
//!
//! [base]                              # the model it was trained from
//! model = "smollm2-135m"              # a stored model's name, or sha256:HEX
//! name = "SmolLM2-135M"               # how its publisher calls it
//!
//! [[dataset]]                         # a dataset whose statement is logged
//! name = "fortunes@1"                 # NAME@VERSION, as `agora dataset add` made it
//! weight = 1.0                        # sampling weight (relative, finite, > 0)
//! tokens = 1200000                    # tokens of it seen in training (optional)
//! log = "http://127.0.0.1:8080/log"   # where its statement is logged, with `index`
//! index = 3                           #   (default: where `agora dataset add --log` put it)
//!
//! [[declared]]                        # data said to be used that no log proves
//! name = "FineWeb-Edu"
//! license = "ODC-By-1.0"
//! source = "https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu"
//! note = "the bulk of pre-training"
//! ```
//!
//! Parsing is strict (unknown keys are errors naming the line) and bounded: the file, every
//! string and every list have a maximum size, so a hostile file costs little.

use serde::Deserialize;

use crate::license::check_license;

/// Largest mix file read.
pub const MAX_MIX_BYTES: usize = 1 << 20;
/// Most `[[dataset]]` and most `[[declared]]` entries.
pub const MAX_ENTRIES: usize = 1024;
/// Longest string value.
pub const MAX_STRING: usize = 4096;

/// A data mix, as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// The model's name (default: its name in the model store).
    #[serde(default)]
    pub name: Option<String>,
    /// SPDX licence expression of the weights.
    pub license: String,
    /// The training recipe's file, relative to the mix file.
    #[serde(default)]
    pub recipe: Option<String>,
    /// What is not known about the training.
    #[serde(default)]
    pub unknown: Vec<String>,
    /// The model it was trained from.
    #[serde(default)]
    pub base: Option<Base>,
    /// Logged datasets.
    #[serde(default, rename = "dataset")]
    pub datasets: Vec<Dataset>,
    /// Data said to be used that no logged statement covers.
    #[serde(default)]
    pub declared: Vec<Declared>,
}

/// `[base]`: the model trained from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// A stored model's name, or `sha256:HEX`.
    pub model: String,
    /// The base model's published name.
    #[serde(default)]
    pub name: Option<String>,
}

/// `[[dataset]]`: a dataset whose statement is in a log.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// `NAME@VERSION`.
    pub name: String,
    /// Sampling weight (relative).
    pub weight: f64,
    /// Tokens of it seen in training.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// URL of the log holding its statement (with `index`).
    #[serde(default)]
    pub log: Option<String>,
    /// Index of its statement in that log (with `log`).
    #[serde(default)]
    pub index: Option<u64>,
}

impl Dataset {
    /// The name and version of `NAME@VERSION`.
    pub fn name_version(&self) -> (&str, u32) {
        split_name_version(&self.name).unwrap_or((&self.name, 0))
    }
}

/// `[[declared]]`: data said to be used, not provable.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    /// Its published name.
    pub name: String,
    /// SPDX licence expression, as published.
    pub license: String,
    /// Where it is published.
    pub source: String,
    /// Anything else known about it.
    #[serde(default)]
    pub note: Option<String>,
}

/// Why a mix file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    /// Not TOML, or not the shape of a mix (the message names the line).
    #[error("the mix is not valid: {0}")]
    Syntax(String),
    /// Well-formed, but a value is not acceptable.
    #[error("the mix is not valid: {0}")]
    Invalid(String),
}

/// `NAME@VERSION` split, when VERSION is a positive integer and NAME non-empty.
pub fn split_name_version(s: &str) -> Option<(&str, u32)> {
    let (n, v) = s.rsplit_once('@')?;
    let v: u32 = v.parse().ok()?;
    (!n.is_empty() && v > 0).then_some((n, v))
}

impl Mix {
    /// Parses and checks a mix file's text.
    pub fn parse(text: &str) -> Result<Mix, MixError> {
        if text.len() > MAX_MIX_BYTES {
            return Err(MixError::Invalid(format!(
                "the file is {} bytes; a mix is at most {MAX_MIX_BYTES}",
                text.len()
            )));
        }
        let mix: Mix = toml::from_str(text).map_err(|e| MixError::Syntax(e.to_string()))?;
        mix.check()?;
        Ok(mix)
    }

    fn check(&self) -> Result<(), MixError> {
        let bad = |m: String| Err(MixError::Invalid(m));
        if self.datasets.len() > MAX_ENTRIES || self.declared.len() > MAX_ENTRIES {
            return bad(format!(
                "at most {MAX_ENTRIES} [[dataset]] and {MAX_ENTRIES} [[declared]] entries"
            ));
        }
        if self.unknown.len() > MAX_ENTRIES {
            return bad(format!("at most {MAX_ENTRIES} `unknown` lines"));
        }
        let mut strings: Vec<(&str, &str)> = vec![("license", &self.license)];
        strings.extend(self.name.as_deref().map(|s| ("name", s)));
        strings.extend(self.recipe.as_deref().map(|s| ("recipe", s)));
        strings.extend(self.unknown.iter().map(|s| ("unknown", s.as_str())));
        if let Some(b) = &self.base {
            strings.push(("base.model", &b.model));
            strings.extend(b.name.as_deref().map(|s| ("base.name", s)));
        }
        for d in &self.datasets {
            strings.push(("dataset.name", &d.name));
            strings.extend(d.log.as_deref().map(|s| ("dataset.log", s)));
        }
        for d in &self.declared {
            strings.extend([
                ("declared.name", d.name.as_str()),
                ("declared.license", &d.license),
                ("declared.source", &d.source),
            ]);
            strings.extend(d.note.as_deref().map(|s| ("declared.note", s)));
        }
        for (key, s) in strings {
            if s.len() > MAX_STRING {
                return bad(format!(
                    "`{key}` is {} bytes; a value is at most {MAX_STRING}",
                    s.len()
                ));
            }
            if s.chars().any(char::is_control) {
                return bad(format!("`{key}` holds a control character: {s:?}"));
            }
        }
        check_license(&self.license).map_err(|e| MixError::Invalid(format!("license: {e}")))?;
        if self.datasets.is_empty() && self.declared.is_empty() && self.unknown.is_empty() {
            return bad(
                "the mix names no [[dataset]], no [[declared]] data and nothing `unknown`: say \
                 what the model was trained on, or that it is not known"
                    .into(),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &self.datasets {
            if split_name_version(&d.name).is_none() {
                return bad(format!(
                    "dataset {:?} is not NAME@VERSION (e.g. fortunes@1)",
                    d.name
                ));
            }
            if !seen.insert(&d.name) {
                return bad(format!("dataset {} is named twice", d.name));
            }
            if !(d.weight.is_finite() && d.weight > 0.0) {
                return bad(format!(
                    "the weight of {} is {}: weights are finite and positive",
                    d.name, d.weight
                ));
            }
            if d.log.is_some() != d.index.is_some() {
                return bad(format!(
                    "dataset {}: `log` and `index` go together (where its statement is logged)",
                    d.name
                ));
            }
        }
        for d in &self.declared {
            check_license(&d.license)
                .map_err(|e| MixError::Invalid(format!("declared {:?}: {e}", d.name)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FULL: &str = r#"
license = "Apache-2.0"
name = "m"
recipe = "train.yaml"
unknown = ["the order"]
[base]
model = "sha256:00"
[[dataset]]
name = "fortunes@1"
weight = 2.5
tokens = 10
[[dataset]]
name = "wiki@3"
weight = 1
log = "http://x/log"
index = 4
[[declared]]
name = "FineWeb-Edu"
license = "ODC-By-1.0"
source = "https://example.org"
"#;

    #[test]
    fn a_full_mix_parses() {
        let m = Mix::parse(FULL).unwrap();
        assert_eq!(m.datasets.len(), 2);
        assert_eq!(m.datasets[0].name_version(), ("fortunes", 1));
        assert_eq!(m.datasets[1].index, Some(4));
        assert_eq!(m.base.unwrap().model, "sha256:00");
        assert_eq!(m.declared[0].license, "ODC-By-1.0");
    }

    #[test]
    fn bad_mixes_are_refused_precisely() {
        let cases = [
            (
                FULL.replace("weight = 2.5", "weight = -1.0"),
                "finite and positive",
            ),
            (
                FULL.replace("weight = 2.5", "weight = nan"),
                "finite and positive",
            ),
            (FULL.replace("fortunes@1", "fortunes"), "NAME@VERSION"),
            (FULL.replace("wiki@3", "fortunes@1"), "named twice"),
            (FULL.replace("index = 4", ""), "go together"),
            (FULL.replace("Apache-2.0", "Apache2"), "SPDX"),
            (FULL.replace("ODC-By-1.0", "ODC"), "declared"),
            (
                FULL.replace("tokens = 10", "tokens = 10\ncolour = 1"),
                "unknown field",
            ),
            (FULL.replace("tokens = 10", "tokens = -10"), "line"),
            ("license = \"MIT\"".to_string(), "names no"),
            (
                format!("{FULL}\nx = \"{}\"", "a".repeat(MAX_MIX_BYTES)),
                "at most",
            ),
        ];
        for (text, want) in cases {
            let e = Mix::parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    #[test]
    fn name_version_is_strict() {
        assert_eq!(split_name_version("a@b@2"), Some(("a@b", 2)));
        assert_eq!(split_name_version("a@0"), None);
        assert_eq!(split_name_version("@1"), None);
        assert_eq!(split_name_version("a@-1"), None);
    }
}
