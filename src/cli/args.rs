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
    /// API token to present (`aidos_<id>_<secret>`). Unset: the one `aidos login` saved, else the admin token of
    /// an `aidos up` in this directory (./.aidos/admin.token, or $AIDOS_DATA_DIR/admin.token)
    #[arg(long, env = "AIDOS_TOKEN", global = true, hide_env_values = true, help_heading = "Global options")]
    pub token: Option<String>,
    /// Project the command acts in (jobs, datasets, models, ... belong to one); default: `default`
    #[arg(long, env = "AIDOS_PROJECT", global = true, help_heading = "Global options")]
    pub project: Option<String>,
    /// The cluster CA's certificate (ca.pem from `aidos cert init`): connect to the schedulers over TLS, trusting
    /// it. Unset: plain TCP (`aidos up`, and clusters started with --insecure)
    #[arg(long, env = "AIDOS_CA_CERT", global = true, help_heading = "Global options")]
    pub ca_cert: Option<PathBuf>,
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
    #[arg(long, env = "AIDOS_BLOB_DIR", global = true, help_heading = "Blob store options")]
    pub blob_dir: Option<PathBuf>,
    /// Declares --blob-dir a directory every node of the cluster mounts (NFS, a cluster filesystem): required for
    /// a directory store in a cluster of more than one scheduler node
    #[arg(long, env = "AIDOS_BLOB_DIR_SHARED", global = true, help_heading = "Blob store options")]
    pub blob_dir_shared: bool,
    /// Keep blobs in this S3-compatible bucket (the store for multi-node clusters). Credentials come from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), else the default AWS chain. Workers given it
    /// read blobs straight from the bucket into their cache; client commands given it use the bucket directly
    #[arg(long, env = "AIDOS_S3_BUCKET", global = true, help_heading = "Blob store options")]
    pub s3_bucket: Option<String>,
    /// S3 endpoint URL for a self-hosted store, e.g. http://10.0.0.5:8333 (path-style; http:// allowed); default:
    /// AWS S3 in --s3-region
    #[arg(long, env = "AWS_ENDPOINT_URL", global = true, help_heading = "Blob store options")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1)
    #[arg(long, env = "AWS_REGION", global = true, help_heading = "Blob store options")]
    pub s3_region: Option<String>,
    /// Key prefix inside the bucket, so several clusters can share one bucket
    #[arg(long, env = "AIDOS_S3_PREFIX", global = true, help_heading = "Blob store options")]
    pub s3_prefix: Option<String>,
    /// A put of a blob the bucket already holds re-uploads it once the object is older than this many seconds, so
    /// garbage collection sees it as fresh (S3 cannot touch an object in place); must stay below the scheduler's
    /// --blob-gc-grace-secs
    #[arg(long, env = "AIDOS_S3_REFRESH_AFTER_SECS", global = true, help_heading = "Blob store options")]
    pub s3_refresh_after_secs: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Where `aidos login` keeps the token it saved: $XDG_CONFIG_HOME/aidos/token, else ~/.config/aidos/token.
pub fn login_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("aidos").join("token"))
}

/// Admin token files of an `aidos up` on this machine that the CLI picks up by itself, in order.
pub fn local_admin_token_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("AIDOS_DATA_DIR").filter(|v| !v.is_empty()) {
        v.push(PathBuf::from(d).join("admin.token"));
    }
    v.push(PathBuf::from("./.aidos/admin.token"));
    v
}

/// What this CLI presents: --token / AIDOS_TOKEN, else the token `aidos login` saved, else a local `aidos up`'s
/// admin token; and --project; over TLS trusting --ca-cert when given.
pub fn credentials(g: &Global) -> anyhow::Result<aidos_api::auth::Credentials> {
    let token = g.token.clone().filter(|t| !t.trim().is_empty()).or_else(|| {
        login_file()
            .into_iter()
            .chain(local_admin_token_files())
            .find_map(|f| aidos_api::auth::read_token_file(&f).ok())
    });
    let tls = match &g.ca_cert {
        Some(p) => Some(aidos_api::tls::ClientTls::load(p).context("--ca-cert")?),
        None => None,
    };
    Ok(aidos_api::auth::Credentials { token, project: g.project.clone().filter(|p| !p.trim().is_empty()), tls })
}

/// The store the blob flags name: an S3 bucket (`--s3-bucket`), a directory (`--blob-dir`), or None.
pub fn store_config(g: &Global) -> anyhow::Result<Option<aidos_blob::StoreConfig>> {
    use aidos_blob::{S3Config, StoreConfig};
    match (&g.blob_dir, &g.s3_bucket) {
        (Some(dir), Some(bucket)) => anyhow::bail!(
            "both --blob-dir ({}) and --s3-bucket ({bucket}) are given: blobs live in one store, give one of them",
            dir.display()
        ),
        (Some(dir), None) => Ok(Some(StoreConfig::Dir { path: dir.clone(), shared: g.blob_dir_shared })),
        (None, Some(bucket)) => {
            anyhow::ensure!(!g.blob_dir_shared, "--blob-dir-shared declares a --blob-dir shared; none is given");
            // Credentials and the other AWS variables from the environment; the flags win over it. The bucket is
            // looked up as given by the flag: `from_lookup` reads nothing (credentials included) without one, and
            // `--s3-bucket` does not set AIDOS_S3_BUCKET.
            let mut c = S3Config::from_lookup(|k| {
                if k == aidos_blob::s3::ENV_BUCKET { Some(bucket.clone()) } else { std::env::var(k).ok() }
            })
            .map_err(|e| anyhow::anyhow!("S3 configuration: {e}"))?
            .unwrap_or_else(|| S3Config::new(bucket.clone()));
            c.bucket = bucket.trim().to_string();
            anyhow::ensure!(!c.bucket.is_empty(), "--s3-bucket is empty");
            if let Some(e) = g.s3_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
                anyhow::ensure!(
                    e.starts_with("http://") || e.starts_with("https://"),
                    "--s3-endpoint `{e}` is not an http:// or https:// URL"
                );
                c.endpoint = Some(e.to_string());
                c.allow_http = e.starts_with("http://");
            }
            if let Some(r) = g.s3_region.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
                c.region = r.to_string();
            }
            if let Some(p) = &g.s3_prefix {
                c.prefix = p.trim().to_string();
            }
            if let Some(s) = g.s3_refresh_after_secs {
                anyhow::ensure!(s.is_finite() && s >= 0.0, "--s3-refresh-after-secs must be a number of seconds >= 0");
                c.refresh_after = std::time::Duration::from_secs_f64(s);
            }
            Ok(Some(StoreConfig::S3(c)))
        }
        (None, None) => {
            anyhow::ensure!(!g.blob_dir_shared, "--blob-dir-shared declares a --blob-dir shared; none is given");
            Ok(None)
        }
    }
}

/// The blob store a client command uses: the one the blob flags name, else the cluster's blob service through
/// --scheduler (from any machine).
pub fn blob_store(g: &Global) -> anyhow::Result<Arc<dyn aidos_blob::BlobStore>> {
    Ok(match store_config(g)? {
        Some(c) => c.open().map_err(|e| anyhow::anyhow!("opening the blob store ({}): {e}", c.describe()))?,
        None => Arc::new(
            aidos_blob::ServiceStore::connect(&g.scheduler, credentials(g)?)
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

/// TLS on a serving front (`aidos serve run`, `aidos serve gateway`).
#[derive(Args, Debug, Clone)]
pub struct ServeTls {
    /// Serve HTTP and gRPC over TLS with this certificate (PEM, chain first; `aidos cert issue` makes one from the
    /// cluster CA, or bring your own); needs --tls-key
    #[arg(long, env = "AIDOS_SERVE_TLS_CERT", requires = "tls_key", help_heading = "TLS")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM)
    #[arg(long, env = "AIDOS_SERVE_TLS_KEY", requires = "tls_cert", help_heading = "TLS")]
    pub tls_key: Option<PathBuf>,
}

impl ServeTls {
    pub fn load(&self) -> anyhow::Result<Option<aidos_api::tls::ServerTls>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => {
                Ok(Some(aidos_api::tls::ServerTls::from_files(c, k).context("--tls-cert/--tls-key")?))
            }
            _ => Ok(None),
        }
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() { "https" } else { "http" }
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
    /// Most tasks placed on this worker at once, whatever they request (0: no limit); like kubelet's --max-pods,
    /// it keeps thousands of tiny jobs from starting at once and starving the worker
    #[arg(long, env = "AIDOS_WORKER_MAX_TASKS", default_value_t = aidos_worker::DEFAULT_MAX_TASKS)]
    pub max_tasks: u32,
    /// Host or IP other machines reach this worker at; serve replicas advertise their endpoints with it
    #[arg(long, env = "AIDOS_WORKER_ADVERTISE_HOST", default_value = "127.0.0.1")]
    pub advertise_host: String,
    /// Without --blob-dir: most bytes the worker's blob cache (<data-dir>/blob-cache) keeps, e.g. 10Gi (filled from
    /// --s3-bucket when given, else through the scheduler's blob service)
    #[arg(long, env = "AIDOS_WORKER_CACHE_MAX_BYTES", value_parser = parse_bytes, default_value = "10Gi")]
    pub cache_max_bytes: u64,
    /// Keep each task's working directory (<data-dir>/tasks/<attempt>/: its files, stdout.log, stderr.log) after
    /// the attempt ended, for debugging; by default it is removed once the scheduler acknowledged the final status
    /// (the output stays available through `aidos job logs`)
    #[arg(long, env = "AIDOS_WORKER_KEEP_TASK_DIRS")]
    pub keep_task_dirs: bool,
}

impl WorkerResources {
    pub fn into_config(
        self,
        schedulers: Vec<String>,
        data_dir: PathBuf,
        worker_id: Option<String>,
        blob_dir: PathBuf,
        s3: Option<aidos_blob::S3Config>,
        credentials: aidos_api::auth::Credentials,
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
            max_tasks: self.max_tasks,
            shim_exe,
            blob_dir,
            s3,
            blob_cache_max_bytes: self.cache_max_bytes,
            keep_task_dirs: self.keep_task_dirs,
            advertise_host: self.advertise_host,
            credentials,
            join_token: None,
            stop_tasks_on_exit: false,
        })
    }
}
