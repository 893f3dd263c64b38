use std::sync::Arc;

use aidos_api::edge_service_server::EdgeService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, ok};
use crate::core::{Core, Route};

pub struct Edge(pub Arc<Core>);

#[tonic::async_trait]
impl EdgeService for Edge {
    async fn enroll(&self, r: Request<EnrollRequest>) -> Res<EnrollResponse> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.enroll(r).await?,
            Route::Forward(f) => f.enroll(r).await?,
        })
    }
    async fn sync(&self, r: Request<EdgeSyncRequest>) -> Res<EdgeSyncResponse> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.edge_sync(r).await?,
            Route::Forward(f) => f.edge_sync(r).await?,
        })
    }
    async fn download(&self, r: Request<DownloadRequest>) -> Res<DownloadChunk> {
        ok(self.0.download(r.into_inner()).await?)
    }
    async fn deploy(&self, r: Request<EdgeDeployRequest>) -> Res<EdgeDeployment> {
        let r = r.into_inner();
        ok(match self.0.route()? {
            Route::Leader(l) => l.edge_deploy(r).await?,
            Route::Forward(f) => f.edge_deploy(r).await?,
        })
    }
    async fn list_devices(&self, r: Request<ListDevicesRequest>) -> Res<ListDevicesResponse> {
        // "Last seen" lives in the leader's memory (the agents' syncs reach the leader): ask it; with no leader, or
        // the leader unreachable, answer from this node's replicated state.
        let r = r.into_inner();
        if let Ok(Route::Forward(f)) = self.0.route()
            && let Ok(l) = f.list_devices(r.clone()).await
        {
            return ok(l);
        }
        ok(self.0.list_devices(&r))
    }
    async fn list_edge_deployments(&self, _: Request<ListEdgeDeploymentsRequest>) -> Res<ListEdgeDeploymentsResponse> {
        ok(self.0.list_edge_deployments())
    }
}
