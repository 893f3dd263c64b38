//! Argument types and parsers shared by several commands: the global flags, value parsers for clap, and the
//! flag groups more than one command flattens (batching, placement, worker resources). A leaf: it uses no other
//! CLI module.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aidos_serve::BatchConfig;
use aidos_worker::WorkerConfig;
use anyhow::Context;
use clap::{Args, ValueEnum};

/// Flags every command accepts.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Scheduler addresses, comma-separated; any node of the cluster, tried in order
    #[arg(
        long,
        env = "AIDOS_SCHEDULER",
        global = true,
        help_heading = "Global options",
        value_delimiter = ',',
        default_value = aidos_api::DEFAULT_SCHEDULER_ADDR
    )]
    pub scheduler: Vec<String>,
    /// Output format: aligned columns for people, or one JSON document (before the command: `aidos -o json job list`)
    #[arg(short, long, env = "AIDOS_OUTPUT", help_heading = "Global options", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Log filter, e.g. `info`, `debug` or `aidos_scheduler=debug` (default: RUST_LOG, else info for servers and
    /// warn for client commands)
    #[arg(long, env = "AIDOS_LOG_LEVEL", global = true, help_heading = "Global options")]
    pub log_level: Option<String>,
    /// A blob store directory shared with the cluster (datasets, checkpoints, model weights). Unset: client
    /// commands reach the cluster's blob store through the scheduler (--scheduler is enough, from any machine);
    /// `aidos server` keeps blobs in <data-dir>/blobs; `aidos worker` keeps a bounded cache in <data-dir>/blob-cache
    #[arg(long, env = "AIDOS_BLOB_DIR", global = true, help_heading = "Global options")]
    pub blob_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// The blob store named by `--blob-dir`.
pub fn blob_store(g: &Global) -> anyhow::Result<Arc<dyn aidos_blob::BlobStore>> {
    Ok(match &g.blob_dir {
        Some(dir) => Arc::new(
            aidos_blob::LocalDirStore::open(dir)
                .map_err(|e| anyhow::anyhow!("opening the blob store at {}: {e}", dir.display()))?,
        ),
        None => Arc::new(
            aidos_blob::ServiceStore::connect(&g.scheduler)
                .map_err(|e| anyhow::anyhow!("reaching the cluster's blob store: {e}"))?,
        ),
    })
}

/// Splits `NAME@vN` / `NAME` into (name, version; 0 = latest).
pub fn parse_dataset_ref(s: &str) -> anyhow::Result<(String, u32)> {
    match s.split_once('@') {
        None => Ok((s.to_string(), 0)),
        Some((n, v)) => {
            let num = v.strip_prefix('v').unwrap_or(v);
            let v: u32 = num.parse().map_err(|_| anyhow::anyhow!("`{s}`: expected NAME@vN, e.g. mnist@v1"))?;
            anyhow::ensure!(v > 0, "`{s}`: versions start at v1");
            Ok((n.to_string(), v))
        }
    }
}

/// `k=v` for clap.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{s}` is not key=value")),
    }
}

/// Collects `k=v` pairs into a map (a later pair wins).
pub fn kv_map(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

/// Cores (`2`, `0.5`, `500m`) to millicores, for clap.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    aidos_api::spec::parse_cpu_str(s)
}

/// Bytes with an optional unit (`4Gi`, `512Mi`, `1000000`), for clap.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    aidos_api::spec::parse_bytes_str(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlacementArg {
    /// Pack replicas onto as few workers as possible
    Binpack,
    /// Spread replicas across as many workers as possible
    Spread,
}

#[derive(Args, Debug, Clone)]
pub struct BatchArgs {
    /// Most samples per batch (a request with more rows is refused)
    #[arg(long, env = "AIDOS_SERVE_MAX_BATCH", default_value_t = 32)]
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch, in microseconds
    #[arg(long, env = "AIDOS_SERVE_MAX_DELAY_US", default_value_t = 500)]
    pub max_delay_us: u64,
    /// Batch sizes dispatched as soon as they are reached and nothing else waits (comma-separated)
    #[arg(long, env = "AIDOS_SERVE_PREFERRED_BATCH", value_delimiter = ',')]
    pub preferred_batch: Vec<usize>,
    /// Requests allowed to wait per model; more are refused at once (HTTP 429 / RESOURCE_EXHAUSTED)
    #[arg(long, env = "AIDOS_SERVE_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: usize,
    /// Model executors running batches in parallel, per model version
    #[arg(long, env = "AIDOS_SERVE_INSTANCES", default_value_t = 1)]
    pub instances: usize,
    /// Per-request deadline in milliseconds (queue + compute)
    #[arg(long, env = "AIDOS_SERVE_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
}

impl BatchArgs {
    pub fn config(&self) -> anyhow::Result<BatchConfig> {
        let c = BatchConfig {
            max_batch_size: self.max_batch,
            max_queue_delay: Duration::from_micros(self.max_delay_us),
            preferred_batch_sizes: self.preferred_batch.clone(),
            max_queue_size: self.max_queue,
            instances: self.instances,
            request_timeout: Duration::from_millis(self.timeout_ms),
        };
        c.validate().map_err(|e| anyhow::anyhow!("batching: {e}"))?;
        Ok(c)
    }
}

/// What a worker offers; shared by `aidos worker` and `aidos up`.
#[derive(Args, Debug)]
pub struct WorkerResources {
    /// Worker labels as k=v, comma-separated (matched by job constraints)
    #[arg(long = "labels", env = "AIDOS_WORKER_LABELS", value_delimiter = ',', value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
    /// CPU to offer, in cores (`2`, `0.5`) or millicores (`500m`); default: detected
    #[arg(long = "cpus", env = "AIDOS_WORKER_CPUS", value_parser = parse_cpu)]
    pub cpu_millis: Option<u64>,
    /// Memory to offer (`4Gi`, `512Mi`, bytes); default: detected
    #[arg(long = "memory", env = "AIDOS_WORKER_MEMORY", value_parser = parse_bytes)]
    pub memory_bytes: Option<u64>,
    /// GPUs to offer; default: detected
    #[arg(long = "gpus", env = "AIDOS_WORKER_GPUS")]
    pub gpus: Option<u32>,
    /// Host or IP other machines reach this worker at; serve replicas advertise their endpoints with it
    #[arg(long, env = "AIDOS_WORKER_ADVERTISE_HOST", default_value = "127.0.0.1")]
    pub advertise_host: String,
    /// Without --blob-dir: most bytes the worker's blob cache (<data-dir>/blob-cache) keeps, e.g. 10Gi
    #[arg(long, env = "AIDOS_WORKER_CACHE_MAX_BYTES", value_parser = parse_bytes, default_value = "10Gi")]
    pub cache_max_bytes: u64,
}

impl WorkerResources {
    pub fn into_config(
        self,
        schedulers: Vec<String>,
        data_dir: PathBuf,
        worker_id: Option<String>,
        blob_dir: PathBuf,
    ) -> anyhow::Result<WorkerConfig> {
        let shim_exe = std::env::current_exe().context("finding the aidos executable (the task shim)")?;
        Ok(WorkerConfig {
            schedulers,
            data_dir,
            worker_id,
            labels: kv_map(self.labels),
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            gpus: self.gpus,
            shim_exe,
            blob_dir,
            blob_cache_max_bytes: self.cache_max_bytes,
            advertise_host: self.advertise_host,
        })
    }
}
