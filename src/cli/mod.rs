//! The `aidos` command line: argument parsing and dispatch. Each command group lives in its own module.

pub mod bench;
pub mod client;
pub mod cluster;
pub mod dataset;
pub mod deploy;
pub mod edge;
pub mod job;
pub mod model;
pub mod plot;
pub mod progress;
pub mod render;
pub mod run;
pub mod serve;
pub mod server;
pub mod train;
pub mod up;
pub mod worker;

use std::collections::BTreeMap;
use std::ffi::OsString;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "aidos", version, about = "aidos: a distributed training and inference compute engine")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

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
    /// Blob store directory (datasets, checkpoints, model weights); `aidos up` keeps it at <data-dir>/blobs
    #[arg(
        long,
        env = "AIDOS_BLOB_DIR",
        global = true,
        help_heading = "Global options",
        default_value = ".aidos/blobs"
    )]
    pub blob_dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a one-node scheduler and a worker in this process (local use); stops on Ctrl-C
    Up(up::UpArgs),
    /// Run one scheduler node (a Raft member) of a cluster
    Server(server::ServerArgs),
    /// Run a worker agent that executes the tasks the schedulers assign to it
    Worker(worker::WorkerArgs),
    /// Inspect and change the scheduler cluster
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Submit, inspect, follow and cancel jobs
    #[command(subcommand)]
    Job(job::JobCmd),
    /// Versioned datasets: push files (IDX, CSV, NPY), list, show statistics, diff versions
    #[command(subcommand)]
    Dataset(dataset::DatasetCmd),
    /// Train a model from the zoo on a dataset version (a `train` job); see `aidos train --help`
    Train(train::TrainArgs),
    /// Training runs: params, metric curves, checkpoints; compare runs
    #[command(subcommand)]
    Run(run::RunCmd),
    /// The model registry: versions, aliases, lineage, evaluation
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// Model servers: Open Inference Protocol (KServe v2) over HTTP and gRPC with dynamic batching
    #[command(subcommand)]
    Serve(serve::ServeCmd),
    /// Send one inference request to a model server's HTTP front and print the outputs
    Infer(serve::InferArgs),
    /// Edge devices: the fleet, signed ONNX deployments, telemetry, and the agent itself
    #[command(subcommand)]
    Edge(edge::EdgeCmd),
    /// Load generators for measuring the control plane
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Internal: an `export` job's task (configured by the task environment)
    #[command(name = "export-run", hide = true)]
    ExportRun,
    /// Internal: the per-task supervisor process a worker starts
    #[command(name = "task-shim", hide = true, disable_help_flag = true)]
    TaskShim {
        /// Arguments passed through to the shim
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

impl Command {
    /// Long-running daemons log at info by default; client commands stay quiet.
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::Up(_)
                | Command::Server(_)
                | Command::Worker(_)
                | Command::Serve(_)
                | Command::Edge(edge::EdgeCmd::Agent(_))
        )
    }
}

/// A deliberate exit with a code (and a message for stderr, possibly empty), e.g. `job wait` on a failed job.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub msg: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Exit {}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Up(a) => up::run(&g, a).await,
        Command::Server(a) => server::run(&g, a).await,
        Command::Worker(a) => worker::run(&g, a).await,
        Command::Cluster(c) => cluster::run(&g, c).await,
        Command::Job(c) => job::run(&g, c).await,
        Command::Bench(c) => bench::run(&g, c).await,
        Command::Dataset(c) => dataset::run(&g, c).await,
        Command::Train(a) => train::run(&g, a).await,
        Command::Run(c) => run::run(&g, c).await,
        Command::Model(c) => model::run(&g, c).await,
        Command::Serve(c) => serve::run(&g, c).await,
        Command::Infer(a) => serve::infer(&g, a).await,
        Command::Edge(c) => edge::run(&g, c).await,
        Command::ExportRun => model::export_run().await,
        // Dispatched in main before any runtime starts; reaching here means it was not first on the line.
        Command::TaskShim { .. } => anyhow::bail!("task-shim must be the first argument"),
    }
}

/// The hidden `aidos task-shim ...`: runs synchronously, outside any tokio runtime.
pub fn task_shim(args: Vec<OsString>) -> i32 {
    aidos_worker::shim_main(args)
}

/// The blob store named by `--blob-dir`.
pub fn blob_store(g: &Global) -> anyhow::Result<aidos_blob::LocalDirStore> {
    aidos_blob::LocalDirStore::open(&g.blob_dir)
        .map_err(|e| anyhow::anyhow!("opening the blob store at {}: {e}", g.blob_dir.display()))
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

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
}
