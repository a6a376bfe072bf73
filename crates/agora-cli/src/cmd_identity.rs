//! `agora init` and `agora id`: the node's Ed25519 identity in `$AGORA_HOME/key`.

use std::path::Path;

use agora_core::Identity;
use anyhow::Context as _;
use clap::Args;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Also start a new community: write a genesis policy named NAME to
    /// $AGORA_HOME/genesis.toml. Its hash is the network id; give the file to every node of the
    /// community (nodes of different networks never exchange traffic).
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
    /// With --network: a member who may vote (a peer id; repeat for several) [default: this
    /// node's key]. Members, periods and thresholds are part of the genesis, so of the network id.
    #[arg(long, value_name = "PEER_ID", requires = "log_policy")]
    pub member: Vec<agora_core::PeerId>,
    /// With --network: the community's log and witnesses (a tlog-policy file: one `log` line,
    /// `witness` lines and a `quorum`). Writes the [governance] rules; without it the network
    /// has none.
    #[arg(long, value_name = "FILE", requires = "network")]
    pub log_policy: Option<std::path::PathBuf>,
    /// With --log-policy: voting closes this many seconds after the proposal's first
    /// checkpoint
    #[arg(long, default_value_t = 7 * 86_400, value_name = "SECS")]
    pub voting_period: u64,
    /// With --log-policy: percent of the eligible weight that must vote
    #[arg(long, default_value_t = 50, value_name = "PERCENT")]
    pub quorum: u64,
    /// With --log-policy: `yes` must be more than this percent of yes + no
    #[arg(long, default_value_t = 50, value_name = "PERCENT")]
    pub threshold: u64,
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
        let governance = match &args.log_policy {
            None => String::new(),
            Some(p) => {
                let policy = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                let members: Vec<String> = if args.member.is_empty() {
                    vec![id.peer_id().to_string()]
                } else {
                    args.member.iter().map(ToString::to_string).collect()
                };
                let g = agora_community::rules::governance_toml(
                    &members,
                    &policy,
                    args.voting_period,
                    args.quorum,
                    args.threshold,
                );
                // Checked before anything is written.
                agora_community::rules::Rules::parse(&g.replacen("\n[governance]\n", "", 1))
                    .with_context(|| format!("the rules from {}", p.display()))?;
                g
            }
        };
        let (path, net) = agora_node::network::create_genesis(home, &name, &governance)?;
        println!("created {} (network {name:?}, id {net})", path.display());
        if !governance.is_empty() {
            println!(
                "  with governance rules: agora propose / vote / tally / credit (docs/community.md)"
            );
        }
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
