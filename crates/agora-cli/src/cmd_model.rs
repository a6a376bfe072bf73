//! `agora model pull|add|list|rm`

use std::path::{Path, PathBuf};

use agora_engine::catalog;
use agora_engine::store::ModelStore;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Fetch a catalog model (e.g. smollm2-135m) or `hf:ORG/REPO/FILE.gguf`, verifying its digest.
    Pull { source: String },
    /// Copy a local GGUF file into the store.
    Add {
        file: PathBuf,
        /// Name to serve it under (default: the file name without .gguf).
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
                    println!(
                        "{:<24} sha256:{:<13} {:>12}  {}",
                        m.name,
                        &m.sha256[..12],
                        m.size,
                        m.source
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
