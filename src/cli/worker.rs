//! `aidos worker`: a worker agent that registers with the schedulers and runs assigned tasks.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::args::{Global, WorkerResources};
use super::process::shutdown_signal;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Directory for the worker's id, attempt records and task working directories
    #[arg(long, env = "AIDOS_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Stable worker id (default: read from --data-dir, or generated and saved there)
    #[arg(long, env = "AIDOS_WORKER_ID")]
    pub id: Option<String>,
    /// A cluster that serves TLS (--ca-cert): the one-time join token this new worker exchanges for its
    /// certificate (`aidos token create --role worker --join`); kept in --data-dir afterwards, so restarts need none
    #[arg(long, env = "AIDOS_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    #[command(flatten)]
    pub resources: WorkerResources,
}

pub async fn run(g: &Global, a: WorkerArgs) -> anyhow::Result<()> {
    let schedulers: Vec<String> = g.scheduler.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    anyhow::ensure!(!schedulers.is_empty(), "no scheduler address given (--scheduler)");
    std::fs::create_dir_all(&a.data_dir).with_context(|| format!("creating {}", a.data_dir.display()))?;
    let (blob_dir, s3) = match super::args::store_config(g)? {
        None => (PathBuf::new(), None),
        Some(aidos_blob::StoreConfig::Dir { path, .. }) => (path, None),
        Some(aidos_blob::StoreConfig::S3(c)) => (PathBuf::new(), Some(c)),
    };
    anyhow::ensure!(
        a.join_token.is_none() || g.ca_cert.is_some(),
        "--join-token needs --ca-cert (a join token buys a certificate from a cluster that serves TLS)"
    );
    let creds = super::args::credentials(g)?;
    let cfg = a.resources.into_config(schedulers.clone(), a.data_dir, a.id, blob_dir, s3, creds)?;
    let cfg = aidos_worker::WorkerConfig { join_token: a.join_token, ..cfg };
    println!("worker starting (schedulers {})", schedulers.join(","));
    aidos_worker::run(cfg, shutdown_signal()).await.context("worker")?;
    Ok(())
}
