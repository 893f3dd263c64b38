//! aidos worker agent: registers with the scheduler leader, heartbeats, runs assigned tasks through a
//! per-task shim process, streams their logs and reports their status, and adopts still-running tasks
//! after its own restart.
//!
//! Modules: [`resources`] (capacity detection), [`identity`] (worker id), [`connection`] (leader
//! following), [`agent`] (register / heartbeat / assignments), [`runner`] (one supervisor per attempt),
//! [`logs`] (log shipping), [`logblob`] (an ended attempt's output as a blob), [`records`] (on-disk attempt
//! records, reconciliation, task directory cleanup), [`shim`] (the `aidos task-shim` process), [`process`]
//! (process groups and signals).
use std::collections::BTreeMap;
use std::path::PathBuf;

pub mod agent;
pub mod connection;
mod error;
pub mod identity;
pub mod join;
pub mod logblob;
pub mod logs;
pub mod probe;
pub mod process;
pub mod records;
pub mod resources;
pub mod runner;
pub mod shim;

pub use error::WorkerError;
pub use shim::{run_shim, shim_main};

/// The CLI's default for [`WorkerConfig::max_tasks`]: kubelet's default `--max-pods`.
pub const DEFAULT_MAX_TASKS: u32 = 110;

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
    /// Most tasks the scheduler places on this worker at once, whatever they request (0: no limit). Tiny jobs
    /// claim so little CPU that, without it, thousands start at once and starve the worker's own heartbeats.
    pub max_tasks: u32,
    /// The executable used as the per-task shim (`<exe> task-shim ...`); normally the `aidos` binary
    /// itself. Empty (the default): the current executable. Train jobs run `<shim_exe> train-run`.
    pub shim_exe: PathBuf,
    /// Root of a local-directory blob store shared with the cluster (datasets, checkpoints, model weights; NFS,
    /// or the same machine as the scheduler), given to every task as `AIDOS_BLOB_DIR`. Empty (the default): the
    /// worker keeps a cache of at most `blob_cache_max_bytes` in `<data_dir>/blob-cache`, and its tasks fetch
    /// blobs through the scheduler's blob service.
    pub blob_dir: PathBuf,
    /// An S3-compatible bucket holding the cluster's blobs: with it (and an empty `blob_dir`), the cache fills
    /// straight from the bucket instead of through the blob service; tasks get it as `AIDOS_S3_*` / `AWS_*`.
    pub s3: Option<aidos_blob::S3Config>,
    /// Size bound of that cache (least recently used blobs are evicted first).
    pub blob_cache_max_bytes: u64,
    /// Keep an attempt's working directory (`<data_dir>/tasks/<attempt>/`: its files, `stdout.log`, `stderr.log`)
    /// after its final status was acknowledged, for debugging. False (the default): it is removed then.
    pub keep_task_dirs: bool,
    /// Host other machines reach this worker's tasks at (serve replicas advertise `host:port` with it), given to
    /// tasks as `AIDOS_ADVERTISE_HOST`. Empty (the default): `127.0.0.1`.
    pub advertise_host: String,
    /// What the worker presents to the scheduler: a worker token (role `worker`) or the cluster's root token.
    /// Tasks get their job's token from the scheduler instead.
    pub credentials: aidos_api::auth::Credentials,
    /// A cluster that serves TLS (`credentials.tls`): the one-time join token a new worker exchanges for its
    /// certificate (kept in `<data_dir>/tls.pem` and `tls.key` afterwards, so later starts need none).
    pub join_token: Option<String>,
    /// Stop every task this worker runs when it stops (SIGTERM, SIGKILL after the grace period), instead of
    /// leaving them to be adopted by its next run: for `aidos up`, whose tasks should not outlive it.
    pub stop_tasks_on_exit: bool,
}

/// Runs the worker until `shutdown` resolves. Tasks keep running after it returns; the next run with
/// the same `data_dir` adopts them.
pub async fn run(cfg: WorkerConfig, shutdown: impl std::future::Future<Output = ()> + Send) -> Result<(), WorkerError> {
    agent::run(cfg, shutdown).await
}
