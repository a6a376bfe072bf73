//! Licences of datasets and models: SPDX expressions, checked against the SPDX licence list
//! (the `spdx` crate's copy), with the nearest valid identifiers suggested for a typo.

/// An expression that is not a valid SPDX licence expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{expression:?} is not an SPDX licence expression: {reason}{}", suggest(.suggestions))]
pub struct LicenseError {
    /// What was given.
    pub expression: String,
    /// What is wrong with it.
    pub reason: String,
    /// Valid identifiers close to an unknown one, nearest first.
    pub suggestions: Vec<String>,
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", s.join(", "))
    }
}

/// Checks that `expr` is a valid SPDX licence expression (e.g. `CC-BY-4.0`, `MIT OR
/// Apache-2.0`, `LicenseRef-custom`).
pub fn check_license(expr: &str) -> Result<(), LicenseError> {
    match spdx::Expression::parse(expr) {
        Ok(_) => Ok(()),
        Err(e) => {
            let unknown = expr
                .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .filter(|w| !w.is_empty() && !["AND", "OR", "WITH"].contains(w))
                .find(|w| {
                    spdx::license_id(w).is_none()
                        && spdx::exception_id(w).is_none()
                        && !w.starts_with("LicenseRef-")
                        && !w.starts_with("DocumentRef-")
                });
            Err(LicenseError {
                expression: expr.to_string(),
                reason: e.reason.to_string(),
                suggestions: unknown.map(nearest).unwrap_or_default(),
            })
        }
    }
}

/// The three licence identifiers nearest to `word` (case-insensitive edit distance), with
/// the `spdx` crate's guess for common imprecise names first.
fn nearest(word: &str) -> Vec<String> {
    let lower = word.to_lowercase();
    let mut scored: Vec<(usize, &str)> = spdx::identifiers::LICENSES
        .iter()
        .filter(|l| l.flags & spdx::flags::IS_DEPRECATED == 0)
        .map(|l| (distance(&lower, &l.name.to_lowercase()), l.name))
        .collect();
    scored.sort();
    let mut out: Vec<String> = Vec::new();
    if let Some((id, _)) = spdx::imprecise_license_id(word) {
        out.push(id.name.to_string());
    }
    for (_, name) in scored {
        if out.len() >= 3 {
            break;
        }
        if !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
    }
    out
}

/// Levenshtein distance over chars.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn valid_expressions_pass_and_typos_get_suggestions() {
        for ok in [
            "CC0-1.0",
            "MIT OR Apache-2.0",
            "CC-BY-SA-4.0",
            "LicenseRef-quotes",
        ] {
            check_license(ok).unwrap();
        }
        let e = check_license("CC-BY-4").unwrap_err();
        assert!(e.suggestions.iter().any(|s| s == "CC-BY-4.0"), "{e}");
        assert!(e.to_string().contains("did you mean"), "{e}");
        let e = check_license("Apache2").unwrap_err();
        assert!(e.suggestions.iter().any(|s| s == "Apache-2.0"), "{e}");
        assert!(check_license("").is_err());
    }
}
