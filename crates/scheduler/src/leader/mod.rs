//! The leader path: validates client calls and proposes commands; reads run `crate::queries` over the applied
//! state under [`LeaderHandler::read`]. A node reaches this path only while it leads: client calls reach the
//! leader through the forwarding layer (`crate::forward`), and [`LeaderHandler::require`] refuses with the
//! leader's address otherwise. One module per domain: `workers` (the worker protocol), `registry`, `serving`,
//! `edge`; jobs and cluster membership are here.

pub mod auth;
pub mod edge;
pub mod registry;
pub mod serving;
pub mod sweeps;
pub mod tracking;
pub mod workers;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aidos_api::logframe;
use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{
    AddNodeRequest, CancelJobV1, ClusterStatus, Job, JobState, JoinRingRequest, JoinRingResponse, LogChunk,
    LogsRequest, SubmitJobsV1, SubmitRequest, SubmitResponse,
};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::core::{Core, SubmitItem};
use crate::error::SchedulerError;
use crate::queries;
use crate::state::ClusterState;
use crate::task_logs::LogCursor;

/// The bytes of an attempt's log blob from this node's blob store (read on a blocking thread).
async fn read_log_blob(core: &Core, id: &str) -> Result<aidos_blob::BlobBytes, String> {
    let store = core.blobs.clone().ok_or("this node has no blob store configured")?;
    let id = aidos_blob::BlobId::parse(id).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || store.get(&id).map_err(|e| e.to_string()))
        .await
        .map_err(|e| format!("blob read task: {e}"))?
}

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// Most submissions in one `SubmitBatch` call (and in one Raft entry).
pub const MAX_BATCH: usize = 1000;
/// Longest idempotency key.
pub const MAX_REQUEST_ID: usize = 256;

pub struct LeaderHandler {
    pub(crate) core: Arc<Core>,
}

fn check_submit(r: &SubmitRequest) -> Result<(), SchedulerError> {
    if r.request_id.len() > MAX_REQUEST_ID {
        return Err(SchedulerError::InvalidArgument(format!("request_id: longer than {MAX_REQUEST_ID} bytes")));
    }
    let spec = r.spec.as_ref().ok_or_else(|| SchedulerError::InvalidArgument("spec: missing".into()))?;
    aidos_api::spec::validate(spec)?;
    Ok(())
}

impl LeaderHandler {
    /// This node's leader path, or NotLeader naming the leader when another node leads.
    pub fn require(core: &Arc<Core>) -> Result<LeaderHandler, SchedulerError> {
        if core.is_leader() {
            Ok(LeaderHandler { core: core.clone() })
        } else {
            Err(SchedulerError::NotLeader { leader: core.leader_addr() })
        }
    }

    /// Runs a read (see `queries`) over the applied state. Holds the state lock for the call only.
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        f(&self.core.state.read().expect("state lock").state)
    }

    /// The rendezvous of a data-parallel gang (see `JobService.JoinRing`): records the rank's ring address once
    /// (a repeated call with the same address costs no write), then answers the generation's peers.
    pub async fn join_ring(&self, r: JoinRingRequest) -> Result<JoinRingResponse, SchedulerError> {
        let a = r.attempt.clone().unwrap_or_default();
        let joined = self.read(|st| {
            st.jobs
                .check_current(&r.worker_id, &a)
                .map(|(_, at)| at.ring_addr == r.address && at.ring_signature == r.signature)
        });
        match joined {
            Ok(true) => {}
            Ok(false) => {
                self.core.propose(Command::JoinRing(r.clone())).await?;
            }
            Err(refusal) => return Err(SchedulerError::from_refusal(refusal.code as u32, refusal.message)),
        }
        self.read(|st| match st.jobs.check_current(&r.worker_id, &a) {
            Ok((job, _)) => Ok(crate::state::jobs::ring_view(job)),
            Err(refusal) => Err(SchedulerError::from_refusal(refusal.code as u32, refusal.message)),
        })
    }

    pub async fn submit(&self, req: SubmitRequest) -> Result<SubmitResponse, SchedulerError> {
        check_submit(&req)?;
        let (tx, rx) = oneshot::channel();
        self.core
            .submits
            .send(SubmitItem { req, reply: tx })
            .await
            .map_err(|_| SchedulerError::Unavailable("node is shutting down".into()))?;
        rx.await.map_err(|_| SchedulerError::Unavailable("node is shutting down".into()))?
    }

    pub async fn submit_batch(&self, reqs: Vec<SubmitRequest>) -> Result<Vec<SubmitResponse>, SchedulerError> {
        if reqs.len() > MAX_BATCH {
            return Err(SchedulerError::InvalidArgument(format!(
                "requests: {} submissions in one batch, at most {MAX_BATCH}",
                reqs.len()
            )));
        }
        for (i, r) in reqs.iter().enumerate() {
            check_submit(r).map_err(|e| SchedulerError::InvalidArgument(format!("requests[{i}]: {e}")))?;
        }
        let r = self.core.propose(Command::SubmitJobs(SubmitJobsV1 { requests: reqs })).await?;
        Ok(r.submitted)
    }

    pub async fn cancel(&self, id: &str) -> Result<Job, SchedulerError> {
        let r = self
            .core
            .propose(Command::CancelJob(CancelJobV1 { job_id: id.to_string(), reason: String::new() }))
            .await?;
        r.job.ok_or_else(|| SchedulerError::NotFound(format!("job {id} not found")))
    }

    /// The job now, then each change, until it ends (or this node stops leading).
    pub fn watch(&self, id: &str) -> Result<BoxStream<Job>, SchedulerError> {
        self.read(|st| queries::job(st, id))?;
        let (tx, rx) = mpsc::channel(16);
        let core = self.core.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let mut version = core.version.clone();
            let mut last: Option<Job> = None;
            loop {
                let Ok(job) = queries::job(&core.state.read().expect("state lock").state, &id) else { break };
                let done = JobState::try_from(job.state).is_ok_and(|s| s.is_terminal());
                if last.as_ref() != Some(&job) {
                    if tx.send(Ok(job.clone())).await.is_err() {
                        return;
                    }
                    last = Some(job);
                }
                if done {
                    return;
                }
                if !core.is_leader() {
                    let _ = tx.send(Err(SchedulerError::NotLeader { leader: core.leader_addr() }.into())).await;
                    return;
                }
                tokio::select! {
                    r = version.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Stored output of a job (see `crate::task_logs`): attempts with a log blob from the blob store, the others
    /// from this node's task-log file. With `follow`, keeps streaming until the job ended and its output is
    /// drained; without, sends what there is now.
    pub fn logs(&self, req: LogsRequest) -> Result<BoxStream<LogChunk>, SchedulerError> {
        self.read(|st| queries::job(st, &req.job_id))?;
        let (tx, rx) = mpsc::channel(16);
        let core = self.core.clone();
        tokio::spawn(async move {
            let mut cursor = LogCursor::new(req.rank);
            let mut window = crate::task_logs::LogWindow::new(req.offset, req.max_bytes);
            let mut idle_after_end = 0;
            loop {
                let Ok(job) = queries::job(&core.state.read().expect("state lock").state, &req.job_id) else {
                    return;
                };
                let ended = JobState::try_from(job.state).is_ok_and(|s| s.is_terminal());
                let mut got = false;
                // Finished attempts first, from their blobs (each once; see `LogCursor`).
                for (rank, attempt, blob) in cursor.blobs_due(&job) {
                    let bytes = match read_log_blob(&core, &blob).await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(job = %req.job_id, rank, attempt, "log blob {blob} unreadable: {e}");
                            cursor.blob_unreadable(rank, attempt);
                            continue;
                        }
                    };
                    cursor.begin_blob(rank, attempt);
                    let mut pos = 0;
                    while let Some((c, n)) = logframe::decode_chunk(&bytes[pos..]) {
                        pos += n;
                        // The attempt's identity is the job's, whatever the frames say.
                        let Some(c) = cursor.blob_chunk(LogChunk { rank, attempt, ..c }) else { continue };
                        got = true;
                        if let Some(c) = window.take(c)
                            && tx.send(Ok(c)).await.is_err()
                        {
                            return;
                        }
                        if window.full() {
                            return;
                        }
                    }
                }
                // Then whatever the local file has of the others.
                loop {
                    let (chunks, next) = match core.logs.read_from(&req.job_id, cursor.offset).await {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = tx.send(Err(tonic::Status::internal(format!("reading logs: {e}")))).await;
                            return;
                        }
                    };
                    if next == cursor.offset {
                        break;
                    }
                    cursor.offset = next;
                    for c in chunks {
                        let Some(c) = cursor.local_chunk(c) else { continue };
                        got = true;
                        if let Some(c) = window.take(c)
                            && tx.send(Ok(c)).await.is_err()
                        {
                            return;
                        }
                        if window.full() {
                            return;
                        }
                    }
                }
                if !req.follow {
                    return;
                }
                // After the job ends, wait briefly for the last chunks still in flight from workers, unless every
                // attempt was served from its blob (complete by construction).
                if ended && !got {
                    if cursor.all_from_blobs(&job) {
                        return;
                    }
                    idle_after_end += 1;
                    if idle_after_end > 10 {
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(150)) => {},
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    pub async fn add_node(&self, req: AddNodeRequest) -> Result<ClusterStatus, SchedulerError> {
        if req.id == 0 || req.addr.is_empty() {
            return Err(SchedulerError::InvalidArgument("id and addr are required".into()));
        }
        let raft = &self.core.raft;
        // A node that joins must see the same blobs (the rule of aidos_blob::config): checked against this
        // node's store; the joining node checks its own when it starts with --peers.
        if let Some(blobs) = &self.core.cfg.blobs {
            let mut members: std::collections::BTreeMap<u64, String> =
                raft.metrics().borrow().membership_config.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
            members.insert(req.id, req.addr.clone());
            blobs.check_cluster(&members).map_err(SchedulerError::InvalidArgument)?;
        }
        raft.add_learner(req.id, openraft::BasicNode::new(&req.addr), true)
            .await
            .map_err(|e| SchedulerError::Raft(format!("adding learner {}: {e}", req.id)))?;
        if req.voter {
            let mut voters: std::collections::BTreeSet<u64> =
                raft.metrics().borrow().membership_config.membership().voter_ids().collect();
            voters.insert(req.id);
            raft.change_membership(voters, false)
                .await
                .map_err(|e| SchedulerError::Raft(format!("promoting {}: {e}", req.id)))?;
        }
        Ok(self.core.status())
    }

    pub async fn remove_node(&self, id: u64) -> Result<ClusterStatus, SchedulerError> {
        let raft = &self.core.raft;
        let mut voters: std::collections::BTreeSet<u64> =
            raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        if !voters.remove(&id) {
            return Err(SchedulerError::NotFound(format!("node {id} is not a voter")));
        }
        if voters.is_empty() {
            return Err(SchedulerError::InvalidArgument("cannot remove the last voter".into()));
        }
        raft.change_membership(voters, false).await.map_err(|e| SchedulerError::Raft(format!("removing {id}: {e}")))?;
        Ok(self.core.status())
    }
}

/// Batches concurrent submissions into single Raft entries (group commit): one proposal carries every
/// submission that queued while earlier proposals were in flight, so throughput grows with load while an idle
/// cluster still commits a lone submission at once. Submissions whose clients went away are dropped first.
pub async fn run_proposer(core: Arc<Core>, mut rx: mpsc::Receiver<SubmitItem>) {
    let inflight = Arc::new(tokio::sync::Semaphore::new(4));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        batch.retain(|i| !i.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let core = core.clone();
        tokio::spawn(async move {
            let (reqs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|i| (i.req, i.reply)).unzip();
            let n = reqs.len();
            match core.propose(Command::SubmitJobs(SubmitJobsV1 { requests: reqs })).await {
                Ok(r) if r.submitted.len() == n => {
                    for (reply, s) in replies.into_iter().zip(r.submitted) {
                        let _ = reply.send(Ok(s));
                    }
                }
                Ok(_) => {
                    for reply in replies {
                        let _ = reply.send(Err(SchedulerError::Raft("submission batch answered short".into())));
                    }
                }
                Err(e) => {
                    let status: tonic::Status = e.into();
                    for reply in replies {
                        let _ = reply.send(Err(SchedulerError::Remote(status.clone())));
                    }
                }
            }
            drop(permit);
        });
    }
}
