//! The registry domain: dataset versions, runs (one per training attempt: params, metric series, checkpoints) and
//! the model registry (versions, aliases, lineage), in table `Rows` under `d/<name>/<version>`, `r/<run id>` and
//! `m/<name>/<version>` (and `xp/`, `n/`: `state::tracking`). Bytes live in the blob store; only manifests and references are replicated.
//!
//! Invariants: versions of a name are 1, 2, ... in commit order and never change once committed; an alias names
//! at most one version of its model; reports from a trainer are fenced exactly like task status reports, so an
//! attempt that was declared lost cannot append metrics, record checkpoints or register a model.
//! Limits: a run keeps at most [`MAX_POINTS_PER_RUN`] metric points and [`MAX_CHECKPOINTS_PER_RUN`] checkpoint
//! references (the oldest are dropped); one report carries at most [`MAX_POINTS_PER_REPORT`] points.

use std::collections::BTreeMap;

use aidos_api::auth::project_or_default;
use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{
    AttemptRef, CheckpointRef, CommandResultV1, CommitDatasetRequest, DatasetManifest, Experiment, ModelVersion,
    RecordCheckpointRequest, RegisterModelRequest, RegisteredModel, ReportMetricsRequest, Run, SetAliasRequest,
    SetArtifactRequest, StateSnapshotV1,
};
use prost::Message;

use super::tracking::{experiment_key, model_name_key};
use super::{Dirty, Domain, JobsState, Refusal, RowKind, Rows, Table, bad, check_blob_id, check_name, not_found};

const DATASET_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "d/", snapshot_field: 7 };
const RUN_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "r/", snapshot_field: 8 };
const MODEL_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "m/", snapshot_field: 9 };
const EXPERIMENT_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "xp/", snapshot_field: 16 };
const MODEL_NAME_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "n/", snapshot_field: 17 };

pub const MAX_POINTS_PER_RUN: usize = 200_000;
pub const MAX_POINTS_PER_REPORT: usize = 10_000;
pub const MAX_CHECKPOINTS_PER_RUN: usize = 64;

pub fn dataset_key(name: &str, v: u32) -> String {
    format!("d/{name}/{v}")
}
pub fn run_key(id: &str) -> String {
    format!("r/{id}")
}
pub fn model_key(name: &str, v: u32) -> String {
    format!("m/{name}/{v}")
}

pub fn run_id(job_id: &str, attempt: u32) -> String {
    format!("{job_id}.{attempt}")
}

/// Dataset versions, runs and model versions.
#[derive(Debug, Default, Clone)]
pub struct RegistryState {
    /// Dataset versions by name (index = version - 1).
    pub datasets: BTreeMap<String, Vec<DatasetManifest>>,
    /// Runs by id (`<job>.<attempt>`).
    pub runs: BTreeMap<String, Run>,
    /// Model versions by name (index = version - 1).
    pub models: BTreeMap<String, Vec<ModelVersion>>,
    /// Experiments by id (`state::tracking`).
    pub experiments: BTreeMap<String, Experiment>,
    /// Model names created before (or without) their first version, by name (`state::tracking`).
    pub model_names: BTreeMap<String, RegisteredModel>,
}

impl Rows for RegistryState {
    const ROWS: &'static [RowKind] = &[DATASET_ROWS, RUN_ROWS, MODEL_ROWS, EXPERIMENT_ROWS, MODEL_NAME_ROWS];

    fn row(&self, _table: Table, key: &str) -> Option<Vec<u8>> {
        let mut parts = key.splitn(3, '/');
        let kind = parts.next()?;
        match kind {
            "r" => return self.runs.get(key.get(2..)?).map(|r| r.encode_to_vec()),
            "xp" => return self.experiments.get(key.get(3..)?).map(|e| e.encode_to_vec()),
            "n" => return self.model_names.get(key.get(2..)?).map(|m| m.encode_to_vec()),
            _ => {}
        }
        let name = parts.next()?;
        let i = parts.next()?.parse::<usize>().ok()?.checked_sub(1)?;
        match kind {
            "d" => self.datasets.get(name)?.get(i).map(|d| d.encode_to_vec()),
            "m" => self.models.get(name)?.get(i).map(|m| m.encode_to_vec()),
            _ => None,
        }
    }

    fn load_row(&mut self, _table: Table, key: &str, bytes: &[u8]) -> Result<(), prost::DecodeError> {
        match key.as_bytes().first() {
            Some(b'd') => {
                let m = DatasetManifest::decode(bytes)?;
                insert_versioned(self.datasets.entry(m.name.clone()).or_default(), m.version, m);
            }
            Some(b'm') => {
                let m = ModelVersion::decode(bytes)?;
                insert_versioned(self.models.entry(m.name.clone()).or_default(), m.version, m);
            }
            Some(b'r') => {
                let r = Run::decode(bytes)?;
                self.runs.insert(r.id.clone(), r);
            }
            Some(b'x') if key.starts_with("xp/") => {
                let e = Experiment::decode(bytes)?;
                self.experiments.insert(e.id.clone(), e);
            }
            Some(b'n') => {
                let m = RegisteredModel::decode(bytes)?;
                self.model_names.insert(m.name.clone(), m);
            }
            _ => {}
        }
        Ok(())
    }

    fn keys(&self) -> Vec<(Table, String)> {
        let datasets = self.datasets.values().flatten().map(|d| dataset_key(&d.name, d.version));
        let models = self.models.values().flatten().map(|m| model_key(&m.name, m.version));
        let runs = self.runs.keys().map(|r| run_key(r));
        let experiments = self.experiments.keys().map(|e| experiment_key(e));
        let names = self.model_names.keys().map(|n| model_name_key(n));
        datasets.chain(models).chain(runs).chain(experiments).chain(names).map(|k| (Table::Rows, k)).collect()
    }

    fn snapshot(&self, out: &mut StateSnapshotV1) {
        out.datasets = self.datasets.values().flatten().cloned().collect();
        out.runs = self.runs.values().cloned().collect();
        out.models = self.models.values().flatten().cloned().collect();
        out.experiments = self.experiments.values().cloned().collect();
        out.registered_models = self.model_names.values().cloned().collect();
    }

    fn restore(&mut self, s: &mut StateSnapshotV1) {
        for d in std::mem::take(&mut s.datasets) {
            insert_versioned(self.datasets.entry(d.name.clone()).or_default(), d.version, d);
        }
        for m in std::mem::take(&mut s.models) {
            insert_versioned(self.models.entry(m.name.clone()).or_default(), m.version, m);
        }
        for r in std::mem::take(&mut s.runs) {
            self.runs.insert(r.id.clone(), r);
        }
        for e in std::mem::take(&mut s.experiments) {
            self.experiments.insert(e.id.clone(), e);
        }
        for m in std::mem::take(&mut s.registered_models) {
            self.model_names.insert(m.name.clone(), m);
        }
    }
}

impl Domain for RegistryState {
    fn apply(
        &mut self,
        cmd: &Command,
        now: i64,
        jobs: &JobsState,
        dirty: &mut Dirty,
    ) -> Option<Result<CommandResultV1, Refusal>> {
        Some(match cmd {
            Command::CommitDataset(r) => self.commit_dataset(r, now, dirty),
            Command::ReportMetrics(r) => self.report_metrics(r, now, jobs, dirty),
            Command::RecordCheckpoint(r) => self.record_checkpoint(r, now, jobs, dirty),
            Command::RegisterModel(r) => self.register_model(r, now, jobs, dirty),
            Command::SetAlias(r) => self.set_alias(r, dirty),
            Command::SetArtifact(r) => self.set_artifact(r, dirty),
            Command::CreateExperiment(c) => self.create_experiment(c, now, dirty),
            Command::CreateRun(c) => self.create_run(c, now, dirty),
            Command::UpdateRun(u) => self.update_run(u, dirty),
            Command::CreateModel(m) => self.create_model(m, now, dirty),
            _ => return None,
        })
    }
}

impl RegistryState {
    pub fn dataset(&self, name: &str, version: u32) -> Option<&DatasetManifest> {
        let vs = self.datasets.get(name)?;
        if version == 0 { vs.last() } else { vs.get(version as usize - 1) }
    }

    pub fn model(&self, name: &str, version: u32, alias: &str) -> Option<&ModelVersion> {
        let vs = self.models.get(name)?;
        if !alias.is_empty() {
            return vs.iter().find(|m| m.aliases.iter().any(|a| a == alias));
        }
        if version == 0 { vs.last() } else { vs.get(version as usize - 1) }
    }

    fn commit_dataset(
        &mut self,
        r: &CommitDatasetRequest,
        now: i64,
        dirty: &mut Dirty,
    ) -> Result<CommandResultV1, Refusal> {
        let mut m = r.manifest.clone().ok_or_else(|| bad("manifest", "missing"))?;
        check_name("manifest.name", &m.name)?;
        let count = m.feature_chunks.iter().map(|c| c.rows).sum::<u64>();
        if count != m.rows || m.label_chunks.iter().map(|c| c.rows).sum::<u64>() != m.rows {
            return Err(bad("manifest", format!("chunks hold {count} rows but the manifest says {}", m.rows)));
        }
        for s in &m.splits {
            if s.start > s.end || s.end > m.rows {
                return Err(bad(
                    "manifest.splits",
                    format!("{} [{}, {}) is outside 0..{}", s.name, s.start, s.end, m.rows),
                ));
            }
        }
        let versions = self.datasets.entry(m.name.clone()).or_default();
        if let Some(first) = versions.first()
            && project_or_default(&first.project) != project_or_default(&m.project)
        {
            return Err(bad("manifest.name", format!("dataset {} exists in another project", m.name)));
        }
        m.version = versions.len() as u32 + 1;
        m.created_at_ms = now;
        versions.push(m.clone());
        dirty.mark(Table::Rows, dataset_key(&m.name, m.version));
        Ok(CommandResultV1 { dataset: Some(m), ..Default::default() })
    }

    fn report_metrics(
        &mut self,
        r: &ReportMetricsRequest,
        now: i64,
        jobs: &JobsState,
        dirty: &mut Dirty,
    ) -> Result<CommandResultV1, Refusal> {
        let a = r.attempt.clone().ok_or_else(|| bad("attempt", "missing"))?;
        jobs.check_current(&r.worker_id, &a)?;
        if r.points.len() > MAX_POINTS_PER_REPORT {
            return Err(bad("points", format!("{} in one report, at most {MAX_POINTS_PER_REPORT}", r.points.len())));
        }
        let id = run_id(&a.job_id, a.attempt);
        let run = self.run_mut(&a, now);
        run.params.extend(r.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        if !r.dataset.is_empty() {
            run.dataset = r.dataset.clone();
        }
        if r.resumed_from_step > 0 {
            run.resumed_from_step = r.resumed_from_step;
        }
        run.metrics.extend(r.points.iter().cloned());
        if run.metrics.len() > MAX_POINTS_PER_RUN {
            let drop = run.metrics.len() - MAX_POINTS_PER_RUN;
            run.metrics.drain(..drop);
        }
        dirty.mark(Table::Rows, run_key(&id));
        Ok(CommandResultV1::default())
    }

    fn record_checkpoint(
        &mut self,
        r: &RecordCheckpointRequest,
        now: i64,
        jobs: &JobsState,
        dirty: &mut Dirty,
    ) -> Result<CommandResultV1, Refusal> {
        let a = r.attempt.clone().ok_or_else(|| bad("attempt", "missing"))?;
        jobs.check_current(&r.worker_id, &a)?;
        let ck = r.checkpoint.clone().ok_or_else(|| bad("checkpoint", "missing"))?;
        check_blob_id(&ck.blob).map_err(|e| bad("checkpoint.blob", e))?;
        let id = run_id(&a.job_id, a.attempt);
        let run = self.run_mut(&a, now);
        run.checkpoints.push(ck);
        if run.checkpoints.len() > MAX_CHECKPOINTS_PER_RUN {
            run.checkpoints.remove(0);
        }
        dirty.mark(Table::Rows, run_key(&id));
        Ok(CommandResultV1::default())
    }

    /// The run of an attempt, created on its first report.
    fn run_mut(&mut self, a: &AttemptRef, now: i64) -> &mut Run {
        let id = run_id(&a.job_id, a.attempt);
        self.runs.entry(id.clone()).or_insert_with(|| Run {
            id,
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            created_at_ms: now,
            ..Default::default()
        })
    }

    /// The newest checkpoint of any attempt of `job_id`, with its run id.
    pub fn latest_checkpoint(&self, job_id: &str) -> Option<(String, CheckpointRef)> {
        self.runs
            .values()
            .filter(|r| r.job_id == job_id)
            .flat_map(|r| r.checkpoints.iter().map(move |c| (r.id.clone(), c.clone())))
            .max_by_key(|(_, c)| (c.step, c.time_ms))
    }

    fn register_model(
        &mut self,
        r: &RegisterModelRequest,
        now: i64,
        jobs: &JobsState,
        dirty: &mut Dirty,
    ) -> Result<CommandResultV1, Refusal> {
        let mut m = r.model.clone().ok_or_else(|| bad("model", "missing"))?;
        check_name("model.name", &m.name)?;
        check_blob_id(&m.weights_blob).map_err(|e| bad("model.weights_blob", e))?;
        if let Some(a) = &r.attempt {
            let (job, _) = jobs.check_current(&r.worker_id, a)?;
            // A trainer's model belongs to its job's project, which must be the registering call's.
            let job_project = crate::queries::job_project(job);
            if project_or_default(&m.project) != job_project {
                return Err(not_found(format!("job {} not found in project {}", a.job_id, m.project)));
            }
            // A sweep's trial: the sweep is part of the model's lineage.
            if let Some(sweep) = job.spec.as_ref().and_then(|s| s.labels.get(aidos_api::sweep::LABEL_SWEEP)) {
                m.lineage.get_or_insert_with(Default::default).sweep = sweep.clone();
            }
        }
        let owner = self.models.get(&m.name).and_then(|v| v.first()).map(|f| f.project.as_str());
        let owner = owner.or_else(|| self.model_names.get(&m.name).map(|n| n.project.as_str()));
        if owner.is_some_and(|o| project_or_default(o) != project_or_default(&m.project)) {
            return Err(bad("model.name", format!("model {} exists in another project", m.name)));
        }
        let versions = self.models.entry(m.name.clone()).or_default();
        m.version = versions.len() as u32 + 1;
        m.created_at_ms = now;
        m.aliases.clear();
        versions.push(m.clone());
        dirty.mark(Table::Rows, model_key(&m.name, m.version));
        if let Some(lin) = &m.lineage
            && let Some(run) = self.runs.get_mut(&lin.run_id)
        {
            run.model = format!("{}:{}", m.name, m.version);
            dirty.mark(Table::Rows, run_key(&lin.run_id));
        }
        Ok(CommandResultV1 { model: Some(m), ..Default::default() })
    }

    /// Every version of model `name`, checked to include `version` (NOT_FOUND otherwise).
    fn versions_with(&mut self, name: &str, version: u32) -> Result<&mut Vec<ModelVersion>, Refusal> {
        let versions = self.models.get_mut(name).ok_or_else(|| not_found(format!("model {name} not found")))?;
        if version == 0 || version as usize > versions.len() {
            return Err(not_found(format!("model {name} has no version {version} (latest is {})", versions.len())));
        }
        Ok(versions)
    }

    fn set_alias(&mut self, r: &SetAliasRequest, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        check_name("alias", &r.alias)?;
        let versions = self.versions_with(&r.name, r.version)?;
        for m in versions.iter_mut() {
            if m.aliases.iter().any(|a| a == &r.alias) {
                m.aliases.retain(|a| a != &r.alias);
                dirty.mark(Table::Rows, model_key(&m.name, m.version));
            }
        }
        let m = &mut versions[r.version as usize - 1];
        m.aliases.push(r.alias.clone());
        m.aliases.sort();
        dirty.mark(Table::Rows, model_key(&m.name, m.version));
        Ok(CommandResultV1 { model: Some(m.clone()), ..Default::default() })
    }

    fn set_artifact(&mut self, r: &SetArtifactRequest, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        check_name("artifact key", &r.key)?;
        if r.blob.is_empty() || r.blob.len() > 256 {
            return Err(bad("artifact blob", "must be a blob id (1-256 characters)"));
        }
        let m = &mut self.versions_with(&r.name, r.version)?[r.version as usize - 1];
        m.artifacts.insert(r.key.clone(), r.blob.clone());
        dirty.mark(Table::Rows, model_key(&m.name, m.version));
        Ok(CommandResultV1 { model: Some(m.clone()), ..Default::default() })
    }
}

/// Places version `v` (1-based) at index v-1, whatever order rows are loaded in.
fn insert_versioned<T: Default>(vs: &mut Vec<T>, v: u32, item: T) {
    let i = (v.max(1) - 1) as usize;
    if vs.len() <= i {
        vs.resize_with(i + 1, T::default);
    }
    vs[i] = item;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClusterState;
    use aidos_api::v1::command_v1::Command;
    use aidos_api::v1::*;

    fn apply(st: &mut ClusterState, c: Command) -> CommandResultV1 {
        st.apply(&CommandV1 { now_ms: 1, command: Some(c) }, &mut Dirty::default())
    }

    fn model(name: &str) -> Command {
        Command::RegisterModel(RegisterModelRequest {
            model: Some(ModelVersion { name: name.into(), weights_blob: "a".repeat(64), ..Default::default() }),
            ..Default::default()
        })
    }

    #[test]
    fn a_name_belongs_to_the_project_of_its_first_version() {
        let mut st = ClusterState::default();
        let in_project = |name: &str, project: &str| match model(name) {
            Command::RegisterModel(mut r) => {
                r.model.as_mut().unwrap().project = project.into();
                Command::RegisterModel(r)
            }
            _ => unreachable!(),
        };
        assert_eq!(apply(&mut st, in_project("m", "")).model.unwrap().version, 1);
        assert_eq!(apply(&mut st, in_project("m", "default")).model.unwrap().version, 2, "\"\" is default");
        let other = apply(&mut st, in_project("m", "b"));
        assert!(other.error.contains("another project"), "{}", other.error);
        assert_eq!(st.registry.models["m"].len(), 2);
        let ds = |project: &str| {
            Command::CommitDataset(CommitDatasetRequest {
                manifest: Some(DatasetManifest { name: "d".into(), project: project.into(), ..Default::default() }),
            })
        };
        assert_eq!(apply(&mut st, ds("a")).dataset.unwrap().version, 1);
        assert!(apply(&mut st, ds("b")).error.contains("another project"));
        assert_eq!(apply(&mut st, ds("a")).dataset.unwrap().version, 2);
        // Reads: another project's objects are not even named.
        let get = |p: &str| crate::queries::get_dataset(&st, &GetDatasetRequest { name: "d".into(), version: 0 }, p);
        assert_eq!(get("a").unwrap().version, 2);
        assert!(matches!(get("b"), Err(crate::error::SchedulerError::NotFound(_))));
        let list = |p: &str| crate::queries::list_models(&st, &ListModelsRequest::default(), p).models.len();
        assert_eq!((list("default"), list("b")), (2, 0));
    }

    #[test]
    fn versions_aliases_and_fenced_metrics() {
        let mut st = ClusterState::default();
        assert_eq!(apply(&mut st, model("m")).model.unwrap().version, 1);
        assert_eq!(apply(&mut st, model("m")).model.unwrap().version, 2);
        let bad = apply(&mut st, model("../m"));
        assert!(bad.error.contains("model.name"), "{}", bad.error);
        let alias = |v| Command::SetAlias(SetAliasRequest { name: "m".into(), alias: "prod".into(), version: v });
        apply(&mut st, alias(1));
        apply(&mut st, alias(2));
        assert_eq!(st.registry.model("m", 0, "prod").unwrap().version, 2, "an alias names one version");
        assert!(st.registry.model("m", 1, "").unwrap().aliases.is_empty());
        assert_eq!(apply(&mut st, alias(9)).error_code, tonic::Code::NotFound as u32);

        // Metrics from an attempt that is not current are refused like any stale report.
        let r = apply(
            &mut st,
            Command::ReportMetrics(ReportMetricsRequest {
                worker_id: "w".into(),
                attempt: Some(AttemptRef { job_id: "job-1".into(), rank: 0, attempt: 1, fencing_token: 1 }),
                points: vec![MetricPoint { step: 1, name: "loss".into(), value: 1.0, ..Default::default() }],
                ..Default::default()
            }),
        );
        assert_eq!(r.error_code, tonic::Code::NotFound as u32, "{r:?}");
        assert!(st.registry.runs.is_empty());
    }
}
