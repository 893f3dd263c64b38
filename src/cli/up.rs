//! `aidos up`: a one-node scheduler plus an in-process worker and the serving gateway, for a laptop or a single
//! machine. The top of the CLI's layering: it wires the other commands' pieces in one process.

use std::net::SocketAddr;
use std::path::PathBuf;

use aidos_scheduler::{SchedulerConfig, SchedulerNode};
use anyhow::Context;
use clap::Args;

use super::args::{Global, WorkerResources, parse_bytes, parse_cpu, parse_kv};
use super::process::shutdown_signal;
use super::server::dial_addr;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Directory for all state (scheduler/ and worker/ inside it)
    #[arg(long, env = "AIDOS_DATA_DIR", default_value = "./.aidos")]
    pub data_dir: PathBuf,
    /// Address the scheduler listens on (loopback by default: jobs run arbitrary code)
    #[arg(long, env = "AIDOS_LISTEN", default_value = aidos_api::DEFAULT_SCHEDULER_ADDR)]
    pub listen: SocketAddr,
    /// Start only the scheduler, without the in-process worker
    #[arg(long, env = "AIDOS_NO_WORKER")]
    pub no_worker: bool,
    /// Labels of the in-process worker as k=v, comma-separated
    #[arg(long, env = "AIDOS_WORKER_LABELS", value_delimiter = ',', value_parser = parse_kv)]
    pub worker_labels: Vec<(String, String)>,
    /// CPU the in-process worker offers, in cores (`2`) or millicores (`500m`); default: detected
    #[arg(long, env = "AIDOS_WORKER_CPUS", value_parser = parse_cpu)]
    pub worker_cpus: Option<u64>,
    /// Memory the in-process worker offers (`4Gi`, `512Mi`); default: detected
    #[arg(long, env = "AIDOS_WORKER_MEMORY", value_parser = parse_bytes)]
    pub worker_memory: Option<u64>,
    /// GPUs the in-process worker offers; default: detected
    #[arg(long, env = "AIDOS_WORKER_GPUS")]
    pub worker_gpus: Option<u32>,
    /// Where the gateway serves every deployment over HTTP (Open Inference Protocol REST)
    #[arg(long, env = "AIDOS_UP_SERVE_HTTP", default_value = "127.0.0.1:8000")]
    pub serve_http: SocketAddr,
    /// Where the gateway serves every deployment over gRPC (inference.GRPCInferenceService)
    #[arg(long, env = "AIDOS_UP_SERVE_GRPC", default_value = "127.0.0.1:8001")]
    pub serve_grpc: SocketAddr,
    /// Where the scheduler's web dashboard and JSON HTTP API listen (docs/http-api.md; Prometheus service
    /// discovery of serving replicas: /v1/http_sd)
    #[arg(long, env = "AIDOS_UP_HTTP", default_value = "127.0.0.1:7080")]
    pub http: SocketAddr,
    /// Do not start the gateway
    #[arg(long, env = "AIDOS_UP_NO_GATEWAY")]
    pub no_gateway: bool,
    /// Leave the tasks this worker started (serving replicas, jobs) running when `aidos up` stops; the next
    /// `aidos up` with the same data directory adopts them. Default: they are stopped with it
    #[arg(long, env = "AIDOS_UP_KEEP_TASKS")]
    pub keep_tasks: bool,
}

pub async fn run(g: &Global, a: UpArgs) -> anyhow::Result<()> {
    let sched_dir = a.data_dir.join("scheduler");
    let worker_dir = a.data_dir.join("worker");
    std::fs::create_dir_all(&sched_dir).with_context(|| format!("creating {}", sched_dir.display()))?;

    let mut sched_cfg = SchedulerConfig::single_node(a.listen, sched_dir);
    // The admin token: in the data directory (mode 0600), where the CLI on this machine finds it by itself.
    let token_file = a.data_dir.join("admin.token");
    sched_cfg.root_token = SchedulerNode::load_or_create_root_token(&token_file)?;
    let root = aidos_api::auth::Credentials::token(sched_cfg.root_token.clone());
    // This process's own clients (the gateway's) present it too.
    super::client::set_credentials(root.clone());
    // The blob flags' store (an S3 bucket, a directory), else <data-dir>/blobs; the in-process worker uses the same.
    let blobs = super::args::store_config(g)?
        .unwrap_or_else(|| aidos_blob::StoreConfig::Dir { path: a.data_dir.join("blobs"), shared: false });
    sched_cfg.blobs = Some(blobs.clone());
    sched_cfg.http = Some(a.http);
    let node =
        SchedulerNode::start(sched_cfg).await.with_context(|| format!("starting the scheduler on {}", a.listen))?;
    let addr = node.local_addr();
    println!("scheduler listening on {addr}");
    if let Some(h) = node.http_addr() {
        println!("dashboard and HTTP API on http://{h}/ (sign in with the admin token below)");
    }
    println!(
        "admin token: {} (used by the CLI in this directory; `aidos token create` makes others)",
        token_file.display()
    );
    let gateway = if a.no_gateway {
        None
    } else {
        let refresh = std::time::Duration::from_millis(250);
        let g = super::deploy::start_gateway(vec![dial_addr(addr)], a.serve_http, a.serve_grpc, refresh, None, None)
            .await?;
        println!(
            "gateway serving deployments on HTTP http://{} and gRPC {} (callers present a key: the admin token, or \
             `aidos token create --role infer`)",
            g.http, g.grpc
        );
        Some(g)
    };

    if a.no_worker {
        shutdown_signal().await;
        if let Some(g) = gateway {
            g.shutdown().await;
        }
        node.shutdown().await;
        return Ok(());
    }

    std::fs::create_dir_all(&worker_dir).with_context(|| format!("creating {}", worker_dir.display()))?;
    let resources = WorkerResources {
        labels: a.worker_labels,
        cpu_millis: a.worker_cpus,
        memory_bytes: a.worker_memory,
        gpus: a.worker_gpus,
        max_tasks: aidos_worker::DEFAULT_MAX_TASKS,
        advertise_host: "127.0.0.1".into(),
        cache_max_bytes: 10 << 30,
        keep_task_dirs: false,
    };
    let (blob_dir, s3) = match &blobs {
        aidos_blob::StoreConfig::Dir { path, .. } => (path.clone(), None),
        aidos_blob::StoreConfig::S3(c) => (PathBuf::new(), Some(c.clone())),
    };
    let mut cfg = resources.into_config(vec![dial_addr(addr)], worker_dir.clone(), None, blob_dir, s3, root)?;
    cfg.stop_tasks_on_exit = !a.keep_tasks;
    println!("worker started (data dir {})", worker_dir.display());
    println!("blob store: {} (CLI commands reach it through the scheduler)", blobs.describe());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = aidos_worker::run(cfg, async move {
        let _ = stop_rx.await;
    });
    tokio::pin!(worker);

    let result = tokio::select! {
        _ = shutdown_signal() => {
            let _ = stop_tx.send(());
            worker.await.context("worker")
        }
        r = &mut worker => match r {
            Ok(()) => Err(anyhow::anyhow!("the worker stopped unexpectedly")),
            Err(e) => Err(anyhow::Error::new(e).context("worker")),
        },
    };
    if let Some(g) = gateway {
        g.shutdown().await;
    }
    node.shutdown().await;
    result
}
