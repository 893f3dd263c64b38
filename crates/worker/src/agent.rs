//! The agent: registration, heartbeats, the assignments stream, and the table of attempts.
//!
//! Invariants:
//! - `Shared::attempts` holds every attempt this worker is responsible for: from the moment it is
//!   accepted (or found on disk at start-up) until its final status was acknowledged or refused. It is
//!   what `running` lists in Register/Heartbeat: that includes an attempt whose process just exited
//!   while its final report is still in flight, so that the leader never mistakes it for lost.
//! - Dedup: an assignment is started only if its name is not in the table *and* neither its working directory
//!   nor its tombstone (left when that directory is cleaned up) exists yet (see `records`); the leader re-sends
//!   all assignments on every connect.
//! - Nothing in here kills a task on shutdown unless `stop_tasks_on_exit` asks for it (`aidos up`): supervisors
//!   are aborted, processes keep running and are adopted by the next worker run. When asked, every recorded
//!   task is stopped as a cancel would stop it (SIGTERM, SIGKILL after the grace period); its record stays, and
//!   the next run reports how it ended.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aidos_api::{
    AssignmentsRequest, AttemptRef, HeartbeatRequest, RegisterWorkerRequest, TaskAssignment, WorkerCommand,
    worker_command,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tonic::Code;

use crate::connection::{Connection, Failure, request};
use crate::records::{Outcome, Reconcile, StopReason, attempt_name, read_exit_code, read_shim_pid_file, same_attempt};
use crate::resources::Capacity;
use crate::runner::{Launch, supervise};
use crate::{WorkerConfig, WorkerError};

const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

/// One attempt in the table.
pub struct Entry {
    pub aref: AttemptRef,
    /// Set to ask the supervisor to stop the attempt.
    pub stop: watch::Sender<Option<StopReason>>,
}

/// State shared by the agent's loops and the attempt supervisors.
pub struct Shared {
    pub worker_id: String,
    pub hostname: String,
    pub data_dir: PathBuf,
    pub tasks_dir: PathBuf,
    pub shim_exe: PathBuf,
    /// Where tasks find blobs (absolute directory, and whether it is a cache), given to tasks as AIDOS_BLOB_DIR
    /// (and AIDOS_BLOB_CACHE_MAX_BYTES).
    pub blobs: crate::runner::BlobAccess,
    /// The store `blobs` opens ([`crate::runner::BlobAccess::open_store`]), once opened for a log blob.
    pub blob_store: std::sync::OnceLock<Arc<dyn aidos_blob::BlobStore>>,
    /// Keep working directories of ended attempts (`WorkerConfig::keep_task_dirs`).
    pub keep_task_dirs: bool,
    /// Comma-separated scheduler addresses, as given to tasks in AIDOS_SCHEDULER.
    pub schedulers_env: String,
    /// Given to tasks as AIDOS_ADVERTISE_HOST.
    pub advertise_host: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub capacity: Capacity,
    /// Most tasks placed here at once (`WorkerConfig::max_tasks`), told to the scheduler on registration.
    pub max_tasks: u32,
    pub conn: Arc<Connection>,
    attempts: Mutex<HashMap<String, Entry>>,
    supervisors: Mutex<JoinSet<()>>,
    /// Wakes the control loop to register again (the assignments stream learned we are unknown).
    reregister: Notify,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops an attempt from the table (its supervisor is done).
    pub fn forget(&self, name: &str) {
        self.table().remove(name);
    }

    /// Attempts to list as `running` in Register / Heartbeat.
    pub fn running(&self) -> Vec<AttemptRef> {
        let mut v: Vec<AttemptRef> = self.table().values().map(|e| e.aref.clone()).collect();
        v.sort_by(|a, b| (&a.job_id, a.rank, a.attempt).cmp(&(&b.job_id, b.rank, b.attempt)));
        v
    }

    fn spawn_supervisor(self: &Arc<Self>, name: String, launch: Launch, stop_rx: watch::Receiver<Option<StopReason>>) {
        let fut = supervise(self.clone(), name, launch, stop_rx);
        let mut set = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished supervisors so the set does not grow without bound.
        while set.try_join_next().is_some() {}
        set.spawn(fut);
    }

    /// Starts an assignment unless an attempt of that name is already known.
    pub fn start(self: &Arc<Self>, a: TaskAssignment) {
        let Some(aref) = a.attempt.clone() else {
            tracing::warn!("ignoring an assignment without attempt");
            return;
        };
        let name = attempt_name(&aref);
        let stop_rx = {
            let mut table = self.table();
            if let Some(e) = table.get(&name) {
                if !same_attempt(&e.aref, &aref) {
                    tracing::warn!(
                        "ignoring assignment {} with fencing token {}: this worker already has token {}",
                        aref.display(),
                        aref.fencing_token,
                        e.aref.fencing_token
                    );
                }
                return;
            }
            let (tx, rx) = watch::channel(None);
            table.insert(name.clone(), Entry { aref, stop: tx });
            rx
        };
        self.spawn_supervisor(name, Launch::New(Box::new(a)), stop_rx);
    }

    /// Asks the supervisor of `aref` to stop it (no-op for unknown attempts).
    pub fn stop(&self, aref: &AttemptRef, reason: StopReason) {
        let table = self.table();
        match table.get(&attempt_name(aref)) {
            Some(e) if same_attempt(&e.aref, aref) => {
                e.stop.send_if_modified(|cur| {
                    if cur.is_none() {
                        *cur = Some(reason);
                        true
                    } else {
                        false
                    }
                });
            }
            _ => tracing::debug!("stop for unknown attempt {} ignored", aref.display()),
        }
    }

    fn apply_kill_list(&self, kill: &[AttemptRef], from: &str) {
        for k in kill {
            tracing::info!("{from}: scheduler asks to stop {}", k.display());
            self.stop(k, StopReason::Cancelled);
        }
    }

    fn abort_supervisors(&self) -> usize {
        let mut set = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        let n = set.len();
        set.abort_all();
        n
    }
}

/// Stops every task recorded in `data_dir` whose shim still runs, as a cancel stops one
/// ([`crate::runner::stop_shims`]). Returns how many were running.
async fn stop_all_tasks(data_dir: &std::path::Path) -> usize {
    let records = crate::records::list_records(data_dir).unwrap_or_default();
    let live: Vec<(u32, PathBuf)> = records
        .into_iter()
        .filter_map(|r| r.shim_pid.filter(|p| crate::process::shim_alive(*p)).map(|p| (p, r.workdir)))
        .collect();
    crate::runner::stop_shims(&live).await;
    live.len()
}

/// Reads the records left by a previous run and starts a supervisor for each (adopt / report).
async fn reconcile_records(shared: &Arc<Shared>) -> Result<(), WorkerError> {
    let dir = shared.data_dir.clone();
    let decisions = tokio::task::spawn_blocking(move || -> Result<_, WorkerError> {
        let mut out = Vec::new();
        for rec in crate::records::list_records(&dir)? {
            let exit = read_exit_code(&rec.workdir).unwrap_or(None);
            let live = rec
                .shim_pid
                .into_iter()
                .chain(read_shim_pid_file(&rec.workdir))
                .find(|p| crate::process::shim_alive(*p));
            out.push((rec.clone(), crate::records::reconcile(exit, live)));
        }
        Ok(out)
    })
    .await??;
    for (record, decision) in decisions {
        let aref = record.attempt_ref();
        let name = record.name();
        tracing::info!("found attempt {} from a previous run: {decision:?}", aref.display());
        let launch = match decision {
            Reconcile::Finished(code) => Launch::Finished { record, outcome: Outcome::Exited(code) },
            Reconcile::Adopt(pid) => Launch::Adopt { record, pid },
            Reconcile::Gone => {
                let outcome = match &record.start_error {
                    Some(msg) => Outcome::StartFailed(msg.clone()),
                    None => Outcome::Gone("worker restarted and the task process is gone".into()),
                };
                Launch::Finished { record, outcome }
            }
        };
        let (tx, rx) = watch::channel(None);
        shared.table().insert(name.clone(), Entry { aref, stop: tx });
        shared.spawn_supervisor(name, launch, rx);
    }
    Ok(())
}

/// Registers (retrying across leader changes). Errors only for answers that retrying cannot fix.
async fn register(shared: &Arc<Shared>) -> Result<Duration, WorkerError> {
    let mut backoff = crate::connection::backoff();
    loop {
        let req = RegisterWorkerRequest {
            worker_id: shared.worker_id.clone(),
            hostname: shared.hostname.clone(),
            capacity: Some(shared.capacity.resources()),
            labels: shared.labels.clone(),
            gpu_names: shared.capacity.gpu_names.clone(),
            running: shared.running(),
            max_tasks: shared.max_tasks,
        };
        let res = shared
            .conn
            .unary("Register", |mut c| {
                let r = req.clone();
                async move { c.register(request(r)).await }
            })
            .await;
        match res {
            Ok(resp) => {
                let interval = match resp.heartbeat_interval_ms {
                    0 => DEFAULT_HEARTBEAT,
                    ms => Duration::from_millis(ms as u64),
                };
                tracing::info!(
                    "registered as {} with {} (heartbeat every {interval:?}, {} running)",
                    shared.worker_id,
                    shared.conn.current(),
                    req.running.len()
                );
                shared.apply_kill_list(&resp.kill, "register");
                return Ok(interval);
            }
            Err(st)
                if matches!(
                    st.code(),
                    Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented
                ) =>
            {
                return Err(WorkerError::Refused { what: "registration", status: st });
            }
            Err(st) => {
                tracing::warn!("registration refused ({:?}: {}); retrying", st.code(), st.message());
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Register, then heartbeat forever; registers again when asked to.
async fn control_loop(shared: Arc<Shared>, registered: watch::Sender<bool>) -> Result<(), WorkerError> {
    let mut interval = register(&shared).await?;
    let _ = registered.send(true);
    loop {
        let again = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = shared.reregister.notified() => true,
        };
        if again {
            interval = register(&shared).await?;
            continue;
        }
        let req = HeartbeatRequest { worker_id: shared.worker_id.clone(), running: shared.running() };
        // Retried (following the leader) for at most about one interval; the next beat is fresh.
        let budget = interval.max(Duration::from_secs(1));
        let res = tokio::time::timeout(
            budget,
            shared.conn.unary("Heartbeat", |mut c| {
                let r = req.clone();
                async move { c.heartbeat(request(r)).await }
            }),
        )
        .await;
        match res {
            Ok(Ok(resp)) => {
                shared.apply_kill_list(&resp.kill, "heartbeat");
                if resp.reregister {
                    tracing::info!("leader does not know this worker (any more): registering again");
                    interval = register(&shared).await?;
                }
            }
            Ok(Err(st)) => {
                tracing::warn!("heartbeat refused ({:?}: {}); registering again", st.code(), st.message());
                interval = register(&shared).await?;
            }
            Err(_) => tracing::debug!("heartbeat not delivered within {budget:?}"),
        }
    }
}

/// Keeps an `Assignments` stream open against the leader and dispatches its commands.
async fn assignments_loop(shared: Arc<Shared>, mut registered: watch::Receiver<bool>) {
    if registered.wait_for(|r| *r).await.is_err() {
        return;
    }
    let mut backoff = crate::connection::backoff();
    loop {
        let (addr, mut client) = shared.conn.client();
        let req = AssignmentsRequest { worker_id: shared.worker_id.clone() };
        let failure = match client.assignments(req).await {
            Ok(resp) => {
                tracing::info!("receiving assignments from {addr}");
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(cmd)) => {
                            backoff.reset();
                            dispatch(&shared, cmd);
                        }
                        Ok(None) => {
                            tracing::info!("assignments stream from {addr} ended; reconnecting");
                            break None;
                        }
                        Err(st) => break Some(st),
                    }
                }
            }
            Err(st) => Some(st),
        };
        match failure {
            None => tokio::time::sleep(backoff.next_delay()).await,
            Some(st) => match shared.conn.on_failure(&addr, &st) {
                Failure::Redirected => {}
                Failure::Retry => {
                    tracing::debug!("assignments via {addr} failed ({:?}: {}); retrying", st.code(), st.message());
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Failure::Fatal => {
                    tracing::warn!("assignments refused ({:?}: {}); registering again", st.code(), st.message());
                    shared.reregister.notify_one();
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            },
        }
    }
}

fn dispatch(shared: &Arc<Shared>, cmd: WorkerCommand) {
    match cmd.command {
        Some(worker_command::Command::Start(a)) => shared.start(a),
        Some(worker_command::Command::Cancel(aref)) => {
            tracing::info!("scheduler cancels {}", aref.display());
            shared.stop(&aref, StopReason::Cancelled);
        }
        None => tracing::debug!("empty worker command ignored"),
    }
}

/// How often `tasks/` is swept (`records::sweep_tasks_dir`); the first sweep runs at start-up.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Prunes old tombstones and directories left by a crash during clean-up, now and every [`SWEEP_EVERY`].
async fn sweep_loop(data_dir: PathBuf) {
    loop {
        let dir = data_dir.clone();
        let swept = tokio::task::spawn_blocking(move || {
            crate::records::sweep_tasks_dir(&dir, std::time::SystemTime::now(), crate::records::TOMBSTONE_TTL)
        })
        .await;
        if let Ok(n) = swept
            && n > 0
        {
            tracing::info!("removed {n} old task tombstone(s) or left-over task directories");
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// Prepares the worker's state and runs it until `shutdown` resolves (see [`crate::run`]).
pub async fn run(mut cfg: WorkerConfig, shutdown: impl Future<Output = ()> + Send) -> Result<(), WorkerError> {
    let data_dir =
        if cfg.data_dir.as_os_str().is_empty() { PathBuf::from("aidos-worker-data") } else { cfg.data_dir.clone() };
    let tasks_dir = crate::records::tasks_dir(&data_dir);
    let attempts_dir = crate::records::attempts_dir(&data_dir);
    // No shared directory given: the worker keeps a bounded cache filled from S3 (`cfg.s3`) or the blob service.
    let (blob_dir, cache_max_bytes) = if cfg.blob_dir.as_os_str().is_empty() {
        (data_dir.join("blob-cache"), Some(cfg.blob_cache_max_bytes))
    } else {
        (cfg.blob_dir.clone(), None)
    };
    let (data_dir, tasks_dir, worker_id, capacity, blob_dir) = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || -> Result<_, WorkerError> {
            for d in [&data_dir, &tasks_dir, &attempts_dir, &blob_dir] {
                std::fs::create_dir_all(d).map_err(|e| WorkerError::io("create", d, e))?;
            }
            let blob_dir = std::fs::canonicalize(&blob_dir).map_err(|e| WorkerError::io("resolve", &blob_dir, e))?;
            let data_dir = std::fs::canonicalize(&data_dir).map_err(|e| WorkerError::io("resolve", &data_dir, e))?;
            let tasks_dir = crate::records::tasks_dir(&data_dir);
            let worker_id = match cfg.worker_id.as_deref().map(str::trim) {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => crate::identity::load_or_create_worker_id(&data_dir)?,
            };
            let capacity = crate::resources::detect(cfg.cpu_millis, cfg.memory_bytes, cfg.gpus);
            Ok((data_dir, tasks_dir, worker_id, capacity, blob_dir))
        })
        .await??
    };
    // A TLS cluster: the worker presents its certificate (joining first when it has none yet).
    let (ca_file, cert_pem) = match cfg.credentials.tls.clone() {
        Some(ca) => {
            let (tls, cert_pem, ca_file) = crate::join::identity(&cfg, &data_dir, &worker_id, ca).await?;
            cfg.credentials.tls = Some(tls);
            (Some(ca_file), Some(cert_pem))
        }
        None => (None, None),
    };
    let conn = Arc::new(Connection::new(&cfg.schedulers, &cfg.credentials)?);
    // The connection and the blob cache share the identity: a renewal is presented by both from their next handshake.
    // Stopped when this function returns, however it returns.
    let _renewer = match (cfg.credentials.tls.clone(), cert_pem) {
        (Some(tls), Some(cert_pem)) => Some(crate::runner::AbortOnDrop(tokio::spawn(crate::join::keep_renewed(
            conn.clone(),
            tls,
            data_dir.clone(),
            worker_id.clone(),
            cert_pem,
        )))),
        _ => None,
    };
    let shim_exe = if cfg.shim_exe.as_os_str().is_empty() {
        std::env::current_exe()
            .map_err(|e| WorkerError::Config(format!("cannot locate own executable for the task shim: {e}")))?
    } else {
        cfg.shim_exe.clone()
    };
    let shared = Arc::new(Shared {
        worker_id,
        hostname: crate::identity::hostname(),
        data_dir,
        tasks_dir,
        shim_exe,
        blobs: crate::runner::BlobAccess {
            dir: blob_dir,
            cache_max_bytes,
            s3: cfg.s3.clone(),
            credentials: cfg.credentials.clone(),
            ca_file,
        },
        blob_store: std::sync::OnceLock::new(),
        keep_task_dirs: cfg.keep_task_dirs,
        schedulers_env: cfg.schedulers.join(","),
        advertise_host: if cfg.advertise_host.is_empty() { "127.0.0.1".into() } else { cfg.advertise_host.clone() },
        labels: cfg.labels.clone(),
        capacity,
        max_tasks: cfg.max_tasks,
        conn,
        attempts: Mutex::new(HashMap::new()),
        supervisors: Mutex::new(JoinSet::new()),
        reregister: Notify::new(),
    });
    tracing::info!(
        "worker {} on {}: {} millicores, {} bytes memory, {} GPUs {:?}, at most {} tasks; data in {}; schedulers {:?}",
        shared.worker_id,
        shared.hostname,
        shared.capacity.cpu_millis,
        shared.capacity.memory_bytes,
        shared.capacity.gpus,
        shared.capacity.gpu_names,
        shared.max_tasks,
        shared.data_dir.display(),
        shared.conn.known()
    );
    reconcile_records(&shared).await?;

    let (registered_tx, registered_rx) = watch::channel(false);
    let assignments = tokio::spawn(assignments_loop(shared.clone(), registered_rx));
    let sweeper = tokio::spawn(sweep_loop(shared.data_dir.clone()));
    let result = tokio::select! {
        r = control_loop(shared.clone(), registered_tx) => r,
        _ = shutdown => Ok(()),
    };
    assignments.abort();
    sweeper.abort();
    let n = shared.abort_supervisors();
    if cfg.stop_tasks_on_exit {
        let stopped = stop_all_tasks(&shared.data_dir).await;
        tracing::info!("worker stopping; stopped {stopped} running task(s)");
        return result;
    }
    match &result {
        Ok(()) => tracing::info!("worker stopping; {n} attempt(s) keep running and will be adopted on restart"),
        Err(e) => tracing::error!("worker stopping: {e}"),
    }
    result
}
