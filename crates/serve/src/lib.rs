//! aidos-serve: the model server.
//!
//! * [`repository::Repository`]: the loaded model versions, each behind a [`backend::Backend`]: a
//!   [`batcher::Batcher`] (dynamic batching actor + N executor threads running a runtime
//!   [`aidos_runtime::Instance`]) or a [`remote::Pool`] (remote replicas, the gateway in front of a deployment).
//! * [`replica`]: one replica of a deployment (a serve job's task); [`gateway`]: the front that routes every
//!   deployment to its replicas, kept in step with the scheduler by a sync loop.
//! * Fronts: Open Inference Protocol v2 over HTTP ([`http`], axum) and gRPC ([`grpc`], tonic), both checking
//!   requests with [`protocol::prepare`]; Prometheus metrics ([`metrics`]).
//! * [`start`] binds both listeners and serves until the returned handle is shut down.
//!
//! Runtimes are chosen by the caller (the binary wires tract, ort and the burn-native runtime of
//! `aidos-train`); this crate links no burn and no scheduler.

pub mod auth;
pub mod backend;
pub mod batcher;
pub mod config;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod remote;
pub mod replica;
pub mod repository;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use backend::Backend;
pub use config::{BatchConfig, Limits, ServerConfig};
pub use error::ServeError;
pub use metrics::Metrics;
pub use repository::{Repository, VersionPolicy};

/// What both fronts share.
pub struct ServerState {
    pub repo: Arc<Repository>,
    pub limits: Limits,
    pub name: String,
    /// Directory behind the repository load/unload API (Triton layout), if any.
    pub model_dir: Option<PathBuf>,
    /// Batching defaults for models loaded through the repository API.
    pub defaults: BatchConfig,
    /// Who may call (checked by both fronts before anything else).
    pub auth: Arc<dyn auth::Authorizer>,
    /// Per-key rate and in-flight limits (the gateway's, when configured); None: none.
    pub key_limits: Option<Arc<aidos_api::limits::Limiter>>,
}

/// A running server.
pub struct RunningServer {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish, and returns when both fronts are down.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Writes `{"http": ADDR, "grpc": ADDR}` to `path` atomically (a reader never sees half of it), for
    /// supervisors and tests.
    pub fn write_ready_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        write_endpoints_file(path, &self.http.to_string(), &self.grpc.to_string())
    }
}

/// Writes `{"http": HTTP, "grpc": GRPC}` to `path` atomically (a reader never sees half of it).
pub fn write_endpoints_file(path: &std::path::Path, http: &str, grpc: &str) -> std::io::Result<()> {
    let j = serde_json::json!({"http": http, "grpc": grpc});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, j.to_string())?;
    std::fs::rename(&tmp, path)
}

/// Binds `cfg.http` and `cfg.grpc` (port 0: any free port; the handle says which) and serves `state`.
pub async fn start(cfg: &ServerConfig, state: Arc<ServerState>) -> std::io::Result<RunningServer> {
    let http_l = tokio::net::TcpListener::bind(cfg.http).await?;
    let grpc_l = tokio::net::TcpListener::bind(cfg.grpc).await?;
    let (http, grpc) = (http_l.local_addr()?, grpc_l.local_addr()?);
    let tls = match &cfg.tls {
        Some(t) => Some((
            t.acceptor(&[b"h2", b"http/1.1"]).map_err(std::io::Error::other)?,
            t.acceptor(&[b"h2"]).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let (http_tls, grpc_tls) = tls.unzip();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let app = http::router(state.clone());
    let rx1 = rx.clone();
    let http_task = match http_tls {
        // The acceptor sets TCP_NODELAY on every connection.
        Some(acceptor) => {
            let l = aidos_api::tls::TlsListener::new(http_l, acceptor)?.tap_io(|_| {});
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop(rx1)).await {
                    tracing::error!(error = %e, "HTTPS front stopped");
                }
            })
        }
        None => tokio::spawn(async move {
            let l = http_l.tap_io(|s| {
                let _ = s.set_nodelay(true);
            });
            if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop(rx1)).await {
                tracing::error!(error = %e, "HTTP front stopped");
            }
        }),
    };
    let svc = grpc::service(state.clone());
    // Beside the inference service: grpc.health.v1 (load balancers' and Kubernetes' probes), SERVING while a model
    // is loaded, as /v2/health/ready; and server reflection (v1 and v1alpha), so grpcurl needs no .proto file.
    let (health, health_svc) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(grpc::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Fails only on a malformed descriptor set, and both are compiled in.
    let reflection_v1 = reflection().build_v1().expect("descriptors compiled in");
    let reflection_v1alpha = reflection().build_v1alpha().expect("descriptors compiled in");
    let rx2 = rx.clone();
    let server = tonic::transport::Server::builder()
        .add_service(svc)
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let grpc_task = match grpc_tls {
        Some(acceptor) => {
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(aidos_api::tls::accept(grpc_l, acceptor)),
                |(tls, _addr)| Ok::<_, std::io::Error>(tls),
            );
            tokio::spawn(async move {
                if let Err(e) = server.serve_with_incoming_shutdown(incoming, stop(rx)).await {
                    tracing::error!(error = %e, "gRPC (TLS) front stopped");
                }
            })
        }
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_l).with_nodelay(Some(true));
            tokio::spawn(async move {
                if let Err(e) = server.serve_with_incoming_shutdown(incoming, stop(rx)).await {
                    tracing::error!(error = %e, "gRPC front stopped");
                }
            })
        }
    };
    let health_task = tokio::spawn(report_health(state, health, rx2));
    Ok(RunningServer { http, grpc, shutdown: tx, tasks: vec![http_task, grpc_task, health_task] })
}

/// Keeps the gRPC health status of the server ("") and of the inference service in step with readiness (a model
/// loaded: SERVING), checked every 250 ms until `stop`.
async fn report_health(
    state: Arc<ServerState>,
    health: tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let service = <grpc::pb::grpc_inference_service_server::GrpcInferenceServiceServer<grpc::Front> as tonic::server::NamedService>::NAME;
    let mut last = None;
    loop {
        let ready = !state.repo.is_empty();
        if last != Some(ready) {
            let status =
                if ready { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
            health.set_service_status("", status).await;
            health.set_service_status(service, status).await;
            last = Some(ready);
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

use axum::serve::ListenerExt as _;
