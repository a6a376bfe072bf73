//! Croissant 1.1 (MLCommons' JSON-LD description of ML datasets) for Agora datasets.
//!
//! **Export** ([`export`]): a stored version becomes a directory that the reference
//! implementation, `mlcroissant`, loads:
//!
//! ```text
//! DIR/croissant.json   the metadata (JSON-LD, conformsTo http://mlcommons.org/croissant/1.1)
//! DIR/records.jsonl    one Dolma JSON object per record, in record order, exactly the stored
//!                      records' id, text, source, added, created and metadata
//! ```
//!
//! The metadata ([`metadata`]) carries what Agora knows: name, version, the SPDX licence (as a
//! `CreativeWork` with the SPDX URL and identifier), the source (`citeAs`, and `url` when it is
//! one), the contributors as `creator`s with their record counts, the trees' roots (in the
//! description and as `agora:` properties), `prov:wasDerivedFrom` for a derived version, and the
//! Croissant RAI fields that apply (`rai:dataCollection`, `rai:dataPreprocessingProtocol`,
//! `rai:dataReleaseMaintenancePlan`, …). One `FileObject` (`records.jsonl`, with its sha256) and
//! one `RecordSet` (`records`, keyed by `records/id`, a field per Dolma column present).
//!
//! **Import** ([`read`], [`parse`], [`check_files`]): a Croissant file whose `FileObject`s are
//! local files, named relative to the Croissant file's directory, becomes the inputs of an
//! ordinary ingest. The Croissant file is untrusted: it is read up to
//! [`MAX_CROISSANT_BYTES`], never panics the parser, and every refusal names what is wrong
//! (the property, the file, the digests). `contentUrl`s that are absolute, climb with `..`,
//! are URLs (`http(s)://`, `file:`, …) or resolve outside that directory through a link are
//! refused; every file's sha256 is checked before anything is ingested.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use agora_data::{Record, check_license};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::store::{DatasetStore, Manifest, Meta, StoreError, check_name};

/// The Croissant version exported (`conformsTo`).
pub const CONFORMS_TO: &str = "http://mlcommons.org/croissant/1.1";
/// The namespace of Agora's own properties (`agora:recordRoot`, …).
pub const AGORA_NS: &str = "https://agora.network/dataset/v1#";
/// The metadata file an export writes.
pub const METADATA_FILE: &str = "croissant.json";
/// The records file an export writes.
pub const RECORDS_FILE: &str = "records.jsonl";
/// The `@id` of the exported `RecordSet`.
pub const RECORD_SET: &str = "records";
/// Largest Croissant file read.
pub const MAX_CROISSANT_BYTES: u64 = 16 << 20;
/// Most `FileObject`s an imported Croissant file may list.
pub const MAX_FILES: usize = 10_000;
/// Most creators an imported Croissant file may list.
pub const MAX_CREATORS: usize = 1_000;

/// The Dolma columns, in the order the exported `RecordSet` lists them.
const COLUMNS: [&str; 5] = ["id", "text", "source", "added", "created"];

/// Why a Croissant dataset cannot be exported or imported.
#[derive(Debug, thiserror::Error)]
pub enum CroissantError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The Croissant file is larger than [`MAX_CROISSANT_BYTES`].
    #[error("the Croissant file is {0} bytes or more; at most {MAX_CROISSANT_BYTES} are read")]
    TooLarge(u64),
    /// The Croissant file is not JSON.
    #[error("the Croissant file is not JSON: {0}")]
    Json(String),
    /// JSON, but not a Croissant dataset.
    #[error("not a Croissant dataset: {0}")]
    NotCroissant(String),
    /// A property has a value Agora cannot use.
    #[error("the Croissant file's `{at}` {problem}")]
    Bad {
        /// Where, e.g. `distribution[1].sha256`.
        at: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A `FileObject`'s `contentUrl` is not a plain path inside the Croissant file's directory.
    #[error("file {file:?}: contentUrl {url:?} is refused: {reason}")]
    UnsafeUrl {
        /// The `FileObject`'s `@id` (or name).
        file: String,
        /// Its `contentUrl`.
        url: String,
        /// Why.
        reason: String,
    },
    /// A file's bytes do not have the sha256 the metadata gives.
    #[error(
        "file {file:?} ({path}): sha256 mismatch: the Croissant metadata says {expected}, the file's is {actual}; nothing was ingested"
    )]
    Digest {
        /// The `FileObject`'s `@id` (or name).
        file: String,
        /// The file on disk.
        path: PathBuf,
        /// The digest in the metadata (hex).
        expected: String,
        /// The file's digest (hex).
        actual: String,
    },
    /// The metadata lacks something an ingest needs and the command line did not give it.
    #[error("{what}: pass {flag}")]
    Missing {
        /// What is missing, and why.
        what: String,
        /// The flag that supplies it.
        flag: &'static str,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CroissantError + '_ {
    move |source| CroissantError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(at: impl Into<String>, problem: impl Into<String>) -> CroissantError {
    CroissantError::Bad {
        at: at.into(),
        problem: problem.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------------

/// What an export wrote, beside the metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordsFile {
    /// Records written.
    pub records: u64,
    /// Bytes of `records.jsonl`.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// The Dolma columns (id, text, source, added, created, in that order; `metadata` aside)
    /// that at least one record has.
    pub columns: Vec<&'static str>,
    /// Columns whose every value reads as a number: `mlcroissant` reads JSON Lines with pandas,
    /// which turns such a column into numbers (`"007"` becomes `7`).
    pub numeric: Vec<&'static str>,
}

/// A record as one Dolma JSON object: `id`, `text`, and `source`, `added`, `created` and
/// `metadata` when it has them (`metadata` as the JSON value it holds). Reading it back with
/// [`Record::from_json`] gives the same record.
pub fn record_json(r: &Record) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), Value::String(r.id.clone()));
    o.insert("text".into(), Value::String(r.text.clone()));
    for (k, v) in [
        ("source", &r.source),
        ("added", &r.added),
        ("created", &r.created),
    ] {
        if let Some(v) = v {
            o.insert(k.into(), Value::String(v.clone()));
        }
    }
    if let Some(m) = &r.metadata {
        // Stored metadata is canonical JSON; should it not parse, keep its text.
        let v = serde_json::from_str(m).unwrap_or_else(|_| Value::String(m.clone()));
        o.insert("metadata".into(), v);
    }
    Value::Object(o)
}

/// The JSON-LD `@context`: the one `mlcroissant` writes for Croissant 1.1, with the PROV-O
/// and Agora prefixes added.
pub fn context() -> Value {
    let entries = [
        ("@language", json!("en")),
        ("@vocab", json!("https://schema.org/")),
        ("agora", json!(AGORA_NS)),
        ("arrayShape", json!("cr:arrayShape")),
        ("citeAs", json!("cr:citeAs")),
        ("column", json!("cr:column")),
        ("conformsTo", json!("dct:conformsTo")),
        ("containedIn", json!("cr:containedIn")),
        ("cr", json!("http://mlcommons.org/croissant/")),
        ("data", json!({"@id": "cr:data", "@type": "@json"})),
        ("dataType", json!({"@id": "cr:dataType", "@type": "@vocab"})),
        ("dct", json!("http://purl.org/dc/terms/")),
        ("description", json!({"@container": "@language"})),
        ("equivalentProperty", json!("cr:equivalentProperty")),
        ("examples", json!({"@id": "cr:examples", "@type": "@json"})),
        ("extract", json!("cr:extract")),
        ("field", json!("cr:field")),
        ("fileObject", json!("cr:fileObject")),
        ("fileProperty", json!("cr:fileProperty")),
        ("fileSet", json!("cr:fileSet")),
        ("format", json!("cr:format")),
        ("includes", json!("cr:includes")),
        ("isArray", json!("cr:isArray")),
        ("isLiveDataset", json!("cr:isLiveDataset")),
        ("jsonPath", json!("cr:jsonPath")),
        ("key", json!("cr:key")),
        ("md5", json!("cr:md5")),
        ("name", json!({"@container": "@language"})),
        ("parentField", json!("cr:parentField")),
        ("path", json!("cr:path")),
        ("prov", json!("http://www.w3.org/ns/prov#")),
        ("rai", json!("http://mlcommons.org/croissant/RAI/")),
        ("recordSet", json!("cr:recordSet")),
        ("references", json!("cr:references")),
        ("regex", json!("cr:regex")),
        ("repeated", json!("cr:repeated")),
        ("replace", json!("cr:replace")),
        ("samplingRate", json!("cr:samplingRate")),
        ("sc", json!("https://schema.org/")),
        ("separator", json!("cr:separator")),
        ("source", json!("cr:source")),
        ("subField", json!("cr:subField")),
        ("transform", json!("cr:transform")),
    ];
    Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// The SPDX page of a licence identifier (`MIT` → `https://spdx.org/licenses/MIT.html`), or
/// `None` for a compound expression or a `LicenseRef-`.
pub fn spdx_url(expr: &str) -> Option<String> {
    let id = expr.trim();
    let simple = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.+".contains(&b))
        && !id.starts_with("LicenseRef-")
        && !id.starts_with("DocumentRef-");
    simple.then(|| {
        format!(
            "https://spdx.org/licenses/{}.html",
            id.trim_end_matches('+')
        )
    })
}

fn is_web_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    (l.starts_with("https://") || l.starts_with("http://")) && !s.contains(char::is_whitespace)
}

/// `" It derives from NAME@VERSION."`, or nothing.
fn derived_note(m: &Manifest) -> String {
    m.derived_from
        .as_ref()
        .map(|p| format!(" It derives from {p}."))
        .unwrap_or_default()
}

/// `urn:agora:dataset:NAME@VERSION`, how the metadata names an Agora dataset version.
fn urn(label: &str) -> String {
    format!("urn:agora:dataset:{label}")
}

/// The Croissant metadata of stored version `m` whose records were written as `file`.
/// `published` is the version's date (`YYYY-MM-DD`), `statement_sha256` the SHA-256 of its
/// signed statement (hex), each when known.
pub fn metadata(
    m: &Manifest,
    file: &RecordsFile,
    published: Option<&str>,
    statement_sha256: Option<&str>,
) -> Value {
    let label = m.label();
    let mut d = Map::new();
    d.insert("@context".into(), context());
    d.insert("@type".into(), json!("sc:Dataset"));
    d.insert("conformsTo".into(), json!(CONFORMS_TO));
    d.insert("name".into(), json!(m.name));
    let derived = derived_note(m);
    d.insert(
        "description".into(),
        json!(format!(
            "Agora dataset {label}: {} records ({} bytes in Agora's canonical AGR1 encoding), \
             licence {}, from {}.{derived} Record tree root {} and id tree root {} (RFC 6962, \
             SHA-256): each record can be proven present, and any other id absent, against \
             these roots with `agora dataset prove` and `agora dataset verify`. The records are \
             in {RECORDS_FILE}, one Dolma JSON object per line, in record order.",
            m.records, m.bytes, m.license, m.source, m.record_root, m.id_root
        )),
    );
    d.insert("version".into(), json!(format!("{}.0.0", m.version)));
    let mut license = Map::new();
    license.insert("@type".into(), json!("sc:CreativeWork"));
    license.insert("name".into(), json!(m.license));
    license.insert("identifier".into(), json!(m.license));
    if let Some(u) = spdx_url(&m.license) {
        license.insert("url".into(), json!(u));
    }
    d.insert("license".into(), json!([Value::Object(license)]));
    if is_web_url(&m.source) {
        d.insert("url".into(), json!(m.source));
    }
    d.insert("citeAs".into(), json!(m.source));
    if let Some(p) = published {
        d.insert("datePublished".into(), json!(p));
    }
    let creators: Vec<Value> = m
        .contributors
        .iter()
        .map(|c| {
            json!({
                "@type": "sc:Organization",
                "name": c.label.as_deref().unwrap_or(&c.key),
                "identifier": c.key,
                "description": format!("credited with {} records of {label}", c.records),
                "agora:records": c.records,
            })
        })
        .collect();
    if !creators.is_empty() {
        d.insert("creator".into(), Value::Array(creators));
    }
    provenance(m, &mut d);
    agora_terms(m, statement_sha256, &mut d);
    records_resources(file, &mut d);
    Value::Object(d)
}

/// PROV-O and the Croissant RAI vocabulary: how version `m` came to be.
fn provenance(m: &Manifest, d: &mut Map<String, Value>) {
    let label = m.label();
    let derived = derived_note(m);
    if let Some(p) = &m.derived_from {
        d.insert(
            "prov:wasDerivedFrom".into(),
            json!({"@id": urn(p), "@type": "prov:Entity", "name": p}),
        );
    }
    d.insert(
        "prov:wasGeneratedBy".into(),
        json!({
            "@type": "prov:Activity",
            "prov:label": "Agora ingest (agora dataset add, or remove for an opt-out version)",
            "description": "Records read in input order, each encoded canonically (AGR1) and \
                            hashed into the record tree and the id tree; the version's statement \
                            is signed with the ingesting node's key.",
        }),
    );
    d.insert(
        "rai:dataCollection".into(),
        json!(format!(
            "Collected from {} and ingested into Agora as {label}.{derived}",
            m.source
        )),
    );
    let mut preprocessing = vec![
        "Each input record kept as read (Dolma fields id, text, source, added, created; other \
         fields under metadata, as canonical JSON); a repeated id is refused."
            .to_string(),
    ];
    if m.skipped > 0 {
        preprocessing.push(format!(
            "{} malformed input records were skipped (--skip-bad).",
            m.skipped
        ));
    }
    d.insert("rai:dataPreprocessingProtocol".into(), json!(preprocessing));
    if let Some(p) = &m.derived_from {
        d.insert(
            "rai:dataManipulationProtocol".into(),
            json!(format!(
                "A new version derived from {p} (for example with records opted out)."
            )),
        );
    }
    d.insert(
        "rai:dataReleaseMaintenancePlan".into(),
        json!(
            "Records are opted out with `agora dataset remove`: a new version derived from the \
             previous one, signed, with a proof per removed id that it is absent."
        ),
    );
}

/// Agora's own terms (`agora:`): what the signed statement says.
fn agora_terms(m: &Manifest, statement_sha256: Option<&str>, d: &mut Map<String, Value>) {
    d.insert("agora:dataset".into(), json!(m.label()));
    d.insert("agora:version".into(), json!(m.version));
    d.insert("agora:license".into(), json!(m.license));
    d.insert("agora:source".into(), json!(m.source));
    d.insert("agora:records".into(), json!(m.records));
    d.insert("agora:bytes".into(), json!(m.bytes));
    d.insert("agora:recordRoot".into(), json!(m.record_root));
    d.insert("agora:idRoot".into(), json!(m.id_root));
    if let Some(p) = &m.derived_from {
        d.insert("agora:derivedFrom".into(), json!(p));
    }
    if let Some(s) = statement_sha256 {
        d.insert("agora:statementSha256".into(), json!(s));
    }
}

/// The records file (`distribution`) and the record set that reads it (`recordSet`).
fn records_resources(file: &RecordsFile, d: &mut Map<String, Value>) {
    d.insert(
        "distribution".into(),
        json!([{
            "@type": "cr:FileObject",
            "@id": RECORDS_FILE,
            "name": RECORDS_FILE,
            "description": "The records, one Dolma JSON object per line, in record order.",
            "contentUrl": RECORDS_FILE,
            "contentSize": format!("{} B", file.bytes),
            "encodingFormat": "application/jsonlines",
            "sha256": file.sha256,
        }]),
    );
    let fields: Vec<Value> = file
        .columns
        .iter()
        .map(|c| {
            json!({
                "@type": "cr:Field",
                "@id": format!("{RECORD_SET}/{c}"),
                "name": c,
                "description": column_description(c),
                "dataType": "sc:Text",
                "source": {
                    "fileObject": {"@id": RECORDS_FILE},
                    "extract": {"column": c},
                },
            })
        })
        .collect();
    d.insert(
        "recordSet".into(),
        json!([{
            "@type": "cr:RecordSet",
            "@id": RECORD_SET,
            "name": RECORD_SET,
            "description": "One record per document, in record order (the record tree's leaf \
                            order). Each line's `metadata` object is in the file but not a \
                            field.",
            "key": {"@id": format!("{RECORD_SET}/id")},
            "field": fields,
        }]),
    );
}

fn column_description(c: &str) -> &'static str {
    match c {
        "id" => "The record's id, unique in the dataset: what proofs of presence and absence name.",
        "text" => "The document's text.",
        "source" => "Where the document came from.",
        "added" => "When it was added to the dataset, as written in the input.",
        "created" => "When the document was created, as written in the input.",
        _ => "",
    }
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Whether pandas (`read_json`, as `mlcroissant` calls it) would read this string as a number.
fn looks_numeric(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty() && t.parse::<f64>().is_ok()
}

/// `YYYY-MM-DD` of a time since the Unix epoch (UTC).
fn date_of(t: std::time::SystemTime) -> Option<String> {
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(secs / 86_400).ok()? + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some(format!("{year:04}-{month:02}-{day:02}"))
}

/// Writes stored version `m` as a Croissant dataset in `out` (created if needed):
/// `croissant.json` and `records.jsonl`, each written under a temporary name and renamed into
/// place (an existing export there is replaced). `statement` is the version's signed statement,
/// whose SHA-256 the metadata records.
pub fn export(
    store: &DatasetStore,
    m: &Manifest,
    out: &Path,
    statement: Option<&[u8]>,
) -> Result<RecordsFile, CroissantError> {
    fs::create_dir_all(out).map_err(io_at(out))?;
    let tmp = out.join(format!(".{RECORDS_FILE}.tmp"));
    let f = File::create(&tmp).map_err(io_at(&tmp))?;
    let mut w = BufWriter::with_capacity(
        1 << 20,
        Hashing {
            inner: f,
            hash: Sha256::new(),
            bytes: 0,
        },
    );
    let mut present = [false; COLUMNS.len()];
    let mut numeric = [true; COLUMNS.len()];
    let mut count = 0u64;
    let written = store.for_each_record(m, &mut |r| {
        let values = [
            Some(&r.id),
            Some(&r.text),
            r.source.as_ref(),
            r.added.as_ref(),
            r.created.as_ref(),
        ];
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                present[i] = true;
                numeric[i] &= looks_numeric(v);
            }
        }
        let line = serde_json::to_string(&record_json(&r))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        w.write_all(line.as_bytes())
            .and_then(|()| w.write_all(b"\n"))
            .map_err(|source| StoreError::Io {
                path: tmp.clone(),
                source,
            })?;
        count += 1;
        Ok(())
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    let hashing = w.into_inner().map_err(|e| CroissantError::Io {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    hashing.inner.sync_all().map_err(io_at(&tmp))?;
    if count != m.records {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Corrupt(format!(
            "{} lists {} records but its shards hold {count}",
            m.label(),
            m.records
        ))
        .into());
    }
    let records_path = out.join(RECORDS_FILE);
    fs::rename(&tmp, &records_path).map_err(io_at(&records_path))?;
    let columns: Vec<&'static str> = COLUMNS
        .iter()
        .zip(present)
        .filter(|(_, p)| *p)
        .map(|(c, _)| *c)
        .collect();
    let numeric = COLUMNS
        .iter()
        .zip(present.iter().zip(numeric))
        .filter(|(_, (p, n))| **p && *n)
        .map(|(c, _)| *c)
        .collect();
    let file = RecordsFile {
        records: count,
        bytes: hashing.bytes,
        sha256: hex::encode(hashing.hash.finalize()),
        columns,
        numeric,
    };
    let manifest = store.dir(&m.name, m.version).join("manifest.json");
    let published = fs::metadata(&manifest)
        .and_then(|md| md.modified())
        .ok()
        .and_then(date_of);
    let statement_sha256 = statement.map(|s| hex::encode(Sha256::digest(s)));
    let meta = metadata(m, &file, published.as_deref(), statement_sha256.as_deref());
    let text =
        serde_json::to_string_pretty(&meta).map_err(|e| StoreError::Corrupt(e.to_string()))? + "\n";
    let tmp = out.join(format!(".{METADATA_FILE}.tmp"));
    let dest = out.join(METADATA_FILE);
    fs::write(&tmp, text).map_err(io_at(&tmp))?;
    fs::rename(&tmp, &dest).map_err(io_at(&dest))?;
    Ok(file)
}

// ---------------------------------------------------------------------------------------------
// Import
// ---------------------------------------------------------------------------------------------

/// What an imported Croissant file says about its licence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum License {
    /// No `license`.
    Absent,
    /// A valid SPDX licence expression.
    Spdx(String),
    /// A licence Agora cannot name in SPDX (why, in words).
    Unrecognised(String),
}

/// One local file of an imported Croissant dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    /// Its `@id` (or `name`), for messages.
    pub id: String,
    /// Its `contentUrl` as written.
    pub content_url: String,
    /// Its path relative to the Croissant file's directory (checked: see [`relative_path`]).
    pub path: PathBuf,
    /// Its SHA-256 from the metadata.
    pub sha256: [u8; 32],
    /// Its `encodingFormat`.
    pub encoding_format: String,
}

/// What an ingest takes from a Croissant file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Croissant {
    /// `name` (a language map gives its English, else first, value).
    pub name: Option<String>,
    /// The licence.
    pub license: License,
    /// `agora:source`, else `url`, else `citeAs`.
    pub source: Option<String>,
    /// The creators as contributors: (key, label). The key is the creator's `identifier`, else
    /// its `url`, else its name; the label its name when that differs from the key.
    pub creators: Vec<(String, Option<String>)>,
    /// The `FileObject`s, in `distribution` order.
    pub files: Vec<FileRef>,
}

/// What the command line gives, which wins over the Croissant file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--name`.
    pub name: Option<String>,
    /// `--license`.
    pub license: Option<String>,
    /// `--source`.
    pub source: Option<String>,
    /// `--derived-from`.
    pub derived_from: Option<String>,
    /// `--contributor` (used instead of the creators when not empty).
    pub contributors: Vec<(String, Option<String>)>,
}

impl Croissant {
    /// The ingest's [`Meta`]: each field from `o` when given, else from the Croissant file.
    pub fn meta(&self, o: &Overrides) -> Result<Meta, CroissantError> {
        let name = match (&o.name, &self.name) {
            (Some(n), _) => n.clone(),
            (None, Some(n)) if check_name(n).is_ok() => n.clone(),
            (None, Some(n)) => {
                return Err(CroissantError::Missing {
                    what: format!(
                        "the Croissant name {n:?} is not an Agora dataset name (letters, digits, \
                         '.', '_', '-'; at most 64)"
                    ),
                    flag: "--name NAME",
                });
            }
            (None, None) => {
                return Err(CroissantError::Missing {
                    what: "the Croissant file has no name".into(),
                    flag: "--name NAME",
                });
            }
        };
        let license = match (&o.license, &self.license) {
            (Some(l), _) => l.clone(),
            (None, License::Spdx(l)) => l.clone(),
            (None, License::Absent) => {
                return Err(CroissantError::Missing {
                    what: "the Croissant file has no license".into(),
                    flag: "--license SPDX",
                });
            }
            (None, License::Unrecognised(why)) => {
                return Err(CroissantError::Missing {
                    what: format!("the Croissant file's license is not usable: {why}"),
                    flag: "--license SPDX",
                });
            }
        };
        let source = match (&o.source, &self.source) {
            (Some(s), _) | (None, Some(s)) => s.clone(),
            (None, None) => {
                return Err(CroissantError::Missing {
                    what: "the Croissant file has no url or citeAs to name the source".into(),
                    flag: "--source URL",
                });
            }
        };
        let contributors = if o.contributors.is_empty() {
            self.creators.clone()
        } else {
            o.contributors.clone()
        };
        Ok(Meta {
            name,
            license,
            source,
            derived_from: o.derived_from.clone(),
            contributors,
        })
    }
}

/// A text value: a string, `{"@value": …}`, or a language map (`{"en": …}`, else its first
/// value in key order).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => {
            if let Some(x) = o.get("@value") {
                return text(x);
            }
            // A language map: every key a language tag.
            let tags = !o.is_empty()
                && o.keys().all(|k| {
                    k.len() <= 35 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !tags {
                return None;
            }
            o.get("en")
                .or_else(|| o.values().next())
                .and_then(|x| match x {
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                })
        }
        _ => None,
    }
}

/// The values of a property that may be one value or a list.
fn many(v: Option<&Value>) -> Vec<&Value> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(x) => vec![x],
    }
}

/// The first of `keys` present in `o`.
fn get<'a>(o: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| o.get(*k))
}

/// Whether a `@type` (a string or a list) names `class` (`cr:FileObject`, `sc:FileObject`,
/// `http://mlcommons.org/croissant/FileObject`, …).
fn has_type(v: Option<&Value>, class: &str) -> bool {
    many(v).iter().any(|t| {
        t.as_str().is_some_and(|t| {
            t == class
                || t.strip_suffix(class)
                    .is_some_and(|p| p.ends_with(':') || p.ends_with('/') || p.ends_with('#'))
        })
    })
}

/// The SPDX identifier a licence URL names: `https://spdx.org/licenses/MIT.html`,
/// `https://opensource.org/licenses/MIT`, `https://creativecommons.org/licenses/by/4.0/`,
/// `https://creativecommons.org/publicdomain/zero/1.0/`.
pub fn spdx_of_url(url: &str) -> Option<String> {
    let lower = url.trim().to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))?;
    let rest = rest.strip_prefix("www.").unwrap_or(rest);
    let original = &url.trim()[url.trim().len() - rest.len()..];
    let path = |prefix: &str| -> Option<&str> {
        rest.strip_prefix(prefix)
            .map(|_| original[prefix.len()..].trim_end_matches('/'))
    };
    let id = if let Some(p) = path("spdx.org/licenses/") {
        p.trim_end_matches(".html")
            .trim_end_matches(".json")
            .to_string()
    } else if let Some(p) = path("opensource.org/licenses/") {
        p.trim_end_matches(".php").to_string()
    } else if let Some(p) = path("creativecommons.org/licenses/") {
        let mut parts = p.split('/');
        let kind = parts.next()?.to_ascii_uppercase();
        let version = parts.next()?;
        format!("CC-{kind}-{version}")
    } else if let Some(p) = path("creativecommons.org/publicdomain/zero/") {
        format!("CC0-{}", p.split('/').next()?)
    } else {
        return None;
    };
    check_license(&id).is_ok().then_some(id)
}

/// The SPDX expression one `license` value gives, if any.
fn license_of(v: &Value) -> Option<String> {
    let candidates: Vec<String> = match v {
        Value::String(s) => vec![s.clone()],
        Value::Object(o) => ["identifier", "name", "url", "@id"]
            .iter()
            .filter_map(|k| o.get(*k).and_then(text))
            .collect(),
        _ => Vec::new(),
    };
    candidates.iter().find_map(|c| {
        if is_web_url(c) {
            spdx_of_url(c)
        } else {
            check_license(c).is_ok().then(|| c.trim().to_string())
        }
    })
}

fn parse_license(d: &Map<String, Value>) -> License {
    if let Some(l) = d.get("agora:license").and_then(Value::as_str)
        && check_license(l).is_ok()
    {
        return License::Spdx(l.to_string());
    }
    let values = many(d.get("license"));
    match values.as_slice() {
        [] => License::Absent,
        [one] => match license_of(one) {
            Some(l) => License::Spdx(l),
            None => License::Unrecognised(format!(
                "{} is not an SPDX licence or a licence URL Agora knows",
                short(one)
            )),
        },
        several => License::Unrecognised(format!(
            "it lists {} licences ({}); say which applies",
            several.len(),
            several
                .iter()
                .map(|v| short(v))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A value for a message, cut at 120 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

/// Decodes `%XX` escapes.
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a '%' is not followed by two hex digits".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "its %-escapes are not UTF-8".to_string())
}

/// The relative path a `contentUrl` names, or why it is refused: URLs (`http://`, `https://`,
/// `file:`, any `scheme:`), absolute paths, `..`, backslashes, NUL, queries and fragments.
/// `%XX` escapes are decoded first (so `%2e%2e` is `..`).
pub fn relative_path(url: &str) -> Result<PathBuf, String> {
    if url.is_empty() {
        return Err("it is empty".into());
    }
    let scheme_end = url.find(':').filter(|&i| {
        let s = &url[..i];
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if let Some(i) = scheme_end {
        let scheme = url[..i].to_ascii_lowercase();
        return Err(if scheme == "http" || scheme == "https" {
            "Agora does not download: fetch the file, put it beside the Croissant file and name \
             it by a relative path"
                .into()
        } else {
            format!("it is a {scheme}: URL, not a path relative to the Croissant file")
        });
    }
    if url.contains(['?', '#']) {
        return Err("it has a query or fragment".into());
    }
    let decoded = percent_decode(url)?;
    if decoded.contains('\0') {
        return Err("it contains a NUL byte".into());
    }
    if decoded.contains('\\') {
        return Err("it contains a backslash".into());
    }
    if decoded.starts_with('/') {
        return Err(
            "absolute paths are refused: name the file relative to the Croissant file's directory"
                .into(),
        );
    }
    let mut path = PathBuf::new();
    for c in Path::new(&decoded).components() {
        match c {
            Component::Normal(p) => path.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(
                    "`..` is refused: the file must be inside the Croissant file's \
                            directory"
                        .into(),
                );
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are refused".into());
            }
        }
    }
    if path.as_os_str().is_empty() {
        return Err("it names no file".into());
    }
    Ok(path)
}

/// A sha256 as Croissant writes it: 64 hex digits, or the digest in base64 (as `mlcroissant`
/// also accepts).
fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() == 64 {
        let mut out = [0u8; 32];
        return hex::decode_to_slice(s, &mut out).ok().map(|()| out);
    }
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    b.try_into().ok()
}

/// Encoding formats Agora ingests, and whether each is JSON Lines (else text).
fn format_kind(f: &str) -> Option<bool> {
    let f = f.trim().to_ascii_lowercase();
    let base = f.split(';').next().unwrap_or("").trim();
    match base {
        "application/jsonlines"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/x-ndjson"
        | "application/ndjson"
        | "application/json" => Some(true),
        b if b.starts_with("text/") => Some(false),
        _ => None,
    }
}

/// Whether Agora's input reader reads `path` as JSON Lines (by its name, as `input` does).
fn named_json(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".gz")
        .or_else(|| name.strip_suffix(".zst"))
        .unwrap_or(&name);
    [".jsonl", ".json", ".ndjson"]
        .iter()
        .any(|e| stem.ends_with(e))
}

fn parse_file(i: usize, v: &Value) -> Result<Option<FileRef>, CroissantError> {
    let at = format!("distribution[{i}]");
    let Value::Object(o) = v else {
        return Err(bad(at, "is not an object"));
    };
    if has_type(o.get("@type"), "FileSet") {
        return Err(bad(
            at,
            "is a FileSet: Agora imports FileObjects only (list each file as a FileObject)",
        ));
    }
    if !has_type(o.get("@type"), "FileObject") {
        return Ok(None);
    }
    let id = get(o, &["@id", "name"])
        .and_then(text)
        .unwrap_or_else(|| at.clone());
    if o.contains_key("containedIn") {
        return Err(bad(
            at,
            format!(
                "({id:?}) is inside another file (containedIn): extract it and list it as a \
                 FileObject of its own"
            ),
        ));
    }
    let content_url = match o.get("contentUrl") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad(format!("{at}.contentUrl"), "is not a string")),
        None => {
            return Err(bad(
                format!("{at}.contentUrl"),
                format!("is missing ({id:?})"),
            ));
        }
    };
    let path = relative_path(&content_url).map_err(|reason| CroissantError::UnsafeUrl {
        file: id.clone(),
        url: content_url.clone(),
        reason,
    })?;
    let sha256 = match o.get("sha256") {
        Some(Value::String(s)) => parse_sha256(s).ok_or_else(|| {
            bad(
                format!("{at}.sha256"),
                format!("({id:?}) is not a SHA-256 in hex or base64: {s:?}"),
            )
        })?,
        Some(_) => return Err(bad(format!("{at}.sha256"), "is not a string")),
        None => {
            return Err(bad(
                format!("{at}.sha256"),
                format!("is missing ({id:?}): Agora checks every file's SHA-256 before ingesting"),
            ));
        }
    };
    let encoding_format = match many(o.get("encodingFormat")).first() {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad(format!("{at}.encodingFormat"), "is not a string")),
        None => {
            return Err(bad(
                format!("{at}.encodingFormat"),
                format!("is missing ({id:?})"),
            ));
        }
    };
    match format_kind(&encoding_format) {
        None => {
            return Err(bad(
                format!("{at}.encodingFormat"),
                format!(
                    "({id:?}) is {encoding_format:?}: Agora ingests JSON Lines \
                     (application/jsonlines) and text (text/*) files"
                ),
            ));
        }
        Some(json) if json != named_json(&path) => {
            return Err(bad(
                format!("{at}.encodingFormat"),
                format!(
                    "({id:?}) is {encoding_format:?} but {content_url:?} would be read as {}: \
                     Agora reads files named *.jsonl, *.json, *.ndjson (optionally .gz, .zst) as \
                     JSON Lines and any other file as one text record",
                    if json {
                        "one text record"
                    } else {
                        "JSON Lines"
                    }
                ),
            ));
        }
        Some(_) => {}
    }
    Ok(Some(FileRef {
        id,
        content_url,
        path,
        sha256,
        encoding_format,
    }))
}

fn parse_creator(i: usize, v: &Value) -> Result<(String, Option<String>), CroissantError> {
    let at = format!("creator[{i}]");
    match v {
        Value::String(s) if !s.is_empty() => Ok((s.clone(), None)),
        Value::Object(o) => {
            let name = o.get("name").and_then(text).filter(|s| !s.is_empty());
            let key = ["identifier", "url", "@id"]
                .iter()
                .find_map(|k| o.get(*k).and_then(text))
                .filter(|s| !s.is_empty())
                .or_else(|| name.clone())
                .ok_or_else(|| bad(&at, "has no identifier, url or name"))?;
            let label = name.filter(|n| *n != key);
            Ok((key, label))
        }
        _ => Err(bad(at, "is neither a Person, an Organization nor a name")),
    }
}

/// Reads a Croissant file's metadata (pure: no file is opened). Refuses what is not a
/// Croissant dataset (`@type` Dataset, `conformsTo` a Croissant version), a `FileObject` that
/// is not a local file with a sha256 and a format Agora ingests, and more than [`MAX_FILES`]
/// files or [`MAX_CREATORS`] creators. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Result<Croissant, CroissantError> {
    if bytes.len() as u64 > MAX_CROISSANT_BYTES {
        return Err(CroissantError::TooLarge(bytes.len() as u64));
    }
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| CroissantError::Json(e.to_string()))?;
    let Value::Object(d) = v else {
        return Err(CroissantError::NotCroissant(
            "the file is not a JSON object".into(),
        ));
    };
    if !has_type(d.get("@type"), "Dataset") {
        return Err(CroissantError::NotCroissant(format!(
            "its @type is {}, not sc:Dataset",
            d.get("@type").map_or_else(|| "missing".into(), short)
        )));
    }
    let conforms = many(get(&d, &["conformsTo", "dct:conformsTo"]));
    if !conforms.iter().any(|c| {
        c.as_str()
            .is_some_and(|c| c.starts_with("http://mlcommons.org/croissant/"))
    }) {
        return Err(CroissantError::NotCroissant(format!(
            "conformsTo is {}, not a Croissant version such as {CONFORMS_TO}",
            get(&d, &["conformsTo", "dct:conformsTo"]).map_or_else(|| "missing".into(), short)
        )));
    }
    let name = match d.get("name") {
        None => None,
        Some(n) => Some(text(n).ok_or_else(|| bad("name", "is not a text"))?),
    };
    let string_of = |k: &str| -> Result<Option<String>, CroissantError> {
        match d.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => text(v)
                .filter(|s| !s.trim().is_empty())
                .map(Some)
                .ok_or_else(|| bad(k, "is not a text")),
        }
    };
    let source = match string_of("agora:source")? {
        Some(s) => Some(s),
        None => match string_of("url")? {
            Some(s) => Some(s),
            None => string_of("citeAs")?,
        },
    };
    let creators_v = many(d.get("creator"));
    if creators_v.len() > MAX_CREATORS {
        return Err(bad(
            "creator",
            format!(
                "lists {} creators; at most {MAX_CREATORS}",
                creators_v.len()
            ),
        ));
    }
    let creators = creators_v
        .iter()
        .enumerate()
        .map(|(i, c)| parse_creator(i, c))
        .collect::<Result<Vec<_>, _>>()?;
    let dist = many(d.get("distribution"));
    if dist.len() > MAX_FILES {
        return Err(bad(
            "distribution",
            format!("lists {} resources; at most {MAX_FILES}", dist.len()),
        ));
    }
    let mut files = Vec::new();
    for (i, f) in dist.iter().enumerate() {
        if let Some(f) = parse_file(i, f)? {
            files.push(f);
        }
    }
    if files.is_empty() {
        return Err(bad(
            "distribution",
            "lists no FileObject: there is nothing to ingest",
        ));
    }
    Ok(Croissant {
        name,
        license: parse_license(&d),
        source,
        creators,
        files,
    })
}

/// Reads and parses the Croissant file at `path` (at most [`MAX_CROISSANT_BYTES`]); also
/// returns the directory its `contentUrl`s are relative to.
pub fn read(path: &Path) -> Result<(Croissant, PathBuf), CroissantError> {
    let f = File::open(path).map_err(io_at(path))?;
    let mut bytes = Vec::new();
    f.take(MAX_CROISSANT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_at(path))?;
    let c = parse(&bytes)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((c, dir))
}

/// Resolves every file of `c` under `dir` and checks its SHA-256 against the metadata: the
/// paths to ingest, in order. A file that resolves outside `dir` (through a symbolic link), is
/// not a regular file, or whose digest differs is an error naming it; nothing is ingested then.
pub fn check_files(c: &Croissant, dir: &Path) -> Result<Vec<PathBuf>, CroissantError> {
    let base = fs::canonicalize(dir).map_err(io_at(dir))?;
    let mut out = Vec::with_capacity(c.files.len());
    for f in &c.files {
        let joined = base.join(&f.path);
        let real = fs::canonicalize(&joined).map_err(io_at(&joined))?;
        if !real.starts_with(&base) {
            return Err(CroissantError::UnsafeUrl {
                file: f.id.clone(),
                url: f.content_url.clone(),
                reason: format!(
                    "it resolves to {}, outside {} (a symbolic link?)",
                    real.display(),
                    base.display()
                ),
            });
        }
        let meta = fs::metadata(&real).map_err(io_at(&real))?;
        if !meta.is_file() {
            return Err(CroissantError::UnsafeUrl {
                file: f.id.clone(),
                url: f.content_url.clone(),
                reason: "it is not a regular file".into(),
            });
        }
        let mut h = Sha256::new();
        let mut file = File::open(&real).map_err(io_at(&real))?;
        std::io::copy(&mut file, &mut h).map_err(io_at(&real))?;
        let actual: [u8; 32] = h.finalize().into();
        if actual != f.sha256 {
            return Err(CroissantError::Digest {
                file: f.id.clone(),
                path: joined,
                expected: hex::encode(f.sha256),
                actual: hex::encode(actual),
            });
        }
        out.push(real);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::Contributor;

    fn manifest() -> Manifest {
        Manifest {
            name: "quotes".into(),
            version: 2,
            license: "MIT".into(),
            source: "https://example.org/quotes".into(),
            derived_from: Some("quotes@1".into()),
            contributors: vec![Contributor {
                key: "k1".into(),
                label: Some("Alice".into()),
                records: 3,
            }],
            records: 3,
            bytes: 100,
            record_root: "aa".repeat(32),
            id_root: "bb".repeat(32),
            shards: Vec::new(),
            skipped: 0,
        }
    }

    fn file() -> RecordsFile {
        RecordsFile {
            records: 3,
            bytes: 10,
            sha256: "cd".repeat(32),
            columns: vec!["id", "text"],
            numeric: Vec::new(),
        }
    }

    #[test]
    fn the_metadata_says_what_agora_knows_and_parses_back() {
        let m = manifest();
        let v = metadata(&m, &file(), Some("2026-12-01"), None);
        assert_eq!(v["conformsTo"], CONFORMS_TO);
        assert_eq!(v["license"][0]["url"], "https://spdx.org/licenses/MIT.html");
        assert_eq!(
            v["prov:wasDerivedFrom"]["@id"],
            "urn:agora:dataset:quotes@1"
        );
        assert_eq!(v["agora:recordRoot"], "aa".repeat(32));
        assert_eq!(v["creator"][0]["agora:records"], 3);
        assert!(v["rai:dataCollection"].is_string());
        assert_eq!(v["recordSet"][0]["field"][1]["@id"], "records/text");
        let c = parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(c.name.as_deref(), Some("quotes"));
        assert_eq!(c.license, License::Spdx("MIT".into()));
        assert_eq!(c.source.as_deref(), Some("https://example.org/quotes"));
        assert_eq!(c.creators, [("k1".to_string(), Some("Alice".to_string()))]);
        assert_eq!(c.files.len(), 1);
        assert_eq!(c.files[0].path, Path::new(RECORDS_FILE));
        assert_eq!(c.files[0].sha256, [0xcd; 32]);
        let meta = c
            .meta(&Overrides {
                name: Some("other".into()),
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!(
            (meta.name.as_str(), meta.license.as_str()),
            ("other", "MIT")
        );
    }

    #[test]
    fn records_round_trip_through_dolma_json() {
        let r = Record::from_json(
            r#"{"id":"a","text":"t","source":"s","added":"2026","extra":[1,2.5,{"z":null}],"metadata":{"b":1}}"#,
        )
        .unwrap();
        let back = Record::from_json(&record_json(&r).to_string()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.encode(), r.encode());
    }

    #[test]
    fn unsafe_content_urls_are_refused() {
        for (url, why) in [
            ("../x.jsonl", "`..`"),
            ("a/../../x.jsonl", "`..`"),
            ("%2e%2e/x.jsonl", "`..`"),
            ("/etc/passwd", "absolute"),
            ("http://example.org/x.jsonl", "does not download"),
            ("HTTPS://example.org/x.jsonl", "does not download"),
            ("file:///etc/passwd", "file: URL"),
            ("a\\b.jsonl", "backslash"),
            ("x.jsonl?y", "query"),
            ("", "empty"),
            (".", "names no file"),
            ("%zz", "hex digits"),
        ] {
            let e = relative_path(url).unwrap_err();
            assert!(e.contains(why), "{url:?}: {e}");
        }
        assert_eq!(
            relative_path("./data/my%20file.jsonl").unwrap(),
            Path::new("data/my file.jsonl")
        );
    }

    #[test]
    fn licences_are_read_from_urls_and_names() {
        for (v, want) in [
            (
                json!("https://spdx.org/licenses/Apache-2.0.html"),
                Some("Apache-2.0"),
            ),
            (
                json!("https://creativecommons.org/licenses/by/4.0/"),
                Some("CC-BY-4.0"),
            ),
            (
                json!("https://creativecommons.org/publicdomain/zero/1.0/"),
                Some("CC0-1.0"),
            ),
            (json!("MIT OR Apache-2.0"), Some("MIT OR Apache-2.0")),
            (
                json!({"@type": "sc:CreativeWork", "name": "BSD-3-Clause"}),
                Some("BSD-3-Clause"),
            ),
            (json!("https://example.org/my-licence"), None),
            (json!(42), None),
        ] {
            assert_eq!(license_of(&v).as_deref(), want, "{v}");
        }
        let mut d = Map::new();
        d.insert("license".into(), json!(["MIT", "Apache-2.0"]));
        assert!(matches!(parse_license(&d), License::Unrecognised(w) if w.contains("2 licences")));
    }

    #[test]
    fn bad_metadata_is_refused_precisely() {
        let good = metadata(&manifest(), &file(), None, None);
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = good.clone();
            f(&mut v);
            parse(v.to_string().as_bytes()).unwrap_err().to_string()
        };
        let e = with(&|v| v["distribution"][0]["sha256"] = json!("nope"));
        assert!(
            e.contains("distribution[0].sha256") && e.contains("nope"),
            "{e}"
        );
        let e = with(&|v| v["distribution"][0]["contentUrl"] = json!("../x"));
        assert!(e.contains("\"../x\" is refused"), "{e}");
        let e = with(&|v| v["distribution"][0]["encodingFormat"] = json!("application/x-parquet"));
        assert!(e.contains("x-parquet"), "{e}");
        let e = with(&|v| v["distribution"][0]["encodingFormat"] = json!("text/plain"));
        assert!(e.contains("would be read as JSON Lines"), "{e}");
        let e = with(&|v| v["distribution"][0]["@type"] = json!("cr:FileSet"));
        assert!(e.contains("FileSet"), "{e}");
        let e = with(&|v| v["conformsTo"] = json!("http://example.org/"));
        assert!(e.contains("conformsTo"), "{e}");
        let e = with(&|v| v["distribution"] = json!([]));
        assert!(e.contains("no FileObject"), "{e}");
        assert!(matches!(parse(b"{"), Err(CroissantError::Json(_))));
        assert!(matches!(parse(b"[]"), Err(CroissantError::NotCroissant(_))));
        let deep = "[".repeat(100_000);
        assert!(parse(deep.as_bytes()).is_err());
        let big = vec![b' '; MAX_CROISSANT_BYTES as usize + 1];
        assert!(matches!(parse(&big), Err(CroissantError::TooLarge(_))));
        // A bad name or licence is an error only when the command line gives none.
        let mut v = good.clone();
        v["name"] = json!("My Dataset!");
        v["agora:license"] = Value::Null;
        v["license"] = json!("https://example.org/licence");
        let c = parse(v.to_string().as_bytes()).unwrap();
        let e = c.meta(&Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("--name"), "{e}");
        let e = c
            .meta(&Overrides {
                name: Some("ok".into()),
                ..Overrides::default()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("--license") && e.contains("example.org"), "{e}");
    }

    #[test]
    fn an_export_imports_back_to_the_same_roots_and_a_changed_byte_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let input = home.path().join("in.jsonl");
        std::fs::write(
            &input,
            "{\"id\":\"a\",\"text\":\"one\",\"created\":\"2020\"}\n\
             {\"id\":\"b\",\"text\":\"two\",\"x\":[1,2.5,{\"k\":null}]}\n",
        )
        .unwrap();
        let store = DatasetStore::open(&home.path().join("datasets"));
        let meta = Meta {
            name: "d".into(),
            license: "MIT OR Apache-2.0".into(),
            source: "somewhere".into(),
            contributors: vec![("k".into(), None), ("k2".into(), Some("Bob".into()))],
            ..Meta::default()
        };
        let m = store.ingest(&meta, &[input], false, &mut ()).unwrap();
        let out = home.path().join("out");
        let f = export(&store, &m, &out, Some(b"statement")).unwrap();
        assert_eq!(f.columns, ["id", "text", "created"]);
        assert_eq!(f.numeric, ["created"]);
        let (c, dir) = read(&out.join(METADATA_FILE)).unwrap();
        let inputs = check_files(&c, &dir).unwrap();
        let back = c.meta(&Overrides::default()).unwrap();
        assert_eq!(
            (&back.name, &back.license, &back.source, &back.contributors),
            (&meta.name, &meta.license, &meta.source, &meta.contributors)
        );
        let other = DatasetStore::open(&home.path().join("other"));
        let m2 = other.ingest(&back, &inputs, false, &mut ()).unwrap();
        assert_eq!(
            (&m2.record_root, &m2.id_root, m2.records),
            (&m.record_root, &m.id_root, 2)
        );
        let p = out.join(RECORDS_FILE);
        let mut b = std::fs::read(&p).unwrap();
        b[3] ^= 1;
        std::fs::write(&p, b).unwrap();
        let e = check_files(&c, &dir).unwrap_err();
        assert!(
            matches!(&e, CroissantError::Digest { file, expected, .. }
                if file == RECORDS_FILE && *expected == f.sha256),
            "{e}"
        );
    }

    #[test]
    fn dates_are_civil() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(date_of(t).unwrap(), "2026-11-18");
        assert_eq!(date_of(std::time::UNIX_EPOCH).unwrap(), "1970-01-01");
    }
}
