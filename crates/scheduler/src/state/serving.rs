//! The serving domain: model deployments (table `Rows`, `s/<name>`), and how a replica job looks to clients.
//! The endpoints replicas report are attempt data of the jobs domain (`jobs::JobsState::report_endpoint`); a
//! deployment together with its replica jobs is a cross-domain read (`crate::queries::deployment_views`).
//!
//! Invariants:
//! - A deployment's `generation` changes exactly when what a replica runs changes (model version, runtime,
//!   batching, resources); a change of the replica count alone keeps it, so scaling never restarts replicas.
//! - Generations are never reused within a deployment: a new one (the deployment's or a canary's) is one more than
//!   `last_generation`, the highest ever given, so replicas of a rolled-back canary cannot pass for a new one.
//! - A canary serves another model version than the deployment (requests are split by version); promoting it
//!   makes its spec and generation the deployment's, so its replicas keep running.
//! - Replicas are ordinary jobs of kind SERVE (one task each) whose payload names the deployment and generation;
//!   the leader's reconciler (`reconcile.rs`) is the only thing that submits or cancels them.
//! - An attempt that is no longer RUNNING is never ready, whatever endpoint it reported.

use std::collections::BTreeMap;

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{
    CommandResultV1, DeployV1, Deployment, Job, JobState, Replica, Resources, ScaleDeploymentV1, ServeSpec,
    SetCanaryV1, StateSnapshotV1, TaskState,
};
use prost::Message;

use super::jobs::serve_spec;
use super::{Dirty, Domain, JobsState, Refusal, RowKind, Rows, Table, bad, check_name, not_found};

/// Most replicas one deployment may ask for.
pub const MAX_DEPLOYMENT_REPLICAS: u32 = 64;
const DEPLOYMENT_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "s/", snapshot_field: 10 };

pub fn deployment_key(name: &str) -> String {
    format!("s/{name}")
}

/// One replica job as clients and the reconciler see it.
pub fn replica_of(j: &Job) -> Option<Replica> {
    let s = serve_spec(j)?;
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

/// Deployments by name.
#[derive(Debug, Default, Clone)]
pub struct ServingState {
    pub deployments: BTreeMap<String, Deployment>,
}

impl Rows for ServingState {
    const ROWS: &'static [RowKind] = &[DEPLOYMENT_ROWS];

    fn row(&self, _table: Table, key: &str) -> Option<Vec<u8>> {
        self.deployments.get(key.strip_prefix(DEPLOYMENT_ROWS.prefix)?).map(|d| d.encode_to_vec())
    }

    fn load_row(&mut self, _table: Table, _key: &str, bytes: &[u8]) -> Result<(), prost::DecodeError> {
        let d = Deployment::decode(bytes)?;
        self.deployments.insert(d.name.clone(), d);
        Ok(())
    }

    fn keys(&self) -> Vec<(Table, String)> {
        self.deployments.keys().map(|d| (Table::Rows, deployment_key(d))).collect()
    }

    fn snapshot(&self, out: &mut StateSnapshotV1) {
        out.deployments = self.deployments.values().cloned().collect();
    }

    fn restore(&mut self, s: &mut StateSnapshotV1) {
        for d in std::mem::take(&mut s.deployments) {
            self.deployments.insert(d.name.clone(), d);
        }
    }
}

impl Domain for ServingState {
    fn apply(
        &mut self,
        cmd: &Command,
        now: i64,
        _jobs: &JobsState,
        dirty: &mut Dirty,
    ) -> Option<Result<CommandResultV1, Refusal>> {
        Some(match cmd {
            Command::Deploy(r) => self.deploy(r, now, dirty),
            Command::DeleteDeployment(r) => self.delete_deployment(&r.name, dirty),
            Command::SetCanary(r) => self.set_canary(r, now, dirty),
            Command::ScaleDeployment(r) => self.scale(r, now, dirty),
            Command::SetDeploymentStatus(r) => {
                self.set_deployment_status(&r.name, &r.status, dirty);
                Ok(CommandResultV1::default())
            }
            _ => return None,
        })
    }
}

impl ServingState {
    fn deploy(&mut self, r: &DeployV1, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
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
                if aidos_api::auth::project_or_default(&old.project) != aidos_api::auth::project_or_default(&d.project)
                {
                    return Err(bad("name", format!("deployment {} exists in another project", d.name)));
                }
                let same = same_replicas(old.spec.as_ref(), old.resources, d.spec.as_ref(), d.resources);
                d.generation = if same { old.generation } else { last_generation(old) + 1 };
                d.last_generation = d.generation.max(last_generation(old));
                d.created_at_ms = old.created_at_ms;
                d.canary = old.canary.clone();
            }
            None => {
                d.generation = 1;
                d.last_generation = 1;
                d.created_at_ms = now;
                d.canary = None;
            }
        }
        d.spec.as_mut().expect("checked").generation = d.generation;
        d.updated_at_ms = now;
        dirty.mark(Table::Rows, deployment_key(&d.name));
        self.deployments.insert(d.name.clone(), d.clone());
        Ok(CommandResultV1 { deployment: Some(d), ..Default::default() })
    }

    fn set_canary(&mut self, r: &SetCanaryV1, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let d =
            self.deployments.get_mut(&r.name).ok_or_else(|| not_found(format!("deployment {} not found", r.name)))?;
        match (&r.canary, r.promote) {
            (Some(c), _) => {
                let mut c = c.clone();
                let spec = c.spec.as_mut().ok_or_else(|| bad("canary.spec", "missing"))?;
                spec.deployment = d.name.clone();
                if !(1..=99).contains(&c.percent) {
                    return Err(bad("canary_percent", format!("{} (expected 1..=99)", c.percent)));
                }
                if c.replicas == 0 || c.replicas > MAX_DEPLOYMENT_REPLICAS {
                    return Err(bad("replicas", format!("{} (expected 1..={MAX_DEPLOYMENT_REPLICAS})", c.replicas)));
                }
                let main_version = d.spec.as_ref().map(|s| s.version).unwrap_or(0);
                if spec.version == main_version {
                    return Err(bad(
                        "model",
                        format!(
                            "version {main_version} is what deployment {} already serves: a canary is another version",
                            d.name
                        ),
                    ));
                }
                // Same spec as the running canary: only its share or replica count changes, its replicas stay.
                let same = d
                    .canary
                    .as_ref()
                    .is_some_and(|old| same_replicas(old.spec.as_ref(), old.resources, Some(spec), c.resources));
                spec.generation = match &d.canary {
                    Some(old) if same => old.spec.as_ref().map(|s| s.generation).unwrap_or(0),
                    _ => last_generation(d) + 1,
                };
                d.last_generation = d.last_generation.max(spec.generation);
                d.canary = Some(c);
            }
            (None, true) => {
                let c = d.canary.take().ok_or_else(|| bad("name", format!("deployment {} has no canary", r.name)))?;
                let spec = c.spec.unwrap_or_default();
                d.generation = spec.generation;
                d.spec = Some(spec);
                d.requested = c.requested;
                d.resources = c.resources;
            }
            (None, false) => {
                d.canary.take().ok_or_else(|| bad("name", format!("deployment {} has no canary", r.name)))?;
            }
        }
        d.status.clear();
        d.updated_at_ms = now;
        dirty.mark(Table::Rows, deployment_key(&r.name));
        Ok(CommandResultV1 { deployment: Some(d.clone()), ..Default::default() })
    }

    fn scale(&mut self, r: &ScaleDeploymentV1, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let d =
            self.deployments.get_mut(&r.name).ok_or_else(|| not_found(format!("deployment {} not found", r.name)))?;
        let a = d.autoscale.ok_or_else(|| bad("name", format!("deployment {} is not autoscaled", r.name)))?;
        let (min, max) = crate::autoscale::bounds(&a);
        let replicas = r.replicas.clamp(min, max);
        if d.replicas != replicas {
            d.replicas = replicas;
            d.updated_at_ms = now;
            dirty.mark(Table::Rows, deployment_key(&r.name));
        }
        Ok(CommandResultV1 { deployment: Some(d.clone()), ..Default::default() })
    }

    fn delete_deployment(&mut self, name: &str, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let d = self.deployments.remove(name).ok_or_else(|| not_found(format!("deployment {name} not found")))?;
        dirty.mark(Table::Rows, deployment_key(name));
        Ok(CommandResultV1 { deployment: Some(d), ..Default::default() })
    }

    /// Sets why a deployment does not converge (`""`: it does). Written only when it changes.
    fn set_deployment_status(&mut self, name: &str, status: &str, dirty: &mut Dirty) {
        if let Some(d) = self.deployments.get_mut(name)
            && d.status != status
        {
            d.status = status.to_string();
            dirty.mark(Table::Rows, deployment_key(name));
        }
    }
}

/// Whether replicas of spec `a` with resources `ra` run what replicas of `b` with `rb` run (generations aside):
/// then a change keeps its generation, and no replica restarts.
fn same_replicas(a: Option<&ServeSpec>, ra: Option<Resources>, b: Option<&ServeSpec>, rb: Option<Resources>) -> bool {
    let plain = |s: Option<&ServeSpec>| ServeSpec { generation: 0, ..s.cloned().unwrap_or_default() };
    plain(a) == plain(b) && ra == rb
}

/// The highest generation ever given to `d` or a canary of it.
pub fn last_generation(d: &Deployment) -> u64 {
    let canary = d.canary.as_ref().and_then(|c| c.spec.as_ref()).map(|s| s.generation).unwrap_or(0);
    d.generation.max(d.last_generation).max(canary)
}

/// The generation of `d`'s canary, if it has one.
pub fn canary_generation(d: &Deployment) -> Option<u64> {
    d.canary.as_ref().and_then(|c| c.spec.as_ref()).map(|s| s.generation)
}

#[cfg(test)]
mod tests {
    use aidos_api::v1::{DeployV1, ServeSpec};

    use super::*;

    #[test]
    fn a_deployment_name_belongs_to_one_project() {
        let mut st = ServingState::default();
        let deploy = |st: &mut ServingState, project: &str| {
            let d = Deployment {
                name: "d".into(),
                project: project.into(),
                replicas: 1,
                spec: Some(ServeSpec { model: "m".into(), version: 1, ..Default::default() }),
                ..Default::default()
            };
            st.deploy(&DeployV1 { deployment: Some(d) }, 1, &mut Dirty::default())
        };
        assert!(deploy(&mut st, "").is_ok());
        assert!(deploy(&mut st, "default").is_ok(), "\"\" is the default project");
        let e = deploy(&mut st, "b").unwrap_err();
        assert!(e.message.contains("another project"), "{}", e.message);
        assert_eq!(st.deployments["d"].project, "default");
    }
}
