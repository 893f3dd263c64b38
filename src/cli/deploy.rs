//! `aidos serve deploy | list | delete` (deployments through the scheduler) and `aidos serve gateway` (the front
//! that routes to the replicas; `aidos up` starts one too). Wiring only: the reconciler is in the scheduler, the
//! gateway and its remote pools in `aidos-serve` (`aidos_serve::gateway`); a replica is `aidos serve replica`
//! (`serve.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use aidos_api::limits::LimitConfig;
use aidos_api::v1::{
    CanaryRequest, DeleteDeploymentRequest, DeployRequest, Deployment, ListDeploymentsRequest, RoutesRequest,
};
use aidos_runtime::RuntimeKind;
use aidos_serve::ServerConfig;
use aidos_serve::auth::{KeyTable, Keys};
use aidos_serve::gateway::{GatewayAccess, GatewayConfig, RemoteModel, RouteSource};
use aidos_serve::remote::ReplicaAddr;
use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::args::{Global, Output, parse_bytes, parse_cpu};
use super::client::{Client, status_error};
use super::process::shutdown_signal;
use super::render;

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Registry model: NAME@ALIAS, NAME:VERSION or NAME (latest); an alias is resolved now and pinned
    pub model: String,
    /// Deployment name, the model name clients call (default: the model's name)
    #[arg(long, env = "AIDOS_DEPLOY_NAME")]
    pub name: Option<String>,
    /// Replicas to keep running
    #[arg(long, env = "AIDOS_DEPLOY_REPLICAS", default_value_t = 1)]
    pub replicas: u32,
    /// Runtime of each replica: tract, ort or burn
    #[arg(long, env = "AIDOS_DEPLOY_RUNTIME", default_value = "tract")]
    pub runtime: String,
    /// Most samples per batch, per replica
    #[arg(long, env = "AIDOS_DEPLOY_MAX_BATCH", default_value_t = 32)]
    pub max_batch: u32,
    /// Longest a request waits for others to join its batch, in microseconds
    #[arg(long, env = "AIDOS_DEPLOY_MAX_DELAY_US", default_value_t = 500)]
    pub max_delay_us: u64,
    /// Model executors per replica
    #[arg(long, env = "AIDOS_DEPLOY_INSTANCES", default_value_t = 1)]
    pub instances: u32,
    /// Requests allowed to wait per replica; more are refused at once
    #[arg(long, env = "AIDOS_DEPLOY_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: u32,
    /// CPU per replica, in cores (`1`) or millicores (`500m`)
    #[arg(long, env = "AIDOS_DEPLOY_CPUS", value_parser = parse_cpu, default_value = "1")]
    pub cpus: u64,
    /// Memory per replica (`512Mi`, `2Gi`)
    #[arg(long, env = "AIDOS_DEPLOY_MEMORY", value_parser = parse_bytes, default_value = "512Mi")]
    pub memory: u64,
    /// Wait until every replica of the new generation is ready (at most this many seconds; 0: do not wait)
    #[arg(long, env = "AIDOS_DEPLOY_WAIT_SECS", default_value_t = 0)]
    pub wait_secs: u64,
    /// Start MODEL as a canary of the existing deployment --name: it takes this percentage (1-99) of the requests
    /// that name no version, on --replicas replicas of its own, until `aidos serve promote` or `rollback`
    #[arg(long, env = "AIDOS_DEPLOY_CANARY_PERCENT", default_value_t = 0)]
    pub canary_percent: u32,
    /// Autoscale: the fewest replicas (with --max-replicas; --replicas is then the starting count)
    #[arg(long, env = "AIDOS_DEPLOY_MIN_REPLICAS", default_value_t = 0)]
    pub min_replicas: u32,
    /// Autoscale between --min-replicas and this many replicas, from the requests in flight the replicas report
    #[arg(long, env = "AIDOS_DEPLOY_MAX_REPLICAS", default_value_t = 0)]
    pub max_replicas: u32,
    /// Autoscale: requests in flight per replica to aim at (mean over a second; default 4)
    #[arg(long, env = "AIDOS_DEPLOY_TARGET_IN_FLIGHT", default_value_t = 0.0)]
    pub target_in_flight: f64,
    /// Autoscale: scale down only after the load has asked for fewer replicas for this long (default 30)
    #[arg(long, env = "AIDOS_DEPLOY_SCALE_DOWN_DELAY_SECS", default_value_t = 0)]
    pub scale_down_delay_secs: u32,
    /// Let anyone call this deployment's inference endpoints without a key (a public demo). Without it, callers
    /// present a key: `aidos token create --role infer [--deployment NAME]`, or a member's or admin's token
    #[arg(long, env = "AIDOS_DEPLOY_PUBLIC")]
    pub public: bool,
}

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// HTTP listen address (Open Inference Protocol REST, /metrics)
    #[arg(long, env = "AIDOS_GATEWAY_HTTP", default_value = "127.0.0.1:8000")]
    pub http: SocketAddr,
    /// gRPC listen address (inference.GRPCInferenceService)
    #[arg(long, env = "AIDOS_GATEWAY_GRPC", default_value = "127.0.0.1:8001")]
    pub grpc: SocketAddr,
    /// How often the replica list is read from the scheduler, in milliseconds
    #[arg(long, env = "AIDOS_GATEWAY_REFRESH_MS", default_value_t = 250)]
    pub refresh_ms: u64,
    /// Write the bound addresses as JSON to this file once serving (for supervisors and tests)
    #[arg(long, env = "AIDOS_GATEWAY_READY_FILE")]
    pub ready_file: Option<std::path::PathBuf>,
    /// Requests per second each inference key may make through this gateway (0: no limit); over it: 429 /
    /// RESOURCE_EXHAUSTED with a retry hint. Root and worker tokens are exempt
    #[arg(long, env = "AIDOS_GATEWAY_KEY_RATE_LIMIT_PER_SEC", default_value_t = 0.0)]
    pub key_rate_limit_per_sec: f64,
    /// Requests a key may make at once after being idle (default: twice the rate)
    #[arg(long, env = "AIDOS_GATEWAY_KEY_RATE_LIMIT_BURST", default_value_t = 0.0)]
    pub key_rate_limit_burst: f64,
    /// Requests of one key in flight at once through this gateway (0: no limit)
    #[arg(long, env = "AIDOS_GATEWAY_KEY_MAX_IN_FLIGHT", default_value_t = 0)]
    pub key_max_in_flight: u32,
    #[command(flatten)]
    pub tls: super::args::ServeTls,
}

pub async fn deploy(g: &Global, a: DeployArgs) -> anyhow::Result<()> {
    let mut c = Client::new(&g.scheduler)?;
    let req = DeployRequest {
        name: a.name.clone().unwrap_or_default(),
        model: a.model.clone(),
        replicas: a.replicas,
        runtime: a.runtime.clone(),
        max_batch: a.max_batch,
        max_delay_us: a.max_delay_us,
        instances: a.instances,
        max_queue: a.max_queue,
        resources: Some(aidos_api::v1::Resources { cpu_millis: a.cpus, memory_bytes: a.memory, gpus: 0 }),
        canary_percent: a.canary_percent,
        min_replicas: a.min_replicas,
        max_replicas: a.max_replicas,
        target_in_flight: a.target_in_flight,
        scale_down_delay_secs: a.scale_down_delay_secs,
        public: a.public,
    };
    let d = c
        .serve(|mut s| {
            let r = req.clone();
            async move { s.deploy(r).await }
        })
        .await
        .map_err(|s| status_error(s, ""))?
        .into_inner();
    let spec = d.spec.clone().unwrap_or_default();
    let canary = a.canary_percent > 0;
    match d.canary.as_ref().filter(|_| canary) {
        Some(c) => {
            let cs = c.spec.clone().unwrap_or_default();
            println!(
                "deployment {}: canary {}:{} x{} takes {}% of the requests (the rest: {}:{}); \
                 `aidos serve promote {0}` or `aidos serve rollback {0}`",
                d.name, cs.model, cs.version, c.replicas, c.percent, spec.model, spec.version
            );
        }
        None => println!(
            "deployment {} generation {}: {}:{} x{} ({}, max batch {}, max delay {} µs)",
            d.name, d.generation, spec.model, spec.version, d.replicas, spec.runtime, spec.max_batch, spec.max_delay_us
        ),
    }
    wait(&mut c, &d.name, canary, a.wait_secs).await
}

/// Waits (at most `secs`; 0: not at all) until every replica of the deployment's generation (or of its canary)
/// is ready and no replica of another generation is left (the canary's aside).
async fn wait(c: &mut Client, name: &str, canary: bool, secs: u64) -> anyhow::Result<()> {
    if secs == 0 {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let now = get(c, name).await?;
        let canary_gen = now.canary.as_ref().and_then(|c| c.spec.as_ref()).map(|s| s.generation);
        let (gen_, want) = match (canary, canary_gen) {
            (true, Some(g)) => (g, now.canary.as_ref().map(|c| c.replicas).unwrap_or(1)),
            _ => (now.generation, now.replicas),
        };
        let ready = now.replica_status.iter().filter(|r| r.ready && r.generation == gen_).count();
        let old = now
            .replica_status
            .iter()
            .filter(|r| r.generation != now.generation && Some(r.generation) != canary_gen)
            .count();
        if ready >= want as usize && old == 0 {
            println!("{} replicas ready", ready);
            return Ok(());
        }
        anyhow::ensure!(now.status.is_empty(), "deployment {}: {}", now.name, now.status);
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "deployment {}: {ready} of {want} replicas ready after {secs} s",
            now.name,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get(c: &mut Client, name: &str) -> anyhow::Result<Deployment> {
    let req = ListDeploymentsRequest { name: name.to_string() };
    let l = c
        .serve(|mut s| {
            let r = req.clone();
            async move { s.list(r).await }
        })
        .await
        .map_err(|s| status_error(s, ""))?
        .into_inner();
    l.deployments.into_iter().next().ok_or_else(|| anyhow::anyhow!("deployment {name} not found"))
}

pub async fn list(g: &Global) -> anyhow::Result<()> {
    let c = Client::new(&g.scheduler)?;
    let l = c
        .serve(|mut s| async move { s.list(ListDeploymentsRequest::default()).await })
        .await
        .map_err(|s| status_error(s, ""))?
        .into_inner();
    if g.output == Output::Json {
        render::print_json(&json!(l.deployments.iter().map(deployment_json).collect::<Vec<_>>()));
        return Ok(());
    }
    let mut rows = Vec::new();
    for d in &l.deployments {
        let spec = d.spec.clone().unwrap_or_default();
        let ready = d.replica_status.iter().filter(|r| r.ready).count();
        let shared = shared_workers(d);
        let mut notes: Vec<String> = Vec::new();
        if !d.status.is_empty() {
            notes.push(d.status.clone());
        }
        if let Some(a) = &d.autoscale {
            notes.push(format!(
                "autoscaled {}..{} at {} in flight per replica (now {:.1})",
                a.min_replicas, a.max_replicas, a.target_in_flight, d.in_flight
            ));
        }
        if !shared.is_empty() {
            notes.push(format!("replicas share worker {} (no other worker had room)", shared.join(", ")));
        }
        let status = notes.join("; ");
        rows.push(vec![
            d.name.clone(),
            format!("{}:{}", spec.model, spec.version),
            d.generation.to_string(),
            format!("{ready}/{}", d.replicas),
            spec.runtime.clone(),
            String::new(),
            render::truncate(&status, 80),
        ]);
        let canary_gen = d.canary.as_ref().and_then(|c| c.spec.as_ref()).map(|s| s.generation);
        if let Some(c) = &d.canary {
            let cs = c.spec.clone().unwrap_or_default();
            let ready = d.replica_status.iter().filter(|r| r.ready && Some(r.generation) == canary_gen).count();
            rows.push(vec![
                format!("  canary {}%", c.percent),
                format!("{}:{}", cs.model, cs.version),
                cs.generation.to_string(),
                format!("{ready}/{}", c.replicas),
                cs.runtime.clone(),
                String::new(),
                String::new(),
            ]);
        }
        for r in &d.replica_status {
            let state = if r.ready { "ready".to_string() } else { render::task_state(r.state).to_string() };
            let state = if Some(r.generation) == canary_gen { format!("{state} (canary)") } else { state };
            let at = if r.ready { format!("http {} grpc {}", r.http, r.grpc) } else { render::truncate(&r.reason, 50) };
            rows.push(vec![
                format!("  {}", r.job_id),
                format!("v{}", r.version),
                r.generation.to_string(),
                state,
                r.worker_id.clone(),
                at,
                String::new(),
            ]);
        }
    }
    render::print_table(
        &["DEPLOYMENT / REPLICA", "MODEL", "GEN", "READY", "RUNTIME / WORKER", "ENDPOINTS", "STATUS"],
        &rows,
    );
    Ok(())
}

/// Workers running more than one replica of `d`: placement spreads replicas (anti-affinity) while other workers
/// have room, so these say the cluster had none.
fn shared_workers(d: &Deployment) -> Vec<String> {
    let mut on: BTreeMap<&str, usize> = BTreeMap::new();
    for r in d.replica_status.iter().filter(|r| !r.worker_id.is_empty()) {
        *on.entry(r.worker_id.as_str()).or_default() += 1;
    }
    on.into_iter().filter(|(_, n)| *n > 1).map(|(w, _)| w.to_string()).collect()
}

fn deployment_json(d: &Deployment) -> serde_json::Value {
    let spec = d.spec.clone().unwrap_or_default();
    json!({
        "name": d.name,
        "model": spec.model,
        "version": spec.version,
        "requested": d.requested,
        "generation": d.generation,
        "replicas": d.replicas,
        "runtime": spec.runtime,
        "max_batch": spec.max_batch,
        "max_delay_us": spec.max_delay_us,
        "instances": spec.instances,
        "max_queue": spec.max_queue,
        "resources": render::resources_json(d.resources.as_ref()),
        "status": d.status,
        "shared_workers": shared_workers(d),
        "in_flight": d.in_flight,
        "autoscale": d.autoscale.as_ref().map(|a| json!({"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
            "target_in_flight": a.target_in_flight, "scale_down_delay_secs": a.scale_down_delay_secs})),
        "canary": d.canary.as_ref().map(|c| {
            let cs = c.spec.clone().unwrap_or_default();
            json!({"model": cs.model, "version": cs.version, "generation": cs.generation, "percent": c.percent,
                   "replicas": c.replicas, "requested": c.requested})
        }),
        "replica_status": d.replica_status.iter().map(|r| json!({
            "job_id": r.job_id, "generation": r.generation, "version": r.version,
            "state": render::task_state(r.state), "ready": r.ready, "worker": r.worker_id,
            "http": r.http, "grpc": r.grpc, "attempt": r.attempt, "pid": r.pid, "reason": r.reason,
        })).collect::<Vec<_>>(),
    })
}

/// `aidos serve promote` (`promote`) or `aidos serve rollback`: the canary becomes the deployment, or stops.
pub async fn canary(g: &Global, name: &str, promote: bool, wait_secs: u64) -> anyhow::Result<()> {
    let mut c = Client::new(&g.scheduler)?;
    let req = CanaryRequest { name: name.to_string() };
    let d = c
        .serve(|mut s| {
            let r = req.clone();
            async move { if promote { s.promote(r).await } else { s.rollback(r).await } }
        })
        .await
        .map_err(|s| status_error(s, ""))?
        .into_inner();
    let spec = d.spec.clone().unwrap_or_default();
    if promote {
        println!(
            "deployment {name}: canary promoted, now {}:{} generation {}; the other replicas roll over",
            spec.model, spec.version, d.generation
        );
    } else {
        println!(
            "deployment {name}: canary rolled back, all requests to {}:{}; its replicas stop",
            spec.model, spec.version
        );
    }
    wait(&mut c, name, false, wait_secs).await
}

pub async fn delete(g: &Global, name: &str) -> anyhow::Result<()> {
    let c = Client::new(&g.scheduler)?;
    let req = DeleteDeploymentRequest { name: name.to_string() };
    c.serve(|mut s| {
        let r = req.clone();
        async move { s.delete(r).await }
    })
    .await
    .map_err(|s| status_error(s, ""))?;
    println!("deployment {name} deleted; its replicas are stopping");
    Ok(())
}

/// The gateway: an Open Inference Protocol front whose models are the cluster's deployments, each routed to its
/// ready replicas (see `aidos_serve::gateway`). It keeps routing to the replicas it knows when the scheduler
/// cannot be reached.
pub async fn gateway(g: &Global, a: GatewayArgs) -> anyhow::Result<()> {
    let limits = (a.key_rate_limit_per_sec > 0.0 || a.key_max_in_flight > 0).then_some(LimitConfig {
        rate_per_sec: a.key_rate_limit_per_sec,
        burst: if a.key_rate_limit_burst > 0.0 { a.key_rate_limit_burst } else { 2.0 * a.key_rate_limit_per_sec },
        max_in_flight: a.key_max_in_flight,
    });
    let refresh = Duration::from_millis(a.refresh_ms);
    let server = start_gateway(g.scheduler.clone(), a.http, a.grpc, refresh, limits, a.tls.load()?).await?;
    println!("gateway serving deployments: HTTP {}://{}  gRPC {}", a.tls.scheme(), server.http, server.grpc);
    if let Some(f) = &a.ready_file {
        server.write_ready_file(f).with_context(|| format!("writing {}", f.display()))?;
    }
    shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

/// Binds the gateway's listeners and starts following the scheduler's deployments.
pub async fn start_gateway(
    schedulers: Vec<String>,
    http: SocketAddr,
    grpc: SocketAddr,
    refresh: Duration,
    key_limits: Option<LimitConfig>,
    tls: Option<aidos_api::tls::ServerTls>,
) -> anyhow::Result<aidos_serve::RunningServer> {
    let keys = KeyTable::new();
    let source = DeploymentRoutes { client: Client::new(&schedulers)?, keys: keys.clone() };
    let cfg = GatewayConfig { server: ServerConfig { tls, ..ServerConfig::plain(http, grpc) }, refresh };
    // The gateway presents its own token (the CLI's: root under `aidos up`, else a worker token) to the replicas.
    let access = GatewayAccess { auth: keys, creds: super::client::credentials(), key_limits };
    aidos_serve::gateway::start(&cfg, source, access)
        .await
        .with_context(|| format!("binding the gateway on {http} / {grpc}"))
}

/// The gateway's routes and keys: every project's deployments, and who may call them (`ServeService.Routes`).
struct DeploymentRoutes {
    client: Client,
    keys: std::sync::Arc<KeyTable>,
}

impl RouteSource for DeploymentRoutes {
    async fn routes(&mut self) -> Result<Vec<RemoteModel>, String> {
        let r = self
            .client
            .serve(|mut s| async move { s.routes(RoutesRequest::default()).await })
            .await
            .map_err(|s| format!("reading deployments: {}", s.message()))?
            .into_inner();
        self.keys.replace(Keys::from_routes(&r));
        Ok(routes(&r.deployments))
    }
}

/// Ready replicas of every deployment, grouped by the model version they serve.
fn routes(deployments: &[Deployment]) -> Vec<RemoteModel> {
    let mut out: BTreeMap<(String, u64), RemoteModel> = BTreeMap::new();
    for d in deployments {
        let spec = d.spec.clone().unwrap_or_default();
        let runtime = spec.runtime.parse().unwrap_or(RuntimeKind::Tract);
        let canary = d.canary.as_ref().and_then(|c| Some((c.spec.as_ref()?.version, c.percent)));
        for r in d.replica_status.iter().filter(|r| r.ready) {
            out.entry((d.name.clone(), r.version as u64))
                .or_insert_with(|| RemoteModel {
                    name: d.name.clone(),
                    version: r.version as u64,
                    runtime,
                    max_batch: spec.max_batch as usize,
                    endpoints: vec![],
                    canary_percent: canary.filter(|(v, _)| *v == r.version).map(|(_, p)| p).unwrap_or(0),
                })
                .endpoints
                .push(ReplicaAddr { grpc: r.grpc.clone(), http: r.http.clone() });
        }
    }
    out.into_values().collect()
}
