//! `aidos serve ...`: run a model server (Open Inference Protocol over HTTP and gRPC), one replica of a deployment
//! (what a worker runs), and the deployment commands of [`super::deploy`]. Wiring only: the server, the replica and
//! the gateway are `aidos-serve`; runtimes come from `aidos-runtime` (tract, ort) and `aidos-train` (burn).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aidos_api::ModelVersion;
use aidos_api::contract::task_env;
use aidos_api::v1::{AttemptRef, ReportEndpointRequest, ReportLoadRequest, RoutesRequest};
use aidos_blob::{BlobId, BlobStore};
use aidos_runtime::{ModelRuntime, RuntimeKind};
use aidos_serve::replica::{self, EndpointReporter, Endpoints, Replica, ReplicaConfig};
use aidos_serve::{Limits, Metrics, Repository, ServerConfig, ServerState};
use anyhow::Context;
use clap::{Args, Subcommand};

use super::args::{BatchArgs, Global, blob_store};
use super::client::{Client, is_retryable, status_error};
use super::process::shutdown_signal;

#[derive(Subcommand, Debug)]
pub enum ServeCmd {
    /// Run a model server in the foreground: models from the registry, ONNX files or a model directory
    Run(RunArgs),
    /// Deploy a registry model as replicas placed on workers (a new version rolls them over one at a time)
    Deploy(super::deploy::DeployArgs),
    /// Deployments, their replicas and endpoints
    List,
    /// Stop every replica of a deployment and forget it
    Delete {
        /// Deployment name
        name: String,
    },
    /// Make a deployment's canary the deployment: its replicas stay, the others roll over to it
    Promote {
        /// Deployment name
        name: String,
        /// Wait until the rollover is done (at most this many seconds; 0: do not wait)
        #[arg(long, env = "AIDOS_DEPLOY_WAIT_SECS", default_value_t = 0)]
        wait_secs: u64,
    },
    /// Stop a deployment's canary: every request goes to the deployment's version again
    Rollback {
        /// Deployment name
        name: String,
    },
    /// Route the Open Inference Protocol to every deployment's ready replicas (`aidos up` runs one on 8000/8001)
    Gateway(super::deploy::GatewayArgs),
    /// One replica of a deployment (run by a worker; configured by the task environment)
    #[command(hide = true)]
    Replica(BatchArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Registry model to serve: NAME, NAME:VERSION or NAME@ALIAS (repeatable); served under its registry name and
    /// version
    #[arg(long = "registry-model", env = "AIDOS_SERVE_REGISTRY_MODELS", value_delimiter = ',')]
    pub registry: Vec<String>,
    /// ONNX file to serve as NAME=PATH or NAME:VERSION=PATH (repeatable; version 1 by default)
    #[arg(long = "model", env = "AIDOS_SERVE_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Model directory in Triton's layout (<name>/<version>/model.onnx, optional <name>/config.toml); also what
    /// the repository load/unload API loads from
    #[arg(long, env = "AIDOS_SERVE_MODEL_REPOSITORY")]
    pub model_repository: Option<PathBuf>,
    /// Runtime: tract (pure-Rust ONNX, default), ort (ONNX Runtime from ORT_DYLIB_PATH) or burn (registry models)
    #[arg(long, env = "AIDOS_SERVE_RUNTIME", default_value = "tract")]
    pub runtime: String,
    /// HTTP listen address (Open Inference Protocol REST, /metrics)
    #[arg(long, env = "AIDOS_SERVE_HTTP", default_value = "127.0.0.1:8000")]
    pub http: SocketAddr,
    /// gRPC listen address (inference.GRPCInferenceService)
    #[arg(long, env = "AIDOS_SERVE_GRPC", default_value = "127.0.0.1:8001")]
    pub grpc: SocketAddr,
    #[command(flatten)]
    pub tls: super::args::ServeTls,
    /// Largest request body or gRPC message, bytes
    #[arg(long, env = "AIDOS_SERVE_MAX_REQUEST_BYTES", default_value_t = 64 << 20)]
    pub max_request_bytes: usize,
    /// Largest single input tensor, bytes
    #[arg(long, env = "AIDOS_SERVE_MAX_TENSOR_BYTES", default_value_t = 16 << 20)]
    pub max_tensor_bytes: usize,
    /// Write the bound addresses as JSON to this file once serving (for supervisors and tests)
    #[arg(long, env = "AIDOS_SERVE_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub batch: BatchArgs,
}

pub async fn run(g: &Global, cmd: ServeCmd) -> anyhow::Result<()> {
    match cmd {
        ServeCmd::Run(a) => serve(g, a).await,
        ServeCmd::Deploy(a) => super::deploy::deploy(g, a).await,
        ServeCmd::List => super::deploy::list(g).await,
        ServeCmd::Delete { name } => super::deploy::delete(g, &name).await,
        ServeCmd::Promote { name, wait_secs } => super::deploy::canary(g, &name, true, wait_secs).await,
        ServeCmd::Rollback { name } => super::deploy::canary(g, &name, false, 0).await,
        ServeCmd::Gateway(a) => super::deploy::gateway(g, a).await,
        ServeCmd::Replica(b) => run_replica(b).await,
    }
}

/// Loads a registry version with `kind`: burn from its weights; tract/ort from its stored ONNX artifact, exported
/// on the fly when it has none.
pub fn registry_runtime(
    m: &ModelVersion,
    store: &dyn BlobStore,
    kind: RuntimeKind,
) -> anyhow::Result<Arc<dyn ModelRuntime>> {
    let what = format!("{}:{}", m.name, m.version);
    if kind == RuntimeKind::Burn {
        let l = super::model::load(m, store)?;
        return Ok(Arc::new(aidos_train::runtime::BurnRuntime::new(l.model, Some(l.normalization))));
    }
    let bytes = match m.artifacts.get("onnx") {
        Some(id) => {
            store.get(&BlobId::parse(id)?).with_context(|| format!("{what}: reading its ONNX artifact"))?.to_vec()
        }
        None => super::model::export_onnx(m, store, aidos_train::onnx::Quantize::None)?,
    };
    Ok(Arc::from(aidos_runtime::load_onnx(kind, &what, &bytes)?))
}

fn parse_file_model(s: &str) -> anyhow::Result<(String, u64, PathBuf)> {
    let (lhs, path) =
        s.split_once('=').ok_or_else(|| anyhow::anyhow!("--model `{s}`: expected NAME=PATH or NAME:VERSION=PATH"))?;
    let (name, version) = match lhs.split_once(':') {
        Some((n, v)) => (n, v.parse().map_err(|_| anyhow::anyhow!("--model `{s}`: version `{v}` is not a number"))?),
        None => (lhs, 1),
    };
    Ok((name.to_string(), version, PathBuf::from(path)))
}

async fn serve(g: &Global, a: RunArgs) -> anyhow::Result<()> {
    let kind: RuntimeKind = a.runtime.parse()?;
    let batch = a.batch.config()?;
    let repo = Arc::new(Repository::new(Arc::new(Metrics::default())));
    if let Some(dir) = &a.model_repository {
        let (r, d, b) = (repo.clone(), dir.clone(), batch.clone());
        let loaded = tokio::task::spawn_blocking(move || r.load_dir(&d, &b)).await?.map_err(anyhow::Error::msg)?;
        for (n, v) in loaded {
            println!("loaded {n}:{v} from {}", dir.display());
        }
    }
    for spec in &a.models {
        let (name, version, path) = parse_file_model(spec)?;
        anyhow::ensure!(kind != RuntimeKind::Burn, "--model {spec}: ONNX files need --runtime tract or ort");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let what = path.display().to_string();
        let rt = tokio::task::spawn_blocking(move || aidos_runtime::load_onnx(kind, &what, &bytes)).await??;
        repo.load(&name, version, kind, Arc::from(rt), batch.clone())?;
        println!("loaded {name}:{version} from {} ({})", path.display(), kind.as_str());
    }
    if !a.registry.is_empty() {
        let mut client = Client::new(&g.scheduler)?;
        let store = blob_store(g)?;
        for r in &a.registry {
            let m = super::model::get_model(&mut client, r).await?;
            let (mv, st) = (m.clone(), store.clone());
            let rt = tokio::task::spawn_blocking(move || registry_runtime(&mv, &st, kind)).await??;
            repo.load(&m.name, m.version as u64, kind, rt, batch.clone())?;
            println!("loaded {}:{} from the registry ({})", m.name, m.version, kind.as_str());
        }
    }
    anyhow::ensure!(
        !repo.is_empty() || a.model_repository.is_some(),
        "nothing to serve: give --registry-model, --model or --model-repository"
    );
    let cfg = ServerConfig { tls: a.tls.load()?, ..ServerConfig::plain(a.http, a.grpc) };
    let state = Arc::new(ServerState {
        repo,
        limits: Limits { max_request_bytes: a.max_request_bytes, max_tensor_bytes: a.max_tensor_bytes },
        name: "aidos".into(),
        model_dir: a.model_repository.clone(),
        defaults: batch,
        // A server the operator runs for themselves; deployments' replicas and the gateway check keys.
        auth: Arc::new(aidos_serve::auth::Open),
        key_limits: None,
    });
    let server = aidos_serve::start(&cfg, state).await.with_context(|| format!("binding {} / {}", a.http, a.grpc))?;
    let scheme = a.tls.scheme();
    println!(
        "serving: HTTP {scheme}://{}  gRPC {}  (metrics: {scheme}://{}/metrics)",
        server.http, server.grpc, server.http
    );
    if let Some(f) = &a.ready_file {
        server.write_ready_file(f).with_context(|| format!("writing {}", f.display()))?;
    }
    shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

fn task_var(var: &str) -> anyhow::Result<String> {
    std::env::var(var)
        .map_err(|_| anyhow::anyhow!("{var} is not set: `aidos serve replica` runs as a deployment's task"))
}

/// `aidos serve replica`: one replica of a deployment, started by a worker with the task environment (AIDOS_* and
/// AIDOS_SERVE_*). Resolves the registry model and builds its runtime; [`aidos_serve::replica`] serves it under the
/// deployment's name, reports the endpoints to the scheduler, and drains on SIGTERM.
async fn run_replica(batch: BatchArgs) -> anyhow::Result<()> {
    let task = aidos_sdk::TaskEnv::from_env()?;
    let deployment = task_var(task_env::SERVE_DEPLOYMENT)?;
    let model = task_var(task_env::SERVE_MODEL)?;
    let kind: RuntimeKind = task_var(task_env::SERVE_RUNTIME)?.parse()?;
    let advertise_host = std::env::var(task_env::ADVERTISE_HOST).unwrap_or_else(|_| "127.0.0.1".into());
    let batch = batch.config()?;
    let mut client = Client::new(&task.schedulers)?;
    let m = super::model::get_model(&mut client, &model).await?;
    let store = task
        .open_blob_store()
        .map_err(|e| anyhow::anyhow!("opening the blob store at {}: {e}", task.blob_dir.display()))?;
    let mv = m.clone();
    let rt = tokio::task::spawn_blocking(move || registry_runtime(&mv, &store, kind)).await??;
    let cfg = ReplicaConfig {
        deployment: deployment.clone(),
        version: m.version as u64,
        runtime: kind,
        batch,
        advertise_host,
        drain_delay: replica::DRAIN_DELAY,
        report_for: replica::REPORT_FOR,
    };
    // Who may call: the deployment's keys, read before the replica says it is ready, then every auth::REFRESH.
    let keys = aidos_serve::auth::KeyTable::new();
    let key_client = Client::new(&task.schedulers)?;
    let mut tries = 0;
    while let Err(s) = read_keys(&key_client, &keys, &deployment).await {
        tries += 1;
        anyhow::ensure!(tries < 120, "reading the deployment's keys: {}", s.message());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let refresh = tokio::spawn({
        let (keys, deployment) = (keys.clone(), deployment.clone());
        async move {
            loop {
                tokio::time::sleep(aidos_serve::auth::REFRESH).await;
                if let Err(s) = read_keys(&key_client, &keys, &deployment).await {
                    tracing::debug!("refreshing the replica's keys: {}", s.message());
                }
            }
        }
    });
    let r = Replica::start(&cfg, rt, keys).await?;
    let ep = r.endpoints();
    println!(
        "replica of {deployment} ({}:{} on {}) serving: HTTP {} gRPC {}",
        m.name,
        m.version,
        kind.as_str(),
        ep.http,
        ep.grpc
    );
    // The worker probes the replica at this address (hung replicas are restarted).
    let file = task.work_dir.join(aidos_api::contract::REPLICA_ENDPOINTS_FILE);
    aidos_serve::write_endpoints_file(&file, &ep.http, &ep.grpc)
        .with_context(|| format!("writing {}", file.display()))?;
    // Its load, about every second, for the leader's autoscaler (best effort: a lost report is the next one's).
    let load = tokio::spawn(report_load(
        Client::new(&task.schedulers)?,
        r.metrics(),
        task.worker_id.clone(),
        task.attempt_ref(),
    ));
    let mut reporter = SchedulerReporter { client, worker_id: task.worker_id.clone(), attempt: task.attempt_ref() };
    if let Err(s) = r.report(&mut reporter).await {
        r.shutdown().await;
        return Err(status_error(s, "reporting the replica's endpoint"));
    }
    shutdown_signal().await;
    load.abort();
    refresh.abort();
    println!("replica of {deployment}: stopping in {} ms, then draining", r.drain_delay().as_millis());
    r.drain().await;
    Ok(())
}

/// Reads who may call `deployment` (`ServeService.Routes`, with the task's job token) into `keys`.
async fn read_keys(c: &Client, keys: &aidos_serve::auth::KeyTable, deployment: &str) -> Result<(), tonic::Status> {
    let req = RoutesRequest { deployment: deployment.to_string() };
    let r = c
        .serve(|mut s| {
            let r = req.clone();
            async move { s.routes(r).await }
        })
        .await?;
    keys.replace(aidos_serve::auth::Keys::from_routes(r.get_ref()));
    Ok(())
}

/// Every [`LOAD_EVERY`], reports the mean number of requests in flight over the last window (request-seconds
/// spent in the model per second, from the replica's metrics) for its task attempt.
async fn report_load(client: Client, metrics: Arc<Metrics>, worker_id: String, attempt: AttemptRef) {
    let mut last = (tokio::time::Instant::now(), metrics.busy_seconds());
    loop {
        tokio::time::sleep(LOAD_EVERY).await;
        let now = (tokio::time::Instant::now(), metrics.busy_seconds());
        let window = now.0 - last.0;
        let in_flight = (now.1 - last.1) / window.as_secs_f64().max(1e-3);
        last = now;
        let req = ReportLoadRequest {
            worker_id: worker_id.clone(),
            attempt: Some(attempt.clone()),
            in_flight,
            window_ms: window.as_millis() as u32,
        };
        if let Err(s) = client
            .serve(|mut s| {
                let r = req.clone();
                async move { s.report_load(r).await }
            })
            .await
        {
            tracing::debug!("reporting the replica's load: {}", s.message());
        }
    }
}

/// How often a replica reports its load.
const LOAD_EVERY: Duration = Duration::from_secs(1);

/// Reports a replica's endpoints to the scheduler for its task attempt.
struct SchedulerReporter {
    client: Client,
    worker_id: String,
    attempt: AttemptRef,
}

impl EndpointReporter for SchedulerReporter {
    type Error = tonic::Status;

    async fn report(&mut self, ep: &Endpoints) -> Result<(), tonic::Status> {
        let req = ReportEndpointRequest {
            worker_id: self.worker_id.clone(),
            attempt: Some(self.attempt.clone()),
            http: ep.http.clone(),
            grpc: ep.grpc.clone(),
            pid: std::process::id(),
        };
        self.client
            .serve(|mut s| {
                let r = req.clone();
                async move { s.report_endpoint(r).await }
            })
            .await
            .map(|_| ())
    }

    fn retryable(s: &tonic::Status) -> bool {
        is_retryable(s)
    }
}
