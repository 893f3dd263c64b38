use std::sync::Arc;

use aidos_api::job_service_server::JobService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, leader, ok};
use crate::core::Core;
use crate::leader::BoxStream;
use crate::queries;

pub struct Jobs(pub Arc<Core>);

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit(&self, r: Request<SubmitRequest>) -> Res<SubmitResponse> {
        ok(leader(&self.0)?.submit(r.into_inner()).await?)
    }

    async fn submit_batch(&self, r: Request<SubmitBatchRequest>) -> Res<SubmitBatchResponse> {
        ok(SubmitBatchResponse { responses: leader(&self.0)?.submit_batch(r.into_inner().requests).await? })
    }

    async fn get(&self, r: Request<GetJobRequest>) -> Res<Job> {
        ok(leader(&self.0)?.read(|st| queries::job(st, &r.get_ref().job_id))?)
    }

    async fn list(&self, r: Request<ListJobsRequest>) -> Res<ListJobsResponse> {
        ok(leader(&self.0)?.read(|st| queries::list_jobs(st, r.get_ref())))
    }

    async fn cancel(&self, r: Request<CancelJobRequest>) -> Res<Job> {
        ok(leader(&self.0)?.cancel(&r.get_ref().job_id).await?)
    }

    type WatchStream = BoxStream<Job>;
    async fn watch(&self, r: Request<WatchJobRequest>) -> Res<Self::WatchStream> {
        ok(leader(&self.0)?.watch(&r.get_ref().job_id)?)
    }

    async fn join_ring(&self, r: Request<JoinRingRequest>) -> Res<JoinRingResponse> {
        ok(leader(&self.0)?.join_ring(r.into_inner()).await?)
    }

    type LogsStream = BoxStream<LogChunk>;
    async fn logs(&self, r: Request<LogsRequest>) -> Res<Self::LogsStream> {
        ok(leader(&self.0)?.logs(r.into_inner())?)
    }
}
