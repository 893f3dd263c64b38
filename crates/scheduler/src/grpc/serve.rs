use std::sync::Arc;

use aidos_api::serve_service_server::ServeService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, attempt_job, leader, ok, own_job, project};
use crate::core::Core;
use crate::leader::LeaderHandler;
use crate::queries;
use crate::state::jobs::serve_spec;

pub struct Serve(pub Arc<Core>);

/// The leader path, once deployment `name` is known to belong to the call's project (NOT_FOUND otherwise).
fn own_deployment<T>(core: &Arc<Core>, r: &Request<T>, name: &str) -> Result<LeaderHandler, tonic::Status> {
    let l = leader(core)?;
    let project = project(r)?;
    l.read(|st| queries::deployment_in(st, name, &project))?;
    Ok(l)
}

#[tonic::async_trait]
impl ServeService for Serve {
    async fn deploy(&self, r: Request<DeployRequest>) -> Res<Deployment> {
        let project = project(&r)?;
        ok(leader(&self.0)?.deploy(r.into_inner(), &project).await?)
    }
    async fn list(&self, r: Request<ListDeploymentsRequest>) -> Res<ListDeploymentsResponse> {
        let (name, project) = (&r.get_ref().name, project(&r)?);
        let mut deployments = leader(&self.0)?.read(|st| queries::deployment_views(st, name));
        deployments.retain(|d| queries::deployment_project(d) == project);
        {
            let (loads, now) = (self.0.loads.lock().expect("loads lock"), aidos_api::now_ms());
            for d in &mut deployments {
                d.in_flight = queries::in_flight(d, &loads, now).unwrap_or(0.0);
            }
        }
        ok(ListDeploymentsResponse { deployments })
    }
    async fn delete(&self, r: Request<DeleteDeploymentRequest>) -> Res<Deployment> {
        let l = own_deployment(&self.0, &r, &r.get_ref().name)?;
        ok(l.delete_deployment(r.into_inner()).await?)
    }
    async fn promote(&self, r: Request<CanaryRequest>) -> Res<Deployment> {
        let l = own_deployment(&self.0, &r, &r.get_ref().name)?;
        let c = SetCanaryV1 { name: r.into_inner().name, canary: None, promote: true };
        ok(l.set_canary(c).await?)
    }
    async fn rollback(&self, r: Request<CanaryRequest>) -> Res<Deployment> {
        let l = own_deployment(&self.0, &r, &r.get_ref().name)?;
        let c = SetCanaryV1 { name: r.into_inner().name, canary: None, promote: false };
        ok(l.set_canary(c).await?)
    }
    /// Gateways (root or worker tokens) get every deployment; a replica (its job's token) its own deployment only.
    /// Answered from this node's applied state when the leader cannot be reached (`forward::policy`).
    async fn routes(&self, r: Request<RoutesRequest>) -> Res<RoutesResponse> {
        let (p, _) = crate::auth::principal(&r)?;
        let name = r.into_inner().deployment;
        let st = self.0.state.read().expect("state lock");
        let st = &st.state;
        let service = p.is_root() || p.role == Role::Worker;
        let own = st.jobs.by_id.get(&p.token_id).and_then(serve_spec).is_some_and(|s| s.deployment == name);
        if !service && (name.is_empty() || !own) {
            return Err(tonic::Status::permission_denied(format!(
                "{p} may not read serving routes (gateways need a worker token; a replica reads its own deployment)"
            )));
        }
        let deployments = queries::deployment_views(st, &name);
        let root = aidos_api::auth::parse_token(&self.0.cfg.root_token)
            .map_err(|_| tonic::Status::internal("the node's root token is malformed"))?;
        let root_hash = aidos_api::auth::hash_secret(&root.secret);
        let keys = queries::inference_keys(st, &deployments, &root_hash, aidos_api::now_ms());
        ok(RoutesResponse { deployments, keys })
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
