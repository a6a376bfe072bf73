//! `agora model pull|add|list|rm|publish|provenance`

use std::io::Read;
use std::path::{Path, PathBuf};

use agora_api::tlog::LogClient;
use agora_core::Envelope;
use agora_core::statement::{
    BaseModel, DeclaredData, DigestSet, LogRef, MixEntry, ModelPredicate, Recipe, Resource, Sha256,
    Statement, Subject,
};
use agora_data::Mix;
use agora_datastore::DatasetStore;
use agora_datastore::store::parse_ref;
use agora_models::catalog;
use agora_models::store::{self, ModelStore, StoredModel};
use agora_node::datasets::LOG_FILE;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cmd_identity::load_identity;
use crate::cmd_log::{DEFAULT_LOG_URL, TrustArgs};
use crate::provenance::{TrustedLog, manifests_dir};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Fetch a catalog model (e.g. smollm2-135m) or `hf:ORG/REPO/FILE.gguf`, verifying its
    /// digest; or `sha256:HEX` from peers. A catalog model whose index cannot be reached is
    /// asked of peers when --bootstrap names one (or with --from-peers).
    Pull {
        source: String,
        /// Ask peers for it (by its digest) instead of the catalog's index.
        #[arg(long)]
        from_peers: bool,
        /// Name to store a model fetched by digest under (default: its catalog name, else
        /// `sha256-<first 12 hex digits>`).
        #[arg(long)]
        name: Option<String>,
        /// The chunk root of a model fetched by digest, when known: each chunk is then checked
        /// as it arrives. Catalog models carry theirs; --log reads it from the model's manifest.
        #[arg(long, value_name = "HEX", conflicts_with = "log")]
        root: Option<String>,
        /// Read the chunk root of a model fetched by digest from its manifest in this log (a
        /// node's http://HOST:PORT/log), under a checkpoint --log-key or --policy verifies.
        #[arg(long, value_name = "URL")]
        log: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        peers: crate::peers::PeerArgs,
    },
    /// Copy a local GGUF file into the store.
    Add {
        file: PathBuf,
        /// Name to serve it under (default: the file name without .gguf). At most 128 bytes,
        /// no control characters, no '/', not a digest, and not a catalog model's name unless
        /// the file is that model.
        #[arg(long)]
        name: Option<String>,
    },
    /// List stored models, and the catalog.
    List,
    /// Remove a model by name or digest.
    Rm { model: String },
    /// Sign and log the model's manifest: its weights' sha256 bound to its data mix (the logged
    /// datasets it was trained on with their weights, data declared but not provable, what is
    /// not known), its base model and its training recipe. Every dataset named must be in the
    /// log, its statement valid.
    Publish {
        /// The model: a stored name or digest.
        model: String,
        /// The data mix (MIX.toml; see docs/data.md). Default: the catalog's for catalog models.
        #[arg(long, value_name = "MIX.toml")]
        mix: Option<PathBuf>,
        /// The model it was trained from (a stored name or sha256:HEX); overrides the mix's.
        #[arg(long, value_name = "MODEL")]
        base: Option<String>,
        /// The training recipe (configuration or script), bound by digest; overrides the mix's.
        #[arg(long, value_name = "FILE")]
        recipe: Option<PathBuf>,
        /// The community decision that adopted this mix (its index in the log): re-counted
        /// here under the community's genesis rules, and its mix must be exactly this one.
        #[arg(long, value_name = "INDEX")]
        decision: Option<u64>,
        /// The log to append the manifest to (where the datasets are logged).
        #[arg(long = "log", value_name = "URL", env = "AGORA_LOG_URL", default_value = DEFAULT_LOG_URL)]
        log: String,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Where a model's knowledge came from: its manifest, base model, datasets, what they were
    /// derived from, their licences and contributors, with every statement's log inclusion
    /// checked. What cannot be proven is flagged. Exit status 0 when everything is proven.
    Provenance {
        /// A stored model's name, or sha256:HEX.
        model: String,
        /// The log holding the statements (a node's http://HOST:PORT/log).
        #[arg(long = "log", value_name = "URL", env = "AGORA_LOG_URL", default_value = DEFAULT_LOG_URL)]
        log: String,
        /// A node to ask where the statements are (default: the node whose /log the log is).
        #[arg(long, value_name = "URL")]
        node: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
        /// Print JSON for programs.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(home: &Path, cmd: ModelCommand) -> Result<i32> {
    let store = ModelStore::open(home, true)?;
    match cmd {
        ModelCommand::Publish {
            model,
            mix,
            base,
            recipe,
            decision,
            log,
            trust,
        } => {
            publish(
                home,
                &store,
                &model,
                Inputs {
                    mix: mix.as_deref(),
                    base: base.as_deref(),
                    recipe: recipe.as_deref(),
                    decision,
                },
                &log,
                &trust,
            )?;
        }
        ModelCommand::Provenance {
            model,
            log,
            node,
            trust,
            json,
        } => {
            let weights = weights_of(&store, &model)?;
            let mut tlog = TrustedLog::open(&log, &trust)?;
            let checked =
                crate::provenance::check(home, weights, &mut tlog, &log, node.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&checked.to_json())?);
            } else {
                print!("{}", checked.render());
                println!("{}", checked.verdict());
            }
            return Ok(if checked.proven() { 0 } else { 1 });
        }
        ModelCommand::Pull {
            source,
            from_peers,
            name,
            root,
            log,
            trust,
            peers,
        } => {
            let by_digest = source.starts_with("sha256:");
            let m = if from_peers || by_digest {
                let root = match (&log, source.strip_prefix("sha256:")) {
                    (Some(log), Some(hex)) => {
                        Some(crate::peers::root_from_log(home, hex, log, &trust)?)
                    }
                    _ => root,
                };
                let want = crate::peers::want(&source, name.as_deref(), root.as_deref())?;
                crate::peers::fetch(home, &want, &peers)?
            } else {
                match store.pull(&source) {
                    Ok(m) => m,
                    Err(e) if !peers.bootstrap.is_empty() && catalog::find(&source).is_some() => {
                        eprintln!("{e}\nasking peers for it instead");
                        let want = crate::peers::want(&source, name.as_deref(), None)?;
                        crate::peers::fetch(home, &want, &peers)?
                    }
                    Err(e) => return Err(e.into()),
                }
            };
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
                    // The index is a file anyone with access can edit: print nothing from it
                    // raw (a name with escape sequences would rewrite the terminal).
                    let shadows = catalog::find(&m.name).is_some_and(|e| e.sha256 != m.sha256);
                    println!(
                        "{:<24} sha256:{:<13} {:>12}  {}{}",
                        printable(&m.name),
                        printable(m.sha256.get(..12).unwrap_or(&m.sha256)),
                        m.size,
                        printable(&m.source),
                        if shadows {
                            "  (NOT the catalog model of this name: agora model rm it)"
                        } else {
                            ""
                        }
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
    Ok(0)
}

/// The weights digest of a stored model (name or digest) or of `sha256:HEX`.
fn weights_of(store: &ModelStore, model: &str) -> Result<Sha256> {
    if let Some(hex) = model.strip_prefix("sha256:")
        && let Ok(d) = hex.parse::<Sha256>()
    {
        return Ok(d);
    }
    let m = stored(store, model)?;
    m.sha256
        .parse::<Sha256>()
        .map_err(|e| anyhow::anyhow!("the store's digest of {}: {e}", m.name))
}

fn stored(store: &ModelStore, model: &str) -> Result<StoredModel> {
    store.find(model)?.with_context(|| {
        format!("no stored model {model:?}: `agora model pull` or `agora model add` it first")
    })
}

/// Largest mix or recipe file read.
const MAX_MIX_FILE: u64 = agora_data::mix::MAX_MIX_BYTES as u64;

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if out.len() as u64 > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(out)
}

/// The chunk root of a stored model's weights (what peers' chunks are checked against).
fn chunk_root(path: &Path) -> Result<Sha256> {
    let list = agora_models::chunks::ChunkList::of_file(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    list.root()
        .parse()
        .map_err(|e: &str| anyhow::anyhow!("chunk root: {e}"))
}

/// SHA-256 of a file, streamed.
fn file_sha256(path: &Path) -> Result<Sha256> {
    use sha2::Digest as _;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sha256(h.finalize().into()))
}

/// Where a dataset's statement is: the mix's `log`/`index`, else where `agora dataset add
/// --log` recorded it on this machine.
fn dataset_location(home: &Path, d: &agora_data::mix::Dataset) -> Result<(String, u64)> {
    if let (Some(url), Some(index)) = (&d.log, d.index) {
        return Ok((url.clone(), index));
    }
    let store = DatasetStore::open(&home.join("datasets"));
    let (n, v) = parse_ref(&d.name)?;
    let m = store.manifest(n, v).with_context(|| {
        format!(
            "dataset {} is not in this machine's store: give its `log` and `index` in the mix",
            d.name
        )
    })?;
    let rec = store.attached(&m, LOG_FILE)?.with_context(|| {
        format!(
            "dataset {} was never logged: `agora dataset add … --log URL`, or give its `log` and `index` in the mix",
            d.name
        )
    })?;
    let v: Value = serde_json::from_slice(&rec).context("the dataset's log.json")?;
    match (v["url"].as_str(), v["index"].as_u64()) {
        (Some(u), Some(i)) => Ok((u.to_string(), i)),
        _ => bail!("the log record of {} is damaged", d.name),
    }
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// What `model publish` is told about the training.
struct Inputs<'a> {
    mix: Option<&'a Path>,
    base: Option<&'a str>,
    recipe: Option<&'a Path>,
    decision: Option<u64>,
}

fn publish(
    home: &Path,
    store: &ModelStore,
    model: &str,
    inputs: Inputs<'_>,
    log_url: &str,
    trust: &TrustArgs,
) -> Result<()> {
    let Inputs {
        mix: mix_path,
        base,
        recipe,
        decision,
    } = inputs;
    let m = stored(store, model)?;
    let (text, mix_dir) = match mix_path {
        Some(p) => (
            String::from_utf8(read_bounded(p, MAX_MIX_FILE)?)
                .with_context(|| format!("{} is not UTF-8", p.display()))?,
            p.parent().map(Path::to_path_buf),
        ),
        None => match catalog::find(&m.name)
            .filter(|e| e.sha256 == m.sha256)
            .and_then(|e| e.mix)
        {
            Some(t) => (t.to_string(), None),
            None => bail!(
                "{} has no known data mix: say what it was trained on with --mix MIX.toml",
                m.name
            ),
        },
    };
    let mix = Mix::parse(&text).with_context(|| match mix_path {
        Some(p) => p.display().to_string(),
        None => format!("the catalog's mix of {}", m.name),
    })?;
    let path = store.resolve_or_fetch(&m.name)?.path;
    let meta = agora_models::gguf::read_meta_file(&path)
        .with_context(|| format!("reading the GGUF metadata of {}", path.display()))?;
    let weights: Sha256 = m
        .sha256
        .parse()
        .map_err(|e| anyhow::anyhow!("the store's digest of {}: {e}", m.name))?;
    let mut tlog = TrustedLog::open(log_url, trust)?;
    let origin = tlog.origin().to_string();

    let data_mix = logged_datasets(home, &mix, &mut tlog, log_url)?;
    let decision = match decision {
        Some(i) => Some(crate::community::confirm_decision(
            home,
            log_url,
            i,
            &agora_core::statement::mix_digest(&data_mix),
        )?),
        None => None,
    };
    let base_model = base_model(home, store, base, &mix, log_url, &origin)?;
    let recipe_file = recipe.map(Path::to_path_buf).or_else(|| {
        mix.recipe
            .as_ref()
            .map(|r| mix_dir.clone().unwrap_or_default().join(r))
    });
    let recipe = match recipe_file {
        Some(p) => Some(Recipe {
            name: p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: file_sha256(&p)?,
        }),
        None => None,
    };

    let file_name = format!("{}.gguf", m.name);
    let statement = Statement::Model {
        subject: vec![Subject {
            name: file_name.clone(),
            digest: DigestSet { sha256: weights },
        }],
        predicate: ModelPredicate {
            name: mix.name.clone().unwrap_or_else(|| m.name.clone()),
            architecture: meta.architecture.clone(),
            tokenizer: Sha256(meta.tokenizer),
            license: mix.license.clone(),
            resources: vec![Resource {
                name: file_name,
                algorithm: "sha256".into(),
                digest: m.sha256.clone(),
            }],
            base_model,
            data_mix,
            declared_data: mix
                .declared
                .iter()
                .map(|d| DeclaredData {
                    name: d.name.clone(),
                    license: d.license.clone(),
                    source: d.source.clone(),
                    note: d.note.clone(),
                })
                .collect(),
            recipe,
            unknown: mix.unknown.clone(),
            decision,
            chunks: Some(chunk_root(&store.blob_path(&m.sha256))?),
        },
    };
    let identity = load_identity(home).context("the manifest is signed with this node's key")?;
    let envelope = statement.sign(&identity);
    let entry = envelope.to_json();
    let index = LogClient::new(log_url)
        .add(entry.as_bytes())
        .with_context(|| format!("appending the manifest to {log_url}"))?;
    let dir = manifests_dir(home);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let rec = dir.join(format!("{weights}.json"));
    let tmp = dir.join(format!("{weights}.json.tmp"));
    std::fs::write(
        &tmp,
        json!({"url": log_url, "index": index, "statement": entry}).to_string(),
    )
    .and_then(|()| std::fs::rename(&tmp, &rec))
    .with_context(|| format!("cannot write {}", rec.display()))?;
    println!(
        "{}: manifest logged at {log_url} entry {index} ({} logged dataset(s), {} declared, {} unknown), signed by {}",
        m.name,
        mix.datasets.len(),
        mix.declared.len(),
        mix.unknown.len(),
        identity.peer_id()
    );
    println!(
        "  architecture {}, tokenizer sha256:{}",
        meta.architecture,
        hex::encode(meta.tokenizer)
    );
    Ok(())
}

/// `s` as is, or escaped (`"\u{1b}…"`) when it holds a control or invisible character.
pub(crate) fn printable(s: &str) -> String {
    if s.chars().any(store::is_unsafe_char) {
        format!("{s:?}")
    } else {
        s.to_string()
    }
}

/// The mix's datasets as manifest entries: each statement read from the log, checked to be in
/// it, to be a valid dataset statement and to be the dataset named.
pub(crate) fn logged_datasets(
    home: &Path,
    mix: &Mix,
    tlog: &mut TrustedLog,
    log_url: &str,
) -> Result<Vec<MixEntry>> {
    let origin = tlog.origin().to_string();
    let mut data_mix = Vec::new();
    for d in &mix.datasets {
        let (url, index) = dataset_location(home, d)?;
        if !same_url(&url, log_url) {
            bail!(
                "dataset {} is logged at {url}, not in {log_url}: a manifest and its datasets are in one log",
                d.name
            );
        }
        tlog.cover(index)?;
        let entry = tlog
            .client
            .entry(index, tlog.size())
            .with_context(|| format!("dataset {}: reading entry {index} of {log_url}", d.name))?;
        let how = tlog
            .check_inclusion(index, &entry)
            .map_err(|e| anyhow::anyhow!("dataset {}: {e}", d.name))?;
        let env = Envelope::from_json(&entry).with_context(|| {
            format!(
                "dataset {}: entry {index} is not a signed statement",
                d.name
            )
        })?;
        let (_, st) = Statement::open(&env).with_context(|| {
            format!(
                "dataset {}: the statement at entry {index} does not check",
                d.name
            )
        })?;
        let Statement::Dataset { predicate: p, .. } = st else {
            bail!(
                "dataset {}: entry {index} is not a dataset statement",
                d.name
            );
        };
        let label = format!("{}@{}", p.name, p.version);
        if label != d.name {
            bail!("dataset {}: entry {index} is {label}", d.name);
        }
        println!(
            "  dataset {label}: entry {index}, {} records, {}: {how}",
            p.records, p.license
        );
        data_mix.push(MixEntry {
            name: label,
            log: origin.clone(),
            index,
            dataset: Sha256::of(&env.payload),
            weight: d.weight,
            tokens: d.tokens,
        });
    }

    Ok(data_mix)
}

/// The base model (`--base`, else the mix's), with its manifest's place in the log when this
/// machine published one there.
fn base_model(
    home: &Path,
    store: &ModelStore,
    base: Option<&str>,
    mix: &Mix,
    log_url: &str,
    origin: &str,
) -> Result<Option<BaseModel>> {
    Ok(
        match base
            .map(str::to_string)
            .or(mix.base.as_ref().map(|b| b.model.clone()))
        {
            None => None,
            Some(b) => {
                let w = weights_of(store, &b)?;
                let statement = match std::fs::read(manifests_dir(home).join(format!("{w}.json"))) {
                    Ok(rec) => {
                        let v: Value = serde_json::from_slice(&rec).unwrap_or(Value::Null);
                        match (
                            v["url"].as_str(),
                            v["index"].as_u64(),
                            v["statement"].as_str(),
                        ) {
                            (Some(u), Some(i), Some(s)) if same_url(u, log_url) => {
                                let env = Envelope::from_json(s.as_bytes())
                                    .context("the recorded manifest of the base model")?;
                                Some(LogRef {
                                    log: origin.to_string(),
                                    index: i,
                                    statement: Sha256::of(&env.payload),
                                })
                            }
                            _ => None,
                        }
                    }
                    Err(_) => None,
                };
                if statement.is_none() {
                    println!(
                        "  base sha256:{w}: no manifest of it published from here to this log"
                    );
                }
                Some(BaseModel {
                    weights: w,
                    name: mix.base.as_ref().and_then(|b| b.name.clone()),
                    statement,
                })
            }
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_catalog_mix_is_a_valid_mix_with_the_catalog_licence() {
        for e in agora_models::catalog::CATALOG {
            let Some(text) = e.mix else { continue };
            let mix = agora_data::mix::Mix::parse(text)
                .unwrap_or_else(|err| panic!("{}'s mix: {err}", e.name));
            assert_eq!(mix.license, e.license, "{}", e.name);
        }
    }
}
