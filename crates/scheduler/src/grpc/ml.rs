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

#[tonic::async_trait]
impl DatasetService for Datasets {
    async fn commit(&self, r: Request<CommitDatasetRequest>) -> Res<DatasetManifest> {
        ok(leader(&self.0)?.commit_dataset(r.into_inner()).await?)
    }
    async fn list(&self, r: Request<ListDatasetsRequest>) -> Res<ListDatasetsResponse> {
        ok(leader(&self.0)?.read(|st| queries::list_datasets(st, r.get_ref())))
    }
    async fn get(&self, r: Request<GetDatasetRequest>) -> Res<DatasetManifest> {
        ok(leader(&self.0)?.read(|st| queries::get_dataset(st, r.get_ref()))?)
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
        ok(leader(&self.0)?.register_model(r.into_inner()).await?)
    }
    async fn list(&self, r: Request<ListModelsRequest>) -> Res<ListModelsResponse> {
        ok(leader(&self.0)?.read(|st| queries::list_models(st, r.get_ref())))
    }
    async fn get(&self, r: Request<GetModelRequest>) -> Res<ModelVersion> {
        ok(leader(&self.0)?.read(|st| queries::get_model(st, r.get_ref()))?)
    }
    async fn set_alias(&self, r: Request<SetAliasRequest>) -> Res<ModelVersion> {
        ok(leader(&self.0)?.set_alias(r.into_inner()).await?)
    }
    async fn set_artifact(&self, r: Request<SetArtifactRequest>) -> Res<ModelVersion> {
        ok(leader(&self.0)?.set_artifact(r.into_inner()).await?)
    }
    async fn create(&self, r: Request<CreateModelRequest>) -> Res<RegisteredModel> {
        ok(leader(&self.0)?.create_model(r.into_inner()).await?)
    }
}
