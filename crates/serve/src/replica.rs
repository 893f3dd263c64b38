//! One replica of a deployment: the task of a serve job. The caller (the binary) resolves the registry model and
//! builds its runtime; this module serves it under the deployment's name, reports the endpoints to the scheduler
//! through an [`EndpointReporter`], and drains on request.
//!
//! Lifecycle: [`Replica::start`] binds both fronts on any free port → [`Replica::report`] (retried while the
//! reporter calls the failure retryable, e.g. during a leader election, up to `report_for`) → the caller waits
//! for SIGTERM → [`Replica::drain`]: keeps answering for `drain_delay` so that gateways (which re-read the
//! scheduler every 250 ms) stop sending here, then stops accepting and lets in-flight requests finish.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use aidos_runtime::{ModelRuntime, RuntimeKind};

use crate::config::{BatchConfig, Limits, ServerConfig};
use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::repository::Repository;
use crate::{RunningServer, ServerState};

/// How long a replica keeps serving after SIGTERM before it drains (well under the worker's stop grace of 5 s).
pub const DRAIN_DELAY: Duration = Duration::from_millis(1000);
/// How long a replica retries reporting its endpoints while the scheduler is unavailable.
pub const REPORT_FOR: Duration = Duration::from_secs(60);
/// Pause between two report attempts.
const REPORT_RETRY: Duration = Duration::from_millis(500);

/// What one replica serves and how.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The deployment's name: the model name clients call.
    pub deployment: String,
    /// The registry version served.
    pub version: u64,
    pub runtime: RuntimeKind,
    pub batch: BatchConfig,
    /// Host or IP the endpoints are advertised with; a loopback host binds loopback, anything else every
    /// interface.
    pub advertise_host: String,
    pub drain_delay: Duration,
    pub report_for: Duration,
}

/// The endpoints a replica advertises, `host:port` each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub http: String,
    pub grpc: String,
}

/// Where a replica announces its endpoints (the scheduler, in the binary).
pub trait EndpointReporter {
    type Error;
    /// One attempt.
    fn report(&mut self, endpoints: &Endpoints) -> impl Future<Output = Result<(), Self::Error>>;
    /// Whether a failed attempt may succeed later (no leader yet) rather than being final (a stale attempt).
    fn retryable(e: &Self::Error) -> bool;
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Load(#[from] ServeError),
    #[error("binding the replica's listeners: {0}")]
    Bind(#[from] std::io::Error),
}

/// A serving replica.
pub struct Replica {
    server: RunningServer,
    metrics: Arc<Metrics>,
    endpoints: Endpoints,
    drain_delay: Duration,
    report_for: Duration,
}

impl Replica {
    /// Loads `runtime` behind a batcher under the deployment's name and binds both fronts (free ports); `auth`
    /// decides who may call them (in the binary: a [`crate::auth::KeyTable`] kept in step with the scheduler).
    pub async fn start(
        cfg: &ReplicaConfig,
        runtime: Arc<dyn ModelRuntime>,
        auth: Arc<dyn crate::auth::Authorizer>,
    ) -> Result<Replica, ReplicaError> {
        let metrics = Arc::new(Metrics::default());
        let repo = Arc::new(Repository::new(metrics.clone()));
        repo.load(&cfg.deployment, cfg.version, cfg.runtime, runtime, cfg.batch.clone())?;
        let host = cfg.advertise_host.as_str();
        let loopback = host == "127.0.0.1" || host == "localhost";
        let bind: IpAddr = if loopback { [127, 0, 0, 1].into() } else { [0, 0, 0, 0].into() };
        let server_cfg = ServerConfig::plain(SocketAddr::new(bind, 0), SocketAddr::new(bind, 0));
        let state = Arc::new(ServerState {
            repo,
            limits: Limits::default(),
            name: format!("aidos-replica-{}", cfg.deployment),
            model_dir: None,
            defaults: cfg.batch.clone(),
            auth,
            // Limits per key are the gateway's (the front clients are given); gateways call replicas with
            // service keys.
            key_limits: None,
        });
        let server = crate::start(&server_cfg, state).await?;
        let endpoints = Endpoints {
            http: format!("{host}:{}", server.http.port()),
            grpc: format!("{host}:{}", server.grpc.port()),
        };
        Ok(Replica { server, metrics, endpoints, drain_delay: cfg.drain_delay, report_for: cfg.report_for })
    }

    /// The advertised endpoints.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The replica's metrics (its load: [`Metrics::busy_seconds`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// How long [`Replica::drain`] keeps answering before it stops accepting.
    pub fn drain_delay(&self) -> Duration {
        self.drain_delay
    }

    /// Reports the endpoints; retries retryable failures for `report_for`. The caller shuts the replica down on
    /// an error.
    pub async fn report<R: EndpointReporter>(&self, reporter: &mut R) -> Result<(), R::Error> {
        let deadline = tokio::time::Instant::now() + self.report_for;
        loop {
            match reporter.report(&self.endpoints).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline && R::retryable(&e) => {
                    tokio::time::sleep(REPORT_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Keeps answering for the drain delay, then stops accepting and lets in-flight requests finish.
    pub async fn drain(self) {
        tokio::time::sleep(self.drain_delay).await;
        self.server.shutdown().await;
    }

    /// Stops at once (in-flight requests still finish).
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}
