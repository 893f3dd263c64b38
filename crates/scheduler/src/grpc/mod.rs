//! gRPC front: thin adapters from tonic services to the leader path (`crate::leader`) or a read
//! (`crate::queries`). Which node answers a call is decided in front of these, by the forwarding layer
//! (`crate::forward`): an adapter written here is the whole RPC. Authentication and authorization happen in front
//! too (`crate::auth`); what remains here is the finer check of who may start arbitrary code ([`may_run`]).

pub mod auth;
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

/// Refuses a submission of a `process` job (arbitrary code on workers) by a caller without that permission.
pub(crate) fn may_run<T>(r: &tonic::Request<T>, spec: Option<&aidos_api::v1::JobSpec>) -> Result<(), tonic::Status> {
    if matches!(spec.and_then(|s| s.payload.as_ref()), Some(aidos_api::v1::job_spec::Payload::Process(_))) {
        let (p, project) = crate::auth::principal(r)?;
        aidos_api::auth::authorize_process(&p, &project)?;
    }
    Ok(())
}

/// The project the auth layer verified this call acts in.
pub(crate) fn project<T>(r: &tonic::Request<T>) -> Result<String, tonic::Status> {
    crate::auth::principal(r).map(|(_, project)| project)
}

/// The job an attempt reference names ("" when none).
pub(crate) fn attempt_job(a: Option<&aidos_api::v1::AttemptRef>) -> &str {
    a.map_or("", |a| a.job_id.as_str())
}

/// Refuses (NOT_FOUND) a call about job `job` unless the job belongs to the call's project: the one check every
/// RPC that names a job by id makes before it acts.
pub(crate) fn own_job<T>(l: &LeaderHandler, r: &tonic::Request<T>, job: &str) -> Result<(), tonic::Status> {
    let project = project(r)?;
    l.read(|st| crate::queries::job_in(st, job, &project))?;
    Ok(())
}
