use std::sync::Arc;

use aidos_api::dataset_service_server::DatasetService;
use aidos_api::model_service_server::ModelService;
use aidos_api::run_service_server::RunService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, attempt_job, leader, ok, own_job, project};
use crate::core::Core;
use crate::queries;

pub struct Datasets(pub Arc<Core>);
pub struct Runs(pub Arc<Core>);
pub struct Models(pub Arc<Core>);

/// The leader path, once model `name` is known to belong to the call's project (NOT_FOUND otherwise).
fn own_model<T>(core: &Arc<Core>, r: &Request<T>, name: &str) -> Result<crate::leader::LeaderHandler, tonic::Status> {
    let l = leader(core)?;
    let project = project(r)?;
    let mine = l.read(|st| queries::model_project(st, name).map(|p| aidos_api::auth::project_or_default(p) == project));
    if mine != Some(true) {
        return Err(tonic::Status::not_found(format!("model {name} not found in project {project}")));
    }
    Ok(l)
}

#[tonic::async_trait]
impl DatasetService for Datasets {
    async fn commit(&self, r: Request<CommitDatasetRequest>) -> Res<DatasetManifest> {
        let project = project(&r)?;
        let mut c = r.into_inner();
        if let Some(m) = c.manifest.as_mut() {
            m.project = project;
        }
        ok(leader(&self.0)?.commit_dataset(c).await?)
    }
    async fn list(&self, r: Request<ListDatasetsRequest>) -> Res<ListDatasetsResponse> {
        let project = project(&r)?;
        ok(leader(&self.0)?.read(|st| queries::list_datasets(st, r.get_ref(), &project)))
    }
    async fn get(&self, r: Request<GetDatasetRequest>) -> Res<DatasetManifest> {
        let project = project(&r)?;
        ok(leader(&self.0)?.read(|st| queries::get_dataset(st, r.get_ref(), &project))?)
    }
}

#[tonic::async_trait]
impl RunService for Runs {
    async fn report_metrics(&self, r: Request<ReportMetricsRequest>) -> Res<ReportAck> {
        let l = leader(&self.0)?;
        own_job(&l, &r, attempt_job(r.get_ref().attempt.as_ref()))?;
        l.report_metrics(r.into_inner()).await?;
        ok(ReportAck {})
    }
    async fn record_checkpoint(&self, r: Request<RecordCheckpointRequest>) -> Res<ReportAck> {
        let l = leader(&self.0)?;
        own_job(&l, &r, attempt_job(r.get_ref().attempt.as_ref()))?;
        l.record_checkpoint(r.into_inner()).await?;
        ok(ReportAck {})
    }
    async fn latest_checkpoint(&self, r: Request<LatestCheckpointRequest>) -> Res<LatestCheckpointResponse> {
        let l = leader(&self.0)?;
        own_job(&l, &r, &r.get_ref().job_id)?;
        ok(l.read(|st| queries::latest_checkpoint(st, &r.get_ref().job_id)))
    }
    async fn list(&self, r: Request<ListRunsRequest>) -> Res<ListRunsResponse> {
        let project = project(&r)?;
        ok(leader(&self.0)?.read(|st| queries::list_runs(st, r.get_ref(), &project)))
    }
    async fn get(&self, r: Request<GetRunRequest>) -> Res<Run> {
        let project = project(&r)?;
        ok(leader(&self.0)?.read(|st| queries::get_run(st, r.get_ref(), &project))?)
    }
    async fn create_experiment(&self, r: Request<CreateExperimentRequest>) -> Res<Experiment> {
        let project = project(&r)?;
        ok(leader(&self.0)?.create_experiment(r.into_inner(), &project).await?)
    }
    async fn list_experiments(&self, r: Request<ListExperimentsRequest>) -> Res<ListExperimentsResponse> {
        let project = project(&r)?;
        ok(leader(&self.0)?.read(|st| queries::list_experiments(st, &project)))
    }
    async fn create_run(&self, r: Request<CreateRunRequest>) -> Res<Run> {
        let project = project(&r)?;
        ok(leader(&self.0)?.create_run(r.into_inner(), &project).await?)
    }
    async fn update_run(&self, r: Request<UpdateRunRequest>) -> Res<Run> {
        let project = project(&r)?;
        ok(leader(&self.0)?.update_run(r.into_inner(), &project).await?)
    }
}

#[tonic::async_trait]
impl ModelService for Models {
    async fn register(&self, r: Request<RegisterModelRequest>) -> Res<ModelVersion> {
        let l = leader(&self.0)?;
        // A trainer's registration names its attempt: the job must be the call's project's (as for its metrics).
        if r.get_ref().attempt.is_some() {
            own_job(&l, &r, attempt_job(r.get_ref().attempt.as_ref()))?;
        }
        let project = project(&r)?;
        let mut m = r.into_inner();
        if let Some(v) = m.model.as_mut() {
            v.project = project;
        }
        ok(l.register_model(m).await?)
    }
    async fn list(&self, r: Request<ListModelsRequest>) -> Res<ListModelsResponse> {
        let project = project(&r)?;
        ok(leader(&self.0)?.read(|st| queries::list_models(st, r.get_ref(), &project)))
    }
    async fn get(&self, r: Request<GetModelRequest>) -> Res<ModelVersion> {
        let project = project(&r)?;
        ok(leader(&self.0)?.read(|st| queries::get_model(st, r.get_ref(), &project))?)
    }
    async fn set_alias(&self, r: Request<SetAliasRequest>) -> Res<ModelVersion> {
        let l = own_model(&self.0, &r, &r.get_ref().name)?;
        ok(l.set_alias(r.into_inner()).await?)
    }
    async fn set_artifact(&self, r: Request<SetArtifactRequest>) -> Res<ModelVersion> {
        let l = own_model(&self.0, &r, &r.get_ref().name)?;
        ok(l.set_artifact(r.into_inner()).await?)
    }
    async fn create(&self, r: Request<CreateModelRequest>) -> Res<RegisteredModel> {
        let project = project(&r)?;
        ok(leader(&self.0)?.create_model(r.into_inner(), &project).await?)
    }
}
