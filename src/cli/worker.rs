//! `aidos worker`: a worker agent that registers with the schedulers and runs assigned tasks.

use std::path::PathBuf;

use aidos_worker::WorkerConfig;
use anyhow::Context;
use clap::Args;

use super::{Global, kv_map, parse_bytes, parse_cpu, parse_kv, shutdown_signal};

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
            advertise_host: self.advertise_host,
        })
    }
}

pub async fn run(g: &Global, a: WorkerArgs) -> anyhow::Result<()> {
    let schedulers: Vec<String> = g.scheduler.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    anyhow::ensure!(!schedulers.is_empty(), "no scheduler address given (--scheduler)");
    std::fs::create_dir_all(&a.data_dir).with_context(|| format!("creating {}", a.data_dir.display()))?;
    let cfg = a.resources.into_config(schedulers.clone(), a.data_dir, a.id, g.blob_dir.clone())?;
    println!("worker starting (schedulers {})", schedulers.join(","));
    aidos_worker::run(cfg, shutdown_signal()).await.context("worker")?;
    Ok(())
}
