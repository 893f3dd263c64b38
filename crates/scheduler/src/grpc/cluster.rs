use std::sync::Arc;

use aidos_api::cluster_service_server::ClusterService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, leader, ok};
use crate::core::Core;
use crate::queries;

pub struct Cluster(pub Arc<Core>);

#[tonic::async_trait]
impl ClusterService for Cluster {
    /// This node's view of the cluster (answered by any node).
    async fn status(&self, _: Request<ClusterStatusRequest>) -> Res<ClusterStatus> {
        ok(self.0.status())
    }

    async fn add_node(&self, r: Request<AddNodeRequest>) -> Res<ClusterStatus> {
        ok(leader(&self.0)?.add_node(r.into_inner()).await?)
    }

    async fn remove_node(&self, r: Request<RemoveNodeRequest>) -> Res<ClusterStatus> {
        ok(leader(&self.0)?.remove_node(r.into_inner().id).await?)
    }

    async fn list_workers(&self, _: Request<ListWorkersRequest>) -> Res<ListWorkersResponse> {
        ok(queries::list_workers(&self.0.state.read().expect("state lock").state))
    }

    async fn revoke_worker(&self, r: Request<RevokeWorkerRequest>) -> Res<RevokeWorkerResponse> {
        ok(leader(&self.0)?.revoke_worker(&r.get_ref().worker_id).await?)
    }
}
