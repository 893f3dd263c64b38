//! The deployment reconciler: a pure function from the applied state to the actions that move every deployment
//! towards its spec. The leader runs it in a loop (`loops::run_reconciler`), proposes the actions, waits for them
//! to apply, and runs it again; nothing here does I/O.
//!
//! Rules, per deployment (a replica is *ready* when it runs and has reported its endpoint):
//! - Replicas of the current generation are kept at `replicas`: missing ones are submitted, extra ones cancelled
//!   (those not ready first). Replica jobs restart in place after a crash ([`REPLICA_RESTARTS`] times, placed
//!   anew, so elsewhere when their worker is gone); a replica job that runs out of restarts is replaced.
//! - Rolling to a new generation (new model version, runtime, batching or resources) surges by one: one new
//!   replica is started while every old one keeps serving; each time a new one has been ready for
//!   [`MIN_READY_MS`] (so that gateways, which follow the scheduler every 250 ms, route to it), one old one is
//!   cancelled (it keeps serving for a moment on SIGTERM, then drains: see `aidos serve replica`), and the next
//!   new one starts. Ready replicas never drop below `replicas` because of the rollout itself.
//! - A generation whose replicas keep failing ([`CRASH_LOOP_JOBS`] replica jobs failed) is not retried further:
//!   the older replicas keep serving and the deployment's status says why.
//! - A canary's replicas (those of its generation) are kept at the canary's replica count, apart from the rollout
//!   rules above: they are never "old". When the canary is rolled back its generation is no longer wanted and its
//!   replicas are cancelled like old ones; when it is promoted its generation becomes the deployment's, so its
//!   replicas count as current and only the others roll over. A crash-looping canary stops being restarted.
//! - Replica jobs whose deployment was deleted are cancelled.

use std::collections::BTreeMap;

use aidos_api::v1::{Deployment, JobKind, JobSpec, JobState, PlacementStrategy, Replica, Resources, job_spec::Payload};

use crate::state::ClusterState;
use crate::state::jobs::serve_spec;
use crate::state::serving::{canary_generation, replica_of};

/// Restarts of one replica job (in place or on another worker) before it counts as failed and is replaced.
pub const REPLICA_RESTARTS: u32 = 3;
/// Failed replica jobs of one generation after which the reconciler stops starting new ones.
pub const CRASH_LOOP_JOBS: usize = 3;
/// Priority of replica jobs: serving goes before batch work waiting for the same resources.
pub const REPLICA_PRIORITY: i32 = 100;
/// How long a new replica must have been ready before an old one is stopped for it.
pub const MIN_READY_MS: i64 = 1000;
/// Label that names the deployment on its replica jobs.
pub const DEPLOYMENT_LABEL: &str = "aidos.deployment";

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Boxed: a spec is large, and most actions are small.
    Submit(Box<JobSpec>),
    Cancel {
        job_id: String,
        why: String,
    },
    SetStatus {
        name: String,
        status: String,
    },
}

/// Default per-replica resources: one core, 512 MiB.
pub fn default_resources() -> Resources {
    Resources { cpu_millis: 1000, memory_bytes: 512 << 20, gpus: 0 }
}

/// The job spec of one replica of `d` (its current generation).
pub fn replica_spec(d: &Deployment) -> JobSpec {
    let mut spec = d.spec.clone().unwrap_or_default();
    spec.generation = d.generation;
    replica_job(d, spec, d.resources, "serve")
}

/// The job spec of one replica of `d`'s canary.
pub fn canary_spec(d: &Deployment) -> Option<JobSpec> {
    let c = d.canary.as_ref()?;
    Some(replica_job(d, c.spec.clone()?, c.resources, "canary"))
}

fn replica_job(
    d: &Deployment,
    mut spec: aidos_api::v1::ServeSpec,
    resources: Option<Resources>,
    what: &str,
) -> JobSpec {
    spec.deployment = d.name.clone();
    JobSpec {
        name: format!("{what}-{}", d.name),
        kind: JobKind::Serve as i32,
        resources: Some(resources.unwrap_or_else(default_resources)),
        replicas: 1,
        min_replicas: 0,
        priority: REPLICA_PRIORITY,
        max_retries: REPLICA_RESTARTS,
        labels: BTreeMap::from([(DEPLOYMENT_LABEL.to_string(), d.name.clone())]),
        constraints: vec![],
        placement: PlacementStrategy::Spread as i32,
        timeout_secs: 0,
        // Its replicas are jobs of the deployment's project (their tokens act in it).
        project: d.project.clone(),
        payload: Some(Payload::Serve(spec)),
    }
}

/// What to do now (see the module docs). `now_ms` is the leader's clock.
pub fn reconcile(st: &ClusterState, now_ms: i64) -> Vec<Action> {
    let mut live: BTreeMap<&str, Vec<Replica>> = BTreeMap::new();
    let mut out = Vec::new();
    for j in st.jobs.running_or_pending() {
        let Some(s) = serve_spec(j) else { continue };
        if !st.serving.deployments.contains_key(&s.deployment) {
            out.push(Action::Cancel { job_id: j.id.clone(), why: format!("deployment {} deleted", s.deployment) });
            continue;
        }
        if let Some(r) = replica_of(j) {
            live.entry(s.deployment.as_str()).or_default().push(r);
        }
    }
    if st.serving.deployments.is_empty() {
        return out;
    }
    // Failed replica jobs per (deployment, generation), with the last reason.
    let mut failed: BTreeMap<(&str, u64), (usize, &str)> = BTreeMap::new();
    for j in st.jobs.by_id.values() {
        if j.state != JobState::Failed as i32 {
            continue;
        }
        if let Some(s) = serve_spec(j) {
            let e = failed.entry((s.deployment.as_str(), s.generation)).or_default();
            e.0 += 1;
            e.1 = j.reason.as_str();
        }
    }
    for d in st.serving.deployments.values() {
        let reps = live.remove(d.name.as_str()).unwrap_or_default();
        let (fails, last) = failed.get(&(d.name.as_str(), d.generation)).copied().unwrap_or((0, ""));
        let crash_loop = fails >= CRASH_LOOP_JOBS;
        let status = if crash_loop {
            format!(
                "generation {} ({}:{}): {fails} replica jobs failed, last: {last}; older replicas keep serving, \
                 deploy again to retry",
                d.generation,
                d.spec.as_ref().map(|s| s.model.as_str()).unwrap_or(""),
                d.spec.as_ref().map(|s| s.version).unwrap_or(0)
            )
        } else {
            String::new()
        };
        // The canary's replicas are planned apart from the deployment's.
        let canary_gen = canary_generation(d);
        let (canary, reps): (Vec<Replica>, Vec<Replica>) =
            reps.into_iter().partition(|r| Some(r.generation) == canary_gen);
        let mut status = status;
        if let (Some(g), Some(c)) = (canary_gen, d.canary.as_ref()) {
            let (fails, last) = failed.get(&(d.name.as_str(), g)).copied().unwrap_or((0, ""));
            let crash_loop = fails >= CRASH_LOOP_JOBS;
            if crash_loop {
                let why = format!("canary generation {g}: {fails} replica jobs failed, last: {last}; roll it back");
                status = if status.is_empty() { why } else { format!("{status}; {why}") };
            }
            out.extend(plan_canary(d, c.replicas.max(1) as usize, &canary, crash_loop));
        }
        if status != d.status {
            out.push(Action::SetStatus { name: d.name.clone(), status });
        }
        out.extend(plan(d, &reps, crash_loop, now_ms));
    }
    out
}

/// The submits and cancels for a canary of `want` replicas given its live ones: extras go (not ready first),
/// missing ones start (unless it crash-loops).
fn plan_canary(d: &Deployment, want: usize, live: &[Replica], crash_loop: bool) -> Vec<Action> {
    let mut out = Vec::new();
    let mut live: Vec<&Replica> = live.iter().collect();
    if live.len() > want {
        live.sort_by_key(|r| r.ready);
        for r in live.drain(..live.len() - want) {
            out.push(Action::Cancel {
                job_id: r.job_id.clone(),
                why: format!("canary of {} scaled to {want}", d.name),
            });
        }
    }
    if !crash_loop {
        for _ in live.len()..want {
            out.extend(canary_spec(d).map(|s| Action::Submit(Box::new(s))));
        }
    }
    out
}

/// The submits and cancels for one deployment given its live replicas (oldest first).
fn plan(d: &Deployment, reps: &[Replica], crash_loop: bool, now_ms: i64) -> Vec<Action> {
    let want = d.replicas.max(1) as usize;
    let mut out = Vec::new();
    let (mut cur, mut old): (Vec<&Replica>, Vec<&Replica>) = reps.iter().partition(|r| r.generation == d.generation);
    // Extra current replicas: cancel those not ready first, then the newest.
    if cur.len() > want {
        cur.sort_by_key(|r| r.ready);
        for r in cur.drain(..cur.len() - want) {
            out.push(Action::Cancel {
                job_id: r.job_id.clone(),
                why: format!("deployment {} scaled to {want}", d.name),
            });
        }
    }
    let cur_ready = cur.iter().filter(|r| r.ready && now_ms - r.ready_at_ms >= MIN_READY_MS).count();
    // Old replicas: keep only as many as the current generation still lacks ready ones, not-ready ones go first.
    let keep_old = want.saturating_sub(cur_ready);
    if old.len() > keep_old {
        old.sort_by_key(|r| r.ready);
        for r in old.drain(..old.len() - keep_old) {
            out.push(Action::Cancel {
                job_id: r.job_id.clone(),
                why: format!("replaced by generation {} of deployment {}", d.generation, d.name),
            });
        }
    }
    if crash_loop {
        return out;
    }
    // New replicas: all at once when nothing old serves; otherwise surge by one.
    let limit = if old.is_empty() { want } else { want + 1 };
    let mut n = cur.len();
    while n < want && n + old.len() < limit {
        out.push(Action::Submit(Box::new(replica_spec(d))));
        n += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aidos_api::v1::{ServeSpec, TaskState};

    fn dep(gen_: u64, replicas: u32) -> Deployment {
        Deployment {
            name: "m".into(),
            spec: Some(ServeSpec { model: "m".into(), version: gen_ as u32, ..Default::default() }),
            replicas,
            generation: gen_,
            ..Default::default()
        }
    }
    fn rep(id: &str, gen_: u64, ready: bool) -> Replica {
        Replica {
            job_id: id.into(),
            generation: gen_,
            ready,
            ready_at_ms: 0,
            state: if ready { TaskState::Running as i32 } else { TaskState::Pending as i32 },
            ..Default::default()
        }
    }
    /// Long after every replica in these tests became ready.
    const T: i64 = 1_000_000;

    fn count(a: &[Action]) -> (usize, Vec<String>) {
        let submits = a.iter().filter(|x| matches!(x, Action::Submit(_))).count();
        let cancels = a
            .iter()
            .filter_map(|x| match x {
                Action::Cancel { job_id, .. } => Some(job_id.clone()),
                _ => None,
            })
            .collect();
        (submits, cancels)
    }

    #[test]
    fn a_canary_keeps_its_own_replicas_and_promotion_keeps_them_running() {
        use aidos_api::v1::Canary;
        let mut d = dep(1, 2);
        let canary = |g: u64| Canary {
            spec: Some(ServeSpec { model: "m".into(), version: 2, generation: g, ..Default::default() }),
            replicas: 1,
            percent: 10,
            ..Default::default()
        };
        d.canary = Some(canary(2));
        let main = [rep("a", 1, true), rep("b", 1, true)];
        // The deployment's replicas are left alone; the canary's one starts.
        let (submits, cancels) = count(&plan(&d, &main, false, T));
        assert_eq!((submits, cancels.len()), (0, 0));
        let a = plan_canary(&d, 1, &[], false);
        let Action::Submit(spec) = &a[0] else { panic!("{a:?}") };
        let Some(Payload::Serve(s)) = &spec.payload else { panic!() };
        assert_eq!((s.version, s.generation, s.deployment.as_str()), (2, 2, "m"));
        assert_eq!(count(&plan_canary(&d, 1, &[rep("c", 2, true)], false)), (0, vec![]));
        assert_eq!(count(&plan_canary(&d, 1, &[rep("c", 2, true), rep("e", 2, false)], false)), (0, vec!["e".into()]));
        assert_eq!(count(&plan_canary(&d, 1, &[], true)), (0, vec![]), "a crash-looping canary is not restarted");
        // Promoted: the canary's generation is current, so only the old replicas roll over (surge by one).
        let mut p = dep(2, 2);
        p.spec.as_mut().unwrap().generation = 2;
        let s = [rep("a", 1, true), rep("b", 1, true), rep("c", 2, true)];
        assert_eq!(count(&plan(&p, &s, false, T)), (1, vec!["a".to_string()]));
        // Rolled back: its replicas are old ones of a generation nobody wants.
        let s = [rep("a", 1, true), rep("b", 1, true), rep("c", 2, true)];
        assert_eq!(count(&plan(&dep(1, 2), &s, false, T)), (0, vec!["c".to_string()]));
    }

    #[test]
    fn a_new_deployment_starts_every_replica_at_once() {
        assert_eq!(count(&plan(&dep(1, 3), &[], false, T)), (3, vec![]));
        assert_eq!(count(&plan(&dep(1, 3), &[rep("a", 1, true)], false, T)), (2, vec![]));
    }

    #[test]
    fn a_rollout_surges_by_one_and_never_drops_ready_replicas() {
        let d = dep(2, 2);
        // Two old ready replicas: start one new, cancel nothing.
        assert_eq!(count(&plan(&d, &[rep("a", 1, true), rep("b", 1, true)], false, T)), (1, vec![]));
        // The new one is not ready yet: wait.
        let s = [rep("a", 1, true), rep("b", 1, true), rep("c", 2, false)];
        assert_eq!(count(&plan(&d, &s, false, T)), (0, vec![]));
        // It is ready: one old goes, the next new one starts.
        let s = [rep("a", 1, true), rep("b", 1, true), rep("c", 2, true)];
        assert_eq!(count(&plan(&d, &s, false, T)), (1, vec!["a".to_string()]));
        // Both new ready: the last old goes.
        let s = [rep("b", 1, true), rep("c", 2, true), rep("d", 2, true)];
        assert_eq!(count(&plan(&d, &s, false, T)), (0, vec!["b".to_string()]));
        // Converged.
        assert_eq!(count(&plan(&d, &[rep("c", 2, true), rep("d", 2, true)], false, T)), (0, vec![]));
    }

    #[test]
    fn an_old_replica_stays_until_the_new_one_has_been_ready_for_a_while() {
        let d = dep(2, 1);
        let mut new = rep("b", 2, true);
        new.ready_at_ms = T - MIN_READY_MS / 2;
        assert_eq!(count(&plan(&d, &[rep("a", 1, true), new.clone()], false, T)), (0, vec![]));
        new.ready_at_ms = T - MIN_READY_MS;
        assert_eq!(count(&plan(&d, &[rep("a", 1, true), new], false, T)), (0, vec!["a".to_string()]));
    }

    #[test]
    fn old_replicas_that_do_not_serve_go_first() {
        let d = dep(2, 2);
        let s = [rep("a", 1, false), rep("b", 1, true), rep("c", 2, true)];
        assert_eq!(count(&plan(&d, &s, false, T)), (1, vec!["a".to_string()]));
    }

    #[test]
    fn scaling_down_cancels_replicas_that_are_not_ready_first() {
        let d = dep(1, 1);
        let s = [rep("a", 1, true), rep("b", 1, false)];
        assert_eq!(count(&plan(&d, &s, false, T)), (0, vec!["b".to_string()]));
    }

    #[test]
    fn a_crash_looping_generation_keeps_the_old_replicas() {
        let d = dep(2, 2);
        let s = [rep("a", 1, true), rep("b", 1, true)];
        assert_eq!(count(&plan(&d, &s, true, T)), (0, vec![]));
    }
}
