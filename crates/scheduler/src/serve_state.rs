//! Model deployments in the replicated state: the deployment records (one ML-table row each, `s/<name>`), the
//! endpoints replicas report, and the read-side view of a deployment's replicas.
//!
//! Invariants:
//! - A deployment's `generation` changes exactly when what a replica runs changes (model version, runtime,
//!   batching, resources); a change of the replica count alone keeps it, so scaling never restarts replicas.
//! - Replicas are ordinary jobs of kind SERVE (one task each) whose payload names the deployment and generation;
//!   the leader's reconciler (`reconcile.rs`) is the only thing that submits or cancels them.
//! - An endpoint is recorded on the reporting attempt only, fenced like a status report: a replica from an older
//!   attempt (or on a lost worker) cannot advertise itself. An attempt that is no longer RUNNING is never ready.

use aidos_api::v1::{
    CommandResultV1, DeployV1, Deployment, Job, JobKind, JobState, Replica, ReportEndpointRequest, TaskState,
    job_spec::Payload,
};

use crate::ml_state::check_name;
use crate::state::{ClusterState, Dirty, Refusal};

/// Most replicas one deployment may ask for.
pub const MAX_DEPLOYMENT_REPLICAS: u32 = 64;
/// Longest `host:port` a replica may report.
const MAX_ENDPOINT: usize = 256;

pub fn deployment_key(name: &str) -> String {
    format!("s/{name}")
}

fn bad(field: &str, why: impl Into<String>) -> Refusal {
    Refusal { code: tonic::Code::InvalidArgument, message: format!("{field}: {}", why.into()) }
}

/// The deployment a SERVE job belongs to, with its spec.
pub fn serve_payload(j: &Job) -> Option<&aidos_api::v1::ServeSpec> {
    let spec = j.spec.as_ref()?;
    if spec.kind != JobKind::Serve as i32 {
        return None;
    }
    match &spec.payload {
        Some(Payload::Serve(s)) => Some(s),
        _ => None,
    }
}

/// One replica job as clients and the reconciler see it.
pub fn replica_of(j: &Job) -> Option<Replica> {
    let s = serve_payload(j)?;
    let task = j.tasks.first()?;
    let a = task.attempts.last().cloned().unwrap_or_default();
    let running = j.state == JobState::Running as i32 && a.state == TaskState::Running as i32;
    let ready = running && !a.endpoint_grpc.is_empty() && !a.endpoint_http.is_empty();
    Some(Replica {
        job_id: j.id.clone(),
        generation: s.generation,
        version: s.version,
        state: if j.state == JobState::Pending as i32 { TaskState::Pending as i32 } else { task.state },
        worker_id: a.worker_id.clone(),
        http: if ready { a.endpoint_http.clone() } else { String::new() },
        grpc: if ready { a.endpoint_grpc.clone() } else { String::new() },
        ready,
        attempt: a.attempt,
        pid: if running { a.pid } else { 0 },
        reason: j.reason.clone(),
        ready_at_ms: if ready { a.ready_at_ms } else { 0 },
    })
}

impl ClusterState {
    /// Jobs that are PENDING or RUNNING, in submission order.
    pub fn running_or_pending(&self) -> impl Iterator<Item = &Job> {
        let mut ids: Vec<(u64, &str)> = self
            .pending
            .iter()
            .map(|(seq, id)| (*seq, id.as_str()))
            .chain(self.running.iter().filter_map(|id| self.jobs.get(id).map(|j| (j.seq, id.as_str()))))
            .collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|(_, id)| self.jobs.get(id))
    }

    /// Deployments (all, or the one named) with their live (non-terminal) replica jobs filled in, oldest first: one
    /// pass over the live jobs for all of them, not one per deployment.
    pub fn deployment_views(&self, name: &str) -> Vec<Deployment> {
        let mut live: std::collections::HashMap<&str, Vec<Replica>> = std::collections::HashMap::new();
        for j in self.running_or_pending() {
            if let Some(s) = serve_payload(j)
                && (name.is_empty() || s.deployment == name)
                && let Some(r) = replica_of(j)
            {
                live.entry(s.deployment.as_str()).or_default().push(r);
            }
        }
        self.deployments
            .values()
            .filter(|d| name.is_empty() || d.name == name)
            .map(|d| Deployment { replica_status: live.remove(d.name.as_str()).unwrap_or_default(), ..d.clone() })
            .collect()
    }

    /// A deployment with its live replicas filled in.
    pub fn deployment_view(&self, name: &str) -> Option<Deployment> {
        if name.is_empty() {
            return None;
        }
        self.deployment_views(name).pop()
    }

    pub(crate) fn deploy(&mut self, r: &DeployV1, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let mut d = r.deployment.clone().ok_or_else(|| bad("deployment", "missing"))?;
        check_name("name", &d.name)?;
        let spec = d.spec.as_mut().ok_or_else(|| bad("spec", "missing"))?;
        check_name("model", &spec.model)?;
        if spec.version == 0 {
            return Err(bad("version", "missing (the leader resolves it before proposing)"));
        }
        if d.replicas == 0 || d.replicas > MAX_DEPLOYMENT_REPLICAS {
            return Err(bad("replicas", format!("{} (expected 1..={MAX_DEPLOYMENT_REPLICAS})", d.replicas)));
        }
        spec.deployment = d.name.clone();
        d.replica_status.clear();
        d.status.clear();
        match self.deployments.get(&d.name) {
            Some(old) => {
                let same_spec = {
                    let mut a = old.spec.clone().unwrap_or_default();
                    let mut b = d.spec.clone().unwrap_or_default();
                    a.generation = 0;
                    b.generation = 0;
                    a == b && old.resources == d.resources
                };
                d.generation = if same_spec { old.generation } else { old.generation + 1 };
                d.created_at_ms = old.created_at_ms;
            }
            None => {
                d.generation = 1;
                d.created_at_ms = now;
            }
        }
        d.spec.as_mut().expect("checked").generation = d.generation;
        d.updated_at_ms = now;
        dirty.ml.push(deployment_key(&d.name));
        self.deployments.insert(d.name.clone(), d.clone());
        Ok(CommandResultV1 { deployment: Some(d), ..Default::default() })
    }

    pub(crate) fn delete_deployment(&mut self, name: &str, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let d = self
            .deployments
            .remove(name)
            .ok_or_else(|| Refusal { code: tonic::Code::NotFound, message: format!("deployment {name} not found") })?;
        dirty.ml.push(deployment_key(name));
        Ok(CommandResultV1 { deployment: Some(d), ..Default::default() })
    }

    /// Sets why a deployment does not converge (`""`: it does). Written only when it changes.
    pub(crate) fn set_deployment_status(&mut self, name: &str, status: &str, dirty: &mut Dirty) {
        if let Some(d) = self.deployments.get_mut(name)
            && d.status != status
        {
            d.status = status.to_string();
            dirty.ml.push(deployment_key(name));
        }
    }

    pub(crate) fn report_endpoint(
        &mut self,
        r: &ReportEndpointRequest,
        now: i64,
        dirty: &mut Dirty,
    ) -> Result<CommandResultV1, Refusal> {
        let a = r.attempt.clone().ok_or_else(|| bad("attempt", "missing"))?;
        for (f, v) in [("http", &r.http), ("grpc", &r.grpc)] {
            if v.is_empty() || v.len() > MAX_ENDPOINT || v.parse::<std::net::SocketAddr>().is_err() && !v.contains(':')
            {
                return Err(bad(f, format!("{v:?} is not a host:port")));
            }
        }
        let (job, _) = self.check_current(&r.worker_id, &a)?;
        if serve_payload(job).is_none() {
            return Err(bad("attempt", format!("job {} is not a serve replica", a.job_id)));
        }
        let job = self.jobs.get_mut(&a.job_id).expect("checked");
        let at = job.tasks[a.rank as usize].attempts.last_mut().expect("checked");
        at.endpoint_http = r.http.clone();
        at.endpoint_grpc = r.grpc.clone();
        at.pid = r.pid;
        at.ready_at_ms = now;
        dirty.jobs.push(a.job_id.clone());
        Ok(CommandResultV1::default())
    }
}
