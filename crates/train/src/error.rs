//! The one error type of this crate.
//!
//! Invariant: every message names the thing that is wrong (a config field path such as
//! `model.layers[1]`, a file, a dataset dimension), so a user can act on it without a debugger.

use thiserror::Error;

/// Errors returned by `aidos-train`.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A config value is out of range or inconsistent. `field` is a dotted path
    /// (`model.layers[1]`, `optimizer.lr`).
    #[error("{field}: {reason}")]
    InvalidConfig { field: String, reason: String },

    /// The job spec names a model this crate does not know.
    #[error("unknown model \"{name}\" (known: {known})")]
    UnknownModel { name: String, known: &'static str },

    /// The job spec could not be parsed at all (syntax, missing or unknown field).
    #[error("config: {0}")]
    ConfigParse(String),

    /// An IDX file is malformed (bad magic, truncated, inconsistent dims).
    #[error("IDX {source_name}: {reason}")]
    Idx { source_name: String, reason: String },

    /// A dataset is internally inconsistent or does not fit the model.
    #[error("dataset: {0}")]
    Dataset(String),

    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The requested backend was not compiled in or has no device.
    #[error("backend: {0}")]
    Backend(String),

    /// A checkpoint (or model weights blob) is corrupt or does not match the config.
    #[error("checkpoint: {0}")]
    Checkpoint(String),

    /// A training hook failed (e.g. the checkpoint could not be persisted).
    #[error("hook: {0}")]
    Hook(String),

    /// A collective of data-parallel training failed (a rank died, timed out or disagreed).
    #[error("data-parallel training: {0}")]
    Collective(#[from] aidos_sdk::CollectiveError),
}

/// Convenience alias.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TrainError {
    TrainError::InvalidConfig { field: field.into(), reason: reason.into() }
}
