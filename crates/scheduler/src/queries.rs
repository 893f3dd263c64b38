//! Every read over the applied state: pure functions of `&ClusterState` (plus, where a read needs it, leader
//! memory passed in), answering the leader path, the gRPC adapters and the leader's loops. Nothing here locks,
//! proposes or does I/O; callers hold the state lock for the duration of one call only.
//!
//! Reads that span domains (a deployment with its replica jobs, a run looked up by its job) are here and only here.

use std::collections::{BTreeMap, HashMap};

use aidos_api::v1::*;

use crate::error::SchedulerError;
use crate::placement::{ClusterView, PendingJob, Strategy, WorkerView};
use crate::state::registry::run_id;
use crate::state::serving::replica_of;
use crate::state::tracking::DEFAULT_EXPERIMENT;
use crate::state::{ClusterState, add, jobs::serve_spec};

// ---- jobs and workers ------------------------------------------------------------------------------------------

pub fn job(st: &ClusterState, id: &str) -> Result<Job, SchedulerError> {
    st.jobs.by_id.get(id).cloned().ok_or_else(|| SchedulerError::NotFound(format!("job {id} not found")))
}

/// The jobs of `project` that `req` asks for, newest first: one page of at most `limit` (0: all), after the page
/// that `page_token` ends (the `seq` of its last job), with the count of every match.
///
/// Cost: without filters, a walk of the project's seq index (`JobsState::by_project`) newest first that stops
/// after the page, its length the total: O(limit · log n). With filters, one pass over
/// every job (cheapest checks first) with a heap of `limit`: O(n log limit). Only the page's jobs are cloned.
/// With 100,000 jobs: benches/README.md ("jobs list").
pub fn list_jobs(st: &ClusterState, req: &ListJobsRequest, project: &str) -> Result<ListJobsResponse, SchedulerError> {
    let before = match req.page_token.as_str() {
        "" => u64::MAX,
        t => t
            .parse::<u64>()
            .map_err(|_| SchedulerError::InvalidArgument(format!("page_token {t:?}: not a token this API gave")))?,
    };
    // Inline fields first (state, kind), then the ones behind pointers (project, name, labels).
    let matches = |j: &Job| {
        (req.states.is_empty() || req.states.contains(&j.state))
            && j.spec.as_ref().is_some_and(|s| {
                (req.kinds.is_empty() || req.kinds.contains(&s.kind))
                    && aidos_api::auth::project_or_default(&s.project) == project
                    && s.name.starts_with(&req.name_prefix)
                    && req.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
            })
    };
    let filtered =
        !req.states.is_empty() || !req.kinds.is_empty() || !req.name_prefix.is_empty() || !req.labels.is_empty();
    let limit = if req.limit == 0 { usize::MAX } else { req.limit as usize };
    let (page, more, total): (Vec<&Job>, bool, u64) = if filtered {
        let (mut total, mut eligible) = (0u64, 0usize);
        // The `limit` newest matches before `before`: a min-heap on seq, its root the oldest kept.
        let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, &str)>> = Default::default();
        for j in st.jobs.by_id.values().filter(|j| matches(j)) {
            total += 1;
            if j.seq >= before {
                continue;
            }
            eligible += 1;
            heap.push(std::cmp::Reverse((j.seq, j.id.as_str())));
            if heap.len() > limit {
                heap.pop();
            }
        }
        let mut keep: Vec<(u64, &str)> = heap.into_iter().map(|r| r.0).collect();
        keep.sort_unstable_by(|a, b| b.cmp(a));
        let more = eligible > keep.len();
        (keep.iter().filter_map(|(_, id)| st.jobs.by_id.get(*id)).collect(), more, total)
    } else {
        let Some(mine) = st.jobs.by_project.get(project) else {
            return Ok(ListJobsResponse::default());
        };
        let mut newest_first = mine.range(..before).rev().filter_map(|(_, id)| st.jobs.by_id.get(id));
        let page: Vec<&Job> = newest_first.by_ref().take(limit).collect();
        let more = newest_first.next().is_some();
        (page, more, mine.len() as u64)
    };
    let next_page_token = if more { page.last().map(|j| j.seq.to_string()).unwrap_or_default() } else { String::new() };
    Ok(ListJobsResponse { jobs: page.into_iter().cloned().collect(), next_page_token, total })
}

/// The project a job belongs to.
pub fn job_project(j: &Job) -> &str {
    aidos_api::auth::project_or_default(j.spec.as_ref().map_or("", |s| s.project.as_str()))
}

/// Job `id` when it belongs to `project`; NOT_FOUND otherwise (another project's jobs are not even named).
pub fn job_in(st: &ClusterState, id: &str, project: &str) -> Result<Job, SchedulerError> {
    match st.jobs.by_id.get(id) {
        Some(j) if job_project(j) == project => Ok(j.clone()),
        _ => Err(SchedulerError::NotFound(format!("job {id} not found in project {project}"))),
    }
}

/// True when the job is gone or has ended.
pub fn job_ended(st: &ClusterState, id: &str) -> bool {
    st.jobs.by_id.get(id).is_none_or(|j| JobState::try_from(j.state).is_ok_and(|s| s.is_terminal()))
}

/// Every worker with what is allocated on it now.
pub fn list_workers(st: &ClusterState) -> ListWorkersResponse {
    let alloc = st.jobs.allocated();
    let workers = st
        .jobs
        .workers
        .values()
        .map(|w| {
            let mut w = w.clone();
            let mut r = Resources::default();
            if let Some(x) = alloc.get(&w.id) {
                add(&mut r, x);
            }
            w.allocated = Some(r);
            w
        })
        .collect();
    ListWorkersResponse { workers }
}

/// Finished jobs that retention may compact (`retention::select`): every succeeded, failed or cancelled job, except
/// the failed replicas of a deployment's current generation (the reconciler's crash-loop evidence) and the last jobs
/// of paused sweep trials (a promotion resumes from that job's checkpoint, found through the job; at most
/// `max_trials` per sweep).
pub fn finished_jobs(st: &ClusterState) -> Vec<crate::retention::FinishedJob> {
    let paused: std::collections::HashSet<&str> = st
        .sweeps
        .sweeps
        .values()
        .flat_map(|s| s.trials.iter())
        .filter(|t| t.state == TrialState::Paused as i32)
        .map(|t| t.job_id.as_str())
        .collect();
    let pinned = |j: &Job| {
        paused.contains(j.id.as_str())
            || j.state == JobState::Failed as i32
                && serve_spec(j).is_some_and(|s| {
                    st.serving.deployments.get(&s.deployment).is_some_and(|d| d.generation == s.generation)
                })
    };
    st.jobs
        .by_id
        .values()
        .filter(|j| JobState::try_from(j.state).is_ok_and(|s| s.is_terminal()) && !pinned(j))
        .map(|j| crate::retention::FinishedJob { id: j.id.clone(), seq: j.seq, ended_ms: j.updated_at_ms })
        .collect()
}

/// Workers in a given state.
pub fn count_workers(st: &ClusterState, s: WorkerState) -> u32 {
    st.jobs.workers.values().filter(|w| w.state == s as i32).count() as u32
}

/// Attempts a worker claims to run that the cluster no longer wants on it.
pub fn unwanted(st: &ClusterState, worker_id: &str, running: &[AttemptRef]) -> Vec<AttemptRef> {
    running.iter().filter(|r| st.jobs.check_current(worker_id, r).is_err()).cloned().collect()
}

/// The attempts the state assigns to `worker_id` that are active now, with what the worker needs to run them.
pub fn active_for(st: &ClusterState, worker_id: &str) -> Vec<TaskAssignment> {
    let mut out = Vec::new();
    for j in st.jobs.running_jobs() {
        for t in &j.tasks {
            let Some(a) = t.attempts.last() else { continue };
            if a.worker_id != worker_id || !TaskState::try_from(a.state).is_ok_and(|s| s.is_active()) {
                continue;
            }
            let spec = j.spec.clone().unwrap_or_default();
            let env = [("AIDOS_JOB_NAME".to_string(), spec.name.clone())].into();
            out.push(TaskAssignment {
                attempt: Some(AttemptRef {
                    job_id: j.id.clone(),
                    rank: t.rank,
                    attempt: a.attempt,
                    fencing_token: a.fencing_token,
                }),
                world_size: crate::state::jobs::generation(j).count() as u32,
                spec: Some(spec),
                env,
            });
        }
    }
    out
}

/// Whether `worker_id` ever ran the attempt a log chunk names (chunks for anything else are dropped).
pub fn ran_attempt(st: &ClusterState, worker_id: &str, r: &AttemptRef) -> bool {
    st.jobs
        .by_id
        .get(&r.job_id)
        .and_then(|j| j.tasks.get(r.rank as usize))
        .is_some_and(|t| t.attempts.iter().any(|x| x.fencing_token == r.fencing_token && x.worker_id == worker_id))
}

/// The ready workers that the leader has heard from in time, with their free resources, as placement sees them.
pub fn placement_view(st: &ClusterState, live: &dyn Fn(&str) -> bool, default: Strategy) -> ClusterView {
    // Resources and task slots in use: the same count the apply-time re-check makes.
    let usage = st.jobs.usage();
    let mut groups_on: HashMap<&str, BTreeMap<String, u32>> = HashMap::new();
    for j in st.jobs.running_jobs() {
        let Some(group) = spread_group(j) else { continue };
        for t in &j.tasks {
            if let Some(a) = t.attempts.last()
                && TaskState::try_from(a.state).is_ok_and(|s| s.is_active())
            {
                *groups_on.entry(a.worker_id.as_str()).or_default().entry(group.clone()).or_default() += 1;
            }
        }
    }
    let workers = st
        .jobs
        .workers
        .values()
        .filter(|w| w.state == WorkerState::Ready as i32 && live(&w.id))
        .map(|w| {
            let cap = w.capacity.unwrap_or_default();
            let (used, tasks) = usage.get(&w.id).copied().unwrap_or_default();
            WorkerView {
                id: w.id.clone(),
                capacity: cap,
                free: Resources {
                    cpu_millis: cap.cpu_millis.saturating_sub(used.cpu_millis),
                    memory_bytes: cap.memory_bytes.saturating_sub(used.memory_bytes),
                    gpus: cap.gpus.saturating_sub(used.gpus),
                },
                labels: w.labels.clone(),
                tasks,
                max_tasks: w.max_tasks,
                groups: groups_on.remove(w.id.as_str()).unwrap_or_default(),
            }
        })
        .collect();
    ClusterView { workers, default_strategy: default }
}

/// The anti-affinity group of a job: a serving replica's deployment and generation (see `placement`). Per
/// generation, so that the replicas a rollout starts spread among themselves rather than around the old ones
/// they replace.
fn spread_group(j: &Job) -> Option<String> {
    serve_spec(j).map(|s| format!("{}#{}", s.deployment, s.generation))
}

/// The pending jobs submitted after `after_seq`, as placement sees them.
pub fn pending_for_placement(st: &ClusterState, after_seq: u64) -> Vec<PendingJob> {
    st.jobs
        .pending_jobs(after_seq)
        .map(|j| {
            let spec = j.spec.as_ref().cloned().unwrap_or_default();
            PendingJob {
                id: j.id.clone(),
                priority: spec.priority,
                seq: j.seq,
                replicas: spec.replicas.max(1),
                min_ranks: crate::state::jobs::min_ranks(j),
                resources: spec.resources.unwrap_or_default(),
                constraints: spec.constraints,
                strategy: match PlacementStrategy::try_from(spec.placement) {
                    Ok(PlacementStrategy::Binpack) => Some(Strategy::BinPack),
                    Ok(PlacementStrategy::Spread) => Some(Strategy::Spread),
                    _ => None,
                },
                group: spread_group(j),
            }
        })
        .collect()
}

// ---- datasets, runs, models ------------------------------------------------------------------------------------

/// Whether an object recording `owner` (`""`: from before projects, the default project's) is `project`'s.
fn owned_by(owner: &str, project: &str) -> bool {
    aidos_api::auth::project_or_default(owner) == project
}

/// The datasets of `project` (all of a name's versions belong to the project of its first).
pub fn list_datasets(st: &ClusterState, r: &ListDatasetsRequest, project: &str) -> ListDatasetsResponse {
    let named = st.registry.datasets.iter().filter(|(n, vs)| {
        (r.name.is_empty() || **n == r.name) && vs.first().is_some_and(|f| owned_by(&f.project, project))
    });
    ListDatasetsResponse { datasets: named.flat_map(|(_, vs)| vs.iter().cloned()).collect() }
}

/// A dataset version of `project`; another project's is NOT_FOUND, as if it did not exist.
pub fn get_dataset(st: &ClusterState, r: &GetDatasetRequest, project: &str) -> Result<DatasetManifest, SchedulerError> {
    let mine = st.registry.datasets.get(&r.name).and_then(|v| v.first()).is_some_and(|f| owned_by(&f.project, project));
    st.registry.dataset(&r.name, r.version).filter(|_| mine).cloned().ok_or_else(|| {
        let have = if mine { st.registry.datasets.get(&r.name).map(|v| v.len()).unwrap_or(0) } else { 0 };
        SchedulerError::NotFound(match (have, r.version) {
            (0, _) => format!("dataset {} not found", r.name),
            (n, v) => format!("dataset {}@v{v} not found (latest is v{n})", r.name),
        })
    })
}

pub fn latest_checkpoint(st: &ClusterState, job_id: &str) -> LatestCheckpointResponse {
    // A job with no checkpoint of its own resumes from the job its train spec names (a promoted sweep trial
    // continues its last rung's job), and that one from its own source: at most MAX_RESUME_HOPS jobs back.
    // Only jobs of the asking job's project are followed (and only jobs the state still holds).
    const MAX_RESUME_HOPS: usize = 64;
    let project = st.jobs.by_id.get(job_id).map(job_project);
    let mut id = job_id;
    for _ in 0..=MAX_RESUME_HOPS {
        if let Some((run_id, ck)) = st.registry.latest_checkpoint(id) {
            return LatestCheckpointResponse { checkpoint: Some(ck), run_id };
        }
        let from = st.jobs.by_id.get(id).and_then(|j| match j.spec.as_ref()?.payload.as_ref()? {
            aidos_api::v1::job_spec::Payload::Train(t) => Some(t.resume_from_job.as_str()),
            _ => None,
        });
        match from.and_then(|f| st.jobs.by_id.get(f)) {
            Some(src) if Some(job_project(src)) == project => id = &src.id,
            _ => break,
        }
    }
    LatestCheckpointResponse::default()
}

/// The project a run belongs to: its job's (a run whose job retention removed counts as the default project's).
pub fn run_project<'a>(st: &'a ClusterState, r: &'a Run) -> &'a str {
    if r.job_id.is_empty() {
        return aidos_api::auth::project_or_default(&r.project);
    }
    st.jobs.by_id.get(&r.job_id).map_or(aidos_api::auth::DEFAULT_PROJECT, job_project)
}

/// The experiments of `project`: Default ("0", every job's run) first, then by id.
pub fn list_experiments(st: &ClusterState, project: &str) -> ListExperimentsResponse {
    let default = Experiment {
        id: DEFAULT_EXPERIMENT.into(),
        name: "Default".into(),
        project: project.into(),
        ..Default::default()
    };
    let mut mine: Vec<Experiment> = st
        .registry
        .experiments
        .values()
        .filter(|e| aidos_api::auth::project_or_default(&e.project) == project)
        .cloned()
        .collect();
    mine.sort_by_key(|e| e.id.parse::<u64>().unwrap_or(u64::MAX));
    ListExperimentsResponse { experiments: std::iter::once(default).chain(mine).collect() }
}

/// Experiment `id` of `project` (Default exists in every project); NOT_FOUND otherwise.
pub fn experiment_in(st: &ClusterState, id: &str, project: &str) -> Result<Experiment, SchedulerError> {
    list_experiments(st, project)
        .experiments
        .into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| SchedulerError::NotFound(format!("experiment {id} not found in project {project}")))
}

/// The runs of `project` that `r` asks for.
pub fn list_runs(st: &ClusterState, r: &ListRunsRequest, project: &str) -> ListRunsResponse {
    let runs = st
        .registry
        .runs
        .values()
        .filter(|x| r.job_id.is_empty() || x.job_id == r.job_id)
        .filter(|x| run_project(st, x) == project);
    let max = r.max_points as usize;
    ListRunsResponse { runs: runs.map(|x| downsampled(st, x, max)).collect() }
}

/// `run` as readers see it: every metric series downsampled to at most `max` points (0: all;
/// `crate::downsample`); a job's run with experiment "0", its project, and the status and end its attempt has
/// (RUNNING, FINISHED, FAILED or KILLED; a later attempt's start ends an earlier one's run as FAILED).
fn downsampled(st: &ClusterState, run: &Run, max: usize) -> Run {
    // Field by field, so that only the points kept are copied (a run can hold 200,000); a new field of Run must
    // be added here (the compiler says so).
    let mut out = Run {
        id: run.id.clone(),
        job_id: run.job_id.clone(),
        attempt: run.attempt,
        params: run.params.clone(),
        metrics: crate::downsample::by_name(&run.metrics, max),
        checkpoints: run.checkpoints.clone(),
        dataset: run.dataset.clone(),
        resumed_from_step: run.resumed_from_step,
        created_at_ms: run.created_at_ms,
        model: run.model.clone(),
        experiment_id: run.experiment_id.clone(),
        name: run.name.clone(),
        tags: run.tags.clone(),
        status: run.status.clone(),
        ended_at_ms: run.ended_at_ms,
        artifacts: run.artifacts.clone(),
        project: run.project.clone(),
        user: run.user.clone(),
    };
    if !run.job_id.is_empty() {
        out.experiment_id = DEFAULT_EXPERIMENT.into();
        out.project = run_project(st, run).to_string();
        if let Some(j) = st.jobs.by_id.get(&run.job_id) {
            let state = JobState::try_from(j.state).unwrap_or(JobState::Unspecified);
            out.status = match state {
                _ if j.attempt > run.attempt => "FAILED",
                JobState::Succeeded => "FINISHED",
                JobState::Failed => "FAILED",
                JobState::Cancelled => "KILLED",
                _ => "RUNNING",
            }
            .into();
            if state.is_terminal() || j.attempt > run.attempt {
                out.ended_at_ms = j.updated_at_ms;
            }
        }
    }
    out
}

/// A run of `project` by id (`job-3.1`), or by job id (`job-3`: its latest attempt's run).
pub fn get_run(st: &ClusterState, r: &GetRunRequest, project: &str) -> Result<Run, SchedulerError> {
    let id = r.run_id.as_str();
    let run =
        st.registry.runs.get(id).or_else(|| {
            st.jobs.by_id.get(id).map(|j| run_id(id, j.attempt)).and_then(|rid| st.registry.runs.get(&rid))
        });
    match run {
        Some(x) if run_project(st, x) == project => Ok(downsampled(st, x, r.max_points as usize)),
        _ => Err(SchedulerError::NotFound(format!("run {id} not found in project {project}"))),
    }
}

/// The project model `name` belongs to: its first version's, else the name's (created before any version).
pub fn model_project<'a>(st: &'a ClusterState, name: &str) -> Option<&'a str> {
    let first = st.registry.models.get(name).and_then(|v| v.first()).map(|m| m.project.as_str());
    first.or_else(|| st.registry.model_names.get(name).map(|n| n.project.as_str()))
}

/// The models (and names made without versions) of `project`.
pub fn list_models(st: &ClusterState, r: &ListModelsRequest, project: &str) -> ListModelsResponse {
    let mine = |n: &str| model_project(st, n).is_some_and(|p| owned_by(p, project));
    let named = st.registry.models.iter().filter(|(n, _)| (r.name.is_empty() || **n == r.name) && mine(n));
    let names = st
        .registry
        .model_names
        .values()
        .filter(|m| (r.name.is_empty() || m.name == r.name) && mine(&m.name))
        .cloned()
        .collect();
    ListModelsResponse { models: named.flat_map(|(_, vs)| vs.iter().cloned()).collect(), names }
}

/// A model version of `project` (by version or alias); another project's is NOT_FOUND, as if it did not exist.
pub fn get_model(st: &ClusterState, r: &GetModelRequest, project: &str) -> Result<ModelVersion, SchedulerError> {
    let mine = model_project(st, &r.name).is_some_and(|p| owned_by(p, project));
    st.registry.model(&r.name, r.version, &r.alias).filter(|_| mine).cloned().ok_or_else(|| {
        SchedulerError::NotFound(if !mine || !st.registry.models.contains_key(&r.name) {
            format!("model {} not found", r.name)
        } else if !r.alias.is_empty() {
            format!("model {} has no alias @{}", r.name, r.alias)
        } else {
            format!("model {} has no version {}", r.name, r.version)
        })
    })
}

// ---- blobs ---------------------------------------------------------------------------------------------------

/// Every blob id the state references, which the blob collector (`gc`) must never delete: every blob a dataset
/// version's manifest names (feature and label chunks, row hashes); the checkpoints of every run (runs are never
/// compacted; a run keeps its newest `MAX_CHECKPOINTS_PER_RUN`); every model version's weights and artifacts
/// (ONNX, ...); every edge deployment's artifact and the artifact each device reports running; the output blob of
/// every attempt of a retained job; and any blob id a retained job's spec names (process arguments and
/// environment, the trainer's config), found conservatively as any 64-hex-digit token.
pub fn referenced_blobs(st: &ClusterState) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let mut add = |s: &str| {
        if !s.is_empty() {
            out.insert(s.to_string());
        }
    };
    for d in st.registry.datasets.values().flatten() {
        d.feature_chunks.iter().chain(&d.label_chunks).for_each(|c| add(&c.blob));
        add(&d.row_hashes_blob);
    }
    for r in st.registry.runs.values() {
        r.checkpoints.iter().for_each(|c| add(&c.blob));
    }
    for m in st.registry.models.values().flatten() {
        add(&m.weights_blob);
        m.artifacts.values().for_each(|b| add(b));
    }
    st.edge.deployments.values().for_each(|d| add(&d.artifact));
    st.edge.devices.values().filter_map(|d| d.status.as_ref()).for_each(|s| add(&s.artifact));
    for j in st.jobs.by_id.values() {
        for a in j.tasks.iter().flat_map(|t| &t.attempts) {
            add(&a.log_blob);
        }
        match j.spec.as_ref().and_then(|s| s.payload.as_ref()) {
            Some(job_spec::Payload::Process(p)) => {
                p.args.iter().chain(p.env.values()).flat_map(|s| crate::gc::blob_ids_in(s)).for_each(&mut add);
            }
            Some(job_spec::Payload::Train(t)) => crate::gc::blob_ids_in(&t.config_json).for_each(&mut add),
            _ => {}
        }
    }
    out
}

// ---- deployments -----------------------------------------------------------------------------------------------

/// Deployments (all, or the one named) with their live (non-terminal) replica jobs filled in, oldest first: one
/// pass over the live jobs for all of them, not one per deployment.
pub fn deployment_views(st: &ClusterState, name: &str) -> Vec<Deployment> {
    let mut live: HashMap<&str, Vec<Replica>> = HashMap::new();
    for j in st.jobs.running_or_pending() {
        if let Some(s) = serve_spec(j)
            && (name.is_empty() || s.deployment == name)
            && let Some(r) = replica_of(j)
        {
            live.entry(s.deployment.as_str()).or_default().push(r);
        }
    }
    st.serving
        .deployments
        .values()
        .filter(|d| name.is_empty() || d.name == name)
        .map(|d| Deployment { replica_status: live.remove(d.name.as_str()).unwrap_or_default(), ..d.clone() })
        .collect()
}

/// Requests in flight in `d`'s ready replicas, summed from their fresh load reports (`loads`: job id -> (in
/// flight, reported at ms)); None when none of them has reported lately.
pub fn in_flight(d: &Deployment, loads: &HashMap<String, (f64, i64)>, now_ms: i64) -> Option<f64> {
    let fresh = d
        .replica_status
        .iter()
        .filter(|r| r.ready)
        .filter_map(|r| loads.get(&r.job_id))
        .filter(|(_, at)| now_ms - at <= crate::autoscale::LOAD_FRESH_MS)
        .map(|(v, _)| *v);
    fresh.fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// A deployment with its live replicas filled in.
pub fn deployment_view(st: &ClusterState, name: &str) -> Option<Deployment> {
    if name.is_empty() {
        return None;
    }
    deployment_views(st, name).pop()
}

/// The project deployment `d` belongs to.
pub fn deployment_project(d: &Deployment) -> &str {
    aidos_api::auth::project_or_default(&d.project)
}

/// Refuses (NOT_FOUND) unless deployment `name` exists in `project` (another project's deployments are not even
/// named, as its jobs are not).
pub fn deployment_in(st: &ClusterState, name: &str, project: &str) -> Result<(), SchedulerError> {
    match st.serving.deployments.get(name) {
        Some(d) if deployment_project(d) == project => Ok(()),
        _ => Err(SchedulerError::NotFound(format!("deployment {name} not found in project {project}"))),
    }
}

/// How long an expired key stays in the serving fronts' tables (refused there as expired).
pub const EXPIRED_KEY_GRACE_MS: i64 = 24 * 3600 * 1000;

/// Every valid credential, with which of `deployments` it may call at `now_ms`: what the serving fronts check
/// requests against (`ServeService.Routes`). The root token (`root_hash`: the hash of its secret) and worker tokens
/// may call every deployment (gateways present them to replicas); stored tokens the deployments
/// `aidos_api::auth::may_infer` allows (none, for a viewer). Revoked tokens are left out, and tokens that expired
/// more than [`EXPIRED_KEY_GRACE_MS`] ago. Pure.
///
/// Cost: O(tokens · deployments) per call (at most 10,000 tokens); gateways ask every refresh (250 ms).
pub fn inference_keys(
    st: &ClusterState,
    deployments: &[Deployment],
    root_hash: &[u8; 32],
    now_ms: i64,
) -> Vec<InferenceKey> {
    let mut keys = vec![InferenceKey {
        token_id: aidos_api::auth::ROOT_ID.into(),
        secret_hash: root_hash.to_vec(),
        every_deployment: true,
        ..Default::default()
    }];
    for rec in st.auth.tokens.values() {
        let Some(t) = &rec.token else { continue };
        // A join token is no key of any kind (it only buys a worker certificate).
        // Expired ones stay listed for a day (fronts check expiry themselves), so a caller whose key just expired is
        // told so, rather than that the key is unknown.
        let long_expired = t.expires_at_ms != 0 && t.expires_at_ms + EXPIRED_KEY_GRACE_MS <= now_ms;
        if t.join || t.revoked_at_ms != 0 || long_expired {
            continue;
        }
        let role = Role::try_from(t.role).unwrap_or(Role::Unspecified);
        let key = |every: bool, names: Vec<String>| InferenceKey {
            token_id: t.id.clone(),
            secret_hash: rec.secret_hash.clone(),
            expires_at_ms: t.expires_at_ms,
            every_deployment: every,
            deployments: names,
        };
        if role == Role::Worker {
            keys.push(key(true, vec![]));
            continue;
        }
        // Every valid token is listed, those that may call nothing too: a front then refuses it as a known caller
        // without the right (403), not as an unknown key (401).
        let names: Vec<String> = deployments
            .iter()
            .filter(|d| aidos_api::auth::may_infer(role, &t.project, &t.deployments, deployment_project(d), &d.name))
            .map(|d| d.name.clone())
            .collect();
        keys.push(key(false, names));
    }
    keys
}

// ---- edge ------------------------------------------------------------------------------------------------------

/// Devices (all, or the one named) without their credential hashes. `seen` is the leader's memory of when each
/// device last synced; a device not in it shows when its last report was committed.
/// The devices of `project` (named `r.name`, or all).
pub fn list_devices(
    st: &ClusterState,
    r: &ListDevicesRequest,
    seen: &HashMap<String, i64>,
    project: &str,
) -> ListDevicesResponse {
    let devices = st
        .edge
        .devices
        .values()
        .filter(|d| r.name.is_empty() || d.name == r.name)
        .filter(|d| aidos_api::auth::project_or_default(&d.project) == project);
    ListDevicesResponse {
        devices: devices
            .map(|d| EdgeDevice {
                last_seen_ms: seen.get(&d.name).copied().unwrap_or(0).max(d.status_at_ms),
                credential_hash: vec![],
                ..d.clone()
            })
            .collect(),
    }
}

/// The edge deployments of `project`.
pub fn list_edge_deployments(st: &ClusterState, project: &str) -> ListEdgeDeploymentsResponse {
    let mine = st.edge.deployments.values().filter(|d| aidos_api::auth::project_or_default(&d.project) == project);
    ListEdgeDeploymentsResponse { deployments: mine.cloned().collect() }
}

/// The deployment an enrolled device should run now, if any.
pub fn desired_edge_deployment(st: &ClusterState, device: &str) -> Option<EdgeDeployment> {
    let d = st.edge.devices.get(device)?;
    crate::state::edge::desired_for(d, st.edge.deployments.values()).cloned()
}

/// Whether some current edge deployment of `device`'s project names `artifact` (only those are served to it).
pub fn is_edge_artifact(st: &ClusterState, artifact: &str, device: &EdgeDevice) -> bool {
    let project = aidos_api::auth::project_or_default(&device.project);
    st.edge
        .deployments
        .values()
        .any(|d| d.artifact == artifact && aidos_api::auth::project_or_default(&d.project) == project)
}

// ---- sweeps ------------------------------------------------------------------------------------------------------

/// A sweep with its trials; a running trial's values are what it reported so far (they are recorded on the trial
/// itself only when it ends).
pub fn sweep(st: &ClusterState, id: &str) -> Result<Sweep, SchedulerError> {
    let mut s =
        st.sweeps.sweeps.get(id).cloned().ok_or_else(|| SchedulerError::NotFound(format!("sweep {id} not found")))?;
    let spec = s.spec.clone().unwrap_or_default();
    for t in s.trials.iter_mut().filter(|t| t.state == TrialState::Running as i32) {
        let j = trial_job(st, &t.job_id, &spec.metric, spec.resource_unit == "epoch");
        let values = crate::sweep::plan::combined_values(&t.values, &j.values);
        crate::sweep::plan::set_values(t, &values, spec.maximize);
    }
    Ok(s)
}

/// Every sweep, oldest first, without its trials (`sweep` has them) but its best trial.
/// The project a sweep belongs to (its trial template's).
pub fn sweep_project(s: &Sweep) -> &str {
    aidos_api::auth::project_or_default(
        s.spec.as_ref().and_then(|x| x.trial.as_ref()).map_or("", |t| t.project.as_str()),
    )
}

/// Sweep `id` (see [`sweep`]) when it belongs to `project`; NOT_FOUND otherwise.
pub fn sweep_in(st: &ClusterState, id: &str, project: &str) -> Result<Sweep, SchedulerError> {
    match st.sweeps.sweeps.get(id) {
        Some(s) if sweep_project(s) == project => sweep(st, id),
        _ => Err(SchedulerError::NotFound(format!("sweep {id} not found in project {project}"))),
    }
}

/// The sweeps of `project`.
pub fn list_sweeps(st: &ClusterState, project: &str) -> ListSweepsResponse {
    ListSweepsResponse {
        sweeps: st
            .sweeps
            .ordered()
            .into_iter()
            .filter(|s| sweep_project(s) == project)
            .map(|s| {
                // Keep the best trial itself (the best completed so far while it runs), so a list can show it.
                let maximize = s.spec.as_ref().is_some_and(|x| x.maximize);
                let best = s.best_trial.or_else(|| crate::sweep::plan::best_trial(&s.trials, maximize));
                let mut out = Sweep { trials: Vec::new(), ..s.clone() };
                out.trials.extend(best.and_then(|b| s.trials.get(b as usize)).cloned());
                out
            })
            .collect(),
    }
}

/// Sweeps the leader's sweep loop must look at: running ones, and ended ones with a trial still running or paused,
/// or with the job of an unrecorded next trial still active (an earlier leader submitted it; the loop cancels it).
pub fn active_sweeps(st: &ClusterState) -> Vec<String> {
    let orphan_active = |s: &Sweep| {
        sweep_job(st, s, &crate::sweep::plan::request_id(&s.id, s.trials.len() as u32))
            .and_then(|id| st.jobs.by_id.get(id))
            .is_some_and(|j| JobState::try_from(j.state).is_ok_and(|x| !x.is_terminal()))
    };
    st.sweeps
        .sweeps
        .values()
        .filter(|s| {
            s.state == SweepState::Running as i32
                || s.trials
                    .iter()
                    .any(|t| matches!(TrialState::try_from(t.state), Ok(TrialState::Running | TrialState::Paused)))
                || orphan_active(s)
        })
        .map(|s| s.id.clone())
        .collect()
}

/// The job submitted for sweep `s` under idempotency key `request` (in the sweep's project), if any.
fn sweep_job<'a>(st: &'a ClusterState, s: &Sweep, request: &str) -> Option<&'a String> {
    st.jobs.request_ids.get(&crate::state::jobs::idempotency_key(sweep_project(s), request))
}

/// The parameters a trial's job carries (its `aidos.params` label): what a trial whose job exists is recorded with.
pub fn trial_job_params(st: &ClusterState, job_id: &str) -> Option<String> {
    st.jobs.by_id.get(job_id)?.spec.as_ref()?.labels.get(aidos_api::sweep::LABEL_PARAMS).cloned()
}

/// What the sweep planner needs to know of trial jobs: their state, and the objective from their runs (every
/// attempt, the latest report for each resource winning).
fn trial_job(st: &ClusterState, job_id: &str, metric: &str, unit_epoch: bool) -> crate::sweep::plan::TrialJob {
    use crate::sweep::plan::TrialJob;
    let Some(job) = st.jobs.by_id.get(job_id) else { return TrialJob::default() };
    let mut by_resource = std::collections::BTreeMap::new();
    let mut reported = std::collections::BTreeSet::new();
    let mut model = String::new();
    let prefix = format!("{job_id}.");
    let mut runs: Vec<&Run> =
        st.registry.runs.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).map(|(_, r)| r).collect();
    runs.sort_by_key(|r| r.attempt);
    for r in runs {
        for p in &r.metrics {
            if p.name == metric {
                let resource = if unit_epoch { p.epoch as u64 + 1 } else { p.step };
                by_resource.insert(resource, p.value);
            } else if reported.len() < 32 {
                reported.insert(p.name.clone());
            }
        }
        if !r.model.is_empty() {
            model = r.model.clone();
        }
    }
    TrialJob {
        state: JobState::try_from(job.state).ok(),
        reason: job.reason.clone(),
        values: by_resource.into_iter().map(|(resource, value)| IntermediateValue { resource, value }).collect(),
        reported: reported.into_iter().collect(),
        model,
    }
}

/// The planner's view of one sweep (see `crate::sweep::plan`): the jobs of its running trials, of ended trials
/// whose job still runs, and of the best completed trial (for its model); the orphan job of the next trial, and
/// the jobs already submitted for paused trials' next rungs.
pub fn sweep_view<'a>(st: &'a ClusterState, id: &str, now_ms: i64) -> Option<crate::sweep::plan::SweepView<'a>> {
    use crate::sweep::plan::{SweepView, best_trial, request_id, rung_request_id};
    let s = st.sweeps.sweeps.get(id)?;
    let spec = s.spec.as_ref()?;
    let unit_epoch = spec.resource_unit == "epoch";
    let best = best_trial(&s.trials, spec.maximize);
    let mut jobs = std::collections::BTreeMap::new();
    for t in &s.trials {
        let running = t.state == TrialState::Running as i32;
        let job_active =
            st.jobs.by_id.get(&t.job_id).is_some_and(|j| JobState::try_from(j.state).is_ok_and(|s| !s.is_terminal()));
        if running || job_active || best == Some(t.index) {
            jobs.insert(t.index, trial_job(st, &t.job_id, &spec.metric, unit_epoch));
        }
    }
    let job_of = |request: String| sweep_job(st, s, &request).cloned();
    let next = s.trials.len() as u32;
    let orphan =
        job_of(request_id(&s.id, next)).and_then(|job_id| Some((job_id.clone(), trial_job_params(st, &job_id)?)));
    let resumed = s
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Paused as i32)
        .filter_map(|t| Some((t.index, job_of(rung_request_id(&s.id, t.index, t.rung + 1))?)))
        .collect();
    Some(SweepView { sweep: s, jobs, orphan, resumed, now_ms })
}

// ---- tokens ----------------------------------------------------------------------------------------------------

/// The tokens `by` administers (every project for a cluster-wide admin; its own project for a project admin),
/// narrowed to `r.project` when given; revoked ones only with `r.include_revoked`. Oldest first.
pub fn list_tokens(st: &ClusterState, by: &aidos_api::auth::Principal, r: &ListTokensRequest) -> ListTokensResponse {
    let mut tokens: Vec<Token> = st
        .auth
        .tokens
        .values()
        .filter_map(|rec| rec.token.clone())
        .filter(|t| by.project == aidos_api::auth::ALL_PROJECTS || t.project == by.project)
        .filter(|t| r.project.is_empty() || t.project == r.project)
        .filter(|t| r.include_revoked || t.revoked_at_ms == 0)
        .collect();
    tokens.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    ListTokensResponse { tokens }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 jobs, seq 1..=10: odd ones RUNNING train jobs of `default`, even ones PENDING process jobs; job 7 is in
    /// project `other`.
    fn state() -> ClusterState {
        let mut st = ClusterState::default();
        for seq in 1..=10u64 {
            let (state, kind) =
                if seq % 2 == 1 { (JobState::Running, JobKind::Train) } else { (JobState::Pending, JobKind::Process) };
            st.jobs.insert_job(Job {
                id: format!("job-{seq}"),
                seq,
                state: state as i32,
                spec: Some(JobSpec {
                    name: format!("n{seq}"),
                    kind: kind as i32,
                    project: if seq == 7 { "other".into() } else { String::new() },
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        st
    }

    #[test]
    fn inference_keys_name_what_each_valid_token_may_call() {
        let mut st = ClusterState::default();
        let tok = |id: &str, role: Role, project: &str, deployments: &[&str], revoked: i64, expires: i64| {
            let t = Token {
                id: id.into(),
                role: role as i32,
                project: project.into(),
                deployments: deployments.iter().map(|d| d.to_string()).collect(),
                revoked_at_ms: revoked,
                expires_at_ms: expires,
                ..Default::default()
            };
            (id.to_string(), TokenRecordV1 { token: Some(t), secret_hash: vec![1; 32] })
        };
        st.auth.tokens = [
            tok("app", Role::Infer, "default", &["a"], 0, 0),
            tok("team", Role::Infer, "default", &[], 0, 0),
            tok("dev", Role::Member, "*", &[], 0, 0),
            tok("eve", Role::Viewer, "default", &[], 0, 0),
            tok("far", Role::Infer, "p", &[], 0, 0),
            tok("w", Role::Worker, "*", &[], 0, 0),
            tok("gone", Role::Infer, "default", &[], 5, 0),
            tok("old", Role::Infer, "default", &[], 0, 50),
            tok("ancient", Role::Infer, "default", &[], 0, 99 - EXPIRED_KEY_GRACE_MS),
        ]
        .into_iter()
        .collect();
        let dep =
            |name: &str, project: &str| Deployment { name: name.into(), project: project.into(), ..Default::default() };
        let ds = [dep("a", ""), dep("b", "default"), dep("c", "p")];
        let keys = inference_keys(&st, &ds, &[9; 32], 100);
        let of = |id: &str| keys.iter().find(|k| k.token_id == id).map(|k| (k.every_deployment, k.deployments.clone()));
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(of("root"), Some((true, vec![])));
        assert_eq!(keys[0].secret_hash, vec![9; 32]);
        assert_eq!(of("w"), Some((true, vec![])));
        assert_eq!(of("app"), Some((false, names(&["a"]))));
        assert_eq!(of("team"), Some((false, names(&["a", "b"]))));
        assert_eq!(of("dev"), Some((false, names(&["a", "b", "c"]))));
        assert_eq!(of("far"), Some((false, names(&["c"]))));
        assert_eq!(of("eve"), Some((false, vec![])), "a viewer is known, and may call nothing");
        assert_eq!(of("gone"), None, "revoked");
        assert!(keys.iter().any(|k| k.token_id == "old" && k.expires_at_ms == 50), "expired lately: told so");
        assert_eq!(of("ancient"), None, "expired a day ago");
    }

    fn ids(r: &ListJobsResponse) -> Vec<&str> {
        r.jobs.iter().map(|j| j.id.as_str()).collect()
    }

    #[test]
    fn pages_walk_every_job_newest_first_once() {
        let st = state();
        let mut req = ListJobsRequest { limit: 4, ..Default::default() };
        let mut seen = Vec::new();
        loop {
            let r = list_jobs(&st, &req, "default").unwrap();
            assert_eq!(r.total, 9, "job-7 is another project's");
            seen.extend(ids(&r).into_iter().map(str::to_string));
            if r.next_page_token.is_empty() {
                break;
            }
            req.page_token = r.next_page_token;
        }
        let want: Vec<String> = [10, 9, 8, 6, 5, 4, 3, 2, 1].iter().map(|s| format!("job-{s}")).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn filtered_pages_count_every_match_even_before_the_page() {
        let st = state();
        let running = ListJobsRequest { states: vec![JobState::Running as i32], limit: 2, ..Default::default() };
        let r = list_jobs(&st, &running, "default").unwrap();
        assert_eq!((ids(&r), r.total, r.next_page_token.as_str()), (vec!["job-9", "job-5"], 4, "5"));
        let r2 = list_jobs(&st, &ListJobsRequest { page_token: "5".into(), ..running.clone() }, "default").unwrap();
        assert_eq!((ids(&r2), r2.total, r2.next_page_token.as_str()), (vec!["job-3", "job-1"], 4, ""));
        let process =
            ListJobsRequest { kinds: vec![JobKind::Process as i32], name_prefix: "n1".into(), ..Default::default() };
        assert_eq!(ids(&list_jobs(&st, &process, "default").unwrap()), vec!["job-10"]);
        assert_eq!(ids(&list_jobs(&st, &ListJobsRequest::default(), "other").unwrap()), vec!["job-7"]);
        assert!(list_jobs(&st, &ListJobsRequest { page_token: "x".into(), ..Default::default() }, "default").is_err());
    }

    #[test]
    fn compaction_keeps_the_list_indexes_in_step() {
        let mut st = state();
        st.jobs.by_id.get_mut("job-2").unwrap().state = JobState::Succeeded as i32;
        st.jobs.compact(&["job-2".to_string()], &mut crate::state::Dirty::default());
        let r = list_jobs(&st, &ListJobsRequest::default(), "default").unwrap();
        assert_eq!(r.total, 8);
        assert!(!ids(&r).contains(&"job-2"));
        assert_eq!(r.jobs.len(), 8);
    }

    #[test]
    fn retention_keeps_the_job_a_paused_trial_resumes_from() {
        let mut st = state();
        for id in ["job-2", "job-4"] {
            st.jobs.by_id.get_mut(id).unwrap().state = JobState::Succeeded as i32;
        }
        let finished = |st: &ClusterState| {
            let mut v: Vec<String> = finished_jobs(st).into_iter().map(|f| f.id).collect();
            v.sort();
            v
        };
        assert_eq!(finished(&st), ["job-2", "job-4"]);
        let trial = |index: u32, job: &str, state: TrialState| Trial {
            index,
            job_id: job.into(),
            state: state as i32,
            ..Default::default()
        };
        let sweep = Sweep {
            id: "sweep-1".into(),
            trials: vec![trial(0, "job-2", TrialState::Paused), trial(1, "job-4", TrialState::Pruned)],
            ..Default::default()
        };
        st.sweeps.sweeps.insert(sweep.id.clone(), sweep);
        assert_eq!(finished(&st), ["job-4"], "a paused trial's job stays; an ended trial's goes");
    }

    #[test]
    fn an_ended_sweep_stays_active_while_an_unrecorded_trial_job_runs() {
        let mut st = ClusterState::default();
        let sweep = Sweep {
            id: "sweep-1".into(),
            spec: Some(SweepSpec::default()),
            state: SweepState::Cancelled as i32,
            ..Default::default()
        };
        st.sweeps.sweeps.insert(sweep.id.clone(), sweep);
        assert!(active_sweeps(&st).is_empty());
        let mut job = Job {
            id: "job-1".into(),
            seq: 1,
            state: JobState::Running as i32,
            request_id: crate::sweep::plan::request_id("sweep-1", 0),
            spec: Some(JobSpec {
                labels: [(aidos_api::sweep::LABEL_PARAMS.to_string(), r#"{"x":1}"#.to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        st.jobs.insert_job(job.clone());
        assert_eq!(active_sweeps(&st), ["sweep-1"], "the sweep loop must see it to cancel it");
        let v = sweep_view(&st, "sweep-1", 0).unwrap();
        let cancels = crate::sweep::plan::plan(&v);
        assert!(
            matches!(&cancels[..], [crate::sweep::plan::Action::CancelJob { job_id, .. }] if job_id == "job-1"),
            "{cancels:?}"
        );
        job.state = JobState::Cancelled as i32;
        st.jobs.insert_job(job);
        assert!(active_sweeps(&st).is_empty());
    }
}
