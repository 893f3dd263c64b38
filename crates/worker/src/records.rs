//! On-disk state of attempts, and the pure decisions taken from it.
//!
//! Layout under `data_dir`:
//! - `attempts/<name>.json`: one [`AttemptRecord`] per attempt this worker is responsible for. Written
//!   (atomically) *before* the task process is started; removed only after the scheduler acknowledged
//!   (or refused) the attempt's final status. A record without a final ack therefore always exists for
//!   anything this worker might still be running, which is what restart reconciliation relies on.
//! - `tasks/<name>/`: the attempt's working directory (the task's cwd, `stdout.log`, `stderr.log`,
//!   `exit`, `shim.pid`, `log_offsets.json`). Created with `create_dir` (not `_all`) when an attempt
//!   starts, so its existence is the "this attempt was already started here" guard: an attempt is never
//!   started twice, even after its record was removed.
//! - `tasks/<name>.done`: the tombstone that takes over that guard when the working directory is cleaned up
//!   ([`end_attempt_dir`]). Once the final status was acknowledged (or refused) and the log blob written, nothing
//!   in the directory is needed any more, so (unless the worker keeps task directories) the tombstone is written,
//!   then the record removed, then the directory. An assignment still in flight (or re-sent by a leader whose
//!   applied state lags its commits) therefore never starts the attempt again, and a crash at any point leaves
//!   either the record (the attempt is reconciled and reported again, which the scheduler refuses as stale) or
//!   the tombstone (a left-over directory is removed by [`sweep_tasks_dir`]). Tombstones are pruned after
//!   [`TOMBSTONE_TTL`], far longer than any stale assignment lives.
//!
//! `<name>` is `<job_id>-r<rank>-a<attempt>` (job id sanitized to a file-name-safe form).

use std::io::Write;
use std::path::{Path, PathBuf};

use aidos_api::{AttemptRef, TaskState};
use serde::{Deserialize, Serialize};

use crate::WorkerError;

/// Why the worker stopped an attempt itself; decides the final status message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// Cancelled by the scheduler (Assignments cancel, heartbeat or register `kill` list).
    Cancelled,
    /// `spec.timeout_secs` elapsed.
    Timeout { secs: u64 },
    /// The scheduler refused a report for this attempt (stale fencing token / unknown attempt).
    Refused,
    /// A serving replica stopped answering its readiness probes (see `probe`): killed, so its job restarts it.
    Unhealthy { why: String },
}

/// Persistent record of one attempt (`data_dir/attempts/<name>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub job_id: String,
    pub rank: u32,
    pub attempt: u32,
    pub fencing_token: u64,
    pub world_size: u32,
    /// Pid of the task shim (leader of its own session and process group); None until spawned.
    pub shim_pid: Option<u32>,
    pub workdir: PathBuf,
    #[serde(default)]
    pub started_at_ms: i64,
    /// 0: no limit.
    #[serde(default)]
    pub timeout_secs: u64,
    /// The scheduler acknowledged the RUNNING report.
    #[serde(default)]
    pub running_acked: bool,
    /// Set when the worker decided to stop the attempt, before signalling it.
    #[serde(default)]
    pub stop: Option<StopReason>,
    /// The task could not be started at all; its final status is FAILED with this message.
    #[serde(default)]
    pub start_error: Option<String>,
    /// A serving replica: its readiness is probed while it runs (`probe`).
    #[serde(default)]
    pub serve_replica: bool,
}

impl AttemptRecord {
    pub fn attempt_ref(&self) -> AttemptRef {
        AttemptRef {
            job_id: self.job_id.clone(),
            rank: self.rank,
            attempt: self.attempt,
            fencing_token: self.fencing_token,
        }
    }
    pub fn name(&self) -> String {
        attempt_name(&self.attempt_ref())
    }
}

/// `<job_id>-r<rank>-a<attempt>`, the file name stem of an attempt's record and working directory.
pub fn attempt_name(a: &AttemptRef) -> String {
    let job: String = a
        .job_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    let job = if job.is_empty() || job.starts_with('.') { format!("_{job}") } else { job };
    format!("{job}-r{}-a{}", a.rank, a.attempt)
}

/// Identity of an attempt everywhere (dedup key): (job_id, rank, attempt, fencing_token).
pub fn same_attempt(a: &AttemptRef, b: &AttemptRef) -> bool {
    a.job_id == b.job_id && a.rank == b.rank && a.attempt == b.attempt && a.fencing_token == b.fencing_token
}

pub fn attempts_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("attempts")
}
pub fn tasks_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tasks")
}
pub fn record_path(data_dir: &Path, name: &str) -> PathBuf {
    attempts_dir(data_dir).join(format!("{name}.json"))
}

/// `tasks/<name>.done`: the tombstone of an attempt whose working directory was cleaned up.
pub fn tombstone_path(data_dir: &Path, name: &str) -> PathBuf {
    tasks_dir(data_dir).join(format!("{name}{TOMBSTONE_SUFFIX}"))
}
pub const TOMBSTONE_SUFFIX: &str = ".done";
/// How long a tombstone guards against a stale assignment.
pub const TOMBSTONE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether the attempt `name` ran here and its working directory was cleaned up since.
pub fn has_tombstone(data_dir: &Path, name: &str) -> bool {
    tombstone_path(data_dir, name).exists()
}

/// The attempt `name` is over for this worker (final status acknowledged or refused): removes its record and,
/// unless `keep_dir`, its working directory `workdir`, leaving a tombstone first (see the module doc). A `workdir`
/// outside `tasks/` (a record edited by hand) is never removed.
pub fn end_attempt_dir(data_dir: &Path, name: &str, workdir: &Path, keep_dir: bool) -> Result<(), WorkerError> {
    let remove_dir = !keep_dir && workdir.parent() == Some(tasks_dir(data_dir).as_path());
    if remove_dir {
        let t = tombstone_path(data_dir, name);
        write_atomic(&t, b"").map_err(|e| WorkerError::io("write", &t, e))?;
    }
    delete_record(data_dir, name)?;
    if remove_dir {
        match std::fs::remove_dir_all(workdir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WorkerError::io("remove", workdir, e)),
        }
    }
    Ok(())
}

/// Housekeeping of `tasks/`: removes tombstones older than `ttl` (by modification time, at `now`), and working
/// directories left behind by a crash during [`end_attempt_dir`] (a tombstone and no record). Returns how many
/// entries it removed; failures on single entries are logged and skipped.
pub fn sweep_tasks_dir(data_dir: &Path, now: std::time::SystemTime, ttl: std::time::Duration) -> usize {
    let dir = tasks_dir(data_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let res = if file_name.ends_with(TOMBSTONE_SUFFIX) {
            let modified = entry.metadata().and_then(|m| m.modified());
            if !modified.is_ok_and(|m| now.duration_since(m).is_ok_and(|age| age > ttl)) {
                continue;
            }
            std::fs::remove_file(&path)
        } else if path.is_dir() && has_tombstone(data_dir, &file_name) && !record_path(data_dir, &file_name).exists() {
            std::fs::remove_dir_all(&path)
        } else {
            continue;
        };
        match res {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
        }
    }
    removed
}

/// Files inside an attempt's working directory.
pub const EXIT_FILE: &str = "exit";
pub const STDOUT_FILE: &str = "stdout.log";
pub const STDERR_FILE: &str = "stderr.log";
pub const SHIM_PID_FILE: &str = "shim.pid";
pub const SHIM_LOG_FILE: &str = "shim.log";
pub const LOG_OFFSETS_FILE: &str = "log_offsets.json";

/// Writes `bytes` to `path` atomically: a sibling temp file, fsync, rename, fsync of the directory.
/// Readers see either the old content or the new one, never a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Persist the rename itself; failure here is not worth failing the write for.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn write_record(data_dir: &Path, rec: &AttemptRecord) -> Result<(), WorkerError> {
    let dir = attempts_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| WorkerError::io("create", &dir, e))?;
    let path = record_path(data_dir, &rec.name());
    let bytes = serde_json::to_vec_pretty(rec).map_err(|e| WorkerError::Json { path: path.clone(), source: e })?;
    write_atomic(&path, &bytes).map_err(|e| WorkerError::io("write", &path, e))
}

pub fn read_record(path: &Path) -> Result<AttemptRecord, WorkerError> {
    let bytes = std::fs::read(path).map_err(|e| WorkerError::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| WorkerError::Json { path: path.to_path_buf(), source: e })
}

/// Removes a record; a missing one is fine.
pub fn delete_record(data_dir: &Path, name: &str) -> Result<(), WorkerError> {
    let path = record_path(data_dir, name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WorkerError::io("remove", &path, e)),
    }
}

/// All readable records; unreadable ones are logged and skipped (they are left on disk for a human).
pub fn list_records(data_dir: &Path) -> Result<Vec<AttemptRecord>, WorkerError> {
    let dir = attempts_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(WorkerError::io("read dir", &dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WorkerError::io("read dir", &dir, e))?;
        let path = entry.path();
        let is_record = path.extension().is_some_and(|x| x == "json")
            && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !is_record {
            continue;
        }
        match read_record(&path) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("skipping unreadable attempt record: {e}"),
        }
    }
    out.sort_by_key(|r| r.name());
    Ok(out)
}

/// Reads `workdir/exit`: None while the task runs. The shim writes it atomically, so a present file is
/// complete; content that does not parse is reported as exit code -1.
pub fn read_exit_code(workdir: &Path) -> std::io::Result<Option<i32>> {
    match std::fs::read_to_string(workdir.join(EXIT_FILE)) {
        Ok(s) => Ok(Some(s.trim().parse().unwrap_or(-1))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The pid the shim wrote for itself, used when the record has none (worker died between spawn and
/// the record update).
pub fn read_shim_pid_file(workdir: &Path) -> Option<u32> {
    std::fs::read_to_string(workdir.join(SHIM_PID_FILE)).ok()?.trim().parse().ok()
}

/// What to do with a record found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconcile {
    /// The task finished while the worker was away: report this exit code.
    Finished(i32),
    /// The shim still runs: keep supervising it (pid).
    Adopt(u32),
    /// No exit status and no process: report FAILED.
    Gone,
}

/// Pure reconciliation decision: an exit status always wins (the shim writes it before exiting), then a
/// live shim, otherwise the task is gone.
pub fn reconcile(exit_code: Option<i32>, live_shim_pid: Option<u32>) -> Reconcile {
    match (exit_code, live_shim_pid) {
        (Some(code), _) => Reconcile::Finished(code),
        (None, Some(pid)) => Reconcile::Adopt(pid),
        (None, None) => Reconcile::Gone,
    }
}

/// How an attempt ended, as seen by the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `exit` file content: exit code, or 128+N for signal N.
    Exited(i32),
    /// The process vanished without an exit status.
    Gone(String),
    /// The task could not be started.
    StartFailed(String),
}

/// The final status to report for an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalStatus {
    pub state: TaskState,
    pub exit_code: i32,
    pub message: String,
}

/// Human wording of an exit code: codes 129..=192 are what the shim writes for a signal.
pub fn describe_exit(code: i32) -> String {
    if (129..=192).contains(&code) {
        format!("killed by signal {}", code - 128)
    } else {
        format!("exited with code {code}")
    }
}

/// Pure mapping of an outcome (and the worker's own reason for stopping it, if any) to the final
/// report. `detail` (e.g. the shim's error line for 126/127) is appended to failure messages.
pub fn final_status(outcome: &Outcome, stop: Option<&StopReason>, detail: Option<&str>) -> FinalStatus {
    let (exit_code, base) = match outcome {
        Outcome::Exited(code) => (*code, describe_exit(*code)),
        Outcome::Gone(msg) => (-1, msg.clone()),
        Outcome::StartFailed(msg) => (127, format!("failed to start: {msg}")),
    };
    let (state, message) = match (stop, outcome) {
        (Some(StopReason::Timeout { secs }), _) => (TaskState::Failed, format!("timed out after {secs}s")),
        (Some(StopReason::Cancelled), _) => (TaskState::Failed, format!("stopped on scheduler request ({base})")),
        (Some(StopReason::Refused), _) => (TaskState::Failed, format!("stopped: refused by scheduler ({base})")),
        (Some(StopReason::Unhealthy { why }), _) => (TaskState::Failed, format!("{why}: killed ({base})")),
        (None, Outcome::Exited(0)) => (TaskState::Succeeded, base),
        (None, _) => match detail.map(str::trim).filter(|d| !d.is_empty()) {
            Some(d) => (TaskState::Failed, format!("{base}: {d}")),
            None => (TaskState::Failed, base),
        },
    };
    FinalStatus { state, exit_code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(dir: &Path) -> AttemptRecord {
        AttemptRecord {
            job_id: "job-1".into(),
            rank: 2,
            attempt: 3,
            fencing_token: 42,
            world_size: 4,
            shim_pid: Some(1234),
            workdir: dir.join("tasks/job-1-r2-a3"),
            started_at_ms: 5,
            timeout_secs: 0,
            running_acked: false,
            stop: Some(StopReason::Timeout { secs: 9 }),
            start_error: None,
            serve_replica: false,
        }
    }

    #[test]
    fn record_roundtrip_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let r = rec(dir.path());
        assert_eq!(r.name(), "job-1-r2-a3");
        write_record(dir.path(), &r).unwrap();
        let all = list_records(dir.path()).unwrap();
        assert_eq!(all, vec![r.clone()]);
        assert_eq!(read_record(&record_path(dir.path(), &r.name())).unwrap(), r);
        // Overwrite keeps one record.
        let mut r2 = r.clone();
        r2.running_acked = true;
        write_record(dir.path(), &r2).unwrap();
        assert_eq!(list_records(dir.path()).unwrap(), vec![r2]);
        delete_record(dir.path(), &r.name()).unwrap();
        delete_record(dir.path(), &r.name()).unwrap();
        assert!(list_records(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn list_skips_garbage_and_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_records(dir.path()).unwrap().is_empty());
        std::fs::create_dir_all(attempts_dir(dir.path())).unwrap();
        std::fs::write(attempts_dir(dir.path()).join("bad.json"), b"{").unwrap();
        std::fs::write(attempts_dir(dir.path()).join(".x.json.tmp1"), b"{}").unwrap();
        assert!(list_records(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn names_are_file_safe() {
        let a = AttemptRef { job_id: "a/b c".into(), rank: 0, attempt: 1, fencing_token: 7 };
        assert_eq!(attempt_name(&a), "a_b_c-r0-a1");
        let a = AttemptRef { job_id: "..".into(), rank: 0, attempt: 1, fencing_token: 7 };
        assert_eq!(attempt_name(&a), "_..-r0-a1");
    }

    #[test]
    fn ended_attempts_leave_a_tombstone_and_sweeping_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let r = rec(d);
        std::fs::create_dir_all(r.workdir.join("sub")).unwrap();
        std::fs::write(r.workdir.join(STDOUT_FILE), b"x").unwrap();
        write_record(d, &r).unwrap();
        end_attempt_dir(d, &r.name(), &r.workdir, false).unwrap();
        assert!(!r.workdir.exists() && has_tombstone(d, &r.name()));
        assert!(list_records(d).unwrap().is_empty());
        // Again (a retried end) is fine.
        end_attempt_dir(d, &r.name(), &r.workdir, false).unwrap();

        // Kept for debugging: record gone, directory stays (it is the guard), no tombstone.
        let mut k = rec(d);
        k.attempt = 4;
        k.workdir = tasks_dir(d).join(k.name());
        std::fs::create_dir_all(&k.workdir).unwrap();
        write_record(d, &k).unwrap();
        end_attempt_dir(d, &k.name(), &k.workdir, true).unwrap();
        assert!(k.workdir.exists() && !has_tombstone(d, &k.name()) && list_records(d).unwrap().is_empty());

        // A directory outside tasks/ is never removed.
        let outside = d.join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        end_attempt_dir(d, "x-r0-a1", &outside, false).unwrap();
        assert!(outside.exists());

        // A crash between tombstone and removal: the sweep removes the directory, unless a record still exists.
        std::fs::create_dir_all(&r.workdir).unwrap();
        let mut pending = rec(d);
        pending.attempt = 5;
        pending.workdir = tasks_dir(d).join(pending.name());
        std::fs::create_dir_all(&pending.workdir).unwrap();
        write_atomic(&tombstone_path(d, &pending.name()), b"").unwrap();
        write_record(d, &pending).unwrap();
        let now = std::time::SystemTime::now();
        assert_eq!(sweep_tasks_dir(d, now, TOMBSTONE_TTL), 1);
        assert!(!r.workdir.exists() && pending.workdir.exists() && k.workdir.exists());
        // Tombstones go after their time to live.
        assert_eq!(sweep_tasks_dir(d, now + TOMBSTONE_TTL * 2, TOMBSTONE_TTL), 2);
        assert!(!has_tombstone(d, &r.name()) && !has_tombstone(d, &pending.name()));
    }

    #[test]
    fn reconciliation_decisions() {
        assert_eq!(reconcile(Some(0), Some(10)), Reconcile::Finished(0));
        assert_eq!(reconcile(Some(3), None), Reconcile::Finished(3));
        assert_eq!(reconcile(None, Some(10)), Reconcile::Adopt(10));
        assert_eq!(reconcile(None, None), Reconcile::Gone);
    }

    #[test]
    fn exit_file_reading() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_exit_code(dir.path()).unwrap(), None);
        write_atomic(&dir.path().join(EXIT_FILE), b"3\n").unwrap();
        assert_eq!(read_exit_code(dir.path()).unwrap(), Some(3));
        std::fs::write(dir.path().join(EXIT_FILE), b"junk").unwrap();
        assert_eq!(read_exit_code(dir.path()).unwrap(), Some(-1));
    }

    #[test]
    fn final_status_mapping() {
        let s = final_status(&Outcome::Exited(0), None, None);
        assert_eq!(s.state, TaskState::Succeeded);
        let s = final_status(&Outcome::Exited(3), None, None);
        assert_eq!((s.state, s.exit_code, s.message.as_str()), (TaskState::Failed, 3, "exited with code 3"));
        let s = final_status(&Outcome::Exited(137), None, None);
        assert_eq!(s.message, "killed by signal 9");
        let s = final_status(&Outcome::Exited(143), Some(&StopReason::Timeout { secs: 2 }), None);
        assert_eq!((s.state, s.exit_code, s.message.as_str()), (TaskState::Failed, 143, "timed out after 2s"));
        let s = final_status(&Outcome::Exited(0), Some(&StopReason::Cancelled), None);
        assert_eq!(s.state, TaskState::Failed);
        let s = final_status(&Outcome::Exited(127), None, Some("cannot run `nope`: No such file\n"));
        assert_eq!(s.message, "exited with code 127: cannot run `nope`: No such file");
        let s = final_status(&Outcome::Gone("worker restarted and the task process is gone".into()), None, None);
        assert_eq!((s.state, s.exit_code), (TaskState::Failed, -1));
        let s = final_status(&Outcome::StartFailed("no shim".into()), None, None);
        assert_eq!((s.state, s.exit_code), (TaskState::Failed, 127));
    }
}
