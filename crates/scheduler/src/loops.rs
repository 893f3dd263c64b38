//! Background loops that act only while this node leads: placement, worker liveness, the serving reconciler,
//! retention of finished jobs and garbage collection of unreferenced blobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{AssignV1, JobReasonV1, PlacementV1, SetJobReasonsV1, WorkerLostV1, WorkerState};
use tokio::sync::watch;

use crate::core::Core;
use crate::placement::{ClusterView, schedule};
use crate::queries;

const WAITING: &str = "waiting for free resources";
/// After a leader change, workers get this many heartbeat timeouts before they can be declared lost.
pub const TAKEOVER_GRACE_TIMEOUTS: u32 = 3;
/// Bounds of the time from one leader-loop round's start to the next's (see [`round_gap`]).
const MIN_ROUND_GAP: Duration = Duration::from_millis(2);
const MAX_ROUND_GAP: Duration = Duration::from_millis(50);
/// A round may take at most 1 / this of a core while the state keeps changing (the gap counts from a round's start).
const ROUND_GAP_FACTOR: u32 = 10;

/// The least time from the start of a round that computed for `cost` to the next round: long enough that the loop
/// takes at most a tenth of a core however fast entries apply (a burst of entries costs one round, not one per
/// entry), short enough that a job submitted to an idle cluster waits a couple of milliseconds for its round, not
/// tens (sweep trials start one after the other, each behind this gap).
pub fn round_gap(cost: Duration) -> Duration {
    (cost * ROUND_GAP_FACTOR).clamp(MIN_ROUND_GAP, MAX_ROUND_GAP)
}

/// Paces the rounds of a leader loop (placement, sweeps) by [`round_gap`] of each round's computing time.
pub struct Pacer {
    last_round: Instant,
    gap: Duration,
}

impl Pacer {
    /// `first_gap`: the least time before the first round.
    pub fn new(first_gap: Duration) -> Self {
        Pacer { last_round: Instant::now(), gap: first_gap }
    }

    /// Waits until the gap since the previous round's start has passed, then marks this round's start.
    pub async fn start_round(&mut self) {
        let since = self.last_round.elapsed();
        if since < self.gap {
            tokio::time::sleep(self.gap - since).await;
        }
        self.last_round = Instant::now();
    }

    /// This round's computing is done (not its proposals, which wait on the log): sets the gap before the next.
    pub fn computed(&mut self) {
        self.gap = round_gap(self.last_round.elapsed());
    }
}
/// Bounds one reasons command (and so one Raft entry).
const MAX_REASONS_PER_ROUND: usize = 2000;

/// Makes placement incremental. A job that could not be placed stays unplaceable for as long as the workers'
/// free resources, labels and liveness are unchanged (placing other jobs only takes resources away), so such
/// jobs are skipped until the cluster view changes; only jobs submitted since (higher seq) are evaluated in
/// between. A requeued job keeps its old seq, but a requeue frees resources, which changes the view.
#[derive(Default)]
struct PlacementMemo {
    fingerprint: u64,
    /// Every pending job with seq <= this was tried against the current view and could not be placed.
    tried_up_to: u64,
}

impl PlacementMemo {
    fn reset_if_changed(&mut self, view: &ClusterView) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for w in &view.workers {
            w.id.hash(&mut h);
            (w.free.cpu_millis, w.free.memory_bytes, w.free.gpus, w.tasks, w.max_tasks).hash(&mut h);
            (w.capacity.cpu_millis, w.capacity.memory_bytes, w.capacity.gpus).hash(&mut h);
            w.labels.hash(&mut h);
        }
        let fp = h.finish();
        if fp != self.fingerprint {
            self.fingerprint = fp;
            self.tried_up_to = 0;
        }
    }

    /// Free resources changed: everything is evaluated again next round.
    fn forget(&mut self) {
        self.tried_up_to = 0;
        self.fingerprint = 0;
    }
}

/// Places pending jobs whenever the state changes (and at least every 250 ms) while this node leads. Rounds are
/// [`round_gap`] apart.
pub async fn run_placement(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut version = core.version.clone();
    let mut pacer = Pacer::new(MAX_ROUND_GAP);
    let mut memo = PlacementMemo::default();
    loop {
        tokio::select! {
            _ = version.changed() => {},
            _ = tokio::time::sleep(Duration::from_millis(250)) => {},
            _ = stop.changed() => return,
        }
        pacer.start_round().await;
        if !core.is_leader() {
            continue;
        }
        let timeout = core.cfg.worker_timeout;
        let (pending, view, reasons) = {
            let a = core.state.read().expect("state lock");
            let live_map = core.liveness.lock().expect("liveness lock");
            let live = |id: &str| live_map.get(id).is_some_and(|t| t.elapsed() < timeout);
            let v = queries::placement_view(&a.state, &live, core.cfg.default_strategy);
            memo.reset_if_changed(&v);
            let p = queries::pending_for_placement(&a.state, memo.tried_up_to);
            let reasons: std::collections::HashMap<String, String> = p
                .iter()
                .filter_map(|j| a.state.jobs.by_id.get(&j.id).map(|x| (j.id.clone(), x.reason.clone())))
                .collect();
            (p, v, reasons)
        };
        if pending.is_empty() {
            pacer.computed();
            continue;
        }
        let s = schedule(&pending, &view);
        pacer.computed();
        let placed_any = !s.assignments.is_empty();
        if placed_any {
            let placements = s
                .assignments
                .iter()
                .map(|a| PlacementV1 { job_id: a.job_id.clone(), workers: a.workers.clone() })
                .collect();
            if let Err(e) = core.propose(Command::Assign(AssignV1 { placements })).await {
                tracing::warn!("proposing placements: {e}");
                continue;
            }
        }
        // Say why a job waits, only when that changes: one Raft write per round, bounded in size.
        let placed: std::collections::HashSet<&str> = s.assignments.iter().map(|a| a.job_id.as_str()).collect();
        let unsched: std::collections::HashMap<&str, &str> =
            s.unschedulable.iter().map(|(j, r)| (j.as_str(), r.as_str())).collect();
        let mut changes = Vec::new();
        let mut deferred = std::collections::BTreeSet::new();
        for j in &pending {
            if placed.contains(j.id.as_str()) {
                continue;
            }
            let old = reasons.get(&j.id).map(String::as_str).unwrap_or("");
            let new = match unsched.get(j.id.as_str()) {
                Some(r) => *r,
                None if old.starts_with("unschedulable") => WAITING,
                None => continue,
            };
            if old != new {
                if changes.len() < MAX_REASONS_PER_ROUND {
                    changes.push(JobReasonV1 { job_id: j.id.clone(), reason: new.to_string() });
                } else {
                    deferred.insert(j.seq);
                }
            }
        }
        let mut recorded = true;
        if !changes.is_empty()
            && let Err(e) = core.propose(Command::SetJobReasons(SetJobReasonsV1 { reasons: changes })).await
        {
            tracing::warn!("proposing job reasons: {e}");
            recorded = false;
        }
        if placed_any {
            memo.forget();
        } else if recorded {
            // Advance past every job tried, but not past one whose reason is still to be written.
            let first_deferred = deferred.iter().min().copied().unwrap_or(u64::MAX);
            let last = pending.iter().map(|j| j.seq).filter(|s| *s < first_deferred).max();
            if let Some(last) = last {
                memo.tried_up_to = memo.tried_up_to.max(last);
            }
        }
    }
}

/// Keeps this node's `grpc.health.v1` status current, for the whole server ("") and each aidos service by name:
/// SERVING while the node knows a leader (it can answer or relay every call), NOT_SERVING otherwise.
pub async fn run_health(
    core: Arc<Core>,
    health: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut services: Vec<String> = aidos_api::every_rpc()
        .iter()
        .filter_map(|p| p.trim_start_matches('/').split_once('/').map(|(s, _)| s.to_string()))
        .collect();
    services.dedup();
    services.push(String::new());
    let mut last = None;
    loop {
        let serving = core.leader_id().is_some();
        if last != Some(serving) {
            let status =
                if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
            for s in &services {
                health.set_service_status(s, status).await;
            }
            last = Some(serving);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {},
            _ = stop.changed() => return,
        }
    }
}

/// Declares workers lost when they miss their heartbeat deadline. A new leader first gives every worker
/// [`TAKEOVER_GRACE_TIMEOUTS`] timeouts of grace, since heartbeats sent to the old leader are not in its memory and a
/// busy worker needs time to find the new one.
pub async fn run_liveness(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut leading = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {},
            _ = stop.changed() => return,
        }
        if !core.is_leader() {
            leading = false;
            continue;
        }
        let now = Instant::now();
        let lost: Vec<(String, Duration)> = {
            let a = core.state.read().expect("state lock");
            let mut live = core.liveness.lock().expect("liveness lock");
            if !leading {
                // Takeover grace: every worker gets TAKEOVER_GRACE_TIMEOUTS timeouts from now (a last-seen time in
                // the future) to notice the failover, wait out the election and find this leader.
                leading = true;
                live.clear();
                let extra = core.cfg.worker_timeout * (TAKEOVER_GRACE_TIMEOUTS - 1);
                for w in a.state.jobs.workers.values().filter(|w| w.state == WorkerState::Ready as i32) {
                    live.insert(w.id.clone(), now + extra);
                }
            }
            a.state
                .jobs
                .workers
                .values()
                .filter(|w| w.state == WorkerState::Ready as i32)
                .filter_map(|w| {
                    let seen = *live.entry(w.id.clone()).or_insert(now);
                    let silent = now.saturating_duration_since(seen);
                    (silent > core.cfg.worker_timeout).then(|| (w.id.clone(), silent))
                })
                .collect()
        };
        for (id, silent) in lost {
            tracing::warn!(worker = %id, "declaring worker lost after {silent:?} without a heartbeat");
            let reason = format!("no heartbeat for {:.1}s", silent.as_secs_f64());
            if let Err(e) = core.propose(Command::WorkerLost(WorkerLostV1 { worker_id: id, reason })).await {
                tracing::warn!("proposing worker lost: {e}");
            }
        }
    }
}

/// Moves deployments towards their spec (see `reconcile`) whenever the state changes, and at least every 500 ms,
/// while this node leads. One round proposes its actions and waits for them to apply before the next round reads
/// the state again, so an action is never proposed twice.
pub async fn run_reconciler(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    use crate::reconcile::{Action, reconcile};
    use aidos_api::v1::{CancelJobV1, SetDeploymentStatusV1, SubmitJobsV1, SubmitRequest};
    let mut version = core.version.clone();
    loop {
        tokio::select! {
            _ = version.changed() => {},
            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
            _ = stop.changed() => return,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !core.is_leader() {
            continue;
        }
        let actions = {
            let a = core.state.read().expect("state lock");
            reconcile(&a.state, aidos_api::now_ms())
        };
        let mut submits = Vec::new();
        for action in actions {
            let res = match action {
                Action::Submit(spec) => {
                    submits.push(SubmitRequest { spec: Some(*spec), request_id: String::new() });
                    continue;
                }
                Action::Cancel { job_id, why } => {
                    tracing::info!(job = %job_id, "stopping serve replica: {why}");
                    core.propose(Command::CancelJob(CancelJobV1 { job_id, reason: why })).await.map(|_| ())
                }
                Action::SetStatus { name, status } => {
                    if !status.is_empty() {
                        tracing::warn!(deployment = %name, "{status}");
                    }
                    core.propose(Command::SetDeploymentStatus(SetDeploymentStatusV1 { name, status })).await.map(|_| ())
                }
            };
            if let Err(e) = res {
                tracing::warn!("reconciling deployments: {e}");
            }
        }
        if !submits.is_empty() {
            tracing::info!("starting {} serve replica(s)", submits.len());
            if let Err(e) = core.propose(Command::SubmitJobs(SubmitJobsV1 { requests: submits })).await {
                tracing::warn!("submitting serve replicas: {e}");
            }
        }
    }
}

/// Every second, while this node leads: moves the replica count of every autoscaled deployment (see `autoscale`)
/// and proposes the new count alone (`ScaleDeploymentV1`: it keeps the generation, so no replica restarts). The
/// recommendation history lives here, in the leader's memory: a new leader starts a fresh one.
pub async fn run_autoscaler(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    use crate::autoscale::{History, decide};
    use aidos_api::v1::ScaleDeploymentV1;
    use std::collections::HashMap;
    let mut histories: HashMap<String, History> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {},
            _ = stop.changed() => return,
        }
        if !core.is_leader() {
            histories.clear();
            continue;
        }
        let now = aidos_api::now_ms();
        let deployments = {
            let st = &core.state.read().expect("state lock").state;
            if !st.serving.deployments.values().any(|d| d.autoscale.is_some()) {
                histories.clear();
                continue;
            }
            crate::queries::deployment_views(st, "")
        };
        histories.retain(|n, _| deployments.iter().any(|d| &d.name == n && d.autoscale.is_some()));
        let mut changes = Vec::new();
        {
            let loads = core.loads.lock().expect("loads lock");
            for d in deployments {
                let Some(a) = d.autoscale else { continue };
                let load = crate::queries::in_flight(&d, &loads, now);
                let want = decide(&a, d.replicas, load, histories.entry(d.name.clone()).or_default(), now);
                if want != d.replicas {
                    tracing::info!(
                        deployment = %d.name,
                        "autoscaling {} -> {want} replicas ({:.2} requests in flight, target {} per replica)",
                        d.replicas,
                        load.unwrap_or(0.0),
                        a.target_in_flight
                    );
                    changes.push(ScaleDeploymentV1 { name: d.name.clone(), replicas: want });
                }
            }
        }
        for s in changes {
            if let Err(e) = core.propose(Command::ScaleDeployment(s)).await {
                tracing::warn!("autoscaling: {e}");
            }
        }
    }
}

/// Every `retention_interval`: while this node leads, compacts the finished jobs `retention::select` chooses (in
/// commands of at most `retention::MAX_IDS_PER_COMMAND` ids); on every node, deletes the task log files of jobs that
/// are gone (see `retention`).
pub async fn run_retention(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    use crate::retention::{MAX_IDS_PER_COMMAND, select};
    use aidos_api::v1::CompactJobsV1;
    let interval = core.cfg.retention_interval;
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {},
            _ = stop.changed() => return,
        }
        if core.is_leader() {
            let ids = {
                let a = core.state.read().expect("state lock");
                select(&queries::finished_jobs(&a.state), aidos_api::now_ms(), &core.cfg.retention)
            };
            let mut compacted = 0;
            for batch in ids.chunks(MAX_IDS_PER_COMMAND) {
                match core.propose(Command::CompactJobs(CompactJobsV1 { job_ids: batch.to_vec() })).await {
                    Ok(_) => compacted += batch.len(),
                    Err(e) => {
                        tracing::warn!("proposing job compaction: {e}");
                        break;
                    }
                }
            }
            if compacted > 0 {
                let p = &core.cfg.retention;
                tracing::info!(
                    "retention: compacted {compacted} finished job(s) (keeping at most {} finished jobs, for at most {}s)",
                    p.max_finished_jobs,
                    p.max_age.as_secs()
                );
            }
        }
        if let Err(e) = drop_task_logs_of_compacted_jobs(&core).await {
            tracing::warn!("retention: removing task logs of compacted jobs: {e}");
        }
    }
}

/// Deletes this node's task log files ([`crate::task_logs::TaskLogs`]) whose job is gone from the applied state;
/// returns how many.
async fn drop_task_logs_of_compacted_jobs(core: &Core) -> std::io::Result<usize> {
    let names = core.logs.file_names().await?;
    let stale = {
        let a = core.state.read().expect("state lock");
        let jobs = &a.state.jobs;
        crate::retention::stale_log_files(names.iter().map(String::as_str), jobs.next_job_seq, |id| {
            jobs.by_id.contains_key(id)
        })
    };
    if stale.is_empty() {
        return Ok(0);
    }
    core.logs.remove_files(stale).await
}

/// Every `blob_gc_interval`, while this node leads and has a blob store: deletes the blobs nothing references whose
/// last put is older than `blob_gc_grace` (see `gc` for the round and why it never deletes a referenced blob).
pub async fn run_blob_gc(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let interval = core.cfg.blob_gc_interval;
    let Some(store) = core.blobs.clone().filter(|_| !interval.is_zero()) else { return };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {},
            _ = stop.changed() => return,
        }
        if !core.is_leader() {
            continue;
        }
        match blob_gc_round(&core, &store).await {
            Ok((ids, _)) if ids.is_empty() => {}
            Ok((ids, bytes)) => {
                let shown: Vec<String> = ids.iter().take(10).map(|id| id.to_string()).collect();
                let more = if ids.len() > shown.len() {
                    format!(" and {} more", ids.len() - shown.len())
                } else {
                    String::new()
                };
                tracing::info!(
                    "blob gc: deleted {} unreferenced blob(s), {bytes} bytes: {}{more}",
                    ids.len(),
                    shown.join(", ")
                );
            }
            Err(e) => tracing::warn!("blob gc: {e}"),
        }
    }
}

/// One collection round (see `gc`): returns the blobs it deleted, and their bytes.
async fn blob_gc_round(
    core: &Core,
    store: &Arc<dyn aidos_blob::BlobStore>,
) -> Result<(Vec<aidos_blob::BlobId>, u64), String> {
    use std::time::SystemTime;
    let grace = core.cfg.blob_gc_grace;
    let s = store.clone();
    let listed = tokio::task::spawn_blocking(move || s.list())
        .await
        .map_err(|e| format!("listing task: {e}"))?
        .map_err(|e| format!("listing the blob store: {e}"))?;
    // `now` before the state is read: a reference committed after the read names a blob put after now - grace.
    let now = SystemTime::now();
    let referenced = {
        let a = core.state.read().expect("state lock");
        queries::referenced_blobs(&a.state)
    };
    let candidates = crate::gc::collectable(&listed, &referenced, now, grace);
    let Some(cutoff) = now.checked_sub(grace) else { return Ok((Vec::new(), 0)) };
    let sizes: std::collections::HashMap<&aidos_blob::BlobId, u64> = listed.iter().map(|b| (&b.id, b.size)).collect();
    let (mut all_deleted, mut bytes, mut failures) = (Vec::new(), 0, Vec::new());
    for batch in candidates.chunks(crate::gc::BATCH) {
        if !core.is_leader() {
            break;
        }
        let claimed = core.gc.claim(batch);
        // Read again after claiming: a commit that applied since the first read is seen now; one in flight pinned
        // its blobs (not claimed); a later one waits for the release below.
        let doomed: Vec<aidos_blob::BlobId> = {
            let a = core.state.read().expect("state lock");
            let referenced = queries::referenced_blobs(&a.state);
            claimed.iter().filter(|id| !referenced.contains(id.as_str())).cloned().collect()
        };
        let s = store.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut deleted = Vec::new();
            let mut failed = Vec::new();
            for id in doomed {
                match s.delete_if_older(&id, cutoff) {
                    Ok(true) => deleted.push(id),
                    Ok(false) => {}
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (deleted, failed)
        })
        .await;
        let (deleted, failed) = match done {
            Ok(d) => d,
            Err(e) => {
                core.gc.release(&claimed, &[], grace);
                return Err(format!("delete task: {e}"));
            }
        };
        core.gc.release(&claimed, &deleted, grace);
        for id in &deleted {
            tracing::debug!(blob = %id, "blob gc: deleted");
            bytes += sizes.get(id).copied().unwrap_or(0);
        }
        all_deleted.extend(deleted);
        failures.extend(failed);
    }
    if let Some(first) = failures.first() {
        return Err(format!(
            "deleted {} blob(s), {} delete(s) failed, first: {first}",
            all_deleted.len(),
            failures.len()
        ));
    }
    Ok((all_deleted, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_follow_cheap_work_closely_and_expensive_work_at_a_tenth_of_a_core() {
        // Cheap rounds: the floor, so a lone submission is placed within milliseconds.
        assert_eq!(round_gap(Duration::ZERO), MIN_ROUND_GAP);
        assert_eq!(round_gap(Duration::from_micros(100)), MIN_ROUND_GAP);
        // In between: ten times the cost from round start to round start, so placement takes a tenth of the time.
        assert_eq!(round_gap(Duration::from_millis(1)), Duration::from_millis(10));
        // Expensive rounds: the ceiling, so placement still runs 20 times a second.
        assert_eq!(round_gap(Duration::from_millis(40)), MAX_ROUND_GAP);
    }
}
