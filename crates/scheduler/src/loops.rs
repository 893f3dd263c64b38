//! Background loops that act only while this node leads: placement and worker liveness.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{
    AssignV1, JobReasonV1, JobState, PlacementStrategy, PlacementV1, SetJobReasonsV1, WorkerLostV1, WorkerState,
};
use tokio::sync::watch;

use crate::core::Core;
use crate::placement::{ClusterView, PendingJob, Strategy, WorkerView, schedule};
use crate::state::ClusterState;

const WAITING: &str = "waiting for free resources";
/// Bounds one reasons command (and so one Raft entry).
const MAX_REASONS_PER_ROUND: usize = 2000;

/// Builds placement's inputs: pending jobs and the ready workers that the leader has heard from in time.
pub fn placement_inputs(st: &ClusterState, live: &dyn Fn(&str) -> bool, default: Strategy) -> (Vec<PendingJob>, ClusterView) {
    let alloc = st.allocated();
    let mut tasks_on: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    let mut pending = Vec::new();
    for j in st.jobs.values() {
        if j.state == JobState::Running as i32 {
            for t in &j.tasks {
                if let Some(a) = t.attempts.last() {
                    *tasks_on.entry(a.worker_id.as_str()).or_default() += 1;
                }
            }
        }
        if j.state != JobState::Pending as i32 {
            continue;
        }
        let spec = j.spec.clone().unwrap_or_default();
        pending.push(PendingJob {
            id: j.id.clone(),
            priority: spec.priority,
            seq: j.seq,
            replicas: spec.replicas.max(1),
            resources: spec.resources.unwrap_or_default(),
            constraints: spec.constraints,
            strategy: match PlacementStrategy::try_from(spec.placement) {
                Ok(PlacementStrategy::Binpack) => Some(Strategy::BinPack),
                Ok(PlacementStrategy::Spread) => Some(Strategy::Spread),
                _ => None,
            },
        });
    }
    let workers = st
        .workers
        .values()
        .filter(|w| w.state == WorkerState::Ready as i32 && live(&w.id))
        .map(|w| {
            let cap = w.capacity.unwrap_or_default();
            let used = alloc.get(&w.id).copied().unwrap_or_default();
            WorkerView {
                id: w.id.clone(),
                capacity: cap,
                free: aidos_api::v1::Resources {
                    cpu_millis: cap.cpu_millis.saturating_sub(used.cpu_millis),
                    memory_bytes: cap.memory_bytes.saturating_sub(used.memory_bytes),
                    gpus: cap.gpus.saturating_sub(used.gpus),
                },
                labels: w.labels.clone(),
                tasks: tasks_on.get(w.id.as_str()).copied().unwrap_or(0),
            }
        })
        .collect();
    (pending, ClusterView { workers, default_strategy: default })
}

/// Places pending jobs whenever the state changes (and at least every 250 ms) while this node leads.
pub async fn run_placement(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut version = core.version.clone();
    loop {
        tokio::select! {
            _ = version.changed() => {},
            _ = tokio::time::sleep(Duration::from_millis(250)) => {},
            _ = stop.changed() => return,
        }
        if !core.is_leader() {
            continue;
        }
        let timeout = core.cfg.worker_timeout;
        let (pending, view, reasons) = {
            let a = core.state.read().expect("state lock");
            let live_map = core.liveness.lock().expect("liveness lock");
            let live = |id: &str| live_map.get(id).is_some_and(|t| t.elapsed() < timeout);
            let (p, v) = placement_inputs(&a.state, &live, core.cfg.default_strategy);
            let reasons: std::collections::HashMap<String, String> =
                p.iter().filter_map(|j| a.state.jobs.get(&j.id).map(|x| (j.id.clone(), x.reason.clone()))).collect();
            (p, v, reasons)
        };
        if pending.is_empty() {
            continue;
        }
        let s = schedule(&pending, &view);
        if !s.assignments.is_empty() {
            let placements =
                s.assignments.iter().map(|a| PlacementV1 { job_id: a.job_id.clone(), workers: a.workers.clone() }).collect();
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
                changes.push(JobReasonV1 { job_id: j.id.clone(), reason: new.to_string() });
                if changes.len() >= MAX_REASONS_PER_ROUND {
                    break;
                }
            }
        }
        if !changes.is_empty()
            && let Err(e) = core.propose(Command::SetJobReasons(SetJobReasonsV1 { reasons: changes })).await
        {
            tracing::warn!("proposing job reasons: {e}");
        }
    }
}

/// Declares workers lost when they miss their heartbeat deadline. A new leader first gives every worker a full
/// timeout of grace, since heartbeats sent to the old leader are not in its memory.
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
                leading = true;
                live.clear();
            }
            a.state
                .workers
                .values()
                .filter(|w| w.state == WorkerState::Ready as i32)
                .filter_map(|w| {
                    let seen = *live.entry(w.id.clone()).or_insert(now);
                    let silent = now.duration_since(seen);
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
