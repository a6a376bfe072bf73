//! `agora node`: serve a model through the OpenAI API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agora_engine::{Engine, catalog};
use agora_node::NodeConfig;
use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Model to serve: a catalog name, a stored name or digest, `hf:ORG/REPO/FILE.gguf`, or a
    /// path to a GGUF file. Catalog and hf models are fetched on first use.
    #[arg(long, env = "AGORA_MODEL", default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Address of the HTTP API. Port 0 picks a free port (printed at start).
    #[arg(long, env = "AGORA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// CPU threads for inference (default: all cores).
    #[arg(long, env = "AGORA_THREADS")]
    pub threads: Option<u32>,
    /// Requests decoded together (continuous batching).
    #[arg(long, env = "AGORA_SLOTS", default_value_t = 4)]
    pub slots: u32,
    /// Context window of each request, in tokens (prompt + completion).
    #[arg(long, env = "AGORA_CTX", default_value_t = 2048)]
    pub ctx: u32,
    /// Requests that may wait for a free slot; beyond that the API answers 429.
    #[arg(long, env = "AGORA_QUEUE", default_value_t = 64)]
    pub queue: u32,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = agora_api::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
}

pub fn run(home: &Path, args: NodeArgs) -> Result<()> {
    crate::init_logging("warn,agora=info");
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    let cfg = NodeConfig {
        home: home.to_path_buf(),
        model: args.model,
        listen: args.listen,
        threads,
        slots: args.slots,
        ctx: args.ctx,
        queue: args.queue,
        body_limit: args.body_limit,
    };
    let engine = agora_node::load_engine(&cfg, true).context("could not start the engine")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("agora-rt")
        .build()?;
    rt.block_on(async move {
        let info = engine.info().clone();
        let server = agora_node::bind(&cfg, engine.clone() as Arc<dyn Engine>).await?;
        let url = format!("http://{}", server.addr);
        println!("agora node: serving {} (sha256:{}…) with {} slots × {} tokens on {} threads", info.name, &info.sha256[..12], info.slots, info.n_ctx, threads);
        println!("listening on {url}");
        println!("  OpenAI API:  {url}/v1   (model \"{}\")", info.name);
        println!("  try:         agora chat --url {url} \"Hello\"");
        println!(
            "               curl {url}/v1/chat/completions -H 'content-type: application/json' -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'",
            info.name
        );
        println!("  metrics:     {url}/metrics");
        println!("Ctrl-C stops the node.");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = tokio::spawn(server.serve(async move {
            let _ = stop_rx.await;
        }));
        shutdown_signal().await;
        eprintln!("stopping: finishing requests in flight (at most 10 s)…");
        let _ = stop_tx.send(());
        match tokio::time::timeout(Duration::from_secs(10), serve).await {
            Ok(Ok(r)) => r.context("the HTTP server failed")?,
            Ok(Err(e)) => return Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
            Err(_) => eprintln!("stopping now: some requests did not finish in time"),
        }
        Ok::<(), anyhow::Error>(())
    })?;
    // Dropping the runtime first cancels any stream still open, so the engine thread can end.
    drop(rt);
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
