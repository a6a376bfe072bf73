//! Reading records from the files a user names, streaming (one line in memory at a time).
//!
//! - `*.jsonl`, `*.json`, `*.ndjson`: Dolma JSON Lines, one record per non-empty line;
//! - the same with `.gz` or `.zst` after it: compressed JSON Lines;
//! - any other file: one record whose text is the whole file (UTF-8) and whose id is its path
//!   relative to the directory named (or its file name when a file is named);
//! - a directory: every file under it, in byte order of their relative paths, so the same
//!   tree gives the same dataset on every machine. Hidden files (`.name`) are skipped.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use agora_data::{Record, RecordError};

/// Largest line accepted in a JSON Lines file (a record plus its JSON overhead).
pub const MAX_LINE_BYTES: usize = agora_data::record::MAX_RECORD_BYTES + (1 << 20);

/// Why an input cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A file or directory cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a record.
    #[error("{path}:{line}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Its 1-based line number (0 for a whole-file record).
        line: u64,
        /// What is wrong with it.
        #[source]
        source: RecordError,
    },
    /// A line is not UTF-8.
    #[error("{path}:{line}: not UTF-8")]
    Utf8 {
        /// The file.
        path: PathBuf,
        /// Its 1-based line number (0 for a whole-file record).
        line: u64,
    },
    /// A line longer than [`MAX_LINE_BYTES`].
    #[error("{path}:{line}: a line of more than {MAX_LINE_BYTES} bytes")]
    LineTooLong {
        /// The file.
        path: PathBuf,
        /// Its 1-based line number.
        line: u64,
    },
}

impl InputError {
    /// Whether this is one bad record (skippable with `--skip-bad`), not an unreadable file.
    pub fn is_bad_record(&self) -> bool {
        !matches!(self, InputError::Io { .. })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InputError + '_ {
    move |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every file `inputs` name, expanded and sorted as the module docs say, each with the id a
/// whole-file record would get.
pub fn files(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, InputError> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(io(input))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(input, input, &mut found)?;
            found.sort_by(|a: &(PathBuf, String), b| a.1.as_bytes().cmp(b.1.as_bytes()));
            out.extend(found);
        } else {
            let name = input
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| input.display().to_string());
            out.push((input.clone(), name));
        }
    }
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) -> Result<(), InputError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace(std::path::MAIN_SEPARATOR, "/");
            out.push((path, rel));
        }
    }
    Ok(())
}

/// How a file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    JsonLines,
    Text,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn format_of(path: &Path) -> (Format, Compression) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s.to_string(), Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s.to_string(), Compression::Zstd)
    } else {
        (name, Compression::None)
    };
    let json = [".jsonl", ".json", ".ndjson"]
        .iter()
        .any(|e| stem.ends_with(e));
    let format = if json {
        Format::JsonLines
    } else {
        Format::Text
    };
    (format, compression)
}

fn open(path: &Path, c: Compression) -> Result<Box<dyn Read>, InputError> {
    let f = File::open(path).map_err(io(path))?;
    Ok(match c {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(f).map_err(io(path))?),
    })
}

/// Reads every record of one file, handing each (or its error) to `each`, which says whether
/// to go on. The file's bytes are read once, streaming.
pub fn read_file(
    path: &Path,
    text_id: &str,
    each: &mut dyn FnMut(Result<Record, InputError>) -> bool,
) -> Result<(), InputError> {
    let (format, compression) = format_of(path);
    let reader = open(path, compression)?;
    match format {
        Format::Text => {
            let mut bytes = Vec::new();
            reader
                .take(agora_data::record::MAX_RECORD_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(io(path))?;
            let r = match String::from_utf8(bytes) {
                Ok(text) => {
                    let r = Record::new(text_id, text);
                    r.check().map(|()| r).map_err(|source| InputError::Record {
                        path: path.to_path_buf(),
                        line: 0,
                        source,
                    })
                }
                Err(_) => Err(InputError::Utf8 {
                    path: path.to_path_buf(),
                    line: 0,
                }),
            };
            each(r);
        }
        Format::JsonLines => {
            let mut r = BufReader::with_capacity(1 << 20, reader);
            let mut buf = Vec::new();
            let mut line = 0u64;
            loop {
                buf.clear();
                let n = (&mut r)
                    .take(MAX_LINE_BYTES as u64 + 1)
                    .read_until(b'\n', &mut buf)
                    .map_err(io(path))?;
                if n == 0 {
                    break;
                }
                line += 1;
                if buf.len() > MAX_LINE_BYTES {
                    // Cannot resynchronise inside an over-long line: stop this file.
                    each(Err(InputError::LineTooLong {
                        path: path.to_path_buf(),
                        line,
                    }));
                    return Ok(());
                }
                let Ok(text) = std::str::from_utf8(&buf) else {
                    if !each(Err(InputError::Utf8 {
                        path: path.to_path_buf(),
                        line,
                    })) {
                        return Ok(());
                    }
                    continue;
                };
                if text.trim().is_empty() {
                    continue;
                }
                let rec = Record::from_json(text).map_err(|source| InputError::Record {
                    path: path.to_path_buf(),
                    line,
                    source,
                });
                if !each(rec) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(path: &Path, id: &str) -> Vec<Result<Record, String>> {
        let mut out = Vec::new();
        read_file(path, id, &mut |r| {
            out.push(r.map_err(|e| e.to_string()));
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn formats_by_name() {
        assert_eq!(
            format_of(Path::new("a/b.jsonl.zst")),
            (Format::JsonLines, Compression::Zstd)
        );
        assert_eq!(
            format_of(Path::new("x.JSON.gz")),
            (Format::JsonLines, Compression::Gzip)
        );
        assert_eq!(
            format_of(Path::new("notes.txt")),
            (Format::Text, Compression::None)
        );
    }

    #[test]
    fn json_lines_plain_gzip_and_zstd_read_alike_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let body = "{\"id\":\"a\",\"text\":\"one\"}\n\n{\"id\":\"b\",\"text\":\"two\"}\nnot json\n";
        let plain = dir.path().join("d.jsonl");
        std::fs::write(&plain, body).unwrap();
        let gz = dir.path().join("d.jsonl.gz");
        let mut e = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        e.write_all(body.as_bytes()).unwrap();
        e.finish().unwrap();
        let zst = dir.path().join("d.jsonl.zst");
        std::fs::write(&zst, zstd::encode_all(body.as_bytes(), 3).unwrap()).unwrap();
        let want = collect(&plain, "");
        assert_eq!(want.len(), 3);
        assert_eq!(want[0].as_ref().unwrap().id, "a");
        assert_eq!(want[1].as_ref().unwrap().text, "two");
        let err = want[2].as_ref().unwrap_err();
        assert!(err.contains("d.jsonl:4: not JSON"), "{err}");
        let strip = |v: Vec<Result<Record, String>>| -> Vec<Option<Record>> {
            v.into_iter().map(Result::ok).collect()
        };
        assert_eq!(strip(collect(&gz, "")), strip(want.clone()));
        assert_eq!(strip(collect(&zst, "")), strip(want));
    }

    #[test]
    fn a_directory_is_read_in_path_order_with_relative_ids() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/z.txt"), "zed").unwrap();
        std::fs::write(dir.path().join("a.txt"), "ay").unwrap();
        std::fs::write(dir.path().join(".hidden"), "no").unwrap();
        let f = files(&[dir.path().to_path_buf()]).unwrap();
        let ids: Vec<&str> = f.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(ids, ["a.txt", "b/z.txt"]);
        let r = collect(&f[1].0, &f[1].1);
        assert_eq!(r[0].as_ref().unwrap(), &Record::new("b/z.txt", "zed"));
        std::fs::write(dir.path().join("bad.txt"), [0xff, 0xfe]).unwrap();
        let r = collect(&dir.path().join("bad.txt"), "bad.txt");
        assert!(r[0].as_ref().unwrap_err().contains("not UTF-8"));
    }
}
