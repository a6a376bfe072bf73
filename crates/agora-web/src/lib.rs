//! The dashboard every gateway serves at `/`: its assets, embedded in the binary (no CDN,
//! nothing fetched from elsewhere), and the headers they are served with.
//!
//! The page is plain HTML, CSS and JavaScript (no build step) plus `agora.wasm`, the checks of
//! `agora-wasm` compiled for the browser (`scripts/build-wasm.sh` makes it; the test command
//! rebuilds it and checks the committed file is exactly what its sources give). UI strings live
//! in one catalogue per language, `assets/i18n/<lang>.json`: adding a language is adding a file.

/// One embedded file.
pub struct Asset {
    /// Its path under `/ui/`.
    pub path: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
    /// The same, gzip-compressed (what browsers are sent: they all accept gzip).
    pub gzip: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The Content-Security-Policy of every dashboard response: scripts only from this origin (no
/// inline script, no `eval`; WebAssembly compilation allowed), no plugins, no framing, and
/// fetches to this origin plus `connect` (the origins of logs the page may read, e.g. a
/// gateway's external log).
pub fn content_security_policy(connect: &[String]) -> String {
    let mut c = String::from("'self'");
    for o in connect {
        // Only plain origins: nothing that could close the directive.
        if o.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":/.-[]".contains(&b))
        {
            c.push(' ');
            c.push_str(o);
        }
    }
    format!(
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
         img-src 'self' data:; connect-src {c}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// The asset at `path` (relative to `/ui/`).
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The page itself (`/`).
pub fn index() -> Option<&'static Asset> {
    asset("index.html")
}

/// The languages there are catalogues for (`en`, `zh`, …).
pub fn languages() -> Vec<&'static str> {
    ASSETS
        .iter()
        .filter_map(|a| a.path.strip_prefix("i18n/")?.strip_suffix(".json"))
        .collect()
}

/// The content type of an asset, by its extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("wasm") => "application/wasm",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_part_is_embedded() {
        for p in [
            "index.html",
            "app.js",
            "style.css",
            "agora.wasm",
            "i18n/en.json",
        ] {
            let a = asset(p).unwrap_or_else(|| panic!("{p} missing"));
            assert!(!a.bytes.is_empty() && a.gzip.len() > 18, "{p} empty");
        }
        // The module is served compressed: the figure the README gives.
        assert!(asset("agora.wasm").is_some_and(|a| a.gzip.len() < 400 << 10));
        assert!(languages().contains(&"en") && languages().contains(&"zh"));
    }

    #[test]
    fn catalogues_have_the_same_keys() {
        let keys = |lang: &str| -> Vec<String> {
            let b = asset(&format!("i18n/{lang}.json")).map_or(&b"{}"[..], |a| a.bytes);
            let text = String::from_utf8_lossy(b);
            // "key": "value" lines; the catalogues are flat objects.
            let mut k: Vec<String> = text
                .lines()
                .filter_map(|l| {
                    l.trim()
                        .strip_prefix('"')?
                        .split_once('"')
                        .map(|(k, _)| k.to_string())
                })
                .collect();
            k.sort();
            k
        };
        let en = keys("en");
        assert!(en.len() > 20);
        for lang in languages() {
            assert_eq!(keys(lang), en, "catalogue {lang} has other keys than en");
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = String::from_utf8_lossy(index().map_or(&[][..], |a| a.bytes));
        assert!(!html.contains("<script>") && !html.contains(" on") && !html.contains("style="));
        assert!(html.contains("<script type=\"module\" src=\"/ui/app.js\"></script>"));
    }

    #[test]
    fn the_policy_admits_only_plain_origins() {
        let csp = content_security_policy(&["http://127.0.0.1:9".into(), "x; script-src *".into()]);
        assert!(csp.contains("connect-src 'self' http://127.0.0.1:9;"));
        assert!(!csp.contains("script-src *"));
    }
}
