//! `agora model pull|add|list|rm`

use std::path::{Path, PathBuf};

use agora_models::catalog;
use agora_models::store::{self, ModelStore};
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Fetch a catalog model (e.g. smollm2-135m) or `hf:ORG/REPO/FILE.gguf`, verifying its digest.
    Pull { source: String },
    /// Copy a local GGUF file into the store.
    Add {
        file: PathBuf,
        /// Name to serve it under (default: the file name without .gguf). At most 128 bytes,
        /// no control characters, no '/', not a digest, and not a catalog model's name unless
        /// the file is that model.
        #[arg(long)]
        name: Option<String>,
    },
    /// List stored models, and the catalog.
    List,
    /// Remove a model by name or digest.
    Rm { model: String },
}

pub fn run(home: &Path, cmd: ModelCommand) -> Result<()> {
    let store = ModelStore::open(home, true)?;
    match cmd {
        ModelCommand::Pull { source } => {
            let m = store.pull(&source)?;
            println!("{}  {}  {} bytes", m.name, m.digest(), m.size);
        }
        ModelCommand::Add { file, name } => {
            let m = store.add(&file, name.as_deref())?;
            println!("{}  {}  {} bytes", m.name, m.digest(), m.size);
        }
        ModelCommand::List => {
            let models = store.list()?;
            if models.is_empty() {
                println!("no models stored in {} yet", store.root().display());
            } else {
                println!("{:<24} {:<20} {:>12}  SOURCE", "NAME", "DIGEST", "SIZE");
                for m in &models {
                    // The index is a file anyone with access can edit: print nothing from it
                    // raw (a name with escape sequences would rewrite the terminal).
                    let shadows = catalog::find(&m.name).is_some_and(|e| e.sha256 != m.sha256);
                    println!(
                        "{:<24} sha256:{:<13} {:>12}  {}{}",
                        printable(&m.name),
                        printable(m.sha256.get(..12).unwrap_or(&m.sha256)),
                        m.size,
                        printable(&m.source),
                        if shadows {
                            "  (NOT the catalog model of this name: agora model rm it)"
                        } else {
                            ""
                        }
                    );
                }
            }
            println!("\ncatalog (agora model pull NAME):");
            for e in catalog::CATALOG {
                let have = models.iter().any(|m| m.sha256 == e.sha256);
                println!(
                    "  {:<22} {}  [{}]{}",
                    e.name,
                    e.description,
                    e.license,
                    if have { "  (stored)" } else { "" }
                );
            }
        }
        ModelCommand::Rm { model } => {
            let m = store.remove(&model)?;
            println!("removed {} ({})", m.name, m.digest());
        }
    }
    Ok(())
}

/// `s` as is, or escaped (`"\u{1b}…"`) when it holds a control or invisible character.
fn printable(s: &str) -> String {
    if s.chars().any(store::is_unsafe_char) {
        format!("{s:?}")
    } else {
        s.to_string()
    }
}
