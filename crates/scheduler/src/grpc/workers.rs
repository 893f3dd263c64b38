use std::sync::Arc;

use aidos_api::v1::*;
use aidos_api::worker_service_server::WorkerService;
use tonic::{Request, Streaming};

use super::{Res, leader, ok};
use crate::core::Core;
use crate::leader::BoxStream;

/// Served by the leader only; followers answer UNAVAILABLE with the leader's address (`aidos-leader`).
pub struct Workers(pub Arc<Core>);

#[tonic::async_trait]
impl WorkerService for Workers {
    async fn register(&self, r: Request<RegisterWorkerRequest>) -> Res<RegisterWorkerResponse> {
        ok(leader(&self.0)?.register_worker(r.into_inner()).await?)
    }

    async fn heartbeat(&self, r: Request<HeartbeatRequest>) -> Res<HeartbeatResponse> {
        ok(leader(&self.0)?.heartbeat(r.into_inner())?)
    }

    type AssignmentsStream = BoxStream<WorkerCommand>;
    async fn assignments(&self, r: Request<AssignmentsRequest>) -> Res<Self::AssignmentsStream> {
        ok(leader(&self.0)?.assignments(r.into_inner().worker_id)?)
    }

    async fn report_status(&self, r: Request<TaskStatusReport>) -> Res<ReportAck> {
        leader(&self.0)?.report_status(r.into_inner()).await?;
        ok(ReportAck {})
    }

    async fn report_logs(&self, r: Request<Streaming<LogReport>>) -> Res<ReportAck> {
        leader(&self.0)?.report_logs(r.into_inner()).await?;
        ok(ReportAck {})
    }
}
