//! The `aidos` command line: argument parsing and dispatch. Each command group lives in its own module; the logic
//! behind them lives in the library crates (`aidos-serve`, `aidos-worker`, `aidos-scheduler`, ...).
//!
//! Layering: every module uses only modules on a lower layer (or its own layer's leaves), so the modules form a
//! DAG. This file (dispatch) sits above them all.
//! 1. Leaves, using no other CLI module: [`cert`], [`args`] (global flags, shared flag groups, value parsers),
//!    [`process`] (exit codes, the shutdown signal), [`client`] (the scheduler client), [`render`], [`plot`],
//!    [`progress`].
//! 2. Commands on the leaves only: [`cluster`], [`dataset`], [`job`], [`run`], [`server`], [`worker`], [`token`],
//!    [`deploy`] (deployments and the gateway), [`infer`].
//! 3. Commands on other commands: [`bench`] → job; [`sweep`] → job; [`train`] → job, dataset; [`model`] → job, dataset;
//!    [`edge`] → model; [`serve`] → model, deploy.
//! 4. [`up`] (a scheduler, a worker and the gateway in one process) → server, deploy.

pub mod args;
pub mod bench;
pub mod cert;
pub mod client;
pub mod cluster;
pub mod dataset;
pub mod deploy;
pub mod edge;
pub mod infer;
pub mod job;
pub mod model;
pub mod plot;
pub mod process;
pub mod progress;
pub mod render;
pub mod run;
pub mod serve;
pub mod server;
pub mod sweep;
pub mod token;
pub mod train;
pub mod up;
pub mod worker;

use std::ffi::OsString;

use clap::{Parser, Subcommand};

pub use args::Global;
pub use process::Exit;

#[derive(Parser, Debug)]
#[command(name = "aidos", version, about = "aidos: a distributed training and inference compute engine")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
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
    /// API tokens: create (scoped to a project and role), list, revoke
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Save a token for this user's later commands (checked against the scheduler first)
    Login(token::LoginArgs),
    /// Show who the presented token says you are
    Whoami,
    /// The audit log: every mutation, allowed or denied (who, what, when, from where); project admins
    Audit(token::AuditArgs),
    /// Hyperparameter sweeps: parallel trials, TPE / random / grid search, ASHA / Hyperband / median pruning
    #[command(subcommand)]
    Sweep(sweep::SweepCmd),
    /// From inside a task (e.g. a sweep trial in any language): report metrics at a step, sent at once
    Report(sweep::ReportArgs),
    /// The model registry: versions, aliases, lineage, evaluation
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// Model servers: Open Inference Protocol (KServe v2) over HTTP and gRPC with dynamic batching
    #[command(subcommand)]
    Serve(serve::ServeCmd),
    /// Send one inference request to a model server's HTTP front and print the outputs
    Infer(infer::InferArgs),
    /// Edge devices: the fleet, signed ONNX deployments, telemetry, and the agent itself
    #[command(subcommand)]
    Edge(edge::EdgeCmd),
    /// The cluster's certificate authority (TLS between nodes, workers and clients)
    #[command(subcommand)]
    Cert(cert::CertCmd),
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
    /// Whether this command runs without transparent huge pages (see `main`): the control plane's long-running
    /// processes. Model servers (`serve run`, a deployment's replica) keep the machine's policy: not measured.
    pub fn without_huge_pages(&self) -> bool {
        self.is_daemon() && !matches!(self, Command::Serve(serve::ServeCmd::Run(_) | serve::ServeCmd::Replica(_)))
    }

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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    if let Command::Cert(c) = cli.command {
        return cert::run(c);
    }
    client::set_credentials(args::credentials(&g)?);
    match cli.command {
        Command::Cert(_) => unreachable!("handled above"),
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
        Command::Sweep(c) => sweep::run(&g, c).await,
        Command::Token(c) => token::run(&g, c).await,
        Command::Login(a) => token::login(&g, a).await,
        Command::Whoami => token::whoami(&g).await,
        Command::Audit(a) => token::audit(&g, a).await,
        Command::Report(a) => tokio::task::spawn_blocking(move || sweep::report(a)).await?,
        Command::Serve(c) => serve::run(&g, c).await,
        Command::Infer(a) => infer::run(&g, a).await,
        Command::Edge(c) => edge::run(&g, c).await,
        Command::ExportRun => Ok(aidos_train::export_job::run().await?),
        // Dispatched in main before any runtime starts; reaching here means it was not first on the line.
        Command::TaskShim { .. } => anyhow::bail!("task-shim must be the first argument"),
    }
}

/// The hidden `aidos task-shim ...`: runs synchronously, outside any tokio runtime.
pub fn task_shim(args: Vec<OsString>) -> i32 {
    aidos_worker::shim_main(args)
}
