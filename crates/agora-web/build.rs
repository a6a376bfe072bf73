//! Embeds every file under `assets/` (so adding a language is adding `assets/i18n/xx.json`),
//! each with a gzip-compressed copy that the node serves to browsers that accept it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        // Hidden files and editors' swap files are not assets.
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && !n.ends_with('~') && !n.ends_with(".swp"))
        })
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data)?;
    e.finish()
}

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("assets");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut code = String::from(
        "/// Every embedded asset, by its path under `/ui/`.\npub static ASSETS: &[Asset] = &[\n",
    );
    for (i, f) in files.iter().enumerate() {
        println!("cargo:rerun-if-changed={}", f.display());
        let rel = f
            .strip_prefix(&root)
            .unwrap_or(f)
            .to_string_lossy()
            .replace('\\', "/");
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
        let gz = out_dir.join(format!("asset-{i}.gz"));
        let compressed = gzip(&data).unwrap_or_else(|e| panic!("cannot compress {rel}: {e}"));
        std::fs::write(&gz, compressed)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", gz.display()));
        let _ = writeln!(
            code,
            "    Asset {{ path: {rel:?}, bytes: include_bytes!({:?}), gzip: include_bytes!({:?}) }},",
            f.display().to_string(),
            gz.display().to_string()
        );
    }
    code.push_str("];\n");
    let out = out_dir.join("assets.rs");
    if let Err(e) = std::fs::write(&out, code) {
        panic!("cannot write {}: {e}", out.display());
    }
}
