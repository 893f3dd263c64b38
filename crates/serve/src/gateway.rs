//! The gateway: an Open Inference Protocol front whose models are remote replica pools ([`crate::remote::Pool`]),
//! kept in step with a [`RouteSource`] (in the binary: the scheduler's deployments).
//!
//! Every `refresh` the sync loop asks the source for the model versions to route and makes the repository match
//! ([`Routes::sync`]). When the source fails (the scheduler cannot be reached) the gateway keeps routing to the
//! replicas it knows. The loop stops when the server is shut down.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aidos_api::auth::Credentials;
use aidos_runtime::RuntimeKind;

use crate::auth::Authorizer;
use crate::backend::Backend;
use crate::config::{BatchConfig, Limits, ServerConfig};
use crate::metrics::Metrics;
use crate::remote::{Pool, ReplicaAddr};
use crate::repository::Repository;
use crate::{RunningServer, ServerState};

/// A model version the gateway should route, with its replicas' endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteModel {
    pub name: String,
    pub version: u64,
    pub runtime: RuntimeKind,
    pub max_batch: usize,
    pub endpoints: Vec<ReplicaAddr>,
    /// Non-zero: this version is a canary taking this percentage of the requests for `name` that name no version
    /// (see [`Repository::set_canary`]).
    pub canary_percent: u32,
}

/// Where the gateway learns what to route.
pub trait RouteSource: Send + 'static {
    /// Every model version to route now. An error (logged at debug) leaves the current routes as they are.
    fn routes(&mut self) -> impl Future<Output = Result<Vec<RemoteModel>, String>> + Send;
}

/// How the gateway listens and how often it asks its [`RouteSource`].
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub server: ServerConfig,
    pub refresh: Duration,
}

/// Who may call the gateway, and what it presents to the replicas behind it.
pub struct GatewayAccess {
    /// Checks every client request (in the binary: a [`crate::auth::KeyTable`] its route source refreshes).
    pub auth: Arc<dyn Authorizer>,
    /// The gateway's own token, presented to replicas (which accept the cluster's root and worker tokens).
    pub creds: Credentials,
    /// Per-key rate and in-flight limits of client requests (service keys exempt); None: none.
    pub key_limits: Option<aidos_api::limits::LimitConfig>,
}

/// Binds the gateway's listeners and starts the sync loop (stopped by [`RunningServer::shutdown`]).
pub async fn start(
    cfg: &GatewayConfig,
    mut source: impl RouteSource,
    access: GatewayAccess,
) -> std::io::Result<RunningServer> {
    let repo = Arc::new(Repository::new(Arc::new(Metrics::default())));
    let state = Arc::new(ServerState {
        repo: repo.clone(),
        limits: Limits::default(),
        name: "aidos-gateway".into(),
        model_dir: None,
        defaults: BatchConfig::default(),
        auth: access.auth,
        key_limits: access.key_limits.map(aidos_api::limits::Limiter::new),
    });
    let creds = access.creds;
    let mut server = crate::start(&cfg.server, state).await?;
    let mut stop = server.shutdown.subscribe();
    let refresh = cfg.refresh;
    let task = tokio::spawn(async move {
        let mut routes = Routes::new(repo, creds);
        loop {
            // Cancel-safe at either await: a sync cut short leaves each entry either updated or not.
            let step = async {
                match source.routes().await {
                    Ok(want) => {
                        for change in routes.sync(&want).await {
                            tracing::info!("gateway: {change}");
                        }
                    }
                    Err(e) => tracing::debug!("gateway: {e}"),
                }
                tokio::time::sleep(refresh).await;
            };
            tokio::select! {
                _ = step => {}
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    });
    server.tasks.push(task);
    Ok(server)
}

/// The remote entries of a repository: the pools this gateway added, by (model, version).
pub struct Routes {
    repo: Arc<Repository>,
    pools: BTreeMap<(String, u64), Arc<Pool>>,
    creds: Credentials,
}

impl Routes {
    /// Routes into `repo`, presenting `creds` to the replicas.
    pub fn new(repo: Arc<Repository>, creds: Credentials) -> Routes {
        Routes { repo, pools: BTreeMap::new(), creds }
    }

    /// The pool of (name, version) if the repository still holds it (not unloaded or replaced meanwhile).
    fn live(&self, name: &str, version: u64) -> Option<&Arc<Pool>> {
        let pool = self.pools.get(&(name.to_string(), version))?;
        let held = self.repo.get(name, version)?;
        std::ptr::addr_eq(Arc::as_ptr(&held.backend), Arc::as_ptr(pool)).then_some(pool)
    }

    /// Makes the repository's remote entries match `want`: new versions are added (once one of their replicas
    /// answers), endpoint lists replaced, versions no longer wanted (or left without endpoints) removed. Versions
    /// loaded by anyone else (local models) are not touched. Returns what changed, for logging.
    pub async fn sync(&mut self, want: &[RemoteModel]) -> Vec<String> {
        let mut changes = Vec::new();
        // Forget pools the repository no longer holds (unloaded through the repository API): re-added below.
        let stale: Vec<_> = self.pools.keys().filter(|(n, v)| self.live(n, *v).is_none()).cloned().collect();
        for k in stale {
            self.pools.remove(&k);
        }
        let wanted: Vec<&RemoteModel> = want.iter().filter(|w| !w.endpoints.is_empty()).collect();
        for w in &wanted {
            if let Some(p) = self.live(&w.name, w.version) {
                if p.endpoints() != w.endpoints {
                    match p.set_endpoints(&w.endpoints) {
                        Ok(()) => changes.push(format!("{}:{} replicas {}", w.name, w.version, list(&w.endpoints))),
                        Err(e) => tracing::warn!("{}:{}: {e}", w.name, w.version),
                    }
                }
                continue;
            }
            if self.repo.get(&w.name, w.version).is_some() {
                continue; // a local model of the same name and version
            }
            let series = self.repo.metrics().gateway();
            match Pool::connect(&w.name, w.version, w.max_batch, &w.endpoints, series, &self.creds).await {
                Ok(pool) => {
                    let pool = Arc::new(pool);
                    match self.repo.load_backend(&w.name, w.version, w.runtime, pool.clone() as Arc<dyn Backend>) {
                        Ok(()) => {
                            self.pools.insert((w.name.clone(), w.version), pool);
                            changes.push(format!("{}:{} added, replicas {}", w.name, w.version, list(&w.endpoints)))
                        }
                        Err(e) => tracing::warn!("{}:{}: {e}", w.name, w.version),
                    }
                }
                Err(e) => tracing::debug!("{}:{} not reachable yet: {e}", w.name, w.version),
            }
        }
        // Canary splits of the names this gateway routes: set where a routed version is a canary, ended elsewhere.
        let names: std::collections::BTreeSet<&str> =
            want.iter().map(|w| w.name.as_str()).chain(self.pools.keys().map(|(n, _)| n.as_str())).collect();
        for name in names {
            let split = wanted.iter().find(|w| w.name == name && w.canary_percent > 0);
            self.repo.set_canary(name, split.map(|w| (w.version, w.canary_percent)));
        }
        let gone: Vec<_> = self
            .pools
            .keys()
            .filter(|(n, v)| !wanted.iter().any(|w| &w.name == n && w.version == *v))
            .cloned()
            .collect();
        for (name, version) in gone {
            self.pools.remove(&(name.clone(), version));
            if self.repo.unload(&name, Some(version)).is_ok() {
                changes.push(format!("{name}:{version} removed"));
            }
        }
        changes
    }
}

fn list(eps: &[ReplicaAddr]) -> String {
    eps.iter().map(|e| e.grpc.as_str()).collect::<Vec<_>>().join(",")
}
