//! The one error type of the crate. Every message names what is wrong and where: the file, the byte offset or
//! line/column, and what was expected versus found, so a CLI can print it as is.

use std::path::PathBuf;

use aidos_blob::BlobError;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// An input (file on disk, decompressed stream, or the decoded table) over the documented limit.
    #[error("{}: {what} is {size} bytes, over the limit of {max} bytes", path.display())]
    TooLarge { path: PathBuf, what: &'static str, size: u64, max: u64 },

    #[error("{} (IDX), byte {offset}: {problem}", path.display())]
    Idx { path: PathBuf, offset: u64, problem: String },

    /// `line` is 1-based and counts the header line.
    #[error("{} (CSV), line {line}: {problem}", path.display())]
    Csv { path: PathBuf, line: u64, problem: String },

    #[error("{} (NPY), byte {offset}: {problem}", path.display())]
    Npy { path: PathBuf, offset: u64, problem: String },

    #[error("label count mismatch: {} holds {rows} rows but {} holds {labels} labels", features.display(), labels_file.display())]
    LabelCount { features: PathBuf, labels_file: PathBuf, rows: u64, labels: u64 },

    #[error("invalid dataset name {0:?}: expected 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    BadName(String),

    #[error("bad split spec {spec:?}: {problem}")]
    SplitSpec { spec: String, problem: String },

    #[error("unknown split {name:?} (known splits: {known})")]
    UnknownSplit { name: String, known: String },

    /// Could not work out which files/format a path means.
    #[error("{}: {problem}", path.display())]
    Source { path: PathBuf, problem: String },

    /// A well-formed input that cannot become a dataset (no rows, bad options, ...).
    #[error("invalid input: {0}")]
    Invalid(String),

    /// A manifest that does not match its blobs (or itself): wrong chunk sizes, row counts, dtype.
    #[error("dataset {name}: manifest inconsistent: {problem}")]
    Manifest { name: String, problem: String },

    #[error("blob store: {0}")]
    Blob(#[from] BlobError),
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io { path: path.to_path_buf(), source }
}
