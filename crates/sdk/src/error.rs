//! The one error type of the SDK. Every message names what is wrong (the variable, the dataset and version, the
//! RPC and the addresses tried), so a training program can print it as is and exit.

use std::path::PathBuf;

use aidos_blob::BlobError;

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// A variable of the task environment contract is not set (the program was not started by an aidos worker).
    #[error("environment variable {var} is not set (the aidos worker sets it for every task; see aidos_sdk docs)")]
    MissingEnv { var: &'static str },

    /// A variable of the task environment contract is set but unusable.
    #[error("environment variable {var}={value:?} is malformed: {problem}")]
    BadEnv { var: &'static str, value: String, problem: String },

    /// A dataset reference that is neither `NAME` nor `NAME@vN`.
    #[error("bad dataset reference {reference:?}: {problem} (expected NAME or NAME@vN, e.g. mnist@v3)")]
    BadDatasetRef { reference: String, problem: String },

    /// The cluster has no such dataset (or no such version of it).
    #[error("dataset {reference} not found: {message}")]
    DatasetNotFound { reference: String, message: String },

    /// A dataset whose manifest or blobs cannot be loaded (unknown split, inconsistent chunk sizes, missing blob).
    #[error("dataset {dataset}: {problem}")]
    Dataset { dataset: String, problem: String },

    /// The scheduler refused a write of this attempt (FAILED_PRECONDITION, or the job is gone): the attempt is
    /// stale — it was declared lost, cancelled or superseded by a newer attempt. The program should stop.
    #[error("this attempt is stale (refused by the scheduler): {0}")]
    Fenced(String),

    /// No scheduler answered within the retry budget (~30 s, enough for a leader failover).
    #[error("{rpc}: no scheduler answered within {secs}s (tried {addrs}); last error: {last}")]
    Unavailable { rpc: &'static str, secs: u64, addrs: String, last: String },

    /// The scheduler answered with an error that retrying cannot fix.
    #[error("{rpc} failed ({code:?}): {message}")]
    Rpc { rpc: &'static str, code: tonic::Code, message: String },

    /// The blob store (AIDOS_BLOB_DIR) failed: missing or corrupt blob, io error.
    #[error("blob store at {}: {source}", root.display())]
    Blob {
        root: PathBuf,
        #[source]
        source: BlobError,
    },

    /// A collective of the data-parallel ring failed (a peer died, timed out or disagreed); the gang restarts.
    #[error("{0}")]
    Collective(#[from] crate::collective::CollectiveError),

    /// The ranks of the gang did not all reach the rendezvous in time.
    #[error("rendezvous of job {job} (generation {generation}): {problem}")]
    Rendezvous { job: String, generation: u32, problem: String },

    /// The SDK's internal runtime could not be started.
    #[error("cannot start the SDK runtime: {0}")]
    Runtime(std::io::Error),
}

impl SdkError {
    /// Whether this error means the attempt is stale and the program should stop.
    pub fn is_fenced(&self) -> bool {
        matches!(self, SdkError::Fenced(_))
    }
}

pub type Result<T, E = SdkError> = std::result::Result<T, E>;
