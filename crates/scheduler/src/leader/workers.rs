//! The leader's side of the worker protocol. Liveness is leader memory (`Core::liveness`); only transitions
//! (registration, task state changes, a worker declared lost) become Raft commands.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{
    AttemptRef, HeartbeatRequest, HeartbeatResponse, LogChunk, LogReport, RegisterWorkerRequest,
    RegisterWorkerResponse, RegisterWorkerV1, TaskState, TaskStatusReport, TaskTransitionV1, Worker, WorkerCommand,
    WorkerState, worker_command,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{BoxStream, LeaderHandler};
use crate::error::SchedulerError;
use crate::queries;

/// Longest worker id.
pub const MAX_WORKER_ID: usize = 128;

fn check_worker_id(id: &str) -> Result<(), SchedulerError> {
    if id.is_empty() || id.len() > MAX_WORKER_ID || id.chars().any(|c| c.is_control()) {
        return Err(SchedulerError::InvalidArgument(format!(
            "worker_id: must be 1..={MAX_WORKER_ID} printable characters"
        )));
    }
    Ok(())
}

fn key(r: &AttemptRef) -> (String, u32, u32, u64) {
    (r.job_id.clone(), r.rank, r.attempt, r.fencing_token)
}

impl LeaderHandler {
    fn touch(&self, worker_id: &str) {
        self.core.liveness.lock().expect("liveness lock").insert(worker_id.to_string(), Instant::now());
    }

    pub async fn register_worker(&self, req: RegisterWorkerRequest) -> Result<RegisterWorkerResponse, SchedulerError> {
        check_worker_id(&req.worker_id)?;
        let capacity = req.capacity.ok_or_else(|| SchedulerError::InvalidArgument("capacity: missing".into()))?;
        let worker = Worker {
            id: req.worker_id.clone(),
            hostname: req.hostname.clone(),
            capacity: Some(capacity),
            labels: req.labels.clone(),
            state: WorkerState::Ready as i32,
            gpu_names: req.gpu_names.clone(),
            max_tasks: req.max_tasks,
            ..Default::default()
        };
        self.touch(&req.worker_id);
        self.core.propose(Command::RegisterWorker(RegisterWorkerV1 { worker: Some(worker) })).await?;
        self.touch(&req.worker_id);
        let kill = queries::unwanted(&self.core.state.read().expect("state lock").state, &req.worker_id, &req.running);
        Ok(RegisterWorkerResponse {
            heartbeat_interval_ms: self.core.cfg.heartbeat_interval.as_millis() as u32,
            heartbeat_timeout_ms: self.core.cfg.worker_timeout.as_millis() as u32,
            kill,
        })
    }

    pub fn heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatResponse, SchedulerError> {
        check_worker_id(&req.worker_id)?;
        let a = self.core.state.read().expect("state lock");
        let known = a.state.jobs.workers.get(&req.worker_id).is_some_and(|w| w.state != WorkerState::Lost as i32);
        if !known {
            return Ok(HeartbeatResponse { kill: vec![], reregister: true });
        }
        let kill = queries::unwanted(&a.state, &req.worker_id, &req.running);
        drop(a);
        self.touch(&req.worker_id);
        Ok(HeartbeatResponse { kill, reregister: false })
    }

    /// Every active attempt of this worker now (re-sent on each connect), then new ones and cancels as the state
    /// changes. Ends with UNAVAILABLE when this node stops leading, so the worker follows the new leader.
    pub fn assignments(&self, worker_id: String) -> Result<BoxStream<WorkerCommand>, SchedulerError> {
        check_worker_id(&worker_id)?;
        let (tx, rx) = mpsc::channel(64);
        let core = self.core.clone();
        let root_secret = aidos_api::auth::parse_token(&core.cfg.root_token).map(|t| t.secret).unwrap_or_default();
        tokio::spawn(async move {
            let mut version = core.version.clone();
            let mut sent: HashMap<(String, u32, u32, u64), AttemptRef> = HashMap::new();
            loop {
                if !core.is_leader() {
                    let _ = tx.send(Err(SchedulerError::NotLeader { leader: core.leader_addr() }.into())).await;
                    return;
                }
                let active = queries::active_for(&core.state.read().expect("state lock").state, &worker_id);
                let mut now_keys = std::collections::HashSet::new();
                for mut a in active {
                    let r = a.attempt.clone().unwrap_or_default();
                    let k = key(&r);
                    now_keys.insert(k.clone());
                    if sent.contains_key(&k) {
                        continue;
                    }
                    // The task's own credentials: valid while its job runs (`aidos_api::auth`, job tokens).
                    a.env
                        .insert(aidos_api::auth::TOKEN_ENV.into(), aidos_api::auth::job_token(&root_secret, &r.job_id));
                    let project = a.spec.as_ref().map_or("", |s| s.project.as_str());
                    let project = aidos_api::auth::project_or_default(project).to_string();
                    a.env.insert(aidos_api::auth::PROJECT_ENV.into(), project);
                    let cmd = WorkerCommand { command: Some(worker_command::Command::Start(a)) };
                    if tx.send(Ok(cmd)).await.is_err() {
                        return;
                    }
                    sent.insert(k, r);
                }
                let gone: Vec<_> = sent.keys().filter(|k| !now_keys.contains(*k)).cloned().collect();
                for k in gone {
                    let r = sent.remove(&k).expect("present");
                    let cmd = WorkerCommand { command: Some(worker_command::Command::Cancel(r)) };
                    if tx.send(Ok(cmd)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    r = version.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    pub async fn report_status(&self, req: TaskStatusReport) -> Result<(), SchedulerError> {
        check_worker_id(&req.worker_id)?;
        let attempt = req.attempt.ok_or_else(|| SchedulerError::InvalidArgument("attempt: missing".into()))?;
        let to = TaskState::try_from(req.state).unwrap_or(TaskState::Unspecified);
        // A log blob is only for final reports, and must name a blob; anything else is dropped, never refused (the
        // report itself is what matters).
        let mut log_blob = req.log_blob;
        if !log_blob.is_empty() {
            let problem = if matches!(to, TaskState::Succeeded | TaskState::Failed) {
                aidos_blob::BlobId::parse(&log_blob).err().map(|e| e.to_string())
            } else {
                Some("only a final report carries one".to_string())
            };
            if let Some(p) = problem {
                tracing::warn!(worker = %req.worker_id, "ignoring the log blob of {}: {p}", attempt.display());
                log_blob.clear();
            }
        }
        {
            // Refuse stale reports before they cost a Raft write; apply checks again.
            let a = self.core.state.read().expect("state lock");
            match a.state.jobs.check_current(&req.worker_id, &attempt) {
                Ok((_, cur)) => {
                    if to == TaskState::Running && cur.state == TaskState::Running as i32 {
                        return Ok(());
                    }
                }
                // A cancelled attempt's log blob is still recorded (see `crate::task_logs`).
                Err(_) if a.state.jobs.late_log_target(&req.worker_id, &attempt, req.state, &log_blob).is_some() => {}
                Err(r) => {
                    tracing::warn!(worker = %req.worker_id, "refused report: {}", r.message);
                    return Err(SchedulerError::from_refusal(r.code as u32, r.message));
                }
            }
        }
        self.touch(&req.worker_id);
        // The log blob is held in the blob collector's gate until the report applied (see `gc::RefGate`); one the
        // collector already deleted is dropped, like any other unusable log blob.
        let pin = match self.core.gc.pin([log_blob.as_str()], self.core.blobs.as_ref()).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(worker = %req.worker_id, "ignoring the log blob of {}: {e}", attempt.display());
                log_blob.clear();
                None
            }
        };
        let t = TaskTransitionV1 {
            worker_id: req.worker_id,
            attempt: Some(attempt),
            state: req.state,
            exit_code: req.exit_code,
            message: req.message.chars().take(4096).collect(),
            log_blob,
        };
        self.core.propose(Command::TaskTransition(t)).await?;
        drop(pin);
        Ok(())
    }

    /// Appends reported output to the leader's task logs. Chunks for attempts the job never had are dropped.
    pub async fn report_logs(
        &self,
        mut stream: impl futures::Stream<Item = Result<LogReport, tonic::Status>> + Unpin,
    ) -> Result<(), SchedulerError> {
        while let Some(msg) = stream.next().await {
            let m = msg.map_err(SchedulerError::Remote)?;
            let Some(r) = m.attempt else { continue };
            let known = self.read(|st| queries::ran_attempt(st, &m.worker_id, &r));
            if !known {
                continue;
            }
            let chunk = LogChunk { rank: r.rank, attempt: r.attempt, stream: m.stream, data: m.data };
            self.core.logs.append(&r.job_id, &chunk).await?;
        }
        Ok(())
    }
}
