//! gRPC front: thin adapters from tonic services to the leader path (`crate::leader`) or a read
//! (`crate::queries`). Which node answers a call is decided in front of these, by the forwarding layer
//! (`crate::forward`): an adapter written here is the whole RPC. Authentication will plug in the same way, as one
//! layer applied to every client-facing service.

pub mod blob;
pub mod cluster;
pub mod edge;
pub mod jobs;
pub mod ml;
pub mod raft;
pub mod serve;
pub mod sweeps;
pub mod workers;

use std::sync::Arc;

use crate::core::Core;
use crate::error::SchedulerError;
use crate::leader::LeaderHandler;

pub(crate) type Res<T> = Result<tonic::Response<T>, tonic::Status>;

pub(crate) fn ok<T>(t: T) -> Res<T> {
    Ok(tonic::Response::new(t))
}

/// The leader path of this node (the forwarding layer sent the call here because this node leads).
pub(crate) fn leader(core: &Arc<Core>) -> Result<LeaderHandler, SchedulerError> {
    LeaderHandler::require(core)
}
