//! The agent: serves the cached model at once, then follows the control plane.
//!
//! One control task owns the agent's state (what runs, what ran, what was refused); the local HTTP server only
//! reads the model repository and counts telemetry. Every `sync_interval` the control task closes a telemetry
//! interval, syncs (status + buffered telemetry in, the deployment this device should run out) and, when that
//! deployment is new, applies it: download (resumable) → verify hash and signature → load → swap → health check →
//! keep it, or roll back to the previous model and remember the deployment as refused. A failure at any step
//! leaves the running model serving. When the control plane cannot be reached nothing changes but the buffer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aidos_api::edge_service_client::EdgeServiceClient;
use aidos_api::v1::{DownloadRequest, EdgeDeployment, EdgeStatus, EdgeSyncRequest, EnrollRequest};
use aidos_runtime::{ModelRuntime, RuntimeKind, Tensor};
use aidos_serve::{BatchConfig, Limits, Metrics, Repository, ServerState};
use ed25519_dalek::VerifyingKey;
use tonic::transport::Channel;

use crate::cache::{Cache, CachedModel, DeviceCert, State};
use crate::download::{ChunkSource, fetch};
use crate::error::EdgeError;
use crate::telemetry::Telemetry;

/// Plain configuration (the binaries fill it from flags).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Control-plane addresses (any scheduler node).
    pub servers: Vec<String>,
    pub device: String,
    pub labels: BTreeMap<String, String>,
    pub cache_dir: PathBuf,
    /// Most bytes of model files and partial downloads (0: no limit besides the disk).
    pub cache_max_bytes: u64,
    /// Local Open Inference Protocol (HTTP) address; loopback by default.
    pub listen: SocketAddr,
    pub runtime: RuntimeKind,
    pub sync_interval: Duration,
    /// Health check: |output - expected| <= tolerance * (1 + |expected|) for every value.
    pub tolerance: f32,
    /// Written once the local server listens: `{"http": ADDR}`.
    pub ready_file: Option<PathBuf>,
    /// The control plane's enrolment token (needed for a new device when the control plane has one).
    pub enrollment_token: String,
    /// Keep the pages start-up and model loading touched resident (by default they are released after each
    /// load: see [`crate::resident`]).
    pub keep_startup_pages: bool,
    /// A control plane that serves TLS: the CA to verify it against. None: plain TCP. With it the agent asks for a
    /// device certificate when it enrols, presents it on every call, and renews it before it expires.
    pub server_tls: Option<aidos_api::tls::ClientTls>,
    /// A one-time join token (`aidos token create --role worker --join`): admits a new device. Used up by the
    /// first enrolment; later ones need only the device's credential.
    pub join_token: String,
    /// The project the device belongs to ("": the default project, or the join token's when it names one).
    pub project: String,
}

/// Runtimes this build can use on this machine, as reported at enrolment: tract always; ort when compiled in and
/// `ORT_DYLIB_PATH` names a file. The library is not loaded for this (it costs ~18 MB of resident memory): only
/// [`ort_unavailable`], asked when ort is chosen, loads it.
pub fn available_runtimes() -> Vec<&'static str> {
    #[cfg(feature = "ort")]
    if aidos_runtime::ort::library().is_ok() {
        return vec!["tract", "ort"];
    }
    vec!["tract"]
}

/// Why ONNX Runtime cannot be used here (`None`: it can). Loads the library (once per process).
pub fn ort_unavailable() -> Option<String> {
    #[cfg(feature = "ort")]
    return aidos_runtime::ort::probe().err().map(|e| e.to_string());
    #[cfg(not(feature = "ort"))]
    Some("this agent was built without the `ort` feature".into())
}

struct Running {
    model: CachedModel,
    runtime: Arc<dyn ModelRuntime>,
}

struct Agent {
    cfg: AgentConfig,
    cache: Cache,
    state: State,
    repo: Arc<Repository>,
    telemetry: Arc<Telemetry>,
    running: Option<Running>,
    health: String,
    last_error: String,
    client: Option<EdgeServiceClient<Channel>>,
    server_ix: usize,
    enrolled: bool,
    /// The last control-plane failure warned about.
    last_outage: String,
    /// This device's credential (see `State::credential_hex`).
    credential: Vec<u8>,
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), EdgeError> {
    let cache = Cache::open(&cfg.cache_dir, cfg.cache_max_bytes)?;
    let mut state = cache.load_state()?;
    let credential = match state.credential_hex.as_deref().map(unhex) {
        Some(Some(c)) if c.len() == 32 => c,
        _ => {
            let c = random_credential()?;
            state.credential_hex = Some(hex(&c));
            cache.save_state(&state)?;
            c
        }
    };
    let repo = Arc::new(Repository::new(Arc::new(Metrics::default())));
    let telemetry = Arc::new(Telemetry::new(cfg.cache_dir.join("telemetry.jsonl")));
    let mut agent = Agent {
        cfg: cfg.clone(),
        cache,
        state,
        repo: repo.clone(),
        telemetry: telemetry.clone(),
        running: None,
        health: "no model".into(),
        last_error: String::new(),
        client: None,
        server_ix: 0,
        enrolled: false,
        last_outage: String::new(),
        credential,
    };
    // Serve from the cache before anything else: the control plane may be gone.
    if let Some(m) = agent.state.current.clone() {
        match agent.load_cached(&m).await {
            Ok(()) => tracing::info!("serving {}:{} ({}) from the cache", m.deployment, m.version, m.artifact),
            Err(e) => {
                tracing::error!("the cached model {} cannot be served: {e}", m.artifact);
                agent.last_error = e.to_string();
            }
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let addr = serve_local(&cfg, repo, telemetry, stop_rx.clone()).await?;
    println!("edge agent {} serving the Open Inference Protocol on http://{addr}", cfg.device);
    if let Some(f) = &cfg.ready_file {
        crate::cache::write_atomic(f, format!("{{\"http\": \"{addr}\"}}").as_bytes())?;
    }
    tokio::pin!(shutdown);
    loop {
        agent.tick().await;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(cfg.sync_interval) => {}
        }
    }
    let _ = stop_tx.send(true);
    let (name, version) = agent.serving();
    let _ = agent.telemetry.roll(&name, version);
    Ok(())
}

/// Binds the local server: the serving crate's HTTP front with a telemetry-counting layer on inference calls.
async fn serve_local(
    cfg: &AgentConfig,
    repo: Arc<Repository>,
    telemetry: Arc<Telemetry>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<SocketAddr, EdgeError> {
    let state = Arc::new(ServerState {
        repo,
        limits: Limits::default(),
        name: format!("aidos-edge-{}", cfg.device),
        model_dir: None,
        defaults: BatchConfig::default(),
        // The device's own local server, for the applications beside it (bound where the operator says).
        auth: Arc::new(aidos_serve::auth::Open),
        key_limits: None,
    });
    let t = telemetry.clone();
    let app = aidos_serve::http::router(state).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let t = t.clone();
            async move {
                let infer = req.uri().path().ends_with("/infer");
                let started = Instant::now();
                let resp = next.run(req).await;
                if infer {
                    t.observe(started, resp.status().is_success());
                }
                resp
            }
        },
    ));
    let l = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| EdgeError::Cache(format!("binding {}: {e}", cfg.listen)))?;
    let addr = l.local_addr().map_err(|e| EdgeError::Cache(e.to_string()))?;
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stopped).await {
            tracing::error!("local server stopped: {e}");
        }
    });
    Ok(addr)
}

/// Downloads over gRPC as device `device` with its credential.
struct Grpc<'a> {
    client: &'a mut EdgeServiceClient<Channel>,
    device: String,
    credential: Vec<u8>,
}

#[tonic::async_trait]
impl ChunkSource for Grpc<'_> {
    async fn chunk(&mut self, artifact: &str, offset: u64, max: u32) -> Result<(Vec<u8>, u64), EdgeError> {
        let r = DownloadRequest {
            device: self.device.clone(),
            artifact: artifact.into(),
            offset,
            max_bytes: max,
            credential: self.credential.clone(),
        };
        let c = self.client.download(r).await.map_err(control_plane)?.into_inner();
        Ok((c.data, c.total_size))
    }
}

fn rejection_key(d: &EdgeDeployment) -> String {
    let sig = hex(&d.signature[..d.signature.len().min(8)]);
    format!("{}:{}", d.artifact, sig)
}

impl Agent {
    fn serving(&self) -> (String, u32) {
        self.running.as_ref().map(|r| (r.model.deployment.clone(), r.model.version)).unwrap_or_default()
    }

    fn status(&self) -> EdgeStatus {
        let m = self.running.as_ref().map(|r| r.model.clone());
        EdgeStatus {
            deployment: m.as_ref().map(|m| m.deployment.clone()).unwrap_or_default(),
            model: m.as_ref().map(|m| m.model.clone()).unwrap_or_default(),
            version: m.as_ref().map(|m| m.version).unwrap_or(0),
            artifact: m.as_ref().map(|m| m.artifact.clone()).unwrap_or_default(),
            health: self.health.clone(),
            last_error: self.last_error.clone(),
            runtime: self.cfg.runtime.as_str().into(),
        }
    }

    fn client(&mut self) -> Result<EdgeServiceClient<Channel>, EdgeError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let addr = self.cfg.servers.get(self.server_ix % self.cfg.servers.len().max(1)).cloned().unwrap_or_default();
        let now = aidos_api::now_ms();
        let tls = match (&self.cfg.server_tls, &self.state.cert) {
            (Some(t), Some(c)) if !c.expired(now) => Some(
                t.with_identity(&c.cert_pem, &c.key_pem)
                    .map_err(|e| EdgeError::ControlPlane(format!("this device's certificate: {e}")))?,
            ),
            (t, _) => t.clone(),
        };
        let creds = aidos_api::auth::Credentials { tls, ..Default::default() };
        let ep = creds
            .endpoint(&addr)
            .map_err(|e| EdgeError::ControlPlane(format!("{addr}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10));
        let ch = creds.connect_lazy(&ep);
        let c = EdgeServiceClient::new(ch).max_decoding_message_size(16 << 20);
        self.client = Some(c.clone());
        Ok(c)
    }

    fn drop_client(&mut self) {
        self.client = None;
        self.enrolled = false;
        self.server_ix += 1;
    }

    /// One round: telemetry interval, enrolment, sync, and applying a new deployment.
    async fn tick(&mut self) {
        let (name, version) = self.serving();
        if let Err(e) = self.telemetry.roll(&name, version) {
            tracing::warn!("buffering telemetry: {e}");
        }
        let deployment = match self.sync().await {
            Ok(d) => {
                self.last_outage.clear();
                d
            }
            Err(e @ EdgeError::Refused(_)) => {
                // Retried every interval (the operator may fix the token): warned once per distinct refusal.
                if self.last_error != e.to_string() {
                    tracing::warn!("{e}; serving from the cache");
                }
                self.last_error = e.to_string();
                self.drop_client();
                return;
            }
            Err(e) => {
                // Warned once per distinct failure (a TLS handshake refused looks like an outage from here).
                if self.last_outage != e.to_string() {
                    tracing::warn!("control plane unreachable, serving from the cache: {e}");
                    self.last_outage = e.to_string();
                }
                self.drop_client();
                return;
            }
        };
        let Some(d) = deployment else { return };
        let same =
            self.running.as_ref().is_some_and(|r| r.model.artifact == d.artifact && r.model.deployment == d.name);
        if same || self.state.rejected.contains_key(&rejection_key(&d)) {
            return;
        }
        if let Err(e) = self.apply(&d).await {
            tracing::warn!("deployment {} ({}:{}) not applied: {e}", d.name, d.model, d.version);
            self.last_error = format!("{} ({}:{}): {e}", d.name, d.model, d.version);
            let permanent = matches!(
                e,
                EdgeError::HashMismatch { .. }
                    | EdgeError::BadSignature { .. }
                    | EdgeError::Model { .. }
                    | EdgeError::HealthCheck { .. }
            );
            if permanent {
                self.state.rejected.insert(rejection_key(&d), e.to_string());
                if let Err(e) = self.cache.save_state(&self.state) {
                    tracing::error!("{e}");
                }
            }
        }
    }

    /// Whether to ask for a (new) device certificate at the next enrolment: on a TLS control plane, when the agent
    /// has none or its one is due for renewal.
    fn wants_cert(&self) -> bool {
        self.cfg.server_tls.is_some() && self.state.cert.as_ref().is_none_or(|c| c.due(aidos_api::now_ms()))
    }

    async fn sync(&mut self) -> Result<Option<EdgeDeployment>, EdgeError> {
        let mut c = self.client()?;
        let cp = control_plane;
        let wants_cert = self.wants_cert();
        if !self.enrolled || wants_cert {
            // A fresh key for every certificate; it never leaves the device.
            let (csr_pem, key_pem) = if wants_cert {
                aidos_api::tls::request(&aidos_api::tls::Identity::Device(self.cfg.device.clone()))
                    .map_err(|e| EdgeError::Refused(format!("a certificate request for {}: {e}", self.cfg.device)))?
            } else {
                Default::default()
            };
            let r = EnrollRequest {
                device: self.cfg.device.clone(),
                labels: self.cfg.labels.clone(),
                hardware: hardware(),
                runtimes: available_runtimes().iter().map(|s| s.to_string()).collect(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                enrollment_token: self.cfg.enrollment_token.clone(),
                credential: self.credential.clone(),
                join_token: self.cfg.join_token.clone(),
                project: self.cfg.project.clone(),
                csr_pem,
                ..Default::default()
            };
            let sent_at_ms = aidos_api::now_ms();
            let resp = c.enroll(r).await.map_err(cp)?.into_inner();
            if !resp.cert_pem.is_empty() && !key_pem.is_empty() {
                self.state.cert = Some(DeviceCert {
                    cert_pem: resp.cert_pem.clone(),
                    key_pem,
                    received_at_ms: sent_at_ms,
                    lifetime_ms: resp.cert_lifetime_ms,
                });
                self.cache.save_state(&self.state)?;
                tracing::info!(
                    "device certificate for {} valid for {} s",
                    self.cfg.device,
                    resp.cert_lifetime_ms / 1000
                );
                // The enrolment retired the previous certificate: reconnect presenting the new one.
                self.client = None;
                c = self.client()?;
            } else if wants_cert {
                return Err(EdgeError::Refused(format!(
                    "the control plane gave {} no certificate (does it serve TLS?)",
                    self.cfg.device
                )));
            }
            let key_hex = hex(&resp.signing_public_key);
            match &self.state.pinned_key_hex {
                None => {
                    self.state.pinned_key_hex = Some(key_hex.clone());
                    self.cache.save_state(&self.state)?;
                    tracing::info!("enrolled as {}; pinned the control plane's key {key_hex}", self.cfg.device);
                }
                Some(pinned) if *pinned != key_hex => {
                    tracing::warn!(
                        "the control plane now signs with {key_hex}, not the pinned {pinned}: keeping the pinned key"
                    );
                }
                Some(_) => tracing::info!("enrolled as {}", self.cfg.device),
            }
            self.enrolled = true;
        }
        // At most 500 records per sync (the control plane's limit per report).
        let pending = self.telemetry.pending(500);
        let req = EdgeSyncRequest {
            device: self.cfg.device.clone(),
            status: Some(self.status()),
            telemetry: pending.iter().cloned().map(Into::into).collect(),
            credential: self.credential.clone(),
        };
        let resp = c.sync(req).await.map_err(cp)?.into_inner();
        if resp.accepted_telemetry > 0
            && let Err(e) = self.telemetry.ack(resp.accepted_telemetry as usize)
        {
            tracing::warn!("dropping uploaded telemetry: {e}");
        }
        Ok(resp.deployment)
    }

    fn pinned_key(&self) -> Result<VerifyingKey, EdgeError> {
        let hex =
            self.state.pinned_key_hex.clone().ok_or_else(|| EdgeError::ControlPlane("not enrolled yet".into()))?;
        let bytes = unhex(&hex).unwrap_or_default();
        let arr: [u8; 32] = bytes.try_into().map_err(|_| EdgeError::Cache("pinned key is not 32 bytes".into()))?;
        VerifyingKey::from_bytes(&arr).map_err(|e| EdgeError::Cache(format!("pinned key: {e}")))
    }

    /// Loads a verified cached model and puts it behind the local server.
    async fn load_cached(&mut self, m: &CachedModel) -> Result<(), EdgeError> {
        let rt = self.load_runtime(m).await?;
        self.swap_in(m.clone(), rt)
    }

    async fn load_runtime(&self, m: &CachedModel) -> Result<Arc<dyn ModelRuntime>, EdgeError> {
        let path = self.cache.model_path(&m.artifact);
        let (kind, what, artifact) = (self.cfg.runtime, format!("{}:{}", m.model, m.version), m.artifact.clone());
        let keep_pages = self.cfg.keep_startup_pages;
        let rt = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|e| EdgeError::Cache(format!("{}: {e}", path.display())))?;
            let actual = blake3::hash(&bytes).to_hex().to_string();
            if actual != artifact {
                return Err(EdgeError::HashMismatch { expected: artifact, actual, bytes: bytes.len() as u64 });
            }
            let rt = aidos_runtime::load_onnx(kind, &what, &bytes)
                .map_err(|e| EdgeError::Model { what, why: e.to_string() });
            drop(bytes);
            if rt.is_ok() && !keep_pages {
                match crate::resident::trim() {
                    Ok(t) => {
                        tracing::debug!("released {} KiB of start-up pages in {} mappings", t.bytes >> 10, t.mappings)
                    }
                    Err(e) => tracing::debug!("start-up pages kept: {e}"),
                }
            }
            rt
        })
        .await
        .map_err(|e| EdgeError::Cache(e.to_string()))??;
        Ok(Arc::from(rt))
    }

    /// Serves `m` (replacing whatever was served).
    fn swap_in(&mut self, m: CachedModel, rt: Arc<dyn ModelRuntime>) -> Result<(), EdgeError> {
        let model_err =
            |e: aidos_serve::ServeError| EdgeError::Model { what: m.deployment.clone(), why: e.to_string() };
        // No batching delay: a device serves few concurrent callers, and each one should not wait for others.
        let batch = BatchConfig { max_queue_delay: Duration::ZERO, ..BatchConfig::default() };
        self.repo.load(&m.deployment, m.version as u64, self.cfg.runtime, rt.clone(), batch).map_err(model_err)?;
        for v in self.repo.all() {
            if v.name != m.deployment || v.version != m.version as u64 {
                let _ = self.repo.unload(&v.name, Some(v.version));
            }
        }
        self.health = "ok".into();
        self.running = Some(Running { model: m, runtime: rt });
        Ok(())
    }

    async fn health_check(&self, d: &EdgeDeployment) -> Result<(), EdgeError> {
        let fail = |why: String| EdgeError::HealthCheck { what: format!("{}:{}", d.model, d.version), why };
        let v = self.repo.resolve(&d.name, &d.version.to_string()).map_err(|e| fail(e.to_string()))?;
        let input = Tensor { shape: vec![1, d.sample_input.len()], data: d.sample_input.clone() };
        let out = v.backend.infer(vec![input]).await.map_err(|e| fail(e.to_string()))?;
        let got = out.first().map(|t| t.data.clone()).unwrap_or_default();
        if got.len() != d.sample_output.len() {
            return Err(fail(format!("{} output values, expected {}", got.len(), d.sample_output.len())));
        }
        let tol = self.cfg.tolerance;
        let worst = got.iter().zip(&d.sample_output).map(|(g, e)| (g - e).abs() / (1.0 + e.abs())).fold(0f32, f32::max);
        // Within tolerance only when comparable: a NaN (in the output or the tolerance) fails the check.
        if !matches!(worst.partial_cmp(&tol), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)) {
            return Err(fail(format!("the sample's output is off by {worst:.3e} (tolerance {tol:.0e})")));
        }
        Ok(())
    }

    /// Download → verify → load → swap → health check → keep, or roll back.
    async fn apply(&mut self, d: &EdgeDeployment) -> Result<(), EdgeError> {
        tracing::info!("applying deployment {} ({}:{}, {} bytes)", d.name, d.model, d.version, d.size);
        let key = self.pinned_key()?;
        let keep: Vec<String> = [&self.state.current, &self.state.previous]
            .iter()
            .filter_map(|m| m.as_ref().map(|m| m.artifact.clone()))
            .collect();
        let keep_refs: Vec<&str> = keep.iter().map(String::as_str).collect();
        let mut c = self.client()?;
        let mut src = Grpc { client: &mut c, device: self.cfg.device.clone(), credential: self.credential.clone() };
        fetch(&mut src, &self.cache, d, &key, &keep_refs).await?;
        let m = CachedModel {
            deployment: d.name.clone(),
            model: d.model.clone(),
            version: d.version,
            artifact: d.artifact.clone(),
            signature_hex: hex(&d.signature),
        };
        let rt = self.load_runtime(&m).await?;
        let before = self.running.take();
        self.swap_in(m.clone(), rt)?;
        if let Err(e) = self.health_check(d).await {
            // Roll back to what ran before (or serve nothing rather than a model that fails its check).
            let _ = self.repo.unload(&d.name, Some(d.version as u64));
            match before {
                Some(prev) => {
                    let (pm, prt) = (prev.model.clone(), prev.runtime.clone());
                    self.swap_in(pm, prt)?;
                    self.health = "ok (rolled back)".into();
                }
                None => {
                    self.running = None;
                    self.health = "no model (health check failed)".into();
                }
            }
            return Err(e);
        }
        self.state.previous = self.state.current.take().filter(|p| p.artifact != m.artifact);
        self.state.current = Some(m.clone());
        self.cache.save_state(&self.state)?;
        self.last_error.clear();
        tracing::info!("now serving {} ({}:{})", d.name, d.model, d.version);
        Ok(())
    }
}

/// Lower-case hex of `bytes` (keys and signatures in the cache's state file).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len() / 2).map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// 32 bytes from the kernel's CSPRNG.
fn random_credential() -> Result<Vec<u8>, EdgeError> {
    use std::io::Read;
    let mut c = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut c))
        .map_err(|e| EdgeError::Cache(format!("making the device credential from /dev/urandom: {e}")))?;
    Ok(c)
}

/// A control-plane error: refusals (a wrong credential or enrolment token) are kept apart from outages.
fn control_plane(s: tonic::Status) -> EdgeError {
    match s.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => EdgeError::Refused(s.message().to_string()),
        _ => EdgeError::ControlPlane(s.message().to_string()),
    }
}

fn hardware() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{}, {cores} cores", std::env::consts::ARCH)
}
