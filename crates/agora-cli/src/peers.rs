//! Getting a model from peers (`agora model pull sha256:…`, `--from-peers`, and `agora node`
//! with a model it lacks and cannot fetch from its index): a short-lived network client joins
//! the community, finds the nodes that offer the file and fetches it with `agora_share`.

use std::path::{Path, PathBuf};

use agora_models::{ModelStore, catalog};
use agora_net::Multiaddr;
use agora_node::P2pOptions;
use agora_share::{FetchConfig, Want};
use anyhow::{Context, Result, bail};
use clap::Args;

/// Where to look for peers.
#[derive(Args, Debug, Clone, Default)]
pub struct PeerArgs {
    /// A node to join through, as `/ip4/…/tcp/…/p2p/<peer id>` (repeatable).
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "AGORA_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<Multiaddr>,
    /// The community's genesis policy file (default: $AGORA_HOME/genesis.toml if present,
    /// else the public default network).
    #[arg(long, value_name = "FILE", env = "AGORA_NETWORK_FILE")]
    pub network_file: Option<PathBuf>,
    /// Do not look for peers on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
}

/// What to fetch for `spec`: a `sha256:HEX` digest (named after the catalog entry of that
/// digest, `name`, or the digest) or a catalog name. The chunk root comes from the catalog, or
/// from `root`.
pub fn want(spec: &str, name: Option<&str>, root: Option<&str>) -> Result<Want> {
    let (sha256, entry) = if let Some(hex) = spec.strip_prefix("sha256:") {
        if !agora_share::proto::is_digest(hex) {
            bail!("{spec:?} is not sha256: followed by 64 lowercase hex digits");
        }
        (
            hex.to_string(),
            catalog::CATALOG.iter().find(|e| e.sha256 == hex),
        )
    } else if let Some(e) = catalog::find(spec) {
        (e.sha256.to_string(), Some(e))
    } else {
        bail!(
            "peers are asked for a model by its digest (sha256:…) or a catalog name; {spec:?} is neither"
        );
    };
    if let Some(r) = root
        && !agora_share::proto::is_digest(r)
    {
        bail!("--root must be 64 lowercase hex digits");
    }
    Ok(Want {
        name: name
            .map(str::to_string)
            .or_else(|| entry.map(|e| e.name.to_string()))
            .unwrap_or_else(|| format!("sha256-{}", &sha256[..12])),
        // The catalog's root is compiled in; a root given by hand (or from a manifest) is only
        // a claim.
        root_trusted: root.is_none() && entry.is_some(),
        root: root
            .map(str::to_string)
            .or_else(|| entry.map(|e| e.chunks.to_string())),
        license: entry.map(|e| e.license.to_string()),
        sha256,
    })
}

/// The chunk root that the manifest of the weights `sha256` (logged by `agora model publish`)
/// gives, read from the log at `log` under a checkpoint `trust` verifies, the manifest's
/// inclusion checked.
pub fn root_from_log(
    home: &Path,
    sha256: &str,
    log: &str,
    trust: &crate::cmd_log::TrustArgs,
) -> Result<String> {
    let weights: agora_core::Sha256 = sha256.parse().map_err(|e: &str| anyhow::anyhow!("{e}"))?;
    let mut tlog = crate::provenance::TrustedLog::open(log, trust)?;
    if !tlog.verified {
        bail!(
            "a chunk root read under an unverified checkpoint proves nothing: give the log's key (--log-key VKEY or --policy FILE)"
        );
    }
    let checked = crate::provenance::check(home, weights, &mut tlog, log, None)?;
    let m = checked
        .tree
        .model
        .manifest
        .as_ref()
        .with_context(|| format!("the log at {log} holds no manifest for sha256:{sha256}"))?;
    if let Some(Err(e)) = checked.inclusion.get(&m.index) {
        bail!(
            "the manifest (entry {}) is not proven in the log: {e}",
            m.index
        );
    }
    let root = m.predicate.chunks.with_context(|| {
        format!(
            "the manifest of sha256:{sha256} (entry {}) carries no chunk root (it was published before manifests did)",
            m.index
        )
    })?;
    Ok(root.to_string())
}

/// Fetches `want` from the peers `peers` leads to, into the store under `home`. Blocking: call
/// it outside any async runtime.
pub fn fetch(
    home: &Path,
    want: &Want,
    peers: &PeerArgs,
) -> Result<agora_models::store::StoredModel> {
    crate::init_logging("warn");
    let store = ModelStore::open(home, true)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("agora-fetch")
        .build()?;
    let report = rt.block_on(async {
        // A passing client: a key of its own, forgotten afterwards.
        let identity = agora_core::Identity::generate(&mut rand::rngs::OsRng);
        let opts = P2pOptions {
            listen: vec![],
            bootstrap: peers.bootstrap.clone(),
            relays: vec![],
            mdns: !peers.no_mdns,
            network_file: peers.network_file.clone(),
        };
        let net = agora_node::start_network(home, &identity, &opts)
            .await
            .context("could not join the network")?;
        let r = agora_share::fetch(&net.handle, &store, want, &FetchConfig::default()).await;
        net.task.abort();
        r.map_err(anyhow::Error::from)
    })?;
    drop(rt);
    let secs = report.elapsed.as_secs_f64();
    if report.bytes > 0 {
        eprintln!(
            "fetched {} MB from {} peer(s) in {secs:.1} s ({:.0} MB/s){}",
            report.bytes / 1_000_000,
            report.chunks_by_peer.values().filter(|&&c| c > 0).count(),
            report.bytes as f64 / 1e6 / secs.max(1e-9),
            if report.resumed_chunks > 0 {
                format!(", {} chunks resumed", report.resumed_chunks)
            } else {
                String::new()
            }
        );
    }
    for (peer, why) in &report.dropped {
        eprintln!("  dropped {peer}: {why}");
    }
    Ok(report.model)
}
