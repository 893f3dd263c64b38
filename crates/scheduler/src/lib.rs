//! aidos control plane: a Raft-replicated scheduler (openraft + redb) with placement, worker tracking and the
//! gRPC services (jobs, workers, cluster, datasets, runs, models, serving, edge, raft) on one port.
//!
//! # Layout (each layer uses only the ones below it)
//! - `state` — the replicated state, one module per domain (jobs and workers, registry, serving, edge), each owning
//!   its rows, snapshot part and `apply` arms; `ClusterState` composes them. Pure: no I/O, no locks.
//! - `placement`, `reconcile` — pure planners: `schedule(pending, &view)`, `reconcile(&state, now)`.
//! - `queries` — every read over `&ClusterState`, as pure functions.
//! - `store` — openraft's log and state-machine storage in redb, and snapshots built from the stored rows.
//! - `core` — the node's shared core: Raft handle, applied state, leader memory, `propose`.
//! - `leader` — the leader path: validate, propose, read (one module per domain).
//! - `loops` — what the leader does on its own: placement, worker liveness, the serving reconciler, retention of
//!   finished jobs (`retention`) and garbage collection of unreferenced blobs (`gc`).
//! - `grpc` — thin tonic adapters onto `leader` and `queries`, one per service.
//! - `forward` — the forwarding path: one tower layer relays leader-bound calls from followers, unchanged.
//! - `auth` — the front door: one tower layer, outside `forward`, authenticates and authorizes every call.
//!
//! # Paths through the code
//! A client call reaches any node; `auth` checks its token against the rule for its method (`auth::access`);
//! `forward` relays it to the leader unless the node leads (or the method is
//! answered locally, see `forward::policy`). On the leader, the `grpc` adapter calls the leader path, which
//! validates and proposes a `CommandV1`; openraft replicates and fsyncs it on a quorum (`store`), and
//! `ClusterState::apply` applies it on every node. `loops` places pending work with the pure
//! `placement::schedule` and watches worker liveness (leader memory, never the log).
//!
//! # How to add a replicated domain
//! The recipe is in the `state` module's documentation: one new module in `state/` and one registration line in
//! its `domains!` list; storage, snapshots and command dispatch follow from the domain's `Rows` and `Domain`
//! implementations. A new RPC is its adapter in `grpc/` and its leader method in `leader/`: forwarding needs no
//! code (a method answered by every node adds one line to `forward::policy`); its access rule is one line in
//! `auth::access` (a method without one is refused, and the tests name it).

pub mod audit;
pub mod auth;
pub mod autoscale;
mod cert_rotation;
mod core;
pub mod dashboard;
pub mod downsample;
mod edge_auth;
mod edge_keys;
mod error;
mod forward;
pub mod gc;
mod grpc;
pub mod http;
mod leader;
/// Per-token limits (shared with the serving fronts, so it lives in `aidos_api`).
pub use aidos_api::limits;
mod loops;
pub mod mlflow;
pub mod mlflow_filter;
mod network;
pub mod placement;
pub mod queries;
mod raft_types;
pub mod reconcile;
pub mod replica_metrics;
pub mod retention;
pub mod state;
mod store;
pub mod sweep;
mod task_logs;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aidos_api::cluster_service_server::ClusterServiceServer;
use aidos_api::dataset_service_server::DatasetServiceServer;
use aidos_api::job_service_server::JobServiceServer;
use aidos_api::model_service_server::ModelServiceServer;
use aidos_api::raft_service_server::RaftServiceServer;
use aidos_api::run_service_server::RunServiceServer;
use aidos_api::worker_service_server::WorkerServiceServer;
use openraft::BasicNode;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tower_layer::Layer;

pub use error::SchedulerError;
pub use placement::Strategy;

/// Everything one scheduler node needs. Plain data: the binary layers flags, env and files onto it.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// This node's Raft id (> 0).
    pub node_id: u64,
    /// Where the gRPC server binds (all services on one port).
    pub listen: SocketAddr,
    /// The address other nodes and workers dial to reach this node; empty: the bound address.
    pub advertise: String,
    /// redb file (raft log, vote, state machine) and the leader's task logs live here.
    pub data_dir: PathBuf,
    /// Initial voters (id -> address), this node included. Used once, to initialize an empty cluster: the node
    /// with the lowest id initializes. Empty: a single-node cluster of this node.
    pub initial_members: BTreeMap<u64, String>,
    /// A worker silent for this long is declared lost.
    pub worker_timeout: Duration,
    /// How often workers should heartbeat.
    pub heartbeat_interval: Duration,
    pub default_strategy: Strategy,
    /// Where this node keeps the cluster's blobs (its blob service, edge downloads); None: blob uploads, edge
    /// deployments and downloads are refused. A cluster of more than one node needs a shared store (S3, or a
    /// directory declared shared): [`SchedulerNode::start`] refuses a private directory
    /// ([`aidos_blob::StoreConfig::check_cluster`]).
    pub blobs: Option<aidos_blob::StoreConfig>,
    /// ed25519 key edge deployments are signed with (32-byte seed file; created when missing). Every node of a
    /// cluster needs the same file. None: `<data_dir>/edge-signing.key`.
    pub edge_signing_key: Option<PathBuf>,
    /// Shared secret a new edge device must present to enrol (see `edge_auth`); None: enrolment is open.
    pub edge_enrollment_token: Option<String>,
    /// Largest blob one upload to this node's `BlobService` may carry. The upload streams into the store; the
    /// limit spares the tasks and clients that read a blob, which hold it whole.
    pub max_blob_bytes: u64,
    /// How many finished jobs the state keeps, and for how long (see `retention`).
    pub retention: retention::RetentionPolicy,
    /// How often the leader compacts finished jobs beyond `retention` (and every node drops their task logs);
    /// zero: never.
    pub retention_interval: Duration,
    /// How often the leader collects unreferenced blobs from its blob store (see `gc`); zero: never.
    pub blob_gc_interval: Duration,
    /// An unreferenced blob is collected only once its last put is this old: writers must reference a blob within
    /// this (less the S3 store's `refresh_after`) of uploading it.
    pub blob_gc_grace: Duration,
    /// The cluster's root token (`aidos_root_<secret>`, see `aidos_api::auth`): the bootstrap admin, what nodes
    /// present to each other, and the key job tokens derive from. Every node of a cluster needs the same one.
    pub root_token: String,
    /// Per-token request-rate and in-flight limits of this node's calls (`limits`).
    pub limits: limits::LimitConfig,
    /// Where the HTTP API (`http`: Prometheus service discovery) listens; None: it does not.
    pub http: Option<SocketAddr>,
    /// How long the audit log keeps a record (it also keeps at most `state::audit::MAX_AUDIT_RECORDS`); zero:
    /// bounded by count only.
    pub audit_retention: Duration,
    /// Transport security: every listener of the node serves TLS and nodes and workers authenticate each other
    /// with certificates of the cluster CA (`aidos_api::tls`); None: plain TCP.
    pub tls: Option<TlsConfig>,
}

/// A node's TLS: where the cluster CA is, and how long the certificates it issues live.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Holds `ca.pem` and `ca.key` (`aidos cert init`). Every node of a cluster needs the same CA.
    pub ca_dir: PathBuf,
    /// Lifetime of this node's own certificate (issued at start, and again two thirds into each: `cert_rotation`).
    pub node_cert_lifetime: Duration,
    /// Lifetime of the certificates workers receive when they join or renew (they renew two thirds into it).
    pub worker_cert_lifetime: Duration,
    /// Lifetime of edge devices' certificates (their agents renew them after two thirds of it, so a short one
    /// costs nothing but a call).
    pub device_cert_lifetime: Duration,
}

impl TlsConfig {
    pub fn new(ca_dir: PathBuf) -> TlsConfig {
        TlsConfig {
            ca_dir,
            node_cert_lifetime: aidos_api::tls::DEFAULT_CERT_LIFETIME,
            worker_cert_lifetime: aidos_api::tls::DEFAULT_CERT_LIFETIME,
            device_cert_lifetime: aidos_api::tls::DEFAULT_DEVICE_CERT_LIFETIME,
        }
    }
}

/// Default of [`SchedulerConfig::audit_retention`]: 90 days.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Default of [`SchedulerConfig::retention_interval`]: 30 s.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(30);

/// Default of [`SchedulerConfig::max_blob_bytes`]: 2 GiB.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 2 << 30;

impl SchedulerConfig {
    pub fn single_node(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            node_id: 1,
            listen,
            advertise: String::new(),
            data_dir,
            initial_members: BTreeMap::new(),
            worker_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_millis(500),
            default_strategy: Strategy::BinPack,
            blobs: None,
            edge_signing_key: None,
            edge_enrollment_token: None,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            retention: retention::RetentionPolicy::default(),
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            blob_gc_interval: gc::DEFAULT_INTERVAL,
            blob_gc_grace: gc::DEFAULT_GRACE,
            root_token: aidos_api::auth::new_root_token(),
            limits: limits::LimitConfig::default(),
            http: None,
            audit_retention: DEFAULT_AUDIT_RETENTION,
            tls: None,
        }
    }
}

/// The hosts and addresses a node's certificate names beside `aidos_api::tls::SERVER_NAME`: its advertised host and
/// its listeners' addresses (wildcards left out), so that browsers and curl can verify it by the address they use.
fn node_names(cfg: &SchedulerConfig) -> Vec<String> {
    let host = |a: &str| {
        let a = a.trim().trim_start_matches("http://").trim_start_matches("https://");
        a.rsplit_once(':').map(|(h, _)| h).unwrap_or(a).to_string()
    };
    let mut v = vec!["localhost".to_string()];
    if !cfg.advertise.is_empty() {
        v.push(host(&cfg.advertise));
    }
    for a in [Some(cfg.listen), cfg.http].into_iter().flatten() {
        if !a.ip().is_unspecified() {
            v.push(a.ip().to_string());
        }
    }
    v
}

/// Concurrent HTTP/2 streams one client connection may hold (bounds a worker's concurrent log streams too).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 4096;

/// Every gRPC service of a node: aidos's own, `grpc.health.v1` and server reflection (v1 and v1alpha: grpcurl and
/// the Python client ask for either).
/// The health service's reporter comes back beside them.
fn grpc_routes(core: &Arc<core::Core>) -> (tonic::service::Routes, tonic_health::server::HealthReporter) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let big = network::MAX_RAFT_MESSAGE;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(aidos_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Fails only on a malformed descriptor set, and both are compiled in.
    const DESCRIPTORS: &str = "descriptors compiled in";
    let mut b = tonic::service::Routes::builder();
    b.add_service(RaftServiceServer::new(grpc::raft::RaftRpc(core.clone())).max_decoding_message_size(big))
        .add_service(JobServiceServer::new(grpc::jobs::Jobs(core.clone())).max_decoding_message_size(16 << 20))
        .add_service(WorkerServiceServer::new(grpc::workers::Workers(core.clone())))
        .add_service(ClusterServiceServer::new(grpc::cluster::Cluster(core.clone())))
        .add_service(
            DatasetServiceServer::new(grpc::ml::Datasets(core.clone()))
                .max_decoding_message_size(leader::registry::MAX_MANIFEST_BYTES + 4096),
        )
        .add_service(RunServiceServer::new(grpc::ml::Runs(core.clone())).max_decoding_message_size(16 << 20))
        .add_service(ModelServiceServer::new(grpc::ml::Models(core.clone())))
        .add_service(
            aidos_api::blob_service_server::BlobServiceServer::new(grpc::blob::Blobs::new(core.clone()))
                .max_decoding_message_size(8 << 20),
        )
        .add_service(aidos_api::serve_service_server::ServeServiceServer::new(grpc::serve::Serve(core.clone())))
        .add_service(aidos_api::sweep_service_server::SweepServiceServer::new(grpc::sweeps::Sweeps(core.clone())))
        .add_service(aidos_api::auth_service_server::AuthServiceServer::new(grpc::auth::Auth(core.clone())))
        .add_service(aidos_api::audit_service_server::AuditServiceServer::new(grpc::auth::Audit(core.clone())))
        .add_service(
            aidos_api::edge_service_server::EdgeServiceServer::new(grpc::edge::Edge(core.clone()))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(16 << 20),
        )
        .add_service(health)
        .add_service(reflection().build_v1().expect(DESCRIPTORS))
        .add_service(reflection().build_v1alpha().expect(DESCRIPTORS));
    (b.routes(), reporter)
}

/// A running scheduler node.
pub struct SchedulerNode {
    local_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    core: Arc<core::Core>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn raft_config() -> Result<openraft::Config, SchedulerError> {
    openraft::Config {
        cluster_name: "aidos".into(),
        heartbeat_interval: 150,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        // Entries can carry up to 1000 submissions: keep one append message well under network::MAX_RAFT_MESSAGE.
        max_payload_entries: 64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| SchedulerError::Raft(e.to_string()))
}

impl SchedulerNode {
    /// Starts the node: opens storage, binds `listen`, joins or initializes the cluster.
    pub async fn start(mut cfg: SchedulerConfig) -> Result<SchedulerNode, SchedulerError> {
        if cfg.node_id == 0 {
            return Err(SchedulerError::InvalidArgument("node id must be > 0".into()));
        }
        match aidos_api::auth::parse_token(&cfg.root_token) {
            Ok(t) if t.id == aidos_api::auth::ROOT_ID => {}
            _ => {
                return Err(SchedulerError::InvalidArgument(
                    "root token: expected `aidos_root_<64 hex digits>` (see --admin-token-file)".into(),
                ));
            }
        }
        if let Some(blobs) = &cfg.blobs {
            blobs.check_cluster(&cfg.initial_members).map_err(SchedulerError::InvalidArgument)?;
        }
        if !cfg.blob_gc_interval.is_zero() {
            let refresh_after = match &cfg.blobs {
                Some(aidos_blob::StoreConfig::S3(c)) => Some(c.refresh_after),
                _ => None,
            };
            gc::check_grace(cfg.blob_gc_grace, refresh_after).map_err(SchedulerError::InvalidArgument)?;
        }
        let dir = cfg.data_dir.clone();
        let db = tokio::task::spawn_blocking(move || store::open_db(&dir))
            .await
            .map_err(|e| SchedulerError::Storage(e.to_string()))??;
        let log = store::log_store::LogStore::new(db.clone());
        let db2 = db.clone();
        let snap_dir = cfg.data_dir.join("snapshots");
        let sm = tokio::task::spawn_blocking(move || store::state_machine::StateMachineStore::open(db2, snap_dir))
            .await
            .map_err(|e| SchedulerError::Storage(e.to_string()))??;
        let shared = sm.shared();
        let version = sm.subscribe();
        // TLS: this node's certificate, issued now from the cluster CA (server for every listener, client for its
        // peers).
        // It is re-issued two thirds into its lifetime (`cert_rotation`).
        let cert_names = node_names(&cfg);
        let (server_tls, node_tls, first_cert) = match &cfg.tls {
            Some(t) => {
                let tls_err = |e: aidos_api::tls::TlsError| SchedulerError::InvalidArgument(format!("TLS: {e}"));
                let ca = aidos_api::tls::Ca::load(&t.ca_dir).map_err(tls_err)?;
                let mine = ca.issue_node(cfg.node_id, &cert_names, t.node_cert_lifetime).map_err(tls_err)?;
                let server = aidos_api::tls::ServerTls::new(ca.cert_pem(), &mine).map_err(tls_err)?;
                let client = aidos_api::tls::ClientTls::trusting(ca.cert_pem()).map_err(tls_err)?;
                client.rotate(&mine.cert_pem, &mine.key_pem).map_err(tls_err)?;
                let node = core::NodeTls {
                    ca,
                    client,
                    worker_cert_lifetime: t.worker_cert_lifetime,
                    device_cert_lifetime: t.device_cert_lifetime,
                };
                (Some(server), Some(Arc::new(node)), Some(mine))
            }
            None => (None, None, None),
        };
        let peer_credentials = aidos_api::auth::Credentials::token(cfg.root_token.clone())
            .with_tls(node_tls.as_ref().map(|t| t.client.clone()));
        let raft = raft_types::Raft::new(
            cfg.node_id,
            Arc::new(raft_config()?),
            network::Network { credentials: peer_credentials },
            log,
            sm,
        )
        .await
        .map_err(|e| SchedulerError::Raft(e.to_string()))?;

        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let http_listener = match cfg.http {
            // Bound before the node reports itself started, so that a bad address fails the start.
            Some(a) => Some(tokio::net::TcpListener::bind(a).await?),
            None => None,
        };
        let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let local_addr = listener.local_addr()?;
        if cfg.advertise.is_empty() {
            cfg.advertise = local_addr.to_string();
        }
        let logs = task_logs::TaskLogs::new(&cfg.data_dir.join("task-logs"))?;
        let (submit_tx, submit_rx) = mpsc::channel(16 * 1024);
        let key_file = cfg.edge_signing_key.clone().unwrap_or_else(|| edge_keys::default_key_file(&cfg.data_dir));
        let blobs: Option<Arc<dyn aidos_blob::BlobStore>> = match &cfg.blobs {
            Some(c) => {
                Some(c.open().map_err(|e| SchedulerError::Storage(format!("blob store {}: {e}", c.describe())))?)
            }
            None => None,
        };
        let (kf, bs, token) = (key_file.clone(), blobs.clone(), cfg.edge_enrollment_token.clone());
        let edge = tokio::task::spawn_blocking(move || edge_keys::EdgeCore::open(&kf, bs, token))
            .await
            .map_err(|e| SchedulerError::Storage(e.to_string()))??;
        let core = Arc::new(
            core::Core::new(raft.clone(), shared, version, cfg.clone(), submit_tx, logs, edge)
                .with_blobs(blobs)
                .with_tls(node_tls),
        );
        let (stop, stop_rx) = watch::channel(false);

        let mut tasks = vec![
            tokio::spawn(leader::run_proposer(core.clone(), submit_rx)),
            tokio::spawn(loops::run_placement(core.clone(), stop_rx.clone())),
            tokio::spawn(loops::run_liveness(core.clone(), stop_rx.clone())),
            tokio::spawn(loops::run_reconciler(core.clone(), stop_rx.clone())),
            tokio::spawn(loops::run_autoscaler(core.clone(), stop_rx.clone())),
            tokio::spawn(loops::run_retention(core.clone(), stop_rx.clone())),
            tokio::spawn(loops::run_blob_gc(core.clone(), stop_rx.clone())),
            tokio::spawn(leader::sweeps::run(core.clone(), stop_rx.clone())),
            tokio::spawn(audit::run(core.clone(), stop_rx.clone())),
        ];
        if let (Some(server), Some(first), Some(t)) = (server_tls.clone(), first_cert, &cfg.tls) {
            let lifetime = t.node_cert_lifetime;
            let rotation = cert_rotation::run(core.clone(), server, cert_names, lifetime, first, stop_rx.clone());
            tasks.push(tokio::spawn(rotation));
        }
        let (routes, health) = grpc_routes(&core);
        tasks.push(tokio::spawn(loops::run_health(core.clone(), health, stop_rx.clone())));
        // In front of every service: authenticates and authorizes every call (`auth`), then relays leader-bound
        // calls from a follower to the leader (`forward`). The HTTP API calls the same stack in process.
        let auth_layer = auth::AuthLayer::new(core.clone(), limits::Limiter::new(cfg.limits));
        let forward_layer = forward::ForwardLayer::new(core.clone());
        let in_process = auth_layer.layer(forward_layer.layer(routes.clone()));
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            // A worker keeps one ReportLogs stream per running attempt on its single connection, beside its
            // heartbeats and status reports. hyper's default of 200 concurrent streams per connection let a busy
            // worker's log streams starve its heartbeats (it was then declared lost).
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .initial_stream_window_size(Some(aidos_api::HTTP2_STREAM_WINDOW))
            .initial_connection_window_size(Some(aidos_api::HTTP2_CONNECTION_WINDOW))
            .max_frame_size(Some(aidos_api::HTTP2_MAX_FRAME_SIZE))
            .layer(auth_layer)
            .layer(forward_layer)
            .add_routes(routes);
        let mut stop_srv = stop_rx.clone();
        // Our own listener (so port 0 works): Server::tcp_nodelay applies only to listeners tonic binds itself, so
        // set it here. Without it, Nagle + delayed ACK stall small responses by ~40 ms.
        let shutdown = async move {
            let _ = stop_srv.changed().await;
        };
        let tls_err = |e: aidos_api::tls::TlsError| SchedulerError::InvalidArgument(format!("TLS: {e}"));
        let serving = match &server_tls {
            Some(t) => {
                let accepted = aidos_api::tls::accept(listener, t.acceptor(&[b"h2"]).map_err(tls_err)?);
                let incoming = tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::ReceiverStream::new(accepted),
                    |(tls, _addr)| Ok::<_, std::io::Error>(tls),
                );
                tokio::spawn(async move {
                    if let Err(e) = server.serve_with_incoming_shutdown(incoming, shutdown).await {
                        tracing::error!("gRPC server: {e}");
                    }
                })
            }
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                tokio::spawn(async move {
                    if let Err(e) = server.serve_with_incoming_shutdown(incoming, shutdown).await {
                        tracing::error!("gRPC server: {e}");
                    }
                })
            }
        };
        tasks.push(serving);

        if !raft.is_initialized().await.map_err(|e| SchedulerError::Raft(e.to_string()))? {
            let members: BTreeMap<u64, BasicNode> = if cfg.initial_members.is_empty() {
                BTreeMap::from([(cfg.node_id, BasicNode::new(&cfg.advertise))])
            } else {
                cfg.initial_members.iter().map(|(id, a)| (*id, BasicNode::new(a))).collect()
            };
            if members.keys().next() == Some(&cfg.node_id) {
                tracing::info!(?members, "initializing a new cluster");
                if let Err(e) = raft.initialize(members).await {
                    tracing::info!("initialize: {e}");
                }
            }
        }
        tracing::info!(node = cfg.node_id, addr = %local_addr, "scheduler listening on {local_addr}");
        if let Some(l) = http_listener {
            let tls = match &server_tls {
                Some(t) => Some(t.acceptor(&[b"http/1.1"]).map_err(tls_err)?),
                None => None,
            };
            tasks.push(tokio::spawn(http::serve(l, tls, core.clone(), in_process, stop_rx.clone())));
            tracing::info!("scheduler HTTP API on {}", http_addr.expect("bound"));
        }
        Ok(SchedulerNode { local_addr, http_addr, core, stop, tasks })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the HTTP API listens, when it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// True once this node knows a leader (itself or another).
    pub fn has_leader(&self) -> bool {
        self.core.leader_id().is_some()
    }

    /// Reads the root token from `path`, or makes one and writes it there (mode 0600) when the file does not
    /// exist: what `aidos up` and `aidos server` do with their `--admin-token-file`.
    pub fn load_or_create_root_token(path: &std::path::Path) -> Result<String, SchedulerError> {
        if path.exists() {
            let t = aidos_api::auth::read_token_file(path).map_err(SchedulerError::InvalidArgument)?;
            if !t.starts_with("aidos_root_") {
                return Err(SchedulerError::InvalidArgument(format!(
                    "{}: not a root token (expected `aidos_root_<secret>`)",
                    path.display()
                )));
            }
            return Ok(t);
        }
        let t = aidos_api::auth::new_root_token();
        aidos_api::auth::write_token_file(path, &t)
            .map_err(|e| SchedulerError::Storage(format!("writing the admin token to {}: {e}", path.display())))?;
        Ok(t)
    }

    /// Stops serving and shuts Raft down cleanly.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.core.raft.shutdown().await;
        for t in self.tasks {
            t.abort();
        }
    }
}
