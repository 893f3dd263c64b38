//! Supervising one attempt from start (or adoption) to its acknowledged final status.
//!
//! One supervisor task per attempt. Life of an attempt on this worker:
//! 1. `New`: create `tasks/<name>/` with `create_dir` (fails if the attempt was ever started here:
//!    never start twice), write the record, spawn the shim (own process group), store its pid in the record.
//!    `Adopt` (after a worker restart, shim alive) and `Finished` (exit status or nothing left) skip this.
//! 2. Report RUNNING (unless already acknowledged), retrying across leader changes; meanwhile await our own
//!    shim's exit and stop requests, and every 100 ms look for `exit`, a dead (adopted) shim and the timeout; ship
//!    logs in a sibling task.
//! 3. When the process ended: let the log shipper drain, write the complete output as a log blob (`logblob`),
//!    then report SUCCEEDED/FAILED naming it until the leader acknowledges it. Only then (or when the leader
//!    refuses it) delete the record and, unless `keep_task_dirs`, the working directory, leaving a tombstone
//!    that keeps guarding against a second start (`records::end_attempt_dir`).
//!
//! A refusal (`FAILED_PRECONDITION`: stale fencing token, `NOT_FOUND`: unknown attempt) ends the
//! attempt for good: it is stopped if still running and its record deleted; nothing is reported again.
//!
//! Stopping (cancel, kill list, timeout, refusal): the reason is persisted in the record first, then
//! SIGTERM goes to the shim's group (forwarded to the task), SIGKILL to the task's group after
//! [`STOP_GRACE`], and SIGKILL to the shim's group [`SHIM_KILL_AFTER`] after that. Dropping a supervisor
//! (worker shutdown) never stops its process: it is adopted on restart.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aidos_api::contract::task_env;
use aidos_api::{AttemptRef, TaskAssignment, TaskState, TaskStatusReport, TrainSpec, job_spec};
use aidos_blob::{BlobError, BlobStore};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

use crate::agent::Shared;
use crate::connection::request;
use crate::logs::ship_logs;
use crate::process::{ShimCommand, read_child_pgid, shim_alive, signal_group};
use crate::records::{
    AttemptRecord, FinalStatus, Outcome, STDERR_FILE, StopReason, end_attempt_dir, final_status, has_tombstone,
    read_exit_code, write_record,
};

pub const POLL: Duration = Duration::from_millis(100);
/// Time between SIGTERM and SIGKILL when stopping a task.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Extra time after the task's SIGKILL before the shim itself is killed.
pub const SHIM_KILL_AFTER: Duration = Duration::from_secs(3);

/// How a supervisor starts.
pub enum Launch {
    /// A fresh assignment from the leader.
    New(Box<TaskAssignment>),
    /// A record found at start-up whose shim still runs.
    Adopt { record: AttemptRecord, pid: u32 },
    /// A record found at start-up whose task already ended (or vanished).
    Finished { record: AttemptRecord, outcome: Outcome },
}

/// The running process, as far as the supervisor knows it.
enum Proc {
    /// Spawned by this worker run: reaped through tokio.
    Owned(tokio::process::Child),
    /// Inherited from a previous worker run: polled by pid.
    Adopted(u32),
    /// Never started (or already gone).
    None,
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        match self {
            Proc::Owned(c) => c.id(),
            Proc::Adopted(p) => Some(*p),
            Proc::None => None,
        }
    }
    fn alive(&mut self) -> bool {
        match self {
            Proc::Owned(c) => matches!(c.try_wait(), Ok(None)),
            Proc::Adopted(p) => shim_alive(*p),
            Proc::None => false,
        }
    }
}

/// Progress of a stop in flight.
struct Stopping {
    since: Instant,
    task_killed: bool,
    shim_killed: bool,
}

async fn persist(shared: &Shared, record: &AttemptRecord) {
    let dir = shared.data_dir.clone();
    let rec = record.clone();
    match tokio::task::spawn_blocking(move || write_record(&dir, &rec)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("cannot persist attempt record: {e}"),
        Err(e) => tracing::error!("cannot persist attempt record: {e}"),
    }
}

/// The attempt is over for this worker: its record goes and (unless kept) its working directory, leaving a
/// tombstone (`records::end_attempt_dir`).
async fn end_attempt(shared: &Shared, name: &str, workdir: &Path) {
    let (dir, name, wd, keep) =
        (shared.data_dir.clone(), name.to_string(), workdir.to_path_buf(), shared.keep_task_dirs);
    match tokio::task::spawn_blocking(move || end_attempt_dir(&dir, &name, &wd, keep)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("cannot clean up after an attempt: {e}"),
        Err(e) => tracing::error!("cannot clean up after an attempt: {e}"),
    }
}

/// Sends one status report, retrying (and following the leader) until it is acknowledged; returns the
/// refusal otherwise. `log_blob`: the attempt's output blob (final reports), or empty.
pub async fn report_status(
    shared: &Shared,
    aref: &AttemptRef,
    state: TaskState,
    exit_code: i32,
    message: &str,
    log_blob: &str,
) -> Result<(), Status> {
    let report = TaskStatusReport {
        worker_id: shared.worker_id.clone(),
        attempt: Some(aref.clone()),
        state: state as i32,
        exit_code,
        message: message.to_string(),
        log_blob: log_blob.to_string(),
    };
    shared
        .conn
        .unary("ReportStatus", |mut client| {
            let r = report.clone();
            async move { client.report_status(request(r)).await }
        })
        .await
        .map(|_| ())
}

fn log_refusal(name: &str, what: &str, st: &Status) {
    tracing::warn!(
        "scheduler refused {what} report for {name}: {} ({:?}); dropping the attempt",
        st.message(),
        st.code()
    );
}

/// Argument the shim executable (the `aidos` binary) takes to run the built-in trainer of a train job.
pub const TRAIN_RUN_ARG: &str = "train-run";

/// The built-in trainer's variables for a train job (see `aidos_train::builtin`): register_as defaults to the
/// job's name (its id when unnamed), the splits to `train` / `test`.
pub fn train_env(t: &TrainSpec, job_name: &str, job_id: &str) -> Vec<(String, String)> {
    let or = |v: &str, d: &str| if v.trim().is_empty() { d.to_string() } else { v.trim().to_string() };
    let default_name = if job_name.trim().is_empty() { job_id } else { job_name };
    vec![
        (task_env::TRAIN_DATASET.to_string(), t.dataset.trim().to_string()),
        (task_env::TRAIN_CONFIG.to_string(), t.config_json.clone()),
        (task_env::TRAIN_REGISTER_AS.to_string(), or(&t.register_as, default_name)),
        (task_env::TRAIN_SPLIT.to_string(), or(&t.train_split, "train")),
        (task_env::EVAL_SPLIT.to_string(), or(&t.eval_split, "test")),
        (task_env::TRAIN_RESUME_FROM.to_string(), t.resume_from_job.trim().to_string()),
    ]
}

/// Argument the shim executable takes to run an export job: `aidos export-run`.
pub const EXPORT_RUN_ARG: &str = "export-run";

/// Argument the shim executable takes to run one replica of a deployment: `aidos serve replica`.
pub const SERVE_REPLICA_ARGS: [&str; 2] = ["serve", "replica"];

/// A serve replica's variables (read by `aidos serve replica`).
pub fn serve_env(s: &aidos_api::v1::ServeSpec) -> Vec<(String, String)> {
    vec![
        (task_env::SERVE_DEPLOYMENT.to_string(), s.deployment.clone()),
        (task_env::SERVE_MODEL.to_string(), format!("{}:{}", s.model, s.version)),
        (task_env::SERVE_RUNTIME.to_string(), s.runtime.clone()),
        (task_env::SERVE_MAX_BATCH.to_string(), s.max_batch.to_string()),
        (task_env::SERVE_MAX_DELAY_US.to_string(), s.max_delay_us.to_string()),
        (task_env::SERVE_INSTANCES.to_string(), s.instances.to_string()),
        (task_env::SERVE_MAX_QUEUE.to_string(), s.max_queue.to_string()),
    ]
}

/// The environment of a task: spec env (a process job's env, a train job's AIDOS_TRAIN_* variables), then
/// assignment env, then the AIDOS_* variables of the task contract (see `aidos_sdk`).
/// Where a worker's tasks find the cluster's blobs: a directory shared with the cluster (`cache_max_bytes` None),
/// or the worker's bounded cache in front of the S3 bucket (`s3`) or else the scheduler's blob service.
#[derive(Debug, Clone)]
pub struct BlobAccess {
    pub dir: PathBuf,
    pub cache_max_bytes: Option<u64>,
    pub s3: Option<aidos_blob::S3Config>,
    /// What the worker presents to the blob service.
    pub credentials: aidos_api::auth::Credentials,
    /// The cluster CA's certificate, given to tasks as `AIDOS_CA_CERT` when the cluster serves TLS.
    pub ca_file: Option<PathBuf>,
}

impl BlobAccess {
    pub fn shared(dir: impl Into<PathBuf>) -> BlobAccess {
        BlobAccess { dir: dir.into(), cache_max_bytes: None, s3: None, credentials: Default::default(), ca_file: None }
    }

    /// The cluster's blob store as this worker (and its tasks, `aidos_sdk::TaskEnv::open_blob_store`) sees it.
    /// Blocking (the stores are): call it, and use the store, from a blocking context.
    pub fn open_store(&self, schedulers: &[String]) -> Result<Arc<dyn BlobStore>, BlobError> {
        aidos_blob::open_worker_store(&self.dir, self.cache_max_bytes, self.s3.as_ref(), schedulers, &self.credentials)
    }
}

pub fn task_env(
    a: &TaskAssignment,
    worker_id: &str,
    schedulers: &str,
    advertise_host: &str,
    workdir: &Path,
    blobs: &BlobAccess,
) -> Vec<(String, String)> {
    let aref = a.attempt.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    match a.spec.as_ref().and_then(|s| s.payload.as_ref()) {
        Some(job_spec::Payload::Process(p)) => {
            let mut spec_env: Vec<_> = p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            spec_env.sort();
            env.extend(spec_env);
        }
        Some(job_spec::Payload::Train(t)) => {
            let name = a.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            env.extend(train_env(t, name, &aref.job_id));
        }
        Some(job_spec::Payload::Serve(s)) => env.extend(serve_env(s)),
        Some(job_spec::Payload::Export(e)) => env.extend([
            (task_env::EXPORT_MODEL.to_string(), e.model.trim().to_string()),
            (task_env::EXPORT_QUANTIZE.to_string(), e.quantize.clone()),
        ]),
        None => {}
    }
    let mut extra: Vec<_> = a.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    extra.sort();
    env.extend(extra);
    env.extend([
        (task_env::JOB_ID.to_string(), aref.job_id.clone()),
        (task_env::RANK.to_string(), aref.rank.to_string()),
        (task_env::WORLD_SIZE.to_string(), a.world_size.to_string()),
        (task_env::ATTEMPT.to_string(), aref.attempt.to_string()),
        (task_env::FENCING_TOKEN.to_string(), aref.fencing_token.to_string()),
        (task_env::WORKER_ID.to_string(), worker_id.to_string()),
        (task_env::SCHEDULER.to_string(), schedulers.to_string()),
        (task_env::WORK_DIR.to_string(), workdir.display().to_string()),
        (task_env::BLOB_DIR.to_string(), blobs.dir.display().to_string()),
        (task_env::ADVERTISE_HOST.to_string(), advertise_host.to_string()),
    ]);
    if let Some(ca) = &blobs.ca_file {
        env.push((aidos_api::tls::CA_ENV.to_string(), ca.display().to_string()));
    }
    // A sweep trial's parameters also as a file (written by `write_task_files`).
    if env.iter().any(|(k, _)| k == aidos_api::sweep::ENV_TRIAL_PARAMS) {
        let path = workdir.join(aidos_api::sweep::TRIAL_PARAMS_FILE);
        env.push((aidos_api::sweep::ENV_TRIAL_PARAMS_FILE.to_string(), path.display().to_string()));
    }
    if let Some(max) = blobs.cache_max_bytes {
        env.push((task_env::BLOB_CACHE_MAX_BYTES.to_string(), max.to_string()));
        // The bucket behind the cache (else the blob service); the SDK reads it back with S3Config::from_lookup.
        if let Some(s3) = &blobs.s3 {
            env.extend(s3.to_env());
        }
    }
    env
}

/// Files a task's environment points at, written into its working directory before it starts: a sweep trial's
/// parameters (`AIDOS_TRIAL_PARAMS_FILE`, the same JSON as `AIDOS_TRIAL_PARAMS`).
fn write_task_files(workdir: &Path, env: &[(String, String)]) -> std::io::Result<()> {
    if let Some((_, params)) = env.iter().rev().find(|(k, _)| k == aidos_api::sweep::ENV_TRIAL_PARAMS) {
        std::fs::write(workdir.join(aidos_api::sweep::TRIAL_PARAMS_FILE), params)?;
    }
    Ok(())
}

/// Last non-empty line of the task's stderr (the shim's explanation when it could not run it).
fn stderr_last_line(workdir: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(workdir.join(STDERR_FILE)).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(512))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let s = String::from_utf8_lossy(&buf);
    s.lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string())
}

/// Creates the working directory and record and spawns the shim. Returns None when the attempt was
/// already started here earlier (its working directory exists).
async fn start_new(
    shared: &Shared,
    name: &str,
    a: &TaskAssignment,
    stop_rx: &watch::Receiver<Option<StopReason>>,
) -> Option<(AttemptRecord, Proc, Option<Outcome>)> {
    let aref = a.attempt.clone().unwrap_or_default();
    let workdir: PathBuf = shared.tasks_dir.join(name);
    let wd = workdir.clone();
    let data_dir = shared.data_dir.clone();
    let name_ = name.to_string();
    let created = tokio::task::spawn_blocking(move || {
        // Its directory may be gone already: cleaned up after it ended here (the tombstone says so).
        if has_tombstone(&data_dir, &name_) {
            return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
        }
        std::fs::create_dir(&wd)
    })
    .await;
    match created {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            tracing::debug!("{}: already started on this worker earlier; not starting it again", aref.display());
            return None;
        }
        Ok(Err(e)) => {
            tracing::error!("{}: cannot create {}: {e}", aref.display(), workdir.display());
            return None;
        }
        Err(e) => {
            tracing::error!("{}: {e}", aref.display());
            return None;
        }
    }
    let spec = a.spec.clone().unwrap_or_default();
    let mut record = AttemptRecord {
        job_id: aref.job_id.clone(),
        rank: aref.rank,
        attempt: aref.attempt,
        fencing_token: aref.fencing_token,
        world_size: a.world_size,
        shim_pid: None,
        workdir: workdir.clone(),
        started_at_ms: aidos_api::now_ms(),
        timeout_secs: spec.timeout_secs,
        running_acked: false,
        stop: None,
        start_error: None,
        serve_replica: matches!(spec.payload, Some(job_spec::Payload::Serve(_))),
    };
    // The record exists before the process does (restart reconciliation relies on it).
    persist(shared, &record).await;

    let (program, args) = match spec.payload {
        Some(job_spec::Payload::Process(p)) if !p.executable.is_empty() => (p.executable, p.args),
        Some(job_spec::Payload::Process(_)) => {
            record.start_error = Some("empty executable".into());
            persist(shared, &record).await;
            return Some((record, Proc::None, Some(Outcome::StartFailed("empty executable".into()))));
        }
        // The built-in trainer is the shim executable itself (the `aidos` binary): `aidos train-run`.
        Some(job_spec::Payload::Train(t)) if !t.dataset.trim().is_empty() => {
            (shared.shim_exe.to_string_lossy().into_owned(), vec![TRAIN_RUN_ARG.to_string()])
        }
        // An export is `aidos export-run`, configured by the AIDOS_EXPORT_* variables.
        Some(job_spec::Payload::Export(_)) => {
            (shared.shim_exe.to_string_lossy().into_owned(), vec![EXPORT_RUN_ARG.to_string()])
        }
        // A serve replica is `aidos serve replica`, configured by the AIDOS_SERVE_* variables.
        Some(job_spec::Payload::Serve(_)) => {
            (shared.shim_exe.to_string_lossy().into_owned(), SERVE_REPLICA_ARGS.iter().map(|s| s.to_string()).collect())
        }
        Some(job_spec::Payload::Train(_)) => {
            let msg = "train job names no dataset".to_string();
            record.start_error = Some(msg.clone());
            persist(shared, &record).await;
            return Some((record, Proc::None, Some(Outcome::StartFailed(msg))));
        }
        None => {
            let msg = format!("job kind {:?} is not supported by this worker", spec.kind());
            record.start_error = Some(msg.clone());
            persist(shared, &record).await;
            return Some((record, Proc::None, Some(Outcome::StartFailed(msg))));
        }
    };
    if stop_rx.borrow().is_some() {
        let msg = "cancelled before it started".to_string();
        record.stop = stop_rx.borrow().clone();
        record.start_error = Some(msg.clone());
        persist(shared, &record).await;
        return Some((record, Proc::None, Some(Outcome::StartFailed(msg))));
    }
    let cmd = ShimCommand {
        shim_exe: shared.shim_exe.clone(),
        workdir: workdir.clone(),
        program: program.clone(),
        args: args.clone(),
        env: task_env(a, &shared.worker_id, &shared.schedulers_env, &shared.advertise_host, &workdir, &shared.blobs),
    };
    // fork+exec of this (large, many-threaded) process takes milliseconds: on a runtime worker thread, hundreds of
    // starts at once starve the runtime's timers, and with them the heartbeats (the worker was declared lost).
    let spawned = tokio::task::spawn_blocking(move || {
        write_task_files(&cmd.workdir, &cmd.env)?;
        cmd.spawn()
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(format!("spawn task: {e}"))));
    match spawned {
        Ok(child) => {
            record.shim_pid = child.id();
            persist(shared, &record).await;
            tracing::info!(
                "started {} ({} {:?}) in {} (shim pid {})",
                aref.display(),
                program,
                args,
                workdir.display(),
                record.shim_pid.unwrap_or(0)
            );
            Some((record, Proc::Owned(child), None))
        }
        Err(e) => {
            let msg = format!("cannot spawn task shim {}: {e}", shared.shim_exe.display());
            tracing::error!("{}: {msg}", aref.display());
            record.start_error = Some(msg.clone());
            persist(shared, &record).await;
            Some((record, Proc::None, Some(Outcome::StartFailed(msg))))
        }
    }
}

/// Aborts the wrapped task when dropped (the log shipper must not outlive its supervisor).
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);
impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type ReportFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Status>> + Send + 'a>>;

/// Supervises one attempt (see module docs). Removes the attempt from the agent's table at the end.
pub async fn supervise(
    shared: Arc<Shared>,
    name: String,
    launch: Launch,
    mut stop_rx: watch::Receiver<Option<StopReason>>,
) {
    run_attempt(&shared, &name, launch, &mut stop_rx).await;
    shared.forget(&name);
}

async fn run_attempt(
    shared: &Arc<Shared>,
    name: &str,
    launch: Launch,
    stop_rx: &mut watch::Receiver<Option<StopReason>>,
) {
    let (mut record, mut proc, mut outcome) = match launch {
        Launch::New(a) => match start_new(shared, name, &a, stop_rx).await {
            Some(x) => x,
            None => return,
        },
        Launch::Adopt { record, pid } => {
            tracing::info!("adopted {} (shim pid {pid}) after a worker restart", record.attempt_ref().display());
            (record, Proc::Adopted(pid), None)
        }
        Launch::Finished { record, outcome } => (record, Proc::None, Some(outcome)),
    };
    let aref = record.attempt_ref();
    let label = aref.display();
    let workdir = record.workdir.clone();

    // Logs are shipped for every attempt that may have produced output.
    let (finish_tx, finish_rx) = watch::channel(false);
    let mut shipper = AbortOnDrop(tokio::spawn(ship_logs(
        shared.conn.clone(),
        shared.worker_id.clone(),
        aref.clone(),
        workdir.clone(),
        finish_rx,
    )));

    let mut refused = false;
    let mut running_report: Option<ReportFuture<'_>> = if record.running_acked || record.start_error.is_some() {
        None
    } else {
        Some(Box::pin(report_status(shared, &aref, TaskState::Running, 0, "", "")))
    };
    let mut stopping: Option<Stopping> = None;
    let mut stop_open = true;
    // A serving replica is probed while it runs; the probe ends with why it is hung.
    let mut probing = record.serve_replica && outcome.is_none() && record.stop.is_none();
    let mut probe = AbortOnDrop(tokio::spawn(crate::probe::watch(workdir.clone(), probing)));
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Our own shim is awaited, so its end is seen at once (a trial's slot is freed for the next one, a stopped task
    // is reported without a poll's delay); an adopted one is polled each tick.
    let mut awaiting_exit = matches!(proc, Proc::Owned(_));

    // A stop decided before a restart is carried on.
    if outcome.is_none() && record.stop.is_some() {
        stopping = Some(begin_stop(&proc, &workdir));
    }

    while outcome.is_none() {
        let mut new_stop: Option<StopReason> = None;
        tokio::select! {
            res = async { running_report.as_mut().expect("guarded").await }, if running_report.is_some() => {
                running_report = None;
                match res {
                    Ok(()) => {
                        record.running_acked = true;
                        persist(shared, &record).await;
                    }
                    Err(st) => {
                        log_refusal(&label, "RUNNING", &st);
                        refused = true;
                        new_stop = Some(StopReason::Refused);
                    }
                }
            }
            r = stop_rx.changed(), if stop_open => {
                if r.is_err() {
                    stop_open = false;
                } else {
                    new_stop = stop_rx.borrow_and_update().clone();
                }
            }
            why = &mut probe.0, if probing => {
                probing = false;
                if let Ok(why) = why {
                    tracing::warn!("{label}: {why}");
                    new_stop = Some(StopReason::Unhealthy { why });
                }
            }
            // Cancel safe: `Child::wait` keeps nothing between polls.
            _ = async { if let Proc::Owned(c) = &mut proc { let _ = c.wait().await; } }, if awaiting_exit => {
                awaiting_exit = false;
            }
            _ = tick.tick() => {}
        }
        if let Some(reason) = new_stop.take()
            && record.stop.is_none()
        {
            tracing::info!("stopping {label}: {reason:?}");
            let hung = matches!(reason, StopReason::Unhealthy { .. });
            record.stop = Some(reason);
            persist(shared, &record).await;
            probing = false;
            stopping = Some(begin_stop(&proc, &workdir));
            // A hung replica cannot drain: no grace period.
            if hung && let Some(pg) = read_child_pgid(&workdir) {
                signal_group(pg, libc::SIGKILL);
            }
        }
        match read_exit_code(&workdir) {
            Ok(Some(code)) => {
                outcome = Some(Outcome::Exited(code));
                break;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{label}: cannot read exit status: {e}"),
        }
        if !proc.alive() {
            // The shim writes `exit` before it exits: look once more to close the race.
            outcome = Some(match read_exit_code(&workdir) {
                Ok(Some(code)) => Outcome::Exited(code),
                _ => Outcome::Gone("task process disappeared without an exit status".into()),
            });
            break;
        }
        // Timeout, measured from the recorded start so that it survives worker restarts.
        if record.timeout_secs > 0
            && record.stop.is_none()
            && aidos_api::now_ms() - record.started_at_ms >= (record.timeout_secs as i64).saturating_mul(1000)
        {
            tracing::info!("{label} timed out after {}s; stopping it", record.timeout_secs);
            record.stop = Some(StopReason::Timeout { secs: record.timeout_secs });
            persist(shared, &record).await;
            stopping = Some(begin_stop(&proc, &workdir));
        }
        if let Some(s) = stopping.as_mut() {
            escalate_stop(s, &proc, &workdir);
        }
    }
    let outcome = outcome.expect("loop ends with an outcome");
    tracing::info!("{label} ended: {outcome:?}");
    // Reap our own child if it is done (it is, or about to be: it wrote `exit`).
    if let Proc::Owned(c) = &mut proc {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.wait()).await;
    }

    // Ordered reports: the final status never overtakes RUNNING.
    if let Some(fut) = running_report.take() {
        match fut.await {
            Ok(()) => record.running_acked = true,
            Err(st) => {
                log_refusal(&label, "RUNNING", &st);
                refused = true;
            }
        }
    }
    let _ = finish_tx.send(true);
    // The shipper bounds its own draining (FINISH_BUDGET); the outer timeout is a safety net.
    if let Ok(Err(e)) = tokio::time::timeout(crate::logs::FINISH_BUDGET + Duration::from_secs(2), &mut shipper.0).await
    {
        tracing::debug!("{label}: log shipper ended abnormally: {e}");
    }

    if !refused {
        let detail = match outcome {
            Outcome::Exited(126 | 127) => {
                let wd = workdir.clone();
                tokio::task::spawn_blocking(move || stderr_last_line(&wd)).await.ok().flatten()
            }
            _ => None,
        };
        let FinalStatus { state, exit_code, message } = final_status(&outcome, record.stop.as_ref(), detail.as_deref());
        // The complete output first, so that the report can name it (see `logblob`).
        let log_blob = crate::logblob::write_log_blob(shared, &record).await;
        match report_status(shared, &aref, state, exit_code, &message, &log_blob).await {
            Ok(()) => {
                tracing::info!("finished {label}: {} ({message})", state.as_str_name());
            }
            // The scheduler ended a cancelled attempt when it cancelled it (or, for an attempt on the kill list of a
            // register or heartbeat, when it replaced it): its final report is refused as stale.
            Err(st) if record.stop == Some(StopReason::Cancelled) && st.code() == tonic::Code::FailedPrecondition => {
                tracing::debug!("final report for cancelled {label} not needed: {}", st.message());
            }
            Err(st) => log_refusal(&label, state.as_str_name(), &st),
        }
    }
    end_attempt(shared, name, &workdir).await;
}

/// Stops the tasks of these shims (pid, working directory) together, each as [`begin_stop`] and [`escalate_stop`]
/// stop one attempt, and returns once every shim is gone (SIGKILLed by then at the latest). For a worker that stops
/// its tasks as it exits: no supervisor is left to do it.
pub(crate) async fn stop_shims(shims: &[(u32, PathBuf)]) {
    let mut stopping: Vec<(Proc, &Path, Stopping)> = shims
        .iter()
        .map(|(pid, dir)| {
            let p = Proc::Adopted(*pid);
            let s = begin_stop(&p, dir);
            (p, dir.as_path(), s)
        })
        .collect();
    while !stopping.is_empty() {
        tokio::time::sleep(POLL).await;
        stopping.retain_mut(|(p, dir, s)| {
            escalate_stop(s, p, dir);
            p.alive()
        });
    }
}

fn begin_stop(proc: &Proc, workdir: &Path) -> Stopping {
    let delivered = proc.pid().is_some_and(|pid| signal_group(pid, libc::SIGTERM));
    if !delivered {
        // No shim to forward it (adopted without pid, or the shim died): signal the task directly.
        if let Some(pg) = read_child_pgid(workdir) {
            signal_group(pg, libc::SIGTERM);
        }
    }
    Stopping { since: Instant::now(), task_killed: false, shim_killed: false }
}

fn escalate_stop(s: &mut Stopping, proc: &Proc, workdir: &Path) {
    let elapsed = s.since.elapsed();
    if !s.task_killed && elapsed >= STOP_GRACE {
        s.task_killed = true;
        if let Some(pg) = read_child_pgid(workdir) {
            tracing::info!("task group {pg} did not stop within {STOP_GRACE:?}: SIGKILL");
            signal_group(pg, libc::SIGKILL);
        }
    }
    if !s.shim_killed && elapsed >= STOP_GRACE + SHIM_KILL_AFTER {
        s.shim_killed = true;
        if let Some(pid) = proc.pid() {
            signal_group(pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aidos_api::{JobSpec, ProcessSpec};

    #[test]
    fn env_layers_in_order() {
        let a = TaskAssignment {
            attempt: Some(AttemptRef { job_id: "j".into(), rank: 1, attempt: 2, fencing_token: 9 }),
            spec: Some(JobSpec {
                payload: Some(job_spec::Payload::Process(ProcessSpec {
                    executable: "x".into(),
                    args: vec![],
                    env: [("A".to_string(), "spec".to_string()), (task_env::RANK.to_string(), "bogus".to_string())]
                        .into_iter()
                        .collect(),
                })),
                ..Default::default()
            }),
            world_size: 4,
            env: [("A".to_string(), "assign".to_string())].into_iter().collect(),
        };
        let env = task_env(&a, "w1", "h1:1,h2:2", "127.0.0.1", Path::new("/wd"), &BlobAccess::shared("/blobs"));
        // Later entries win when applied in order.
        let last = |k: &str| env.iter().rev().find(|(kk, _)| kk == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(last("A"), "assign");
        assert_eq!(last("AIDOS_RANK"), "1");
        assert_eq!(last("AIDOS_WORLD_SIZE"), "4");
        assert_eq!(last("AIDOS_FENCING_TOKEN"), "9");
        assert_eq!(last("AIDOS_SCHEDULER"), "h1:1,h2:2");
        assert_eq!(last("AIDOS_WORK_DIR"), "/wd");
        assert_eq!(last("AIDOS_WORKER_ID"), "w1");
        assert_eq!(last("AIDOS_JOB_ID"), "j");
        assert_eq!(last("AIDOS_ATTEMPT"), "2");
        assert_eq!(last("AIDOS_BLOB_DIR"), "/blobs");
    }

    #[test]
    fn train_jobs_get_the_trainer_env() {
        let train = |t: TrainSpec, name: &str| TaskAssignment {
            attempt: Some(AttemptRef { job_id: "job-7".into(), rank: 0, attempt: 1, fencing_token: 3 }),
            spec: Some(JobSpec { name: name.into(), payload: Some(job_spec::Payload::Train(t)), ..Default::default() }),
            world_size: 1,
            env: Default::default(),
        };
        let spec = TrainSpec {
            dataset: "mnist@v3".into(),
            config_json: r#"{"epochs":1}"#.into(),
            register_as: "".into(),
            train_split: "".into(),
            eval_split: "".into(),
            resume_from_job: "".into(),
        };
        let env = task_env(
            &train(spec.clone(), "digits"),
            "w1",
            "h:1",
            "127.0.0.1",
            Path::new("/wd"),
            &BlobAccess::shared("/b"),
        );
        let get = |env: &[(String, String)], k: &str| env.iter().rev().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        assert_eq!(get(&env, "AIDOS_TRAIN_DATASET").as_deref(), Some("mnist@v3"));
        assert_eq!(get(&env, "AIDOS_TRAIN_CONFIG").as_deref(), Some(r#"{"epochs":1}"#));
        assert_eq!(get(&env, "AIDOS_TRAIN_REGISTER_AS").as_deref(), Some("digits"));
        assert_eq!(get(&env, "AIDOS_TRAIN_SPLIT").as_deref(), Some("train"));
        assert_eq!(get(&env, "AIDOS_EVAL_SPLIT").as_deref(), Some("test"));
        assert_eq!(get(&env, "AIDOS_BLOB_DIR").as_deref(), Some("/b"));
        assert_eq!(get(&env, "AIDOS_JOB_ID").as_deref(), Some("job-7"));
        // Explicit values win; an unnamed job registers under its id.
        let spec = TrainSpec { register_as: "m".into(), train_split: "tr".into(), eval_split: "val".into(), ..spec };
        let env = task_env(
            &train(spec.clone(), "digits"),
            "w1",
            "h:1",
            "127.0.0.1",
            Path::new("/wd"),
            &BlobAccess::shared("/b"),
        );
        assert_eq!(get(&env, "AIDOS_TRAIN_REGISTER_AS").as_deref(), Some("m"));
        assert_eq!(get(&env, "AIDOS_TRAIN_SPLIT").as_deref(), Some("tr"));
        assert_eq!(get(&env, "AIDOS_EVAL_SPLIT").as_deref(), Some("val"));
        let unnamed = TrainSpec { register_as: "".into(), ..spec };
        let env = task_env(&train(unnamed, ""), "w1", "h:1", "127.0.0.1", Path::new("/wd"), &BlobAccess::shared("/b"));
        assert_eq!(get(&env, "AIDOS_TRAIN_REGISTER_AS").as_deref(), Some("job-7"));
        // No process env leaks into a train job.
        assert!(env.iter().all(|(k, _)| k.starts_with("AIDOS_")));
    }
}
