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
    let cfg =
        a.resources.into_config(schedulers.clone(), a.data_dir, a.id, blob_dir, s3, super::args::credentials(g))?;
    println!("worker starting (schedulers {})", schedulers.join(","));
    aidos_worker::run(cfg, shutdown_signal()).await.context("worker")?;
    Ok(())
}
