use std::sync::Arc;

use aidos_api::job_service_server::JobService;
use aidos_api::v1::*;
use tonic::{Request, Status};

use super::{Res, ok};
use crate::core::{Core, Route};
use crate::leader::BoxStream;

pub struct Jobs(pub Arc<Core>);

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit(&self, r: Request<SubmitRequest>) -> Res<SubmitResponse> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.submit(r).await?,
            Route::Forward(f) => f.submit(r).await?,
        })
    }

    async fn submit_batch(&self, r: Request<SubmitBatchRequest>) -> Res<SubmitBatchResponse> {
        let r = r.into_inner();
        let responses = match self.0.route()? {
            Route::Leader(l) => l.submit_batch(r.requests).await?,
            Route::Forward(f) => f.submit_batch(r).await?,
        };
        ok(SubmitBatchResponse { responses })
    }

    async fn get(&self, r: Request<GetJobRequest>) -> Res<Job> {
        let id = r.into_inner().job_id;
        ok(match self.0.route()? {
            Route::Leader(l) => l.get(&id)?,
            Route::Forward(f) => f.get(id).await?,
        })
    }

    async fn list(&self, r: Request<ListJobsRequest>) -> Res<ListJobsResponse> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.list(&r),
            Route::Forward(f) => f.list(r).await?,
        })
    }

    async fn cancel(&self, r: Request<CancelJobRequest>) -> Res<Job> {
        let id = r.into_inner().job_id;
        ok(match self.0.route()? {
            Route::Leader(l) => l.cancel(&id).await?,
            Route::Forward(f) => f.cancel(id).await?,
        })
    }

    type WatchStream = BoxStream<Job>;
    async fn watch(&self, r: Request<WatchJobRequest>) -> Res<Self::WatchStream> {
        let id = r.into_inner().job_id;
        ok(match self.0.route()? {
            Route::Leader(l) => l.watch(&id)?,
            Route::Forward(f) => f.watch(id).await?,
        })
    }

    type LogsStream = BoxStream<LogChunk>;
    async fn logs(&self, r: Request<LogsRequest>) -> Res<Self::LogsStream> {
        let r = r.into_inner();
        ok(match self.0.route().map_err(Status::from)? {
            Route::Leader(l) => l.logs(r)?,
            Route::Forward(f) => f.logs(r).await?,
        })
    }
}
