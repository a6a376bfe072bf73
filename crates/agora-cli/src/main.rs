//! `agora`: one binary for every role. Each command family lives in its own `cmd_*` module;
//! benchmarks, load generators and local networks are `agora-bench`'s (parse here, run there).

mod cmd_chat;
mod cmd_community;
mod cmd_dataset;
mod cmd_debug;
mod cmd_identity;
mod cmd_log;
mod cmd_model;
mod cmd_node;
mod cmd_provenance;
mod cmd_trace;
mod cmd_verify;
mod community;
mod peers;
mod provenance;

use std::path::PathBuf;

use agora_bench as bench;
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
    Bench(bench::server::BenchArgs),
    /// Benchmark the network layer: gateway overhead on time to first token, routing throughput.
    BenchNet(bench::net::BenchNetArgs),
    /// Conversations against llama-server: time to first token of first and follow-up turns
    /// (the prompt-prefix cache at work), one slot each, alternating turn by turn.
    BenchChat(bench::chat::BenchChatArgs),
    /// Soak a local network (gateway with a log, workers, a validator) under honest load and
    /// hostile peers for a while: errors, latency, memory, and no honest worker condemned.
    BenchSoak(bench::soak::BenchSoakArgs),
    /// The detection matrix (honest and cheating workers, checked by a verifier) and the costs
    /// of verifiability. Cheat modes need a build with the `cheat` feature.
    BenchVerify(bench::verify::BenchVerifyArgs),
    /// Datasets: ingest files into signed versions, prove a record present or absent, verify.
    #[command(subcommand)]
    Dataset(cmd_dataset::DatasetCommand),
    /// Dataset costs: ingest of a generated ≥ 1 GB corpus against sha256sum, peak memory,
    /// proof verifications per second, proof size at a million records.
    BenchDataset(bench::dataset::BenchDatasetArgs),
    /// Text provenance costs: the text index built from a log of a million signed receipts,
    /// exact lookups (found and not), the index's memory.
    BenchProvenance(bench::provenance::BenchProvenanceArgs),
    /// Tracing costs: a generated 1 GB dataset's trace index (build throughput, memory, bytes
    /// per token) and traces of 500-token texts through it.
    BenchTrace(bench::trace::BenchTraceArgs),
    /// Decoding on a busy machine: llama-server and Agora (threads that follow the free CPU,
    /// and fixed) quiet and with half the cores kept busy by other processes.
    BenchBusy(bench::busy::BenchBusyArgs),
    /// Benchmark a community's re-tally (1M votes) and credit ledger (1M receipts) from logs.
    BenchCommunity(bench::community::BenchCommunityArgs),
    /// Models from peers: `agora model pull` from 1, 2 and 3 peers on loopback against a plain
    /// TCP copy of the same file, and the pulling process's peak memory.
    BenchTransfer(bench::transfer::BenchTransferArgs),
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
    /// Was this text produced on this network? Looks it up by the digest of its normalised
    /// form (only the digest is sent) and checks the receipts, verdicts and log proofs.
    Provenance(cmd_provenance::ProvenanceArgs),
    /// Where did the model get this text? The longest spans that occur verbatim in the
    /// datasets of a curriculum, with the records' inclusion proofs, licences and contributors
    /// (`agora dataset index` first); every claim is checked here.
    Trace(cmd_trace::TraceArgs),
    /// Show the peers a node knows, with their models and status.
    Nodes(cmd_chat::NodesArgs),
    /// Start a local network (N workers and a gateway on loopback) until Ctrl-C.
    Devnet(bench::devnet::DevnetArgs),
    /// Start a local network, send it a few questions, and show which worker answered each.
    Demo(bench::devnet::DevnetArgs),
    /// Propose a data mix (or new rules) to the community: a signed `proposal` in its log.
    Propose(cmd_community::ProposeArgs),
    /// Vote on a proposal: yes, no or abstain (your last vote before the deadline counts).
    Vote(cmd_community::VoteArgs),
    /// Count a proposal's votes from the log, each checked; --sign logs the decision.
    Tally(cmd_community::TallyArgs),
    /// A period's credit to workers and data contributors, from the log alone.
    Credit(cmd_community::CreditArgs),
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
        Command::Model(cmd) => match cmd_model::run(&home, cmd) {
            Ok(0) => Ok(()),
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
        Command::Bench(args) => bench::server::run(&home, args),
        Command::BenchNet(args) => bench::net::run(&home, args),
        Command::BenchChat(args) => bench::chat::run(&home, args),
        Command::BenchSoak(args) => bench::soak::run(&home, args),
        Command::BenchVerify(args) => bench::verify::run(&home, args),
        Command::BenchDataset(args) => bench::dataset::run(args),
        Command::BenchProvenance(args) => bench::provenance::run(args),
        Command::BenchTrace(args) => bench::trace::run(&home, args),
        Command::BenchBusy(args) => bench::busy::run(&home, args),
        Command::BenchCommunity(args) => bench::community::run(args),
        Command::BenchTransfer(args) => bench::transfer::run(&home, args),
        Command::Dataset(cmd) => cmd_dataset::run(&home, cmd),
        Command::Init(args) => cmd_identity::init(&home, args),
        Command::Id(args) => cmd_identity::id(&home, args),
        Command::Log(cmd) => cmd_log::run_log(&home, cmd),
        Command::Witness(cmd) => cmd_log::run_witness(&home, cmd),
        Command::Verify(args) => match cmd_verify::run(&home, args) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("error: {}", explain(&e));
                std::process::exit(2);
            }
        },
        Command::Provenance(args) => match cmd_provenance::run(&home, args) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("error: {}", explain(&e));
                std::process::exit(2);
            }
        },
        Command::Trace(args) => match cmd_trace::run(&home, args) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("error: {}", explain(&e));
                std::process::exit(2);
            }
        },
        Command::Propose(args) => cmd_community::propose(&home, args),
        Command::Vote(args) => cmd_community::vote(&home, args),
        Command::Tally(args) => match cmd_community::tally(&home, args) {
            Ok(0) => Ok(()),
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
        Command::Credit(args) => cmd_community::credit(&home, args),
        Command::Nodes(args) => cmd_chat::nodes(args),
        Command::Devnet(args) => bench::devnet::devnet(&home, args),
        Command::Demo(args) => bench::devnet::demo(&home, args),
        Command::Debug(cmd) => cmd_debug::run(&home, cmd),
    };
    if let Err(e) = result {
        eprintln!("error: {}", explain(&e));
        std::process::exit(1);
    }
}

/// An error and its causes, outermost first, joined by ": ". A cause whose text the message
/// before it already contains is not repeated (library errors print their source in their
/// own message and keep it as `source()` too).
fn explain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !last.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        last = text;
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A library error that prints its source and keeps it.
    #[derive(Debug)]
    struct Read {
        source: std::io::Error,
    }

    impl std::fmt::Display for Read {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read /x: {}", self.source)
        }
    }

    impl std::error::Error for Read {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn causes_are_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Read { source: io }).context("could not start");
        assert_eq!(explain(&e), "could not start: cannot read /x: no such file");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(explain(&plain), "outer: inner");
    }
}
