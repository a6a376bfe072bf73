//! `agora`: one binary for every role. Each command family lives in its own `cmd_*` module.

mod cmd_bench;
mod cmd_bench_net;
mod cmd_bench_soak;
mod cmd_bench_verify;
mod cmd_chat;
mod cmd_debug;
mod cmd_devnet;
mod cmd_identity;
mod cmd_log;
mod cmd_log_bench;
mod cmd_model;
mod cmd_node;
mod cmd_verify;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agora",
    version,
    about = "Agora: an open network for AI that anyone can serve, use and verify",
    long_about = "Agora: an open network for AI that anyone can serve, use and verify.\n\n\
        Start a node on the default model with `agora node`, then talk to it with `agora chat \"Hello\"` \
        or any OpenAI client pointed at http://127.0.0.1:8080/v1."
)]
struct Cli {
    /// Where Agora keeps its models, keys and logs.
    #[arg(long, global = true, env = "AGORA_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model through the OpenAI API (pulls the default model on first run).
    Node(cmd_node::NodeArgs),
    /// Ask a running node something and stream the answer to the terminal.
    Chat(cmd_chat::ChatArgs),
    /// Manage the local model store.
    #[command(subcommand)]
    Model(cmd_model::ModelCommand),
    /// Benchmark the node against llama.cpp's own llama-server on the same model.
    Bench(cmd_bench::BenchArgs),
    /// Benchmark the network layer: gateway overhead on time to first token, routing throughput.
    BenchNet(cmd_bench_net::BenchNetArgs),
    /// Soak a local network (gateway with a log, workers, a validator) under honest load and
    /// hostile peers for a while: errors, latency, memory, and no honest worker condemned.
    BenchSoak(cmd_bench_soak::BenchSoakArgs),
    /// The detection matrix (honest and cheating workers, checked by a verifier) and the costs
    /// of verifiability. Cheat modes need a build with the `cheat` feature.
    BenchVerify(cmd_bench_verify::BenchVerifyArgs),
    /// Create this node's Ed25519 key in $AGORA_HOME/key (refuses to overwrite).
    Init(cmd_identity::InitArgs),
    /// Print the public key, PeerId and C2SP verifier keys.
    Id(cmd_identity::IdArgs),
    /// Transparency log: serve, add, checkpoint, prove, verify, fsck, monitor, hammer, bench.
    #[command(subcommand)]
    Log(cmd_log::LogCommand),
    /// Witness: serve (tlog-witness), evidence, verify-evidence.
    #[command(subcommand)]
    Witness(cmd_log::WitnessCommand),
    /// Check a saved answer (transcript) offline: signature, digests, proof and sampling.
    Verify(cmd_verify::VerifyArgs),
    /// Show the peers a node knows, with their models and status.
    Nodes(cmd_chat::NodesArgs),
    /// Start a local network (N workers and a gateway on loopback) until Ctrl-C.
    Devnet(cmd_devnet::DevnetArgs),
    /// Start a local network, send it a few questions, and show which worker answered each.
    Demo(cmd_devnet::DevnetArgs),
    /// Testing tools (misbehaving peers).
    #[command(subcommand, hide = true)]
    Debug(cmd_debug::DebugCommand),
}

fn main() {
    let cli = Cli::parse();
    let home = cli.home.unwrap_or_else(agora_node::default_home);
    let result = match cli.command {
        Command::Node(args) => cmd_node::run(&home, args),
        Command::Chat(args) => cmd_chat::run(args),
        Command::Model(cmd) => cmd_model::run(&home, cmd),
        Command::Bench(args) => cmd_bench::run(&home, args),
        Command::BenchNet(args) => cmd_bench_net::run(&home, args),
        Command::BenchSoak(args) => cmd_bench_soak::run(&home, args),
        Command::BenchVerify(args) => cmd_bench_verify::run(&home, args),
        Command::Init(args) => cmd_identity::init(&home, args),
        Command::Id(args) => cmd_identity::id(&home, args),
        Command::Log(cmd) => cmd_log::run_log(&home, cmd),
        Command::Witness(cmd) => cmd_log::run_witness(&home, cmd),
        Command::Verify(args) => match cmd_verify::run(&home, args) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(2);
            }
        },
        Command::Nodes(args) => cmd_chat::nodes(args),
        Command::Devnet(args) => cmd_devnet::devnet(&home, args),
        Command::Demo(args) => cmd_devnet::demo(&home, args),
        Command::Debug(cmd) => cmd_debug::run(&home, cmd),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the level.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parse `1s`, `250ms`, `2m` or plain seconds (`0.5`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 1s, 250ms)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}
