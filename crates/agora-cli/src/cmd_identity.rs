//! `agora init` and `agora id`: the node's Ed25519 identity in `$AGORA_HOME/key`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agora_core::Identity;
use anyhow::{Context, bail};
use clap::Args;

/// Where Agora keeps its data: `--home`, else `$AGORA_HOME`, else `~/.local/share/agora`.
#[derive(Args, Clone, Debug)]
pub struct HomeArg {
    /// Data directory [default: ~/.local/share/agora]
    #[arg(long, env = "AGORA_HOME", global = true)]
    pub home: Option<PathBuf>,
}

impl HomeArg {
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(h) = &self.home {
            return Ok(h.clone());
        }
        let home =
            std::env::var_os("HOME").context("neither --home, AGORA_HOME nor HOME is set")?;
        Ok(PathBuf::from(home).join(".local/share/agora"))
    }
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub home: HomeArg,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    #[command(flatten)]
    pub home: HomeArg,
    /// Key name for the verifier keys [default: agora.log/<PeerId> and agora.witness/<PeerId>]
    #[arg(long)]
    pub name: Option<String>,
}

pub fn key_path(home: &Path) -> PathBuf {
    home.join("key")
}

/// Create `$AGORA_HOME/key` (mode 0600); refuse to overwrite an existing key.
pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let home = args.home.path()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&home)
        .with_context(|| format!("cannot create {}", home.display()))?;
    let path = key_path(&home);
    let id = Identity::generate(&mut rand::rngs::OsRng);
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!(
                "refusing to overwrite the existing key at {}",
                path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    f.write_all(id.to_key_file().as_bytes())?;
    f.sync_all()?;
    println!("created {}", path.display());
    println!("peer-id {}", id.peer_id());
    Ok(())
}

/// Load the identity, refusing a key file others can read.
pub fn load_identity(home: &Path) -> anyhow::Result<Identity> {
    let path = key_path(home);
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("no key at {} (run `agora init`)", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is accessible by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Identity::from_key_file(&text).with_context(|| format!("invalid key file {}", path.display()))
}

/// Print the public key, the PeerId and the C2SP verifier keys.
pub fn id(args: IdArgs) -> anyhow::Result<()> {
    let home = args.home.path()?;
    let id = load_identity(&home)?;
    use base64::Engine as _;
    let log_name = args.name.clone().unwrap_or_else(|| id.default_log_origin());
    let witness_name = args.name.unwrap_or_else(|| id.default_witness_name());
    println!(
        "public-key   {}",
        base64::engine::general_purpose::STANDARD.encode(id.public_key().as_bytes())
    );
    println!("peer-id      {}", id.peer_id());
    println!("vkey         {}", id.vkey(&log_name)?);
    println!("witness-vkey {}", id.witness_vkey(&witness_name)?);
    Ok(())
}
