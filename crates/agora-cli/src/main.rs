//! `agora`: one binary for every role. Each command family lives in its own `cmd_*` module.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agora", version, about = "Agora: an open network for AI that anyone can serve, use and verify")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {}
}
