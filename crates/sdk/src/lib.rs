//! aidos-sdk: what a training program running as an aidos task uses to talk to its cluster — read its dataset,
//! report metrics, save and resume checkpoints, and register the model it produced, all tied to the run of its
//! attempt and fenced like the worker's own reports.
//!
//! The API is blocking (a training loop is synchronous); an internal current-thread tokio runtime does the RPCs.
//! Do not call it from inside an async runtime (use `spawn_blocking` there).
//!
//! ```no_run
//! use aidos_sdk::Context;
//! # fn main() -> Result<(), aidos_sdk::SdkError> {
//! let ctx = Context::from_env()?;
//! let ds = ctx.dataset("mnist@v1")?;
//! let train = ctx.load_split(&ds, "train")?;
//! ctx.log_dataset(&ds)?;
//! let resume = ctx.latest_checkpoint()?; // Some((ref, bytes)) when an earlier attempt checkpointed
//! # let _ = (train, resume);
//! for step in 1..=100u64 {
//!     // ... one optimizer step ...
//!     ctx.log_metrics(step, 0, &[("train_loss", 0.5)])?;
//! }
//! ctx.save_checkpoint(100, 1, b"my own checkpoint format")?;
//! ctx.flush()?;
//! # Ok(()) }
//! ```
//!
//! # Task environment contract (public API)
//!
//! The aidos worker starts every task with these variables; [`Context::from_env`] reads them and names the
//! variable that is missing or malformed.
//!
//! | variable              | meaning                                                                          |
//! |-----------------------|----------------------------------------------------------------------------------|
//! | `AIDOS_JOB_ID`        | the job's id, e.g. `job-3`                                                        |
//! | `AIDOS_RANK`          | this task's rank in the gang, `0..AIDOS_WORLD_SIZE`                               |
//! | `AIDOS_WORLD_SIZE`    | number of replicas in the gang (>= 1)                                             |
//! | `AIDOS_ATTEMPT`       | gang attempt number, 1-based; a retried job runs attempt 2, 3, ...                |
//! | `AIDOS_FENCING_TOKEN` | u64 token of this attempt; the scheduler refuses writes carrying a stale one      |
//! | `AIDOS_WORKER_ID`     | id of the worker running the task                                                 |
//! | `AIDOS_SCHEDULER`     | comma-separated scheduler addresses (`host:port`), any node of the cluster        |
//! | `AIDOS_WORK_DIR`      | the task's private working directory (also its cwd)                               |
//! | `AIDOS_BLOB_DIR`      | root of the local-directory blob store (datasets, checkpoints, model weights)     |
//! | `AIDOS_BLOB_CACHE_MAX_BYTES` | set: `AIDOS_BLOB_DIR` is a bounded cache, blobs come from the blob service |
//! | `AIDOS_ADVERTISE_HOST` | where other machines reach this task (default `127.0.0.1`): a rank's ring listens there |
//! | `AIDOS_TOKEN`         | the job's token, presented on every scheduler call; valid while the job runs        |
//!
//! The built-in trainer (`JobKind::Train`) additionally gets `AIDOS_TRAIN_DATASET`, `AIDOS_TRAIN_CONFIG`,
//! `AIDOS_TRAIN_REGISTER_AS`, `AIDOS_TRAIN_SPLIT` and `AIDOS_EVAL_SPLIT` (see `aidos_train::builtin`).
//!
//! # Runs, fencing and resumption
//!
//! Every attempt of a job writes the run `<job_id>.<attempt>`. Metric reports, checkpoint records and model
//! registrations carry (worker id, job, rank, attempt, fencing token); once the scheduler has moved on (the
//! attempt was declared lost, cancelled or replaced) they are refused and the SDK returns [`SdkError::Fenced`]:
//! the program should stop. [`Context::latest_checkpoint`] returns the newest checkpoint of *any* attempt of the
//! job, which is where a retried attempt resumes.
//!
//! # Data parallelism
//!
//! [`Context::join_ring`] runs the scheduler's rendezvous for a gang of `AIDOS_WORLD_SIZE` ranks and returns a
//! [`Collective`] ([`collective`]): `all_reduce_sum`, `broadcast`, `barrier` over a ring of TCP connections between
//! the ranks, for the generation (attempt) this process belongs to. A dead or silent peer ends every rank's call
//! with an error instead of a hang; the program should exit, and the scheduler restarts the gang.
//!
//! # Robustness
//!
//! RPCs go to any scheduler node (followers forward writes to the leader); on UNAVAILABLE or a connection error
//! the SDK tries the next address with backoff for up to 30 s, long enough for a leader failover.
//! Metric points are buffered and sent every second or every 500 points, on [`Context::flush`] and on drop.

pub mod collective;
mod data;
mod env;
mod error;
#[cfg(feature = "nccl")]
pub mod nccl;
mod rpc;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aidos_api::dataset_service_client::DatasetServiceClient;
use aidos_api::job_service_client::JobServiceClient;
use aidos_api::model_service_client::ModelServiceClient;
use aidos_api::run_service_client::RunServiceClient;
use aidos_api::v1::{
    GetDatasetRequest, JoinRingRequest, LatestCheckpointRequest, Lineage, MetricPoint, RecordCheckpointRequest,
    RegisterModelRequest, ReportMetricsRequest,
};

pub use aidos_api::v1::{CheckpointRef, DatasetManifest, ModelVersion};
pub use aidos_blob::{BlobError, BlobId, BlobStore, CachedStore, LocalDirStore, ServiceStore};
pub use collective::{Collective, CollectiveError, Compression, RingOptions, SingleRank, TcpRing, Transport};
pub use data::{LoadedSplit, load_split, manifest_ref};
pub use env::{
    DatasetRef, ENV_ATTEMPT, ENV_BLOB_DIR, ENV_FENCING_TOKEN, ENV_JOB_ID, ENV_RANK, ENV_SCHEDULER, ENV_WORK_DIR,
    ENV_WORKER_ID, ENV_WORLD_SIZE, TaskEnv, valid_name,
};
pub use error::{Result, SdkError};
pub use rpc::{RETRY_FOR, RPC_TIMEOUT, is_retryable, normalize_addr};

/// Buffered metric points are sent once this many are waiting...
pub const FLUSH_POINTS: usize = 500;
/// ... or when the oldest unsent point is this old (checked when a point is logged).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// At most this many points go in one ReportMetrics (the scheduler accepts up to 10,000).
const MAX_POINTS_PER_REPORT: usize = 5_000;
/// Points kept while the scheduler is unreachable; the oldest are dropped beyond it.
const MAX_BUFFERED_POINTS: usize = 100_000;

/// Which version of aidos the SDK belongs to (recorded in model lineage).
pub const AIDOS_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A model to register; the weights are passed separately to [`Context::register_model`].
#[derive(Debug, Clone, Default)]
pub struct NewModel {
    /// Registry name (1-64 of `A-Z a-z 0-9 . _ -`); the cluster assigns the version.
    pub name: String,
    /// The model's config (JSON): enough to rebuild the network and its preprocessing.
    pub config_json: String,
    pub metrics: BTreeMap<String, f64>,
    /// Training parameters (lineage).
    pub params: BTreeMap<String, String>,
    /// `NAME@vN` of the training data and its content hash (see [`NewModel::with_dataset`]).
    pub dataset: String,
    pub dataset_hash: String,
    /// Other stored forms of the model, e.g. `"onnx" -> blob id`.
    pub artifacts: BTreeMap<String, String>,
}

impl NewModel {
    pub fn new(name: impl Into<String>, config_json: impl Into<String>) -> NewModel {
        NewModel { name: name.into(), config_json: config_json.into(), ..Default::default() }
    }

    /// Records `m` as the training data in the lineage.
    pub fn with_dataset(mut self, m: &DatasetManifest) -> NewModel {
        self.dataset = manifest_ref(m);
        self.dataset_hash = m.content_hash.clone();
        self
    }

    pub fn metric(mut self, name: impl Into<String>, value: f64) -> NewModel {
        self.metrics.insert(name.into(), value);
        self
    }
}

#[derive(Default)]
struct Pending {
    points: Vec<MetricPoint>,
    oldest: Option<Instant>,
    params: BTreeMap<String, String>,
    dataset: String,
    resumed_from_step: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.points.is_empty() && self.params.is_empty() && self.dataset.is_empty() && self.resumed_from_step == 0
    }
}

struct Inner {
    conn: rpc::Conn,
    pending: Pending,
}

/// The handle of a training program on its cluster (see the crate docs). `Send + Sync`: calls from several
/// threads are serialised.
pub struct Context {
    env: TaskEnv,
    store: Arc<dyn BlobStore>,
    rt: tokio::runtime::Runtime,
    inner: Mutex<Inner>,
}

impl Context {
    /// Reads the task environment contract and opens the blob store. Connects lazily.
    pub fn from_env() -> Result<Context> {
        Context::new(TaskEnv::from_env()?)
    }

    /// A context for an explicit environment (tests, tools).
    pub fn new(env: TaskEnv) -> Result<Context> {
        let store = env.open_blob_store().map_err(|source| SdkError::Blob { root: env.blob_dir.clone(), source })?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(SdkError::Runtime)?;
        let conn = rpc::Conn::new(&env.schedulers, &env.credentials)?;
        Ok(Context { env, store, rt, inner: Mutex::new(Inner { conn, pending: Pending::default() }) })
    }

    pub fn env(&self) -> &TaskEnv {
        &self.env
    }

    /// The run this attempt writes: `<job_id>.<attempt>`.
    pub fn run_id(&self) -> String {
        self.env.run_id()
    }

    /// The cluster's blob store (see [`TaskEnv::open_blob_store`]).
    pub fn blob_store(&self) -> &dyn BlobStore {
        &*self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blob_err(&self, source: aidos_blob::BlobError) -> SdkError {
        SdkError::Blob { root: self.env.blob_dir.clone(), source }
    }

    // ---- datasets

    /// The manifest of `reference` (`NAME@vN`, or `NAME` for the latest version).
    pub fn dataset(&self, reference: &str) -> Result<DatasetManifest> {
        let r = DatasetRef::parse(reference)?;
        let req = GetDatasetRequest { name: r.name.clone(), version: r.version };
        let inner = self.lock();
        let res = self.rt.block_on(inner.conn.call("DatasetService.Get", |ch| {
            let req = req.clone();
            async move { DatasetServiceClient::new(ch).get(req).await }
        }));
        match res {
            Ok(m) => Ok(m),
            Err(SdkError::Rpc { code: tonic::Code::NotFound, message, .. }) => {
                Err(SdkError::DatasetNotFound { reference: r.to_string(), message })
            }
            Err(e) => Err(e),
        }
    }

    /// The rows of split `split` (e.g. `train`, `test`) of a dataset version, read from the blob store.
    pub fn load_split(&self, manifest: &DatasetManifest, split: &str) -> Result<LoadedSplit> {
        load_split(manifest, split, &*self.store)
    }

    // ---- run reports

    /// Records training parameters on this attempt's run (sent at once).
    pub fn log_params(&self, params: &BTreeMap<String, String>) -> Result<()> {
        let mut inner = self.lock();
        inner.pending.params.extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.flush_locked(&mut inner)
    }

    /// Records the dataset version this run trains on (`NAME@vN`; sent at once).
    pub fn log_dataset(&self, manifest: &DatasetManifest) -> Result<()> {
        let mut inner = self.lock();
        inner.pending.dataset = manifest_ref(manifest);
        self.flush_locked(&mut inner)
    }

    /// Records that this run resumed from global step `step` of an earlier attempt's checkpoint (sent at once).
    pub fn log_resumed_from(&self, step: u64) -> Result<()> {
        let mut inner = self.lock();
        inner.pending.resumed_from_step = step;
        self.flush_locked(&mut inner)
    }

    /// Buffers metric points at (`step`, `epoch`); sends the buffer when it holds [`FLUSH_POINTS`] points or its
    /// oldest point is [`FLUSH_INTERVAL`] old. An error from that send is returned (the points stay buffered
    /// unless the attempt is fenced).
    pub fn log_metrics(&self, step: u64, epoch: u32, metrics: &[(&str, f64)]) -> Result<()> {
        let now = aidos_api::now_ms();
        let mut inner = self.lock();
        let p = &mut inner.pending;
        p.points.extend(metrics.iter().map(|(name, value)| MetricPoint {
            step,
            epoch,
            name: name.to_string(),
            value: *value,
            time_ms: now,
        }));
        if p.points.len() > MAX_BUFFERED_POINTS {
            let drop = p.points.len() - MAX_BUFFERED_POINTS;
            p.points.drain(..drop);
        }
        let oldest = *p.oldest.get_or_insert_with(Instant::now);
        if p.points.len() >= FLUSH_POINTS || oldest.elapsed() >= FLUSH_INTERVAL {
            self.flush_locked(&mut inner)?;
        }
        Ok(())
    }

    /// Reports metrics at `step` and sends them at once (not batched): what a sweep trial calls with its objective,
    /// so the sweep's pruner judges it within a round. `step` is the resource used so far (an epoch, an iteration).
    pub fn report(&self, step: u64, metrics: &[(&str, f64)]) -> Result<()> {
        self.log_metrics(step, 0, metrics)?;
        self.flush()
    }

    /// This task's sweep parameters (from `AIDOS_TRIAL_PARAMS`; the same JSON is in the file that
    /// `AIDOS_TRIAL_PARAMS_FILE` names), or an empty map when it is not a sweep trial.
    pub fn trial_params(&self) -> Result<BTreeMap<String, serde_json::Value>> {
        match std::env::var(aidos_api::sweep::ENV_TRIAL_PARAMS) {
            Err(_) => Ok(BTreeMap::new()),
            Ok(s) => serde_json::from_str(&s).map_err(|e| SdkError::BadEnv {
                var: aidos_api::sweep::ENV_TRIAL_PARAMS,
                value: s.clone(),
                problem: format!("not a JSON object: {e}"),
            }),
        }
    }

    /// Sends everything buffered now.
    pub fn flush(&self) -> Result<()> {
        let mut inner = self.lock();
        self.flush_locked(&mut inner)
    }

    fn flush_locked(&self, inner: &mut Inner) -> Result<()> {
        let Inner { conn, pending } = inner;
        while !pending.is_empty() {
            let n = pending.points.len().min(MAX_POINTS_PER_REPORT);
            let req = ReportMetricsRequest {
                worker_id: self.env.worker_id.clone(),
                attempt: Some(self.env.attempt_ref()),
                params: pending.params.clone().into_iter().collect(),
                points: pending.points[..n].to_vec(),
                dataset: pending.dataset.clone(),
                resumed_from_step: pending.resumed_from_step,
            };
            let res = self.rt.block_on(conn.call("RunService.ReportMetrics", |ch| {
                let req = req.clone();
                async move { RunServiceClient::new(ch).report_metrics(req).await }
            }));
            match res {
                Ok(_) => {
                    pending.points.drain(..n);
                    pending.params.clear();
                    pending.dataset.clear();
                    pending.resumed_from_step = 0;
                }
                Err(e) => {
                    if e.is_fenced() {
                        *pending = Pending::default();
                    }
                    return Err(fenced_if_gone(e));
                }
            }
        }
        pending.oldest = None;
        Ok(())
    }

    // ---- blobs and checkpoints

    /// Stores `bytes` in the cluster's blob store (content-addressed: storing the same bytes twice is one blob)
    /// and returns its id: for files a model version refers to (`NewModel::artifacts`).
    pub fn put_blob(&self, bytes: &[u8]) -> Result<BlobId> {
        self.store.put(bytes).map_err(|e| self.blob_err(e))
    }

    /// Stores checkpoint bytes in the blob store and records them on this attempt's run at (`step`, `epoch`).
    /// Buffered metrics are sent first.
    pub fn save_checkpoint(&self, step: u64, epoch: u32, bytes: &[u8]) -> Result<BlobId> {
        let id = self.store.put(bytes).map_err(|e| self.blob_err(e))?;
        let mut inner = self.lock();
        self.flush_locked(&mut inner)?;
        let req = RecordCheckpointRequest {
            worker_id: self.env.worker_id.clone(),
            attempt: Some(self.env.attempt_ref()),
            checkpoint: Some(CheckpointRef { step, epoch, blob: id.to_string(), time_ms: aidos_api::now_ms() }),
        };
        self.rt
            .block_on(inner.conn.call("RunService.RecordCheckpoint", |ch| {
                let req = req.clone();
                async move { RunServiceClient::new(ch).record_checkpoint(req).await }
            }))
            .map_err(fenced_if_gone)?;
        Ok(id)
    }

    // ---- data parallelism

    /// Joins this attempt's data-parallel ring: publishes where this rank accepts its ring connection and the
    /// `signature` of its model (e.g. its parameter shapes, which every rank must share: a mismatch is refused by
    /// the scheduler with an error naming both), waits until every rank of the generation joined, and connects.
    /// A gang of one gets a [`SingleRank`] without any call. Waits at most `opts.rendezvous_timeout` for the other
    /// ranks; a stale attempt gets [`SdkError::Fenced`].
    pub fn join_ring(&self, signature: &str, opts: RingOptions) -> Result<Box<dyn Collective>> {
        if self.env.world_size <= 1 {
            return Ok(Box::new(SingleRank { generation: self.env.attempt as u64 }));
        }
        let listener = collective::bind_ring_listener(&self.env.advertise_host).map_err(|e| SdkError::Rendezvous {
            job: self.env.job_id.clone(),
            generation: self.env.attempt,
            problem: format!("cannot listen on {}: {e}", self.env.advertise_host),
        })?;
        let port = listener.local_addr().map_err(SdkError::Runtime)?.port();
        let host = &self.env.advertise_host;
        let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let req = JoinRingRequest {
            worker_id: self.env.worker_id.clone(),
            attempt: Some(self.env.attempt_ref()),
            address,
            signature: signature.to_string(),
        };
        let deadline = Instant::now() + opts.rendezvous_timeout;
        let view = loop {
            let res = {
                let inner = self.lock();
                self.rt.block_on(inner.conn.call("JobService.JoinRing", |ch| {
                    let req = req.clone();
                    async move { JobServiceClient::new(ch).join_ring(req).await }
                }))?
            };
            if res.complete {
                break res;
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> =
                    res.peers.iter().enumerate().filter(|(_, p)| p.is_empty()).map(|(r, _)| r.to_string()).collect();
                return Err(SdkError::Rendezvous {
                    job: self.env.job_id.clone(),
                    generation: res.generation,
                    problem: format!(
                        "ranks {} did not join within {}s",
                        missing.join(", "),
                        opts.rendezvous_timeout.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let id = collective::RingId {
            job: self.env.job_id.clone(),
            generation: view.generation as u64,
            rank: self.env.rank as usize,
            world: view.world_size as usize,
        };
        if view.world_size <= 1 {
            return Ok(Box::new(SingleRank { generation: view.generation as u64 }));
        }
        // `mut` is used only by the NCCL feature's transport agreement below.
        #[allow(unused_mut)]
        let mut ring = TcpRing::connect(id, &listener, &view.peers, opts)?;
        // NCCL only when every rank can use it (device 0 of what the worker lets the task see).
        #[cfg(feature = "nccl")]
        if nccl::choose(&mut ring, opts.transport, 0)? {
            return Ok(Box::new(nccl::NcclRing::new(ring, 0)?));
        }
        #[cfg(not(feature = "nccl"))]
        if opts.transport == collective::Transport::Nccl {
            return Err(collective::CollectiveError::Connect(
                "NCCL was asked for but this build has no NCCL (build aidos-sdk with --features nccl)".into(),
            )
            .into());
        }
        Ok(Box::new(ring))
    }

    /// The newest checkpoint of any attempt of this job (where a retried attempt resumes) and its bytes, or
    /// None when no attempt has checkpointed yet.
    pub fn latest_checkpoint(&self) -> Result<Option<(CheckpointRef, Vec<u8>)>> {
        let req = LatestCheckpointRequest { job_id: self.env.job_id.clone() };
        let res = {
            let inner = self.lock();
            self.rt.block_on(inner.conn.call("RunService.LatestCheckpoint", |ch| {
                let req = req.clone();
                async move { RunServiceClient::new(ch).latest_checkpoint(req).await }
            }))?
        };
        let Some(ck) = res.checkpoint else { return Ok(None) };
        let id = BlobId::parse(&ck.blob).map_err(|e| self.blob_err(e))?;
        let bytes = self.store.get(&id).map_err(|e| self.blob_err(e))?;
        Ok(Some((ck, bytes.to_vec())))
    }

    // ---- model registry

    /// Stores `weights` in the blob store and registers a new version of `model.name`, fenced by this attempt,
    /// with lineage (job, run, dataset, params, aidos version). Buffered metrics are sent first.
    pub fn register_model(&self, model: &NewModel, weights: &[u8]) -> Result<ModelVersion> {
        if !valid_name(&model.name) {
            return Err(SdkError::Rpc {
                rpc: "ModelService.Register",
                code: tonic::Code::InvalidArgument,
                message: format!("{:?} is not a valid model name (1-64 of A-Z a-z 0-9 . _ -)", model.name),
            });
        }
        let id = self.store.put(weights).map_err(|e| self.blob_err(e))?;
        let mut inner = self.lock();
        self.flush_locked(&mut inner)?;
        let req = RegisterModelRequest {
            model: Some(ModelVersion {
                name: model.name.clone(),
                weights_blob: id.to_string(),
                config: model.config_json.clone(),
                metrics: model.metrics.clone().into_iter().collect(),
                lineage: Some(Lineage {
                    job_id: self.env.job_id.clone(),
                    run_id: self.env.run_id(),
                    dataset: model.dataset.clone(),
                    dataset_hash: model.dataset_hash.clone(),
                    params: model.params.clone().into_iter().collect(),
                    aidos_version: AIDOS_VERSION.to_string(),
                    // Filled by the scheduler from the job (a sweep trial's sweep).
                    sweep: String::new(),
                }),
                artifacts: model.artifacts.clone().into_iter().collect(),
                ..Default::default()
            }),
            worker_id: self.env.worker_id.clone(),
            attempt: Some(self.env.attempt_ref()),
        };
        self.rt
            .block_on(inner.conn.call("ModelService.Register", |ch| {
                let req = req.clone();
                async move { ModelServiceClient::new(ch).register(req).await }
            }))
            .map_err(fenced_if_gone)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        let mut inner = self.lock();
        if inner.pending.is_empty() {
            return;
        }
        if let Err(e) = self.flush_locked(&mut inner) {
            eprintln!("aidos-sdk: could not send the last metrics: {e}");
        }
    }
}

/// A fenced write refused with NOT_FOUND means the job itself is gone: as stale as a FAILED_PRECONDITION.
fn fenced_if_gone(e: SdkError) -> SdkError {
    match e {
        SdkError::Rpc { code: tonic::Code::NotFound, message, .. } => SdkError::Fenced(message),
        e => e,
    }
}

/// Flattens a JSON value into dotted keys (`optimizer.lr = "0.001"`, `model.layers = "[784,256,10]"`): objects
/// recurse, arrays and scalars become their JSON text (strings unquoted). Handy for [`Context::log_params`].
pub fn flatten_json(value: &serde_json::Value) -> BTreeMap<String, String> {
    fn go(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    go(&key, v, out);
                }
            }
            serde_json::Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    go("", value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_json_to_dotted_keys() {
        let v =
            serde_json::json!({"model": {"name": "mlp", "layers": [784, 10]}, "optimizer": {"lr": 0.001}, "epochs": 3});
        let f = flatten_json(&v);
        assert_eq!(f["model.name"], "mlp");
        assert_eq!(f["model.layers"], "[784,10]");
        assert_eq!(f["optimizer.lr"], "0.001");
        assert_eq!(f["epochs"], "3");
        assert_eq!(f.len(), 4);
    }
}
