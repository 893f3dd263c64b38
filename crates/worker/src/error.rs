//! The worker's error type. Most failures inside the agent are retried or logged; only those that stop
//! the worker as a whole (bad configuration, an unusable data dir, a scheduler that refuses the worker
//! outright) surface from [`crate::run`].

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration cannot work (no scheduler address, an unparsable address, ...).
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// File system trouble, with the path it happened on.
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record or state file that cannot be (de)serialized.
    #[error("bad state file {path}: {source}", path = path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The scheduler answered with an error that retrying will not fix.
    #[error("scheduler refused {what}: {status}")]
    Refused {
        what: &'static str,
        #[source]
        status: tonic::Status,
    },
    /// Starting a task (or its shim) failed.
    #[error("cannot start task {attempt}: {reason}")]
    Spawn { attempt: String, reason: String },
    /// The cluster's blob store failed (writing an attempt's log blob).
    #[error("blob store: {0}")]
    Blob(#[from] aidos_blob::BlobError),
    /// A blocking helper task panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
}

impl WorkerError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WorkerError::Io { op, path: path.into(), source }
    }
}

impl From<tokio::task::JoinError> for WorkerError {
    fn from(e: tokio::task::JoinError) -> Self {
        WorkerError::Internal(format!("blocking task failed: {e}"))
    }
}
