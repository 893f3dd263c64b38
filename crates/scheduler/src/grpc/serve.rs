use std::sync::Arc;

use aidos_api::serve_service_server::ServeService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, attempt_job, leader, ok, own_job};
use crate::core::Core;
use crate::queries;

pub struct Serve(pub Arc<Core>);

#[tonic::async_trait]
impl ServeService for Serve {
    async fn deploy(&self, r: Request<DeployRequest>) -> Res<Deployment> {
        ok(leader(&self.0)?.deploy(r.into_inner()).await?)
    }
    async fn list(&self, r: Request<ListDeploymentsRequest>) -> Res<ListDeploymentsResponse> {
        let name = &r.get_ref().name;
        let mut deployments = leader(&self.0)?.read(|st| queries::deployment_views(st, name));
        {
            let (loads, now) = (self.0.loads.lock().expect("loads lock"), aidos_api::now_ms());
            for d in &mut deployments {
                d.in_flight = queries::in_flight(d, &loads, now).unwrap_or(0.0);
            }
        }
        ok(ListDeploymentsResponse { deployments })
    }
    async fn delete(&self, r: Request<DeleteDeploymentRequest>) -> Res<Deployment> {
        ok(leader(&self.0)?.delete_deployment(r.into_inner()).await?)
    }
    async fn promote(&self, r: Request<CanaryRequest>) -> Res<Deployment> {
        let c = SetCanaryV1 { name: r.into_inner().name, canary: None, promote: true };
        ok(leader(&self.0)?.set_canary(c).await?)
    }
    async fn rollback(&self, r: Request<CanaryRequest>) -> Res<Deployment> {
        let c = SetCanaryV1 { name: r.into_inner().name, canary: None, promote: false };
        ok(leader(&self.0)?.set_canary(c).await?)
    }
    async fn report_load(&self, r: Request<ReportLoadRequest>) -> Res<ReportAck> {
        let l = leader(&self.0)?;
        own_job(&l, &r, attempt_job(r.get_ref().attempt.as_ref()))?;
        let r = r.into_inner();
        let a = r.attempt.clone().unwrap_or_default();
        if !l.read(|st| queries::ran_attempt(st, &r.worker_id, &a)) {
            return Err(tonic::Status::failed_precondition(format!("{} is not an attempt of this worker", a.job_id)));
        }
        if !r.in_flight.is_finite() || r.in_flight < 0.0 {
            return Err(tonic::Status::invalid_argument(format!(
                "in_flight: {} (expected a number >= 0)",
                r.in_flight
            )));
        }
        self.0.loads.lock().expect("loads lock").insert(a.job_id, (r.in_flight, aidos_api::now_ms()));
        ok(ReportAck {})
    }
    async fn report_endpoint(&self, r: Request<ReportEndpointRequest>) -> Res<ReportAck> {
        let l = leader(&self.0)?;
        own_job(&l, &r, attempt_job(r.get_ref().attempt.as_ref()))?;
        l.report_endpoint(r.into_inner()).await?;
        ok(ReportAck {})
    }
}
