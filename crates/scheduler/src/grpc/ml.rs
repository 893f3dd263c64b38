use std::sync::Arc;

use aidos_api::dataset_service_server::DatasetService;
use aidos_api::model_service_server::ModelService;
use aidos_api::run_service_server::RunService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, ok};
use crate::core::{Core, Route};

pub struct Datasets(pub Arc<Core>);
pub struct Runs(pub Arc<Core>);
pub struct Models(pub Arc<Core>);

#[tonic::async_trait]
impl DatasetService for Datasets {
    async fn commit(&self, r: Request<CommitDatasetRequest>) -> Res<DatasetManifest> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.commit_dataset(r).await?,
            Route::Forward(f) => f.commit_dataset(r).await?,
        })
    }
    async fn list(&self, r: Request<ListDatasetsRequest>) -> Res<ListDatasetsResponse> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.list_datasets(&r),
            Route::Forward(f) => f.list_datasets(r).await?,
        })
    }
    async fn get(&self, r: Request<GetDatasetRequest>) -> Res<DatasetManifest> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.get_dataset(&r)?,
            Route::Forward(f) => f.get_dataset(r).await?,
        })
    }
}

#[tonic::async_trait]
impl RunService for Runs {
    async fn report_metrics(&self, r: Request<ReportMetricsRequest>) -> Res<ReportAck> {
        let r = r.into_inner();
        match self.0.route()? {
            Route::Leader(l) => l.report_metrics(r).await?,
            Route::Forward(f) => f.report_metrics(r).await?,
        }
        ok(ReportAck {})
    }
    async fn record_checkpoint(&self, r: Request<RecordCheckpointRequest>) -> Res<ReportAck> {
        let r = r.into_inner();
        match self.0.route()? {
            Route::Leader(l) => l.record_checkpoint(r).await?,
            Route::Forward(f) => f.record_checkpoint(r).await?,
        }
        ok(ReportAck {})
    }
    async fn latest_checkpoint(&self, r: Request<LatestCheckpointRequest>) -> Res<LatestCheckpointResponse> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.latest_checkpoint(&r.job_id),
            Route::Forward(f) => f.latest_checkpoint(r).await?,
        })
    }
    async fn list(&self, r: Request<ListRunsRequest>) -> Res<ListRunsResponse> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.list_runs(&r),
            Route::Forward(f) => f.list_runs(r).await?,
        })
    }
    async fn get(&self, r: Request<GetRunRequest>) -> Res<Run> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.get_run(&r.run_id)?,
            Route::Forward(f) => f.get_run(r).await?,
        })
    }
}

#[tonic::async_trait]
impl ModelService for Models {
    async fn register(&self, r: Request<RegisterModelRequest>) -> Res<ModelVersion> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.register_model(r).await?,
            Route::Forward(f) => f.register_model(r).await?,
        })
    }
    async fn list(&self, r: Request<ListModelsRequest>) -> Res<ListModelsResponse> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.list_models(&r),
            Route::Forward(f) => f.list_models(r).await?,
        })
    }
    async fn get(&self, r: Request<GetModelRequest>) -> Res<ModelVersion> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.get_model(&r)?,
            Route::Forward(f) => f.get_model(r).await?,
        })
    }
    async fn set_alias(&self, r: Request<SetAliasRequest>) -> Res<ModelVersion> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.set_alias(r).await?,
            Route::Forward(f) => f.set_alias(r).await?,
        })
    }
    async fn set_artifact(&self, r: Request<SetArtifactRequest>) -> Res<ModelVersion> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.set_artifact(r).await?,
            Route::Forward(f) => f.set_artifact(r).await?,
        })
    }
}
