//! The leader path for experiments, runs that no job writes and model names (what the MLflow-compatible API
//! records; `state::tracking` validates and applies). Each call acts in the caller's project: an experiment or a
//! run of another project is NOT_FOUND, as a job of another project is.

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::*;

use super::LeaderHandler;
use crate::error::SchedulerError;
use crate::queries;
use crate::state::tracking::DEFAULT_EXPERIMENT;

fn missing(what: &str) -> SchedulerError {
    SchedulerError::Raft(format!("the command answered without its {what}"))
}

impl LeaderHandler {
    pub async fn create_experiment(
        &self,
        r: CreateExperimentRequest,
        project: &str,
    ) -> Result<Experiment, SchedulerError> {
        let e = Experiment { name: r.name, tags: r.tags, project: project.to_string(), ..Default::default() };
        let res = self.core.propose(Command::CreateExperiment(CreateExperimentV1 { experiment: Some(e) })).await?;
        res.experiment.ok_or_else(|| missing("experiment"))
    }

    /// Creates a run in experiment `r.experiment_id` of `project`, under an id drawn here (`ml-` and 16 hex
    /// digits: valid as an MLflow run id too).
    pub async fn create_run(&self, r: CreateRunRequest, project: &str) -> Result<Run, SchedulerError> {
        let experiment = if r.experiment_id.is_empty() { DEFAULT_EXPERIMENT.to_string() } else { r.experiment_id };
        self.read(|st| queries::experiment_in(st, &experiment, project))?;
        let id = format!("ml-{}", &aidos_api::auth::new_secret()[..16]);
        let run = Run {
            id,
            experiment_id: experiment,
            name: r.name,
            tags: r.tags,
            created_at_ms: r.start_time_ms,
            project: project.to_string(),
            user: r.user,
            ..Default::default()
        };
        let res = self.core.propose(Command::CreateRun(CreateRunV1 { run: Some(run) })).await?;
        res.run.ok_or_else(|| missing("run"))
    }

    pub async fn update_run(&self, r: UpdateRunRequest, project: &str) -> Result<Run, SchedulerError> {
        self.read(|st| queries::get_run(st, &GetRunRequest { run_id: r.run_id.clone(), max_points: 1 }, project))?;
        let _pin = self.core.gc.pin(r.artifacts.values().map(String::as_str), self.core.blobs.as_ref()).await?;
        let res = self.core.propose(Command::UpdateRun(r)).await?;
        res.run.ok_or_else(|| missing("run"))
    }

    pub async fn create_model(&self, r: CreateModelRequest, project: &str) -> Result<RegisteredModel, SchedulerError> {
        let m = RegisteredModel {
            name: r.name,
            description: r.description,
            project: project.to_string(),
            ..Default::default()
        };
        let res = self.core.propose(Command::CreateModel(m)).await?;
        res.registered_model.ok_or_else(|| missing("model"))
    }
}
