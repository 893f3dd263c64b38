//! The registry domain's tracking half: experiments, runs that no job writes, and model names created before
//! their first version (what the MLflow-compatible API records: `crate::mlflow`). Rows live beside the registry's
//! in table `Rows`: experiments under `xp/<id>`, model names under `n/<name>`; runs under `r/<id>` as every run.
//!
//! Invariants: experiment ids are "1", "2", ... in creation order ("0", Default, is implicit and holds every
//! job's run); experiment names are unique per project; a run created here has no job, and only runs without a
//! job can be changed here (a job's run is its trainer's); a param, once set, keeps its value; status moves among
//! the five MLflow states freely (a client may end a run and resume it).
//! Limits: [`MAX_PARAM_VALUE`], [`MAX_TAG_VALUE`], [`MAX_KEY`] bytes; at most [`MAX_POINTS_PER_UPDATE`] points and
//! [`MAX_ENTRIES_PER_UPDATE`] params + tags + artifacts in one update; [`MAX_ARTIFACTS_PER_RUN`] files and
//! [`MAX_ENTRIES_PER_RUN`] params + tags per run;
//! the run's points are bounded as every run's (`MAX_POINTS_PER_RUN`, oldest dropped).

use aidos_api::v1::{
    CommandResultV1, CreateExperimentV1, CreateRunV1, Experiment, RegisteredModel, Run, UpdateRunRequest,
};

use super::registry::{MAX_POINTS_PER_RUN, RegistryState, run_key};
use super::{Dirty, Refusal, Table, bad, check_blob_id, check_name, not_found, refuse};

pub const MAX_KEY: usize = 250;
pub const MAX_PARAM_VALUE: usize = 6000;
pub const MAX_TAG_VALUE: usize = 8000;
pub const MAX_POINTS_PER_UPDATE: usize = 1000;
pub const MAX_ENTRIES_PER_UPDATE: usize = 1000;
pub const MAX_ARTIFACTS_PER_RUN: usize = 10_000;
/// Params and tags of one run, together.
pub const MAX_ENTRIES_PER_RUN: usize = 10_000;
/// The run states MLflow knows.
pub const RUN_STATUSES: [&str; 5] = ["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"];
/// The implicit experiment of every job's run.
pub const DEFAULT_EXPERIMENT: &str = "0";

pub fn experiment_key(id: &str) -> String {
    format!("xp/{id}")
}
pub fn model_name_key(name: &str) -> String {
    format!("n/{name}")
}

/// A free-text name (experiments, runs): 1..=256 bytes, no control characters.
fn check_text(field: &str, s: &str) -> Result<(), Refusal> {
    if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
        return Err(bad(field, format!("{s:?}: 1-256 characters, none of them control characters")));
    }
    Ok(())
}

fn check_entry(field: &str, k: &str, v: &str, max_value: usize) -> Result<(), Refusal> {
    if k.is_empty() || k.len() > MAX_KEY || k.chars().any(char::is_control) {
        return Err(bad(field, format!("key {k:?}: 1-{MAX_KEY} bytes, no control characters")));
    }
    if v.len() > max_value {
        return Err(bad(field, format!("{k}: value of {} bytes, at most {max_value}", v.len())));
    }
    Ok(())
}

impl RegistryState {
    /// The experiment named `name` in `project` (Default when `name` is "Default").
    pub fn experiment_by_name(&self, project: &str, name: &str) -> Option<&Experiment> {
        self.experiments.values().find(|e| e.project == project && e.name == name)
    }

    pub(super) fn create_experiment(
        &mut self,
        c: &CreateExperimentV1,
        now: i64,
        dirty: &mut Dirty,
    ) -> Result<CommandResultV1, Refusal> {
        let mut e = c.experiment.clone().ok_or_else(|| bad("experiment", "missing"))?;
        check_text("experiment.name", &e.name)?;
        if e.name == "Default" || self.experiment_by_name(&e.project, &e.name).is_some() {
            return Err(refuse(tonic::Code::AlreadyExists, format!("experiment {:?} already exists", e.name)));
        }
        for (k, v) in &e.tags {
            check_entry("experiment.tags", k, v, MAX_TAG_VALUE)?;
        }
        e.id = (self.experiments.len() + 1).to_string();
        e.created_at_ms = now;
        dirty.mark(Table::Rows, experiment_key(&e.id));
        self.experiments.insert(e.id.clone(), e.clone());
        Ok(CommandResultV1 { experiment: Some(e), ..Default::default() })
    }

    pub(super) fn create_run(
        &mut self,
        c: &CreateRunV1,
        now: i64,
        dirty: &mut Dirty,
    ) -> Result<CommandResultV1, Refusal> {
        let mut r = c.run.clone().ok_or_else(|| bad("run", "missing"))?;
        if r.id.is_empty() || self.runs.contains_key(&r.id) {
            return Err(bad("run.id", format!("{:?} is empty or taken", r.id)));
        }
        if r.experiment_id != DEFAULT_EXPERIMENT && !self.experiments.contains_key(&r.experiment_id) {
            return Err(not_found(format!("experiment {} not found", r.experiment_id)));
        }
        if !r.name.is_empty() {
            check_text("run.name", &r.name)?;
        }
        for (k, v) in &r.tags {
            check_entry("run.tags", k, v, MAX_TAG_VALUE)?;
        }
        r.job_id.clear();
        r.status = "RUNNING".into();
        if r.created_at_ms == 0 {
            r.created_at_ms = now;
        }
        dirty.mark(Table::Rows, run_key(&r.id));
        self.runs.insert(r.id.clone(), r.clone());
        Ok(CommandResultV1 { run: Some(r), ..Default::default() })
    }

    pub(super) fn update_run(&mut self, u: &UpdateRunRequest, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let run = self.runs.get(&u.run_id).ok_or_else(|| not_found(format!("run {} not found", u.run_id)))?;
        if !run.job_id.is_empty() {
            return Err(refuse(
                tonic::Code::FailedPrecondition,
                format!("run {} belongs to job {}: only its trainer writes it", u.run_id, run.job_id),
            ));
        }
        check_update(run, u)?;
        let run = self.runs.get_mut(&u.run_id).expect("checked above");
        run.params.extend(u.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        run.tags.extend(u.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        for k in &u.delete_tags {
            run.tags.remove(k);
        }
        run.artifacts.extend(u.artifacts.iter().map(|(k, v)| (k.clone(), v.clone())));
        run.metrics.extend(u.metrics.iter().cloned());
        if run.metrics.len() > MAX_POINTS_PER_RUN {
            let drop = run.metrics.len() - MAX_POINTS_PER_RUN;
            run.metrics.drain(..drop);
        }
        if !u.status.is_empty() {
            run.status = u.status.clone();
        }
        if u.ended_at_ms != 0 {
            run.ended_at_ms = u.ended_at_ms;
        }
        if !u.name.is_empty() {
            run.name = u.name.clone();
        }
        dirty.mark(Table::Rows, run_key(&u.run_id));
        Ok(CommandResultV1 { run: Some(run.clone()), ..Default::default() })
    }

    pub(super) fn create_model(
        &mut self,
        m: &RegisteredModel,
        now: i64,
        dirty: &mut Dirty,
    ) -> Result<CommandResultV1, Refusal> {
        check_name("name", &m.name)?;
        if self.model_names.contains_key(&m.name) || self.models.get(&m.name).is_some_and(|v| !v.is_empty()) {
            return Err(refuse(tonic::Code::AlreadyExists, format!("model {} already exists", m.name)));
        }
        if m.description.len() > MAX_TAG_VALUE {
            return Err(bad("description", format!("{} bytes, at most {MAX_TAG_VALUE}", m.description.len())));
        }
        let m = RegisteredModel { created_at_ms: now, ..m.clone() };
        dirty.mark(Table::Rows, model_name_key(&m.name));
        self.model_names.insert(m.name.clone(), m.clone());
        Ok(CommandResultV1 { registered_model: Some(m), ..Default::default() })
    }
}

/// Every check of an update, before anything changes (the update applies whole or not at all).
fn check_update(run: &Run, u: &UpdateRunRequest) -> Result<(), Refusal> {
    if u.metrics.len() > MAX_POINTS_PER_UPDATE {
        return Err(bad("metrics", format!("{} in one update, at most {MAX_POINTS_PER_UPDATE}", u.metrics.len())));
    }
    let entries = u.params.len() + u.tags.len() + u.artifacts.len() + u.delete_tags.len();
    if entries > MAX_ENTRIES_PER_UPDATE {
        return Err(bad("update", format!("{entries} params, tags and files, at most {MAX_ENTRIES_PER_UPDATE}")));
    }
    for (k, v) in &u.params {
        check_entry("params", k, v, MAX_PARAM_VALUE)?;
        if let Some(old) = run.params.get(k).filter(|old| *old != v) {
            return Err(bad("params", format!("{k} is already {old:?} (a param is set once); refused {v:?}")));
        }
    }
    for (k, v) in &u.tags {
        check_entry("tags", k, v, MAX_TAG_VALUE)?;
    }
    for p in &u.metrics {
        check_entry("metrics", &p.name, "", 0)?;
    }
    for (path, blob) in &u.artifacts {
        let safe = !path.is_empty()
            && path.len() <= 1024
            && !path.starts_with('/')
            && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        if !safe {
            return Err(bad("artifacts", format!("path {path:?}: relative, without empty, `.` or `..` parts")));
        }
        check_blob_id(blob).map_err(|e| bad("artifacts", format!("{path}: {e}")))?;
    }
    let entries = run.params.len() + run.tags.len() + u.params.len() + u.tags.len();
    if entries > MAX_ENTRIES_PER_RUN {
        return Err(bad("update", format!("a run holds at most {MAX_ENTRIES_PER_RUN} params and tags")));
    }
    if run.artifacts.len() + u.artifacts.len() > MAX_ARTIFACTS_PER_RUN {
        return Err(bad("artifacts", format!("a run holds at most {MAX_ARTIFACTS_PER_RUN} files")));
    }
    if !u.status.is_empty() && !RUN_STATUSES.contains(&u.status.as_str()) {
        return Err(bad("status", format!("{:?} (expected one of {})", u.status, RUN_STATUSES.join(", "))));
    }
    if !u.name.is_empty() {
        check_text("name", &u.name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use aidos_api::v1::MetricPoint;

    use super::*;

    fn state_with_run() -> RegistryState {
        let mut s = RegistryState::default();
        let run = Run { id: "ml-1".into(), experiment_id: "0".into(), ..Default::default() };
        s.create_run(&CreateRunV1 { run: Some(run) }, 5, &mut Dirty::default()).unwrap();
        s
    }

    #[test]
    fn experiments_get_ids_in_order_and_unique_names_per_project() {
        let mut s = RegistryState::default();
        let exp = |name: &str, project: &str| CreateExperimentV1 {
            experiment: Some(Experiment { name: name.into(), project: project.into(), ..Default::default() }),
        };
        let a = s.create_experiment(&exp("mnist", "p"), 1, &mut Dirty::default()).unwrap().experiment.unwrap();
        let b = s.create_experiment(&exp("mnist", "q"), 1, &mut Dirty::default()).unwrap().experiment.unwrap();
        assert_eq!((a.id.as_str(), b.id.as_str()), ("1", "2"));
        let again = s.create_experiment(&exp("mnist", "p"), 1, &mut Dirty::default()).unwrap_err();
        assert_eq!(again.code, tonic::Code::AlreadyExists);
        assert_eq!(
            s.create_experiment(&exp("Default", "p"), 1, &mut Dirty::default()).unwrap_err().code,
            tonic::Code::AlreadyExists
        );
        assert!(s.create_experiment(&exp("", "p"), 1, &mut Dirty::default()).is_err());
    }

    #[test]
    fn updates_apply_whole_and_params_are_set_once() {
        let mut s = state_with_run();
        let point = |v: f64| MetricPoint { name: "loss".into(), value: v, step: 1, ..Default::default() };
        let u = UpdateRunRequest {
            run_id: "ml-1".into(),
            params: [("lr".to_string(), "0.1".to_string())].into(),
            metrics: vec![point(1.0)],
            tags: [("team".to_string(), "a".to_string())].into(),
            status: "FINISHED".into(),
            ended_at_ms: 9,
            ..Default::default()
        };
        let r = s.update_run(&u, &mut Dirty::default()).unwrap().run.unwrap();
        assert_eq!((r.status.as_str(), r.ended_at_ms, r.metrics.len()), ("FINISHED", 9, 1));
        // The same param value again is fine; another is refused, and nothing of that update lands.
        s.update_run(
            &UpdateRunRequest { run_id: "ml-1".into(), params: u.params.clone(), ..Default::default() },
            &mut Dirty::default(),
        )
        .unwrap();
        let clash = UpdateRunRequest {
            run_id: "ml-1".into(),
            params: [("lr".to_string(), "0.2".to_string())].into(),
            metrics: vec![point(2.0)],
            ..Default::default()
        };
        let e = s.update_run(&clash, &mut Dirty::default()).unwrap_err();
        assert!(e.message.contains("lr is already \"0.1\""), "{e:?}");
        assert_eq!(s.runs["ml-1"].metrics.len(), 1, "a refused update changed the run");
        for bad in [
            UpdateRunRequest { status: "DONE".into(), ..Default::default() },
            UpdateRunRequest { artifacts: [("../x".to_string(), "a".repeat(64))].into(), ..Default::default() },
            UpdateRunRequest { artifacts: [("m/x".to_string(), "nothex".into())].into(), ..Default::default() },
            UpdateRunRequest { metrics: vec![point(0.0); MAX_POINTS_PER_UPDATE + 1], ..Default::default() },
        ] {
            let u = UpdateRunRequest { run_id: "ml-1".into(), ..bad };
            assert_eq!(s.update_run(&u, &mut Dirty::default()).unwrap_err().code, tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn a_jobs_run_is_not_written_here_and_unknown_runs_are_not_found() {
        let mut s = state_with_run();
        s.runs.insert("job-1.1".into(), Run { id: "job-1.1".into(), job_id: "job-1".into(), ..Default::default() });
        let u = |id: &str| UpdateRunRequest { run_id: id.into(), status: "KILLED".into(), ..Default::default() };
        assert_eq!(
            s.update_run(&u("job-1.1"), &mut Dirty::default()).unwrap_err().code,
            tonic::Code::FailedPrecondition
        );
        assert_eq!(s.update_run(&u("ml-9"), &mut Dirty::default()).unwrap_err().code, tonic::Code::NotFound);
        let taken =
            CreateRunV1 { run: Some(Run { id: "ml-1".into(), experiment_id: "0".into(), ..Default::default() }) };
        assert!(s.create_run(&taken, 1, &mut Dirty::default()).is_err());
        let nowhere =
            CreateRunV1 { run: Some(Run { id: "ml-2".into(), experiment_id: "7".into(), ..Default::default() }) };
        assert_eq!(s.create_run(&nowhere, 1, &mut Dirty::default()).unwrap_err().code, tonic::Code::NotFound);
    }

    #[test]
    fn a_model_name_is_created_once() {
        let mut s = RegistryState::default();
        let m = RegisteredModel { name: "digits".into(), ..Default::default() };
        s.create_model(&m, 1, &mut Dirty::default()).unwrap();
        assert_eq!(s.create_model(&m, 1, &mut Dirty::default()).unwrap_err().code, tonic::Code::AlreadyExists);
        assert!(
            s.create_model(
                &RegisteredModel { name: "bad/name".into(), ..Default::default() },
                1,
                &mut Dirty::default()
            )
            .is_err()
        );
    }
}
