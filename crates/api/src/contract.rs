//! Contracts shared by the processes that must agree on them: the task environment a worker gives every task
//! (and the SDK / built-in trainer read), and the one spelling of a scheduler address. One definition here, so the
//! setting and the reading side cannot drift apart. (How a scheduler client treats failures is [`crate::client`].)

/// The file a serving replica writes in its working directory (`$AIDOS_WORK_DIR`) once it serves:
/// `{"http": "HOST:PORT", "grpc": "HOST:PORT"}`, written atomically. The worker probes the HTTP address.
pub const REPLICA_ENDPOINTS_FILE: &str = "replica.json";

/// The environment variables of every task (set by the worker, read by `aidos-sdk`).
pub mod task_env {
    pub const JOB_ID: &str = "AIDOS_JOB_ID";
    pub const RANK: &str = "AIDOS_RANK";
    pub const WORLD_SIZE: &str = "AIDOS_WORLD_SIZE";
    pub const ATTEMPT: &str = "AIDOS_ATTEMPT";
    pub const FENCING_TOKEN: &str = "AIDOS_FENCING_TOKEN";
    pub const WORKER_ID: &str = "AIDOS_WORKER_ID";
    /// Comma-separated scheduler addresses.
    pub const SCHEDULER: &str = "AIDOS_SCHEDULER";
    pub const WORK_DIR: &str = "AIDOS_WORK_DIR";
    pub const BLOB_DIR: &str = "AIDOS_BLOB_DIR";
    /// Set (to a byte count) when `BLOB_DIR` is the worker's bounded cache in front of the cluster's blob service
    /// (reached at `SCHEDULER`) rather than the cluster's store itself (a directory shared with the scheduler).
    pub const BLOB_CACHE_MAX_BYTES: &str = "AIDOS_BLOB_CACHE_MAX_BYTES";
    /// `train` jobs only (read by the built-in trainer).
    pub const TRAIN_DATASET: &str = "AIDOS_TRAIN_DATASET";
    pub const TRAIN_CONFIG: &str = "AIDOS_TRAIN_CONFIG";
    pub const TRAIN_REGISTER_AS: &str = "AIDOS_TRAIN_REGISTER_AS";
    pub const TRAIN_SPLIT: &str = "AIDOS_TRAIN_SPLIT";
    pub const EVAL_SPLIT: &str = "AIDOS_EVAL_SPLIT";
    /// The job a train job resumes from when it has no checkpoint of its own (`TrainSpec.resume_from_job`).
    pub const TRAIN_RESUME_FROM: &str = "AIDOS_TRAIN_RESUME_FROM";
    /// Host other machines reach this worker's tasks at (serve replicas advertise their endpoints with it).
    pub const ADVERTISE_HOST: &str = "AIDOS_ADVERTISE_HOST";
    /// `serve` replicas only (read by `aidos serve replica`).
    pub const SERVE_DEPLOYMENT: &str = "AIDOS_SERVE_DEPLOYMENT";
    /// `NAME:VERSION` of the registry model.
    pub const SERVE_MODEL: &str = "AIDOS_SERVE_MODEL";
    pub const SERVE_RUNTIME: &str = "AIDOS_SERVE_RUNTIME";
    pub const SERVE_MAX_BATCH: &str = "AIDOS_SERVE_MAX_BATCH";
    pub const SERVE_MAX_DELAY_US: &str = "AIDOS_SERVE_MAX_DELAY_US";
    pub const SERVE_INSTANCES: &str = "AIDOS_SERVE_INSTANCES";
    pub const SERVE_MAX_QUEUE: &str = "AIDOS_SERVE_MAX_QUEUE";
    /// `export` jobs only (read by `aidos export-run`).
    pub const EXPORT_MODEL: &str = "AIDOS_EXPORT_MODEL";
    pub const EXPORT_QUANTIZE: &str = "AIDOS_EXPORT_QUANTIZE";
}

/// The metric in which each rank of a data-parallel job reports its own throughput (`rank2.samples_per_sec`):
/// written by the built-in trainer, read back per rank by `aidos job status`.
pub fn rank_throughput_metric(rank: u32) -> String {
    format!("rank{rank}.samples_per_sec")
}

/// The rank a [`rank_throughput_metric`] name belongs to, or None for any other metric.
pub fn rank_of_throughput_metric(name: &str) -> Option<u32> {
    name.strip_prefix("rank")?.strip_suffix(".samples_per_sec")?.parse().ok()
}

/// `host:port` → `http://host:port`; keeps an explicit scheme; strips a trailing `/`.
pub fn normalize_addr(addr: &str) -> String {
    let a = addr.trim().trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") { a.to_string() } else { format!("http://{a}") }
}

/// The artifact of a model version (`ModelVersion.artifacts`) that holds its evaluation on its training job's eval
/// split: JSON with `dataset`, `split`, `accuracy`, `loss`, `perClass` (`precision`, `recall`, `support`) and
/// `confusion[true][predicted]`. Written by the built-in trainer; read by the dashboard.
pub const EVALUATION_ARTIFACT: &str = "evaluation";
