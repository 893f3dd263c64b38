//! `aidos serve ...`: run a model server (Open Inference Protocol over HTTP and gRPC) and `aidos infer`, its
//! convenience client. Wiring only: the server is `aidos-serve`; runtimes come from `aidos-runtime` (tract, ort)
//! and `aidos-kernels` (burn).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aidos_api::ModelVersion;
use aidos_blob::{BlobId, BlobStore};
use aidos_runtime::{ModelRuntime, RuntimeKind};
use aidos_serve::{BatchConfig, Limits, Metrics, Repository, ServerConfig, ServerState};
use anyhow::Context;
use clap::{Args, Subcommand};

use super::client::Client;
use super::{Global, blob_store, shutdown_signal};

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
    /// Route the Open Inference Protocol to every deployment's ready replicas (`aidos up` runs one on 8000/8001)
    Gateway(super::deploy::GatewayArgs),
    /// One replica of a deployment (run by a worker; configured by the task environment)
    #[command(hide = true)]
    Replica(BatchArgs),
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

#[derive(Args, Debug)]
pub struct InferArgs {
    /// Model name on the server
    pub model: String,
    /// JSON file: an Open Inference Protocol request body, or a bare array of rows (`[[...], [...]]`)
    #[arg(long, env = "AIDOS_INFER_INPUT")]
    pub input: PathBuf,
    /// Model version (default: the server's latest)
    #[arg(long, env = "AIDOS_INFER_VERSION")]
    pub version: Option<String>,
    /// Server HTTP address
    #[arg(long, env = "AIDOS_INFER_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
}

pub async fn run(g: &Global, cmd: ServeCmd) -> anyhow::Result<()> {
    match cmd {
        ServeCmd::Run(a) => serve(g, a).await,
        ServeCmd::Deploy(a) => super::deploy::deploy(g, a).await,
        ServeCmd::List => super::deploy::list(g).await,
        ServeCmd::Delete { name } => super::deploy::delete(g, &name).await,
        ServeCmd::Gateway(a) => super::deploy::gateway(g, a).await,
        ServeCmd::Replica(b) => super::deploy::replica(b).await,
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
        return Ok(Arc::new(aidos_kernels::runtime::BurnRuntime::new(l.model, Some(l.normalization))));
    }
    let bytes = match m.artifacts.get("onnx") {
        Some(id) => {
            store.get(&BlobId::parse(id)?).with_context(|| format!("{what}: reading its ONNX artifact"))?.to_vec()
        }
        None => super::model::export_onnx(m, store, aidos_kernels::onnx::Quantize::None)?,
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
    let cfg = ServerConfig { http: a.http, grpc: a.grpc };
    let state = Arc::new(ServerState {
        repo,
        limits: Limits { max_request_bytes: a.max_request_bytes, max_tensor_bytes: a.max_tensor_bytes },
        name: "aidos".into(),
        model_dir: a.model_repository.clone(),
        defaults: batch,
    });
    let server = aidos_serve::start(&cfg, state).await.with_context(|| format!("binding {} / {}", a.http, a.grpc))?;
    println!("serving: HTTP http://{}  gRPC {}  (metrics: http://{}/metrics)", server.http, server.grpc, server.http);
    if let Some(f) = &a.ready_file {
        write_ready_file(f, server.http, server.grpc)?;
    }
    shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

/// Writes `{"http": ADDR, "grpc": ADDR}` to `f` atomically (a reader never sees half of it).
pub fn write_ready_file(f: &std::path::Path, http: SocketAddr, grpc: SocketAddr) -> anyhow::Result<()> {
    let j = serde_json::json!({"http": http.to_string(), "grpc": grpc.to_string()});
    let tmp = f.with_extension("tmp");
    std::fs::write(&tmp, j.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, f).with_context(|| format!("writing {}", f.display()))?;
    Ok(())
}

/// `aidos infer`: one request to a server's HTTP front; prints the outputs (and the argmax of each row).
pub async fn infer(g: &Global, a: InferArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", a.input.display()))?;
    let body = if v.get("inputs").is_some() {
        v
    } else {
        let rows = v
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("{}: expected a request or an array of rows", a.input.display()))?;
        let width = rows.first().and_then(|r| r.as_array()).map(|r| r.len()).unwrap_or(0);
        anyhow::ensure!(width > 0, "{}: rows must be non-empty arrays of numbers", a.input.display());
        let name = input_name(&a).await?;
        serde_json::json!({"inputs": [{"name": name, "datatype": "FP32", "shape": [rows.len(), width], "data": rows}]})
    };
    let path = match &a.version {
        Some(ver) => format!("/v2/models/{}/versions/{ver}/infer", a.model),
        None => format!("/v2/models/{}/infer", a.model),
    };
    let (status, resp) = http_json("POST", &a.url, &path, Some(body.to_string())).await?;
    anyhow::ensure!(status == 200, "{} answered {status}: {}", a.url, resp.get("error").unwrap_or(&resp));
    if g.output == super::Output::Json {
        super::render::print_json(&resp);
        return Ok(());
    }
    for o in resp["outputs"].as_array().into_iter().flatten() {
        let shape: Vec<usize> =
            o["shape"].as_array().into_iter().flatten().filter_map(|d| d.as_u64()).map(|d| d as usize).collect();
        let data: Vec<f64> = o["data"].as_array().into_iter().flatten().filter_map(|d| d.as_f64()).collect();
        println!(
            "{} {:?} (model {} version {})",
            o["name"].as_str().unwrap_or("?"),
            shape,
            resp["model_name"],
            resp["model_version"]
        );
        let w = shape.get(1).copied().unwrap_or(1).max(1);
        for (i, row) in data.chunks(w).enumerate() {
            let best = row.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).map(|(j, _)| j).unwrap_or(0);
            let vals: Vec<String> = row.iter().map(|x| format!("{x:.4}")).collect();
            println!("  row {i}: argmax {best}  [{}]", vals.join(", "));
        }
    }
    Ok(())
}

async fn input_name(a: &InferArgs) -> anyhow::Result<String> {
    let (status, meta) = http_json("GET", &a.url, &format!("/v2/models/{}", a.model), None).await?;
    anyhow::ensure!(status == 200, "{}: model {}: {}", a.url, a.model, meta.get("error").unwrap_or(&meta));
    Ok(meta["inputs"][0]["name"].as_str().unwrap_or("input").to_string())
}

/// Minimal HTTP/1.1 JSON request over a plain TCP connection (the CLI needs no HTTP client library for this).
async fn http_json(
    method: &str,
    base: &str,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = base.strip_prefix("http://").unwrap_or(base).trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport).await.with_context(|| format!("connecting to {base}"))?;
    let body = body.unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("{base}: malformed HTTP answer"))?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(rest) } else { rest.to_string() };
    let v = if body.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body))
    };
    Ok((status, v))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
