//! `agora`: one binary for every role. Each command family lives in its own `cmd_*` module.

use clap::{Parser, Subcommand};

mod cmd_identity;
mod cmd_log;
mod cmd_log_bench;

#[derive(Parser)]
#[command(
    name = "agora",
    version,
    about = "Agora: an open network for AI that anyone can serve, use and verify"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create this node's Ed25519 key in $AGORA_HOME/key (refuses to overwrite)
    Init(cmd_identity::InitArgs),
    /// Print the public key, PeerId and C2SP verifier keys
    Id(cmd_identity::IdArgs),
    /// Transparency log: serve, add, checkpoint, prove, verify, fsck, monitor, hammer, bench
    #[command(subcommand)]
    Log(cmd_log::LogCommand),
    /// Witness: serve (tlog-witness), evidence, verify-evidence
    #[command(subcommand)]
    Witness(cmd_log::WitnessCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init(a) => cmd_identity::init(a),
        Command::Id(a) => cmd_identity::id(a),
        Command::Log(c) => cmd_log::run_log(c),
        Command::Witness(c) => cmd_log::run_witness(c),
    }
}
