use std::sync::Arc;

use aidos_api::edge_service_server::EdgeService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, leader, ok};
use crate::core::Core;
use crate::error::SchedulerError;
use crate::{edge_auth, queries};

pub struct Edge(pub Arc<Core>);

/// On a node that serves TLS: the call names the device whose certificate the auth layer verified
/// (`auth::DEVICE_HEADER`), so one device's certificate cannot speak for another.
fn proved<T>(core: &Core, r: &Request<T>, device: &str) -> Result<(), tonic::Status> {
    if core.tls.is_none() {
        return Ok(());
    }
    match r.metadata().get(crate::auth::DEVICE_HEADER).and_then(|v| v.to_str().ok()) {
        Some(d) if d == device => Ok(()),
        Some(d) => {
            Err(tonic::Status::permission_denied(format!("the certificate of device {d} speaks for {d}, not {device}")))
        }
        None => Err(tonic::Status::unauthenticated(format!("device {device}: no device certificate was verified"))),
    }
}

#[tonic::async_trait]
impl EdgeService for Edge {
    async fn enroll(&self, r: Request<EnrollRequest>) -> Res<EnrollResponse> {
        ok(leader(&self.0)?.enroll(r.into_inner()).await?)
    }
    async fn sync(&self, r: Request<EdgeSyncRequest>) -> Res<EdgeSyncResponse> {
        proved(&self.0, &r, &r.get_ref().device)?;
        ok(leader(&self.0)?.edge_sync(r.into_inner()).await?)
    }
    /// One chunk of an artifact that some current edge deployment names, for an enrolled device (any node).
    async fn download(&self, r: Request<DownloadRequest>) -> Res<DownloadChunk> {
        proved(&self.0, &r, &r.get_ref().device)?;
        let r = r.into_inner();
        {
            let st = &self.0.state.read().expect("state lock").state;
            let device = st.edge.devices.get(&r.device);
            edge_auth::check(device, &r.device, &r.credential)?;
            if !device.is_some_and(|d| queries::is_edge_artifact(st, &r.artifact, d)) {
                let e = SchedulerError::NotFound(format!("artifact {} belongs to no edge deployment", r.artifact));
                return Err(e.into());
            }
        }
        ok(self.0.edge.read_chunk(&r.artifact, r.offset, r.max_bytes).await?)
    }
    async fn deploy(&self, r: Request<EdgeDeployRequest>) -> Res<EdgeDeployment> {
        let project = super::project(&r)?;
        ok(leader(&self.0)?.edge_deploy(r.into_inner(), &project).await?)
    }
    /// Answered by the leader (its memory of "last seen") or, when it cannot be reached, from this node's state.
    async fn list_devices(&self, r: Request<ListDevicesRequest>) -> Res<ListDevicesResponse> {
        let project = super::project(&r)?;
        let seen = self.0.edge.seen();
        ok(queries::list_devices(&self.0.state.read().expect("state lock").state, r.get_ref(), &seen, &project))
    }
    async fn list_edge_deployments(&self, r: Request<ListEdgeDeploymentsRequest>) -> Res<ListEdgeDeploymentsResponse> {
        let project = super::project(&r)?;
        ok(queries::list_edge_deployments(&self.0.state.read().expect("state lock").state, &project))
    }
}
