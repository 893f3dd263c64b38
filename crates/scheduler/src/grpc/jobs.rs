use std::sync::Arc;

use aidos_api::job_service_server::JobService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, attempt_job, leader, ok, own_job, project};
use crate::core::Core;
use crate::leader::BoxStream;
use crate::queries;

pub struct Jobs(pub Arc<Core>);

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit(&self, r: Request<SubmitRequest>) -> Res<SubmitResponse> {
        super::may_run(&r, r.get_ref().spec.as_ref())?;
        let project = project(&r)?;
        let mut req = r.into_inner();
        scope(&mut req, &project);
        ok(leader(&self.0)?.submit(req).await?)
    }

    async fn submit_batch(&self, r: Request<SubmitBatchRequest>) -> Res<SubmitBatchResponse> {
        for s in &r.get_ref().requests {
            super::may_run(&r, s.spec.as_ref())?;
        }
        let project = project(&r)?;
        let mut reqs = r.into_inner().requests;
        for s in &mut reqs {
            scope(s, &project);
        }
        ok(SubmitBatchResponse { responses: leader(&self.0)?.submit_batch(reqs).await? })
    }

    async fn get(&self, r: Request<GetJobRequest>) -> Res<Job> {
        let project = project(&r)?;
        ok(leader(&self.0)?.read(|st| queries::job_in(st, &r.get_ref().job_id, &project))?)
    }

    async fn list(&self, r: Request<ListJobsRequest>) -> Res<ListJobsResponse> {
        let project = project(&r)?;
        ok(leader(&self.0)?.read(|st| queries::list_jobs(st, r.get_ref(), &project))?)
    }

    async fn cancel(&self, r: Request<CancelJobRequest>) -> Res<Job> {
        let l = leader(&self.0)?;
        own_job(&l, &r, &r.get_ref().job_id)?;
        ok(l.cancel(&r.get_ref().job_id).await?)
    }

    type WatchStream = BoxStream<Job>;
    async fn watch(&self, r: Request<WatchJobRequest>) -> Res<Self::WatchStream> {
        let l = leader(&self.0)?;
        own_job(&l, &r, &r.get_ref().job_id)?;
        ok(l.watch(&r.get_ref().job_id)?)
    }

    async fn join_ring(&self, r: Request<JoinRingRequest>) -> Res<JoinRingResponse> {
        let l = leader(&self.0)?;
        own_job(&l, &r, attempt_job(r.get_ref().attempt.as_ref()))?;
        ok(l.join_ring(r.into_inner()).await?)
    }

    type LogsStream = BoxStream<LogChunk>;
    async fn logs(&self, r: Request<LogsRequest>) -> Res<Self::LogsStream> {
        let l = leader(&self.0)?;
        own_job(&l, &r, &r.get_ref().job_id)?;
        ok(l.logs(r.into_inner())?)
    }
}

/// Puts a submission in the caller's project, whatever the client sent (its idempotency key is then a key of that
/// project: `state::jobs::idempotency_key`).
fn scope(req: &mut SubmitRequest, project: &str) {
    req.spec.get_or_insert_default().project = project.to_string();
}
