//! gRPC front: thin adapters from tonic services to the leader path or the forwarder. Authentication will plug
//! in here, as one interceptor applied to every client-facing service in `crate::node::serve`.

pub mod cluster;
pub mod edge;
pub mod jobs;
pub mod ml;
pub mod raft;
pub mod serve;
pub mod workers;

pub(crate) type Res<T> = Result<tonic::Response<T>, tonic::Status>;

pub(crate) fn ok<T>(t: T) -> Res<T> {
    Ok(tonic::Response::new(t))
}
