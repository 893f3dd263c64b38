//! The jobs domain: jobs, their task attempts, and workers (tables `Jobs` and `Workers`; the job-sequence and
//! fencing-token counters live in the meta table), plus the replica endpoints serving attempts advertise.
//!
//! Invariants (checked by the tests below and relied on by placement and the worker streams):
//! - A task's current attempt is the last element of `Task.attempts`; it holds resources on its worker exactly
//!   while its state is ASSIGNED or RUNNING.
//! - Fencing tokens only grow. A report is accepted only for the current attempt with the same token and worker,
//!   while that attempt is active; anything else is refused as stale ([`JobsState::check_current`], which every
//!   other domain uses for its own worker reports).
//! - A job is a gang: when one task fails or its worker is lost, every other active task of the job is
//!   cancelled and the whole gang is requeued (while retries remain) or the job fails.
//! - `pending` and `running` index exactly the PENDING and RUNNING jobs (kept in step by `reindex` after every
//!   apply); placement reads only these.
//! - An endpoint is recorded on the reporting attempt only, fenced like a status report: a replica from an older
//!   attempt (or on a lost worker) cannot advertise itself.
//! - Retention ([`JobsState::compact`], command `CompactJobs`): only finished jobs (succeeded, failed, cancelled)
//!   are ever removed, with their tasks, attempts and idempotency key; unknown and unfinished ids are skipped, so a
//!   replayed or duplicated command changes nothing. Job ids are never reused (`next_job_seq` only grows), so a
//!   removed id stays unknown. A submission retried with the request id of a removed job makes a new job: request
//!   ids are remembered for as long as their job is retained. Runs and models (registry domain) are not touched.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{
    Attempt, AttemptRef, CommandResultV1, Job, JobKind, JobState, JoinRingRequest, JoinRingResponse,
    ReportEndpointRequest, Resources, ServeSpec, StateSnapshotV1, SubmitResponse, Task, TaskState, TaskTransitionV1,
    Worker, WorkerState, job_spec::Payload,
};
use prost::Message;

use super::{Dirty, Refusal, RowKind, Rows, Table, bad, refuse};

/// Longest `host:port` a replica may report.
const MAX_ENDPOINT: usize = 256;

const JOB_ROWS: RowKind = RowKind { table: Table::Jobs, prefix: "", snapshot_field: 3 };
const WORKER_ROWS: RowKind = RowKind { table: Table::Workers, prefix: "", snapshot_field: 4 };

/// Jobs, workers and their indexes.
#[derive(Debug, Default, Clone)]
pub struct JobsState {
    pub by_id: BTreeMap<String, Job>,
    pub workers: BTreeMap<String, Worker>,
    /// request_id -> job id: makes retried submissions idempotent.
    pub request_ids: HashMap<String, String>,
    pub next_job_seq: u64,
    pub next_fencing_token: u64,
    /// Index: PENDING jobs by submission seq.
    pub pending: BTreeMap<u64, String>,
    /// Index: ids of RUNNING jobs (the only ones holding resources).
    pub running: BTreeSet<String>,
    /// Index: each project's jobs (`queries::job_project`'s name) by submission seq: lists page through it newest
    /// first (`queries::list_jobs`), and its length is the project's count.
    pub by_project: HashMap<String, BTreeMap<u64, String>>,
}

/// The key a submission's `request_id` is remembered under: per project (`:` is in no project name), so one
/// project's keys never name, nor reveal, another project's jobs, nor the keys the scheduler uses itself for
/// another project's sweep trials.
pub fn idempotency_key(project: &str, request_id: &str) -> String {
    format!("{}:{request_id}", aidos_api::auth::project_or_default(project))
}

fn job_key(j: &Job) -> String {
    idempotency_key(j.spec.as_ref().map_or("", |s| s.project.as_str()), &j.request_id)
}

pub fn job_id_for_seq(seq: u64) -> String {
    format!("job-{seq}")
}

pub fn add(a: &mut Resources, b: &Resources) {
    a.cpu_millis += b.cpu_millis;
    a.memory_bytes += b.memory_bytes;
    a.gpus += b.gpus;
}

impl Rows for JobsState {
    const ROWS: &'static [RowKind] = &[JOB_ROWS, WORKER_ROWS];

    fn row(&self, table: Table, key: &str) -> Option<Vec<u8>> {
        match table {
            Table::Jobs => self.by_id.get(key).map(|j| j.encode_to_vec()),
            Table::Workers => self.workers.get(key).map(|w| w.encode_to_vec()),
            Table::Rows => None,
        }
    }

    fn load_row(&mut self, table: Table, _key: &str, bytes: &[u8]) -> Result<(), prost::DecodeError> {
        match table {
            Table::Jobs => self.insert_job(Job::decode(bytes)?),
            Table::Workers => {
                let w = Worker::decode(bytes)?;
                self.workers.insert(w.id.clone(), w);
            }
            Table::Rows => {}
        }
        Ok(())
    }

    fn keys(&self) -> Vec<(Table, String)> {
        let jobs = self.by_id.keys().map(|k| (Table::Jobs, k.clone()));
        jobs.chain(self.workers.keys().map(|k| (Table::Workers, k.clone()))).collect()
    }

    fn snapshot(&self, out: &mut StateSnapshotV1) {
        out.jobs = self.by_id.values().cloned().collect();
        out.workers = self.workers.values().cloned().collect();
        out.next_job_seq = self.next_job_seq;
        out.next_fencing_token = self.next_fencing_token;
    }

    fn restore(&mut self, s: &mut StateSnapshotV1) {
        self.next_job_seq = s.next_job_seq;
        self.next_fencing_token = s.next_fencing_token;
        for j in std::mem::take(&mut s.jobs) {
            self.insert_job(j);
        }
        for w in std::mem::take(&mut s.workers) {
            self.workers.insert(w.id.clone(), w);
        }
    }
}

impl JobsState {
    /// Inserts a job loaded from storage, keeping the indexes in step.
    pub fn insert_job(&mut self, j: Job) {
        if !j.request_id.is_empty() {
            self.request_ids.insert(job_key(&j), j.id.clone());
        }
        let id = j.id.clone();
        let (seq, project) = (j.seq, crate::queries::job_project(&j).to_string());
        if let Some(old) = self.by_id.insert(id.clone(), j) {
            // A job read twice (a row and a snapshot): indexed once.
            self.unindex_project(&old);
        }
        self.by_project.entry(project).or_default().insert(seq, id.clone());
        self.reindex(&id);
    }

    fn unindex_project(&mut self, j: &Job) {
        let project = crate::queries::job_project(j);
        if let Some(jobs) = self.by_project.get_mut(project) {
            if jobs.get(&j.seq) == Some(&j.id) {
                jobs.remove(&j.seq);
            }
            if jobs.is_empty() {
                self.by_project.remove(project);
            }
        }
    }

    /// Puts a job in the index of its current state (and out of the others).
    fn reindex(&mut self, id: &str) {
        let Some((state, seq)) = self.by_id.get(id).map(|j| (j.state, j.seq)) else { return };
        self.pending.remove(&seq);
        self.running.remove(id);
        if state == JobState::Pending as i32 {
            self.pending.insert(seq, id.to_string());
        } else if state == JobState::Running as i32 {
            self.running.insert(id.to_string());
        }
    }

    /// Jobs in the RUNNING state.
    pub fn running_jobs(&self) -> impl Iterator<Item = &Job> {
        self.running.iter().filter_map(|id| self.by_id.get(id))
    }

    /// Jobs in the PENDING state submitted after `after_seq`, oldest first.
    pub fn pending_jobs(&self, after_seq: u64) -> impl Iterator<Item = &Job> {
        self.pending.range(after_seq + 1..).filter_map(|(_, id)| self.by_id.get(id))
    }

    /// Jobs that are PENDING or RUNNING, in submission order.
    pub fn running_or_pending(&self) -> impl Iterator<Item = &Job> {
        let mut ids: Vec<(u64, &str)> = self
            .pending
            .iter()
            .map(|(seq, id)| (*seq, id.as_str()))
            .chain(self.running.iter().filter_map(|id| self.by_id.get(id).map(|j| (j.seq, id.as_str()))))
            .collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|(_, id)| self.by_id.get(id))
    }

    /// Applies one of the jobs domain's commands (`None`: not one of them), keeping the indexes in step.
    pub fn apply(&mut self, cmd: &Command, now: i64, dirty: &mut Dirty) -> Option<Result<CommandResultV1, Refusal>> {
        let first_dirty = dirty.rows.len();
        let res = self.apply_inner(cmd, now, dirty)?;
        for i in first_dirty..dirty.rows.len() {
            if dirty.rows[i].0 == Table::Jobs {
                let id = dirty.rows[i].1.clone();
                self.reindex(&id);
            }
        }
        Some(res)
    }

    fn apply_inner(&mut self, cmd: &Command, now: i64, dirty: &mut Dirty) -> Option<Result<CommandResultV1, Refusal>> {
        Some(match cmd {
            Command::SubmitJobs(s) => Ok(self.submit(&s.requests, now, dirty)),
            Command::CancelJob(c) => self.cancel(&c.job_id, &c.reason, now, dirty).map(job_result),
            Command::Assign(a) => {
                for p in &a.placements {
                    // A placement that no longer fits (state moved since it was computed) is skipped.
                    let _ = self.assign(&p.job_id, &p.workers, now, dirty);
                }
                Ok(CommandResultV1::default())
            }
            Command::TaskTransition(t) => self.transition(t, now, dirty).map(job_result),
            Command::RegisterWorker(r) => match &r.worker {
                Some(w) => {
                    self.register(w.clone(), now, dirty);
                    Ok(CommandResultV1::default())
                }
                None => Err(refuse(tonic::Code::InvalidArgument, "register_worker: worker missing")),
            },
            Command::WorkerLost(l) => {
                self.worker_lost(&l.worker_id, &l.reason, now, dirty);
                Ok(CommandResultV1::default())
            }
            Command::SetJobReasons(rs) => {
                for r in &rs.reasons {
                    if let Some(j) = self.by_id.get_mut(&r.job_id)
                        && j.state == JobState::Pending as i32
                        && j.reason != r.reason
                    {
                        j.reason = r.reason.clone();
                        dirty.mark(Table::Jobs, j.id.clone());
                    }
                }
                Ok(CommandResultV1::default())
            }
            Command::ReportEndpoint(r) => self.report_endpoint(r, now, dirty),
            Command::JoinRing(r) => self.join_ring(r, dirty),
            Command::CompactJobs(c) => {
                self.compact(&c.job_ids, dirty);
                Ok(CommandResultV1::default())
            }
            _ => return None,
        })
    }

    fn submit(&mut self, reqs: &[aidos_api::v1::SubmitRequest], now: i64, dirty: &mut Dirty) -> CommandResultV1 {
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            let project = r.spec.as_ref().map_or("", |s| s.project.as_str());
            if !r.request_id.is_empty()
                && let Some(id) = self.request_ids.get(&idempotency_key(project, &r.request_id))
            {
                out.push(SubmitResponse { job_id: id.clone(), duplicate: true });
                continue;
            }
            self.next_job_seq += 1;
            let seq = self.next_job_seq;
            let id = job_id_for_seq(seq);
            let spec = r.spec.clone().unwrap_or_default();
            let replicas = spec.replicas.max(1);
            let tasks =
                (0..replicas).map(|rank| Task { rank, state: TaskState::Pending as i32, attempts: vec![] }).collect();
            let job = Job {
                id: id.clone(),
                spec: Some(spec),
                state: JobState::Pending as i32,
                reason: String::new(),
                created_at_ms: now,
                updated_at_ms: now,
                tasks,
                attempt: 0,
                seq,
                request_id: r.request_id.clone(),
            };
            self.insert_job(job);
            dirty.mark(Table::Jobs, id.clone());
            out.push(SubmitResponse { job_id: id, duplicate: false });
        }
        CommandResultV1 { submitted: out, ..Default::default() }
    }

    fn job_mut(&mut self, id: &str) -> Result<&mut Job, Refusal> {
        self.by_id.get_mut(id).ok_or_else(|| refuse(tonic::Code::NotFound, format!("job {id} not found")))
    }

    fn cancel(&mut self, id: &str, reason: &str, now: i64, dirty: &mut Dirty) -> Result<Job, Refusal> {
        let reason = if reason.is_empty() { "cancelled by user" } else { reason };
        let job = self.job_mut(id)?;
        if JobState::try_from(job.state).is_ok_and(|s| s.is_terminal()) {
            return Ok(job.clone());
        }
        for t in &mut job.tasks {
            if let Some(a) = t.attempts.last_mut()
                && TaskState::try_from(a.state).is_ok_and(|s| s.is_active())
            {
                a.state = TaskState::Cancelled as i32;
                a.finished_at_ms = now;
                a.message = format!("job cancelled: {reason}");
            }
            if !TaskState::try_from(t.state).is_ok_and(|s| s == TaskState::Succeeded) {
                t.state = TaskState::Cancelled as i32;
            }
        }
        job.state = JobState::Cancelled as i32;
        job.reason = reason.into();
        job.updated_at_ms = now;
        dirty.mark(Table::Jobs, id.to_string());
        Ok(job.clone())
    }

    /// Resources in use on each worker: the sum over active attempts.
    pub fn allocated(&self) -> HashMap<String, Resources> {
        self.usage().into_iter().map(|(w, (r, _))| (w, r)).collect()
    }

    /// Resources in use on each worker and its active attempts (the task slots they hold).
    pub fn usage(&self) -> HashMap<String, (Resources, u32)> {
        let mut m: HashMap<String, (Resources, u32)> = HashMap::new();
        for j in self.running_jobs() {
            let r = j.spec.as_ref().and_then(|s| s.resources).unwrap_or_default();
            for t in &j.tasks {
                if let Some(a) = t.attempts.last()
                    && TaskState::try_from(a.state).is_ok_and(|s| s.is_active())
                {
                    let u = m.entry(a.worker_id.clone()).or_default();
                    add(&mut u.0, &r);
                    u.1 += 1;
                }
            }
        }
        m
    }

    fn assign(&mut self, job_id: &str, workers: &[String], now: i64, dirty: &mut Dirty) -> Result<(), Refusal> {
        let job = self.by_id.get(job_id).ok_or_else(|| refuse(tonic::Code::NotFound, "job gone"))?;
        let k = workers.len();
        if job.state != JobState::Pending as i32 || k > job.tasks.len() || k < min_ranks(job) as usize || k == 0 {
            return Err(refuse(tonic::Code::FailedPrecondition, "job not pending or wrong gang size"));
        }
        // Re-check capacity and task slots deterministically: the placement was computed on an older view (a new
        // leader may place before it applied its predecessor's last assignments).
        let need = job.spec.as_ref().and_then(|s| s.resources).unwrap_or_default();
        let mut usage = self.usage();
        for w in workers {
            let worker = self.workers.get(w).ok_or_else(|| refuse(tonic::Code::NotFound, "worker gone"))?;
            if worker.state != WorkerState::Ready as i32 {
                return Err(refuse(tonic::Code::FailedPrecondition, "worker not ready"));
            }
            let (a, tasks) = usage.entry(w.clone()).or_default();
            add(a, &need);
            *tasks += 1;
            let cap = worker.capacity.unwrap_or_default();
            if a.cpu_millis > cap.cpu_millis || a.memory_bytes > cap.memory_bytes || a.gpus > cap.gpus {
                return Err(refuse(tonic::Code::FailedPrecondition, "placement no longer fits"));
            }
            if worker.max_tasks > 0 && *tasks > worker.max_tasks {
                return Err(refuse(tonic::Code::FailedPrecondition, "the worker has no task slot left"));
            }
        }
        let mut token = self.next_fencing_token;
        let job = self.by_id.get_mut(job_id).expect("checked above");
        job.attempt += 1;
        let n = job.tasks.len();
        for (t, w) in job.tasks.iter_mut().zip(workers) {
            token += 1;
            t.state = TaskState::Assigned as i32;
            t.attempts.push(Attempt {
                attempt: job.attempt,
                fencing_token: token,
                worker_id: w.clone(),
                state: TaskState::Assigned as i32,
                assigned_at_ms: now,
                ..Default::default()
            });
        }
        self.next_fencing_token = token;
        job.state = JobState::Running as i32;
        job.reason = if k < n {
            format!("elastic: generation {} runs {k} of {n} ranks (the cluster holds no more now)", job.attempt)
        } else {
            String::new()
        };
        job.updated_at_ms = now;
        dirty.mark(Table::Jobs, job_id.to_string());
        Ok(())
    }

    /// Checks that `r` names the current, active attempt of its task on `worker_id`.
    pub fn check_current(&self, worker_id: &str, r: &AttemptRef) -> Result<(&Job, &Attempt), Refusal> {
        let job = self
            .by_id
            .get(&r.job_id)
            .ok_or_else(|| refuse(tonic::Code::NotFound, format!("job {} not found", r.job_id)))?;
        let task = job
            .tasks
            .get(r.rank as usize)
            .ok_or_else(|| refuse(tonic::Code::NotFound, format!("job {} has no rank {}", r.job_id, r.rank)))?;
        let cur = task.attempts.last().ok_or_else(|| {
            refuse(tonic::Code::FailedPrecondition, format!("stale report for {}: task was never placed", r.display()))
        })?;
        let active = TaskState::try_from(cur.state).is_ok_and(|s| s.is_active());
        if cur.attempt != r.attempt || cur.fencing_token != r.fencing_token || cur.worker_id != worker_id || !active {
            return Err(refuse(
                tonic::Code::FailedPrecondition,
                format!(
                    "stale report refused for {} (token {}) from worker {}: current is attempt {} token {} on {} ({})",
                    r.display(),
                    r.fencing_token,
                    worker_id,
                    cur.attempt,
                    cur.fencing_token,
                    cur.worker_id,
                    TaskState::try_from(cur.state).map(|s| s.as_str_name()).unwrap_or("?"),
                ),
            ));
        }
        Ok((job, cur))
    }

    /// The attempt a final report with a log blob may still record it on although the report is otherwise stale:
    /// `r` names it exactly (worker, attempt, token), the cluster cancelled it (its worker stopped it on request,
    /// which is how such an attempt ends) and it has no log blob yet. See `crate::task_logs`.
    pub fn late_log_target(&self, worker_id: &str, r: &AttemptRef, t_state: i32, log_blob: &str) -> Option<&Attempt> {
        let final_report = matches!(TaskState::try_from(t_state), Ok(TaskState::Succeeded | TaskState::Failed));
        if !final_report || log_blob.is_empty() {
            return None;
        }
        let task = self.by_id.get(&r.job_id)?.tasks.get(r.rank as usize)?;
        task.attempts.iter().find(|a| {
            a.attempt == r.attempt
                && a.fencing_token == r.fencing_token
                && a.worker_id == worker_id
                && a.state == TaskState::Cancelled as i32
                && a.log_blob.is_empty()
        })
    }

    fn transition(&mut self, t: &TaskTransitionV1, now: i64, dirty: &mut Dirty) -> Result<Job, Refusal> {
        let r = t.attempt.clone().unwrap_or_default();
        if let Err(stale) = self.check_current(&t.worker_id, &r) {
            // Only the log blob of a cancelled attempt is still recorded; its state stays.
            self.late_log_target(&t.worker_id, &r, t.state, &t.log_blob).ok_or(stale)?;
            let job = self.by_id.get_mut(&r.job_id).expect("checked");
            let a = job.tasks[r.rank as usize]
                .attempts
                .iter_mut()
                .find(|a| a.attempt == r.attempt && a.fencing_token == r.fencing_token)
                .expect("checked");
            a.log_blob = t.log_blob.clone();
            dirty.mark(Table::Jobs, r.job_id.clone());
            return Ok(job.clone());
        }
        let to = TaskState::try_from(t.state).unwrap_or(TaskState::Unspecified);
        let job = self.by_id.get_mut(&r.job_id).expect("checked");
        let task = &mut job.tasks[r.rank as usize];
        let a = task.attempts.last_mut().expect("checked");
        match to {
            TaskState::Running => {
                if a.state == TaskState::Assigned as i32 {
                    a.state = TaskState::Running as i32;
                    a.started_at_ms = now;
                    task.state = TaskState::Running as i32;
                }
            }
            TaskState::Succeeded | TaskState::Failed => {
                a.state = to as i32;
                a.exit_code = t.exit_code;
                a.finished_at_ms = now;
                a.message = t.message.clone();
                a.log_blob = t.log_blob.clone();
                task.state = to as i32;
            }
            other => {
                return Err(refuse(
                    tonic::Code::InvalidArgument,
                    format!("state: a worker may report RUNNING, SUCCEEDED or FAILED, not {}", other.as_str_name()),
                ));
            }
        }
        match to {
            TaskState::Succeeded if generation(job).all(|(_, a)| a.state == TaskState::Succeeded as i32) => {
                job.state = JobState::Succeeded as i32;
                job.reason.clear();
            }
            TaskState::Failed => {
                let why = if t.message.is_empty() {
                    format!("rank {} failed with exit code {}", r.rank, t.exit_code)
                } else {
                    format!("rank {} failed: {}", r.rank, t.message)
                };
                gang_fault(job, &why, now);
            }
            _ => {}
        }
        job.updated_at_ms = now;
        dirty.mark(Table::Jobs, r.job_id.clone());
        Ok(job.clone())
    }

    fn register(&mut self, mut w: Worker, now: i64, dirty: &mut Dirty) {
        let registered = self.workers.get(&w.id).map(|o| o.registered_at_ms).unwrap_or(now);
        w.registered_at_ms = registered;
        w.state = WorkerState::Ready as i32;
        w.state_changed_at_ms = now;
        w.allocated = None;
        dirty.mark(Table::Workers, w.id.clone());
        self.workers.insert(w.id.clone(), w);
    }

    fn worker_lost(&mut self, worker_id: &str, reason: &str, now: i64, dirty: &mut Dirty) {
        let Some(w) = self.workers.get_mut(worker_id) else {
            return;
        };
        if w.state == WorkerState::Lost as i32 {
            return;
        }
        w.state = WorkerState::Lost as i32;
        w.state_changed_at_ms = now;
        dirty.mark(Table::Workers, worker_id.to_string());
        let running: Vec<String> = self.running.iter().cloned().collect();
        for id in running {
            let Some(job) = self.by_id.get_mut(&id) else {
                continue;
            };
            let mut hit = None;
            for t in &mut job.tasks {
                if let Some(a) = t.attempts.last_mut()
                    && a.worker_id == worker_id
                    && TaskState::try_from(a.state).is_ok_and(|s| s.is_active())
                {
                    a.state = TaskState::Lost as i32;
                    a.finished_at_ms = now;
                    a.message = format!("worker {worker_id} lost: {reason}");
                    t.state = TaskState::Lost as i32;
                    hit.get_or_insert(t.rank);
                }
            }
            if let Some(rank) = hit {
                gang_fault(job, &format!("rank {rank}: worker {worker_id} lost ({reason})"), now);
                job.updated_at_ms = now;
                dirty.mark(Table::Jobs, job.id.clone());
            }
        }
    }
}

impl JobsState {
    /// Removes the finished jobs among `ids` (see the module docs); returns how many were removed.
    pub fn compact(&mut self, ids: &[String], dirty: &mut Dirty) -> usize {
        let mut removed = 0;
        for id in ids {
            let finished =
                self.by_id.get(id).is_some_and(|j| JobState::try_from(j.state).is_ok_and(|s| s.is_terminal()));
            if !finished {
                continue;
            }
            let Some(j) = self.by_id.remove(id) else { continue };
            if !j.request_id.is_empty() && self.request_ids.get(&job_key(&j)) == Some(&j.id) {
                self.request_ids.remove(&job_key(&j));
            }
            // A finished job is in neither index; kept in step all the same.
            if self.pending.get(&j.seq) == Some(&j.id) {
                self.pending.remove(&j.seq);
            }
            self.running.remove(id);
            self.unindex_project(&j);
            dirty.mark(Table::Jobs, id.clone());
            removed += 1;
        }
        removed
    }

    /// A serving replica advertises where it answers: recorded on its current attempt only.
    fn report_endpoint(
        &mut self,
        r: &ReportEndpointRequest,
        now: i64,
        dirty: &mut Dirty,
    ) -> Result<CommandResultV1, Refusal> {
        let a = r.attempt.clone().ok_or_else(|| bad("attempt", "missing"))?;
        for (f, v) in [("http", &r.http), ("grpc", &r.grpc)] {
            check_host_port(f, v)?;
        }
        let (job, _) = self.check_current(&r.worker_id, &a)?;
        if serve_spec(job).is_none() {
            return Err(bad("attempt", format!("job {} is not a serve replica", a.job_id)));
        }
        let job = self.by_id.get_mut(&a.job_id).expect("checked");
        let at = job.tasks[a.rank as usize].attempts.last_mut().expect("checked");
        at.endpoint_http = r.http.clone();
        at.endpoint_grpc = r.grpc.clone();
        at.pid = r.pid;
        at.ready_at_ms = now;
        dirty.mark(Table::Jobs, a.job_id.clone());
        Ok(CommandResultV1::default())
    }
}

/// Longest ring signature (a model's parameter shapes) a rank may publish.
pub const MAX_RING_SIGNATURE: usize = 64 << 10;

impl JobsState {
    /// A data-parallel rank publishes its ring address and parameter signature on its current attempt (fenced
    /// like a report). Refused when another rank of the same generation published a different signature: the
    /// ranks would build different models, and the ring must not form.
    fn join_ring(&mut self, r: &JoinRingRequest, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let a = r.attempt.clone().ok_or_else(|| bad("attempt", "missing"))?;
        check_host_port("address", &r.address)?;
        if r.signature.is_empty() || r.signature.len() > MAX_RING_SIGNATURE {
            return Err(bad("signature", format!("{} bytes (expected 1 to {MAX_RING_SIGNATURE})", r.signature.len())));
        }
        let (job, _) = self.check_current(&r.worker_id, &a)?;
        if let Some((rank, other)) = generation(job)
            .find(|(rank, at)| *rank != a.rank && !at.ring_signature.is_empty() && at.ring_signature != r.signature)
        {
            return Err(refuse(
                tonic::Code::InvalidArgument,
                format!(
                    "rank {}'s model does not match rank {rank}'s: parameters {} vs {}",
                    a.rank,
                    short(&r.signature),
                    short(&other.ring_signature)
                ),
            ));
        }
        let job = self.by_id.get_mut(&a.job_id).expect("checked");
        let at = job.tasks[a.rank as usize].attempts.last_mut().expect("checked");
        at.ring_addr = r.address.clone();
        at.ring_signature = r.signature.clone();
        dirty.mark(Table::Jobs, a.job_id.clone());
        Ok(CommandResultV1::default())
    }
}

/// An address a task reports (`host:port`, at most [`MAX_ENDPOINT`] bytes), or a refusal naming `field`.
fn check_host_port(field: &str, v: &str) -> Result<(), Refusal> {
    if v.is_empty() || v.len() > MAX_ENDPOINT || !v.contains(':') {
        return Err(bad(field, format!("{v:?} is not a host:port")));
    }
    Ok(())
}

fn short(s: &str) -> String {
    if s.len() <= 200 {
        return s.to_string();
    }
    let mut end = 200;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// The ranks of the job's current generation (placed in attempt `job.attempt`), with their attempts, by rank.
/// With `min_replicas` a generation may hold fewer ranks than the job has tasks; they are always ranks `0..k`.
pub fn generation(job: &Job) -> impl Iterator<Item = (u32, &Attempt)> {
    job.tasks.iter().filter_map(move |t| {
        let a = t.attempts.last()?;
        (job.attempt > 0 && a.attempt == job.attempt).then_some((t.rank, a))
    })
}

/// Fewest ranks the job may be placed with now: every rank on its first placement; on a restart, down to
/// `min_replicas` when the spec sets it (an elastic data-parallel gang).
pub fn min_ranks(job: &Job) -> u32 {
    let spec = job.spec.as_ref();
    let replicas = spec.map(|s| s.replicas).unwrap_or(1).max(1);
    let min = spec.map(|s| s.min_replicas).unwrap_or(0);
    if job.attempt == 0 || min == 0 { replicas } else { min.min(replicas) }
}

/// What a rank learns at the rendezvous: its generation, the world size and every rank's ring address.
pub fn ring_view(job: &Job) -> JoinRingResponse {
    let peers: Vec<String> = generation(job).map(|(_, a)| a.ring_addr.clone()).collect();
    JoinRingResponse {
        generation: job.attempt,
        world_size: peers.len() as u32,
        complete: !peers.is_empty() && peers.iter().all(|p| !p.is_empty()),
        peers,
    }
}

/// The serve spec of a SERVE job (a deployment's replica): which deployment and generation it belongs to.
pub fn serve_spec(j: &Job) -> Option<&ServeSpec> {
    let spec = j.spec.as_ref()?;
    if spec.kind != JobKind::Serve as i32 {
        return None;
    }
    match &spec.payload {
        Some(Payload::Serve(s)) => Some(s),
        _ => None,
    }
}

fn job_result(j: Job) -> CommandResultV1 {
    CommandResultV1 { job: Some(j), ..Default::default() }
}

/// A task of a running gang failed or was lost: stop the rest, then requeue the gang or fail the job.
fn gang_fault(job: &mut Job, why: &str, now: i64) {
    for t in &mut job.tasks {
        if let Some(a) = t.attempts.last_mut()
            && TaskState::try_from(a.state).is_ok_and(|s| s.is_active())
        {
            a.state = TaskState::Cancelled as i32;
            a.finished_at_ms = now;
            a.message = format!("gang stopped: {why}");
            t.state = TaskState::Cancelled as i32;
        }
    }
    let max_retries = job.spec.as_ref().map(|s| s.max_retries).unwrap_or(0);
    let retries_used = job.attempt.saturating_sub(1);
    if retries_used < max_retries {
        job.state = JobState::Pending as i32;
        for t in &mut job.tasks {
            t.state = TaskState::Pending as i32;
        }
        job.reason = format!("retrying ({} of {max_retries}) after: {why}", retries_used + 1);
    } else {
        job.state = JobState::Failed as i32;
        job.reason = if max_retries == 0 { why.to_string() } else { format!("{why} (no retries left)") };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ClusterState, Dirty};
    use aidos_api::v1::CommandV1;
    use aidos_api::v1::{
        AssignV1, CancelJobV1, JobSpec, PlacementV1, ProcessSpec, RegisterWorkerV1, SubmitJobsV1, SubmitRequest,
        WorkerLostV1, job_spec::Payload,
    };

    fn cmd(c: Command) -> CommandV1 {
        CommandV1 { now_ms: 1, command: Some(c) }
    }
    fn spec(replicas: u32, retries: u32) -> JobSpec {
        JobSpec {
            kind: 1,
            replicas,
            max_retries: retries,
            resources: Some(Resources { cpu_millis: 1000, memory_bytes: 1, gpus: 0 }),
            payload: Some(Payload::Process(ProcessSpec { executable: "true".into(), ..Default::default() })),
            ..Default::default()
        }
    }
    fn worker(id: &str, cpus: u64) -> Command {
        Command::RegisterWorker(RegisterWorkerV1 {
            worker: Some(Worker {
                id: id.into(),
                capacity: Some(Resources { cpu_millis: cpus * 1000, memory_bytes: 1 << 30, gpus: 0 }),
                ..Default::default()
            }),
        })
    }
    fn submit(st: &mut ClusterState, s: JobSpec, rid: &str) -> SubmitResponse {
        let r = st.apply(
            &cmd(Command::SubmitJobs(SubmitJobsV1 {
                requests: vec![SubmitRequest { spec: Some(s), request_id: rid.into() }],
            })),
            &mut Dirty::default(),
        );
        r.submitted[0].clone()
    }
    fn place(st: &mut ClusterState, job: &str, ws: &[&str]) {
        st.apply(
            &cmd(Command::Assign(AssignV1 {
                placements: vec![PlacementV1 {
                    job_id: job.into(),
                    workers: ws.iter().map(|s| s.to_string()).collect(),
                }],
            })),
            &mut Dirty::default(),
        );
    }
    /// The reference of `rank`'s current attempt.
    fn current(st: &ClusterState, job: &str, rank: u32) -> Option<AttemptRef> {
        let a = st.jobs.by_id[job].tasks[rank as usize].attempts.last().unwrap();
        Some(AttemptRef { job_id: job.into(), rank, attempt: a.attempt, fencing_token: a.fencing_token })
    }
    fn report(st: &mut ClusterState, w: &str, job: &str, rank: u32, state: TaskState) -> CommandResultV1 {
        st.apply(
            &cmd(Command::TaskTransition(TaskTransitionV1 {
                worker_id: w.into(),
                attempt: current(st, job, rank),
                state: state as i32,
                exit_code: if state == TaskState::Failed { 1 } else { 0 },
                message: String::new(),
                log_blob: format!("log-{rank}-{state:?}"),
            })),
            &mut Dirty::default(),
        )
    }

    #[test]
    fn submission_is_idempotent_by_request_id() {
        let mut st = ClusterState::default();
        let a = submit(&mut st, spec(1, 0), "r1");
        let b = submit(&mut st, spec(1, 0), "r1");
        assert_eq!(a.job_id, b.job_id);
        assert!(b.duplicate);
        assert_eq!(st.jobs.by_id.len(), 1);
        let c = submit(&mut st, spec(1, 0), "");
        assert_ne!(c.job_id, a.job_id);
    }

    #[test]
    fn job_lifecycle_and_stale_reports() {
        let mut st = ClusterState::default();
        st.apply(&cmd(worker("w1", 4)), &mut Dirty::default());
        st.apply(&cmd(worker("w2", 4)), &mut Dirty::default());
        let id = submit(&mut st, spec(1, 1), "").job_id;
        place(&mut st, &id, &["w1"]);
        assert_eq!(st.jobs.by_id[&id].state, JobState::Running as i32);
        let old = st.jobs.by_id[&id].tasks[0].attempts[0].clone();
        // w1 is lost: the gang is requeued (1 retry).
        st.apply(
            &cmd(Command::WorkerLost(WorkerLostV1 { worker_id: "w1".into(), reason: "heartbeat".into() })),
            &mut Dirty::default(),
        );
        assert_eq!(st.jobs.by_id[&id].state, JobState::Pending as i32);
        place(&mut st, &id, &["w2"]);
        let new = st.jobs.by_id[&id].tasks[0].attempts[1].clone();
        assert!(new.fencing_token > old.fencing_token);
        // The lost worker's late report is refused.
        let late = st.apply(
            &cmd(Command::TaskTransition(TaskTransitionV1 {
                worker_id: "w1".into(),
                attempt: Some(AttemptRef { job_id: id.clone(), rank: 0, attempt: 1, fencing_token: old.fencing_token }),
                state: TaskState::Succeeded as i32,
                ..Default::default()
            })),
            &mut Dirty::default(),
        );
        assert_eq!(late.error_code, tonic::Code::FailedPrecondition as u32, "{late:?}");
        assert!(late.error.contains("stale"));
        assert!(report(&mut st, "w2", &id, 0, TaskState::Running).error.is_empty());
        assert!(report(&mut st, "w2", &id, 0, TaskState::Succeeded).error.is_empty());
        assert_eq!(st.jobs.by_id[&id].state, JobState::Succeeded as i32);
        // A report after the end is stale too.
        assert!(!report(&mut st, "w2", &id, 0, TaskState::Failed).error.is_empty());
    }

    fn join(st: &mut ClusterState, w: &str, job: &str, rank: u32, addr: &str, sig: &str) -> CommandResultV1 {
        st.apply(
            &cmd(Command::JoinRing(JoinRingRequest {
                worker_id: w.into(),
                attempt: current(st, job, rank),
                address: addr.into(),
                signature: sig.into(),
            })),
            &mut Dirty::default(),
        )
    }

    #[test]
    fn the_rendezvous_collects_one_generation_and_refuses_a_mismatched_model() {
        let mut st = ClusterState::default();
        st.apply(&cmd(worker("w1", 4)), &mut Dirty::default());
        let id = submit(&mut st, spec(2, 1), "").job_id;
        place(&mut st, &id, &["w1", "w1"]);
        assert!(join(&mut st, "w1", &id, 0, "10.0.0.1:5000", "mlp:4x2,2").error.is_empty());
        let v = ring_view(&st.jobs.by_id[&id]);
        assert_eq!((v.generation, v.world_size, v.complete), (1, 2, false));
        assert_eq!(v.peers, vec!["10.0.0.1:5000".to_string(), String::new()]);
        let bad = join(&mut st, "w1", &id, 1, "10.0.0.2:5000", "mlp:4x3,3");
        assert_eq!(bad.error_code, tonic::Code::InvalidArgument as u32, "{bad:?}");
        assert!(bad.error.contains("rank 1") && bad.error.contains("mlp:4x3,3") && bad.error.contains("mlp:4x2,2"));
        assert!(join(&mut st, "w1", &id, 1, "nonsense", "mlp:4x2,2").error.contains("address"));
        assert!(join(&mut st, "w1", &id, 1, "10.0.0.2:5000", "mlp:4x2,2").error.is_empty());
        let v = ring_view(&st.jobs.by_id[&id]);
        assert!(v.complete);
        // A restart is a new generation: the old addresses do not count, the old attempts are fenced.
        let old = st.jobs.by_id[&id].tasks[0].attempts[0].clone();
        report(&mut st, "w1", &id, 1, TaskState::Failed);
        place(&mut st, &id, &["w1", "w1"]);
        let v = ring_view(&st.jobs.by_id[&id]);
        assert_eq!((v.generation, v.complete), (2, false));
        assert_eq!(v.peers, vec![String::new(), String::new()]);
        let stale = st.apply(
            &cmd(Command::JoinRing(JoinRingRequest {
                worker_id: "w1".into(),
                attempt: Some(AttemptRef { job_id: id.clone(), rank: 0, attempt: 1, fencing_token: old.fencing_token }),
                address: "10.0.0.1:5000".into(),
                signature: "mlp:4x2,2".into(),
            })),
            &mut Dirty::default(),
        );
        assert_eq!(stale.error_code, tonic::Code::FailedPrecondition as u32);
    }

    #[test]
    fn an_elastic_gang_restarts_with_fewer_ranks_and_succeeds_with_them() {
        let mut st = ClusterState::default();
        st.apply(&cmd(worker("w1", 4)), &mut Dirty::default());
        let mut s = spec(3, 1);
        s.min_replicas = 2;
        let id = submit(&mut st, s, "").job_id;
        // The first placement needs every rank.
        assert_eq!(min_ranks(&st.jobs.by_id[&id]), 3);
        place(&mut st, &id, &["w1", "w1"]);
        assert_eq!(st.jobs.by_id[&id].state, JobState::Pending as i32);
        place(&mut st, &id, &["w1", "w1", "w1"]);
        assert_eq!(st.jobs.by_id[&id].state, JobState::Running as i32);
        report(&mut st, "w1", &id, 2, TaskState::Failed);
        // The restart may take 2 (not 1).
        assert_eq!(min_ranks(&st.jobs.by_id[&id]), 2);
        place(&mut st, &id, &["w1"]);
        assert_eq!(st.jobs.by_id[&id].state, JobState::Pending as i32);
        place(&mut st, &id, &["w1", "w1"]);
        let j = &st.jobs.by_id[&id];
        assert_eq!(j.state, JobState::Running as i32);
        assert!(j.reason.contains("2 of 3"), "{}", j.reason);
        assert_eq!(generation(j).count(), 2);
        assert_eq!(ring_view(j).world_size, 2);
        assert_eq!(crate::queries::active_for(&st, "w1")[0].world_size, 2);
        report(&mut st, "w1", &id, 0, TaskState::Succeeded);
        assert_eq!(st.jobs.by_id[&id].state, JobState::Running as i32);
        report(&mut st, "w1", &id, 1, TaskState::Succeeded);
        assert_eq!(st.jobs.by_id[&id].state, JobState::Succeeded as i32);
    }

    #[test]
    fn gang_failure_stops_siblings_and_fails_without_retries() {
        let mut st = ClusterState::default();
        st.apply(&cmd(worker("w1", 4)), &mut Dirty::default());
        let id = submit(&mut st, spec(2, 0), "").job_id;
        place(&mut st, &id, &["w1", "w1"]);
        report(&mut st, "w1", &id, 0, TaskState::Failed);
        let j = &st.jobs.by_id[&id];
        assert_eq!(j.state, JobState::Failed as i32);
        assert_eq!(j.tasks[1].attempts[0].state, TaskState::Cancelled as i32);
        assert!(j.reason.contains("rank 0"), "{}", j.reason);
        assert!(st.jobs.allocated().is_empty());
        assert!(st.jobs.running.is_empty() && st.jobs.pending.is_empty());
    }

    #[test]
    fn final_reports_record_the_log_blob_and_cancelled_attempts_still_take_theirs() {
        let mut st = ClusterState::default();
        st.apply(&cmd(worker("w1", 4)), &mut Dirty::default());
        let id = submit(&mut st, spec(2, 0), "").job_id;
        place(&mut st, &id, &["w1", "w1"]);
        assert!(report(&mut st, "w1", &id, 0, TaskState::Running).error.is_empty());
        // RUNNING carries no blob; the final report's is recorded.
        assert_eq!(st.jobs.by_id[&id].tasks[0].attempts[0].log_blob, "");
        assert!(report(&mut st, "w1", &id, 0, TaskState::Failed).error.is_empty());
        let j = &st.jobs.by_id[&id];
        assert_eq!(j.tasks[0].attempts[0].log_blob, "log-0-Failed");
        // The gang fault cancelled rank 1; its worker's final report after stopping it records only its blob.
        assert_eq!(j.tasks[1].attempts[0].state, TaskState::Cancelled as i32);
        let before = st.jobs.by_id[&id].clone();
        assert!(report(&mut st, "w1", &id, 1, TaskState::Failed).error.is_empty());
        let after = &st.jobs.by_id[&id];
        assert_eq!(after.tasks[1].attempts[0].log_blob, "log-1-Failed");
        assert_eq!(after.tasks[1].attempts[0].state, TaskState::Cancelled as i32);
        assert_eq!((after.state, &after.reason), (before.state, &before.reason));
        // Once: a second report is stale again, and so is one from another worker or without a blob.
        assert!(!report(&mut st, "w1", &id, 1, TaskState::Failed).error.is_empty());
        let r = st.jobs.by_id[&id].tasks[1].attempts[0].clone();
        let aref = AttemptRef { job_id: id.clone(), rank: 1, attempt: r.attempt, fencing_token: r.fencing_token };
        assert!(st.jobs.late_log_target("w2", &aref, TaskState::Failed as i32, "b").is_none());
        let mut st2 = ClusterState::default();
        st2.apply(&cmd(worker("w1", 4)), &mut Dirty::default());
        let id2 = submit(&mut st2, spec(2, 0), "").job_id;
        place(&mut st2, &id2, &["w1", "w1"]);
        report(&mut st2, "w1", &id2, 0, TaskState::Failed);
        let r = st2.jobs.by_id[&id2].tasks[1].attempts[0].clone();
        let aref = AttemptRef { job_id: id2.clone(), rank: 1, attempt: r.attempt, fencing_token: r.fencing_token };
        assert!(st2.jobs.late_log_target("w1", &aref, TaskState::Failed as i32, "").is_none());
        assert!(st2.jobs.late_log_target("w1", &aref, TaskState::Running as i32, "b").is_none());
        assert!(st2.jobs.late_log_target("w1", &aref, TaskState::Succeeded as i32, "b").is_some());
    }

    #[test]
    fn assign_rechecks_capacity_and_cancel_frees() {
        let mut st = ClusterState::default();
        st.apply(&cmd(worker("w1", 1)), &mut Dirty::default());
        let a = submit(&mut st, spec(1, 0), "").job_id;
        let b = submit(&mut st, spec(1, 0), "").job_id;
        place(&mut st, &a, &["w1"]);
        place(&mut st, &b, &["w1"]);
        assert_eq!(st.jobs.by_id[&b].state, JobState::Pending as i32, "over capacity must be skipped");
        let r = st.apply(
            &cmd(Command::CancelJob(CancelJobV1 { job_id: a.clone(), reason: String::new() })),
            &mut Dirty::default(),
        );
        assert_eq!(r.job.unwrap().state, JobState::Cancelled as i32);
        place(&mut st, &b, &["w1"]);
        assert_eq!(st.jobs.by_id[&b].state, JobState::Running as i32);
        assert_eq!(st.jobs.running.iter().collect::<Vec<_>>(), vec![&b]);
        assert!(st.jobs.pending.is_empty());
        let r = st.apply(
            &cmd(Command::CancelJob(CancelJobV1 { job_id: "job-999".into(), reason: String::new() })),
            &mut Dirty::default(),
        );
        assert_eq!(r.error_code, tonic::Code::NotFound as u32);
    }

    #[test]
    fn assign_rechecks_task_slots() {
        let mut st = ClusterState::default();
        let mut w = worker("w1", 8);
        if let Command::RegisterWorker(r) = &mut w {
            r.worker.as_mut().unwrap().max_tasks = 2;
        }
        st.apply(&cmd(w), &mut Dirty::default());
        let gang = submit(&mut st, spec(3, 0), "").job_id;
        place(&mut st, &gang, &["w1", "w1", "w1"]);
        assert_eq!(st.jobs.by_id[&gang].state, JobState::Pending as i32, "3 ranks on 2 slots must be refused");
        let a = submit(&mut st, spec(1, 0), "").job_id;
        let b = submit(&mut st, spec(1, 0), "").job_id;
        let c = submit(&mut st, spec(1, 0), "").job_id;
        for j in [&a, &b, &c] {
            place(&mut st, j, &["w1"]);
        }
        assert_eq!(st.jobs.by_id[&a].state, JobState::Running as i32);
        assert_eq!(st.jobs.by_id[&b].state, JobState::Running as i32);
        assert_eq!(st.jobs.by_id[&c].state, JobState::Pending as i32, "CPU is left, slots are not");
        report(&mut st, "w1", &a, 0, TaskState::Succeeded);
        place(&mut st, &c, &["w1"]);
        assert_eq!(st.jobs.by_id[&c].state, JobState::Running as i32, "an ended attempt frees its slot");
    }

    #[test]
    fn compaction_removes_only_finished_jobs_and_is_idempotent() {
        let mut st = ClusterState::default();
        st.apply(&cmd(worker("w1", 1)), &mut Dirty::default());
        let done = submit(&mut st, spec(1, 0), "r-done").job_id;
        let running = submit(&mut st, spec(1, 0), "r-running").job_id;
        let pending = submit(&mut st, spec(1, 0), "r-pending").job_id;
        st.apply(
            &cmd(Command::CancelJob(CancelJobV1 { job_id: done.clone(), reason: String::new() })),
            &mut Dirty::default(),
        );
        place(&mut st, &running, &["w1"]);
        let compact = |ids: &[&str]| {
            cmd(Command::CompactJobs(aidos_api::v1::CompactJobsV1 {
                job_ids: ids.iter().map(|s| s.to_string()).collect(),
            }))
        };
        let mut dirty = Dirty::default();
        let r = st.apply(&compact(&[&done, &running, &pending, "job-999"]), &mut dirty);
        assert!(r.error.is_empty(), "{r:?}");
        assert_eq!(dirty.rows, vec![(Table::Jobs, done.clone())], "only the finished job's row changes");
        assert!(!st.jobs.by_id.contains_key(&done));
        assert!(!st.jobs.request_ids.contains_key(&idempotency_key("", "r-done")));
        assert_eq!(st.jobs.by_id.len(), 2);
        assert_eq!(st.jobs.running.iter().collect::<Vec<_>>(), vec![&running]);
        assert_eq!(st.jobs.pending.values().collect::<Vec<_>>(), vec![&pending]);
        // Again: nothing changes.
        let mut dirty = Dirty::default();
        st.apply(&compact(&[&done]), &mut dirty);
        assert!(dirty.rows.is_empty());
        // The id is never reused, and the request id is free again.
        let again = submit(&mut st, spec(1, 0), "r-done");
        assert!(!again.duplicate && again.job_id != done);
    }

    #[test]
    fn snapshot_roundtrip() {
        let mut st = ClusterState::default();
        st.apply(&cmd(worker("w1", 1)), &mut Dirty::default());
        submit(&mut st, spec(1, 0), "abc");
        let back = ClusterState::from_snapshot(st.to_snapshot());
        assert_eq!(back.jobs.by_id, st.jobs.by_id);
        assert_eq!(back.jobs.request_ids, st.jobs.request_ids);
        assert_eq!(back.jobs.next_job_seq, st.jobs.next_job_seq);
        assert_eq!(back.jobs.pending, st.jobs.pending);
    }
}
