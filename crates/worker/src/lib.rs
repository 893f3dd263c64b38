//! aidos worker agent (skeleton: being implemented).
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct WorkerConfig {
    /// Scheduler addresses (`host:port`), any node of the cluster; the worker finds the leader.
    pub schedulers: Vec<String>,
    /// Worker state (its id, attempt records, task working directories) lives here.
    pub data_dir: PathBuf,
    /// Stable id; None: read from data_dir or generate and persist one.
    pub worker_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Override detected capacity.
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub gpus: Option<u32>,
    /// The executable used as the per-task shim (`<exe> task-shim ...`); normally the `aidos` binary itself.
    pub shim_exe: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("not implemented yet")]
    Todo,
}

/// Runs the worker until `shutdown` resolves.
pub async fn run(_cfg: WorkerConfig, _shutdown: impl std::future::Future<Output = ()> + Send) -> Result<(), WorkerError> {
    Err(WorkerError::Todo)
}
