use std::sync::Arc;

use aidos_api::serve_service_server::ServeService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, ok};
use crate::core::{Core, Route};

pub struct Serve(pub Arc<Core>);

#[tonic::async_trait]
impl ServeService for Serve {
    async fn deploy(&self, r: Request<DeployRequest>) -> Res<Deployment> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.deploy(r).await?,
            Route::Forward(f) => f.deploy(r).await?,
        })
    }
    async fn list(&self, r: Request<ListDeploymentsRequest>) -> Res<ListDeploymentsResponse> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.list_deployments(&r),
            Route::Forward(f) => f.list_deployments(r).await?,
        })
    }
    async fn delete(&self, r: Request<DeleteDeploymentRequest>) -> Res<Deployment> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.delete_deployment(r).await?,
            Route::Forward(f) => f.delete_deployment(r).await?,
        })
    }
    async fn report_endpoint(&self, r: Request<ReportEndpointRequest>) -> Res<ReportAck> {
        let r = r.into_inner();
        match self.0.route()? {
            Route::Leader(l) => l.report_endpoint(r).await?,
            Route::Forward(f) => f.report_endpoint(r).await?,
        }
        ok(ReportAck {})
    }
}
