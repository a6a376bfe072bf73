//! `agora init` and `agora id`: the node's Ed25519 identity in `$AGORA_HOME/key`.

use std::path::Path;

use agora_core::Identity;
use clap::Args;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Also start a new community: write a genesis policy named NAME to
    /// $AGORA_HOME/genesis.toml. Its hash is the network id; give the file to every node of the
    /// community (nodes of different networks never exchange traffic).
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// Key name for the verifier keys [default: agora.log/<PeerId> and agora.witness/<PeerId>]
    #[arg(long)]
    pub name: Option<String>,
}

/// Create `$AGORA_HOME/key` (mode 0600); refuse to overwrite an existing key.
pub fn init(home: &Path, args: InitArgs) -> anyhow::Result<()> {
    let path = agora_node::network::key_path(home);
    let id = if path.exists() && args.network.is_some() {
        // Starting a community with an existing key is fine; only the key is never replaced.
        load_identity(home)?
    } else {
        let id = agora_node::network::create_identity(home)?;
        println!("created {}", path.display());
        id
    };
    println!("peer-id {}", id.peer_id());
    if let Some(name) = args.network {
        let (path, net) = agora_node::network::create_genesis(home, &name)?;
        println!("created {} (network {name:?}, id {net})", path.display());
    }
    Ok(())
}

/// Load the identity, refusing a key file others can read.
pub fn load_identity(home: &Path) -> anyhow::Result<Identity> {
    Ok(agora_node::network::load_identity(home)?)
}

/// Print the public key, the PeerId and the C2SP verifier keys.
pub fn id(home: &Path, args: IdArgs) -> anyhow::Result<()> {
    let id = load_identity(home)?;
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
