//! What to ingest: the input file(s) and their format, and [`Source::detect`] which works it out from a path.

use std::path::{Path, PathBuf};

use crate::error::{DatasetError, Result, io_err};
use crate::table::{Table, is_gzip};

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// An idx3 images file and an idx1 labels file (each raw or gzipped).
    Idx { images: PathBuf, labels: PathBuf },
    /// A CSV with a header; `label_column` None: `label` if present, else the last column.
    Csv { path: PathBuf, label_column: Option<String> },
    /// A features `.npy` and a labels `.npy`.
    Npy { features: PathBuf, labels: PathBuf },
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

fn source_err(path: &Path, problem: impl Into<String>) -> DatasetError {
    DatasetError::Source { path: path.into(), problem: problem.into() }
}

impl Source {
    /// Picks the format and files for `path`:
    /// - a directory must hold exactly one `*idx3*` and one `*idx1*` file (IDX), or `X.npy` + `y.npy` /
    ///   `features.npy` + `labels.npy` (NPY), or exactly one `*.csv` (CSV);
    /// - a file: `.csv` → CSV (labels inside, so `labels` must be None); `.npy` or the NPY magic → NPY; a name
    ///   containing `idx3` or the IDX u8 3-dim magic (raw or gzipped) → IDX. For NPY and IDX, `labels` names the
    ///   labels file; if None, the sibling named by convention is used when it exists (`y.npy` for `X.npy`,
    ///   `labels.npy` for `features.npy`, `*labels-idx1*` / `*idx1*` for `*images-idx3*` / `*idx3*`).
    pub fn detect(path: &Path, labels: Option<&Path>) -> Result<Source> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if meta.is_dir() {
            if labels.is_some() {
                return Err(source_err(
                    path,
                    "is a directory: a separate labels file goes with an images/features file, not a directory",
                ));
            }
            return Self::detect_dir(path);
        }
        let name = file_name(path);
        let lower = name.to_ascii_lowercase();
        let head = read_head(path)?;
        if lower.ends_with(".csv") {
            if let Some(l) = labels {
                return Err(source_err(
                    path,
                    format!("is a CSV, which holds its own label column: drop the labels file {}", l.display()),
                ));
            }
            return Ok(Source::Csv { path: path.into(), label_column: None });
        }
        if lower.ends_with(".npy") || crate::npy::is_npy(&head) {
            let labels = match labels {
                Some(l) => l.to_path_buf(),
                None => {
                    let sibling = match name.as_str() {
                        "X.npy" => Some("y.npy"),
                        "x.npy" => Some("y.npy"),
                        "features.npy" => Some("labels.npy"),
                        _ => None,
                    }
                    .map(|s| path.with_file_name(s))
                    .filter(|p| p.is_file());
                    sibling.ok_or_else(|| {
                        source_err(path, "an .npy features file needs its labels .npy (give the labels file)")
                    })?
                }
            };
            return Ok(Source::Npy { features: path.into(), labels });
        }
        let idx_magic = head.starts_with(&[0, 0, 8, 3]);
        if lower.contains("idx3") || idx_magic || (is_gzip(&head) && lower.contains("idx")) {
            let labels = match labels {
                Some(l) => l.to_path_buf(),
                None => {
                    let candidates = [name.replace("images-idx3", "labels-idx1"), name.replace("idx3", "idx1")];
                    candidates
                        .iter()
                        .filter(|c| **c != name)
                        .map(|c| path.with_file_name(c))
                        .find(|p| p.is_file())
                        .ok_or_else(|| {
                            source_err(path, "an IDX images file needs its idx1 labels file (give the labels file)")
                        })?
                }
            };
            return Ok(Source::Idx { images: path.into(), labels });
        }
        Err(source_err(
            path,
            "cannot tell the format: expected a .csv, an .npy (with labels), an IDX images file (*idx3*), or a directory of those",
        ))
    }

    fn detect_dir(dir: &Path) -> Result<Source> {
        let mut files: Vec<String> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let e = e.map_err(io_err(dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && e.path().is_file() {
                files.push(name);
            }
        }
        files.sort();
        let pick = |pred: &dyn Fn(&str) -> bool| files.iter().filter(|f| pred(f)).cloned().collect::<Vec<_>>();
        let idx3 = pick(&|f| f.contains("idx3"));
        let idx1 = pick(&|f| f.contains("idx1"));
        if !idx3.is_empty() || !idx1.is_empty() {
            if idx3.len() != 1 || idx1.len() != 1 {
                return Err(source_err(
                    dir,
                    format!("expected exactly one *idx3* and one *idx1* file, found idx3: {idx3:?}, idx1: {idx1:?}"),
                ));
            }
            return Ok(Source::Idx { images: dir.join(&idx3[0]), labels: dir.join(&idx1[0]) });
        }
        for (x, y) in [("X.npy", "y.npy"), ("x.npy", "y.npy"), ("features.npy", "labels.npy")] {
            if files.iter().any(|f| f == x) && files.iter().any(|f| f == y) {
                return Ok(Source::Npy { features: dir.join(x), labels: dir.join(y) });
            }
        }
        let csvs = pick(&|f| f.to_ascii_lowercase().ends_with(".csv"));
        match csvs.len() {
            1 => Ok(Source::Csv { path: dir.join(&csvs[0]), label_column: None }),
            0 => Err(source_err(
                dir,
                format!(
                    "no dataset files: expected one *idx3* + one *idx1* file, X.npy + y.npy, features.npy + labels.npy, or one .csv; found {files:?}"
                ),
            )),
            _ => Err(source_err(dir, format!("several CSV files {csvs:?}: name the one to ingest"))),
        }
    }

    /// The format name stored in the manifest.
    pub fn format(&self) -> &'static str {
        match self {
            Source::Idx { .. } => "idx",
            Source::Csv { .. } => "csv",
            Source::Npy { .. } => "npy",
        }
    }

    /// The input file names, comma-separated (the manifest's `source`).
    pub fn source_name(&self) -> String {
        match self {
            Source::Idx { images, labels } => format!("{},{}", file_name(images), file_name(labels)),
            Source::Csv { path, .. } => file_name(path),
            Source::Npy { features, labels } => format!("{},{}", file_name(features), file_name(labels)),
        }
    }

    /// Parses and validates the input into memory.
    pub fn read(&self) -> Result<Table> {
        let t = match self {
            Source::Idx { images, labels } => crate::idx::read_idx(images, labels)?,
            Source::Csv { path, label_column } => crate::csv::read_csv(path, label_column.as_deref())?,
            Source::Npy { features, labels } => crate::npy::read_npy(features, labels)?,
        };
        t.validate()?;
        Ok(t)
    }
}

fn read_head(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::with_capacity(8);
    f.by_ref().take(8).read_to_end(&mut buf).map_err(io_err(path))?;
    Ok(buf)
}
